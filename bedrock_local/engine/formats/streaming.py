"""InvokeModelWithResponseStream: `StreamRenderer` turns text pieces and the result into the chunks
of the request's text format (each family says what its chunks hold), and `invocation_metrics`."""

from __future__ import annotations

from .common import KIND_TEXT, FormatError, InvokeRequest, TextResult
from .registry import FORMATS


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
    """The chunks of one streamed answer, each a dict to JSON-encode into one `chunk` event.

    The last chunk carries `amazon-bedrock-invocationMetrics`. Token counts that AWS sends early
    (an input count in the first chunk, the running output count) come from the optional
    `input_tokens` / `output_tokens` of `delta`; when the caller does not know them yet they are
    null and the input count goes in the closing chunk instead."""

    def __init__(self, request: InvokeRequest, *, model_id: str = ""):
        family = FORMATS.get(request.format)
        if family is None or family.kind != KIND_TEXT:
            title = family.title if family is not None else request.format
            raise FormatError(f"the {title} body is answered by InvokeModel only: embedding models do not stream")
        self.family = family
        self.request = request
        self.model_id = model_id
        self._started = False
        self._input_sent = False
        self.state: dict = {}  # what a family keeps between chunks (Anthropic's open content block)

    def delta(self, text: str, *, input_tokens: int | None = None, output_tokens: int | None = None) -> list[dict]:
        """The chunks to send for a piece of text (none for an empty piece, unless it is the first
        and carries the input token count)."""
        if not text and (self._started or input_tokens is None):
            return []
        chunks = self._start(input_tokens, output_tokens)
        return chunks + self.family.delta_chunks(self, text, input_tokens, output_tokens)

    def tool_use(self, tool_use_id: str, name: str) -> list[dict]:
        """The chunks that open a tool call (only families that take tools get one: Anthropic Messages)."""
        return self._start(None, None) + self.family.tool_use_chunks(self, tool_use_id, name)

    def tool_input(self, piece: str) -> list[dict]:
        """The chunks of a piece of the open tool call's input (JSON text)."""
        return self.family.tool_input_chunks(self, piece) if piece else []

    def finish(self, result: TextResult, metrics: dict) -> list[dict]:
        """The closing chunk(s); the last carries `metrics` (see `invocation_metrics`)."""
        chunks = self._start(result.input_tokens, None)
        return chunks + self.family.closing_chunks(self, result, dict(metrics))

    def take_input(self, input_tokens: int | None) -> int | None:
        """The input token count for this chunk: given once, in the first chunk that knows it."""
        if self._input_sent or input_tokens is None:
            return None
        self._input_sent = True
        return input_tokens

    def _start(self, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        if self._started:
            return []
        self._started = True
        return self.family.opening_chunks(self, input_tokens, output_tokens)
