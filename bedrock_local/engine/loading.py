"""Loading and checking models on disk.

Owns: checking an imported Hugging Face folder the way Bedrock Custom Model Import expects
(`check_hf_model_folder`), loading a causal LM from an HF folder, a GGUF file or a LoRA adapter
folder merged onto its base (`load_causal_lm`), turning a catalog model's packaged weights into a
plain HF folder once and reusing it (`materialize_foundation_model`), and loading a
sentence-transformers model (`load_embedding_model`). Everything loads from local paths; nothing reaches a model hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import copy
import json
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from bedrock_local.storage.folder import temporary_prefix

from .adapters import base_path, is_adapter_folder
from .catalog import KIND_EMBEDDING, FoundationModel, packaged_weights, weights_of

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
# Any one of these sets of files makes a tokenizer that AutoTokenizer can load.
TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
)
# What an imported folder must hold (Bedrock Custom Model Import: HF layout, safetensors weights).
REQUIRED_FILES: tuple[str, ...] = (
    CONFIG_FILE,
    f"{SAFETENSORS_FILE}, or {SAFETENSORS_INDEX_FILE} and every shard it names",
    " or ".join("+".join(files) for files in TOKENIZER_FILE_SETS),
)
MATERIALIZED_MARKER = ".bedrock-local-materialized.json"
# One model build at a time in a process: transformers and accelerate build models on the meta device
# under context managers that patch torch process-wide (init_empty_weights), so two loads in threads of
# one process (a serving node loading a deployment and a Provisioned Throughput at once) corrupt each
# other (measured: two threads loading SmolLM2 at once failed 8 times in 8, "Cannot copy out of meta
# tensor"). Re-entrant: an adapter's load loads its base.
_BUILDING = threading.RLock()
_MATERIALIZE_FORMAT = 1


class ModelCheckError(Exception):
    """An HF model folder is not usable; the message names the file (relative to the folder)
    or tensor at fault and why."""


@dataclass
class ModelCheck:
    architecture: str
    model_type: str
    parameter_count: int
    files: list[str]  # every file of the folder, relative to it
    tokenizer: bool  # tokenizer files present (and, with load=True, the tokenizer loaded)
    unexpected_tensors: list[str] = field(default_factory=list)  # in the files, unused by the model


# --------------------------------------------------------------------------------------------
# Checking an imported HF folder


def check_hf_model_folder(path: Path, load: bool = True) -> ModelCheck:
    """Check that `path` is a Hugging Face causal-LM folder that loads: config, safetensors
    weights whose tensors match the config, tokenizer. With `load`, also load it for real and
    run a one-token forward pass. Raises ModelCheckError naming the first problem found."""
    path = Path(path)
    if not path.is_dir():
        raise ModelCheckError(f"{path} is not a folder")
    files = _list_files(path)

    raw_config = _read_config_json(path)
    model_type, architecture, model_class = _resolve_architecture(raw_config)
    config = _load_config(path)
    weight_files = _weight_files(path, set(files))
    tokenizer_files = _tokenizer_files(set(files))
    if not tokenizer_files:
        raise ModelCheckError(
            "no tokenizer files: the folder needs one of "
            + ", ".join(" + ".join(s) for s in TOKENIZER_FILE_SETS)
            + " (save the tokenizer with tokenizer.save_pretrained into the same folder)"
        )

    headers = {name: _read_safetensors_header(path / name, name) for name in weight_files}
    _check_index_against_headers(path, headers)

    with _BUILDING, init_empty_weights():
        try:
            meta_model = model_class._from_config(config)
        except Exception as exc:  # a config transformers accepts but cannot build a model from
            raise ModelCheckError(
                f"{CONFIG_FILE}: {architecture} cannot be built from this config: {exc}"
            ) from exc
    unexpected = _compare_tensors(meta_model, headers)
    # Tied weights (lm_head = embed_tokens) count once, as they do once the model is loaded.
    tied_targets = set(getattr(meta_model, "all_tied_weights_keys", None) or ())
    parameter_count = sum(
        p.numel() for n, p in meta_model.named_parameters(remove_duplicate=False) if n not in tied_targets
    )
    del meta_model

    if load:
        with _BUILDING:
            _load_and_run(path, model_class)
    return ModelCheck(
        architecture=architecture,
        model_type=model_type,
        parameter_count=parameter_count,
        files=files,
        tokenizer=True,
        unexpected_tensors=unexpected,
    )


def _list_files(path: Path) -> list[str]:
    return sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _read_config_json(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ModelCheckError(f"{CONFIG_FILE} is missing (the folder must be in Hugging Face layout)")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelCheckError(f"{CONFIG_FILE} is not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelCheckError(
            f"{CONFIG_FILE} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    if not isinstance(data, dict):
        raise ModelCheckError(f"{CONFIG_FILE} must hold a JSON object, not {type(data).__name__}")
    return data


def _resolve_architecture(raw: dict[str, Any]) -> tuple[str, str, type[PreTrainedModel]]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelCheckError(f"{CONFIG_FILE} has no \"model_type\" (e.g. \"llama\", \"mistral\", \"qwen2\")")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelCheckError(
            f"{CONFIG_FILE}: model_type {model_type!r} is not known to transformers "
            f"{transformers.__version__}; custom modeling code is not supported"
        )
    if "quantization_config" in raw:
        method = (raw.get("quantization_config") or {}).get("quant_method", "unknown")
        raise ModelCheckError(
            f"{CONFIG_FILE}: the weights are quantized ({method}); import fp32, fp16 or bf16 weights"
        )
    causal_names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    causal_names = (causal_names,) if isinstance(causal_names, str) else tuple(causal_names or ())
    architectures = raw.get("architectures")
    if architectures is None:
        if not causal_names:
            raise ModelCheckError(
                f"{CONFIG_FILE} has no \"architectures\" and model_type {model_type!r} has no "
                "text-generation (causal LM) architecture in transformers"
            )
        architecture = causal_names[0]
    else:
        if not isinstance(architectures, list) or not architectures or not all(
            isinstance(a, str) for a in architectures
        ):
            raise ModelCheckError(
                f"{CONFIG_FILE}: \"architectures\" must be a non-empty list of class names, got {architectures!r}"
            )
        architecture = architectures[0]
    model_class = getattr(transformers, architecture, None)
    if not (isinstance(model_class, type) and issubclass(model_class, PreTrainedModel)):
        raise ModelCheckError(
            f"{CONFIG_FILE}: architecture {architecture!r} is not a model class of transformers "
            f"{transformers.__version__}; custom modeling code is not supported"
        )
    if architecture not in causal_names:
        expected = ", ".join(causal_names) or "none in this transformers version"
        raise ModelCheckError(
            f"{CONFIG_FILE}: architecture {architecture!r} is not a text-generation (causal LM) "
            f"architecture for model_type {model_type!r} (expected: {expected})"
        )
    return model_type, architecture, model_class


def _load_config(path: Path):
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise ModelCheckError(f"{CONFIG_FILE}: transformers cannot read it: {exc}") from exc


def _weight_files(path: Path, files: set[str]) -> list[str]:
    """The safetensors files from_pretrained will read: model.safetensors, or the shards named
    by model.safetensors.index.json (all of which must be there)."""
    if SAFETENSORS_FILE in files:
        return [SAFETENSORS_FILE]
    if SAFETENSORS_INDEX_FILE in files:
        index = _read_index(path)
        shards = sorted(set(index.values()))
        for shard in shards:
            if shard not in files:
                raise ModelCheckError(
                    f"{SAFETENSORS_INDEX_FILE}: shard {shard!r} is missing "
                    f"(the index names {len(shards)} shard(s))"
                )
        return shards
    stray = sorted(f for f in files if f.endswith(".safetensors"))
    if stray:
        raise ModelCheckError(
            f"found {', '.join(stray)} but neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX_FILE}: "
            f"a single weights file must be named {SAFETENSORS_FILE}; shards need the index "
            "(save with model.save_pretrained(..., safe_serialization=True))"
        )
    others = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".gguf")))
    hint = f" (found {', '.join(others)}: convert them to safetensors)" if others else ""
    raise ModelCheckError(f"no *.safetensors weights: {SAFETENSORS_FILE} is missing{hint}")


def _read_index(path: Path) -> dict[str, str]:
    try:
        data = json.loads((path / SAFETENSORS_INDEX_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCheckError(f"{SAFETENSORS_INDEX_FILE} is not valid JSON: {exc}") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelCheckError(f"{SAFETENSORS_INDEX_FILE} has no \"weight_map\" object")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or "/" in shard or not shard.endswith(".safetensors"):
            raise ModelCheckError(
                f"{SAFETENSORS_INDEX_FILE}: tensor {tensor!r} maps to {shard!r}, "
                "which is not a .safetensors file in the folder"
            )
    return weight_map


def _tokenizer_files(files: set[str]) -> list[str]:
    for candidate in TOKENIZER_FILE_SETS:
        if all(name in files for name in candidate):
            return list(candidate)
    return []


def _read_safetensors_header(file: Path, name: str) -> dict[str, list[int]]:
    """{tensor name: shape} from the file's header; the header is checked against the file's size."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as exc:
        detail = str(exc)
        if "not fully covered" in detail or "incomplete" in detail:
            why = "the file is shorter than its header says (truncated or partly uploaded)"
        elif "header too small" in detail or "invalid header length" in detail or "too large" in detail:
            why = "the file does not start with a safetensors header (empty, truncated or another format)"
        else:
            why = "the file is not a readable safetensors file"
        size = file.stat().st_size
        raise ModelCheckError(f"{name}: {why} ({size} bytes; safetensors says: {detail})") from exc
    except OSError as exc:
        raise ModelCheckError(f"{name}: cannot be read: {exc}") from exc


