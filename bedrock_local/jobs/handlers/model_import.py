"""The model import job behind CreateCustomModel: copy an HF-format folder from the user's S3
location into the model store (with checksums), load it to prove it works, then Active; or
Failed with a message that names the file and the problem."""

from bedrock_local.jobs.artifacts import (copy_object, download_model, read_manifest, relative_name,
                                          write_manifest)
from bedrock_local.jobs.lifecycle import move
from bedrock_local.jobs.model_sources import custom_model_dir
from bedrock_local.jobs.protocol import Handler, JobContext
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.store.schema import Resource

REQUIRED = ("config.json",)
WEIGHTS = (".safetensors",)


class ImportFailed(Exception):
    pass


class ModelImportHandler(Handler):
    kind = "model-import"

    def run(self, ctx: JobContext) -> None:
        with ctx.db.read_session() as session:
            model = ctx.resource(session)
            source = S3Location.parse(model.body["_source"])
            target = S3Location.parse(model.body["_artifacts"])
        if not source.key.endswith("/") and source.key:
            source = S3Location(source.bucket, source.key + "/")
        try:
            listing = [(relative_name(source, loc), loc, size) for loc, size in ctx.objects.list_objects(source)]
        except StorageError as exc:
            raise ImportFailed(f"Cannot read the model source {source.uri}: {exc}")
        names = {name for name, _, _ in listing}
        if not listing:
            raise ImportFailed(f"No files were found under {source.uri}: upload the model's Hugging Face folder there.")
        for required in REQUIRED:
            if required not in names:
                raise ImportFailed(f"{required} is missing from {source.uri}: the import needs a Hugging Face model folder.")
        if not any(name.endswith(WEIGHTS) for name in names):
            raise ImportFailed(f"No .safetensors weights were found under {source.uri}: "
                               f"save the model with save_pretrained(..., safe_serialization=True).")
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
        self._check_loads(ctx, target)
        with ctx.session() as session:
            move(ctx.resource(session), "Active")

    def _check_loads(self, ctx: JobContext, target: S3Location) -> None:
        from bedrock_local.engine.loading import ModelCheckError, check_hf_model_folder

        with ctx.db.read_session() as session:
            model = ctx.resource(session)
            folder = custom_model_dir(ctx.settings, model.account, model.region, model.resource_id)
            source = model.body["_source"]
        download_model(ctx.objects, target, folder, read_manifest(ctx.objects, target))
        try:
            check_hf_model_folder(folder, load=True)
        except ModelCheckError as exc:
            raise ImportFailed(f"The model under {source} does not load: {exc}")

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessage=message[:2048])
        target = resource.body.get("_artifacts")
        if target:
            ctx.objects.delete_prefix(S3Location.parse(target))
