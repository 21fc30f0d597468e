"""Importing a Hugging Face model folder from the user's S3 location, the work behind both
CreateCustomModel (a custom model) and CreateModelImportJob (an imported model): `import_hf_folder`
checks the folder, copies it into the model store with checksums (one checkpoint per file, so a job
taken over after a crash resumes where the last worker stopped) and loads it once to prove it runs;
or fails with a message that names the missing file, the unsupported architecture or the bad tensor.
The two handlers differ only in what they make of the result."""

import math
from dataclasses import dataclass
from pathlib import Path

from bedrock_local.jobs.artifacts import (copy_object, download_model, read_manifest, relative_name,
                                          write_manifest)
from bedrock_local.jobs.lifecycle import move
from bedrock_local.jobs.model_sources import custom_model_dir
from bedrock_local.jobs.protocol import Handler, JobContext
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.store import resources
from bedrock_local.store.resources import Scope, utcnow
from bedrock_local.store.schema import Resource

CONFIG = "config.json"
WEIGHTS = (".safetensors",)
# files that give a tokenizer a chat template (transformers saves it beside or inside tokenizer_config.json)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# A custom model unit here: 8 GB of 16-bit weights (the precision a model copy is served in), one copy
# of a model needing as many units as its parameters fill, at least one (docs/model-import.md).
CMU_BYTES = 8 * 10**9
CMU_VERSION = "v1.0"
# model_type -> the InvokeModel body of the architecture, as AWS takes it for imported models; others
# take the Meta Llama body (prompt, max_gen_len)
BODY_FORMATS = {"mistral": "mistral", "mixtral": "mistral"}


class ImportFailed(Exception):
    pass


@dataclass(frozen=True)
class ImportedFolder:
    """What the import learned of the model: from its config.json, its weights and its tokenizer."""

    model_type: str          # config.json's model_type: "llama", "mistral", "qwen2", ...
    architecture: str        # the transformers class: "LlamaForCausalLM", ...
    parameter_count: int
    weights_bytes: int       # the safetensors files as stored
    chat_template: bool      # the tokenizer has a chat template (instructSupported)

    @property
    def model_units(self) -> int:
        return max(1, math.ceil(self.parameter_count * 2 / CMU_BYTES))

    @property
    def body_format(self) -> str:
        return BODY_FORMATS.get(self.model_type, "meta-llama")


def import_hf_folder(ctx: JobContext, source: S3Location, target: S3Location, folder: Path) -> ImportedFolder:
    """Copy the HF folder under `source` to `target` in the model store (resuming from ctx.checkpoint),
    write its manifest, fetch it into `folder` on this machine and load it there once."""
    from bedrock_local.engine.loading import TOKENIZER_FILE_SETS

    if source.key and not source.key.endswith("/"):
        source = S3Location(source.bucket, source.key + "/")
    try:
        listing = [(relative_name(source, loc), loc, size) for loc, size in ctx.objects.list_objects(source)]
    except StorageError as exc:
        raise ImportFailed(f"Cannot read the model source {source.uri}: {exc}")
    names = {name for name, _, _ in listing}
    if not listing:
        raise ImportFailed(f"No files were found under {source.uri}: upload the model's Hugging Face folder there.")
    if CONFIG not in names:
        raise ImportFailed(f"{CONFIG} is missing from {source.uri}: the import needs a Hugging Face model folder.")
    if not any(name.endswith(WEIGHTS) for name in names):
        raise ImportFailed(f"No .safetensors weights were found under {source.uri}: "
                           f"save the model with save_pretrained(..., safe_serialization=True).")
    if not any(all(name in names for name in files) for files in TOKENIZER_FILE_SETS):
        wanted = " or ".join("+".join(files) for files in TOKENIZER_FILE_SETS)
        raise ImportFailed(f"The tokenizer is missing from {source.uri}: it needs {wanted} "
                           f"(save it with tokenizer.save_pretrained into the same folder).")
    done: dict[str, dict] = dict(ctx.checkpoint.get("files", {}))
    for name, loc, size in listing:
        if name in done:
            continue
        ctx.check()
        written, digest = copy_object(ctx.objects, loc, target.join(*name.split("/")), ctx.settings.cache_dir)
        done[name] = {"size": written, "sha256": digest}
        ctx.progress = {"filesCopied": len(done), "filesTotal": len(listing)}
        ctx.save_checkpoint({"files": done})
    write_manifest(ctx.objects, target, done)
    ctx.check()
    return _check_loads(ctx, source, target, folder)


