"""The job protocol between a worker and a job's handler: the contexts a handler runs in (a job's or a
shard's: its stores, its claim, its executor, checkpoints, stop and lease-lost signals), the Handler
interface the worker calls, the exceptions that end a run early, and the rule that gives up on a job
(or shard, or deployment) whose worker keeps being lost."""

import abc
import contextlib
import threading
from dataclasses import dataclass, field

from bedrock_local.jobs import lease
from bedrock_local.jobs.executors.local import LocalExecutor
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database
from bedrock_local.store.schema import Resource


MAX_ATTEMPTS = 3  # interruptions in a row without progress (a new checkpoint; for a deployment, being
# served: JobContext.record_progress) before a job (shard, deployment) ends Failed


class LeaseLost(Exception):
    """Another worker took the job over; this one must stop touching it."""


class JobStopped(Exception):
    """The user asked the job to stop."""


def too_many_interruptions(claim, limit: int = MAX_ATTEMPTS) -> int:
    """0 while `claim` (a job's, a shard's or a deployment's: it has `attempts` and `checkpoint`) may
    run; else how many attempts in a row were lost (their worker killed or crashed) since the one that
    saved its last checkpoint or recorded progress (lease.SAVED_IN_ATTEMPT, JobContext.record_progress;
    before its first one when none was), once that reached `limit`. Work that keeps killing its worker
    at one point ends, while work that gets further between interruptions is resumed as often as it
    takes. Jobs, shards and deployments all use this one rule."""
    saved = (claim.checkpoint or {}).get(lease.SAVED_IN_ATTEMPT, 0)
    interrupted = claim.attempts - 1 - saved
    return interrupted if interrupted >= limit else 0


@dataclass(kw_only=True)
class RunContext:
    """What a handler's run gets, for a job or a shard: the stores, the claim, the worker's executor,
    and the signals its heartbeat sets (`request_stop`, `mark_lost`) until the run `finish`es."""

    db: Database
    objects: ObjectStore
    settings: Settings
    claim: "lease.Claim"
    worker_id: str
    executor: object = field(default_factory=LocalExecutor)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lost: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def resource_pk(self) -> int:
        return self.claim.resource_pk

    # ---- the signals (set by the heartbeat, read by the run) -------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def mark_lost(self) -> None:
        self._lost.set()

    def finish(self) -> None:
        """The run is over: the heartbeat ends."""
        self._done.set()

    def finished(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the run to end; whether it has."""
        return self._done.wait(timeout)

    def wait_for_stop(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a stop request; whether one came."""
        return self._stop.wait(timeout)

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def lost(self) -> bool:
        return self._lost.is_set()

    def should_stop(self) -> bool:
        """Stop requested or lease lost: long work should wind down at its next safe point."""
        return self._stop.is_set() or self._lost.is_set()

    def check_lease(self) -> None:
        if self._lost.is_set():
            raise LeaseLost()

    def check(self) -> None:
        """Raise if the lease is lost or a stop was requested (call between units of work)."""
        self.check_lease()
        if self._stop.is_set():
            raise JobStopped()


@dataclass(kw_only=True)
class JobContext(RunContext):
    """A job's run: its checkpoint (where a resumed job starts) and the progress its heartbeat reports."""

    checkpoint: dict = field(default_factory=dict)
    progress: dict | None = None

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Record where a resumed job starts; it also tells the queue that this attempt made progress
        (lease.SAVED_IN_ATTEMPT), so interruptions are counted from here on."""
        with self.session() as session:
            self.record_progress(session, checkpoint)
        self.checkpoint = checkpoint

    def record_progress(self, session, checkpoint: dict | None = None) -> None:
        """In `session` (one of `self.session()`): this attempt made progress, so the attempts lost
        before it no longer count (too_many_interruptions). Work with nothing to resume from, such as a
        deployment that is serving, records progress with its checkpoint unchanged."""
        checkpoint = self.checkpoint if checkpoint is None else checkpoint
        lease.save_checkpoint(session, self.claim.job_pk, self.worker_id,
                              {**checkpoint, lease.SAVED_IN_ATTEMPT: self.claim.attempts})

    @contextlib.contextmanager
    def session(self):
        """A write transaction that holds only while this worker still owns the job: a worker whose
        lease was taken over gets LeaseLost instead of writing over its successor."""
        with self.db.session() as session, session.begin():
            if not lease.still_owned(session, self.claim.job_pk, self.worker_id):
                self.mark_lost()
                raise LeaseLost()
            yield session

    def resource(self, session) -> Resource:
        return session.get(Resource, self.resource_pk)

    def shard(self, claim) -> "ShardContext":
        """The context of a shard of this job (a lease.ShardClaim) that its own worker runs."""
        return ShardContext(db=self.db, objects=self.objects, settings=self.settings, claim=claim,
                            worker_id=self.worker_id, executor=self.executor)


@dataclass(kw_only=True)
class ShardContext(RunContext):
    """A shard's run (jobs/shards.py): `claim` is a shards.ShardClaim; `save` records its checkpoint."""

    def save(self, checkpoint: dict, **end) -> None:
        """The shard's checkpoint (with `end`, how its run ends: lease.save_shard); a lease taken over
        marks the run lost and raises lease.ShardLeaseLost."""
        try:
            lease.save_shard(self.db, self.claim, self.worker_id, checkpoint, **end)
        except lease.ShardLeaseLost:
            self.mark_lost()
            raise


class Handler(abc.ABC):
    """One kind of job. `run` does the work (resuming from ctx.checkpoint); `fail` records why it ended;
    `run_shard` runs one shard of a job of this kind (only batch inference has shards)."""

    kind: str = ""

    @abc.abstractmethod
    def run(self, ctx: JobContext) -> None: ...

    @abc.abstractmethod
    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None: ...

    def stopped(self, ctx: JobContext, session, resource: Resource) -> None:
        self.fail(ctx, session, resource, "The job was stopped.")

    def ended(self, ctx: JobContext, resource: Resource) -> None:
        """A worker took back a job whose resource had already ended (the last worker was lost right
        after ending it): clean up what that worker would have. Nothing by default."""

    def run_shard(self, ctx: ShardContext) -> None:
        raise NotImplementedError(f"jobs of kind {self.kind!r} have no shards")
