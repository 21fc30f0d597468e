"""Which model a job runs and where its weights are on this machine: a packaged foundation model
(materialized once into the cache as a plain HF folder), or a custom model downloaded from the
model store into the cache. Both the service (to check a model id at create time) and the
workers (to load it) use this."""

import fcntl
from dataclasses import dataclass
from pathlib import Path

from bedrock_local.engine.catalog import KIND_EMBEDDING, KIND_TEXT, FoundationModel, find_foundation_model
from bedrock_local.jobs.artifacts import download_model, read_manifest
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore, S3Location

__all__ = ["KIND_EMBEDDING", "KIND_TEXT", "ModelSource", "custom_model_dir", "foundation_source", "local_path"]


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

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "ModelSource":
        return cls(**data)


def foundation_source(model: FoundationModel) -> ModelSource:
    return ModelSource(reference=model.model_id, kind=model.kind, foundation_model_id=model.model_id)


def local_path(source: ModelSource, settings: Settings, objects: ObjectStore) -> Path:
    """The weights on local disk (an HF folder), fetched or converted on first use."""
    if source.foundation_model_id:
        from bedrock_local.engine.loading import materialize_foundation_model

        model = find_foundation_model(source.foundation_model_id)
        cache = settings.cache_dir / "foundation-models"
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:  # workers sharing a cache convert a model once
            fcntl.flock(lock, fcntl.LOCK_EX)
            return materialize_foundation_model(model, cache)
    prefix = S3Location.parse(source.artifacts)
    folder = custom_model_dir(settings, source.account, source.region, source.model_id)
    return download_model(objects, prefix, folder, read_manifest(objects, prefix))


def custom_model_dir(settings: Settings, account: str, region: str, model_id: str) -> Path:
    return settings.cache_dir / "models" / account / region / model_id