def _check_index_against_headers(path: Path, headers: dict[str, dict[str, list[int]]]) -> None:
    if SAFETENSORS_FILE in headers or not (path / SAFETENSORS_INDEX_FILE).is_file():
        return
    for tensor, shard in _read_index(path).items():
        if tensor not in headers[shard]:
            raise ModelCheckError(
                f"{SAFETENSORS_INDEX_FILE}: maps tensor {tensor!r} to {shard}, which does not hold it"
            )


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _key_mapper(model: PreTrainedModel, expected: dict[str, Any]):
    """A function checkpoint key -> (model key, converted?) that applies the renamings
    transformers itself applies when loading (legacy names, base-model prefix). `converted`
    is True when a many-to-one weight converter (e.g. fused MoE experts) takes the tensor, so
    its shape cannot be compared one to one."""
    prefix = getattr(model, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]

        def mapper(key: str) -> tuple[str, bool]:
            new, pattern = rename_source_key(key, renamings, converters, prefix, expected)
            if new not in expected and key in expected:
                new, pattern = rename_source_key(key, [], [], prefix, expected)
            return new, pattern is not None

        return mapper
    except (ImportError, AttributeError, TypeError):  # transformers moved its internals

        def fallback(key: str) -> tuple[str, bool]:
            if key in expected or not prefix:
                return key, False
            if f"{prefix}.{key}" in expected:
                return f"{prefix}.{key}", False
            stripped = key.removeprefix(f"{prefix}.")
            return (stripped if stripped in expected else key), False

        return fallback


