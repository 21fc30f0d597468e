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

Ending. Once the trained model is whole in the store (its manifest written), that is recorded on
the job in place of the checkpoint (`published`), then the checkpoints (and the local work folder)
are deleted, and only then is the job Completed: a Completed job never has checkpoint objects,
whatever the moment of a kill, and a job taken back after the record registers the stored model
without training again. Failed and Stopped delete them in the transaction that ends the job. A job
taken back also removes what its lost attempt's cut writes left under its own keys (storage
`sweep_temporary`).

LoRA. A job with loraRank > 0 on a foundation model keeps its adapter: the stored model is the PEFT
adapter folder (adapter_config.json, adapter_model.safetensors, the tokenizer) and the custom model's
body names its base (`_adapterBase`, the foundation model id; jobs/model_sources.py runs it on that
base). On a custom model as base (a model customized again), the LoRA is merged and the model is
whole, as full fine-tunes (loraRank 0) always are. Every customization type follows this.

Distillation. A DISTILLATION job first has its teacher answer the prompts (jobs/handlers/distillation.py:
validation reads and checks the prompts, data processing is the teacher's work), then trains the
student on the answers as a fine-tuning job trains on its data; the model it makes is the student's."""

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
from bedrock_local.engine.catalog import DISTILLATION, FINE_TUNING, find_foundation_model
from bedrock_local.jobs.artifacts import (
    TRAINING_CSV,
    VALIDATION_CSV,
    jsonl_objects,
    model_location,
    read_manifest,
    sha256_of,
    write_manifest,
)
from bedrock_local.jobs.lifecycle import is_final, move, update_body
from bedrock_local.engine.adapters import ADAPTER_CONFIG
from bedrock_local.jobs.model_sources import ADAPTER_BASE_MEMBER, ModelSource, local_path
from bedrock_local.jobs.protocol import Handler, JobContext, JobStopped, LeaseLost
from bedrock_local.storage import ObjectStore, S3Location, StorageError
from bedrock_local.storage.folder import FolderStore, temporary_name
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
    temporary = target.parent / temporary_name()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(bucket_dir) or target.is_dir():
            return False
        os.link(path, temporary)  # EXDEV across filesystems, EPERM where links are not allowed
        os.replace(temporary, target)  # readers see the old object or the new one, as with a copy
        # rename() of two links to one file does nothing and leaves both: the object is already this
        # file (a publish retried from the same local folder), and the temp name must not stay
        temporary.unlink(missing_ok=True)
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
            if self._cancel.is_set() or self.ctx.lost():  # lost: the keys are the new owner's now
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
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            if job.status == "Stopping":
                raise JobStopped()
            body, job_id, account, region = dict(job.body), job.resource_id, job.account, job.region
        if body["customizationType"] == DISTILLATION and not ctx.checkpoint.get("published"):
            self._distil(ctx, body, job_id, account, region)
        ctx.executor.run_job(ctx, self.train)  # here, or in a Ray Train worker (jobs/executors/ray_cluster.py)

    def _distil(self, ctx: JobContext, body: dict, job_id: str, account: str, region: str) -> None:
        """The teacher's answers to the prompts, written as the student's training data (once)."""
        from bedrock_local.jobs.handlers import distillation

        self._check_base(body)
        output = S3Location.parse(body["outputDataConfig"]["s3Uri"])
        if not ctx.objects.bucket_exists(output.bucket):  # before the teacher works, not after it
            raise CustomizationFailed(f"The output bucket '{output.bucket}' of {body['outputDataConfig']['s3Uri']} "
                                      f"does not exist.")
        try:
            distillation.prepare(ctx, body, _output_root(body, job_id),
                                 distillation.work_root(ctx.settings.model_bucket, account, region, job_id),
                                 lambda phase, status: self._set_phase(ctx, phase, status), _StopWatch(ctx))
        except distillation.DistillationFailed as exc:
            raise CustomizationFailed(str(exc))

    @staticmethod
    def _check_base(body: dict) -> None:
        foundation = find_foundation_model(body["_foundationModelId"])
        if foundation is None or body["customizationType"] not in foundation.customizations_supported:
            raise CustomizationFailed(
                f"The base model {body['baseModelArn']} does not support {body['customizationType']}; "
                f"see customizationsSupported in GetFoundationModel.")

    def train(self, ctx: JobContext) -> None:
        """The job's whole work, from its validation to the published model (resuming from ctx.checkpoint)."""
        from bedrock_local.engine import training

        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            if job.status == "Stopping":
                raise JobStopped()
            body, job_id, account, region = dict(job.body), job.resource_id, job.account, job.region
        work = ctx.settings.cache_dir / "customization" / job_id
        root = checkpoint_root(ctx.settings.model_bucket, account, region, job_id)
        self._sweep(ctx, root, model_location(ctx.settings, account, region, output_model_id(job.arn)),
                    _output_root(body, job_id))
        if ctx.checkpoint.get("published"):
            self._register_published(ctx, root, work)
            return
        # a distillation trains the student as a fine-tuning does, on the teacher's answers (run() made
        # them; its validation and data processing phases were the prompts' and the teacher's)
        distilled = body["customizationType"] == DISTILLATION
        data_type = FINE_TUNING if distilled else body["customizationType"]
        config, _ = training.parse_hyperparameters(body["hyperParameters"], data_type)
        if os.environ.get(CHECKPOINT_STEPS_ENV):
            config = dataclasses.replace(config, checkpoint_steps=int(os.environ[CHECKPOINT_STEPS_ENV]))
        if not distilled:
            self._set_phase(ctx, "validationDetails", "InProgress")
        self._check_base(body)
        output = S3Location.parse(body["outputDataConfig"]["s3Uri"])
        if not ctx.objects.bucket_exists(output.bucket):  # before training, not after it
            raise CustomizationFailed(f"The output bucket '{output.bucket}' of {body['outputDataConfig']['s3Uri']} "
                                      f"does not exist.")
        if distilled:
            from bedrock_local.jobs.handlers.distillation import synthetic_data

            train_uri = synthetic_data(_output_root(body, job_id)).uri
        else:
            train_uri = body["trainingDataConfig"]["s3Uri"]
        train_records = self._read(ctx, train_uri, data_type, training)
        validation_records = []
        for validator in body.get("validationDataConfig", {}).get("validators", []):
            validation_records += self._read(ctx, validator["s3Uri"], data_type, training)
        try:
            quotas.check_records(ctx.settings, "fine-tuning-records" if data_type == FINE_TUNING
                                 else "continued-pre-training-records", len(train_records) + len(validation_records),
                                 "The training and validation data")
        except quotas.QuotaExceeded as exc:
            raise CustomizationFailed(str(exc))
        if not distilled:
            self._set_phase(ctx, "validationDetails", "Completed")
            self._set_phase(ctx, "dataProcessingDetails", "InProgress")
        ctx.check()
        base_source = ModelSource.from_json(body["_model"])
        base = local_path(base_source, ctx.settings, ctx.objects)
        # a LoRA on a foundation model stays an adapter of it; on a custom model it is merged (an adapter
        # is always of a foundation model, which every region and host has)
        adapter_base = base_source.foundation_model_id if config.lora_rank > 0 else None
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
                                    on_checkpoint=lambda path: uploads.submit(path, metrics), save_on_stop=False,
                                    adapter_base=adapter_base)
        except training.DataError as exc:
            raise CustomizationFailed(f"Invalid training data: {exc}")
        finally:
            uploads.close()
            self._clean_up_if_taken_over(ctx)
        log.info("job %s: %s after %d steps in %.1f s%s; %d checkpoints took %.2f s of it (%d stored, %.2f s "
                 "in the background)", ctx.claim.job_pk, "stopped" if result.stopped else "trained", result.steps,
                 result.run_seconds, f", resumed from {result.resumed_from.name}" if result.resumed_from else "",
                 len(result.checkpoints), result.checkpoint_seconds, uploads.recorded, uploads.upload_seconds)
        ctx.check_lease()  # the metrics files are the new owner's to write now
        self._write_metrics(ctx, body, job_id, metrics, result.validation_metrics)
        ctx.check()
        if result.stopped or stop():
            raise JobStopped()
        self._publish(ctx, work, root, result)

    # ---- phases ----------------------------------------------------------------------------
    def _set_phase(self, ctx: JobContext, phase: str, status: str) -> None:
        with ctx.session() as session:
            job = ctx.resource(session)
            update_body(job, statusDetails=_phase(job, phase, status))

    def _read(self, ctx: JobContext, uri: str, customization_type: str, training) -> list[dict]:
        try:
            files = jsonl_objects(ctx.objects, S3Location.parse(uri))
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
        root = _output_root(body, job_id)
        ctx.objects.put_bytes(root.join(*TRAINING_CSV.split("/")),
                              _csv(["step_number", "epoch_number", "training_loss", "perplexity"], metrics))
        if validation:
            rows = [{"step_number": v["step"], "epoch_number": v["epoch"], "validation_loss": v["validation_loss"],
                     "perplexity": v["perplexity"]} for v in validation]
            ctx.objects.put_bytes(root.join(*VALIDATION_CSV.split("/")),
                                  _csv(["step_number", "epoch_number", "validation_loss", "perplexity"], rows))

    def _publish(self, ctx: JobContext, work: Path, root: S3Location, result) -> None:
        """Store the trained model (from `work`/model) and record it on the job, delete the checkpoints
        (under `root`), then make it a custom model, Active, and end the job Completed."""
        folder = work / "model"
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            account, region = job.account, job.region
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
        # The model is whole in the store: from here a retry registers it rather than training again, so
        # the checkpoints can go, and they go before Completed is written, not after it: deleted after
        # it, they would be seen on a Completed job until the delete ran, and after a kill in between
        # until another worker took the job back to clean up.
        ctx.save_checkpoint({"published": target.uri, "trainingLoss": result.training_loss,
                             "validationLoss": result.validation_loss})
        self._discard_checkpoints(ctx, root, work)
        shutil.rmtree(work, ignore_errors=True)  # the stored model is what a retry registers
        self._register(ctx, target, result.training_loss, result.validation_loss, adapter=ADAPTER_CONFIG in files)

    def _register_published(self, ctx: JobContext, root: S3Location, work: Path) -> None:
        """An earlier attempt stored the model and recorded it, then was lost: register that model."""
        target = S3Location.parse(ctx.checkpoint["published"])
        try:
            files = read_manifest(ctx.objects, target)
        except (StorageError, ValueError, KeyError) as exc:
            raise CustomizationFailed(f"The trained model stored at {target.uri} by an earlier attempt of this "
                                      f"job is no longer whole ({exc}).")
        log.info("job %s: registering the model stored by an earlier attempt at %s", ctx.claim.job_pk, target.uri)
        self._discard_checkpoints(ctx, root, work)  # a kill while they were being deleted left some
        shutil.rmtree(work, ignore_errors=True)
        self._register(ctx, target, ctx.checkpoint.get("trainingLoss"), ctx.checkpoint.get("validationLoss"),
                       adapter=ADAPTER_CONFIG in files)

    def _register(self, ctx: JobContext, target: S3Location, training_loss, validation_loss, *, adapter: bool) -> None:
        """The stored model at `target` becomes a custom model, Active, and the job Completed, in one
        transaction (or no model, on a Stop or a name taken meanwhile). `adapter`: the stored model is a
        LoRA adapter of the job's base foundation model."""
        validation_metrics = [{"validationLoss": validation_loss}] if validation_loss is not None else []
        with ctx.session() as session:
            job = ctx.resource(session)
            account, region, body = job.account, job.region, dict(job.body)
            model_id = output_model_id(job.arn)
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
                       "customizationConfig": body.get("customizationConfig"),
                       "validationDataConfig": body["validationDataConfig"],
                       "outputDataConfig": body["outputDataConfig"],
                       "trainingMetrics": {"trainingLoss": training_loss}, "validationMetrics": validation_metrics,
                       "ownerAccountId": account, "modelKmsKeyArn": body.get("outputModelKmsKeyArn"),
                       "_artifacts": target.uri,
                       ADAPTER_BASE_MEMBER: ModelSource.from_json(body["_model"]).foundation_model_id if adapter else None}
            resources.insert(session, kind=MODEL_KIND, account=account, region=region, resource_id=model_id,
                             arn=model_arn, name=body["outputModelName"], unique_name=body["outputModelName"],
                             status="Active", ref_arn=body["baseModelArn"], origin_arn=body["_foundationModelArn"],
                             body={k: v for k, v in lineage.items() if v is not None}, tags=body["_customModelTags"])
            ended = utcnow().isoformat()
            move(job, "Completed", outputModelArn=model_arn, endTime=ended,
                 trainingMetrics={"trainingLoss": training_loss}, validationMetrics=validation_metrics,
                 statusDetails=_phase(job, "trainingDetails", "Completed", at=ended))

    # ---- endings -------------------------------------------------------------------------
    def _clean_up_if_taken_over(self, ctx: JobContext) -> None:
        """Once this worker's uploads have ended (their thread joined). A worker that lost the job (its
        lease ran out while it was stalled) learns it at its next heartbeat or write; a checkpoint it
        put in between may land after the new owner ended the job and deleted the checkpoints. So:
        if the job is no longer ours and has ended, delete them again. If it has not ended, its owner
        deletes them when it ends, which is after these puts."""
        try:
            with ctx.session():
                return  # still ours
        except LeaseLost:
            pass
        except Exception as exc:  # noqa: BLE001 - a passing database error must not hide the run's own end
            log.warning("job %s: could not check who holds it now: %s", ctx.claim.job_pk, exc)
            return
        with ctx.db.read_session() as session:
            resource = ctx.resource(session)
        if resource is not None and is_final(resource):
            log.info("job %s: ended by its new owner while this worker still stored checkpoints; deleting them",
                     ctx.claim.job_pk)
            self._discard_work(ctx, resource)

    @staticmethod
    def _sweep(ctx: JobContext, *prefixes: S3Location) -> None:
        """What the lost attempts' cut writes left under the job's own keys (its checkpoints, its
        model): folder store temp files of gone writers, incomplete multipart uploads."""
        for prefix in prefixes:
            try:
                ctx.objects.sweep_temporary(prefix)
            except StorageError as exc:  # no model bucket yet: nothing written; or a passing error
                log.info("job %s: no sweep of %s: %s", ctx.claim.job_pk, prefix.uri, exc)

    @staticmethod
    def _discard_checkpoints(ctx: JobContext, root: S3Location, work: Path) -> None:
        """Delete every checkpoint of the job, in the object store (under `root`: 1.5 GB each for a
        full fine-tune of the packaged SmolLM2) and in its local work folder."""
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        shutil.rmtree(work / "staging", ignore_errors=True)
        CustomizationHandler._sweep(ctx, root)
        try:
            for name in {loc.key[len(root.key):].split("/", 1)[0] for loc, _ in ctx.objects.list_objects(root)}:
                _delete_checkpoint(ctx.objects, root.join(name + "/"))
        except StorageError as exc:
            log.warning("job %s: its checkpoints under %s were not deleted: %s", ctx.claim.job_pk, root.uri, exc)

    def _discard_work(self, ctx: JobContext, resource: Resource) -> None:
        """A job that ended leaves nothing behind, locally or in the object store: no checkpoint, no
        local work folder, and unless it is Completed, no model files of an interrupted publish."""
        account, region, job_id = resource.account, resource.region, resource.resource_id
        work = ctx.settings.cache_dir / "customization" / job_id
        self._discard_checkpoints(ctx, checkpoint_root(ctx.settings.model_bucket, account, region, job_id), work)
        shutil.rmtree(work, ignore_errors=True)
        if resource.body.get("customizationType") == DISTILLATION:  # the teacher's prompts and answered parts
            from bedrock_local.jobs.handlers.distillation import discard, work_root

            discard(ctx, work_root(ctx.settings.model_bucket, account, region, job_id))
        if resource.status != "Completed":  # the model is registered in the same transaction as Completed
            target = model_location(ctx.settings, account, region, output_model_id(resource.arn))
            self._sweep(ctx, target)
            try:
                ctx.objects.delete_prefix(target)
            except StorageError as exc:
                log.warning("job %s: the model files under %s were not deleted: %s", job_id, target.uri, exc)

    def ended(self, ctx: JobContext, resource: Resource) -> None:
        """The job ended but its worker was lost before cleaning up: delete what it left."""
        self._discard_work(ctx, resource)

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


def _output_root(body: dict, job_id: str) -> S3Location:
    """The job's folder under its output URI, as AWS names it."""
    out = S3Location.parse(body["outputDataConfig"]["s3Uri"])
    return (out if out.is_prefix else S3Location(out.bucket, out.key + "/")).join(f"model-customization-job-{job_id}/")


def _csv(columns: list[str], rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
