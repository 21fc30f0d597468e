"""What every body family shares: the model-neutral requests and results, FormatError, the stop
reasons and model kinds, and the base classes a family fills in (docs/formats.md describes them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .vectors import fit_dimensions, unit

if TYPE_CHECKING:
    from .streaming import StreamRenderer

KIND_TEXT, KIND_EMBEDDING = "text", "embedding"  # the same values as catalog.KIND_*

END_TURN, MAX_TOKENS, STOP_SEQUENCE, TOOL_USE = "end_turn", "max_tokens", "stop_sequence", "tool_use"

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
    # tools offered: [{"name": str, "description": str, "input_schema": JSON schema dict}]
    tools: list[dict] | None = None
    tool_choice: str | None = None  # "auto" | "any" | "tool" (catalog.TOOL_CHOICES); None with no tools
    tool_name: str | None = None  # the tool that tool_choice "tool" names


@dataclass
class TextResult:
    text: str
    input_tokens: int
    output_tokens: int
    stop_reason: str  # END_TURN | MAX_TOKENS | STOP_SEQUENCE
    latency_ms: int = 0  # wall time of the generate call that produced it
    stop_sequence: str | None = None  # the stop sequence that ended the text, when the generator tells
    # the tools the model called (stop_reason TOOL_USE): [{"toolUseId": str, "name": str, "input": dict}]
    tool_calls: list[dict] = field(default_factory=list)


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


class BodyFormat:
    """One InvokeModel body format: its fields, how a body parses and how a result renders."""

    name: ClassVar[str]  # the format's name in the catalog's `body_format`
    kind: ClassVar[str]  # KIND_TEXT or KIND_EMBEDDING
    title: ClassVar[str]  # as the Bedrock user guide names the body
    required: ClassVar[tuple[str, ...]]
    optional: ClassVar[tuple[str, ...]] = ()
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = ()  # documented fields no model here can honour: what they do

    @classmethod
    def allowed(cls) -> tuple[str, ...]:
        return cls.required + cls.optional

    @classmethod
    def known(cls) -> tuple[str, ...]:
        return cls.allowed() + tuple(name for name, _ in cls.unsupported)

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        """`body`, an object whose field names are already checked, as a request."""
        raise NotImplementedError

    @classmethod
    def render(cls, request: InvokeRequest, result: Any, model_id: str) -> dict:
        raise NotImplementedError


class TextFormat(BodyFormat):
    """A text body: one response body, and the chunks of a streamed one. The chunks of most families
    are one `piece` per text piece, and a closing piece with no text that carries the stop reason."""

    kind = KIND_TEXT

    @classmethod
    def render(cls, request: InvokeRequest, result: Any, model_id: str) -> dict:
        if not isinstance(result, TextResult):
            raise ValueError(f"the {cls.name} format renders a TextResult, got {type(result).__name__}")
        return cls.response(request, result, model_id)

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        raise NotImplementedError

    @classmethod
    def stop_reason(cls, reason: str) -> str:
        """The family's name for END_TURN, MAX_TOKENS or STOP_SEQUENCE."""
        return reason

    @classmethod
    def piece(cls, text: str, input_tokens: int | None, output_tokens: int | None, stop_reason: str | None) -> dict:
        """One streamed chunk."""
        raise NotImplementedError

    # The stream: StreamRenderer asks for the opening chunks before the first piece, then for the chunks
    # of each piece and of the end.

    @classmethod
    def opening_chunks(cls, stream: StreamRenderer, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        return []

    @classmethod
    def delta_chunks(cls, stream: StreamRenderer, text: str, input_tokens: int | None,
                     output_tokens: int | None) -> list[dict]:
        return [cls.piece(text, stream.take_input(input_tokens), output_tokens, None)]

    @classmethod
    def closing_chunks(cls, stream: StreamRenderer, result: TextResult, metrics: dict) -> list[dict]:
        chunk = cls.piece("", stream.take_input(result.input_tokens), result.output_tokens,
                          cls.stop_reason(result.stop_reason))
        chunk[METRICS_KEY] = metrics
        return [chunk]


class EmbeddingFormat(BodyFormat):
    """An embedding body: one result per input text, with vectors at the size the request asked for."""

    kind = KIND_EMBEDDING

    @classmethod
    def render(cls, request: InvokeRequest, result: Any, model_id: str) -> dict:
        results = [result] if isinstance(result, EmbeddingResult) else list(result)
        wanted = request.embeddings or []
        if len(results) != len(wanted) or not all(isinstance(r, EmbeddingResult) for r in results):
            raise ValueError(f"the {cls.name} format renders {len(wanted)} EmbeddingResult(s), got {len(results)}")
        vectors = [_sized_vector(r, q) for r, q in zip(results, wanted)]
        return cls.response(request, results, vectors)

    @classmethod
    def response(cls, request: InvokeRequest, results: list[EmbeddingResult], vectors: list[list[float]]) -> dict:
        raise NotImplementedError


def _sized_vector(result: EmbeddingResult, request: EmbeddingRequest) -> list[float]:
    vector = [float(x) for x in result.vector]
    if request.dimensions is None or len(vector) == request.dimensions:
        return vector
    vector = fit_dimensions(vector, request.dimensions)
    return unit(vector) if request.normalize else vector
