"""The InvokeModel body formats by name, and the two ways through them: `parse_invoke` (with the field
name checks every format shares) and `render_invoke`."""

from __future__ import annotations

from typing import Any

from .anthropic_messages import AnthropicMessages
from .checks import an_object
from .cohere_command import CohereCommandR
from .cohere_embed import CohereEmbed
from .common import KIND_EMBEDDING, KIND_TEXT, BodyFormat, EmbeddingResult, FormatError, InvokeRequest, TextResult
from .meta_llama import MetaLlama
from .deepseek import DeepSeek
from .mistral import Mistral
from .nova import AmazonNova, NovaEmbed
from .openai_chat import OpenAIChat
from .titan_embed import TitanEmbed, TitanEmbedV1, TitanEmbedV2
from .titan_text import TitanText

# In this order a body that looks like several formats names them.
FORMATS: dict[str, type[BodyFormat]] = {family.name: family for family in (
    MetaLlama, AnthropicMessages, TitanText, Mistral, AmazonNova, OpenAIChat, DeepSeek, CohereCommandR,
    TitanEmbedV1, TitanEmbedV2, CohereEmbed, NovaEmbed, TitanEmbed)}
TEXT_FORMATS = tuple(name for name, family in FORMATS.items() if family.kind == KIND_TEXT)
EMBEDDING_FORMATS = tuple(name for name, family in FORMATS.items() if family.kind == KIND_EMBEDDING)


def parse_invoke(body_format: str, body: Any, where: str = "modelInput") -> InvokeRequest:
    """The InvokeModel body of `body_format` (one of TEXT_FORMATS or EMBEDDING_FORMATS)."""
    family = FORMATS.get(body_format)
    if family is None:
        raise ValueError(f"unknown body format {body_format!r} (expected one of {', '.join(FORMATS)})")
    body = an_object(body, where)
    _check_fields(body, family, where)
    return family.parse(body, where)


def render_invoke(request: InvokeRequest, result: TextResult | list[EmbeddingResult], *, model_id: str = "") -> dict:
    """The InvokeModel response body of `request`'s format for `result`: a TextResult for a text
    format, a list of EmbeddingResults (one per request.embeddings) for an embedding format.
    `model_id` fills Anthropic's `model`."""
    family = FORMATS.get(request.format)
    if family is None:
        raise ValueError(f"unknown body format {request.format!r}")
    return family.render(request, result, model_id)


def _check_fields(body: dict, family: type[BodyFormat], where: str) -> None:
    """Unknown fields name the format this model takes (and the one the body looks like);
    documented fields that no model here can honour say what they are; then required ones."""
    unknown = [key for key in body if key not in family.known()]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        message = (
            f"{where} has unknown field(s) {names}: this model takes the {family.title} body "
            f"({', '.join(family.required)} required); allowed: {', '.join(family.allowed())}"
        )
        looks_like = _looks_like(body, family)
        if looks_like:
            message += f"; the body looks like the {' or '.join(looks_like)} body, which this model does not take"
        raise FormatError(message)
    for name, what in family.unsupported:
        if body.get(name) not in (None, [], {}):
            raise FormatError(f"{where}.{name}: this server's models do not support {what}")
    for name in family.required:
        if name not in body:
            raise FormatError(f"{where}.{name} is required")


def _looks_like(body: dict, expected: type[BodyFormat]) -> list[str]:
    return [family.title for family in FORMATS.values()
            if family.title != expected.title and set(family.required) <= set(body) <= set(family.known())]
