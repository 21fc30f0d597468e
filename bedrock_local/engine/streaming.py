"""How one served request's generated tokens become the events its client streams, whatever runs the
model: the ContinuousBatcher (continuous.py, transformers) and the VllmServer (vllm_serving.py) feed
each request's tokens, one at a time and in order, to the same `TokenEvents._take`.

The events, sent to the request's `on_event`: `TextDelta`s (pieces of text that concatenate to the
final text), `ToolUseStart` + `ToolInputDelta`s for a request with tools whose answer is a tool call
(its text read through a `ToolCallReader`, so the call streams with the toolUseId of the final
result's call), then one final event: `Finished(TextResult)` or `Failed(message)`.

Streaming holds back text that could still change: an incomplete UTF-8 character (decoded text
ending in U+FFFD) and a tail that could be the start of a stop sequence, so the stop sequence
itself is never streamed; the deltas of a request always concatenate to its final text. The result's
counts and stop reason are PromptRules._finish's (EOS, max_tokens, stop sequences), the same on
every engine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .formats import TextRequest, TextResult
from .formats.tools import ToolCallReader
from .generation import PromptRules, _first_stop, _Row

log = logging.getLogger(__name__)

UNLOADED = "the model was unloaded"
CANCELLED = "cancelled"


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolUseStart:
    """A tool call begins: its id and the tool's name."""

    tool_use_id: str
    name: str


@dataclass
class ToolInputDelta:
    """A piece of the JSON text of the call's input."""

    text: str


@dataclass
class Finished:
    result: TextResult


@dataclass
class Failed:
    message: str


@dataclass(eq=False)
class TokenStream:
    """One submitted request: its prompt, its generated tokens and what was streamed of them."""

    row: _Row
    on_event: Callable[[object], None]
    submitted: float  # perf_counter() at submit: the result's latency counts from here
    # the rest is keyword-only, so an engine's own request class can add positional fields
    tokens: list[int] = field(default_factory=list, kw_only=True)
    text: str = field(default="", kw_only=True)  # the generated text decoded so far (complete characters only)
    streamed: int = field(default=0, kw_only=True)  # characters of `text` already sent as deltas
    # incremental decoding: tokens[prefix_offset:read_offset] give context, tokens[read_offset:] are not
    # in `text` yet
    prefix_offset: int = field(default=0, kw_only=True)
    read_offset: int = field(default=0, kw_only=True)
    cancelled: str | None = field(default=None, kw_only=True)  # why the request must end (cancel, a failing handler)
    done: bool = field(default=False, kw_only=True)  # the final event was sent
    reader: ToolCallReader | None = field(default=None, kw_only=True)  # requests with tools: text or a call

    @property
    def request(self) -> TextRequest:
        return self.row.request


class TokenEvents(PromptRules):
    """The token-to-event logic of a serving engine (mixed into it: it needs the engine's prompt rules).
    `_take` each generated token of a request; `_finish_live` ends it where the engine ended it
    first; `_fail` ends it with a message. The final event is sent once (`_events_lock` guards that),
    then `_released(live)` lets the engine forget the request."""

    _events_lock: threading.Lock | threading.RLock | threading.Condition

    def _released(self, live: TokenStream) -> None:
        """The request got its final event (called under `_events_lock`)."""

    def _take(self, live: TokenStream, token: int) -> None:
        live.tokens.append(token)
        request = live.request
        if token in self.eos_ids or len(live.tokens) >= request.max_tokens:
            self._finish_live(live, None)
            return
        stops = request.stop_sequences
        seen = len(live.text)
        self._read(live)
        if stops:
            longest = max(len(s) for s in stops)
            if _first_stop(live.text[max(0, seen - longest + 1) :], stops) is not None:
                self._finish_live(live, len(live.tokens))
                return
        end = len(live.text) - _stop_prefix_length(live.text, stops)
        if end > live.streamed:
            delta = live.text[live.streamed : end]
            live.streamed = end
            self._stream(live, delta)

    def _stream(self, live: TokenStream, text: str) -> None:
        """Send generated text: as it is, or (a request with tools) as its reader reads it."""
        if live.reader is None:
            self._send(live, TextDelta(text))
            return
        for kind, value in live.reader.feed(text):
            if kind == "text":
                self._send(live, TextDelta(value))
            elif kind == "tool_use":
                self._send(live, ToolUseStart(value["toolUseId"], value["name"]))
            else:
                self._send(live, ToolInputDelta(value))

    def _read(self, live: TokenStream) -> None:
        """Incremental decoding: the text of the new tokens, decoded with the few tokens before
        them for context (word boundaries, spaces), added once it is complete characters."""
        context = self._decode(live.tokens[live.prefix_offset : live.read_offset])
        text = self._decode(live.tokens[live.prefix_offset :])
        if len(text) > len(context) and text.startswith(context) and not text.endswith("\ufffd"):
            live.text += text[len(context) :]
            live.prefix_offset, live.read_offset = live.read_offset, len(live.tokens)

    def _finish_live(self, live: TokenStream, stopped_at: int | None) -> None:
        """Send the rest of the text and Finished; `stopped_at`: the number of tokens generated when a
        stop sequence appeared (None: EOS or max_tokens, read from the tokens)."""
        latency_ms = int((time.perf_counter() - live.submitted) * 1000)
        result = self._finish(live.row, live.tokens, stopped_at, latency_ms, raw=True)
        streamed = live.text[: live.streamed]
        if not result.text.startswith(streamed):  # the tokenizer decoded a prefix differently
            log.warning("streamed text is not a prefix of the final text; the final text keeps what was streamed")
            common = _common_prefix_length(streamed, result.text)
            result.text = streamed + result.text[common:]
        if len(result.text) > len(streamed):
            self._stream(live, result.text[len(streamed) :])
        live.streamed = len(live.text)
        self._final(live, Finished(self._read_tools(result, live.request, live.reader)))

    def _send(self, live: TokenStream, event: object) -> None:
        try:
            live.on_event(event)
        except Exception as exc:
            log.exception("an on_event handler failed")
            if live.cancelled is None:
                live.cancelled = f"the event handler failed: {type(exc).__name__}: {exc}"

    def _final(self, live: TokenStream, event: object) -> None:
        with self._events_lock:
            if live.done:
                return
            live.done = True
            self._released(live)
        try:
            live.on_event(event)
        except Exception:
            log.exception("an on_event handler failed on the final event")

    def _fail(self, live: TokenStream, message: str) -> None:
        self._final(live, Failed(message))


# --------------------------------------------------------------------------------------------


def _stop_prefix_length(text: str, stops: list[str]) -> int:
    """The length of the longest tail of `text` that is the start of a stop sequence (it may
    become one with the next tokens, so it is not streamed yet)."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


def _common_prefix_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
