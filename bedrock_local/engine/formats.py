"""Request and response bodies per model family, as AWS documents them.

Parses the bodies a batch record's `modelInput` (or a bedrock-runtime request) carries into
model-neutral requests (`TextRequest`, `EmbeddingRequest`), and renders results back into the
family's response body:

- InvokeModel, text models: the Meta Llama body (`prompt`, `max_gen_len`, `temperature`, `top_p`
  -> `generation`, `prompt_token_count`, `generation_token_count`, `stop_reason`);
- InvokeModel, embedding models: the Titan embeddings body (`inputText` -> `embedding`,
  `inputTextTokenCount`);
- Converse: `messages`, `system`, `inferenceConfig` -> `output.message`, `stopReason`, `usage`,
  `metrics`.

Every problem raises `FormatError` whose message names the field, prefixed by `where`
("modelInput" in a batch error line; the runtime API passes its own prefix).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

KIND_TEXT, KIND_EMBEDDING = "text", "embedding"  # the same values as catalog.KIND_*

# Meta Llama InvokeModel body: limits and defaults as AWS documents them.
LLAMA_MAX_GEN_LEN = 2048
LLAMA_DEFAULTS = {"max_gen_len": 512, "temperature": 0.5, "top_p": 0.9}
# Converse inferenceConfig defaults (the model's own defaults: the same as its InvokeModel body).
CONVERSE_DEFAULT_MAX_TOKENS = LLAMA_DEFAULTS["max_gen_len"]
CONVERSE_MAX_STOP_SEQUENCES = 4

END_TURN, MAX_TOKENS, STOP_SEQUENCE = "end_turn", "max_tokens", "stop_sequence"


class FormatError(Exception):
    """A request body is malformed or the model cannot serve it; str(e) names the field."""


@dataclass
class TextRequest:
    messages: list[dict] | None  # chat form: [{"role": "user"|"assistant", "content": str}]
    prompt: str | None  # raw prompt form: used as-is, no chat template
    system: str | None
    max_tokens: int
    temperature: float
    top_p: float
    stop_sequences: list[str] = field(default_factory=list)


@dataclass
class TextResult:
    text: str
    input_tokens: int
    output_tokens: int
    stop_reason: str  # END_TURN | MAX_TOKENS | STOP_SEQUENCE
    latency_ms: int = 0  # wall time of the generate call that produced it


@dataclass
class EmbeddingRequest:
    text: str
    normalize: bool = True


@dataclass
class EmbeddingResult:
    vector: list[float]
    input_tokens: int


# --------------------------------------------------------------------------------------------
# Field checks


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise FormatError(f"{where} must be a JSON object, got {_type_name(value)}")
    return value


def _no_unknown_keys(body: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [key for key in body if key not in allowed]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise FormatError(
            f"{where} has unknown or unsupported field(s) {names}; allowed: {', '.join(allowed)}"
        )


def _string(value: Any, where: str, *, non_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{where} must be a string, got {_type_name(value)}")
    if non_empty and not value:
        raise FormatError(f"{where} must not be empty")
    return value


def _integer(value: Any, where: str, low: int, high: int | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high):
        return value
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    raise FormatError(f"{where} must be an integer {bounds}, got {_show(value)}")


def _number(value: Any, where: str, low: float, high: float) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    ):
        return float(value)
    raise FormatError(f"{where} must be a number between {low:g} and {high:g}, got {_show(value)}")


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise FormatError(f"{where} must be true or false, got {_show(value)}")
    return value


# --------------------------------------------------------------------------------------------
# InvokeModel


def parse_invoke_body(kind: str, body: Any, where: str = "modelInput") -> TextRequest | EmbeddingRequest:
    """The InvokeModel body of a text (Meta Llama) or embedding (Titan) model as a request."""
    body = _object(body, where)
    if kind == KIND_TEXT:
        _no_unknown_keys(body, ("prompt", "max_gen_len", "temperature", "top_p"), where)
        if "prompt" not in body:
            raise FormatError(f"{where}.prompt is required")
        prompt = _string(body["prompt"], f"{where}.prompt")
        max_gen_len = _integer(
            body.get("max_gen_len", LLAMA_DEFAULTS["max_gen_len"]), f"{where}.max_gen_len", 1, LLAMA_MAX_GEN_LEN
        )
        temperature = _number(body.get("temperature", LLAMA_DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
        top_p = _number(body.get("top_p", LLAMA_DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
        return TextRequest(
            messages=None,
            prompt=prompt,
            system=None,
            max_tokens=max_gen_len,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=[],
        )
    if kind == KIND_EMBEDDING:
        # Titan Text Embeddings: inputText; `normalize` (V2) is honoured. `dimensions` and
        # `embeddingTypes` are not: this model's vectors have one fixed size.
        _no_unknown_keys(body, ("inputText", "normalize"), where)
        if "inputText" not in body:
            raise FormatError(f"{where}.inputText is required")
        text = _string(body["inputText"], f"{where}.inputText")
        normalize = _boolean(body.get("normalize", True), f"{where}.normalize")
        return EmbeddingRequest(text=text, normalize=normalize)
    raise ValueError(f"unknown model kind {kind!r} (expected {KIND_TEXT!r} or {KIND_EMBEDDING!r})")


def render_invoke_response(kind: str, result: TextResult | EmbeddingResult) -> dict:
    """The InvokeModel response body for `result`."""
    if kind == KIND_TEXT:
        return {
            "generation": result.text,
            "prompt_token_count": result.input_tokens,
            "generation_token_count": result.output_tokens,
            "stop_reason": "length" if result.stop_reason == MAX_TOKENS else "stop",
        }
    if kind == KIND_EMBEDDING:
        return {"embedding": list(result.vector), "inputTextTokenCount": result.input_tokens}
    raise ValueError(f"unknown model kind {kind!r} (expected {KIND_TEXT!r} or {KIND_EMBEDDING!r})")


# --------------------------------------------------------------------------------------------
# Converse


def _text_blocks(blocks: Any, where: str, allowed_kinds: str) -> str:
    if not isinstance(blocks, list):
        raise FormatError(f"{where} must be a list of content blocks, got {_type_name(blocks)}")
    texts = []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        block = _object(block, here)
        if set(block) != {"text"}:
            kinds = ", ".join(repr(key) for key in block) or "an empty block"
            raise FormatError(
                f"{here}: content block {kinds} is not supported by this model; {allowed_kinds}"
            )
        texts.append(_string(block["text"], f"{here}.text", non_empty=False))
    return "\n".join(texts)


def parse_converse_body(body: Any, where: str = "modelInput") -> TextRequest:
    """A Converse request (messages, system, inferenceConfig) as a chat TextRequest."""
    body = _object(body, where)
    _no_unknown_keys(body, ("messages", "system", "inferenceConfig"), where)
    if "messages" not in body:
        raise FormatError(f"{where}.messages is required")
    raw_messages = body["messages"]
    if not isinstance(raw_messages, list):
        raise FormatError(f"{where}.messages must be a list, got {_type_name(raw_messages)}")
    if not raw_messages:
        raise FormatError(f"{where}.messages must hold at least one message")
    messages = []
    for i, message in enumerate(raw_messages):
        here = f"{where}.messages[{i}]"
        message = _object(message, here)
        _no_unknown_keys(message, ("role", "content"), here)
        for key in ("role", "content"):
            if key not in message:
                raise FormatError(f"{here}.{key} is required")
        role = message["role"]
        expected = "user" if i % 2 == 0 else "assistant"
        if role not in ("user", "assistant"):
            raise FormatError(f"{here}.role must be 'user' or 'assistant', got {_show(role)}")
        if role != expected:
            raise FormatError(
                f"{here}.role must be {expected!r}, got {role!r}: messages must start with 'user' "
                "and alternate between 'user' and 'assistant'"
            )
        content = message["content"]
        if isinstance(content, list) and not content:
            raise FormatError(f"{here}.content must hold at least one content block")
        text = _text_blocks(content, f"{here}.content", "only text blocks are")
        messages.append({"role": role, "content": text})

    system = None
    if "system" in body:
        system = _text_blocks(body["system"], f"{where}.system", "only text blocks are")

    config = _object(body.get("inferenceConfig", {}), f"{where}.inferenceConfig")
    here = f"{where}.inferenceConfig"
    _no_unknown_keys(config, ("maxTokens", "temperature", "topP", "stopSequences"), here)
    max_tokens = _integer(config.get("maxTokens", CONVERSE_DEFAULT_MAX_TOKENS), f"{here}.maxTokens", 1, None)
    temperature = _number(config.get("temperature", LLAMA_DEFAULTS["temperature"]), f"{here}.temperature", 0, 1)
    top_p = _number(config.get("topP", LLAMA_DEFAULTS["top_p"]), f"{here}.topP", 0, 1)
    stops = config.get("stopSequences", [])
    if not isinstance(stops, list):
        raise FormatError(f"{here}.stopSequences must be a list of strings, got {_type_name(stops)}")
    if len(stops) > CONVERSE_MAX_STOP_SEQUENCES:
        raise FormatError(
            f"{here}.stopSequences may hold at most {CONVERSE_MAX_STOP_SEQUENCES} strings, got {len(stops)}"
        )
    stop_sequences = [_string(s, f"{here}.stopSequences[{i}]") for i, s in enumerate(stops)]
    return TextRequest(
        messages=messages,
        prompt=None,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_sequences=stop_sequences,
    )


def render_converse_response(result: TextResult, latency_ms: int | None = None) -> dict:
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
