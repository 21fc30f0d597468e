"""Batched text generation with transformers, on CUDA when the machine has it, else on CPU.

`TextGenerator.generate` takes many `TextRequest`s at once and answers one `TextResult` (or a
`FormatError` for a request the model cannot serve) per request, in order. Requests are
rendered (chat template for messages, raw text for prompts), sorted by output-length bucket and
prompt length, cut into batches, left-padded and run through `model.generate`.

Decoding is chosen per request, inside one batch: a logits processor (`_RowSampler`) draws the
next token of every sampling row (temperature, top-p) from a generator seeded by the request
itself (`seed` + its prompt and parameters) and forces it; greedy rows keep the model's argmax.
So a request gives the same output whatever else is in its batch, and the same inputs and seed
give the same outputs. A stopping criterion (`_RowStops`) ends each row at its own max_tokens or
at its first stop sequence; end of turn is the tokenizer's / model's EOS.

A request that offers tools is decoded under its tool grammar (constrained.py: `_RowConstraints`
masks each such row's logits before any sampling), and its text read back as text or a tool call
(formats/tools.py ToolCallReader) when it becomes a `TextResult`.

What every generator of text shares lives in `TextModel` (prompt ids from a chat template or a raw
prompt, tools included, the context check, EOS and pad ids, how generated tokens become a
`TextResult`, the tool constraint of a request) and in
`draw_tokens` (seeded temperature/top-p sampling): `TextGenerator` here (batch jobs) and
`ContinuousBatcher` in continuous.py (serving) both build on them, so a request gives the same
result through either.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .constrained import ToolConstraint, chat_messages, template_knows_tools
from .formats import END_TURN, MAX_TOKENS, STOP_SEQUENCE, FormatError, TextRequest, TextResult
from .formats.tools import ToolCallReader

DEFAULT_BATCH_SIZE = {"cpu": 32, "cuda": 256}
STATIC_WIDTH_STEP = 64  # static-cache batches: prompt widths padded up to a multiple of this


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _Row:
    index: int  # position in the caller's list
    ids: list[int]  # prompt token ids, template included
    request: TextRequest
    seed: int  # sampling seed of this request (unused when greedy)

    @property
    def sampling(self) -> bool:
        return self.request.temperature > 0


class PromptRules:
    """The rules every text engine here shares, whatever runs the model (transformers here, vLLM in
    vllm_engine.py): the prompt ids of a request (chat template or raw prompt, checked against the
    context), EOS and pad ids, and how a row of generated tokens becomes a TextResult (EOS,
    max_tokens, stop sequences). Built from a tokenizer, the model's config and its generation config."""

    def __init__(self, tokenizer, config, generation_config=None):
        self.tokenizer = tokenizer
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.context_length: int | None = getattr(config, "max_position_embeddings", None)
        self.eos_ids = _eos_ids(config, generation_config, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(generation_config, "pad_token_id", None)
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        self.pad_id: int = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)

    # ----------------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----------------------------------------------------------------------------------------
    # Prompts

    def prompt_ids(self, request: TextRequest) -> list[int]:
        if request.messages is not None:
            ids = self.tokenizer(self._render_chat(request), add_special_tokens=False)["input_ids"]
        else:
            prompt = request.prompt or ""
            bos = self.tokenizer.bos_token
            add_special = not (bos and prompt.startswith(bos))  # the prompt brings its own BOS
            ids = self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise FormatError("the prompt is empty once tokenized")
        if self.context_length is not None and len(ids) + request.max_tokens > self.context_length:
            raise FormatError(
                f"the prompt has {len(ids)} tokens and the request asks for up to {request.max_tokens} "
                f"new tokens: {len(ids) + request.max_tokens} in all, more than the model's context "
                f"of {self.context_length} tokens"
            )
        return ids

    def _render_chat(self, request: TextRequest) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise FormatError(
                "this model's tokenizer has no chat template, so it cannot take messages; "
                "use InvokeModel with a prompt instead"
            )
        # tools and tool turns: the template's own way where it knows tools, else the plain form
        messages, system, tools = chat_messages(request, template_knows_tools(self.tokenizer))
        prefill = ""
        if messages and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
            prefill = messages.pop()["content"]  # the answer starts with this text
        try:
            if system is not None:
                try:
                    text = self._apply_template([{"role": "system", "content": system}, *messages], tools)
                except Exception:  # templates that refuse a system role: put it in the first turn
                    first = dict(messages[0])
                    first["content"] = f"{system}\n\n{first['content']}"
                    text = self._apply_template([first, *messages[1:]], tools)
            else:
                text = self._apply_template(messages, tools)
        except Exception as exc:
            raise FormatError(f"the model's chat template cannot render these messages: {exc}") from exc
        return text + prefill

    def _apply_template(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)

    def tool_constraint(self, request: TextRequest) -> ToolConstraint | None:
        """The constrained decoding of a request that offers tools (None without tools); a schema
        the grammar compiler cannot take is a FormatError."""
        if not request.tools:
            return None
        if request.prompt is not None:
            raise FormatError("tools go with messages, not with a raw prompt")
        return ToolConstraint(request, self.tokenizer, self.eos_ids)

    def _read_tools(self, result: TextResult, request: TextRequest, reader: ToolCallReader | None) -> TextResult:
        """`result`, whose text is what the model generated, as text or a tool call (`reader`: the one
        that streamed it, so the toolUseId stays the same)."""
        if not request.tools:
            return result
        if reader is None:
            reader = ToolCallReader(request.tools)
            reader.feed(result.text)
        text, calls, reason = reader.finish()
        result.text, result.tool_calls = text, calls
        if reason is not None:
            result.stop_reason = reason
        return result

    # ----------------------------------------------------------------------------------------
    # Results

    def _finish(self, row: _Row, tokens: list[int], stopped_at: int | None, latency_ms: int, *,
                raw: bool = False) -> TextResult:
        """The result of a row's generated tokens; `raw`: its text as generated, tool calls not read."""
        request = row.request
        end = min(len(tokens), request.max_tokens)
        reason = MAX_TOKENS
        for i, token in enumerate(tokens[:end]):
            if token in self.eos_ids:
                end, reason = i, END_TURN
                break
        if stopped_at is not None and stopped_at <= end:
            end = stopped_at
        tokens = tokens[:end]
        text = self._decode(tokens)
        cut = _first_stop(text, request.stop_sequences)
        if cut is not None:
            text, reason = text[:cut], STOP_SEQUENCE
            end = self._tokens_through_stop(tokens, request.stop_sequences)
        result = TextResult(
            text=text,
            input_tokens=len(row.ids),
            output_tokens=end,
            stop_reason=reason,
            latency_ms=latency_ms,
        )
        return result if raw else self._read_tools(result, request, None)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _tokens_through_stop(self, tokens: list[int], stops: list[str]) -> int:
        """The fewest leading tokens whose text holds a stop sequence (tokens after it were
        never wanted and are not counted)."""
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if _first_stop(self._decode(tokens[:mid]), stops) is not None:
                high = mid
            else:
                low = mid + 1
        return high


