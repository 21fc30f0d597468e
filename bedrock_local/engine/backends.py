"""Which backend generates text for a model load: vLLM or transformers.

`--engine` (Settings.engine) says `vllm`, `transformers` or `auto`; `choose(setting, path)` answers
the backend for the HF folder at `path`: under `auto`, vLLM where it imports here and its model
registry knows the folder's architecture, else transformers (a GGUF file, a model vLLM does not
support, a machine without vLLM). `vllm_problem()` says why vLLM cannot run in this environment
(None when it can); asking for `vllm` where it cannot is an EngineUnavailable with that reason.

The transformers backend (generation.py, continuous.py) stays the fallback and the reference: both
backends take the same TextRequest and answer the same TextResult (prompt rules in
generation.PromptRules).

This module imports neither torch nor vLLM until asked.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

VLLM, TRANSFORMERS, AUTO = "vllm", "transformers", "auto"
ENGINES = (AUTO, VLLM, TRANSFORMERS)


class EngineUnavailable(Exception):
    """`--engine vllm` where vLLM cannot run the model; str() says why."""


@functools.cache
def vllm_problem() -> str | None:
    """Why vLLM cannot run in this environment, or None. Checked once per process: the package is
    there, and no torchvision/torchaudio wheel built for another torch sits beside it (their import
    fails inside vLLM's own subprocesses, which a guard in this process cannot reach)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install -e '.[vllm]' on Linux x86_64, or vllm on a CUDA machine)"
    torch_build = _build("torch")
    for companion in ("torchvision", "torchaudio"):
        build = _build(companion)
        if build is not None and torch_build is not None and build != torch_build:
            return (f"{companion} is built for {build} but torch for {torch_build}: its import fails next to this "
                    f"torch; remove it (pip uninstall -y torchvision torchaudio torchcodec) or install the "
                    f"matching build")
    return None


def _build(package: str) -> str | None:
    """What an installed torch package is built for ('cpu', 'cu130'; from the local part of the version
    in its version.py, read without importing it), or None when it is not installed."""
    import re

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"""__version__\s*=\s*['"][^'"+]*\+?([^'"]*)['"]""", text)
    return (found.group(1) or "default") if found else None


@functools.cache
def _vllm_architectures() -> frozenset[str]:
    from vllm import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs())


def vllm_supports(path: Path) -> str | None:
    """Why vLLM cannot load the model at `path` (None when it can): a folder with a config.json whose
    architecture vLLM's registry knows."""
    path = Path(path)
    if not path.is_dir():
        return f"{path.name} is not an HF folder (vLLM here loads HF folders only)"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its config.json cannot be read: {exc}"
    architectures = config.get("architectures") or []
    known = _vllm_architectures()
    if not any(a in known for a in architectures):
        return f"vLLM does not support the architecture {architectures or 'named by no config'}"
    return None


def choose(setting: str, path: Path) -> str:
    """The backend for the model at `path` under `--engine setting`."""
    if setting == TRANSFORMERS:
        return TRANSFORMERS
    problem = vllm_problem() or vllm_supports(path)
    if problem is None:
        return VLLM
    if setting == VLLM:
        raise EngineUnavailable(f"--engine vllm cannot run this model: {problem}")
    log.info("engine auto: transformers for %s (%s)", Path(path).name, problem)
    return TRANSFORMERS
