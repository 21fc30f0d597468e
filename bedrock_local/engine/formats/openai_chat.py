"""The OpenAI Chat Completions InvokeModel body that Bedrock takes for OpenAI's open-weight models
(gpt-oss), and that this server also serves for Qwen3, DeepSeek-V3.1 and Pixtral Large: messages,
max_completion_tokens, temperature, top_p, stop -> a chat.completion object (choices[].message,
finish_reason, usage); streamed as chat.completion.chunk objects."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from .checks import a_boolean, a_list, a_number, a_string, an_integer, an_object, no_unknown_keys, one_of, show, \
    some_messages, strings, type_name
from .common import MAX_TOKENS, METRICS_KEY, FormatError, InvokeRequest, TextFormat, TextRequest, TextResult

if TYPE_CHECKING:
    from .streaming import StreamRenderer


class OpenAIChat(TextFormat):
    name = "openai-chat"
    title = "OpenAI Chat Completions"
    required = ("messages",)
    optional = ("model", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop", "stream", "n",
                "reasoning_effort")
    unsupported = (("tools", "tool use through InvokeModel (use Converse)"), ("tool_choice", "tool use"),
                   ("response_format", "structured output"), ("logprobs", "log probabilities"),
                   ("top_logprobs", "log probabilities"))

    ROLES = ("system", "developer", "user", "assistant")
    DEFAULTS: ClassVar[dict] = {"max_completion_tokens": 512, "temperature": 1.0, "top_p": 1.0}
    MAX_TOKENS = 32768
    MAX_STOP = 4
    EFFORTS = ("low", "medium", "high")

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        if "model" in body:
            a_string(body["model"], f"{where}.model")  # AWS wants the header's id here; it may be left out
        if body.get("n", 1) != 1:
            raise FormatError(f"{where}.n must be 1, got {show(body['n'])}")
        if "stream" in body:
            a_boolean(body["stream"], f"{where}.stream")
        if "reasoning_effort" in body:  # accepted: the local models have no reasoning budget to set
            one_of(body["reasoning_effort"], f"{where}.reasoning_effort", cls.EFFORTS)
        if "max_completion_tokens" in body and "max_tokens" in body:
            raise FormatError(f"{where} gives both 'max_completion_tokens' and 'max_tokens'; give one of them")
        limit = "max_tokens" if "max_tokens" in body else "max_completion_tokens"
        max_tokens = an_integer(body.get(limit, cls.DEFAULTS["max_completion_tokens"]), f"{where}.{limit}", 1,
                                cls.MAX_TOKENS)
        temperature = a_number(body.get("temperature", cls.DEFAULTS["temperature"]), f"{where}.temperature", 0, 2)
        top_p = a_number(body.get("top_p", cls.DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
        stop = body.get("stop", [])
        stops = [a_string(stop, f"{where}.stop")] if isinstance(stop, str) else \
            strings(stop if stop is not None else [], f"{where}.stop", cls.MAX_STOP)
        system, messages = _turns(some_messages(body["messages"], f"{where}.messages"), where)
        text = TextRequest(messages=messages, prompt=None, system=system, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops)
        return InvokeRequest(cls.name, text=text)

    @classmethod
    def stop_reason(cls, reason: str) -> str:
        return "length" if reason == MAX_TOKENS else "stop"

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        return {
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": cls.stop_reason(result.stop_reason)}],
            "usage": _usage(result),
        }

    # The stream: one chat.completion.chunk per piece (the first also carries the role), then one with
    # an empty delta, the finish reason and the usage, which carries the metrics.

    @classmethod
    def _chunk(cls, stream: StreamRenderer, delta: dict, finish_reason: str | None) -> dict:
        # one id and creation time for every chunk of the answer
        ids = stream.state.setdefault("completion", {"id": _completion_id(), "created": int(time.time())})
        return {"id": ids["id"], "object": "chat.completion.chunk", "created": ids["created"],
                "model": stream.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    @classmethod
    def opening_chunks(cls, stream: StreamRenderer, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        return [cls._chunk(stream, {"role": "assistant", "content": ""}, None)]

    @classmethod
    def delta_chunks(cls, stream: StreamRenderer, text: str, input_tokens: int | None,
                     output_tokens: int | None) -> list[dict]:
        return [cls._chunk(stream, {"content": text}, None)] if text else []

    @classmethod
    def closing_chunks(cls, stream: StreamRenderer, result: TextResult, metrics: dict) -> list[dict]:
        chunk = cls._chunk(stream, {}, cls.stop_reason(result.stop_reason))
        chunk["usage"] = _usage(result)
        chunk[METRICS_KEY] = metrics
        return [chunk]


def _turns(raw: list, where: str) -> tuple[str | None, list[dict]]:
    """System (and developer) messages as the system text; user and assistant turns, a run of one role
    joined into one turn (the local chat templates want them alternating), starting with a user turn."""
    system, messages = [], []
    for i, message in enumerate(raw):
        here = f"{where}.messages[{i}]"
        message = an_object(message, here)
        no_unknown_keys(message, ("role", "content", "name"), here)
        for key in ("role", "content"):
            if key not in message:
                raise FormatError(f"{here}.{key} is required")
        role = one_of(message["role"], f"{here}.role", OpenAIChat.ROLES)
        text = _content(message["content"], f"{here}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + text
        else:
            messages.append({"role": role, "content": text})
    if not messages or messages[0]["role"] != "user":
        raise FormatError(f"{where}.messages must hold a 'user' message before any 'assistant' one")
    return "\n".join(system) or None, messages


def _content(content: Any, where: str) -> str:
    """A message's content: a string or a list of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    parts = a_list(content, where, "a string or a list of content parts")
    texts = []
    for i, part in enumerate(parts):
        here = f"{where}[{i}]"
        part = an_object(part, here)
        if part.get("type") != "text":
            kind = show(part.get("type")) if "type" in part else type_name(None)
            raise FormatError(f"{here}.type {kind}: this server's models take only 'text' content parts")
        no_unknown_keys(part, ("type", "text"), here)
        texts.append(a_string(part.get("text"), f"{here}.text", non_empty=False))
    return "\n".join(texts)


def _usage(result: TextResult) -> dict:
    return {"prompt_tokens": result.input_tokens, "completion_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens}


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]
