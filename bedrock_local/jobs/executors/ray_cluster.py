"""The Ray executor (`--ray-address`): the worker that claimed a job stays its driver (lease, heartbeat,
statuses, counts, checkpoints, Stop and crash recovery are the local code's, unchanged) and pushes the
compute to a Ray cluster.

- Batch inference: `RayRecordRunner` has RecordRunner's interface. Each chunk it is given is a window
  of records (checkpoints happen per window) that runs as a Ray Data pipeline: the window's batches,
  `map_batches` over a pool of model actors sized to the cluster's alive CPUs (or GPUs, one each), the
  output lines back to the driver in input order, which writes them exactly as the local path does. An
  actor builds the RecordRunner the handler gave (it loads the model once per window); the driver loads
  no model. A model that ends the job at a record (a JobSignal) ends it there: the driver keeps the
  lines before that record and drops the window's later ones. A Ray node lost mid-window
  fails the window's pipeline; the window then runs again on what is left of the cluster (its lines
  are only handed back once all of them are there: every record exactly once). A Stop or a lost lease
  ends a window between two batches.
- Customization: `run_customization` runs the handler's own work (the same validation, data
  preparation, checkpoints, step metrics and publishing) inside a Ray Train TorchTrainer worker
  (`num_workers=1`, a GPU when the cluster has one), with a JobContext rebuilt there from a picklable
  description (settings, claim, worker id, checkpoint): it writes to the same database under the
  driver's lease. JobStopped, LeaseLost and failures raised there are raised again on the driver. A
  Ray Train worker lost (its process or its node) runs again from the checkpoint recorded on the job;
  a driver lost ends the Ray Train job it owns, and the worker that takes the job back starts another.
"""

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings

from bedrock_local.engine.errors import JobSignal
from bedrock_local.jobs.model_sources import weightless_engine
from bedrock_local.jobs.protocol import JobContext, JobStopped, LeaseLost
from bedrock_local.settings import Settings

log = logging.getLogger("bedrock_local.ray")

# Records per window (one Ray Data pipeline each) when the environment does not say
# (BEDROCK_LOCAL_RAY_WINDOW_RECORDS): per-actor batches x actors x batches per actor. Each window
# starts its actors anew (seconds, plus the model's load): a real model's window is minutes of work;
# a model with no weights (engine/stub_models.py) answers in microseconds, so its windows are larger.
WINDOW_ENV = "BEDROCK_LOCAL_RAY_WINDOW_RECORDS"
WINDOW_BATCHES_PER_ACTOR = 16
WEIGHTLESS_WINDOW_BATCHES_PER_ACTOR = 128
WINDOW_ATTEMPTS = 4  # runs of one window before the job fails (a node lost each time)
RETRY_PAUSE_SECONDS = 2.0
TRAIN_ATTEMPTS = 3  # Ray Train runs of one customization job before it fails (its worker's node lost each time)

_connect_lock = threading.Lock()


def connect(settings: Settings) -> None:
    """Join the cluster at settings.ray_address, once per process."""
    import ray

    with _connect_lock:
        if ray.is_initialized():
            return
        _check_reachable(settings.ray_address)
        # log_to_driver: what the actors and the Ray Train worker log shows in this worker's log
        ray.init(address=settings.ray_address, logging_level=logging.WARNING, log_to_driver=True,
                 configure_logging=False)
        from ray.data import DataContext

        data = DataContext.get_current()
        data.enable_progress_bars = False
        data.execution_options.preserve_order = True
        log.info("joined the Ray cluster at %s: %s", settings.ray_address, alive_resources())


def _check_reachable(address: str) -> None:
    """Fail at once, with a message a user can act on, when nothing listens at a host:port address
    (ray.init would wait minutes for it)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", ray://...: left to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise RuntimeError(f"The Ray cluster at {address} (--ray-address) cannot be reached: {exc}.") from None


def alive_resources() -> dict:
    """CPUs and GPUs of the cluster's alive nodes (ray.cluster_resources() may still count a node just lost)."""
    import ray

    found = {"CPU": 0.0, "GPU": 0.0}
    for node in ray.nodes():
        if node.get("Alive"):
            for name in found:
                found[name] += node.get("Resources", {}).get(name, 0.0)
    return found


def portable(settings: Settings) -> Settings:
    """The settings for a process of the cluster: absolute paths (a Ray worker has its own working
    directory) and no ray_address (the work is run there, not sent on again)."""
    return dataclasses.replace(settings, data_dir=settings.data_dir.resolve(), cache_root=settings.cache_dir.resolve(),
                               model_aliases=settings.model_aliases and settings.model_aliases.resolve(),
                               ray_address=None)


def job_environment() -> dict:
    """The driver's settings that live in its environment (BEDROCK_LOCAL_*, e.g. a fixed checkpoint
    spacing; offline switches of the Hugging Face libraries), for the Ray processes that run the job's
    work (model actors, the Ray Train worker): they have the environment of their `ray start`."""
    return {name: value for name, value in os.environ.items()
            if name.startswith("BEDROCK_LOCAL_") or name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}


