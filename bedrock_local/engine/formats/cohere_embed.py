"""The Cohere Embed InvokeModel body: texts, input_type, truncate, embedding_types -> id,
response_type, embeddings (a list of vectors, or an object by type) and texts."""

from __future__ import annotations

import uuid
from typing import Any

from .checks import a_list, a_string, one_of, some_of
from .common import EmbeddingFormat, EmbeddingRequest, EmbeddingResult, FormatError, InvokeRequest


class CohereEmbed(EmbeddingFormat):
    name = "cohere-embed"
    title = "Cohere Embed"
    required = ("texts", "input_type")
    optional = ("truncate", "embedding_types")
    unsupported = (("images", "image embeddings"),)

    DIMENSIONS = 1024
    MAX_TEXTS = 96
    MAX_CHARACTERS = 2048
    INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
    TRUNCATE = ("NONE", "START", "END")
    EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        texts = a_list(body["texts"], f"{where}.texts", "a list of strings")
        if len(texts) > cls.MAX_TEXTS:
            raise FormatError(f"{where}.texts may hold at most {cls.MAX_TEXTS} strings, got {len(texts)}")
        for i, text in enumerate(texts):
            a_string(text, f"{where}.texts[{i}]", non_empty=False)
            if len(text) > cls.MAX_CHARACTERS:
                raise FormatError(
                    f"{where}.texts[{i}] must be at most {cls.MAX_CHARACTERS} characters, got {len(text)}"
                )
        # input_type is checked, but the local embedding model has no query and document modes
        input_type = body["input_type"]
        if input_type == "image":
            raise FormatError(f"{where}.input_type 'image': image embeddings are not supported by this server's models")
        input_type = one_of(input_type, f"{where}.input_type", cls.INPUT_TYPES)
        # "NONE" should fail on texts longer than the model reads; the local model cuts them at the end, as "END" does
        truncate = one_of(body.get("truncate", "NONE"), f"{where}.truncate", cls.TRUNCATE)
        if truncate == "START":
            raise FormatError(
                f"{where}.truncate 'START' is not supported: this server's embedding models cut long texts at "
                "the end; use 'END' or 'NONE'"
            )
        types = None
        if body.get("embedding_types") is not None:
            types = some_of(body["embedding_types"], f"{where}.embedding_types", cls.EMBEDDING_TYPES)
        requests = [EmbeddingRequest(text=text, normalize=True, dimensions=cls.DIMENSIONS) for text in texts]
        options = {"texts": list(texts), "input_type": input_type, "truncate": truncate, "embedding_types": types,
                   "dimensions": cls.DIMENSIONS}
        return InvokeRequest(cls.name, embeddings=requests, options=options)

    @classmethod
    def response(cls, request: InvokeRequest, results: list[EmbeddingResult], vectors: list[list[float]]) -> dict:
        types = request.options.get("embedding_types")
        body: dict[str, Any] = {"id": str(uuid.uuid4())}
        if types is None:
            body["response_type"] = "embeddings_floats"
            body["embeddings"] = vectors
        else:
            body["response_type"] = "embeddings_by_type"
            body["embeddings"] = {kind: [_quantize(v, kind) for v in vectors] for kind in types}
        body["texts"] = list(request.options.get("texts", [q.text for q in request.embeddings or []]))
        return body


def _quantize(vector: list[float], kind: str) -> list:
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