def _check_loads(ctx: JobContext, source: S3Location, target: S3Location, folder: Path) -> ImportedFolder:
    from bedrock_local.engine.loading import ModelCheckError, check_hf_model_folder

    files = read_manifest(ctx.objects, target)
    download_model(ctx.objects, target, folder, files)
    try:
        check = check_hf_model_folder(folder, load=True)
    except ModelCheckError as exc:
        raise ImportFailed(f"The model under {source.uri} does not load: {exc}")
    return ImportedFolder(model_type=check.model_type, architecture=check.architecture,
                          parameter_count=check.parameter_count,
                          weights_bytes=sum(info["size"] for name, info in files.items() if name.endswith(WEIGHTS)),
                          chat_template=_has_chat_template(folder))


def _has_chat_template(folder: Path) -> bool:
    import json

    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(config, dict) and config.get("chat_template"))


class ModelImportHandler(Handler):
    """CreateCustomModel's import: the custom model goes Active once its folder is imported."""

    kind = "model-import"

    def run(self, ctx: JobContext) -> None:
        with ctx.db.read_session() as session:
            model = ctx.resource(session)
            source = S3Location.parse(model.body["_source"])
            target = S3Location.parse(model.body["_artifacts"])
            folder = custom_model_dir(ctx.settings, model.account, model.region, model.resource_id)
        import_hf_folder(ctx, source, target, folder)
        with ctx.session() as session:
            move(ctx.resource(session), "Active")

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessage=message[:2048])
        target = resource.body.get("_artifacts")
        if target:
            ctx.objects.delete_prefix(S3Location.parse(target))


class ModelImportJobHandler(Handler):
    """CreateModelImportJob's import: once the folder is imported, the imported model is made (with its
    architecture, chat template and custom model units) and the job Completed, in one transaction."""

    kind = "model-import-job"

    def run(self, ctx: JobContext) -> None:
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            source = S3Location.parse(job.body["modelDataSource"]["s3DataSource"]["s3Uri"])
            target = S3Location.parse(job.body["_artifacts"])
            folder = custom_model_dir(ctx.settings, job.account, job.region, job.body["_modelId"])
        imported = import_hf_folder(ctx, source, target, folder)
        with ctx.session() as session:
            job = ctx.resource(session)
            body = job.body
            name = body["importedModelName"]
            if resources.name_taken(session, Scope(job.account, job.region), "imported-model", name):
                raise ImportFailed(f"An imported model named '{name}' was created while this job ran; "
                                   f"import again under another importedModelName.")
            model = resources.insert(
                session, kind="imported-model", account=job.account, region=job.region,
                resource_id=body["_modelId"], arn=body["_modelArn"], name=name, unique_name=name, ref_arn=job.arn,
                tags=body.get("_importedModelTags"),
                body={k: v for k, v in {
                    "jobName": job.name, "jobArn": job.arn, "modelDataSource": body["modelDataSource"],
                    "modelArchitecture": imported.model_type, "instructSupported": imported.chat_template,
                    "customModelUnits": {"customModelUnitsPerModelCopy": imported.model_units,
                                         "customModelUnitsVersion": CMU_VERSION},
                    "modelKmsKeyArn": body.get("importedModelKmsKeyArn"),
                    "_artifacts": body["_artifacts"], "_bodyFormat": imported.body_format,
                    "_architectureClass": imported.architecture, "_parameterCount": imported.parameter_count,
                    "_weightsBytes": imported.weights_bytes}.items() if v is not None})
            move(job, "Completed", importedModelArn=model.arn, endTime=utcnow().isoformat())

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessage=message[:2048], endTime=utcnow().isoformat())
        target = resource.body.get("_artifacts")
        if target:
            ctx.objects.delete_prefix(S3Location.parse(target))