def _compare_tensors(model: PreTrainedModel, headers: dict[str, dict[str, list[int]]]) -> list[str]:
    """Compare the tensors of the files with the state dict of `model` (built on the meta
    device from the config). Raises on the first wrong shape, then on the first missing
    parameter; returns the names of tensors the model does not use."""
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    mapper = _key_mapper(model, expected)

    found: set[str] = set()
    unexpected: list[str] = []
    for file_name, tensors in headers.items():
        for key in sorted(tensors, key=_natural_key):
            target, converted = mapper(key)
            if target not in expected:
                unexpected.append(key)
                continue
            found.add(target)
            if not converted and tensors[key] != expected[target]:
                raise ModelCheckError(
                    f"{file_name}: tensor {key!r} has shape {tensors[key]} "
                    f"but the config expects {expected[target]}"
                )

    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    partners: dict[str, set[str]] = {}
    for target, source in tied.items():
        partners.setdefault(target, set()).add(source)
        partners.setdefault(source, set()).add(target)
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
    files = ", ".join(headers)
    for name in sorted(parameters, key=_natural_key):
        if name in found or partners.get(name, set()) & found:
            continue
        if any(p.search(name) for p in ignore):
            continue
        raise ModelCheckError(
            f"tensor {name!r} (shape {expected.get(name)}) is missing: {type(model).__name__} "
            f"needs it and no weights file holds it (read {files})"
        )
    return unexpected


def _load_and_run(path: Path, model_class: type[PreTrainedModel]) -> None:
    try:
        model = model_class.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    except Exception as exc:
        raise ModelCheckError(f"the model does not load with transformers: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise ModelCheckError(f"the tokenizer does not load with transformers: {exc}") from exc
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelCheckError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows "
            f"(vocab_size in {CONFIG_FILE})"
        )
    ids = tokenizer("Hello", add_special_tokens=False)["input_ids"][:1]
    if not ids:
        token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [token if token is not None else 0]
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
    except Exception as exc:
        raise ModelCheckError(f"a one-token forward pass fails: {exc}") from exc
    if not torch.isfinite(logits).all():
        raise ModelCheckError("a one-token forward pass gives NaN or infinite logits (bad weight values)")


