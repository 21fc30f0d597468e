"""The Ray executor (`--ray-address`): the worker that claimed a job stays its driver (lease, heartbeat,
statuses, counts, checkpoints, Stop and crash recovery are the local code's, unchanged) and pushes the
compute to a Ray cluster.

- Batch inference: `RayRecordRunner` has RecordRunner's interface. Each chunk it is given is a window
  of records (checkpoints happen per window), cut into batches that the driver sends to a pool of
  long-lived model actors (Ray actors, one CPU each, or one GPU each when the cluster has GPUs), as
  many as the cluster has alive CPUs (GPUs), each fed a few batches ahead. An actor builds the
  RecordRunner the handler gave once (it loads the model once): the pool lives in the driver, keyed
  by what its actors are built from (model source, invocation type, build function, settings), and
  serves every window of a job and later jobs on the same model until it has been idle a while
  (POOL_IDLE_SECONDS, sooner when the cluster's resources are wanted elsewhere) or the worker ends.
  The driver loads no model, puts the output lines back in input order and writes them exactly as
  the local path does. A model that ends the job at a record (a JobSignal) ends it there: the driver
  keeps the lines before that record and sends none of the later batches. An actor lost (its
  process or its node) mid-window is dropped and replaced from what the cluster has alive, and its
  batches run again on the others; a batch's lines count once (every record exactly once). A Stop or
  a lost lease ends a window between two batches.
- Customization: `run_customization` runs the handler's own work (the same validation, data
  preparation, checkpoints, step metrics and publishing) inside a Ray Train TorchTrainer worker
  (`num_workers=1`, a GPU when the cluster has one), with a JobContext rebuilt there from a picklable
  description (settings, claim, worker id, checkpoint): it writes to the same database under the
  driver's lease. JobStopped, LeaseLost and failures raised there are raised again on the driver. A
  Ray Train worker lost (its process or its node) runs again from the checkpoint recorded on the job;
  a driver lost ends the Ray Train job it owns, and the worker that takes the job back starts another.
"""

import atexit
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid

from bedrock_local.engine.errors import JobSignal
from bedrock_local.jobs.model_sources import weightless_engine
from bedrock_local.jobs.protocol import JobContext, JobStopped, LeaseLost
from bedrock_local.settings import Settings

log = logging.getLogger("bedrock_local.ray")

# Records per window when the environment does not say (BEDROCK_LOCAL_RAY_WINDOW_RECORDS): per-actor
# batches x actors x batches per actor. A window starts no actors (they outlive it), so what a window
# boundary costs is its tail: actors that ended their last batch wait for the slowest one's, at most
# about one batch each, 1/WINDOW_BATCHES_PER_ACTOR of the window (less as batches cost alike). 8 keeps
# that small while a real model's window stays a few batches of work per actor (a checkpoint every
# minute or two on a CPU: little to run again after a driver's crash). A model with no weights
# (engine/stub_models.py) answers in microseconds: there the round trips to the driver are the cost,
# and larger windows hide them.
WINDOW_ENV = "BEDROCK_LOCAL_RAY_WINDOW_RECORDS"
WINDOW_BATCHES_PER_ACTOR = 8
WEIGHTLESS_WINDOW_BATCHES_PER_ACTOR = 32
WINDOW_ATTEMPTS = 4  # runs of one window before the job fails; also actors lost in one window
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

class _ModelActor:
    """One model on one Ray worker, loaded once and kept for as long as its pool lives: runs batches
    of records (`run`) for every window of every job on that model."""

    def __init__(self, build, settings: Settings, source: dict, invocation_type: str, environment: dict):
        from bedrock_local.engine import aliases
        from bedrock_local.jobs.model_sources import ModelSource
        from bedrock_local.storage import open_object_store

        os.environ.update(environment)
        aliases.install(settings.model_aliases)
        objects = open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
        self.runner = build(settings, objects, ModelSource.from_json(source), invocation_type)

    def ready(self) -> int:
        """This actor's process id, once its model is loaded."""
        return os.getpid()

    def run(self, start: int, payload: str, seed: int) -> tuple[int, str, str]:
        """Records `payload` (a JSON list; record `start` + 1 of the job first) as (start, a JSON list of
        [output line, input tokens, output tokens], the JSON of the JobSignal that cut them short or "")."""
        lines, ending = self.runner.run(json.loads(payload), seed, start)
        return (start, json.dumps([list(line) for line in lines], ensure_ascii=False),
                json.dumps(ending.to_json()) if ending is not None else "")


