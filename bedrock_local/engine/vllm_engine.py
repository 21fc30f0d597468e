"""vLLM as the text backend: what every vLLM engine here shares.

A model on vLLM keeps the prompt rules of the transformers backend (generation.PromptRules, built from
the folder's tokenizer and configs): requests are rendered and checked the same way and handed to
vLLM as token ids, and the token ids vLLM generates become a TextResult through the same
`_finish` (EOS, max_tokens, stop sequences, tool calls read back), so both backends answer the same
request with the same fields and counts.

- `engine_args`: the EngineArgs of one model (dtype, eager or compiled, KV-cache size on the CPU,
  how many sequences run at once, LoRA slots, llguidance for structured outputs).
- `sampling_params`: one request's SamplingParams: max tokens, stop sequences, EOS ids, temperature,
  top-p, a seed of its own (the same request and seed give the same output on vLLM, not the same as
  on transformers: the two draw differently), and the tool grammar of a request that offers tools
  (constrained.tool_grammar, compiled by llguidance inside vLLM).
- `rules_parts`: what a folder's PromptRules are built from, without loading its weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from .constrained import tool_grammar
from .formats import FormatError, TextRequest

GIB = 1024 ** 3
DEFAULT_MAX_SEQS = {"cpu": 32, "cuda": 256}
MAX_LORAS = 8  # adapters one engine holds at once
MAX_LORA_RANK = 64


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


SMALL_MACHINE_CORES = 4  # up to this many cores, vLLM's CPU backend computes on all of them


def prepare_environment() -> None:
    """Environment vLLM reads in this process and in the processes it starts: the library's usage
    report off (nothing leaves the machine); on a machine of few cores, no core kept back for vLLM's
    scheduler process (by default its CPU backend reserves one, which on 2 cores halves the cores
    that compute: benchmarks/README.md, "engines.py"). A value the user set wins."""
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if (os.cpu_count() or 1) <= SMALL_MACHINE_CORES:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def engine_args(path: Path, *, kv_cache_gib: float, dtype: str = "float32", max_num_seqs: int | None = None,
                enforce_eager: bool = True, enable_lora: bool = False, max_model_len: int | None = None, seed: int = 0):
    """The EngineArgs of the model folder at `path`."""
    from vllm import EngineArgs

    prepare_environment()
    device = device_kind()
    options = dict(
        model=str(path), tokenizer=str(path), dtype=dtype, enforce_eager=enforce_eager, seed=seed,
        max_num_seqs=max_num_seqs or DEFAULT_MAX_SEQS[device],
        structured_outputs_config={"backend": "guidance"},
    )
    if device == "cpu":
        options["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB)
    if max_model_len:
        options["max_model_len"] = max_model_len
    if enable_lora:
        options.update(enable_lora=True, max_loras=MAX_LORAS, max_lora_rank=MAX_LORA_RANK)
    return EngineArgs(**options)


def rules_parts(path: Path) -> tuple:
    """What the PromptRules of the HF folder at `path` are built from: its tokenizer, config and
    generation config (None when it has none); no weights are read."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        generation_config = None
    return AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path), generation_config



def sampling_params(rules, request: TextRequest, seed: int, *, min_tokens: int = 0, stream: bool = False):
    """The SamplingParams of `request` (a FormatError for a request it cannot take)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    if request.max_tokens < 1:
        raise FormatError(f"max_tokens must be at least 1, got {request.max_tokens}")
    options = dict(
        max_tokens=request.max_tokens,
        min_tokens=min(min_tokens, request.max_tokens),
        temperature=max(0.0, float(request.temperature)),
        top_p=float(request.top_p) if request.temperature > 0 else 1.0,
        seed=seed,
        stop_token_ids=sorted(rules.eos_ids),
        stop=list(request.stop_sequences) or None,
        # the text is decoded by the prompt rules from the token ids; vLLM detokenizes only to find
        # stop sequences
        detokenize=bool(request.stop_sequences),
        skip_special_tokens=True,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )
    if min_tokens:
        options["ignore_eos"] = True
    if request.tools:
        if request.prompt is not None:
            raise FormatError("tools go with messages, not with a raw prompt")
        options["structured_outputs"] = StructuredOutputsParams(grammar=tool_grammar(request))
    return SamplingParams(**options)


def lora_request(adapter: Path | str | None):
    """The LoRARequest of the adapter folder at `adapter` (None: the base model). Its id is derived
    from the folder's path, so every engine names the same adapter the same."""
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    path = str(Path(adapter).resolve())
    number = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big") % (2 ** 31 - 1) + 1
    return LoRARequest(lora_name=f"adapter-{number}", lora_int_id=number, lora_path=path)


@contextlib.contextmanager
def starting_children():
    """Around the start of a vLLM engine: its engine core and worker are child processes, and
    multiprocessing refuses children to a daemonic process (our worker and serving processes are
    started daemonic by processes/supervisor.py so they end with their parent). The flag is lifted
    while vLLM starts them; vLLM's own processes end when their parent does (they watch it)."""
    import multiprocessing

    config = multiprocessing.current_process()._config
    daemonic = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if daemonic is None:
            config.pop("daemon", None)
        else:
            config["daemon"] = daemonic
