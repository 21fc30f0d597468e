"""Batch generation on vLLM: `VllmGenerator`, the vLLM counterpart of generation.TextGenerator.

One HF folder on one vLLM engine (LLMEngine: its scheduler runs every request it holds with continuous
batching and a paged KV cache). Requests are rendered and checked by the shared prompt rules
(generation.PromptRules), handed to vLLM as token ids with their own SamplingParams
(vllm_engine.sampling_params, the tool grammar included), and the token ids vLLM generates become a
TextResult through the same `PromptRules._finish`: text, stop reason, token counts and tool calls mean
what they mean on transformers.

- `stream(requests)` takes an iterator of (key, request) and yields (key, result) as requests finish,
  pulling new ones as slots free (the engine holds about max_num_seqs + a few queued): there is no
  batch boundary. Closing the generator aborts what is still running.
- `generate(requests)` is TextGenerator.generate's contract (one result per request, in order) over
  `stream`.
- `adapters` (built with `enable_lora=True`): a LoRA adapter folder (`adapter=`) runs on this engine as
  a LoRARequest (jobs/model_sources.load_engine hands it here instead of loading a merged model). Only
  engines loaded for adapters enable LoRA: it slows every request of the engine (benchmarks/README.md).
- `close()` shuts the engine down (its processes and its KV cache); the model cache counts it as its
  weights (estimated from the files at `weight_element_bytes` each) + `kv_cache_bytes`.

Seeds: each request draws from a seed of its own (generation._request_seed: the job's seed, its
sampling parameters and its prompt ids), so the same inputs and seed give the same outputs on vLLM
whatever else runs beside them (not the same as on transformers: the two sample differently).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import vllm_engine
from .formats import FormatError, TextRequest, TextResult
from .generation import PromptRules, _request_seed, _Row

log = logging.getLogger(__name__)

QUEUED_BEYOND_RUNNING = 4  # requests waiting in the engine beyond those it runs: a slot that frees is refilled at once
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class VllmGenerator(PromptRules):
    """Generates text for requests with one model folder on a vLLM engine (LoRA adapters enabled)."""

    def __init__(self, path: Path, *, kv_cache_gib: float = 2.0, dtype: str = "float32",
                 max_num_seqs: int | None = None, enable_lora: bool = False):
        from vllm.v1.engine.llm_engine import LLMEngine

        self.path = Path(path)
        super().__init__(*vllm_engine.rules_parts(self.path))
        args = vllm_engine.engine_args(self.path, kv_cache_gib=kv_cache_gib, dtype=dtype, max_num_seqs=max_num_seqs,
                                       enable_lora=enable_lora)
        self.adapters = enable_lora  # runs LoRA adapters (adapter=); LoRA costs base requests speed on vLLM
        self.max_num_seqs = args.max_num_seqs
        with vllm_engine.starting_children():
            self.engine = LLMEngine.from_engine_args(args)
        self.failed: BaseException | None = None  # the engine broke: the model cache loads it again
        self._lock = threading.Lock()  # one caller drives the engine at a time (its step() answers every request)
        self._ids = itertools.count()
        # what the model cache counts beside the weights (model_cache estimates those from the files)
        self.kv_cache_bytes = int(kv_cache_gib * vllm_engine.GIB)
        self.weight_element_bytes = ELEMENT_BYTES.get(dtype, 4)

    # ----------------------------------------------------------------------------------------

    def generate(self, requests: list[TextRequest], *, seed: int = 0, adapter: Path | str | None = None,
                 min_new_tokens: int = 0, max_batch_size: int | None = None) -> list[TextResult | FormatError]:
        """One TextResult or FormatError per request, in the same order. `min_new_tokens` (benchmarks)
        suppresses EOS until that many tokens are out; `max_batch_size` bounds the requests in the engine."""
        results: list[TextResult | FormatError | None] = [None] * len(requests)
        for index, result in self.stream(enumerate(requests), seed=seed, adapter=adapter,
                                         min_new_tokens=min_new_tokens, max_batch_size=max_batch_size):
            results[index] = result
        return results  # type: ignore[return-value]

    def stream(self, requests: Iterable[tuple[object, TextRequest | Exception]], *, seed: int = 0,
               adapter: Path | str | None = None, min_new_tokens: int = 0,
               max_batch_size: int | None = None) -> Iterator[tuple[object, TextResult | FormatError | Exception]]:
        """(key, TextResult or FormatError) for each (key, request) of `requests`, as each finishes (not in
        input order). Requests are pulled from the iterator only while the engine has room (max_num_seqs
        running + QUEUED_BEYOND_RUNNING waiting), so a long iterator is never read ahead. A request this
        model cannot serve is a FormatError alone; a value that is already an Exception (a record the
        caller found bad) comes back as it is, in turn. Closing the generator aborts the requests still
        in the engine."""
        lora = vllm_engine.lora_request(adapter)
        room = self.max_num_seqs + QUEUED_BEYOND_RUNNING
        if max_batch_size:
            room = max(1, min(room, max_batch_size))
        source = iter(requests)
        running: dict[str, tuple[object, _Row, float]] = {}  # vLLM request id -> key, row, start time
        exhausted = False
        with self._lock:
            try:
                while True:
                    while not exhausted and len(running) < room:
                        item = next(source, None)
                        if item is None:
                            exhausted = True
                            break
                        key, request = item
                        refused = request if isinstance(request, Exception) else self._add(
                            key, request, seed, lora, min_new_tokens, running)
                        if refused is not None:
                            yield key, refused
                    if not running:
                        if exhausted:
                            return
                        continue
                    for output in self._step():
                        if not output.finished or output.request_id not in running:
                            continue
                        key, row, started = running.pop(output.request_id)
                        tokens = list(output.outputs[0].token_ids)
                        latency_ms = int((time.perf_counter() - started) * 1000)
                        yield key, self._finish(row, tokens, None, latency_ms)
            finally:  # the consumer stopped (or failed): what still runs is dropped from the engine
                if running and self.failed is None:
                    self.engine.abort_request(list(running))

    def _add(self, key, request: TextRequest, seed: int, lora, min_new_tokens: int, running: dict) -> FormatError | None:
        """Hand `request` to the engine (kept in `running`), or the FormatError that refuses it."""
        from vllm.inputs import TokensPrompt

        try:
            ids = self.prompt_ids(request)
            row = _Row(0, ids, request, _request_seed(seed, request, ids))
            params = vllm_engine.sampling_params(self, request, row.seed, min_tokens=min_new_tokens)
        except FormatError as error:
            return error
        request_id = f"batch-{next(self._ids)}"
        try:
            self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=ids), params, lora_request=lora)
        except (ValueError, TypeError) as exc:  # vLLM's own checks: a grammar it cannot compile, a length
            return FormatError(f"the model cannot take this request: {exc}")
        running[request_id] = (key, row, time.perf_counter())
        return None

    def _step(self):
        try:
            return self.engine.step()
        except Exception as exc:  # the engine (or its process) broke: nothing it holds will finish
            self.failed = exc
            raise

    # ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down: its processes end and its KV cache is freed."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is None:
            return
        try:
            engine.engine_core.shutdown()
        except Exception:  # already gone (its process died): nothing left to free
            log.debug("vLLM engine of %s: shutdown failed", self.path, exc_info=True)
        del engine