# --------------------------------------------------------------------------------------------
# Loading


def load_causal_lm(source: Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load (model, tokenizer) from an HF folder, a LoRA adapter folder or a `.gguf` file; the model is
    a plain (non-quantized) one in eval mode on `device`, so it can be saved and trained. An adapter
    folder (engine/adapters.py) loads as its base with the adapter merged in (PEFT), one model."""
    source = Path(source)
    with _BUILDING:
        if source.is_file() and source.suffix == ".gguf":
            model, tokenizer = _load_gguf(source)
        elif is_adapter_folder(source):
            model, tokenizer = _load_adapter_merged(source, dtype)
        elif source.is_dir():
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        else:
            raise FileNotFoundError(f"{source}: neither a model folder nor a .gguf file")
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model, tokenizer


def _load_adapter_merged(adapter: Path, dtype: torch.dtype):
    """The adapter's base (engine/adapters.base_path: where it is on this host) with the adapter
    merged into its weights, so it runs as fast as a full model; the adapter's own tokenizer (saved
    with it at training) when it has one, else the base's."""
    from peft import PeftModel

    base = base_path(adapter)
    model, tokenizer = load_causal_lm(base, dtype=dtype, device="cpu")
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    if _tokenizer_files({p.name for p in adapter.iterdir() if p.is_file()}):
        tokenizer = AutoTokenizer.from_pretrained(adapter, local_files_only=True)
    return model, tokenizer


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        return contextlib.nullcontext()
    return no_init_weights()


def _load_gguf(file: Path):
    """GGUF -> plain model: transformers dequantizes the file but flags the model as quantized
    (not serializable, not trainable), so rebuild an unflagged model with the same weights."""
    folder, name = str(file.parent), file.name
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _no_init_weights():  # every weight is overwritten by load_state_dict below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    del gguf_model
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    return model, tokenizer


def load_embedding_model(source: Path, *, device: str = "cpu") -> "SentenceTransformer":
    """A sentence-transformers model from its folder on disk."""
    from sentence_transformers import SentenceTransformer

    source = Path(source)
    if not (source / "modules.json").is_file() and not (source / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{source}: not a sentence-transformers model folder")
    with _BUILDING:
        return SentenceTransformer(str(source), device=device, local_files_only=True)


# --------------------------------------------------------------------------------------------
# Packaged foundation models as plain HF folders


def _sanitize(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_id)


def _source_stamp(source: Path) -> dict[str, Any]:
    stat = source.stat()
    return {
        "format": _MATERIALIZE_FORMAT,
        "source": str(source),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _is_materialized(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / MATERIALIZED_MARKER).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


def materialize_foundation_model(model: FoundationModel, cache_dir: Path) -> Path:
    """A plain HF folder for a catalog model. The text model's GGUF is converted once into
    `cache_dir/<model id>/` (bf16 safetensors + tokenizer; load it back as float32) and reused
    while the packaged file is unchanged; the embedding model's packaged folder is returned
    as it is. An alias shares the folder of the packaged model it runs on; an alias on a local HF
    folder (runsOnWeights) is answered by that folder as it is."""
    model = weights_of(model)
    source = packaged_weights(model)
    if model.kind == KIND_EMBEDDING or model.weights_folder:
        return source
    cache_dir = Path(cache_dir)
    target = cache_dir / _sanitize(model.model_id)
    stamp = _source_stamp(source)
    if _is_materialized(target, stamp):
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    # named by this host and pid (storage.folder): a folder left by a kill is swept at the next start
    building = Path(tempfile.mkdtemp(prefix=f"{temporary_prefix()}{target.name}.building-", dir=cache_dir))
    try:
        lm, tokenizer = load_causal_lm(source, dtype=torch.float32)
        lm.to(torch.bfloat16).save_pretrained(building)
        tokenizer.save_pretrained(building)
        del lm
        check_hf_model_folder(building, load=False)
        (building / MATERIALIZED_MARKER).write_text(json.dumps(stamp), encoding="utf-8")
        if target.exists():  # stale (the package changed) or half-written by an old version
            stale = Path(tempfile.mkdtemp(prefix=f"{temporary_prefix()}{target.name}.stale-", dir=cache_dir))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(building, target)
        except OSError:
            if not _is_materialized(target, stamp):  # another process won the race with a good copy?
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target
