"""The model customization job: validation (read and check the training and validation JSONL)
→ data processing → training with TRL/PEFT (engine/training.py) → a new custom model, Active, in
the model store like any other. Step metrics are visible while it trains and written as AWS writes
them under the output URI (`model-customization-job-<id>/training_artifacts/…`).

Checkpoints. The engine spaces Trainer checkpoints by their measured cost (at most ~5% of the
training time). Each one is put into the object store under
`<model-bucket>/<account>/<region>/customization-jobs/<id>/checkpoint/checkpoint-<step>/` by a
background thread while training goes on (hard links into the embedded folder store when it is on
the same filesystem, an upload otherwise; one at a time, a newer checkpoint replacing one still
waiting); its `manifest.json` is written last, and only then is it recorded on the job and the one
recorded before it deleted. A job taken back after a crash resumes from the recorded checkpoint.
When the job ends (Completed, Failed or Stopped) its checkpoints are deleted."""

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bedrock_local import quotas
from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.artifacts import TRAINING_CSV, VALIDATION_CSV, model_location, sha256_of, write_manifest
from bedrock_local.jobs.lifecycle import move, update_body
from bedrock_local.jobs.model_sources import ModelSource, local_path
from bedrock_local.jobs.protocol import Handler, JobContext, JobStopped, LeaseLost
from bedrock_local.storage import ObjectStore, S3Location, StorageError
from bedrock_local.storage.folder import TMP_PREFIX, FolderStore
from bedrock_local.store import resources
from bedrock_local.store.resources import Scope, utcnow
from bedrock_local.store.schema import Resource

MODEL_KIND = "custom-model"
MANIFEST = "manifest.json"  # the last object of a checkpoint in the store: it is complete once this exists
STOP_POLL_SECONDS = 0.2  # how often should_stop() may read the job's status itself
# A fixed checkpoint spacing, in optimizer steps, instead of the one measured from their cost
# (a worker's environment; tests use it to know where a job can be resumed from)
CHECKPOINT_STEPS_ENV = "BEDROCK_LOCAL_CHECKPOINT_STEPS"

log = logging.getLogger("bedrock_local.customization")


class CustomizationFailed(Exception):
    pass


