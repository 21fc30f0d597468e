"""Continuous batching for serving one text model: concurrent requests share the model's forward
passes, join and leave the running batch between decoding steps, and stream their text as it is
generated.

`ContinuousBatcher.submit` checks and tokenizes a request on the caller's thread (a `FormatError`
is raised there, before anything is queued) and queues it. One loop thread (`start`) runs the
model. Between two decoding steps it

- drops cancelled rows and admits queued requests (up to `max_batch` rows in all, and a budget of
  prompt tokens per step so that a burst of long prompts does not stall the running rows for
  long); the newcomers are prefilled together, left-padded, and their KV cache is merged into the
  running one (the shorter of the two padded on the left along the sequence axis, then
  concatenated along the batch axis);
- runs one decoding step for every row: the running batch stays left-padded, with its attention
  mask and each row's own position ids;
- hands each row its token: text goes to the request's `on_event` as `TextDelta`s; a row that is
  done (EOS, max_tokens, a stop sequence) gets `Finished` and leaves the batch (an index-select on
  the batch axis of the cache), and cache columns that are padding in every row left are trimmed.

The cache is transformers' DynamicCache with layers that keep spare columns (`_GrowingLayer`): a
step writes its column in place instead of copying the layer.

Prompts, EOS and pad ids, the context check, the seeded sampling and how generated tokens become
a `TextResult` are `TextModel`'s and `draw_tokens`' from generation.py, shared with the batch-job
engine: a greedy request alone here gives the same tokens as `TextGenerator.generate`, and a
sampled one the same draws for the same seed.

A request that offers tools carries its `ToolConstraint` (constrained.py): its row's logits are
masked by its grammar before the token is chosen, and its text goes through a `ToolCallReader`
(formats/tools.py), so a call streams as `ToolUseStart` then `ToolInputDelta`s (pieces of the
input's JSON) instead of text, with the same toolUseId as the final result's call.

How each row's tokens become its events (text held back while it could still change: an incomplete
character, the start of a stop sequence) is streaming.py's `TokenEvents`, shared with the VllmServer
(vllm_serving.py); the events are defined there and re-exported here.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .constrained import ToolConstraint
from .formats import FormatError, TextRequest
from .formats.tools import ToolCallReader
from .generation import DEFAULT_BATCH_SIZE, TextModel, _request_seed, _Row, draw_tokens, row_generator
from .streaming import (CANCELLED, UNLOADED, Failed, Finished, TextDelta, TokenEvents, TokenStream, ToolInputDelta,
                        ToolUseStart)

log = logging.getLogger(__name__)

__all__ = ["CANCELLED", "UNLOADED", "ContinuousBatcher", "Failed", "Finished", "Submission", "TextDelta",
           "ToolInputDelta", "ToolUseStart"]

# Prompt tokens (padded width x newcomers) prefilled between two decoding steps at most; a single
# longer prompt still goes in, alone.
PREFILL_BUDGET = {"cpu": 2048, "cuda": 65536}
OUT_OF_MEMORY = "the model ran out of memory; this request was dropped to make room for the others"


@dataclass(eq=False)
class _Live(TokenStream):
    """One submitted request (streaming.TokenStream) and what the batcher decodes it with."""

    generator: torch.Generator | None = None  # sampling requests only
    constraint: ToolConstraint | None = field(default=None, kw_only=True)  # requests with tools: their grammar


class Submission:
    """A request handed to the batcher; `cancel` it when its client goes away."""

    def __init__(self, batcher: ContinuousBatcher, live: _Live):
        self._batcher = batcher
        self._live = live

    def cancel(self) -> None:
        """The request leaves the batch at the next step; its on_event gets Failed("cancelled")
        (nothing happens if it has already finished)."""
        if not self._live.done and self._live.cancelled is None:
            self._live.cancelled = CANCELLED
            self._batcher._wake()


class ContinuousBatcher(TokenEvents, TextModel):
    """Serves one causal LM to concurrent requests with continuous batching: `start` the loop,
    `submit` requests (each streams `TextDelta`s, then `Finished` or `Failed`, to its `on_event`
    from the loop thread), `close` to drain or drop what is left."""

    def __init__(self, model, tokenizer, *, device: str | None = None, max_batch: int | None = None):
        super().__init__(model, tokenizer, device)
        self.max_batch = max(1, max_batch or DEFAULT_BATCH_SIZE.get(self.device.type, 32))
        self.prefill_budget = PREFILL_BUDGET.get(self.device.type, PREFILL_BUDGET["cpu"])
        self._keep_last_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._cond = threading.Condition()
        self._events_lock = self._cond  # TokenEvents: a final event is sent once
        self._prompt_lock = threading.Lock()  # one tokenization at a time: fast tokenizers are not reentrant
        self._queue: deque[_Live] = deque()
        self._admitted: set[_Live] = set()  # taken from the queue, no final event yet
        self._closing = False  # no more submissions
        self._aborting = False  # drop everything and stop
        self._thread: threading.Thread | None = None
        # The running batch, touched by the loop thread only: one row per live request, in order.
        self._rows: list[_Live] = []
        self._cache: DynamicCache | None = None  # keys/values (rows, heads, columns, head dim) per layer
        self._mask: torch.Tensor | None = None  # (rows, columns): 1 = a real token, 0 = left padding
        self._positions: torch.Tensor | None = None  # (rows,): the position of each row's next token
        self._next: torch.Tensor | None = None  # (rows,): each row's last token, not in the cache yet

    # ----------------------------------------------------------------------------------------
    # The interface

    def start(self) -> None:
        """Start the decoding loop thread (a daemon); calling it again does nothing."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="continuous-batcher", daemon=True)
            self._thread.start()

    def submit(self, request: TextRequest, on_event: Callable[[object], None], *, seed: int = 0,
               adapter=None) -> Submission:
        """Queue `request`; raises FormatError (bad prompt, too long for the context, no chat
        template) or RuntimeError (the batcher is closing) before anything is queued. No `adapter`: a
        LoRA model on transformers is loaded merged into its base (engine/loading.py)."""
        if adapter is not None:  # a bug: load_engine wraps only engines with `adapters = True`
            raise ValueError("the transformers batcher serves no adapters (a LoRA model on it is loaded merged)")
        if self._closing:
            raise RuntimeError("the model is being unloaded; it takes no new requests")
        if request.max_tokens < 1:
            raise FormatError(f"max_tokens must be at least 1, got {request.max_tokens}")
        with self._prompt_lock:
            ids = self.prompt_ids(request)
            constraint = self.tool_constraint(request)
        row = _Row(0, ids, request, _request_seed(seed, request, ids))
        live = _Live(row, on_event, time.perf_counter(), row_generator(row.seed) if row.sampling else None,
                     constraint=constraint, reader=ToolCallReader(request.tools) if request.tools else None)
        with self._cond:
            if self._closing:
                raise RuntimeError("the model is being unloaded; it takes no new requests")
            self._queue.append(live)
            self._cond.notify_all()
        return Submission(self, live)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests. drain=True: finish the running and queued ones first (for at most
        `timeout` seconds; what is left then fails as with drain=False); drain=False: every pending
        request gets Failed("the model was unloaded"). The loop thread stops either way."""
        with self._cond:
            self._closing = True
            if not drain:
                self._aborting = True
            if drain and self._queue and self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="continuous-batcher", daemon=True)
                self._thread.start()
            thread = self._thread
            self._cond.notify_all()
        if thread is None:  # never started: nothing runs, nothing to wait for
            self._fail_queued(UNLOADED)
            return
        if thread is threading.current_thread():  # closed from an on_event: the loop ends by itself
            return
        thread.join(timeout)
        if thread.is_alive():
            with self._cond:
                self._aborting = True
                self._cond.notify_all()
            thread.join()  # the loop stops at its next step

    @property
    def active(self) -> int:
        """Requests running or queued."""
        with self._cond:
            return len(self._queue) + len(self._admitted)

    # ----------------------------------------------------------------------------------------
    # The loop

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._rows and not self._closing:
                    self._cond.wait()
                if self._aborting or (self._closing and not self._queue and not self._rows):
                    break
                cancelled = [live for live in self._queue if live.cancelled]
                for live in cancelled:
                    self._queue.remove(live)
                newcomers = self._admit()
            for live in cancelled:
                self._fail(live, live.cancelled)
            try:
                self._drop(cancelled_only=True)
                if newcomers:
                    self._prefill(newcomers)
                if self._rows and not self._aborting:
                    self._step()
            except Exception as exc:  # a bug or a broken model: fail what ran, keep serving
                log.exception("continuous batching step failed")
                for live in [*self._rows, *newcomers]:
                    self._fail(live, f"generation failed: {type(exc).__name__}: {exc}")
                self._reset()
        # aborting, or closing with nothing left
        with self._cond:
            queued, self._queue = list(self._queue), deque()
            admitted = list(self._admitted)
        for live in [*admitted, *queued]:
            self._fail(live, UNLOADED)
        self._reset()

    def _admit(self) -> list[_Live]:
        """Queued requests that join the batch now (called under the lock)."""
        newcomers: list[_Live] = []
        width = 0
        while self._queue and len(self._rows) + len(newcomers) < self.max_batch:
            candidate = self._queue[0]
            wider = max(width, len(candidate.row.ids))
            if newcomers and wider * (len(newcomers) + 1) > self.prefill_budget:
                break
            newcomers.append(self._queue.popleft())
            width = wider
        self._admitted.update(newcomers)
        return newcomers

    # ----------------------------------------------------------------------------------------
    # Model work

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Float32 logits of each row's last position."""
        extra = {"logits_to_keep": 1} if self._keep_last_logits else {}
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True, **extra)
        return output.logits[:, -1, :].float()

    def _prefill(self, newcomers: list[_Live]) -> None:
        """Run the newcomers' prompts, merge their cache into the batch and hand out their first
        tokens. Out of memory: the newest half fails, the others go back to the queue."""
        width = max(len(live.row.ids) for live in newcomers)
        input_ids = torch.tensor([[self.pad_id] * (width - len(live.row.ids)) + live.row.ids for live in newcomers],
                                 dtype=torch.long, device=self.device)
        mask = torch.tensor([[0] * (width - len(live.row.ids)) + [1] * len(live.row.ids) for live in newcomers],
                            dtype=torch.long, device=self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache()
        cache.layer_class_to_replicate = _GrowingLayer
        try:
            logits = self._forward(input_ids, mask, positions, cache)
            _check_layers(cache)
        except torch.OutOfMemoryError:
            del cache
            self._empty_device_cache()
            keep = len(newcomers) // 2
            for live in newcomers[keep:]:
                self._fail(live, OUT_OF_MEMORY)
            with self._cond:
                self._admitted.difference_update(newcomers[:keep])
                self._queue.extendleft(reversed(newcomers[:keep]))
            return
        except Exception as exc:
            log.exception("prefill failed")
            for live in newcomers:
                self._fail(live, f"generation failed: {type(exc).__name__}: {exc}")
            return
        tokens = self._choose(logits, newcomers)
        self._merge(newcomers, cache, mask, mask.sum(-1), tokens)
        self._hand_out(newcomers, tokens.tolist())

    def _step(self) -> None:
        """One decoding step for every row. Out of memory: the newest half of the batch fails."""
        rows = len(self._rows)
        columns = self._mask.shape[1]
        mask = torch.cat([self._mask, self._mask.new_ones(rows, 1)], dim=1)
        try:
            logits = self._forward(self._next[:, None], mask, self._positions[:, None], self._cache)
        except torch.OutOfMemoryError:
            for layer in self._cache.layers:  # layers that took the step already: back to before it
                layer.replace(layer.keys[:, :, :columns], layer.values[:, :, :columns])
            self._empty_device_cache()
            for live in self._rows[max(1, rows // 2) if rows > 1 else 0 :]:
                live.cancelled = OUT_OF_MEMORY
            self._drop()
            return
        self._mask = mask
        self._positions = self._positions + 1
        tokens = self._choose(logits, self._rows)
        self._next = tokens
        self._hand_out(self._rows, tokens.tolist())

    def _choose(self, logits: torch.Tensor, rows: list[_Live]) -> torch.Tensor:
        """Each row's next token: the argmax for greedy rows, a seeded draw for sampling ones; rows
        with tools choose among the tokens their grammar allows."""
        constrained = [(j, live.constraint) for j, live in enumerate(rows) if live.constraint is not None]
        if constrained:
            logits = logits.clone()  # the forward pass's logits are inference tensors: not writable here
            for j, constraint in constrained:
                constraint.restrict(logits, j)
        tokens = logits.argmax(dim=-1)
        sampling = [j for j, live in enumerate(rows) if live.generator is not None]
        if sampling:
            index = torch.tensor(sampling, dtype=torch.long, device=logits.device)
            drawn = draw_tokens(logits.index_select(0, index), [rows[j].request.temperature for j in sampling],
                                [rows[j].request.top_p for j in sampling], [rows[j].generator for j in sampling])
            tokens = tokens.index_copy(0, index, drawn[:, 0])
        return tokens

    def _merge(self, newcomers: list[_Live], cache: DynamicCache, mask, positions, tokens) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask = list(newcomers), cache, mask
            self._positions, self._next = positions, tokens
            return
        old, new = self._mask.shape[1], mask.shape[1]
        width = max(old, new)
        for running, joining in zip(self._cache.layers, cache.layers):
            running.replace(torch.cat([_pad_left(running.keys, width - old), _pad_left(joining.keys, width - new)]),
                            torch.cat([_pad_left(running.values, width - old), _pad_left(joining.values, width - new)]))
        self._mask = torch.cat([F.pad(self._mask, (width - old, 0)), F.pad(mask, (width - new, 0))])
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, tokens])
        self._rows.extend(newcomers)

    def _drop(self, cancelled_only: bool = False) -> None:
        """Rows that are done or cancelled leave the batch; all-padding columns on the left go."""
        for live in self._rows:
            if live.cancelled and not live.done:
                self._fail(live, live.cancelled)
        if cancelled_only and all(not live.done for live in self._rows):
            return
        keep = [j for j, live in enumerate(self._rows) if not live.done]
        if not keep:
            self._reset()
            return
        if len(keep) < len(self._rows):
            index = torch.tensor(keep, dtype=torch.long, device=self._mask.device)
            for layer in self._cache.layers:
                layer.replace(layer.keys.index_select(0, index), layer.values.index_select(0, index))
            self._mask = self._mask.index_select(0, index)
            self._positions = self._positions.index_select(0, index)
            self._next = self._next.index_select(0, index)
            self._rows = [self._rows[j] for j in keep]
        first = int(self._mask.any(dim=0).int().argmax())  # the first column some row uses
        if first > 0:
            for layer in self._cache.layers:
                layer.replace(layer.keys[:, :, first:], layer.values[:, :, first:])
            self._mask = self._mask[:, first:]

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._positions, self._next = [], None, None, None, None

    def _empty_device_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------------------------------
    # Tokens to text and events (streaming.TokenEvents)

    def _hand_out(self, rows: list[_Live], tokens: list[int]) -> None:
        """Give each row its new token: stream its text, finish it when it is done; then drop the
        rows that are done."""
        for live, token in zip(rows, tokens):
            if live.done or live.cancelled:
                continue
            try:
                self._take(live, token)
            except Exception as exc:
                log.exception("handing out a token failed")
                self._fail(live, f"generation failed: {type(exc).__name__}: {exc}")
        self._drop()

    def _take(self, live: _Live, token: int) -> None:
        if live.constraint is not None:
            live.constraint.take(token)
        super()._take(live, token)

    def _released(self, live: _Live) -> None:
        self._admitted.discard(live)

    def _fail_queued(self, message: str) -> None:
        with self._cond:
            queued, self._queue = list(self._queue), deque()
        for live in queued:
            self._fail(live, message)


# --------------------------------------------------------------------------------------------


def _pad_left(states: torch.Tensor, columns: int) -> torch.Tensor:
    """(rows, heads, columns, head dim) states with `columns` zero columns added on the left."""
    return F.pad(states, (0, 0, columns, 0)) if columns else states


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views into buffers with spare columns: a decoding
    step writes its column in place instead of copying the whole layer (DynamicLayer's torch.cat,
    a sixth of a step's CPU at 32 rows x 300 columns). Keys and values `replace`d from outside
    (merge, drop, trim) are copied into fresh buffers at the next update."""

    SPARE = 64  # columns added beyond what is needed, at least (a quarter more for long rows)

    def __init__(self):
        super().__init__()
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        used = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        needed = used + key_states.shape[-2]
        if not self._in_buffers(key_states.shape[0], needed):
            spare = max(self.SPARE, needed // 4)
            self._key_buffer = _buffer(self.keys, used, key_states, needed + spare)
            self._value_buffer = _buffer(self.values, used, value_states, needed + spare)
        self._key_buffer[:, :, used:needed] = key_states
        self._value_buffer[:, :, used:needed] = value_states
        self.keys, self.values = self._key_buffer[:, :, :needed], self._value_buffer[:, :, :needed]
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New keys and values (other rows or columns); the old buffers are let go at once."""
        self.keys, self.values = keys, values
        self._key_buffer = self._value_buffer = None

    def _in_buffers(self, rows: int, needed: int) -> bool:
        """keys/values are still the leading columns of the buffers, which have room for `needed`."""
        buffers = (self._key_buffer, self._value_buffer)
        return all(
            buffer is not None and buffer.shape[0] == rows and buffer.shape[-2] >= needed
            and states.dim() == 4 and states.shape[0] == rows and states.data_ptr() == buffer.data_ptr()
            for buffer, states in zip(buffers, (self.keys, self.values))
        )


def _buffer(states: torch.Tensor, used: int, like: torch.Tensor, columns: int) -> torch.Tensor:
    rows, heads, _, dim = like.shape
    buffer = like.new_empty(rows, heads, columns, dim)
    if used:
        buffer[:, :, :used] = states
    return buffer


def _check_layers(cache: DynamicCache) -> None:
    for layer in cache.layers:
        if type(layer) is not _GrowingLayer:
            raise NotImplementedError(
                f"continuous batching needs full-attention cache layers, this model has {type(layer).__name__}"
            )
