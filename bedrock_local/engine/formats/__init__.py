"""Request and response bodies per model family, as AWS documents them.

Parses the bodies a batch record's `modelInput` (or a bedrock-runtime request) carries into
model-neutral requests (`TextRequest`, `EmbeddingRequest`), and renders results back into the
family's response body. Pure functions: no model, no I/O (only the ids of Anthropic and Cohere
responses are drawn at random, as AWS's are unique).

InvokeModel bodies, by format name (`TEXT_FORMATS`, `EMBEDDING_FORMATS`):

- "meta-llama": prompt, max_gen_len, temperature, top_p -> generation, prompt_token_count,
  generation_token_count, stop_reason ("stop" / "length");
- "anthropic-messages": anthropic_version ("bedrock-2023-05-31"), max_tokens, messages (content: a
  string or text blocks), system, temperature, top_p, top_k, stop_sequences -> id ("msg_bdrk_..."),
  type "message", role "assistant", model, content [{"type": "text", "text"}], stop_reason
  ("end_turn" / "max_tokens" / "stop_sequence"), stop_sequence, usage {input_tokens, output_tokens};
- "titan-text": inputText, textGenerationConfig {temperature, topP, maxTokenCount, stopSequences}
  -> inputTextTokenCount, results [{tokenCount, outputText, completionReason ("FINISH" / "LENGTH" /
  "STOP_CRITERIA_MET")}];
- "mistral": prompt, max_tokens, stop, temperature, top_p, top_k -> outputs [{text, stop_reason
  ("stop" / "length")}];
- "titan-embed": the packaged embedding model's own body: inputText, normalize -> embedding at the model's
  own size, inputTextTokenCount;
- "titan-embed-v1": inputText -> embedding (1536 floats), inputTextTokenCount;
- "titan-embed-v2": inputText, dimensions (1024 / 512 / 256), normalize, embeddingTypes ("float",
  "binary") -> embedding, inputTextTokenCount, embeddingsByType (always there, "float" by default;
  "binary" is 0 or 1 per dimension);
- "cohere-embed": texts (0 to 96, each up to 2048 characters), input_type, truncate,
  embedding_types -> id, response_type ("embeddings_floats", or "embeddings_by_type" when
  embedding_types is given), embeddings (1024 per text: a list of vectors, or an object by type),
  texts.

Sources: the Amazon Bedrock user guide pages "Anthropic Claude Messages API" (request and
response), "Amazon Titan Text models", "Amazon Titan Embeddings Text" (G1 and V2), "Meta Llama
models", "Mistral AI text completion" and "Cohere Embed models". Where the guide and the service
differ, the service wins: Titan Text's guide lists "FINISHED" but the service answers "FINISH".
Defaults and bounds of the families whose limits vary by model are those of the model the
issue names: Mistral 7B Instruct (max_tokens 512 of up to 8192, temperature 0.5, top_p 0.9,
top_k 50 of 1..200, up to 10 stop sequences) and Titan Text Express (maxTokenCount 512 of up to
8192).

API (the model-neutral requests stay what generation.py, embeddings.py, continuous.py, batch jobs
and the runtime already use):

- `parse_invoke(body_format, body, where="modelInput") -> InvokeRequest`: a text format fills
  `InvokeRequest.text`, an embedding format `InvokeRequest.embeddings` (one `EmbeddingRequest`
  per text: Cohere takes many); `options` keeps what the response needs back (Cohere's texts,
  input_type, truncate and embedding types; Titan V2's embedding types; a top_k that was given).
- `render_invoke(request, result, *, model_id="") -> dict`: the response body for a `TextResult`
  (text formats) or a list of `EmbeddingResult`s, one per `request.embeddings` (embedding
  formats). `model_id` fills Anthropic's `model`.
- `StreamRenderer(request, *, model_id="")`: the InvokeModelWithResponseStream chunks of a text
  format, each a dict the caller JSON-encodes into a `chunk`: `delta(text)` for each piece,
  `finish(result, metrics)` for the closing chunk(s), the last of which carries
  `amazon-bedrock-invocationMetrics` (see `invocation_metrics`). Embedding models do not stream.
- `fit_dimensions(vector, size) -> list[float]`: the engine's embedding model has one size (384
  for MiniLM); responses carry the size the format promises (`EmbeddingRequest.dimensions`).
  `render_invoke` maps a vector of another size through a fixed, seeded random matrix with
  orthonormal columns (size > input: an isometry, every dot product and cosine kept exactly)
  or orthonormal rows scaled by sqrt(input / size) (size < input: a Johnson-Lindenstrauss
  projection, at least as faithful as a Gaussian one), then makes it unit length again when
  the request normalizes. The matrix is drawn from numpy's frozen `RandomState` stream, seeded by
  the two sizes, and cached per (input, size): the same text gets the same vector in every
  process, batch job or serving node.
- `parse_invoke_body(kind, ...)` / `render_invoke_response(kind, ...)`: the two model kinds as
  before (kind "text" is the Meta Llama body, kind "embedding" the Titan embeddings body of
  `inputText` and `normalize`), kept for the callers that still use them.

Accepted but not honoured, and why:
- Mistral's default top_k (50): the generators sample with temperature and top-p only. So an
  explicit top_k is accepted only where it changes nothing: equal to the format's default, or with
  temperature 0 (greedy decoding keeps the most likely token, which is in every top-k). Any
  other top_k is a FormatError that says so. Anthropic's top_k has no default.
- Cohere `input_type`: required and checked, but the local embedding model has no query and
  document modes, so it does not change the vector. `truncate` "NONE" (the default) should fail
  on texts longer than the model reads; the local model cuts them at the end instead, as "END"
  does (its window is its own: 256 tokens for MiniLM). "START" cannot be done and is refused.
- Anthropic `cache_control` on a text block: accepted, as it only affects cost and latency on AWS.
- `stop_sequence` of an Anthropic response needs to know which stop sequence ended the text:
  `TextResult.stop_sequence` when the generator sets it, else the only one the request gave,
  else null.
- Titan Text `maxTokenCount` 0 (documented as the minimum) is refused: the generators make at
  least one token.

Converse: `messages`, `system`, `inferenceConfig` -> `output.message`, `stopReason`, `usage`,
`metrics` (`parse_converse_body`, `render_converse_response`).

Every problem raises `FormatError` whose message names the field, prefixed by `where`
("modelInput" in a batch error line; the runtime API passes its own prefix). A body meant for
another provider names the format this model takes and its fields.
"""