class _Member:
    """An actor of a pool, with the call that answers once its model is loaded."""

    def __init__(self, handle):
        self.handle = handle
        self.id = handle._actor_id.hex()
        self.started = handle.ready.remote()
        self.pid: int | None = None  # set once started answered


class _Pool:
    """The model actors of one model (one key: what they are built from), shared by every window of
    every job of this driver that runs that model. `windows`: windows running on it now; `idle_since`:
    when the last one ended."""

    def __init__(self, key: tuple, args: tuple, gpus: bool, label: str):
        self.key, self.args, self.gpus, self.label = key, args, gpus, label
        self.members: list[_Member] = []
        self.windows = 0
        self.idle_since = time.monotonic()

    def grow(self, size: int) -> None:
        """Start actors until the pool has `size` (their models load while the window runs on the others)."""
        import ray

        global _remote_actor
        _remote_actor = _remote_actor or ray.remote(_ModelActor)
        remote = _remote_actor.options(  # no restarts: a lost actor is replaced by a new one (_dispatch)
            max_restarts=0, max_task_retries=0, **({"num_gpus": 1} if self.gpus else {"num_cpus": 1}))
        while len(self.members) < size:
            self.members.append(_Member(remote.remote(*self.args)))

    def drop(self, member: _Member) -> None:
        import ray

        if member in self.members:
            self.members.remove(member)
        try:
            ray.kill(member.handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone (with its node, or Ray shut down at exit)
            log.debug("model actor %s: %s", member.id[:12], exc)

    def release(self) -> None:
        if self.members:
            log.info("releasing the %d Ray model actor(s) of %s", len(self.members), self.label)
        for member in list(self.members):
            self.drop(member)


# Pools live in the driver (the worker process) across windows and jobs. An idle pool (no window on
# it) holds its actors' CPUs or GPUs: it is released after POOL_IDLE_SECONDS, at once when this driver
# needs the cluster for another model (a pool of another key, a Ray Train job), after
# POOL_YIELD_SECONDS when an actor of another driver waits for resources (several workers driving one
# cluster share it job by job), and when the worker's process ends (Ray also ends a driver's actors
# with it).
POOL_IDLE_SECONDS = 300.0
POOL_YIELD_SECONDS = 5.0
REAP_SECONDS = 1.0
IN_FLIGHT_PER_ACTOR = 2  # batches sent to an actor ahead: it never waits for the driver between two
WAIT_SECONDS = 1.0  # how long a wait for an actor lasts before Stop and a lost lease are looked at again

_remote_actor = None  # _ModelActor as a Ray actor class, made once
_pools: dict[tuple, _Pool] = {}
_pools_lock = threading.Lock()
_reaper: threading.Thread | None = None


def _acquire(key: tuple, args: tuple, gpus: bool, label: str) -> _Pool:
    """The pool of `key` (made if there is none) for one window; idle pools of other keys are released
    first, so that their resources are free for this one."""
    global _reaper
    with _pools_lock:
        for other in [pool for pool in _pools.values() if pool.key != key and pool.windows == 0]:
            other.release()
            del _pools[other.key]
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = _Pool(key, args, gpus, label)
        pool.windows += 1
        if _reaper is None:
            _reaper = threading.Thread(target=_reap, name="ray-pool-reaper", daemon=True)
            _reaper.start()
            atexit.register(release_pools)
        return pool


def _done_with(pool: _Pool) -> None:
    with _pools_lock:
        pool.windows -= 1
        pool.idle_since = time.monotonic()


def release_pools(idle_only: bool = False) -> None:
    """End this driver's model actors (those of idle pools only, with idle_only)."""
    with _pools_lock:
        for pool in list(_pools.values()):
            if not idle_only or pool.windows == 0:
                pool.release()
                del _pools[pool.key]


def _others_waiting(ours: set[str]) -> bool:
    """Whether an actor of the cluster that is not ours waits for resources (another driver's model
    actor, a Ray Train worker)."""
    try:
        from ray._private import state

        return any(actor_id not in ours for actor_id in state.actors(actor_state_name="PENDING_CREATION"))
    except Exception:  # noqa: BLE001 - a Ray without this view: pools are released after POOL_IDLE_SECONDS only
        return False


def _reap() -> None:
    while True:
        time.sleep(REAP_SECONDS)
        try:
            with _pools_lock:
                idle = {key: time.monotonic() - pool.idle_since for key, pool in _pools.items() if pool.windows == 0}
                ours = {member.id for pool in _pools.values() for member in pool.members}
            if not idle:
                continue
            waiting = any(seconds >= POOL_YIELD_SECONDS for seconds in idle.values()) and _others_waiting(ours)
            with _pools_lock:
                for key, seconds in idle.items():
                    pool = _pools.get(key)
                    if pool is not None and pool.windows == 0 and (
                            seconds >= POOL_IDLE_SECONDS or (waiting and seconds >= POOL_YIELD_SECONDS)):
                        pool.release()
                        del _pools[key]
        except Exception:  # never let the reaper die; the next round tries again
            log.exception("releasing idle Ray model actors failed")


class _ActorLost(Exception):
    """A model actor (or its node) was lost mid-window."""


def _lost_actor(exc: BaseException) -> bool:
    import ray.exceptions as errors

    return isinstance(exc, (errors.RayActorError, errors.NodeDiedError, errors.WorkerCrashedError,
                            errors.ObjectLostError, errors.OwnerDiedError))


class RayExecutor:
    """Runs a handler's work on the Ray cluster at the worker's settings.ray_address (the executor
    interface of jobs/executors/local.py)."""

    def record_runner(self, ctx, build, source, invocation_type: str) -> "RayRecordRunner":
        return RayRecordRunner(ctx, build, source, invocation_type)

    def run_job(self, ctx: JobContext, run) -> None:
        run_customization(ctx, run)


class RayRecordRunner:
    """RecordRunner's interface (chunk_size, run) over the pool of model actors of its model; the actors
    run `build(settings, objects, source, invocation_type)`'s runner."""

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
        environment = job_environment()
        self.pool_args = (build, self.settings, source.to_json(), invocation_type, environment)
        self.pool_key = (json.dumps(source.to_json(), sort_keys=True, default=str), invocation_type,
                         f"{build.__module__}.{build.__qualname__}", repr(self.settings),
                         tuple(sorted(environment.items())), self.gpus)
        self.pool_label = f"{source.foundation_model_id or source.reference} ({invocation_type})"

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
        items = [(start + i, json.dumps(records[i:i + self.batch], ensure_ascii=False))
                 for i in range(0, len(records), self.batch)]
        done: dict[int, tuple[str, str]] = {}  # a batch's result, kept when the window runs again
        for attempt in range(1, WINDOW_ATTEMPTS + 1):
            try:
                return self._window(items, seed, done, len(records))
            except (JobStopped, LeaseLost):
                raise
            except Exception as exc:  # actors lost again and again, a model that fails to load: once more
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

    def _check_stop(self) -> None:
        if self.ctx.should_stop() and isinstance(self.ctx, JobContext):  # Stop or a lost lease: end a job's
            self.ctx.check()  # window here (a shard's window runs to its end, its boundary checks Stop)

    def _window(self, items: list[tuple[int, str]], seed: int, done: dict, count: int):
        """Run the window's batches not in `done` on the pool's actors, `IN_FLIGHT_PER_ACTOR` at a time
        each, into `done`; then its lines in input order, up to the first batch a JobSignal cut short."""
        pool = _acquire(self.pool_key, self.pool_args, self.gpus, self.pool_label)
        try:
            self._dispatch(pool, [item for item in items if item[0] not in done], seed, done)
            log.info("job %s: records %d-%d ran on model actors %s", self.ctx.claim.job_pk, items[0][0] + 1,
                     items[0][0] + count, sorted(member.pid for member in pool.members if member.pid))
        finally:
            _done_with(pool)
        lines = []
        for first, _ in items:
            payload, ending = done[first]
            lines.extend(tuple(line) for line in json.loads(payload))
            if ending:
                return lines, JobSignal.from_json(json.loads(ending))
        if len(lines) != count:
            raise RuntimeError(f"the window gave {len(lines)} lines for {count} records")
        return lines, None

    def _dispatch(self, pool: _Pool, queue: list[tuple[int, str]], seed: int, done: dict) -> None:
        import ray

        with _pools_lock:
            pool.grow(min(self._pool(), len(queue)))
        queue = list(queue)
        in_flight: dict = {}  # call -> (member, item)
        lost = 0
        signal_at = None  # the first batch a JobSignal cut short: later batches are not sent
        while queue or in_flight:
            for member in list(pool.members):
                while queue and member.pid is not None and sum(
                        1 for owner, _ in in_flight.values() if owner is member) < IN_FLIGHT_PER_ACTOR:
                    item = queue.pop(0)
                    in_flight[member.handle.run.remote(item[0], item[1], seed)] = (member, item)
            starting = {member.started: member for member in pool.members if member.pid is None}
            waitable = [*in_flight, *starting]
            if not waitable:
                raise _ActorLost("no model actor is left in this driver's pool")
            finished, _ = ray.wait(waitable, num_returns=1, timeout=WAIT_SECONDS)
            for call in finished:
                if call in starting:
                    member = starting[call]
                    try:
                        member.pid = ray.get(call)
                        log.info("model actor %s (pid %d) started for %s", member.id[:12], member.pid, pool.label)
                    except Exception as exc:
                        with _pools_lock:
                            pool.drop(member)
                        if getattr(exc, "actor_init_failed", False) or not _lost_actor(exc):
                            raise  # the model does not load: the window fails (and runs again)
                        log.warning("a model actor of %s was lost while starting (%s)", pool.label,
                                    type(exc).__name__)
                    continue
                member, item = in_flight.pop(call)
                try:
                    first, payload, ending = ray.get(call)
                except Exception as exc:
                    if not _lost_actor(exc):
                        raise
                    lost += 1
                    log.warning("job %s: model actor %s (pid %s) was lost (%s); its batch runs again on another",
                                self.ctx.claim.job_pk, member.id[:12], member.pid, type(exc).__name__)
                    queue.insert(0, item)
                    for other, (owner, other_item) in list(in_flight.items()):  # its other batch, if any
                        if owner is member:
                            in_flight.pop(other)
                            queue.insert(0, other_item)
                    queue.sort(key=lambda entry: entry[0])
                    with _pools_lock:
                        pool.drop(member)
                    if lost > WINDOW_ATTEMPTS:
                        raise _ActorLost(f"{lost} model actors were lost in this window") from exc
                    time.sleep(RETRY_PAUSE_SECONDS)  # a lost node is then no longer counted alive
                    with _pools_lock:
                        pool.grow(min(self._pool(), len(queue) + len(in_flight)))
                    continue
                done[first] = (payload, ending)
                if ending and (signal_at is None or first < signal_at):
                    signal_at = first
                    queue = [entry for entry in queue if entry[0] < first]
            self._check_stop()


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
    release_pools(idle_only=True)  # the trainer's worker needs a CPU (or GPU) that an idle pool may hold
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
