"""Request and response bodies per model family, as AWS documents them (docs/formats.md): one module
and one class per family, the registry of InvokeModel formats, Converse, streaming and vector sizes.
Pure functions: no model, no I/O."""

from .common import (END_TURN, KIND_EMBEDDING, KIND_TEXT, MAX_TOKENS, METRICS_KEY, STOP_SEQUENCE, BodyFormat,
                     EmbeddingRequest, EmbeddingResult, FormatError, InvokeRequest, TextRequest, TextResult)
from .converse import Converse
from .nova import AmazonNova, NovaEmbed
from .openai_chat import OpenAIChat
from .registry import EMBEDDING_FORMATS, FORMATS, TEXT_FORMATS, parse_invoke, render_invoke
from .streaming import StreamRenderer, invocation_metrics
from .vectors import fit_dimensions

parse_converse_body = Converse.parse
render_converse_response = Converse.render

__all__ = [
    "END_TURN", "KIND_EMBEDDING", "KIND_TEXT", "MAX_TOKENS", "METRICS_KEY", "STOP_SEQUENCE", "BodyFormat",
    "EmbeddingRequest", "EmbeddingResult", "FormatError", "InvokeRequest", "TextRequest", "TextResult", "Converse",
    "AmazonNova", "NovaEmbed", "OpenAIChat",
    "EMBEDDING_FORMATS", "FORMATS", "TEXT_FORMATS", "parse_invoke", "render_invoke", "StreamRenderer",
    "invocation_metrics", "fit_dimensions", "parse_converse_body", "render_converse_response",
]

