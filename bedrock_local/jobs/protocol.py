"""The job protocol between a worker and a job's handler: the context a handler runs in (its stores,
its claim, checkpoints, stop and lease-lost signals), the Handler interface the worker calls, and
the exceptions that end a run early."""

import abc
import contextlib
import threading
from dataclasses import dataclass, field

from bedrock_local.jobs import lease
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database
from bedrock_local.store.schema import Resource


MAX_ATTEMPTS = 3  # interruptions in a row without a new checkpoint before a job ends Failed


class LeaseLost(Exception):
    """Another worker took the job over; this one must stop touching it."""


class JobStopped(Exception):
    """The user asked the job to stop."""


@dataclass
class JobContext:
    """What a handler gets: the stores, its job's identity, checkpoints and stop/lease signals."""

    db: Database
    objects: ObjectStore
    settings: Settings
    claim: lease.Claim
    worker_id: str
    checkpoint: dict = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lost: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    progress: dict | None = None

    @property
    def resource_pk(self) -> int:
        return self.claim.resource_pk

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def should_stop(self) -> bool:
        """Stop requested or lease lost: long work should wind down at its next safe point."""
        return self._stop.is_set() or self._lost.is_set()

    def check_lease(self) -> None:
        if self._lost.is_set():
            raise LeaseLost()

    def check(self) -> None:
        """Raise if the lease is lost or a stop was requested (call between units of work)."""
        if self._lost.is_set():
            raise LeaseLost()
        if self._stop.is_set():
            raise JobStopped()

    def save_checkpoint(self, checkpoint: dict) -> None:
        """Record where a resumed job starts; it also tells the queue that this attempt made progress
        (lease.SAVED_IN_ATTEMPT), so interruptions are counted from here on."""
        with self.session() as session:
            lease.save_checkpoint(session, self.claim.job_pk, self.worker_id,
                                  {**checkpoint, lease.SAVED_IN_ATTEMPT: self.claim.attempts})
        self.checkpoint = checkpoint

    @contextlib.contextmanager
    def session(self):
        """A write transaction that holds only while this worker still owns the job: a worker whose
        lease was taken over gets LeaseLost instead of writing over its successor."""
        with self.db.session() as session, session.begin():
            if not lease.still_owned(session, self.claim.job_pk, self.worker_id):
                self._lost.set()
                raise LeaseLost()
            yield session

    def resource(self, session) -> Resource:
        return session.get(Resource, self.resource_pk)


class Handler(abc.ABC):
    """One kind of job. `run` does the work (resuming from ctx.checkpoint); `fail` records why it ended."""

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