class TextModel(PromptRules):
    """A causal LM in this process (transformers) with its tokenizer and the shared prompt rules."""

    def __init__(self, model, tokenizer, device: str | None = None, *, dtype: torch.dtype | None = None):
        self.device = torch.device(device or default_device())
        self.model = model.to(device=self.device, dtype=dtype) if dtype else model.to(self.device)
        self.model.eval()
        super().__init__(tokenizer, model.config, getattr(model, "generation_config", None))


class TextGenerator(TextModel):
    """Generates text for batches of requests with one causal LM and its tokenizer.

    On CUDA (or with `static_cache=True`) a batch decodes with a static KV cache, which transformers'
    `generate` compiles the forward pass for on a GPU (torch.compile, once per shape): prompt widths are
    padded up to a multiple of STATIC_WIDTH_STEP and new tokens to a power of two, so a job's batches
    share a few shapes instead of compiling one per batch. The outputs are the same as with the dynamic
    cache (tests/test_engine_inference.py checks it on the CPU)."""

    def __init__(self, model, tokenizer, device: str | None = None, *, dtype: torch.dtype | None = None,
                 static_cache: bool | None = None):
        super().__init__(model, tokenizer, device, dtype=dtype)
        self.static_cache = self.device.type == "cuda" if static_cache is None else static_cache

    def generate(
        self,
        requests: list[TextRequest],
        *,
        seed: int = 0,
        max_batch_size: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[TextResult | FormatError]:
        """One TextResult or FormatError per request, in the same order. `min_new_tokens`
        (benchmarks) suppresses EOS until that many tokens are out."""
        results: list[TextResult | FormatError | None] = [None] * len(requests)
        rows: list[_Row] = []
        for index, request in enumerate(requests):
            try:
                ids = self.prompt_ids(request)
                self.tool_constraint(request)  # a schema the grammar cannot take fails here, alone
            except FormatError as error:
                results[index] = error
                continue
            rows.append(_Row(index, ids, request, _request_seed(seed, request, ids)))

        # Similar output lengths together (powers of two), then by prompt length: little padding.
        rows.sort(key=lambda row: (max(row.request.max_tokens - 1, 0).bit_length(), len(row.ids)))
        batch_size = DEFAULT_BATCH_SIZE.get(self.device.type, 32)
        if max_batch_size:
            batch_size = max(1, min(batch_size, max_batch_size))
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for row, result in zip(batch, self._run_split_on_oom(batch, min_new_tokens)):
                results[row.index] = result
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------
    # Batches

    def _run_split_on_oom(self, rows: list[_Row], min_new_tokens: int) -> list[TextResult | FormatError]:
        try:
            return self._run_batch(rows, min_new_tokens)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(rows) == 1:
                return [FormatError("the model ran out of memory on this request")]
            half = len(rows) // 2
            return self._run_split_on_oom(rows[:half], min_new_tokens) + self._run_split_on_oom(
                rows[half:], min_new_tokens
            )

    def _run_batch(self, rows: list[_Row], min_new_tokens: int) -> list[TextResult]:
        started = time.perf_counter()
        width = max(len(row.ids) for row in rows)
        max_new = max(row.request.max_tokens for row in rows)
        shape = {}
        if self.static_cache:
            width = -(-width // STATIC_WIDTH_STEP) * STATIC_WIDTH_STEP
            if self.context_length:
                width = min(width, max(self.context_length - max_new, max(len(row.ids) for row in rows)))
            # each row still stops at its own max_tokens (_RowStops); this sizes the cache
            max_new = 1 << max(max_new - 1, 0).bit_length()
            shape = {"cache_implementation": "static"}
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(row.ids)) + row.ids for row in rows], dtype=torch.long
        ).to(self.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(row.ids)) + [1] * len(row.ids) for row in rows], dtype=torch.long
        ).to(self.device)
        config = GenerationConfig(
            **shape,
            max_new_tokens=max_new,
            min_new_tokens=min(min_new_tokens, max_new),
            do_sample=False,  # sampling rows are drawn by _RowSampler
            num_beams=1,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids) or None,
        )
        processors = LogitsProcessorList()
        if any(row.request.tools for row in rows):  # before sampling: draws come from allowed tokens only
            processors.append(_RowConstraints(rows, width, self))
        if any(row.sampling for row in rows):
            processors.append(_RowSampler(rows, self.device))
        stops = _RowStops(rows, width, self.tokenizer, self.device)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stops]),
            )
        generated = output[:, width:].tolist()
        latency_ms = int((time.perf_counter() - started) * 1000)
        return [
            self._finish(row, tokens, stops.stopped_at[j], latency_ms)
            for j, (row, tokens) in enumerate(zip(rows, generated))
        ]


