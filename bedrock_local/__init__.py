"""bedrock-local: Amazon Bedrock's model-management and runtime APIs, served locally on open-weight models.

Importing the package hides a torchvision/torchaudio built for another torch than the one installed
(vLLM's wheel pulls PyPI's CUDA builds beside the CPU torch): their import would fail inside
transformers, so this process treats them as absent (engine/backends.py says the same to the user)."""

__version__ = "0.1.0"


def _hide_mismatched_torch_companions() -> None:
    import sys

    from bedrock_local.engine.backends import _build

    torch_build = _build("torch")
    for companion in ("torchvision", "torchaudio", "torchcodec"):
        build = _build(companion) if companion != "torchcodec" else _build("torchvision")
        if torch_build is not None and build is not None and build != torch_build:
            sys.modules.setdefault(companion, None)  # find_spec answers None: transformers skips it


_hide_mismatched_torch_companions()