# ---- batch inference ---------------------------------------------------------------------------

def _no_restarts() -> dict:
    """Ray options of the model actors: no restarts, no task retries. An actor lost with its node fails
    the window, which then runs again (RayRecordRunner.run) on the nodes left, instead of waiting for
    the resources of the lost node to come back."""
    return {"max_restarts": 0, "max_task_retries": 0}


class _ModelActor:
    """One model on one Ray worker: turns rows {start, payload: JSON list of records} into rows
    {start, lines: JSON list of [output line, input tokens, output tokens], ending: the JSON of the
    JobSignal that cut the batch short, or ""}."""

    def __init__(self, build, settings: Settings, source: dict, invocation_type: str, environment: dict):
        from bedrock_local.engine import aliases
        from bedrock_local.jobs.model_sources import ModelSource
        from bedrock_local.storage import open_object_store

        os.environ.update(environment)
        aliases.install(settings.model_aliases)
        objects = open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
        self.runner = build(settings, objects, ModelSource.from_json(source), invocation_type)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out, endings = [], []
        for start, payload, seed in zip(batch["start"], batch["payload"], batch["seed"]):
            lines, ending = self.runner.run(json.loads(payload), int(seed), int(start))
            out.append(json.dumps([list(line) for line in lines], ensure_ascii=False))
            endings.append(json.dumps(ending.to_json()) if ending is not None else "")
        return {"start": np.asarray(batch["start"]), "lines": np.array(out, dtype=object),
                "ending": np.array(endings, dtype=object)}


class RayExecutor:
    """Runs a handler's work on the Ray cluster at the worker's settings.ray_address (the executor
    interface of jobs/executors/local.py)."""

    def record_runner(self, ctx, build, source, invocation_type: str) -> "RayRecordRunner":
        return RayRecordRunner(ctx, build, source, invocation_type)

    def run_job(self, ctx: JobContext, run) -> None:
        run_customization(ctx, run)


class RayRecordRunner:
    """RecordRunner's interface (chunk_size, run) over a Ray Data pipeline per window; the actors run
    `build(settings, objects, source, invocation_type)`'s runner."""

    def __init__(self, ctx, build, source, invocation_type: str):
        connect(ctx.settings)
        self.ctx, self.build, self.source, self.invocation_type = ctx, build, source, invocation_type
        self.settings = portable(ctx.settings)
        # a model with no weights is built here at once and says its chunk; a real one never loads here
        engine = weightless_engine(source)
        self.weightless = engine is not None
        resources = alive_resources()
        self.gpus = resources["GPU"] >= 1
        self.batch = getattr(engine, "records_per_chunk", None) or (512 if self.gpus else 64)

    def _pool(self) -> int:
        resources = alive_resources()
        return max(1, int(resources["GPU"] if self.gpus else resources["CPU"]))

    def chunk_size(self) -> int:
        if os.environ.get(WINDOW_ENV):
            return max(1, int(os.environ[WINDOW_ENV]))
        per_actor = WEIGHTLESS_WINDOW_BATCHES_PER_ACTOR if self.weightless else WINDOW_BATCHES_PER_ACTOR
        return self.batch * self._pool() * per_actor

    def run(self, records: list[dict], seed: int, start: int = 0) -> tuple[list[tuple[dict, int, int]], JobSignal | None]:
        if not records:
            return [], None
        items = [{"start": start + i, "payload": json.dumps(records[i:i + self.batch], ensure_ascii=False),
                  "seed": seed} for i in range(0, len(records), self.batch)]
        for attempt in range(1, WINDOW_ATTEMPTS + 1):
            try:
                return self._window(items, len(records))
            except (JobStopped, LeaseLost):
                raise
            except Exception as exc:  # a node or an actor lost: the whole window runs again
                if attempt == WINDOW_ATTEMPTS:
                    raise RuntimeError(f"The Ray cluster at {self.ctx.settings.ray_address} failed this job's "
                                       f"records {start + 1}-{start + len(records)} {attempt} times; the last "
                                       f"error: {str(exc)[:500]}") from exc
                log.warning("job %s: the window of records %d-%d failed on Ray (%s: %s); running it again",
                            self.ctx.claim.job_pk, start + 1, start + len(records), type(exc).__name__,
                            str(exc)[:300])
                if isinstance(self.ctx, JobContext):  # a job's Stop or lost lease (a shard's ends at its boundary)
                    self.ctx.check()
                time.sleep(RETRY_PAUSE_SECONDS)
        raise AssertionError("unreachable")

    def _window(self, items: list[dict], count: int) -> tuple[list[tuple[dict, int, int]], JobSignal | None]:
        import ray

        pool = min(self._pool(), len(items))
        with warnings.catch_warnings():  # Ray 2.60 deprecates ray_remote_args_fn (for 2.64) with no other
            warnings.simplefilter("ignore", DeprecationWarning)  # way to set an actor pool's max_restarts
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _ModelActor, fn_constructor_args=(self.build, self.settings, self.source.to_json(),
                                                 self.invocation_type, job_environment()),
                batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool, initial_size=pool),
                **({"num_gpus": 1} if self.gpus else {"num_cpus": 1}), ray_remote_args_fn=_no_restarts)
        rows = []
        for row in dataset.iter_rows():
            rows.append((int(row["start"]), row["lines"], row["ending"]))
            if self.ctx.should_stop() and isinstance(self.ctx, JobContext):  # Stop or a lost lease: end a job's
                self.ctx.check()  # window here (a shard's window runs to its end, its boundary checks Stop)
        rows.sort(key=lambda row: row[0])
        lines = []
        for _, payload, ending in rows:  # in input order, up to the first batch a JobSignal cut short
            lines.extend(tuple(line) for line in json.loads(payload))
            if ending:
                return lines, JobSignal.from_json(json.loads(ending))
        if len(lines) != count:
            raise RuntimeError(f"the window gave {len(lines)} lines for {count} records")
        return lines, None


