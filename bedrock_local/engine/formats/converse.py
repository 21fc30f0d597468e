"""The Converse body, the same for every text model: messages (text, toolUse and toolResult blocks),
system, inferenceConfig, toolConfig -> output.message (text and toolUse blocks), stopReason, usage,
metrics. Its defaults are the model's own (those of the Meta Llama body). Tool turns take the
TextRequest form of formats/tools.py."""

from __future__ import annotations

from typing import Any

from .checks import (a_list, a_number, a_string, an_integer, an_object, at_most, chat_turns, no_unknown_keys,
                     some_messages, strings, type_name)
from .common import FormatError, TextRequest, TextResult
from .meta_llama import MetaLlama
from .tools import check_choice, check_pairs, check_schema, check_tools, result_text


class Converse:
    MEMBERS = ("messages", "system", "inferenceConfig", "toolConfig")
    CONFIG = ("maxTokens", "temperature", "topP", "stopSequences")
    DEFAULT_MAX_TOKENS = MetaLlama.DEFAULTS["max_gen_len"]
    MAX_STOP_SEQUENCES = 4

    @classmethod
    def parse(cls, body: Any, where: str = "modelInput", *, validated: bool = False) -> TextRequest:
        """A Converse request as a chat TextRequest. A batch record's `modelInput` is checked in full;
        `validated`: `body` is a runtime request's parameters, which the api layer already checked
        against the service model's Converse shape (types, required members, roles, ranges, unknown
        members dropped), so only what that shape does not say is checked here."""
        if not validated:
            body = an_object(body, where)
            no_unknown_keys(body, cls.MEMBERS, where)
        if "messages" not in body:
            raise FormatError(f"{where}.messages is required")
        raw = some_messages(body["messages"], f"{where}.messages", validated=validated)
        messages: list[dict] = []
        names: dict[str, str] = {}  # toolUseId -> the name of the tool it called
        for _i, here, message, role in chat_turns(raw, where, validated=validated):
            content = message["content"]
            if isinstance(content, list) and not content:
                raise FormatError(f"{here}.content must hold at least one content block")
            messages.extend(_turn(role, content, f"{here}.content", validated, names))
        prefix = "" if validated else f"{where}."
        tools, choice, tool_name = _tool_config(body.get("toolConfig"), f"{prefix}toolConfig", validated)
        check_pairs(messages, tools is not None, f"{prefix}messages")
        if messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
            raise FormatError(f"Expected toolResult blocks at {prefix}messages.{len(raw)}.content for the following "
                              f"Ids: {', '.join(c['id'] for c in messages[-1]['tool_calls'])}")

        system = None
        if "system" in body:
            system = _text_blocks(body["system"], f"{where}.system", validated)

        here = f"{where}.inferenceConfig"
        config = body.get("inferenceConfig", {})
        if not validated:
            config = an_object(config, here)
            no_unknown_keys(config, cls.CONFIG, here)
        max_tokens = config.get("maxTokens", cls.DEFAULT_MAX_TOKENS)
        if not validated:
            max_tokens = an_integer(max_tokens, f"{here}.maxTokens", 1, None)
        # checked either way: the shape's range check lets NaN through
        temperature = a_number(config.get("temperature", MetaLlama.DEFAULTS["temperature"]), f"{here}.temperature",
                               0, 1)
        top_p = a_number(config.get("topP", MetaLlama.DEFAULTS["top_p"]), f"{here}.topP", 0, 1)
        stops = config.get("stopSequences", [])
        if validated:
            stop_sequences = list(at_most(stops, f"{here}.stopSequences", cls.MAX_STOP_SEQUENCES))
        else:
            stop_sequences = strings(stops, f"{here}.stopSequences", cls.MAX_STOP_SEQUENCES)
        return TextRequest(messages=messages, prompt=None, system=system, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stop_sequences,
                           tools=tools, tool_choice=choice, tool_name=tool_name)

    @staticmethod
    def render(result: TextResult, latency_ms: int | None = None) -> dict:
        """The Converse response body for `result` (latency defaults to the result's own): a text
        block (unless the answer is tool calls alone), then one toolUse block per call."""
        content = [] if result.tool_calls and not result.text else [{"text": result.text}]
        content += [{"toolUse": {"toolUseId": call["toolUseId"], "name": call["name"], "input": call["input"]}}
                    for call in result.tool_calls]
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": result.stop_reason,
            "usage": {
                "inputTokens": result.input_tokens,
                "outputTokens": result.output_tokens,
                "totalTokens": result.input_tokens + result.output_tokens,
            },
            "metrics": {"latencyMs": int(result.latency_ms if latency_ms is None else latency_ms)},
        }


def _text_blocks(blocks: Any, where: str, validated: bool) -> str:
    """The text of a list of content blocks; any other kind of block is refused (the shape allows
    images, documents, tool use, ...)."""
    if not validated and not isinstance(blocks, list):
        raise FormatError(f"{where} must be a list of content blocks, got {type_name(blocks)}")
    texts = []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        if not validated:
            block = an_object(block, here)
        if set(block) != {"text"}:
            kinds = ", ".join(repr(key) for key in block) or "an empty block"
            raise FormatError(f"{here}: content block {kinds} is not supported by this model; only text blocks are")
        texts.append(block["text"] if validated else a_string(block["text"], f"{here}.text", non_empty=False))
    return "\n".join(texts)