# --------------------------------------------------------------------------------------------
# Per-row decoding and stopping


NUCLEUS_CANDIDATES = 256  # top-p looks at this many most likely tokens, unless it needs more


def draw_tokens(
    scores: torch.Tensor, temperatures: list[float], top_ps: list[float], generators: list[torch.Generator]
) -> torch.Tensor:
    """The next token of each row of `scores` (one row per sampling request, temperature > 0):
    temperature, then top-p, one draw from that request's own generator. Answers a (rows, 1)
    tensor of token ids. Each draw depends on the row's scores and generator alone, never on
    the other rows."""
    device = scores.device
    temperature = torch.tensor(temperatures, dtype=torch.float32, device=device)[:, None]
    logits = scores.float() / temperature
    probs = torch.softmax(logits, dim=-1)
    draws = torch.stack([torch.rand((), dtype=torch.float64, generator=g) for g in generators])
    draws = draws.to(device=device, dtype=torch.float32)[:, None]
    chosen = torch.empty(len(generators), 1, dtype=torch.long, device=device)
    whole = [k for k, p in enumerate(top_ps) if p >= 1]
    nucleus = [k for k, p in enumerate(top_ps) if p < 1]
    if whole:  # top_p = 1: the whole distribution, no sorting needed
        k = torch.tensor(whole, device=device)
        chosen[k] = _inverse_cdf(probs[k], draws[k])
    if nucleus:
        k = torch.tensor(nucleus, device=device)
        top_p = torch.tensor([top_ps[i] for i in nucleus], dtype=torch.float32, device=device)[:, None]
        nucleus_probs = probs[k]
        candidates = min(NUCLEUS_CANDIDATES, probs.shape[-1])
        sorted_probs, sorted_ids = nucleus_probs.topk(candidates, dim=-1)
        picks = torch.empty(len(nucleus), 1, dtype=torch.long, device=device)
        enough = sorted_probs.sum(dim=-1) >= top_p[:, 0]
        if bool(enough.all()):
            picks = _nucleus_pick(sorted_probs, sorted_ids, top_p, draws[k])
        else:  # a flat distribution: its nucleus goes past the candidates, sort it all
            short = ~enough
            picks[enough] = _nucleus_pick(sorted_probs[enough], sorted_ids[enough], top_p[enough], draws[k][enough])
            all_probs, all_ids = nucleus_probs[short].sort(dim=-1, descending=True)
            picks[short] = _nucleus_pick(all_probs, all_ids, top_p[short], draws[k][short])
        chosen[k] = picks
    return chosen


