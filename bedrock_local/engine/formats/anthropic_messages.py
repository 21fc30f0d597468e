"""The Anthropic Claude Messages InvokeModel body: anthropic_version, max_tokens, messages (text,
tool_use and tool_result blocks), system, sampling, stop sequences, tools and tool_choice -> a message
with text and tool_use content, its stop reason and usage; streamed as Anthropic's message and content
block events (a tool call as a tool_use block and input_json_delta pieces). Tool turns take the
TextRequest form of formats/tools.py."""

from __future__ import annotations

import re
import uuid
from datetime import date
from typing import TYPE_CHECKING, Any, ClassVar

from .checks import (a_list, a_number, a_string, an_integer, an_object, chat_turns, show, some_messages, strings,
                     top_k, type_name)
from .common import METRICS_KEY, STOP_SEQUENCE, FormatError, InvokeRequest, TextFormat, TextRequest, TextResult
from .tools import check_choice, check_pairs, check_schema, check_tools, result_text

if TYPE_CHECKING:
    from .streaming import StreamRenderer


class AnthropicMessages(TextFormat):
    name = "anthropic-messages"
    title = "Anthropic Claude Messages"
    required = ("anthropic_version", "max_tokens", "messages")
    optional = ("system", "temperature", "top_p", "top_k", "stop_sequences", "tools", "tool_choice")
    unsupported = (("thinking", "extended thinking"), ("anthropic_beta", "beta features"))

    VERSION = "bedrock-2023-05-31"  # what AWS's user guide says to send
    # Anthropic's SDK for Bedrock (AnthropicBedrock) sends its own dated API version instead
    # ("2026-10-21" in anthropic 2.17): a date, with or without "bedrock-", from Anthropic's first
    # API version (2023-01-01) on is taken as well
    DATED_VERSION = re.compile(r"(?:bedrock-)?(\d{4})-(\d{2})-(\d{2})")
    FIRST_VERSION = date(2023, 1, 1)
    DEFAULTS: ClassVar[dict] = {"temperature": 1.0, "top_p": 0.999}
    MAX_TOP_K = 500
    MAX_STOP_SEQUENCES = 8191

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        cls.check_version(body["anthropic_version"], f"{where}.anthropic_version")
        max_tokens = an_integer(body["max_tokens"], f"{where}.max_tokens", 1, None)
        raw = some_messages(body["messages"], f"{where}.messages")
        messages: list[dict] = []
        names: dict[str, str] = {}
        for i, here, message, role in chat_turns(raw, where):
            last_assistant = role == "assistant" and i == len(raw) - 1  # a prefill may be empty
            messages.extend(_turn(role, message["content"], f"{here}.content", last_assistant, names))
        tools, choice, tool_name, offered = _tools(body, where)
        check_pairs(messages, offered, f"{where}.messages")
        if messages[-1].get("tool_calls"):
            raise FormatError(f"{where}.messages: the last message uses tools; send their tool_result blocks in a "
                              "user message after it")
        system = None
        if body.get("system") is not None:
            system = _content_text(body["system"], f"{where}.system", may_be_empty=True) or None
        temperature = a_number(body.get("temperature", cls.DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
        top_p = a_number(body.get("top_p", cls.DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
        chosen_top_k = top_k(body, where, 0, cls.MAX_TOP_K, None, temperature)
        stops = strings(body.get("stop_sequences", []), f"{where}.stop_sequences", cls.MAX_STOP_SEQUENCES)
        text = TextRequest(messages=messages, prompt=None, system=system, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops, tools=tools,
                           tool_choice=choice, tool_name=tool_name)
        return InvokeRequest(cls.name, text=text, options={} if chosen_top_k is None else {"top_k": chosen_top_k})

    @classmethod
    def check_version(cls, version: Any, where: str) -> str:
        match = cls.DATED_VERSION.fullmatch(version) if isinstance(version, str) else None
        try:
            valid = match is not None and date(*map(int, match.groups())) >= cls.FIRST_VERSION
        except ValueError:  # not a calendar date
            valid = False
        if not valid:
            raise FormatError(f"{where} must be {cls.VERSION!r} (or the dated API version Anthropic's SDK "
                              f"sends, such as '2023-06-01'), got {show(version)}")
        return version

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        content = [] if result.tool_calls and not result.text else [{"type": "text", "text": result.text}]
        content += [{"type": "tool_use", "id": call["toolUseId"], "name": call["name"], "input": call["input"]}
                    for call in result.tool_calls]
        return {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": model_id,
            "content": content,
            "stop_reason": result.stop_reason,
            "stop_sequence": _stop_sequence_hit(request, result),
            "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
        }

    # The stream: message_start before the first piece; each content block (text, or a tool call) as
    # content_block_start, its deltas (text_delta, or input_json_delta pieces of the call's input) and
    # content_block_stop; then message_delta (stop reason, stop sequence, usage) and message_stop, which
    # carries the metrics. An input count not known yet is 0, Anthropic's placeholder.

    @classmethod
    def opening_chunks(cls, stream: StreamRenderer, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        message = {
            "id": _message_id(), "type": "message", "role": "assistant", "model": stream.model_id, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens or 0, "output_tokens": output_tokens or 0},
        }
        chunks = [{"type": "message_start", "message": message}]
        if not (stream.request.text and stream.request.text.tools):  # no tools: the answer is one text block
            chunks += cls._open(stream, {"type": "text", "text": ""})
        return chunks

    @classmethod
    def _open(cls, stream: StreamRenderer, block: dict) -> list[dict]:
        """Close the open content block (if any) and open `block`."""
        chunks = cls._close(stream)
        index = stream.state.get("next", 0)
        stream.state.update(next=index + 1, open=index, kind=block["type"])
        return chunks + [{"type": "content_block_start", "index": index, "content_block": block}]

    @classmethod
    def _close(cls, stream: StreamRenderer) -> list[dict]:
        index = stream.state.pop("open", None)
        return [] if index is None else [{"type": "content_block_stop", "index": index}]

    @classmethod
    def delta_chunks(cls, stream: StreamRenderer, text: str, input_tokens: int | None,
                     output_tokens: int | None) -> list[dict]:
        if not text:
            return []
        chunks = [] if stream.state.get("kind") == "text" and "open" in stream.state else \
            cls._open(stream, {"type": "text", "text": ""})
        return chunks + [{"type": "content_block_delta", "index": stream.state["open"],
                          "delta": {"type": "text_delta", "text": text}}]

    @classmethod
    def tool_use_chunks(cls, stream: StreamRenderer, tool_use_id: str, name: str) -> list[dict]:
        return cls._open(stream, {"type": "tool_use", "id": tool_use_id, "name": name, "input": {}})

    @classmethod
    def tool_input_chunks(cls, stream: StreamRenderer, piece: str) -> list[dict]:
        return [{"type": "content_block_delta", "index": stream.state["open"],
                 "delta": {"type": "input_json_delta", "partial_json": piece}}]

    @classmethod
    def closing_chunks(cls, stream: StreamRenderer, result: TextResult, metrics: dict) -> list[dict]:
        opening = [] if "next" in stream.state else cls._open(stream, {"type": "text", "text": ""})
        return opening + cls._close(stream) + [
            {
                "type": "message_delta",
                "delta": {"stop_reason": result.stop_reason,
                          "stop_sequence": _stop_sequence_hit(stream.request, result)},
                "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            },
            {"type": "message_stop", METRICS_KEY: metrics},
        ]


def _turn(role: str, content: Any, where: str, may_be_empty: bool, names: dict[str, str]) -> list[dict]:
    """One body message as TextRequest messages: tool_use blocks of an assistant as its tool_calls,
    tool_result blocks of a user as "tool" messages (before the user's text, if any)."""
    if not isinstance(content, list) or not any(isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result")
                                                for b in content):
        return [{"role": role, "content": _content_text(content, where, may_be_empty=may_be_empty)}]
    texts, calls, results = [], [], []
    for i, block in enumerate(content):
        here = f"{where}[{i}]"
        block = an_object(block, here)
        kind = block.get("type")
        if kind == "tool_use" and role == "assistant":
            for key in ("id", "name", "input"):
                if key not in block:
                    raise FormatError(f"{here}.{key} is required")
            names[block["id"]] = block["name"]
            calls.append({"id": a_string(block["id"], f"{here}.id"), "name": block["name"],
                          "arguments": an_object(block["input"], f"{here}.input")})
        elif kind == "tool_result" and role == "user":
            if "tool_use_id" not in block:
                raise FormatError(f"{here}.tool_use_id is required")
            inner = block.get("content", "")
            blocks = [] if isinstance(inner, str) else a_list(inner, f"{here}.content")
            text = inner if isinstance(inner, str) else result_text(
                [{"text": _block_text(b, f"{here}.content[{k}]")} for k, b in enumerate(blocks)])
            result = {"role": "tool", "tool_call_id": block["tool_use_id"],
                      "name": names.get(block["tool_use_id"], ""), "content": text}
            if block.get("is_error"):
                result["status"] = "error"
            results.append(result)
        else:
            texts.append(_block_text(block, here))
    text = "\n".join(texts)
    if role == "assistant":
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    return results + ([{"role": "user", "content": text}] if texts else [])


def _tools(body: dict, where: str) -> tuple[list[dict] | None, str | None, str | None, bool]:
    """(tools, tool choice, tool name, whether tools were offered) of the body; tool_choice "none"
    offers tools (so tool turns may be sent) but lets the model call none."""
    raw = body.get("tools")
    if raw in (None, []):  # an empty list offers no tools, as Anthropic's API takes it
        if body.get("tool_choice") is not None:
            raise FormatError(f"{where}.tool_choice needs tools to choose from")
        return None, None, None, False
    tools = []
    for i, tool in enumerate(a_list(raw, f"{where}.tools")):
        here = f"{where}.tools[{i}]"
        tool = an_object(tool, here)
        if tool.get("type", "custom") != "custom":
            raise FormatError(f"{here}.type {show(tool['type'])}: this server's models take only custom tools "
                              "(name, description, input_schema)")
        for key in ("name", "input_schema"):
            if key not in tool:
                raise FormatError(f"{here}.{key} is required")
        tools.append({"name": tool["name"], "description": tool.get("description") or "",
                      "input_schema": check_schema(tool["input_schema"], f"{here}.input_schema")})
    check_tools(tools, f"{where}.tools")
    choice = an_object(body.get("tool_choice") or {"type": "auto"}, f"{where}.tool_choice")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise FormatError(f"{where}.tool_choice.type must be one of 'auto', 'any', 'tool', 'none', got {show(kind)}")
    name = choice.get("name") if kind == "tool" else None
    check_choice(tools, kind, name, f"{where}.tool_choice.name")
    if kind == "none":
        return None, None, None, True
    return tools, kind, name, True


def _content_text(content: Any, where: str, *, may_be_empty: bool = False) -> str:
    """Anthropic content: a string or a list of text blocks; other block types are named."""
    if isinstance(content, str):
        if not content and not may_be_empty:
            raise FormatError(f"{where} must not be empty")
        return content
    if not isinstance(content, list):
        raise FormatError(f"{where} must be a string or a list of content blocks, got {type_name(content)}")
    if not content:
        raise FormatError(f"{where} must hold at least one content block")
    return "\n".join(_block_text(block, f"{where}[{i}]") for i, block in enumerate(content))


def _block_text(block: Any, here: str) -> str:
    """The text of a text block; other block types are named (tool blocks where a turn takes them:
    _turn)."""
    block = an_object(block, here)
    if "type" not in block:
        raise FormatError(f"{here}.type is required")
    kind = block["type"]
    if kind != "text":
        raise FormatError(
            f"{here}.type {show(kind)}: this server's models take only 'text' content blocks"
            + (" here" if kind in ("tool_use", "tool_result") else "")
        )
    extra = [key for key in block if key not in ("type", "text", "cache_control")]
    if extra:
        raise FormatError(
            f"{here} has unknown field(s) {', '.join(repr(key) for key in extra)}; "
            "a text block takes type, text (and cache_control)"
        )
    if "text" not in block:
        raise FormatError(f"{here}.text is required")
    return a_string(block["text"], f"{here}.text")


def _stop_sequence_hit(request: InvokeRequest, result: TextResult) -> str | None:
    """The stop sequence that ended the text: the generator's word, else the only one the request gave."""
    if result.stop_reason != STOP_SEQUENCE:
        return None
    if result.stop_sequence is not None:
        return result.stop_sequence
    stops = request.text.stop_sequences if request.text else []
    return stops[0] if len(stops) == 1 else None


def _message_id() -> str:
    return "msg_bdrk_" + uuid.uuid4().hex[:24]
