"""The model customization job: validation (read and check the training and validation JSONL)
→ data processing → training with TRL/PEFT (engine/training.py) → a new custom model, Active, in
the model store like any other. Step metrics are visible while it trains and written as AWS writes
them under the output URI (`model-customization-job-<id>/training_artifacts/…`); Trainer
checkpoints are copied to the object store so a job taken back after a crash resumes from them."""

import csv
import io
import shutil
from pathlib import Path

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.artifacts import model_location, sha256_of, write_manifest
from bedrock_local.jobs.lifecycle import move
from bedrock_local.jobs.model_sources import ModelSource, local_path
from bedrock_local.jobs.worker import Handler, JobContext, JobStopped
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.store import resources
from bedrock_local.store.resources import Scope, new_id, utcnow
from bedrock_local.store.schema import Resource

MODEL_KIND = "custom-model"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"


class CustomizationFailed(Exception):
    pass


def _phase(job: Resource, phase: str, status: str) -> dict:
    details = {name: dict(info) for name, info in job.body["statusDetails"].items()}
    details[phase].update(status=status, lastModifiedTime=utcnow().isoformat())
    return details


class CustomizationHandler(Handler):
    kind = "customization"

    def run(self, ctx: JobContext) -> None:
        from bedrock_local.engine import training

        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            if job.status == "Stopping":
                raise JobStopped()
            body, job_id = dict(job.body), job.resource_id
        config, _ = training.parse_hyperparameters(body["hyperParameters"], body["customizationType"])
        self._set_phase(ctx, "validationDetails", "InProgress")
        foundation = find_foundation_model(body["_foundationModelId"])
        if foundation is None or body["customizationType"] not in foundation.customizations_supported:
            raise CustomizationFailed(
                f"The base model {body['baseModelArn']} does not support {body['customizationType']}; "
                f"see customizationsSupported in GetFoundationModel.")
        output = S3Location.parse(body["outputDataConfig"]["s3Uri"])
        if not ctx.objects.bucket_exists(output.bucket):  # before training, not after it
            raise CustomizationFailed(f"The output bucket '{output.bucket}' of {body['outputDataConfig']['s3Uri']} "
                                      f"does not exist.")
        train_records = self._read(ctx, body["trainingDataConfig"]["s3Uri"], body["customizationType"], training)
        validation_records = []
        for validator in body.get("validationDataConfig", {}).get("validators", []):
            validation_records += self._read(ctx, validator["s3Uri"], body["customizationType"], training)
        self._set_phase(ctx, "validationDetails", "Completed")
        self._set_phase(ctx, "dataProcessingDetails", "InProgress")
        ctx.check()
        base = local_path(ModelSource.from_json(body["_model"]), ctx.settings, ctx.objects)
        work = ctx.settings.cache_dir / "customization" / job_id
        checkpoints = self._restore_checkpoint(ctx, work / "checkpoints")
        self._set_phase(ctx, "dataProcessingDetails", "Completed")
        self._set_phase(ctx, "trainingDetails", "InProgress")
        metrics: list[dict] = list(ctx.checkpoint.get("metrics", []))

        def on_step(step) -> None:
            metrics[:] = [m for m in metrics if m["step_number"] < step.step]
            metrics.append({"step_number": step.step, "epoch_number": step.epoch,
                            "training_loss": step.training_loss, "perplexity": step.perplexity})
            ctx.progress = {"step": step.step, "epoch": step.epoch, "trainingLoss": step.training_loss}
            with ctx.session() as session:
                job = ctx.resource(session)  # InProgress, or Stopping when a Stop came in
                move(job, job.status, _progress=ctx.progress, trainingMetrics={"trainingLoss": step.training_loss})

        def on_checkpoint(path: Path) -> None:
            self._save_checkpoint(ctx, path, metrics)
            self._write_metrics(ctx, body, job_id, metrics, [])

        try:
            result = training.train(base, train_records, validation_records or None, config, work / "model",
                                    checkpoints, on_step=on_step, should_stop=ctx.should_stop,
                                    on_checkpoint=on_checkpoint)
        except training.DataError as exc:
            raise CustomizationFailed(f"Invalid training data: {exc}")
        self._write_metrics(ctx, body, job_id, metrics, result.validation_metrics)
        ctx.check()
        if result.stopped:
            raise JobStopped()
        self._publish(ctx, work / "model", result)
        shutil.rmtree(work, ignore_errors=True)

    # ---- phases ----------------------------------------------------------------------------
    def _set_phase(self, ctx: JobContext, phase: str, status: str) -> None:
        with ctx.session() as session:
            job = ctx.resource(session)
            move(job, job.status, statusDetails=_phase(job, phase, status))

    def _read(self, ctx: JobContext, uri: str, customization_type: str, training) -> list[dict]:
        loc = S3Location.parse(uri)
        try:
            if loc.is_prefix or not ctx.objects.exists(loc):
                prefix = loc if loc.is_prefix else S3Location(loc.bucket, loc.key + "/")
                files = [found for found, _ in ctx.objects.list_objects(prefix) if found.key.endswith(".jsonl")]
            else:
                files = [loc]
            if not files:
                raise CustomizationFailed(f"No .jsonl data was found at {uri}.")
            records = []
            for found in files:
                with ctx.objects.open_read(found) as handle:
                    records += training.read_records(handle, found.uri, customization_type)
            return records
        except StorageError as exc:
            raise CustomizationFailed(f"The data at {uri} cannot be read: {exc}")
        except training.DataError as exc:
            raise CustomizationFailed(f"Invalid training data: {exc}")

    # ---- checkpoints ---------------------------------------------------------------------
    def _checkpoint_prefix(self, ctx: JobContext) -> S3Location:
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            return S3Location(ctx.settings.model_bucket,
                              f"{job.account}/{job.region}/customization-jobs/{job.resource_id}/checkpoint/")

    def _save_checkpoint(self, ctx: JobContext, path: Path, metrics: list[dict]) -> None:
        """Copy a Trainer checkpoint to the object store, then record it (the copy is complete first)."""
        prefix = self._checkpoint_prefix(ctx).join(path.name + "/")
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            ctx.objects.upload_file(prefix.join(*file.relative_to(path).parts), file)
        ctx.save_checkpoint({"checkpoint": prefix.uri, "metrics": list(metrics)})

    def _restore_checkpoint(self, ctx: JobContext, folder: Path) -> Path:
        """The local checkpoint folder, holding the last checkpoint recorded for this job (if any)."""
        recorded = ctx.checkpoint.get("checkpoint")
        if recorded:
            prefix = S3Location.parse(recorded)
            target = folder / prefix.key.rstrip("/").rsplit("/", 1)[-1]
            if not target.exists():
                shutil.rmtree(folder, ignore_errors=True)
                for loc, _ in ctx.objects.list_objects(prefix):
                    ctx.objects.download_file(loc, target / loc.key[len(prefix.key):])
        else:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # ---- outputs -------------------------------------------------------------------------
    def _write_metrics(self, ctx: JobContext, body: dict, job_id: str, metrics: list[dict],
                       validation: list[dict]) -> None:
        out = S3Location.parse(body["outputDataConfig"]["s3Uri"])
        root = (out if out.is_prefix else S3Location(out.bucket, out.key + "/")).join(f"model-customization-job-{job_id}/")
        ctx.objects.put_bytes(root.join(*TRAINING_CSV.split("/")),
                              _csv(["step_number", "epoch_number", "training_loss", "perplexity"], metrics))
        if validation:
            rows = [{"step_number": v["step"], "epoch_number": v["epoch"], "validation_loss": v["validation_loss"],
                     "perplexity": v["perplexity"]} for v in validation]
            ctx.objects.put_bytes(root.join(*VALIDATION_CSV.split("/")),
                                  _csv(["step_number", "epoch_number", "validation_loss", "perplexity"], rows))

    def _publish(self, ctx: JobContext, folder: Path, result) -> None:
        """Store the trained model and make it a custom model, Active, then end the job Completed."""
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            account, region, body = job.account, job.region, dict(job.body)
        model_id = new_id()
        target = model_location(ctx.settings, account, region, model_id)
        files = {}
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = "/".join(file.relative_to(folder).parts)
            ctx.objects.upload_file(target.join(*name.split("/")), file)
            files[name] = {"size": file.stat().st_size, "sha256": sha256_of(file)}
        write_manifest(ctx.objects, target, files)
        validation_metrics = [{"validationLoss": result.validation_loss}] if result.validation_loss is not None else []
        with ctx.session() as session:
            job = ctx.resource(session)
            if job.status == "Stopping":  # a Stop that came in after the last step: no model
                ctx.objects.delete_prefix(target)
                raise JobStopped()
            if resources.name_taken(session, Scope(account, region), MODEL_KIND, body["outputModelName"]):
                ctx.objects.delete_prefix(target)
                raise CustomizationFailed(f"A custom model named '{body['outputModelName']}' was created while "
                                          f"this job trained; the trained model was not kept.")
            model_arn = f"arn:aws:bedrock:{region}:{account}:custom-model/{body['_foundationModelId']}/{model_id}"
            lineage = {"jobName": job.name, "jobArn": job.arn, "baseModelArn": body["baseModelArn"],
                       "baseModelName": body["_foundationModelId"], "customizationType": body["customizationType"],
                       "hyperParameters": body["hyperParameters"], "trainingDataConfig": body["trainingDataConfig"],
                       "validationDataConfig": body["validationDataConfig"],
                       "outputDataConfig": body["outputDataConfig"],
                       "trainingMetrics": {"trainingLoss": result.training_loss}, "validationMetrics": validation_metrics,
                       "ownerAccountId": account, "modelKmsKeyArn": body.get("outputModelKmsKeyArn"),
                       "_artifacts": target.uri}
            resources.insert(session, kind=MODEL_KIND, account=account, region=region, resource_id=model_id,
                             arn=model_arn, name=body["outputModelName"], unique_name=body["outputModelName"],
                             status="Active", ref_arn=body["baseModelArn"], origin_arn=body["_foundationModelArn"],
                             body={k: v for k, v in lineage.items() if v is not None}, tags=body["_customModelTags"])
            move(job, "Completed", outputModelArn=model_arn, endTime=utcnow().isoformat(),
                 trainingMetrics={"trainingLoss": result.training_loss}, validationMetrics=validation_metrics,
                 statusDetails=_phase(job, "trainingDetails", "Completed"))

    # ---- endings -------------------------------------------------------------------------
    @staticmethod
    def _discard_work(ctx: JobContext, resource: Resource) -> None:
        """A job that ended without a model leaves no local checkpoints behind (1.6 GB for a full
        fine-tune of the packaged SmolLM2): Failed and Stopped are final, nothing resumes them."""
        shutil.rmtree(ctx.settings.cache_dir / "customization" / resource.resource_id, ignore_errors=True)

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        self._discard_work(ctx, resource)
        details = {name: dict(info, status="Failed" if info["status"] == "InProgress" else info["status"])
                   for name, info in resource.body["statusDetails"].items()}
        move(resource, "Failed", failureMessage=message[:2048], endTime=utcnow().isoformat(), statusDetails=details)

    def stopped(self, ctx: JobContext, session, resource: Resource) -> None:
        self._discard_work(ctx, resource)
        details = {name: dict(info, status="Stopped" if info["status"] in ("InProgress", "NotStarted") else info["status"])
                   for name, info in resource.body["statusDetails"].items()}
        if resource.status != "Stopping":
            move(resource, "Stopping")
        move(resource, "Stopped", endTime=utcnow().isoformat(), statusDetails=details)


def _csv(columns: list[str], rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
