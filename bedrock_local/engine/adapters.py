"""LoRA custom models kept as adapters (multi-LoRA): the adapter folder's conventions and the engine
that runs one adapter on a shared base engine.

A LoRA customization of a foundation model stores a PEFT adapter folder (adapter_config.json,
adapter_model.safetensors, the tokenizer), not a merged model; the custom model resource names its
base (the foundation model id, jobs/model_sources.ModelSource.adapter_base). Caches differ per host,
so where the base's weights are on THIS host is written into the adapter's local copy when it is
fetched (`link_base`, a dot file no manifest lists) and read back by the transformers loader
(engine/loading.load_causal_lm merges the adapter onto that base with PEFT); vLLM engines load the
base once and take the adapter per request instead (`AdapterEngine`).

Imports neither torch nor vLLM.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_LINK = ".bedrock-local-base.json"  # in a local copy only: {"path": <the base's HF folder on this host>}


def is_adapter_folder(path: Path) -> bool:
    """A PEFT adapter folder (its adapter_config.json) rather than a whole model."""
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def link_base(adapter: Path, base: Path) -> None:
    """Record in the adapter's local copy that its base is the HF folder `base` on this host.
    Written again on every fetch (the base's folder may have moved), atomically: concurrent loaders
    of one adapter read the old record or the new one, never half of one."""
    adapter = Path(adapter)
    record = json.dumps({"path": str(Path(base).resolve())})
    try:
        if (adapter / BASE_LINK).read_text(encoding="utf-8") == record:
            return
    except OSError:
        pass
    handle, temporary = tempfile.mkstemp(prefix=f"{BASE_LINK}.", dir=adapter)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(record)
        os.replace(temporary, adapter / BASE_LINK)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def base_path(adapter: Path) -> Path:
    """The HF folder of the adapter's base on this host: the one `link_base` recorded, else the
    adapter_config.json's base_model_name_or_path when that is a folder here (an adapter folder
    saved on this host, e.g. straight from training). FileNotFoundError says what is missing."""
    adapter = Path(adapter)
    try:
        recorded = Path(json.loads((adapter / BASE_LINK).read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None and recorded.is_dir():
        return recorded
    try:
        named = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    if named and Path(named).is_dir():
        return Path(named)
    raise FileNotFoundError(
        f"{adapter} is a LoRA adapter whose base model is not on this machine "
        f"({'recorded ' + str(recorded) + ', which is gone' if recorded else 'no base recorded'}; "
        f"adapter_config.json names {named!r}): fetch it through jobs/model_sources.local_path")


class AdapterEngine:
    """One LoRA adapter served on a shared base engine (a vLLM engine with `adapters = True`).

    `generate`, `stream` and `submit` pass `adapter=<the adapter folder>` to the base engine, which
    applies it per request (one loaded base serves many adapters at once); every other attribute
    (prompt_ids, count_tokens, eos_ids, rules, model, active, start, ...) is the base engine's.

    `close` does NOT close the base: other adapters (and the base model itself) may be served by the
    same engine. Closing the base is left to whoever owns it: the serving node's registry of loaded
    engines (helper B's processes/serving and engine/vllm_serving), the worker's model cache for
    batch jobs. Closing an AdapterEngine only stops new requests through it."""

    def __init__(self, engine: Any, adapter: Path | str):
        self.engine = engine
        self.adapter = str(adapter)
        self.closed = False

    def generate(self, requests, *args, **kwargs):
        self._check_open()
        return self.engine.generate(requests, *args, **{**kwargs, "adapter": self.adapter})

    def stream(self, requests, *args, **kwargs):
        self._check_open()
        return self.engine.stream(requests, *args, **{**kwargs, "adapter": self.adapter})

    def submit(self, request, on_event, *args, **kwargs):
        self._check_open()
        return self.engine.submit(request, on_event, *args, **{**kwargs, "adapter": self.adapter})

    def close(self, *args, **kwargs) -> None:
        """Refuse further requests through this adapter; the shared base engine stays open."""
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"the adapter {self.adapter} was closed")

    def __getattr__(self, name: str):
        # only called for attributes not found on the AdapterEngine itself
        if name == "engine":  # during unpickling or before __init__ set it
            raise AttributeError(name)
        return getattr(self.engine, name)

    def __repr__(self) -> str:
        return f"AdapterEngine({self.engine!r}, adapter={self.adapter!r})"
