"""Models kept loaded between jobs, under a memory budget.

A worker asks `ModelCache` for a text generator or an `Embedder` by the model's location on
disk (an HF folder, a `.gguf` file, a sentence-transformers folder). The first ask loads it; later
asks get the same object. A text model runs on the backend engine/backends.choose picks for it
under `--engine` (`text_generator(path, engine=..., kv_cache_gib=...)`): a `TextGenerator`
(transformers) or a `VllmGenerator` (vllm_batch.py); the backend is part of the cache key. When
loading one more model would go over the budget (default: half of the machine's RAM, or of the
GPU's memory on CUDA), the least recently used models are dropped first; a vLLM engine dropped is
closed (its processes end, its KV cache is freed). Sizes are parameter count x element size:
estimated from the files before loading, measured on the loaded model after (a vLLM engine says
its own: weights + KV cache).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .embeddings import Embedder
from .generation import TextGenerator, default_device
from .loading import load_causal_lm, load_embedding_model

log = logging.getLogger(__name__)

KIND_TEXT, KIND_EMBEDDING = "text", "embedding"
LOAD_ELEMENT_SIZE = 4  # models load as float32
GGUF_EXPANSION = 7  # a 4-bit GGUF file grows about this much once dequantized to float32


@dataclass
class _Entry:
    value: Any  # TextGenerator | Embedder
    size: int  # bytes


class ModelCache:
    """Loaded models by (kind, resolved path), least recently used first."""

    def __init__(self, memory_budget_bytes: int | None = None, *, device: str | None = None):
        self.device = device or default_device()
        self.memory_budget_bytes = (
            memory_budget_bytes if memory_budget_bytes is not None else default_memory_budget(self.device)
        )
        self._entries: OrderedDict[tuple[str, Path], _Entry] = OrderedDict()
        self._sizes: dict[tuple[str, Path], int] = {}  # measured sizes, also of evicted models
        self._lock = threading.RLock()

    def text_generator(self, source: Path, *, engine: str = "transformers", kv_cache_gib: float = 2.0,
                       adapters: bool = False):
        """The TextGenerator (transformers) or VllmGenerator of the model at `source`, as
        backends.choose(engine, source) says (GGUF files and models vLLM cannot run fall back to
        transformers under auto). `adapters`: a vLLM engine that runs LoRA adapters of the model (LoRA
        enabled, kept apart from the plain engine of the same model, which runs faster without it)."""
        from .backends import VLLM, choose

        source = Path(source)
        backend = choose(engine, source)

        def load(path: Path):
            log.info("text model %s loads on %s (--engine %s)", path.name, backend, engine)
            return _load_vllm(path, kv_cache_gib, adapters) if backend == VLLM else self._load_text(path)

        if backend == VLLM:
            return self._get(f"{KIND_TEXT}:{VLLM}" + (":lora" if adapters else ""), source, load,
                             estimate=estimate_model_bytes(source) + int(kv_cache_gib * 1024 ** 3))
        return self._get(KIND_TEXT, source, load)

    def embedder(self, source: Path) -> Embedder:
        return self._get(KIND_EMBEDDING, Path(source), self._load_embedding)

    def loaded(self) -> list[Path]:
        """Paths of the loaded models, least recently used first."""
        with self._lock:
            return [path for _, path in self._entries]

    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.size for entry in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                _close(self._entries.popitem(last=False)[1].value)
        _release_memory()

    # ----------------------------------------------------------------------------------------

    def _get(self, kind: str, source: Path, load: Callable[[Path], Any], estimate: int | None = None):
        key = (kind, source.resolve())
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and getattr(entry.value, "failed", None) is not None:
                log.warning("the engine of %s broke (%s): loading it again", source, entry.value.failed)
                del self._entries[key]
                _close(entry.value)
                entry = None
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.value
            self._make_room(self._sizes.get(key) or estimate or estimate_model_bytes(source))
            value = load(source)
            size = engine_bytes(value, source) if hasattr(value, "kv_cache_bytes") else model_bytes(value.model)
            self._sizes[key] = size
            self._make_room(size)
            self._entries[key] = _Entry(value, size)
            return value

    def _make_room(self, size: int) -> None:
        """Drop least recently used models until `size` more bytes fit (a model larger than the
        whole budget still loads, alone)."""
        evicted = False
        while self._entries and self.used_bytes() + size > self.memory_budget_bytes:
            _close(self._entries.popitem(last=False)[1].value)
            evicted = True
        if evicted:
            _release_memory()

    def _load_text(self, source: Path) -> TextGenerator:
        model, tokenizer = load_causal_lm(source, device=self.device)
        return TextGenerator(model, tokenizer, device=self.device)

    def _load_embedding(self, source: Path) -> Embedder:
        return Embedder(load_embedding_model(source, device=self.device), device=self.device)


# --------------------------------------------------------------------------------------------


def _load_vllm(source: Path, kv_cache_gib: float, adapters: bool = False):
    from .vllm_batch import VllmGenerator

    return VllmGenerator(source, kv_cache_gib=kv_cache_gib, enable_lora=adapters)


def _close(value) -> None:
    """Free what a dropped model holds outside this process's heap (a vLLM engine's processes)."""
    close = getattr(value, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.warning("closing a dropped model failed", exc_info=True)


def default_memory_budget(device: str | None = None) -> int:
    """Half of the GPU's memory on CUDA, else half of the RAM this process may use."""
    device = device or default_device()
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory // 2
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a container's memory limit (cgroup v2), when lower
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            ram = min(ram, int(limit))
    except OSError:
        pass
    return ram // 2


def engine_bytes(engine, source: Path) -> int:
    """Bytes an engine that holds its model outside this process takes (vllm_batch.VllmGenerator): its
    weights, estimated from the files at its element size, and its KV cache."""
    return estimate_model_bytes(source) * engine.weight_element_bytes // LOAD_ELEMENT_SIZE + engine.kv_cache_bytes


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a loaded model's parameters and buffers (tied weights once)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_model_bytes(source: Path) -> int:
    """Bytes a model will take once loaded as float32, from its files: safetensors headers
    (exact parameter counts), else file sizes."""
    source = Path(source)
    if source.is_file():
        return source.stat().st_size * (GGUF_EXPANSION if source.suffix == ".gguf" else 1)
    total = 0
    for file in source.rglob("*.safetensors"):
        total += _safetensors_elements(file) * LOAD_ELEMENT_SIZE
    if total:
        return total
    return sum(f.stat().st_size for f in source.rglob("*") if f.suffix in (".bin", ".pt", ".pth", ".gguf"))


def _safetensors_elements(file: Path) -> int:
    from safetensors import safe_open

    count = 0
    try:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                elements = 1
                for dim in handle.get_slice(name).get_shape():
                    elements *= dim
                count += elements
    except Exception:  # unreadable: count its bytes instead
        return file.stat().st_size // LOAD_ELEMENT_SIZE
    return count


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
