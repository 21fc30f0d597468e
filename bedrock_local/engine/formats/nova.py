"""The Amazon Nova InvokeModel bodies: the understanding models' `messages-v1` body (schemaVersion,
messages of content blocks, system, inferenceConfig -> output.message, stopReason, usage; its stream of
messageStart / contentBlockDelta / contentBlockStop / messageStop / metadata chunks) and the Nova
Multimodal Embeddings body (taskType SINGLE_EMBEDDING, singleEmbeddingParams -> embeddings[]), text
input only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .checks import a_number, a_string, an_integer, an_object, chat_turns, no_unknown_keys, one_of, show, \
    some_messages, strings, top_k, type_name
from .common import (METRICS_KEY, EmbeddingFormat, EmbeddingRequest, EmbeddingResult, FormatError, InvokeRequest,
                     TextFormat, TextRequest, TextResult)

if TYPE_CHECKING:
    from .streaming import StreamRenderer


class AmazonNova(TextFormat):
    name = "amazon-nova"
    title = "Amazon Nova"
    required = ("messages",)
    optional = ("schemaVersion", "system", "inferenceConfig")
    unsupported = (("toolConfig", "tool use through InvokeModel (use Converse)"),)

    SCHEMA_VERSION = "messages-v1"
    # The guide's Invoke examples spell the config both ways (maxTokens / max_new_tokens, topP / top_p,
    # topK / top_k): either is taken, not both.
    CONFIG: ClassVar[dict] = {"maxTokens": "max_new_tokens", "temperature": None, "topP": "top_p", "topK": "top_k",
                              "stopSequences": None}
    # AWS's maxTokens default is "dynamic" (up to the model's limit); a 135M model answering that long
    # is of no use, so the default is the one the other bodies here share.
    DEFAULTS: ClassVar[dict] = {"maxTokens": 512, "temperature": 0.7, "topP": 0.9, "topK": 50}
    MAX_TOKENS = 10000  # Nova Micro / Lite / Pro output limit
    # content blocks the guide documents that no model here can read: what they are
    OTHER_BLOCKS: ClassVar[dict] = {"image": "image input", "video": "video input", "document": "document input",
                                    "toolUse": "tool use", "toolResult": "tool results",
                                    "reasoningContent": "reasoning content", "cachePoint": "prompt caching"}

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        if "schemaVersion" in body and body["schemaVersion"] != cls.SCHEMA_VERSION:
            raise FormatError(f"{where}.schemaVersion must be {cls.SCHEMA_VERSION!r}, got {show(body['schemaVersion'])}")
        raw = some_messages(body["messages"], f"{where}.messages")
        messages = []
        for i, here, message, role in chat_turns(raw, where):
            prefill = role == "assistant" and i == len(raw) - 1  # a prefilled answer may be empty
            messages.append({"role": role, "content": _blocks_text(message["content"], f"{here}.content", prefill)})
        system = None
        if body.get("system") is not None:
            system = _blocks_text(body["system"], f"{where}.system", True) or None
        config = cls._config(an_object(body.get("inferenceConfig", {}), f"{where}.inferenceConfig"),
                             f"{where}.inferenceConfig")
        here = f"{where}.inferenceConfig"
        max_tokens = an_integer(config.get("maxTokens", cls.DEFAULTS["maxTokens"]), f"{here}.maxTokens", 1,
                                cls.MAX_TOKENS)
        temperature = a_number(config.get("temperature", cls.DEFAULTS["temperature"]), f"{here}.temperature", 0, 1)
        top_p = a_number(config.get("topP", cls.DEFAULTS["topP"]), f"{here}.topP", 0, 1)
        chosen_top_k = top_k(config, here, 0, None, cls.DEFAULTS["topK"], temperature)
        stops = strings(config.get("stopSequences", []), f"{here}.stopSequences", None)
        text = TextRequest(messages=messages, prompt=None, system=system, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops)
        return InvokeRequest(cls.name, text=text, options={} if chosen_top_k is None else {"top_k": chosen_top_k})

    @classmethod
    def _config(cls, config: dict, where: str) -> dict:
        """inferenceConfig with one spelling per field: the camelCase names, and `top_k` (the key
        checks.top_k reads)."""
        known = tuple(cls.CONFIG) + tuple(alias for alias in cls.CONFIG.values() if alias)
        no_unknown_keys(config, known, where)
        named = {}
        for field, alias in cls.CONFIG.items():
            if alias and field in config and alias in config:
                raise FormatError(f"{where} gives both {field!r} and {alias!r}; give one of them")
            if field in config or (alias and alias in config):
                named[field] = config[field] if field in config else config[alias]
        if "topK" in named:
            named["top_k"] = named.pop("topK")
        return named

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": result.text}]}},
            "stopReason": result.stop_reason,  # Nova's names are ours: end_turn, max_tokens, stop_sequence
            "usage": _usage(result),
        }

    # The stream: messageStart before the first piece, a contentBlockDelta per piece, then
    # contentBlockStop, messageStop (the stop reason) and metadata (usage), which carries the metrics.

    @classmethod
    def opening_chunks(cls, stream: StreamRenderer, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        return [{"messageStart": {"role": "assistant"}}]

    @classmethod
    def delta_chunks(cls, stream: StreamRenderer, text: str, input_tokens: int | None,
                     output_tokens: int | None) -> list[dict]:
        if not text:
            return []
        return [{"contentBlockDelta": {"delta": {"text": text}, "contentBlockIndex": 0}}]

    @classmethod
    def closing_chunks(cls, stream: StreamRenderer, result: TextResult, metrics: dict) -> list[dict]:
        return [
            {"contentBlockStop": {"contentBlockIndex": 0}},
            {"messageStop": {"stopReason": result.stop_reason}},
            {"metadata": {"usage": _usage(result), "metrics": {}, "trace": {}}, METRICS_KEY: metrics},
        ]


def _usage(result: TextResult) -> dict:
    return {"inputTokens": result.input_tokens, "outputTokens": result.output_tokens,
            "totalTokens": result.input_tokens + result.output_tokens,
            "cacheReadInputTokenCount": 0, "cacheWriteInputTokenCount": 0}


def _blocks_text(blocks: Any, where: str, may_be_empty: bool) -> str:
    """The text of a list of Nova content blocks ({"text": ...}); other documented blocks are named."""
    if not isinstance(blocks, list):
        raise FormatError(f"{where} must be a list of content blocks, got {type_name(blocks)}")
    if not blocks and not may_be_empty:
        raise FormatError(f"{where} must hold at least one content block")
    texts = []
    for i, block in enumerate(blocks):
        here = f"{where}[{i}]"
        block = an_object(block, here)
        for key in block:
            if key in AmazonNova.OTHER_BLOCKS:
                raise FormatError(f"{here}.{key}: this server's models do not support {AmazonNova.OTHER_BLOCKS[key]}; "
                                  "only text blocks are taken")
        no_unknown_keys(block, ("text",), here)
        if "text" not in block:
            raise FormatError(f"{here}.text is required")
        texts.append(a_string(block["text"], f"{here}.text", non_empty=not may_be_empty))
    return "\n".join(texts)


class NovaEmbed(EmbeddingFormat):
    name = "nova-embed"
    title = "Amazon Nova Multimodal Embeddings"
    required = ("taskType", "singleEmbeddingParams")
    optional = ("schemaVersion",)
    unsupported = (("segmentedEmbeddingParams", "segmented embeddings (asynchronous only)"),)

    SCHEMA_VERSION = "nova-multimodal-embed-v1"
    DIMENSIONS = (3072, 1024, 384, 256)  # the first is the default
    PURPOSES = ("GENERIC_INDEX", "GENERIC_RETRIEVAL", "TEXT_RETRIEVAL", "IMAGE_RETRIEVAL", "VIDEO_RETRIEVAL",
                "DOCUMENT_RETRIEVAL", "AUDIO_RETRIEVAL", "CLASSIFICATION", "CLUSTERING")
    TRUNCATION = ("START", "END", "NONE")
    MEDIA = {"image": "image", "audio": "audio", "video": "video"}

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        if "schemaVersion" in body and body["schemaVersion"] != cls.SCHEMA_VERSION:
            raise FormatError(f"{where}.schemaVersion must be {cls.SCHEMA_VERSION!r}, got {show(body['schemaVersion'])}")
        if body["taskType"] != "SINGLE_EMBEDDING":
            if body["taskType"] == "SEGMENTED_EMBEDDING":
                raise FormatError(f"{where}.taskType 'SEGMENTED_EMBEDDING' is taken by asynchronous invocation only; "
                                  "use 'SINGLE_EMBEDDING'")
            raise FormatError(f"{where}.taskType must be 'SINGLE_EMBEDDING', got {show(body['taskType'])}")
        here = f"{where}.singleEmbeddingParams"
        params = an_object(body["singleEmbeddingParams"], here)
        no_unknown_keys(params, ("embeddingPurpose", "embeddingDimension", "text", *cls.MEDIA), here)
        for kind, what in cls.MEDIA.items():
            if kind in params:
                raise FormatError(f"{here}.{kind}: this server's embedding models take text only, not {what}")
        if "embeddingPurpose" not in params:
            raise FormatError(f"{here}.embeddingPurpose is required")
        purpose = one_of(params["embeddingPurpose"], f"{here}.embeddingPurpose", cls.PURPOSES)
        dimension = params.get("embeddingDimension", cls.DIMENSIONS[0])
        if isinstance(dimension, bool) or dimension not in cls.DIMENSIONS:
            raise FormatError(f"{here}.embeddingDimension must be one of {', '.join(map(str, cls.DIMENSIONS))}, "
                              f"got {show(dimension)}")
        if "text" not in params:
            raise FormatError(f"{here}.text is required (the only input this server's embedding models take)")
        text = an_object(params["text"], f"{here}.text")
        no_unknown_keys(text, ("truncationMode", "value", "source"), f"{here}.text")
        if "source" in text:
            raise FormatError(f"{here}.text.source: text from S3 is not supported here; send it in text.value")
        for key in ("truncationMode", "value"):
            if key not in text:
                raise FormatError(f"{here}.text.{key} is required")
        truncation = one_of(text["truncationMode"], f"{here}.text.truncationMode", cls.TRUNCATION)
        value = a_string(text["value"], f"{here}.text.value")
        request = EmbeddingRequest(text=value, normalize=True, dimensions=int(dimension))
        options = {"purpose": purpose, "truncation": truncation, "dimensions": int(dimension)}
        return InvokeRequest(cls.name, embeddings=[request], options=options)

    @classmethod
    def response(cls, request: InvokeRequest, results: list[EmbeddingResult], vectors: list[list[float]]) -> dict:
        return {"embeddings": [{"embeddingType": "TEXT", "embedding": vectors[0]}]}