from __future__ import annotations

import functools
import math
import re
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

KIND_TEXT, KIND_EMBEDDING = "text", "embedding"  # the same values as catalog.KIND_*

TEXT_FORMATS = ("meta-llama", "anthropic-messages", "titan-text", "mistral")
EMBEDDING_FORMATS = ("titan-embed", "titan-embed-v1", "titan-embed-v2", "cohere-embed")

# Meta Llama InvokeModel body: limits and defaults as AWS documents them.
LLAMA_MAX_GEN_LEN = 2048
LLAMA_DEFAULTS = {"max_gen_len": 512, "temperature": 0.5, "top_p": 0.9}
# Converse inferenceConfig defaults (the model's own defaults: the same as its InvokeModel body).
CONVERSE_DEFAULT_MAX_TOKENS = LLAMA_DEFAULTS["max_gen_len"]
CONVERSE_MAX_STOP_SEQUENCES = 4

# Anthropic Claude Messages body.
ANTHROPIC_VERSION = "bedrock-2023-05-31"
ANTHROPIC_DEFAULTS = {"temperature": 1.0, "top_p": 0.999}
ANTHROPIC_MAX_TOP_K = 500
ANTHROPIC_MAX_STOP_SEQUENCES = 8191
# Amazon Titan Text (Express) body.
TITAN_TEXT_DEFAULTS = {"maxTokenCount": 512, "temperature": 0.7, "topP": 0.9}
TITAN_TEXT_MAX_TOKENS = 8192
# Mistral AI text completion (Mistral 7B Instruct).
MISTRAL_DEFAULTS = {"max_tokens": 512, "temperature": 0.5, "top_p": 0.9, "top_k": 50}
MISTRAL_MAX_TOKENS = 8192
MISTRAL_MAX_TOP_K = 200
MISTRAL_MAX_STOP_SEQUENCES = 10
# Embeddings: the sizes each format answers.
TITAN_EMBED_V1_DIMENSIONS = 1536
TITAN_EMBED_V2_DIMENSIONS = (1024, 512, 256)  # the first is the default
TITAN_EMBED_V2_TYPES = ("float", "binary")
COHERE_DIMENSIONS = 1024
COHERE_MAX_TEXTS = 96
COHERE_MAX_CHARACTERS = 2048
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
COHERE_TRUNCATE = ("NONE", "START", "END")
COHERE_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")

END_TURN, MAX_TOKENS, STOP_SEQUENCE = "end_turn", "max_tokens", "stop_sequence"

METRICS_KEY = "amazon-bedrock-invocationMetrics"


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
    stop_sequence: str | None = None  # the stop sequence that ended the text, when the generator tells


@dataclass
class EmbeddingRequest:
    text: str
    normalize: bool = True
    # The size the response carries (None: the model's own). A model may produce it itself;
    # otherwise render_invoke maps its vector with fit_dimensions.
    dimensions: int | None = None


@dataclass
class EmbeddingResult:
    vector: list[float]
    input_tokens: int


@dataclass
class InvokeRequest:
    """An InvokeModel body parsed: `text` for a text format, `embeddings` (one per input text) for
    an embedding format, and `options`, what the response needs back."""

    format: str
    text: TextRequest | None = None
    embeddings: list[EmbeddingRequest] | None = None
    options: dict = field(default_factory=dict)


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



def _list(value: Any, where: str, what: str = "a list") -> list:
    if not isinstance(value, list):
        raise FormatError(f"{where} must be {what}, got {_type_name(value)}")
    return value


