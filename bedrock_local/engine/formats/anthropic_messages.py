"""The Anthropic Claude Messages InvokeModel body: anthropic_version, max_tokens, messages, system,
sampling and stop sequences -> a message with text content, its stop reason and usage; streamed as
Anthropic's message and content block events."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from .checks import (a_number, a_string, an_integer, an_object, chat_turns, show, some_messages, strings, top_k,
                     type_name)
from .common import METRICS_KEY, STOP_SEQUENCE, FormatError, InvokeRequest, TextFormat, TextRequest, TextResult

if TYPE_CHECKING:
    from .streaming import StreamRenderer


class AnthropicMessages(TextFormat):
    name = "anthropic-messages"
    title = "Anthropic Claude Messages"
    required = ("anthropic_version", "max_tokens", "messages")
    optional = ("system", "temperature", "top_p", "top_k", "stop_sequences")
    unsupported = (("tools", "tool use"), ("tool_choice", "tool use"), ("thinking", "extended thinking"),
                   ("anthropic_beta", "beta features"))

    VERSION = "bedrock-2023-05-31"
    DEFAULTS: ClassVar[dict] = {"temperature": 1.0, "top_p": 0.999}
    MAX_TOP_K = 500
    MAX_STOP_SEQUENCES = 8191

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        version = body["anthropic_version"]
        if version != cls.VERSION:
            raise FormatError(f"{where}.anthropic_version must be {cls.VERSION!r}, got {show(version)}")
        max_tokens = an_integer(body["max_tokens"], f"{where}.max_tokens", 1, None)
        raw = some_messages(body["messages"], f"{where}.messages")
        messages = []
        for i, here, message, role in chat_turns(raw, where):
            last_assistant = role == "assistant" and i == len(raw) - 1  # a prefill may be empty
            text = _content_text(message["content"], f"{here}.content", may_be_empty=last_assistant)
            messages.append({"role": role, "content": text})
        system = None
        if body.get("system") is not None:
            system = _content_text(body["system"], f"{where}.system", may_be_empty=True) or None
        temperature = a_number(body.get("temperature", cls.DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
        top_p = a_number(body.get("top_p", cls.DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
        chosen_top_k = top_k(body, where, 0, cls.MAX_TOP_K, None, temperature)
        stops = strings(body.get("stop_sequences", []), f"{where}.stop_sequences", cls.MAX_STOP_SEQUENCES)
        text = TextRequest(messages=messages, prompt=None, system=system, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops)
        return InvokeRequest(cls.name, text=text, options={} if chosen_top_k is None else {"top_k": chosen_top_k})

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        return {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": model_id,
            "content": [{"type": "text", "text": result.text}],
            "stop_reason": result.stop_reason,
            "stop_sequence": _stop_sequence_hit(request, result),
            "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
        }

    # The stream: message_start and content_block_start before the first piece, a content_block_delta
    # per piece, then content_block_stop, message_delta (stop reason, stop sequence, usage) and
    # message_stop, which carries the metrics. An input count not known yet is 0, Anthropic's placeholder.

    @classmethod
    def opening_chunks(cls, stream: StreamRenderer, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        message = {
            "id": _message_id(), "type": "message", "role": "assistant", "model": stream.model_id, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens or 0, "output_tokens": output_tokens or 0},
        }
        return [{"type": "message_start", "message": message},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]

    @classmethod
    def delta_chunks(cls, stream: StreamRenderer, text: str, input_tokens: int | None,
                     output_tokens: int | None) -> list[dict]:
        if not text:
            return []
        return [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}]

    @classmethod
    def closing_chunks(cls, stream: StreamRenderer, result: TextResult, metrics: dict) -> list[dict]:
        return [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": result.stop_reason,
                          "stop_sequence": _stop_sequence_hit(stream.request, result)},
                "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
            },
            {"type": "message_stop", METRICS_KEY: metrics},
        ]


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
    texts = []
    for i, block in enumerate(content):
        here = f"{where}[{i}]"
        block = an_object(block, here)
        if "type" not in block:
            raise FormatError(f"{here}.type is required")
        kind = block["type"]
        if kind != "text":
            raise FormatError(
                f"{here}.type {show(kind)}: this server's models take only 'text' content blocks"
            )
        extra = [key for key in block if key not in ("type", "text", "cache_control")]
        if extra:
            raise FormatError(
                f"{here} has unknown field(s) {', '.join(repr(key) for key in extra)}; "
                "a text block takes type, text (and cache_control)"
            )
        if "text" not in block:
            raise FormatError(f"{here}.text is required")
        texts.append(a_string(block["text"], f"{here}.text"))
    return "\n".join(texts)


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
