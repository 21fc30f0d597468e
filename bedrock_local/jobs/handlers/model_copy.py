"""The model copy job: copy every artifact of the source model (another region's prefix of the
model store) to the target model's prefix, verify each SHA-256 against the source manifest, and
make the target model Active; on any error both the job and the target model end Failed."""

from bedrock_local.jobs.artifacts import copy_object, object_sha256, read_manifest, write_manifest
from bedrock_local.jobs.lifecycle import move
from bedrock_local.jobs.protocol import Handler, JobContext
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource


class CopyFailed(Exception):
    pass


class ModelCopyHandler(Handler):
    kind = "model-copy"

    def run(self, ctx: JobContext) -> None:
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            source = S3Location.parse(job.body["_sourceArtifacts"])
            target = S3Location.parse(job.body["_targetArtifacts"])
            source_arn, target_arn = job.body["sourceModelArn"], job.body["targetModelArn"]
            if resources.find_by_arn(session, source_arn) is None:
                raise CopyFailed(f"The source model {source_arn} was deleted before it could be copied.")
        try:
            manifest = read_manifest(ctx.objects, source)
        except StorageError as exc:
            raise CopyFailed(f"The artifacts of the source model {source_arn} cannot be read: {exc}")
        done: dict[str, dict] = dict(ctx.checkpoint.get("files", {}))
        for name, expected in sorted(manifest.items()):
            if name in done:
                continue
            ctx.check()
            size, digest = copy_object(ctx.objects, source.join(*name.split("/")), target.join(*name.split("/")),
                                       ctx.settings.cache_dir)
            if digest != expected["sha256"] or size != expected["size"]:
                raise CopyFailed(f"{name} of the source model does not match its checksum "
                                 f"(expected sha256 {expected['sha256']}, read {digest}); the source is damaged.")
            done[name] = expected
            ctx.progress = {"filesCopied": len(done), "filesTotal": len(manifest)}
            ctx.save_checkpoint({"files": done})
        for name, expected in sorted(done.items()):
            if object_sha256(ctx.objects, target.join(*name.split("/"))) != expected["sha256"]:
                raise CopyFailed(f"{name} was damaged while being written to {target.uri}.")
        write_manifest(ctx.objects, target, done)
        with ctx.session() as session:
            model = resources.find_by_arn(session, target_arn)
            move(model, "Active")
            move(ctx.resource(session), "Completed")

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessage=message[:2048])
        model = resources.find_by_arn(session, resource.body["targetModelArn"])
        if model is not None and model.status == "Creating":
            move(model, "Failed", failureMessage=f"The model copy job {resource.arn} failed: {message}"[:2048])
        ctx.objects.delete_prefix(S3Location.parse(resource.body["_targetArtifacts"]))
