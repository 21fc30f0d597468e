"""Which model a job runs and where its weights are on this machine: a packaged foundation model
(materialized once into the cache as a plain HF folder), or a custom model downloaded from the
model store into the cache; or a stub model (engine/stub_models.py), which has no weights and
whose engine is built at once. Both the service (to check a model id at create time) and the
workers and serving nodes (to load it: `load_engine`) use this.

A LoRA custom model (`ModelSource.adapter_base` set) is a PEFT adapter folder on a foundation model:
`local_path` fetches the adapter and records in its local copy where the base is on this host
(engine/adapters.link_base); `load_engine` runs it on its base's engine when that engine takes
adapters per request (vLLM: one loaded base serves many custom models), else loads it as one model
merged onto its base (the transformers loader)."""

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bedrock_local.engine.catalog import (KIND_EMBEDDING, KIND_TEXT, FoundationModel, find_foundation_model,
                                          is_test_model)
from bedrock_local.jobs.artifacts import download_model, read_manifest
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore, S3Location

__all__ = ["ADAPTER_BASE_MEMBER", "KIND_EMBEDDING", "KIND_TEXT", "ModelFilesUnavailable", "ModelSource", "base_source",
           "body_format", "custom_model_dir", "custom_source", "foundation_source", "load_engine", "local_path",
           "weightless_engine"]

# The custom model resource's body member that names a LoRA adapter's base foundation model (private:
# Get answers no member of it; a copy carries it)
ADAPTER_BASE_MEMBER = "_adapterBase"


class ModelFilesUnavailable(Exception):
    """The model's weights could not be fetched or prepared on this machine; str() says why."""


@dataclass(frozen=True)
class ModelSource:
    """A model a job can run: its kind and how to find its weights."""

    reference: str                      # the foundation model id or the custom model ARN
    kind: str                           # "text" or "embedding"
    foundation_model_id: str | None = None
    artifacts: str | None = None        # s3:// prefix of a custom model's files
    account: str | None = None
    region: str | None = None
    model_id: str | None = None         # 12-character id of a custom model
    body_format: str | None = None      # its InvokeModel body (engine/formats/); None: the kind's default
    adapter_base: str | None = None     # a LoRA adapter's base: the foundation model id; None: a whole model

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "ModelSource":
        return cls(**data)


def foundation_source(model: FoundationModel) -> ModelSource:
    return ModelSource(reference=model.model_id, kind=model.kind, foundation_model_id=model.model_id,
                       body_format=model.body_format or None)


def custom_source(model) -> ModelSource:
    """A custom model resource (store.schema.Resource, kind custom-model) as a ModelSource: a model
    trained from a foundation model takes that model's body format; an imported one the Meta Llama body."""
    origin = model.origin_arn or ""
    base = find_foundation_model(origin.split(":foundation-model/", 1)[1]) if ":foundation-model/" in origin else None
    return ModelSource(reference=model.arn, kind=KIND_TEXT, artifacts=model.body["_artifacts"], account=model.account,
                       region=model.region, model_id=model.resource_id,
                       body_format=base.body_format if base is not None and base.body_format else None,
                       adapter_base=model.body.get(ADAPTER_BASE_MEMBER))


def body_format(source: ModelSource) -> str:
    return source.body_format or ("titan-embed" if source.kind == KIND_EMBEDDING else "meta-llama")


def weightless_engine(source: ModelSource):
    """The engine of `source` when it has no weights to load (a stub model answers for it,
    engine/stub_models.py: a StubTextModel or StubEmbeddingModel with the alias's faults), else None.
    Builds at once."""
    if not source.foundation_model_id:
        return None
    model = find_foundation_model(source.foundation_model_id)
    if model is None or not is_test_model(model):
        return None
    from bedrock_local.engine import stub_models

    return stub_models.engine_for(model.kind, model.model_id, model.faults)


def base_source(source: ModelSource) -> ModelSource:
    """The foundation model a LoRA adapter source runs on (ModelFilesUnavailable when this
    server's catalog no longer has it)."""
    model = find_foundation_model(source.adapter_base)
    if model is None:
        raise ModelFilesUnavailable(f"the LoRA custom model {source.reference} runs on the foundation model "
                                    f"{source.adapter_base}, which this server does not have")
    return foundation_source(model)


def load_engine(source: ModelSource, settings: Settings, objects: ObjectStore, load: Callable[[Path], Any]):
    """The engine that runs `source`: a stub model's engine directly (nothing fetched, nothing
    loaded), else `load(path)` of its weights on local disk (`local_path`; a failure to fetch
    them is ModelFilesUnavailable). Batch jobs load through the worker's model cache, serving
    nodes into a continuous batcher: each passes its own `load`.

    A LoRA adapter source: its base is loaded with `load(base path, adapters=True)` (a vLLM engine
    then runs with LoRA enabled, which costs base requests speed, so engines of plain models run
    without), and when that engine takes
    adapters per request (`adapters = True`: a vLLM engine) the answer is an AdapterEngine on it (the
    base engine stays the loader's to close: the worker's cache, the serving node's registry).
    Otherwise `load(adapter path)`, which the transformers loader answers with the adapter merged
    onto its base; where the backend chosen for the base is transformers anyway (--engine), the
    base is not loaded first."""
    engine = weightless_engine(source)
    if engine is not None:
        return engine
    try:
        path = local_path(source, settings, objects)
        base = local_path(base_source(source), settings, objects) if source.adapter_base else None
    except ModelFilesUnavailable:
        raise
    except Exception as exc:
        raise ModelFilesUnavailable(str(exc)) from exc
    if base is None or not _may_take_adapters(settings, base):
        return load(path)
    engine = load(base, adapters=True)
    if getattr(engine, "adapters", False):
        from bedrock_local.engine.adapters import AdapterEngine

        return AdapterEngine(engine, path)
    return load(path)


def _may_take_adapters(settings: Settings, base: Path) -> bool:
    """Whether the backend chosen for the base under --engine may be vLLM (whose engines take
    adapters); a refusal (--engine vllm where vLLM cannot run) is left to the loader to report."""
    from bedrock_local.engine import backends

    try:
        return backends.choose(settings.engine, base) != backends.TRANSFORMERS
    except backends.EngineUnavailable:
        return True


def local_path(source: ModelSource, settings: Settings, objects: ObjectStore) -> Path:
    """The weights on local disk (an HF folder), fetched or converted on first use. A LoRA adapter
    source answers its adapter folder, with its base's folder on this host recorded in it (the base
    is fetched too), so the transformers loader can load it merged."""
    if source.foundation_model_id:
        from bedrock_local.engine.loading import materialize_foundation_model

        model = find_foundation_model(source.foundation_model_id)
        if model is not None and is_test_model(model):
            raise ValueError(f"{source.foundation_model_id} runs on a test model, which has no weights")
        cache = settings.cache_dir / "foundation-models"
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:  # workers sharing a cache convert a model once
            fcntl.flock(lock, fcntl.LOCK_EX)
            return materialize_foundation_model(model, cache)
    prefix = S3Location.parse(source.artifacts)
    folder = custom_model_dir(settings, source.account, source.region, source.model_id)
    folder = download_model(objects, prefix, folder, read_manifest(objects, prefix))
    if source.adapter_base:
        from bedrock_local.engine.adapters import link_base

        link_base(folder, local_path(base_source(source), settings, objects))
    return folder


def custom_model_dir(settings: Settings, account: str, region: str, model_id: str) -> Path:
    return settings.cache_dir / "models" / account / region / model_id
