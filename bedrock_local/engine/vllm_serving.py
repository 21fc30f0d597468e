"""Serving one text model on vLLM's async engine: the `VllmServer`, with the ContinuousBatcher's interface
(continuous.py) so a serving node runs either the same way.

vLLM's AsyncLLM runs on an asyncio event loop of the server's own thread (`start` builds the engine
there; it spawns vLLM's EngineCore and worker processes). `submit` renders and checks a request on the
caller's thread with the prompt rules both backends share (generation.PromptRules: a FormatError is
raised there, before anything is queued), then hands vLLM its token ids (sampling parameters, stop
sequences, tool grammar: vllm_engine.sampling_params; an adapter: vllm_engine.lora_request) and reads
its DELTA outputs on the loop. Each new token goes through streaming.TokenEvents, the same
token-to-event logic as the ContinuousBatcher's: text deltas with incomplete characters and possible
stop-sequence starts held back, tool calls as ToolUseStart + ToolInputDelta, then Finished with the
counts and stop reason PromptRules._finish gives, or Failed.

`Submission.cancel` (the client went away) and `close` cancel the request's task on the loop; vLLM's
`generate` aborts the request in the engine on its way out (AsyncLLM.abort), and the server logs the
abort. One engine serves any number of LoRA adapters of its model at once (`adapters = True`;
AdapterEngine in adapters.py passes `adapter=`), up to vllm_engine.MAX_LORAS resident at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import vllm_engine
from .formats import TextRequest
from .formats.tools import ToolCallReader
from .generation import _request_seed, _Row
from .streaming import (CANCELLED, UNLOADED, Failed, Finished, TextDelta, TokenEvents, TokenStream, ToolInputDelta,
                        ToolUseStart)

log = logging.getLogger(__name__)

__all__ = ["CANCELLED", "UNLOADED", "Failed", "Finished", "Submission", "TextDelta", "ToolInputDelta", "ToolUseStart",
           "VllmServer"]

SHUTDOWN_WAIT = 30.0  # seconds close waits for cancelled requests to end before shutting the engine down
_STARTING = threading.Lock()


@dataclass(eq=False)
class _Request(TokenStream):
    """One submitted request: its stream (streaming.TokenStream) and its vLLM request."""

    request_id: str = field(default="", kw_only=True)
    task: asyncio.Task | None = field(default=None, kw_only=True)  # its generation on the server's loop


class Submission:
    """A request handed to the server; `cancel` it when its client goes away."""

    def __init__(self, server: VllmServer, live: _Request):
        self._server = server
        self._live = live

    def cancel(self) -> None:
        """The request is aborted in vLLM; its on_event gets Failed("cancelled") (nothing happens if it
        has already finished)."""
        if not self._live.done and self._live.cancelled is None:
            self._live.cancelled = CANCELLED
            self._server._interrupt(self._live)


class VllmServer(TokenEvents):
    """Serves the HF model folder at `path` on vLLM to concurrent requests: `start` the engine (blocks
    while vLLM loads it), `submit` requests (each streams its events to its `on_event` from the
    server's loop thread), `close` to drain or drop what is left and shut the engine down.
    `max_batch`: the most requests generated for at once (vLLM's max_num_seqs)."""

    def __init__(self, path: Path, *, kv_cache_gib: float = 2.0, max_batch: int | None = None,
                 dtype: str = "float32", enforce_eager: bool = True, enable_lora: bool = False):
        self.path = Path(path)
        super().__init__(*vllm_engine.rules_parts(self.path))
        self.device = vllm_engine.device_kind()
        self.kv_cache_gib = kv_cache_gib
        self.max_batch = max(1, max_batch or vllm_engine.DEFAULT_MAX_SEQS[self.device])
        self._args = vllm_engine.engine_args(self.path, kv_cache_gib=kv_cache_gib, dtype=dtype,
                                             max_num_seqs=self.max_batch, enforce_eager=enforce_eager,
                                             enable_lora=enable_lora)
        # submit takes adapter= (a LoRA folder) on an engine built for adapters; LoRA slows every request
        # of an engine, so engines of plain models run without it
        self.adapters = enable_lora
        self._args.disable_log_stats = True  # its periodic throughput lines would flood the node's log
        self._args.enable_log_requests = False  # AsyncEngineArgs' field, read by AsyncLLM.from_engine_args
        self._cond = threading.Condition()
        self._events_lock = self._cond  # TokenEvents: a final event is sent once
        self._prompt_lock = threading.Lock()  # one tokenization at a time: fast tokenizers are not reentrant
        self._live: dict[str, _Request] = {}  # submitted, no final event yet
        self._closing = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._llm = None  # vLLM's AsyncLLM, built on the loop by start()

    # ----------------------------------------------------------------------------------------
    # The interface

    def start(self) -> None:
        """Start the loop thread and build the engine on it (blocking: vLLM loads the weights, sizes
        its KV cache and starts its processes); calling it again does nothing."""
        with self._cond:
            if self._thread is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_run_loop, args=(loop,), name="vllm-server", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        try:
            self._llm = asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            with self._cond:
                self._closing = self._closed = True
            raise
        log.info("vLLM engine for %s started: %s, up to %d sequences at once, KV cache %s", self.path.name,
                 self._args.dtype, self.max_batch,
                 f"{self.kv_cache_gib:g} GiB" if self.device == "cpu" else "sized by vLLM")

    def submit(self, request: TextRequest, on_event: Callable[[object], None], *, seed: int = 0,
               adapter: Path | str | None = None) -> Submission:
        """Hand `request` to vLLM (on the adapter folder `adapter`, or the model itself); raises
        FormatError (bad prompt, too long for the context, no chat template, a tool schema the grammar
        cannot take) or RuntimeError (the server is closing, or not started) before anything is queued."""
        if self._closing or self._llm is None:
            raise RuntimeError("the model is being unloaded; it takes no new requests" if self._closing
                               else "the vLLM engine is not started")
        with self._prompt_lock:
            ids = self.prompt_ids(request)
            self.tool_constraint(request)  # the same check of the tools' schemas as the transformers backend
        row = _Row(0, ids, request, _request_seed(seed, request, ids))
        params = vllm_engine.sampling_params(self, request, row.seed, stream=True)
        lora = vllm_engine.lora_request(adapter)
        live = _Request(row, on_event, time.perf_counter(), request_id=uuid.uuid4().hex,
                        reader=ToolCallReader(request.tools) if request.tools else None)
        with self._cond:
            if self._closing:
                raise RuntimeError("the model is being unloaded; it takes no new requests")
            self._live[live.request_id] = live
        future = asyncio.run_coroutine_threadsafe(self._generate(live, ids, params, lora), self._loop)
        # a task cancelled before it ran never reaches its own final event
        future.add_done_callback(lambda _: self._fail(live, live.cancelled or UNLOADED))
        return Submission(self, live)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests. drain=True: let the running ones finish first (for at most `timeout`
        seconds; what is left then fails as with drain=False); drain=False: every pending request is
        aborted and gets Failed("the model was unloaded"). Then the engine and its processes stop."""
        with self._cond:
            self._closing = True
            if self._closed or self._thread is None:
                self._closed = True
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if thread is threading.current_thread():  # closed from an on_event: waiting here would block the loop
            threading.Thread(target=self._shut_down, args=(loop, thread, drain, timeout), daemon=True).start()
            return
        self._shut_down(loop, thread, drain, timeout)

    @property
    def active(self) -> int:
        """Requests running or queued."""
        with self._cond:
            return len(self._live)

    def memory_bytes(self) -> int:
        """The memory this engine holds: its weights (as float32) and its KV cache (vLLM takes a share of
        the GPU's memory on CUDA)."""
        from .model_cache import estimate_model_bytes

        weights = estimate_model_bytes(self.path)
        if self.device == "cuda":
            import torch

            return max(weights, int(torch.cuda.get_device_properties(0).total_memory
                                    * self._args.gpu_memory_utilization))
        return weights + int(self.kv_cache_gib * vllm_engine.GIB)

    # ----------------------------------------------------------------------------------------
    # On the loop

    async def _open(self):
        from vllm.v1.engine.async_llm import AsyncLLM

        # built on the loop: its output handler runs here. One start at a time in this process:
        # starting_children lifts a process-wide flag while vLLM starts its processes
        with _STARTING, vllm_engine.starting_children():
            return AsyncLLM.from_engine_args(self._args)

    async def _generate(self, live: _Request, ids: list[int], params, lora) -> None:
        from vllm.inputs import TokensPrompt

        live.task = asyncio.current_task()
        if live.cancelled:  # cancelled before it started
            self._fail(live, live.cancelled)
            return
        outputs = self._llm.generate(TokensPrompt(prompt_token_ids=ids), params, live.request_id, lora_request=lora)
        ended_in_engine = False
        try:
            async for output in outputs:
                completion = output.outputs[0]
                ended_in_engine = output.finished
                for token in completion.token_ids:
                    if live.done or live.cancelled:
                        break
                    self._take(live, token)
                if live.done or live.cancelled:
                    break
                if output.finished:  # vLLM ended it where the shared rules saw no end yet
                    if completion.finish_reason == "abort":
                        self._fail(live, "the engine aborted the request")
                    else:  # a stop string vLLM's detokenizer saw first
                        self._finish_live(live, len(live.tokens) if isinstance(completion.stop_reason, str) else None)
        except asyncio.CancelledError:  # Submission.cancel or close: vLLM's generate aborted it on its way out
            pass
        except Exception as exc:
            log.exception("vLLM generation failed")
            self._fail(live, f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            # a request left before vLLM ended it (cancelled, failed, or finished by the shared rules
            # first) is aborted in the engine by closing its output stream
            await outputs.aclose()
            if live.cancelled and not ended_in_engine:
                log.info("vLLM request %s aborted (%s) after %d tokens; %d requests left in the engine",
                         live.request_id, live.cancelled, len(live.tokens), self._llm.get_num_unfinished_requests())
            if not live.done:
                self._fail(live, live.cancelled or UNLOADED)

    def _interrupt(self, live: _Request) -> None:
        """Cancel the request's task (from any thread): vLLM aborts it."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_cancel_task, live)

    def _released(self, live: _Request) -> None:
        self._live.pop(live.request_id, None)
        self._cond.notify_all()

    # ----------------------------------------------------------------------------------------

    def _shut_down(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, drain: bool,
                   timeout: float | None) -> None:
        if drain:
            with self._cond:
                self._cond.wait_for(lambda: not self._live, timeout)
        with self._cond:
            left = list(self._live.values())
        for live in left:
            if live.cancelled is None:
                live.cancelled = UNLOADED
            self._interrupt(live)
        with self._cond:
            if not self._cond.wait_for(lambda: not self._live, SHUTDOWN_WAIT):
                log.warning("%d vLLM requests did not end after their abort; shutting the engine down anyway",
                            len(self._live))
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown_engine(), loop).result()
        except Exception:
            log.exception("shutting the vLLM engine down failed")
        for live in left:
            self._fail(live, live.cancelled or UNLOADED)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._llm = None
        log.info("vLLM engine for %s stopped", self.path.name)

    async def _shutdown_engine(self) -> None:
        llm = self._llm
        # the output handler first: it would log the engine's end as an error otherwise
        if llm.output_handler is not None:
            llm.output_handler.cancel()
        llm.shutdown()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def _cancel_task(live: _Request) -> None:
    if live.task is not None and not live.task.done():
        live.task.cancel()