def output_model_id(job_arn: str) -> str:
    """The id of the custom model a job makes: derived from the job, 12 characters of [a-z0-9] like
    any resource id, so a publish repeated after a crash writes over its own first try."""
    number = int.from_bytes(hashlib.sha256(f"customization-output/{job_arn}".encode()).digest()[:16], "big")
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[(number // 36 ** i) % 36] for i in range(12))


def _phase(job: Resource, phase: str, status: str, at: str | None = None) -> dict:
    """statusDetails with one phase moved; `at` lets an ending stamp the phase and endTime alike."""
    details = {name: dict(info) for name, info in job.body["statusDetails"].items()}
    details[phase].update(status=status, lastModifiedTime=at or utcnow().isoformat())
    return details


def checkpoint_root(model_bucket: str, account: str, region: str, job_id: str) -> S3Location:
    """Where a job's checkpoints live in the object store while it runs."""
    return S3Location(model_bucket, f"{account}/{region}/customization-jobs/{job_id}/checkpoint/")


def store_file(objects: ObjectStore, loc: S3Location, path: Path) -> None:
    """Put a local file at `loc`: a hard link when `objects` is the embedded folder store on the
    same filesystem (no copy, no second 1.5 GB on disk; the file must not be rewritten in place
    afterwards, and the Trainer never rewrites a checkpoint's files), an upload otherwise."""
    if isinstance(objects, FolderStore) and _link_into(objects, loc, path):
        return
    objects.upload_file(loc, path)


def _link_into(objects: FolderStore, loc: S3Location, path: Path) -> bool:
    if loc.is_prefix or not objects.bucket_exists(loc.bucket):
        return False
    bucket_dir = objects.root / loc.bucket
    target = bucket_dir.joinpath(*loc.key.split("/"))
    temporary = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(bucket_dir) or target.is_dir():
            return False
        os.link(path, temporary)  # EXDEV across filesystems, EPERM where links are not allowed
        os.replace(temporary, target)  # readers see the old object or the new one, as with a copy
        return True
    except OSError:
        temporary.unlink(missing_ok=True)
        return False


def _link_tree(source: Path, target: Path) -> None:
    """A snapshot of a checkpoint folder that the Trainer's rotation cannot delete under an upload."""
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        destination = target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, destination)
        except OSError:
            shutil.copy2(file, destination)


@dataclass
class _Staged:
    folder: Path  # the snapshot of the checkpoint (hard links)
    name: str  # checkpoint-<step>
    step: int
    metrics: list[dict]


class CheckpointUploads:
    """Puts checkpoints into the object store in a background thread while training goes on.

    One at a time: a checkpoint handed over while another is being put waits, and a newer one
    replaces it (a resume only needs the latest). A checkpoint is complete in the store once its
    manifest (written last) is there; then it is recorded on the job (`ctx.save_checkpoint`: what
    a resumed job reads), `on_recorded(metrics)` is called, and the one recorded before it deleted."""

    def __init__(self, ctx: JobContext, root: S3Location, staging: Path, on_recorded):
        self.ctx, self.root, self.staging, self.on_recorded = ctx, root, staging, on_recorded
        self._lock = threading.Condition()
        self._pending: _Staged | None = None
        self._closed = False
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.recorded = 0  # checkpoints recorded on the job
        self.upload_seconds = 0.0  # time in the background thread, until recorded

    def submit(self, path: Path, metrics: list[dict]) -> None:
        """Hand over the Trainer checkpoint at `path` (snapshot taken now, on the caller's thread)."""
        step = int(path.name.rsplit("-", 1)[1])
        folder = self.staging / f"{path.name}-{uuid.uuid4().hex[:8]}"
        _link_tree(path, folder)
        staged = _Staged(folder, path.name, step, [m for m in metrics if m["step_number"] <= step])
        with self._lock:
            if self._closed:
                shutil.rmtree(folder, ignore_errors=True)
                return
            replaced, self._pending = self._pending, staged
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="checkpoint-uploads", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        if replaced is not None:
            log.info("job %s: %s replaced %s before its upload began", self.ctx.claim.job_pk, staged.name, replaced.name)
            shutil.rmtree(replaced.folder, ignore_errors=True)

    def close(self) -> None:
        """Drop what waits, stop the upload in progress between two files, and wait for the thread."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, None
            self._lock.notify_all()
        self._cancel.set()
        if pending is not None:
            shutil.rmtree(pending.folder, ignore_errors=True)
        if self._thread is not None:
            self._thread.join()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._pending is None:
                    return
                staged, self._pending = self._pending, None
            try:
                self._put(staged)
            except LeaseLost:
                return  # the job has a new owner; ctx.should_stop() now tells the training to end
            except Exception as exc:  # a passing storage error: the next checkpoint tries again
                log.warning("job %s: %s was not stored: %s", self.ctx.claim.job_pk, staged.name, exc)
            finally:
                shutil.rmtree(staged.folder, ignore_errors=True)

    def _put(self, staged: _Staged) -> None:
        started = time.monotonic()
        objects, target = self.ctx.objects, self.root.join(staged.name + "/")
        files = {}
        for file in sorted(p for p in staged.folder.rglob("*") if p.is_file()):
            if self._cancel.is_set():
                return
            name = file.relative_to(staged.folder).as_posix()
            store_file(objects, target.join(*name.split("/")), file)
            files[name] = file.stat().st_size
        if self._cancel.is_set():
            return
        objects.put_bytes(target.join(MANIFEST), json.dumps({"step": staged.step, "files": files}).encode())
        previous = self.ctx.checkpoint.get("checkpoint")
        self.ctx.save_checkpoint({"checkpoint": target.uri, "step": staged.step, "metrics": staged.metrics})
        self.recorded += 1
        self.upload_seconds += time.monotonic() - started
        log.info("job %s: %s stored and recorded in %.2f s (%d files, %.0f MiB)", self.ctx.claim.job_pk,
                 staged.name, time.monotonic() - started, len(files), sum(files.values()) / 2**20)
        self.on_recorded(staged.metrics)
        if previous and previous != target.uri:
            _delete_checkpoint(objects, S3Location.parse(previous))


def _delete_checkpoint(objects: ObjectStore, prefix: S3Location) -> None:
    """The manifest first: a checkpoint half deleted is never taken for a complete one."""
    objects.delete_prefix(prefix.join(MANIFEST))
    objects.delete_prefix(prefix)


class _StopWatch:
    """should_stop() for the training: a Stop is seen at the next step end (or before the first
    step), not only when the heartbeat thread next looks (every lease_seconds / 5)."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.seen = threading.Event()
        self._last_read = 0.0

    def saw(self, status: str) -> None:
        self._last_read = time.monotonic()
        if status == "Stopping":
            self.seen.set()

    def __call__(self) -> bool:
        if self.seen.is_set() or self.ctx.should_stop():
            return True
        if time.monotonic() - self._last_read >= STOP_POLL_SECONDS:
            with self.ctx.db.read_session() as session:
                self.saw(self.ctx.resource(session).status)
        return self.seen.is_set()


class CustomizationHandler(Handler):
    kind = "customization"

    def run(self, ctx: JobContext) -> None:
        ctx.executor.run_job(ctx, self.train)  # here, or in a Ray Train worker (jobs/executors/ray_cluster.py)

    def train(self, ctx: JobContext) -> None:
        """The job's whole work, from its validation to the published model (resuming from ctx.checkpoint)."""
        from bedrock_local.engine import training

        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            if job.status == "Stopping":
                raise JobStopped()
            body, job_id, account, region = dict(job.body), job.resource_id, job.account, job.region
        config, _ = training.parse_hyperparameters(body["hyperParameters"], body["customizationType"])
        if os.environ.get(CHECKPOINT_STEPS_ENV):
            config = dataclasses.replace(config, checkpoint_steps=int(os.environ[CHECKPOINT_STEPS_ENV]))
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
        try:
            quotas.check_records(ctx.settings, "fine-tuning-records" if body["customizationType"] == "FINE_TUNING"
                                 else "continued-pre-training-records", len(train_records) + len(validation_records),
                                 "The training and validation data")
        except quotas.QuotaExceeded as exc:
            raise CustomizationFailed(str(exc))
        self._set_phase(ctx, "validationDetails", "Completed")
        self._set_phase(ctx, "dataProcessingDetails", "InProgress")
        ctx.check()
        base = local_path(ModelSource.from_json(body["_model"]), ctx.settings, ctx.objects)
        work = ctx.settings.cache_dir / "customization" / job_id
        root = checkpoint_root(ctx.settings.model_bucket, account, region, job_id)
        checkpoints, metrics = self._restore_checkpoint(ctx, work / "checkpoints", root)
        self._set_phase(ctx, "dataProcessingDetails", "Completed")
        self._set_phase(ctx, "trainingDetails", "InProgress")
        stop = _StopWatch(ctx)

        def on_step(step) -> None:
            metrics[:] = [m for m in metrics if m["step_number"] < step.step]
            metrics.append({"step_number": step.step, "epoch_number": step.epoch,
                            "training_loss": step.training_loss, "perplexity": step.perplexity})
            ctx.progress = {"step": step.step, "epoch": step.epoch, "trainingLoss": step.training_loss}
            with ctx.session() as session:
                job = ctx.resource(session)  # InProgress, or Stopping when a Stop came in
                stop.saw(job.status)
                update_body(job, _progress=ctx.progress, trainingMetrics={"trainingLoss": step.training_loss})

        uploads = CheckpointUploads(ctx, root, work / "staging",
                                    on_recorded=lambda rows: self._write_metrics(ctx, body, job_id, rows, []))
        try:
            # No checkpoint on a Stop or a lost lease: Stopped is final, and a new owner resumes from
            # the last checkpoint recorded, which this worker could no longer record anyway.
            result = training.train(base, train_records, validation_records or None, config, work / "model",
                                    checkpoints, on_step=on_step, should_stop=stop,
                                    on_checkpoint=lambda path: uploads.submit(path, metrics), save_on_stop=False)
        except training.DataError as exc:
            raise CustomizationFailed(f"Invalid training data: {exc}")
        finally:
            uploads.close()
        log.info("job %s: %s after %d steps in %.1f s%s; %d checkpoints took %.2f s of it (%d stored, %.2f s "
                 "in the background)", ctx.claim.job_pk, "stopped" if result.stopped else "trained", result.steps,
                 result.run_seconds, f", resumed from {result.resumed_from.name}" if result.resumed_from else "",
                 len(result.checkpoints), result.checkpoint_seconds, uploads.recorded, uploads.upload_seconds)
        self._write_metrics(ctx, body, job_id, metrics, result.validation_metrics)
        ctx.check()
        if result.stopped or stop():
            raise JobStopped()
        self._publish(ctx, work / "model", result)

    # ---- phases ----------------------------------------------------------------------------
    def _set_phase(self, ctx: JobContext, phase: str, status: str) -> None:
        with ctx.session() as session:
            job = ctx.resource(session)
            update_body(job, statusDetails=_phase(job, phase, status))

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
    def _restore_checkpoint(self, ctx: JobContext, folder: Path, root: S3Location) -> tuple[Path, list[dict]]:
        """The local checkpoint folder, holding only the checkpoint recorded on the job (if any,
        and complete in the store), and the step metrics recorded with it. Checkpoints of an
        earlier attempt that were not recorded are removed, locally and from the store."""
        recorded = ctx.checkpoint.get("checkpoint")
        manifest = None
        if recorded:
            prefix = S3Location.parse(recorded)
            try:
                manifest = json.loads(ctx.objects.get_bytes(prefix.join(MANIFEST)))
            except (StorageError, ValueError) as exc:
                log.warning("job %s: the recorded checkpoint %s is not complete (%s); training starts over",
                            ctx.claim.job_pk, recorded, exc)
        keep = S3Location.parse(recorded).key.rstrip("/").rsplit("/", 1)[-1] if manifest else None
        try:
            stale = {loc.key[len(root.key):].split("/", 1)[0] for loc, _ in ctx.objects.list_objects(root)}
            for name in stale - {keep}:
                _delete_checkpoint(ctx.objects, root.join(name + "/"))
        except StorageError:
            pass  # no model bucket yet: nothing stored
        for path in folder.iterdir() if folder.is_dir() else []:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        if manifest is None:
            return folder, []
        target, prefix = folder / keep, S3Location.parse(recorded)
        files = manifest["files"]
        if not all((target / name).is_file() and (target / name).stat().st_size == size for name, size in files.items()):
            shutil.rmtree(target, ignore_errors=True)
            for name in files:
                ctx.objects.download_file(prefix.join(*name.split("/")), target / name)
        log.info("job %s: resuming from %s (step %s)", ctx.claim.job_pk, keep, manifest.get("step"))
        return folder, list(ctx.checkpoint.get("metrics", []))

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
            account, region, body, job_id = job.account, job.region, dict(job.body), job.resource_id
            if job.status == "Stopping":  # a Stop that came in after the last step: no model
                raise JobStopped()
        model_id = output_model_id(job.arn)  # the same in a retry after a crash: no second copy is left behind
        target = model_location(ctx.settings, account, region, model_id)
        files = {}
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            name = "/".join(file.relative_to(folder).parts)
            files[name] = {"size": file.stat().st_size, "sha256": sha256_of(file)}
            store_file(ctx.objects, target.join(*name.split("/")), file)  # the work folder goes next
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
            ended = utcnow().isoformat()
            move(job, "Completed", outputModelArn=model_arn, endTime=ended,
                 trainingMetrics={"trainingLoss": result.training_loss}, validationMetrics=validation_metrics,
                 statusDetails=_phase(job, "trainingDetails", "Completed", at=ended))
        # Only once it is Completed: a crash before this point resumes from the last checkpoint (and
        # publishes to the same model id again); one after it leaves them to `ended`.
        self._discard_work(ctx, account, region, job_id)

    # ---- endings -------------------------------------------------------------------------
    @staticmethod
    def _discard_work(ctx: JobContext, account: str, region: str, job_id: str) -> None:
        """A job that ended leaves no checkpoints behind, locally or in the object store (1.5 GB each
        for a full fine-tune of the packaged SmolLM2): Completed, Failed and Stopped are final."""
        shutil.rmtree(ctx.settings.cache_dir / "customization" / job_id, ignore_errors=True)
        root = checkpoint_root(ctx.settings.model_bucket, account, region, job_id)
        try:
            for name in {loc.key[len(root.key):].split("/", 1)[0] for loc, _ in ctx.objects.list_objects(root)}:
                _delete_checkpoint(ctx.objects, root.join(name + "/"))
        except StorageError as exc:
            log.warning("job %s: its checkpoints under %s were not deleted: %s", job_id, root.uri, exc)

    def ended(self, ctx: JobContext, resource: Resource) -> None:
        """The job ended but its worker was lost before cleaning up: delete what it left."""
        self._discard_work(ctx, resource.account, resource.region, resource.resource_id)

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        self._discard_work(ctx, resource.account, resource.region, resource.resource_id)
        details = {name: dict(info, status="Failed" if info["status"] == "InProgress" else info["status"])
                   for name, info in resource.body["statusDetails"].items()}
        move(resource, "Failed", failureMessage=message[:2048], endTime=utcnow().isoformat(), statusDetails=details)

    def stopped(self, ctx: JobContext, session, resource: Resource) -> None:
        self._discard_work(ctx, resource.account, resource.region, resource.resource_id)
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
