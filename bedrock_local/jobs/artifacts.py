"""Where model artifacts live and how they move: each custom model's files sit in the object
store under `s3://<model-bucket>/<account>/<region>/custom-models/<model id>/`, with a manifest
of every file's size and SHA-256, so that import and copy are real, verified byte moves."""

import hashlib
import json
import tempfile
from pathlib import Path

from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore, S3Location
from bedrock_local.storage.folder import temporary_prefix

MANIFEST = "bedrock-local-manifest.json"
# where a customization job writes its metrics under its output URI, as AWS does (the console reads them)
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"


def model_location(settings: Settings, account: str, region: str, model_id: str) -> S3Location:
    return S3Location(settings.model_bucket, f"{account}/{region}/custom-models/{model_id}/")


def jsonl_objects(objects: ObjectStore, loc: S3Location) -> list[S3Location]:
    """The data files a training or prompt URI names: the object itself, or (a prefix, or a key with no
    object, as AWS reads a folder named without its slash) every .jsonl object under it."""
    if loc.is_prefix or not objects.exists(loc):
        prefix = loc if loc.is_prefix else S3Location(loc.bucket, loc.key + "/")
        return [found for found, _ in objects.list_objects(prefix) if found.key.endswith(".jsonl")]
    return [loc]


def relative_name(prefix: S3Location, loc: S3Location) -> str:
    base = prefix.key if prefix.key.endswith("/") or not prefix.key else prefix.key + "/"
    return loc.key[len(base):]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_object(objects: ObjectStore, source: S3Location, target: S3Location, work_dir: Path) -> tuple[int, str]:
    """Copy one object through a local temp file under `work_dir` (the cache: a folder named by this
    host and pid, which the start-up sweep removes if a kill leaves it); answers (size, sha256 of the
    bytes written)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=temporary_prefix(), dir=work_dir) as folder:
        local = Path(folder) / "object"
        objects.download_file(source, local)
        objects.upload_file(target, local)
        return local.stat().st_size, sha256_of(local)


def object_sha256(objects: ObjectStore, loc: S3Location) -> str:
    digest = hashlib.sha256()
    with objects.open_read(loc) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(objects: ObjectStore, prefix: S3Location, files: dict[str, dict]) -> None:
    objects.put_bytes(prefix.join(MANIFEST), json.dumps({"files": files}, indent=1, sort_keys=True).encode())


def read_manifest(objects: ObjectStore, prefix: S3Location) -> dict[str, dict]:
    return json.loads(objects.get_bytes(prefix.join(MANIFEST)))["files"]


class DamagedArtifact(Exception):
    """A stored model file no longer matches the model's manifest."""


def download_model(objects: ObjectStore, prefix: S3Location, folder: Path, files: dict[str, dict]) -> Path:
    """Materialize a stored model in a local folder (reused when every file is already there intact).
    A downloaded file whose size or SHA-256 differs from the manifest raises DamagedArtifact naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, info in files.items():
        local = folder / name
        if local.exists() and local.stat().st_size == info["size"]:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        objects.download_file(prefix.join(*name.split("/")), local)
        if local.stat().st_size != info["size"] or ("sha256" in info and sha256_of(local) != info["sha256"]):
            local.unlink()
            raise DamagedArtifact(f"The stored file {prefix.join(*name.split('/')).uri} does not match the "
                                  "model's manifest (size or SHA-256): it was changed or damaged after the import.")
    return folder