def _turns(raw: list, where: str):
    """(index, where, message, role) of each chat message, checked as Anthropic Messages and Converse
    both want them: an object of role and content, roles 'user' first and then alternating."""
    for i, message in enumerate(raw):
        here = f"{where}.messages[{i}]"
        message = _object(message, here)
        _no_unknown_keys(message, ("role", "content"), here)
        for key in ("role", "content"):
            if key not in message:
                raise FormatError(f"{here}.{key} is required")
        role = message["role"]
        if role not in ("user", "assistant"):
            raise FormatError(f"{here}.role must be 'user' or 'assistant', got {_show(role)}")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise FormatError(
                f"{here}.role must be {expected!r}, got {role!r}: messages must start with 'user' "
                "and alternate between 'user' and 'assistant'"
            )
        yield i, here, message, role


def _strings(value: Any, where: str, max_count: int | None) -> list[str]:
    """A list of non-empty strings (stop sequences)."""
    items = _list(value, where, "a list of strings")
    if max_count is not None and len(items) > max_count:
        raise FormatError(f"{where} may hold at most {max_count} strings, got {len(items)}")
    return [_string(item, f"{where}[{i}]") for i, item in enumerate(items)]


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        names = ", ".join(repr(c) for c in choices)
        raise FormatError(f"{where} must be one of {names}, got {_show(value)}")
    return value


def _choices(value: Any, where: str, choices: tuple[str, ...]) -> list[str]:
    """A non-empty list of distinct values out of `choices` (embedding types)."""
    items = _list(value, where, "a list")
    if not items:
        raise FormatError(f"{where} must hold at least one of {', '.join(repr(c) for c in choices)}")
    picked = [_choice(item, f"{where}[{i}]", choices) for i, item in enumerate(items)]
    for i, item in enumerate(picked):
        if item in picked[:i]:
            raise FormatError(f"{where} names {item!r} twice")
    return picked


# --------------------------------------------------------------------------------------------
# InvokeModel formats


@dataclass(frozen=True)
class _Spec:
    title: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    unsupported: tuple[tuple[str, str], ...] = ()  # documented fields no model here can honour: what they do

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.required + self.optional


SPECS: dict[str, _Spec] = {
    "meta-llama": _Spec("Meta Llama", ("prompt",), ("max_gen_len", "temperature", "top_p")),
    "anthropic-messages": _Spec(
        "Anthropic Claude Messages",
        ("anthropic_version", "max_tokens", "messages"),
        ("system", "temperature", "top_p", "top_k", "stop_sequences"),
        (("tools", "tool use"), ("tool_choice", "tool use"), ("thinking", "extended thinking"),
         ("anthropic_beta", "beta features")),
    ),
    "titan-text": _Spec("Amazon Titan Text", ("inputText",), ("textGenerationConfig",)),
    "mistral": _Spec("Mistral AI text completion", ("prompt",),
                     ("max_tokens", "stop", "temperature", "top_p", "top_k")),
    "titan-embed-v1": _Spec("Amazon Titan Embeddings G1 - Text", ("inputText",), ()),
    "titan-embed-v2": _Spec("Amazon Titan Text Embeddings V2", ("inputText",),
                            ("dimensions", "normalize", "embeddingTypes")),
    "cohere-embed": _Spec("Cohere Embed", ("texts", "input_type"), ("truncate", "embedding_types"),
                          (("images", "image embeddings"),)),
}
# The packaged embedding model's own body ("titan-embed"): Titan's inputText and normalize, with the
# vector at the model's own size (what parse_invoke_body("embedding", ...) has always taken).
_LEGACY_TITAN_EMBED = _Spec("Amazon Titan Text Embeddings", ("inputText",), ("normalize",))
SPECS["titan-embed"] = _LEGACY_TITAN_EMBED


def _check_fields(body: dict, spec: _Spec, where: str) -> None:
    """Unknown fields name the format this model takes (and the one the body looks like);
    documented fields that no model here can honour say what they are; then required ones."""
    known = spec.allowed + tuple(name for name, _ in spec.unsupported)
    unknown = [key for key in body if key not in known]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        message = (
            f"{where} has unknown field(s) {names}: this model takes the {spec.title} body "
            f"({', '.join(spec.required)} required); allowed: {', '.join(spec.allowed)}"
        )
        looks_like = _looks_like(body, spec)
        if looks_like:
            message += f"; the body looks like the {' or '.join(looks_like)} body, which this model does not take"
        raise FormatError(message)
    for name, what in spec.unsupported:
        if body.get(name) not in (None, [], {}):
            raise FormatError(f"{where}.{name}: this server's models do not support {what}")
    for name in spec.required:
        if name not in body:
            raise FormatError(f"{where}.{name} is required")


def _looks_like(body: dict, expected: _Spec) -> list[str]:
    titles = []
    for spec in SPECS.values():
        known = set(spec.allowed) | {name for name, _ in spec.unsupported}
        if spec.title != expected.title and set(spec.required) <= set(body) and set(body) <= known:
            titles.append(spec.title)
    return titles