def _turn(role: str, blocks: Any, where: str, validated: bool, names: dict[str, str]) -> list[dict]:
    """One body message as TextRequest messages: an assistant turn with its toolUse blocks as
    tool_calls; a user turn's toolResult blocks as "tool" messages, then its text (if any)."""
    if not validated and not isinstance(blocks, list):
        raise FormatError(f"{where} must be a list of content blocks, got {type_name(blocks)}")
    texts, calls, results = [], [], []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        if not validated:
            block = an_object(block, here)
        kinds = [key for key in block if key != "cachePoint"] if len(block) > 1 else list(block)
        kind = kinds[0] if len(kinds) == 1 else None
        if kind == "cachePoint":  # a prompt-cache mark: nothing to generate from
            continue
        if kind == "text":
            texts.append(block["text"] if validated else a_string(block["text"], f"{here}.text", non_empty=False))
        elif kind == "toolUse" and role == "assistant":
            use = block["toolUse"] if validated else an_object(block["toolUse"], f"{here}.toolUse")
            for key in ("toolUseId", "name", "input"):
                if key not in use:
                    raise FormatError(f"{here}.toolUse.{key} is required")
            names[use["toolUseId"]] = use["name"]
            calls.append({"id": use["toolUseId"], "name": use["name"], "arguments": use["input"]})
        elif kind == "toolResult" and role == "user":
            results.append(_tool_result(block["toolResult"], f"{here}.toolResult", validated, names))
        else:
            described = ", ".join(repr(key) for key in block) or "an empty block"
            allowed = "text and toolUse" if role == "assistant" else "text and toolResult"
            raise FormatError(f"{here}: content block {described} is not supported by this model in a {role} "
                              f"message; only {allowed} blocks are")
    text = "\n".join(texts)
    if role == "assistant":
        message = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return [message]
    return results + ([{"role": "user", "content": text}] if texts or not results else [])


def _tool_result(result: Any, where: str, validated: bool, names: dict[str, str]) -> dict:
    if not validated:
        result = an_object(result, where)
        for key in ("toolUseId", "content"):
            if key not in result:
                raise FormatError(f"{where}.{key} is required")
    content = result["content"] if validated else a_list(result["content"], f"{where}.content")
    for i, block in enumerate(content):
        here = f"{where}.content[{i}]"
        if not validated:
            block = an_object(block, here)
        if set(block) not in ({"text"}, {"json"}):
            kinds = ", ".join(repr(key) for key in block) or "an empty block"
            raise FormatError(f"{here}: tool result block {kinds} is not supported by this model; only text and "
                              "json blocks are")
    status = result.get("status")
    if status == "error" and not content:
        raise FormatError(f"The content field at {where} cannot be empty when status value is error.")
    message = {"role": "tool", "tool_call_id": result["toolUseId"], "name": names.get(result["toolUseId"], ""),
               "content": result_text(content)}
    if status == "error":
        message["status"] = "error"
    return message


def _tool_config(config: Any, where: str, validated: bool) -> tuple[list[dict] | None, str | None, str | None]:
    """(tools, tool choice, tool name) of a toolConfig; (None, None, None) without one."""
    if config is None:
        return None, None, None
    if not validated:
        config = an_object(config, where)
        no_unknown_keys(config, ("tools", "toolChoice"), where)
        if "tools" not in config:
            raise FormatError(f"{where}.tools is required")
        a_list(config["tools"], f"{where}.tools")
    tools = []
    for i, entry in enumerate(config["tools"]):
        here = f"{where}.tools.{i}"
        if not validated:
            entry = an_object(entry, here)
        if "cachePoint" in entry and len(entry) == 1:
            continue
        if "toolSpec" not in entry:
            kinds = ", ".join(repr(key) for key in entry) or "an empty tool"
            raise FormatError(f"{here}: {kinds} is not supported by this model; only toolSpec tools are")
        spec = entry["toolSpec"] if validated else an_object(entry["toolSpec"], f"{here}.toolSpec")
        for key in ("name", "inputSchema"):
            if key not in spec:
                raise FormatError(f"{here}.toolSpec.{key} is required")
        schema = spec["inputSchema"] if validated else an_object(spec["inputSchema"], f"{here}.toolSpec.inputSchema")
        if "json" not in schema:
            raise FormatError(f"{here}.toolSpec.inputSchema.json is required")
        tools.append({"name": spec["name"], "description": spec.get("description", ""),
                      "input_schema": check_schema(schema["json"], f"{here}.toolSpec.inputSchema.json")})
    if not tools:
        raise FormatError(f"{where}.tools must hold at least one toolSpec tool")
    check_tools(tools, f"{where}.tools")
    choice = config.get("toolChoice") or {"auto": {}}
    if not validated:
        choice = an_object(choice, f"{where}.toolChoice")
    kinds = list(choice)
    if len(kinds) != 1 or kinds[0] not in ("auto", "any", "tool"):
        raise FormatError(f"{where}.toolChoice must hold exactly one of auto, any, tool")
    kind = kinds[0]
    name = None
    if kind == "tool":
        named = choice["tool"] if validated else an_object(choice["tool"], f"{where}.toolChoice.tool")
        name = named.get("name")
    check_choice(tools, kind, name, f"{where}.toolChoice.tool.name")
    return tools, kind, name