# ---- customization -----------------------------------------------------------------------------

def _train_loop(description: dict) -> None:
    """The Ray Train worker: the job's work (`run`) on a JobContext of its own, under the driver's
    lease, from the checkpoint recorded on the job now (a run again after a lost node starts there)."""
    from bedrock_local.engine import aliases
    from bedrock_local.jobs import lease
    from bedrock_local.storage import open_object_store
    from bedrock_local.store.database import open_database
    from bedrock_local.store.schema import Job

    settings, claim = description["settings"], description["claim"]
    os.environ.update(description["environment"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    aliases.install(settings.model_aliases)
    db = open_database(settings.resolved_database_url, migrate=False)
    with db.read_session() as session:
        job = session.get(Job, claim.job_pk)
        checkpoint = dict(job.checkpoint or {}) if job is not None else dict(description["checkpoint"])
    checkpoint.pop(lease.SAVED_IN_ATTEMPT, None)
    ctx = JobContext(db=db, objects=open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options),
                     settings=settings, claim=claim, worker_id=description["worker_id"], checkpoint=checkpoint)
    description["run"](ctx)


def _original(exc: BaseException) -> BaseException:
    """The exception the train loop raised, out of Ray's wrappers."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        exc = next(iter(failures.values()))
    for _ in range(5):
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None or inner is exc:
            break
        exc = inner
    return exc


def _lost_to_ray(exc: BaseException) -> bool:
    """The Ray Train worker or its node was lost (not an error of the job's own code)."""
    import ray.exceptions as errors
    from ray.train.v2._internal import exceptions as train_errors

    return isinstance(exc, (errors.RayActorError, errors.NodeDiedError, errors.WorkerCrashedError,
                            errors.ObjectLostError, errors.RaySystemError,
                            train_errors.WorkerHealthCheckFailedError, train_errors.WorkerHealthCheckTimeoutError,
                            train_errors.WorkerGroupStartupFailedError))


def run_customization(ctx: JobContext, run) -> None:
    """Run the customization job of `ctx` (its work: `run(ctx)`, picklable) as a Ray Train job; returns
    when it ended as the local path would. A Ray Train worker lost with its node is started again (TRAIN_ATTEMPTS in all) from the
    checkpoint recorded on the job, as a worker taken back after a crash would."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(ctx.settings)
    settings = portable(ctx.settings)
    storage = settings.cache_dir / "ray-train"
    storage.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, TRAIN_ATTEMPTS + 1):
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"settings": settings, "claim": ctx.claim, "worker_id": ctx.worker_id, "run": run,
                               "checkpoint": dict(ctx.checkpoint), "environment": job_environment()},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=alive_resources()["GPU"] >= 1),
            run_config=RunConfig(name=f"customization-{ctx.claim.job_pk}-{ctx.claim.attempts}-{uuid.uuid4().hex[:6]}",
                                 storage_path=str(storage), failure_config=FailureConfig(max_failures=0)))
        log.info("job %s: training as a Ray Train job on %s", ctx.claim.job_pk, ctx.settings.ray_address)
        try:
            trainer.fit()
            return
        except Exception as exc:
            original = _original(exc)
            if isinstance(original, (JobStopped, LeaseLost)):
                raise original.__class__() from None
            if _lost_to_ray(original) and attempt < TRAIN_ATTEMPTS:
                log.warning("job %s: the Ray Train worker was lost (%s: %s); training again from the job's "
                            "last checkpoint", ctx.claim.job_pk, type(original).__name__, str(original)[:300])
                ctx.check()
                time.sleep(RETRY_PAUSE_SECONDS)
                continue
            log.error("job %s: the Ray Train job failed: %s", ctx.claim.job_pk, exc)
            if original is not exc and isinstance(original, Exception) and str(original):
                raise RuntimeError(str(original)) from None
            raise RuntimeError(f"The Ray Train job failed: {str(exc)[:1500]}") from None