def _top_k(body: dict, where: str, low: int, high: int, default: int | None, temperature: float) -> int | None:
    """A top_k within bounds, accepted only where it changes nothing for generators that sample
    with temperature and top-p alone: the format's default, or greedy decoding."""
    if "top_k" not in body:
        return None
    top_k = _integer(body["top_k"], f"{where}.top_k", low, high)
    if temperature == 0 or top_k == default:
        return top_k
    keep = f"leave it out (or give the default, {default})" if default is not None else "leave it out"
    raise FormatError(
        f"{where}.top_k: this server's models sample with temperature and top_p only, so a top_k of "
        f"{top_k} cannot be honoured; {keep}, or set temperature to 0 (greedy decoding, where top_k "
        "changes nothing)"
    )


def parse_invoke(body_format: str, body: Any, where: str = "modelInput") -> InvokeRequest:
    """The InvokeModel body of `body_format` (one of TEXT_FORMATS or EMBEDDING_FORMATS)."""
    parse = _PARSERS.get(body_format)
    if parse is None:
        raise ValueError(f"unknown body format {body_format!r} (expected one of {', '.join(_PARSERS)})")
    body = _object(body, where)
    _check_fields(body, SPECS[body_format], where)
    return parse(body, where)


def _parse_llama(body: dict, where: str) -> InvokeRequest:
    prompt = _string(body["prompt"], f"{where}.prompt")
    max_gen_len = _integer(
        body.get("max_gen_len", LLAMA_DEFAULTS["max_gen_len"]), f"{where}.max_gen_len", 1, LLAMA_MAX_GEN_LEN
    )
    temperature = _number(body.get("temperature", LLAMA_DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
    top_p = _number(body.get("top_p", LLAMA_DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
    turns = _llama3_turns(prompt)  # Llama 3's chat template: through the local model's own instead
    system, messages = turns if turns else (None, None)
    text = TextRequest(messages=messages, prompt=None if turns else prompt, system=system, max_tokens=max_gen_len,
                       temperature=temperature, top_p=top_p, stop_sequences=[])
    return InvokeRequest("meta-llama", text=text)


def _anthropic_text(content: Any, where: str, *, may_be_empty: bool = False) -> str:
    """Anthropic content: a string or a list of text blocks; other block types are named."""
    if isinstance(content, str):
        if not content and not may_be_empty:
            raise FormatError(f"{where} must not be empty")
        return content
    if not isinstance(content, list):
        raise FormatError(f"{where} must be a string or a list of content blocks, got {_type_name(content)}")
    if not content:
        raise FormatError(f"{where} must hold at least one content block")
    texts = []
    for i, block in enumerate(content):
        here = f"{where}[{i}]"
        block = _object(block, here)
        if "type" not in block:
            raise FormatError(f"{here}.type is required")
        kind = block["type"]
        if kind != "text":
            raise FormatError(
                f"{here}.type {_show(kind)}: this server's models take only 'text' content blocks"
            )
        extra = [key for key in block if key not in ("type", "text", "cache_control")]
        if extra:
            raise FormatError(
                f"{here} has unknown field(s) {', '.join(repr(key) for key in extra)}; "
                "a text block takes type, text (and cache_control)"
            )
        if "text" not in block:
            raise FormatError(f"{here}.text is required")
        texts.append(_string(block["text"], f"{here}.text"))
    return "\n".join(texts)


def _parse_anthropic(body: dict, where: str) -> InvokeRequest:
    version = body["anthropic_version"]
    if version != ANTHROPIC_VERSION:
        raise FormatError(f"{where}.anthropic_version must be {ANTHROPIC_VERSION!r}, got {_show(version)}")
    max_tokens = _integer(body["max_tokens"], f"{where}.max_tokens", 1, None)
    raw = _list(body["messages"], f"{where}.messages")
    if not raw:
        raise FormatError(f"{where}.messages must hold at least one message")
    messages = []
    for i, here, message, role in _turns(raw, where):
        last_assistant = role == "assistant" and i == len(raw) - 1  # a prefill may be empty
        text = _anthropic_text(message["content"], f"{here}.content", may_be_empty=last_assistant)
        messages.append({"role": role, "content": text})
    system = None
    if body.get("system") is not None:
        system = _anthropic_text(body["system"], f"{where}.system", may_be_empty=True) or None
    temperature = _number(body.get("temperature", ANTHROPIC_DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
    top_p = _number(body.get("top_p", ANTHROPIC_DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
    top_k = _top_k(body, where, 0, ANTHROPIC_MAX_TOP_K, None, temperature)
    stops = _strings(body.get("stop_sequences", []), f"{where}.stop_sequences", ANTHROPIC_MAX_STOP_SEQUENCES)
    text = TextRequest(messages=messages, prompt=None, system=system, max_tokens=max_tokens,
                       temperature=temperature, top_p=top_p, stop_sequences=stops)
    return InvokeRequest("anthropic-messages", text=text, options={} if top_k is None else {"top_k": top_k})


def _parse_titan_text(body: dict, where: str) -> InvokeRequest:
    # inputText is the instruction to an instruction-tuned model: one user turn through the local
    # model's chat template (as a raw prompt the packaged chat model tends to end at once)
    prompt = _string(body["inputText"], f"{where}.inputText")
    here = f"{where}.textGenerationConfig"
    config = _object(body.get("textGenerationConfig", {}), here)
    _no_unknown_keys(config, ("temperature", "topP", "maxTokenCount", "stopSequences"), here)
    max_tokens = _integer(config.get("maxTokenCount", TITAN_TEXT_DEFAULTS["maxTokenCount"]),
                          f"{here}.maxTokenCount", 1, TITAN_TEXT_MAX_TOKENS)
    temperature = _number(config.get("temperature", TITAN_TEXT_DEFAULTS["temperature"]), f"{here}.temperature", 0, 1)
    top_p = _number(config.get("topP", TITAN_TEXT_DEFAULTS["topP"]), f"{here}.topP", 0, 1)
    stops = _strings(config.get("stopSequences", []), f"{here}.stopSequences", None)
    found = _TITAN_TURN.fullmatch(prompt)  # Titan's documented "User: ...\nBot:" convention
    text = TextRequest(messages=[{"role": "user", "content": found["text"].strip() if found else prompt}], prompt=None,
                       system=None, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop_sequences=stops)
    return InvokeRequest("titan-text", text=text)


def _parse_mistral(body: dict, where: str) -> InvokeRequest:
    prompt = _string(body["prompt"], f"{where}.prompt")
    max_tokens = _integer(body.get("max_tokens", MISTRAL_DEFAULTS["max_tokens"]), f"{where}.max_tokens", 1,
                          MISTRAL_MAX_TOKENS)
    temperature = _number(body.get("temperature", MISTRAL_DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
    top_p = _number(body.get("top_p", MISTRAL_DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
    top_k = _top_k(body, where, 1, MISTRAL_MAX_TOP_K, MISTRAL_DEFAULTS["top_k"], temperature)
    stops = _strings(body.get("stop", []), f"{where}.stop", MISTRAL_MAX_STOP_SEQUENCES)
    turn = _mistral_turn(prompt)
    text = TextRequest(messages=turn, prompt=None if turn else prompt, system=None, max_tokens=max_tokens,
                       temperature=temperature, top_p=top_p, stop_sequences=stops)
    return InvokeRequest("mistral", text=text, options={} if top_k is None else {"top_k": top_k})


def _parse_titan_embed_v1(body: dict, where: str) -> InvokeRequest:
    text = _string(body["inputText"], f"{where}.inputText")
    # G1 takes no parameters and does not make its vectors unit length.
    request = EmbeddingRequest(text=text, normalize=False, dimensions=TITAN_EMBED_V1_DIMENSIONS)
    return InvokeRequest("titan-embed-v1", embeddings=[request], options={"dimensions": TITAN_EMBED_V1_DIMENSIONS})


def _parse_titan_embed_v2(body: dict, where: str) -> InvokeRequest:
    text = _string(body["inputText"], f"{where}.inputText")
    dimensions = body.get("dimensions", TITAN_EMBED_V2_DIMENSIONS[0])
    if isinstance(dimensions, bool) or dimensions not in TITAN_EMBED_V2_DIMENSIONS:
        sizes = ", ".join(str(d) for d in TITAN_EMBED_V2_DIMENSIONS)
        raise FormatError(f"{where}.dimensions must be one of {sizes}, got {_show(dimensions)}")
    dimensions = int(dimensions)
    normalize = _boolean(body.get("normalize", True), f"{where}.normalize")
    types = _choices(body.get("embeddingTypes", ["float"]), f"{where}.embeddingTypes", TITAN_EMBED_V2_TYPES)
    request = EmbeddingRequest(text=text, normalize=normalize, dimensions=dimensions)
    options = {"dimensions": dimensions, "normalize": normalize, "embedding_types": types}
    return InvokeRequest("titan-embed-v2", embeddings=[request], options=options)


def _parse_cohere_embed(body: dict, where: str) -> InvokeRequest:
    texts = _list(body["texts"], f"{where}.texts", "a list of strings")
    if len(texts) > COHERE_MAX_TEXTS:
        raise FormatError(f"{where}.texts may hold at most {COHERE_MAX_TEXTS} strings, got {len(texts)}")
    for i, text in enumerate(texts):
        _string(text, f"{where}.texts[{i}]", non_empty=False)
        if len(text) > COHERE_MAX_CHARACTERS:
            raise FormatError(
                f"{where}.texts[{i}] must be at most {COHERE_MAX_CHARACTERS} characters, got {len(text)}"
            )
    input_type = body["input_type"]
    if input_type == "image":
        raise FormatError(f"{where}.input_type 'image': image embeddings are not supported by this server's models")
    input_type = _choice(input_type, f"{where}.input_type", COHERE_INPUT_TYPES)
    truncate = _choice(body.get("truncate", "NONE"), f"{where}.truncate", COHERE_TRUNCATE)
    if truncate == "START":
        raise FormatError(
            f"{where}.truncate 'START' is not supported: this server's embedding models cut long texts at "
            "the end; use 'END' or 'NONE'"
        )
    types = None
    if body.get("embedding_types") is not None:
        types = _choices(body["embedding_types"], f"{where}.embedding_types", COHERE_EMBEDDING_TYPES)
    requests = [EmbeddingRequest(text=text, normalize=True, dimensions=COHERE_DIMENSIONS) for text in texts]
    options = {"texts": list(texts), "input_type": input_type, "truncate": truncate, "embedding_types": types,
               "dimensions": COHERE_DIMENSIONS}
    return InvokeRequest("cohere-embed", embeddings=requests, options=options)


_MISTRAL_TURN = re.compile(r"\s*(?:<s>)?\s*\[INST\](?P<text>(?:(?!\[INST\]|\[/INST\]).)*)\[/INST\]\s*", re.S)


_TITAN_TURN = re.compile(r"\s*User:(?P<text>.+?)\n\s*Bot:\s*", re.S)
_LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(?P<role>system|user|assistant)<\|end_header_id\|>\n\n"
                          r"(?P<text>.*?)(?:<\|eot_id\|>|$)", re.S)


def _llama3_turns(prompt: str) -> tuple[str | None, list[dict]] | None:
    """A prompt in Llama 3's chat template (`<|begin_of_text|><|start_header_id|>user<|end_header_id|>
    ... <|eot_id|><|start_header_id|>assistant<|end_header_id|>`) as (system, messages), so the local
    model answers through its own template; None for any other prompt (used as raw text)."""
    if "<|start_header_id|>" not in prompt:
        return None
    turns = [(m["role"], m["text"].strip()) for m in _LLAMA3_TURN.finditer(prompt)]
    system = "\n".join(text for role, text in turns if role == "system") or None
    messages = [{"role": role, "content": text} for role, text in turns if role != "system"]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the open assistant header the answer goes after
    roles = [m["role"] for m in messages]
    if not messages or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2):
        return None
    return system, messages


def _mistral_turn(prompt: str) -> list[dict] | None:
    """A single-turn Mistral prompt (`<s>[INST] ... [/INST]`) as one user message, so the local model
    answers it through its own chat template; None for any other prompt (used as raw text)."""
    found = _MISTRAL_TURN.fullmatch(prompt)
    return [{"role": "user", "content": found["text"].strip()}] if found and found["text"].strip() else None


def _parse_titan_embed_native(body: dict, where: str) -> InvokeRequest:
    text = _string(body["inputText"], f"{where}.inputText")
    normalize = _boolean(body.get("normalize", True), f"{where}.normalize")
    return InvokeRequest("titan-embed", embeddings=[EmbeddingRequest(text=text, normalize=normalize)])


_PARSERS = {
    "titan-embed": _parse_titan_embed_native,
    "meta-llama": _parse_llama,
    "anthropic-messages": _parse_anthropic,
    "titan-text": _parse_titan_text,
    "mistral": _parse_mistral,
    "titan-embed-v1": _parse_titan_embed_v1,
    "titan-embed-v2": _parse_titan_embed_v2,
    "cohere-embed": _parse_cohere_embed,
}


# --------------------------------------------------------------------------------------------
# InvokeModel responses


def _llama_stop(reason: str) -> str:
    return "length" if reason == MAX_TOKENS else "stop"


_TITAN_COMPLETION = {END_TURN: "FINISH", MAX_TOKENS: "LENGTH", STOP_SEQUENCE: "STOP_CRITERIA_MET"}


def _stop_sequence_hit(request: InvokeRequest, result: TextResult) -> str | None:
    if result.stop_reason != STOP_SEQUENCE:
        return None
    if result.stop_sequence is not None:
        return result.stop_sequence
    stops = request.text.stop_sequences if request.text else []
    return stops[0] if len(stops) == 1 else None


def _message_id() -> str:
    return "msg_bdrk_" + uuid.uuid4().hex[:24]


def render_invoke(request: InvokeRequest, result: TextResult | list[EmbeddingResult], *, model_id: str = "") -> dict:
    """The InvokeModel response body of `request`'s format for `result`: a TextResult for a text
    format, a list of EmbeddingResults (one per request.embeddings) for an embedding format."""
    fmt = request.format
    if fmt in TEXT_FORMATS:
        if not isinstance(result, TextResult):
            raise ValueError(f"the {fmt} format renders a TextResult, got {type(result).__name__}")
        if fmt == "meta-llama":
            return {
                "generation": result.text,
                "prompt_token_count": result.input_tokens,
                "generation_token_count": result.output_tokens,
                "stop_reason": _llama_stop(result.stop_reason),
            }
        if fmt == "anthropic-messages":
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
        if fmt == "titan-text":
            return {
                "inputTextTokenCount": result.input_tokens,
                "results": [{
                    "tokenCount": result.output_tokens,
                    "outputText": result.text,
                    "completionReason": _TITAN_COMPLETION[result.stop_reason],
                }],
            }
        return {"outputs": [{"text": result.text, "stop_reason": _llama_stop(result.stop_reason)}]}  # mistral

    if fmt not in EMBEDDING_FORMATS:
        raise ValueError(f"unknown body format {fmt!r}")
    results = [result] if isinstance(result, EmbeddingResult) else list(result)
    wanted = request.embeddings or []
    if len(results) != len(wanted) or not all(isinstance(r, EmbeddingResult) for r in results):
        raise ValueError(f"the {fmt} format renders {len(wanted)} EmbeddingResult(s), got {len(results)}")
    vectors = [_sized_vector(r, q) for r, q in zip(results, wanted)]
    if fmt in ("titan-embed-v1", "titan-embed"):
        return {"embedding": vectors[0], "inputTextTokenCount": results[0].input_tokens}
    if fmt == "titan-embed-v2":
        by_type: dict[str, list] = {}
        for kind in request.options.get("embedding_types", ["float"]):
            by_type[kind] = vectors[0] if kind == "float" else [1 if x > 0 else 0 for x in vectors[0]]
        return {"embedding": vectors[0], "inputTextTokenCount": results[0].input_tokens, "embeddingsByType": by_type}
    # cohere-embed
    types = request.options.get("embedding_types")
    body: dict[str, Any] = {"id": str(uuid.uuid4())}
    if types is None:
        body["response_type"] = "embeddings_floats"
        body["embeddings"] = vectors
    else:
        body["response_type"] = "embeddings_by_type"
        body["embeddings"] = {kind: [_cohere_quantize(v, kind) for v in vectors] for kind in types}
    body["texts"] = list(request.options.get("texts", [q.text for q in wanted]))
    return body


def _sized_vector(result: EmbeddingResult, request: EmbeddingRequest) -> list[float]:
    vector = [float(x) for x in result.vector]
    if request.dimensions is None or len(vector) == request.dimensions:
        return vector
    vector = fit_dimensions(vector, request.dimensions)
    return _unit(vector) if request.normalize else vector


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _cohere_quantize(vector: list[float], kind: str) -> list:
    """Cohere's embedding types from a float vector: int8/uint8 scale the largest magnitude to
    127 (uint8 is int8 + 128); binary/ubinary pack the signs (positive = 1) eight to a byte,
    most significant first (ubinary 0..255, binary = ubinary - 128)."""
    if kind == "float":
        return vector
    if kind in ("int8", "uint8"):
        peak = max((abs(x) for x in vector), default=0.0)
        scale = 127.0 / peak if peak > 0 else 0.0
        ints = [max(-128, min(127, round(x * scale))) for x in vector]
        return ints if kind == "int8" else [x + 128 for x in ints]
    packed = []
    for start in range(0, len(vector), 8):
        byte = 0
        for bit, x in enumerate(vector[start:start + 8]):
            if x > 0:
                byte |= 1 << (7 - bit)
        packed.append(byte)
    return packed if kind == "ubinary" else [b - 128 for b in packed]


# --------------------------------------------------------------------------------------------
# InvokeModelWithResponseStream


def invocation_metrics(input_tokens: int, output_tokens: int, invocation_latency_ms: int,
                       first_byte_latency_ms: int) -> dict:
    """The `amazon-bedrock-invocationMetrics` object AWS puts in a stream's last chunk."""
    return {
        "inputTokenCount": int(input_tokens),
        "outputTokenCount": int(output_tokens),
        "invocationLatency": int(invocation_latency_ms),
        "firstByteLatency": int(first_byte_latency_ms),
    }


class StreamRenderer:
    """The chunks of InvokeModelWithResponseStream for a text format, as that provider streams
    them; each chunk is a dict to JSON-encode into one `chunk` event.

    - meta-llama: {generation, prompt_token_count, generation_token_count, stop_reason} per piece;
    - anthropic-messages: message_start and content_block_start before the first piece,
      content_block_delta (text_delta) per piece, then content_block_stop, message_delta (the stop
      reason, stop sequence and usage) and message_stop;
    - titan-text: {outputText, index (0, the result's), totalOutputTextTokenCount,
      completionReason, inputTextTokenCount} per piece;
    - mistral: {outputs: [{text, stop_reason}]} per piece.

    The last chunk carries `amazon-bedrock-invocationMetrics`; for all but Anthropic it is a chunk
    with no text that carries the stop reason and the token counts. Token counts that AWS sends
    early (Llama's and Titan's input count in the first chunk, Anthropic's in message_start, the
    running output count) come from the optional `input_tokens` / `output_tokens` of `delta`; when
    the caller does not know them yet they are null (Anthropic: 0, its placeholder) and the input
    count goes in the closing chunk instead.
    """

    def __init__(self, request: InvokeRequest, *, model_id: str = ""):
        if request.format not in TEXT_FORMATS:
            title = SPECS[request.format].title if request.format in SPECS else request.format
            raise FormatError(f"the {title} body is answered by InvokeModel only: embedding models do not stream")
        self.request = request
        self.model_id = model_id
        self.message_id = _message_id()
        self._started = False
        self._input_sent = False

    def delta(self, text: str, *, input_tokens: int | None = None, output_tokens: int | None = None) -> list[dict]:
        """The chunks to send for a piece of text (none for an empty piece, unless it is the first
        and carries the input token count)."""
        if not text and (self._started or input_tokens is None):
            return []
        fmt = self.request.format
        chunks = self._start(input_tokens, output_tokens)
        if fmt == "anthropic-messages":
            if text:
                chunks.append({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": text}})
            return chunks
        first = self._take_input(input_tokens)
        if fmt == "meta-llama":
            chunks.append({"generation": text, "prompt_token_count": first, "generation_token_count": output_tokens,
                           "stop_reason": None})
        elif fmt == "titan-text":
            chunks.append({"outputText": text, "index": 0, "totalOutputTextTokenCount": output_tokens,
                           "completionReason": None, "inputTextTokenCount": first})
        else:  # mistral
            chunks.append({"outputs": [{"text": text, "stop_reason": None}]})
        return chunks

    def finish(self, result: TextResult, metrics: dict) -> list[dict]:
        """The closing chunk(s); the last carries `metrics` (see `invocation_metrics`)."""
        fmt = self.request.format
        chunks = self._start(result.input_tokens, None)
        metrics = dict(metrics)
        if fmt == "anthropic-messages":
            return chunks + [
                {"type": "content_block_stop", "index": 0},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": result.stop_reason,
                              "stop_sequence": _stop_sequence_hit(self.request, result)},
                    "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
                },
                {"type": "message_stop", METRICS_KEY: metrics},
            ]
        first = self._take_input(result.input_tokens)
        if fmt == "meta-llama":
            chunk = {"generation": "", "prompt_token_count": first, "generation_token_count": result.output_tokens,
                     "stop_reason": _llama_stop(result.stop_reason)}
        elif fmt == "titan-text":
            chunk = {"outputText": "", "index": 0, "totalOutputTextTokenCount": result.output_tokens,
                     "completionReason": _TITAN_COMPLETION[result.stop_reason], "inputTextTokenCount": first}
        else:  # mistral
            chunk = {"outputs": [{"text": "", "stop_reason": _llama_stop(result.stop_reason)}]}
        chunk[METRICS_KEY] = metrics
        return chunks + [chunk]

    def _start(self, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        if self._started:
            return []
        self._started = True
        if self.request.format != "anthropic-messages":
            return []
        self._input_sent = input_tokens is not None
        message = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model_id, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens or 0, "output_tokens": output_tokens or 0},
        }
        return [{"type": "message_start", "message": message},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]

    def _take_input(self, input_tokens: int | None) -> int | None:
        """The input token count for this chunk: given once, in the first chunk that knows it."""
        if self._input_sent or input_tokens is None:
            return None
        self._input_sent = True
        return input_tokens


# --------------------------------------------------------------------------------------------
# Vector sizes


def fit_dimensions(vector: list[float], size: int) -> list[float]:
    """`vector` mapped to `size` dimensions by a fixed random projection (see the module
    docstring): unchanged when it already has that size; dot products and cosines kept exactly
    when growing, approximately (Johnson-Lindenstrauss) when shrinking. Deterministic."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not vector:
        raise ValueError("cannot fit an empty vector")
    if len(vector) == size:
        return [float(x) for x in vector]
    import numpy as np

    projected = _projection(len(vector), size) @ np.asarray(vector, dtype=np.float64)
    return projected.tolist()


@functools.lru_cache(maxsize=16)
def _projection(source: int, target: int):
    """A (target, source) matrix: orthonormal columns when target > source, else orthonormal
    rows scaled by sqrt(source / target); drawn from numpy's frozen RandomState stream seeded by
    the sizes, and made unique by QR with a positive diagonal."""
    import numpy as np

    seed = zlib.crc32(f"bedrock-local/fit_dimensions/{source}->{target}".encode())
    tall, narrow = max(source, target), min(source, target)
    gaussian = np.random.RandomState(seed).standard_normal((tall, narrow))
    q, r = np.linalg.qr(gaussian)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # the unique QR: independent of the LAPACK in use
    matrix = q if target > source else q.T * math.sqrt(source / target)
    matrix.setflags(write=False)
    return matrix


# --------------------------------------------------------------------------------------------
# InvokeModel by model kind (the callers that predate the formats)


def parse_invoke_body(kind: str, body: Any, where: str = "modelInput") -> TextRequest | EmbeddingRequest:
    """The InvokeModel body of a text (Meta Llama) or embedding (Titan) model as a request."""
    if kind == KIND_TEXT:
        return parse_invoke("meta-llama", body, where).text  # type: ignore[return-value]
    if kind == KIND_EMBEDDING:
        # Titan Text Embeddings as accepted so far: inputText and `normalize`, at the model's own size.
        body = _object(body, where)
        _check_fields(body, _LEGACY_TITAN_EMBED, where)
        text = _string(body["inputText"], f"{where}.inputText")
        normalize = _boolean(body.get("normalize", True), f"{where}.normalize")
        return EmbeddingRequest(text=text, normalize=normalize)
    raise ValueError(f"unknown model kind {kind!r} (expected {KIND_TEXT!r} or {KIND_EMBEDDING!r})")


def render_invoke_response(kind: str, result: TextResult | EmbeddingResult) -> dict:
    """The InvokeModel response body for `result`."""
    if kind == KIND_TEXT:
        return render_invoke(InvokeRequest("meta-llama"), result)
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
    for _i, here, message, role in _turns(raw_messages, where):
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