def row_generator(seed: int) -> torch.Generator:
    """The sampling generator of one request (CPU: cheap, independent of the device, reproducible
    everywhere)."""
    return torch.Generator().manual_seed(seed)


class _RowSampler(LogitsProcessor):
    """Draws the next token of each sampling row (`draw_tokens`) with that row's own generator
    and forces it by leaving only it finite; greedy rows pass through untouched."""

    NUCLEUS_CANDIDATES = NUCLEUS_CANDIDATES

    def __init__(self, rows: list[_Row], device: torch.device):
        picked = [(j, row) for j, row in enumerate(rows) if row.sampling]
        self.rows = torch.tensor([j for j, _ in picked], dtype=torch.long, device=device)
        self.temperatures = [row.request.temperature for _, row in picked]
        self.top_ps = [row.request.top_p for _, row in picked]
        self.generators = [row_generator(row.seed) for _, row in picked]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = scores.index_select(0, self.rows)
        chosen = draw_tokens(rows, self.temperatures, self.top_ps, self.generators)
        forced = torch.full_like(rows, float("-inf"), dtype=torch.float32).scatter_(1, chosen, 0.0)
        return scores.index_copy(0, self.rows, forced.to(scores.dtype))


def _inverse_cdf(probs: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Index of the token where each row's cumulative probability passes its draw in [0, 1)."""
    cumulative = probs.cumsum(dim=-1)
    target = draws * cumulative[:, -1:]
    return torch.searchsorted(cumulative, target, right=True).clamp_(max=probs.shape[-1] - 1)


def _nucleus_pick(sorted_probs, sorted_ids, top_p, draws) -> torch.Tensor:
    """Top-p over probabilities sorted in descending order: keep tokens while the mass before
    them is below top_p (the first always), then draw among them."""
    outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
    outside[:, 0] = False
    position = _inverse_cdf(sorted_probs.masked_fill(outside, 0.0), draws)
    return sorted_ids.gather(1, position)


class _RowConstraints(LogitsProcessor):
    """The tool grammar of each row that offers tools (constrained.ToolConstraint): takes the row's
    last token, then leaves only the tokens the grammar allows next finite."""

    def __init__(self, rows: list[_Row], prompt_width: int, model: TextModel):
        self.prompt_width = prompt_width
        self.constraints = {j: model.tool_constraint(row.request) for j, row in enumerate(rows) if row.request.tools}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids.shape[1] > self.prompt_width
        for j, constraint in self.constraints.items():
            if generated:
                constraint.take(int(input_ids[j, -1]))
            constraint.restrict(scores, j)
        return scores


class _RowStops(StoppingCriteria):
    """Ends each row at its own max_tokens, or once its text holds one of its stop sequences
    (checked on a window of its last tokens); `stopped_at[j]` is the number of generated tokens
    when row j's stop sequence appeared."""

    def __init__(self, rows: list[_Row], prompt_width: int, tokenizer, device: torch.device):
        self.prompt_width = prompt_width
        self.tokenizer = tokenizer
        self.limits = torch.tensor([row.request.max_tokens for row in rows], dtype=torch.long, device=device)
        self.stops = [list(row.request.stop_sequences) for row in rows]
        self.watched = [j for j, stops in enumerate(self.stops) if stops]
        # A character is at most 4 bytes and a token at least one: this many tokens cover the
        # longest stop sequence of the batch wherever it starts.
        longest = max((len(s) for stops in self.stops for s in stops), default=0)
        self.window = 4 * longest + 2
        self.stopped_at: list[int | None] = [None] * len(rows)
        self.stopped = torch.zeros(len(rows), dtype=torch.bool, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_width
        done = self.limits <= produced
        pending = [j for j in self.watched if self.stopped_at[j] is None]
        if pending:
            start = max(self.prompt_width, input_ids.shape[1] - self.window)
            windows = input_ids[pending, start:].tolist()
            newly = []
            for j, window in zip(pending, windows):
                text = self.tokenizer.decode(window, skip_special_tokens=True)
                if _first_stop(text, self.stops[j]) is not None:
                    self.stopped_at[j] = produced
                    newly.append(j)
            if newly:
                self.stopped[newly] = True
        return done | self.stopped


# --------------------------------------------------------------------------------------------


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _eos_ids(config, generation_config, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (
        getattr(generation_config, "eos_token_id", None),
        getattr(config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _request_seed(seed: int, request: TextRequest, ids: list[int]) -> int:
    """A 63-bit seed that depends only on `seed` and the request itself (not on its batch)."""
    key = f"{seed}|{request.temperature!r}|{request.top_p!r}|" + ",".join(map(str, ids))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1
