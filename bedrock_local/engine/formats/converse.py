"""The Converse body, the same for every text model: messages, system, inferenceConfig -> output.message,
stopReason, usage, metrics. Its defaults are the model's own (those of the Meta Llama body)."""

from __future__ import annotations

from typing import Any

from .checks import (a_number, a_string, an_integer, an_object, at_most, chat_turns, no_unknown_keys, some_messages,
                     strings, type_name)
from .common import FormatError, TextRequest, TextResult
from .meta_llama import MetaLlama


class Converse:
    MEMBERS = ("messages", "system", "inferenceConfig")
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
        messages = []
        for _i, here, message, role in chat_turns(raw, where, validated=validated):
            content = message["content"]
            if isinstance(content, list) and not content:
                raise FormatError(f"{here}.content must hold at least one content block")
            messages.append({"role": role, "content": _text_blocks(content, f"{here}.content", validated)})

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
                           temperature=temperature, top_p=top_p, stop_sequences=stop_sequences)

    @staticmethod
    def render(result: TextResult, latency_ms: int | None = None) -> dict:
        """The Converse response body for `result` (latency defaults to the result's own)."""
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": result.text}]}},
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
