"""Shards of a batch inference job: record ranges (rows of `batch_shards`) that every worker process
may claim, on any host sharing the database, with a lease of their own.

The worker that holds the job (its coordinator, jobs/handlers/batch_inference.py) makes the shards when the job
starts, runs shards itself, and merges their outputs when every one is done; an idle worker
(processes/worker.py `Worker.run_once`, when no job is queued) claims a shard of any running job. A shard
is claimed like a job (queue.py): a conditional UPDATE that one worker wins, a lease renewed by a
heartbeat thread, and a checkpoint (`done` records written to its part object, their counts); a
shard whose worker died is claimable again once its lease ran out and resumes from its checkpoint.
No node is special: a coordinator that dies loses the job's lease, and the worker that claims the job
next carries on with the same shards.

A shard is not claimable while its job is stopping (Job.stop_requested), once the coordinator halted
the job's shards (`halt`: the job ends, by a timeout or a fault), or when its job is not running.
"""

import contextlib
import datetime
import threading
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select, update

from bedrock_local.jobs.lease import SAVED_IN_ATTEMPT, keep_lease
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import BatchShard, Job

MAX_ATTEMPTS = 3  # a shard interrupted this often in a row without a new checkpoint fails its job


@dataclass(frozen=True)
class ShardClaim:
    pk: int
    job_pk: int
    resource_pk: int
    kind: str
    number: int
    first: int
    count: int
    start: dict
    attempts: int
    checkpoint: dict | None


class ShardLeaseLost(Exception):
    """Another worker took the shard over (its lease ran out)."""


def plan(total: int, size: int, starts: list[list[int]]) -> list[dict]:
    """The shards of a job of `total` records, `size` each: their first record, count and start
    (`starts`: [first record, file index, byte offset, lines before] of each shard, found at validation)."""
    by_first = {entry[0]: entry for entry in starts}
    shards = []
    for number, first in enumerate(range(0, total, size)):
        _, file, offset, line = by_first[first]
        shards.append({"number": number, "first": first, "count": min(size, total - first),
                       "start": {"file": file, "offset": offset, "line": line}})
    return shards


def ensure(session, job_pk: int, shards: list[dict]) -> None:
    """Make the job's shard rows unless they exist (a coordinator that took the job over keeps them)."""
    if session.scalar(select(func.count()).select_from(BatchShard).where(BatchShard.job_pk == job_pk)):
        return
    for shard in shards:
        session.add(BatchShard(job_pk=job_pk, state="pending", halt=False, attempts=0, **shard))
    session.flush()


def _claimable(now: datetime.datetime):
    return and_(or_(BatchShard.state == "pending",
                    and_(BatchShard.state == "running", BatchShard.lease_expires_at < now)),
                BatchShard.halt.is_(False), BatchShard.fault.is_(None))


def claim(db: Database, worker_id: str, lease_seconds: float, job_pk: int | None = None) -> ShardClaim | None:
    """Claim the first claimable shard of a running job (of `job_pk` only, when given)."""
    def candidates(session, now):
        query = (select(BatchShard.pk).join(Job, Job.pk == BatchShard.job_pk)
                 .where(_claimable(now), Job.state == "running", Job.stop_requested.is_(False)))
        if job_pk is not None:
            query = query.where(BatchShard.job_pk == job_pk)
        return session.scalars(query.order_by(BatchShard.job_pk, BatchShard.number).limit(8)).all()

    with db.read_session() as session:  # an idle worker's poll takes no write lock (SQLite) when none is there
        if not candidates(session, utcnow()):
            return None
    with db.session() as session, session.begin():
        now = utcnow()
        for pk in candidates(session, now):
            won = session.execute(
                update(BatchShard).where(BatchShard.pk == pk, _claimable(now)).values(
                    state="running", lease_owner=worker_id,
                    lease_expires_at=now + datetime.timedelta(seconds=lease_seconds),
                    attempts=BatchShard.attempts + 1)
                .execution_options(synchronize_session=False))
            if won.rowcount == 1:
                shard = session.get(BatchShard, pk)
                session.refresh(shard)
                job = session.get(Job, shard.job_pk)
                return ShardClaim(shard.pk, shard.job_pk, job.resource_pk, job.kind, shard.number, shard.first,
                                  shard.count, dict(shard.start), shard.attempts, shard.checkpoint)
    return None


def heartbeat(db: Database, shard_pk: int, worker_id: str, lease_seconds: float) -> tuple[bool, bool]:
    """Renew the shard's lease; answers (still ours, its job asks it to stop: Stop, halt, job gone)."""
    with db.session() as session, session.begin():
        renewed = session.execute(update(BatchShard).where(
            BatchShard.pk == shard_pk, BatchShard.lease_owner == worker_id, BatchShard.state == "running")
            .values(lease_expires_at=utcnow() + datetime.timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False))
        row = session.execute(select(BatchShard.halt, Job.stop_requested, Job.state)
                              .join(Job, Job.pk == BatchShard.job_pk).where(BatchShard.pk == shard_pk)).first()
        stop = row is None or bool(row[0]) or bool(row[1]) or row[2] != "running"
        return renewed.rowcount == 1, stop


def _owned(shard_pk: int, worker_id: str):
    return and_(BatchShard.pk == shard_pk, BatchShard.lease_owner == worker_id, BatchShard.state == "running")


def save(db: Database, claim: ShardClaim, worker_id: str, checkpoint: dict, *, state: str | None = None,
         fault: dict | None = None) -> None:
    """Record the shard's checkpoint (and, with `state`, end its run: done, or pending to give it up;
    with `fault`, how it ends its job); ShardLeaseLost when another worker holds it now."""
    values = {"checkpoint": {**checkpoint, SAVED_IN_ATTEMPT: claim.attempts}}
    if state is not None:
        values.update(state=state, lease_owner=None, lease_expires_at=None)
        if state == "done":
            values["done_by"] = worker_id
    if fault is not None:
        values["fault"] = fault
    with db.session() as session, session.begin():
        done = session.execute(update(BatchShard).where(_owned(claim.pk, worker_id)).values(**values)
                               .execution_options(synchronize_session=False))
        if done.rowcount != 1:
            raise ShardLeaseLost()


def halt(session, job_pk: int) -> None:
    """No shard of the job may be claimed again; running ones wind down at their next chunk."""
    session.execute(update(BatchShard).where(BatchShard.job_pk == job_pk).values(halt=True)
                    .execution_options(synchronize_session=False))


def of_job(db: Database, job_pk: int) -> list[BatchShard]:
    with db.read_session() as session:
        return list(session.scalars(select(BatchShard).where(BatchShard.job_pk == job_pk)
                                    .order_by(BatchShard.number)).all())


def busy(shard: BatchShard, now: datetime.datetime | None = None) -> bool:
    """A worker is running the shard now (its lease is live)."""
    now = now or utcnow()
    return shard.state == "running" and shard.lease_expires_at is not None and shard.lease_expires_at >= now


def interrupted(claim: ShardClaim) -> int:
    """Attempts in a row lost (their worker killed or crashed) since the shard's last checkpoint."""
    saved = (claim.checkpoint or {}).get(SAVED_IN_ATTEMPT, 0)
    return claim.attempts - 1 - saved


@dataclass
class ShardContext:
    """What the code that runs a shard gets (the stores, like processes/worker.py JobContext) and its
    stop / lease-lost signals, set by the shard's heartbeat thread."""

    db: Database
    objects: ObjectStore
    settings: Settings
    claim: ShardClaim
    worker_id: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _lost: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def resource_pk(self) -> int:
        return self.claim.resource_pk

    def should_stop(self) -> bool:
        return self._stop.is_set() or self._lost.is_set()

    def lost(self) -> bool:
        return self._lost.is_set()

    def save(self, checkpoint: dict, **kwargs) -> None:
        try:
            save(self.db, self.claim, self.worker_id, checkpoint, **kwargs)
        except ShardLeaseLost:
            self._lost.set()
            raise


@contextlib.contextmanager
def running(db: Database, objects: ObjectStore, settings: Settings, claim: ShardClaim, worker_id: str):
    """A ShardContext whose lease a heartbeat thread renews while the block runs."""
    ctx = ShardContext(db, objects, settings, claim, worker_id)
    thread = threading.Thread(target=keep_lease, name=f"shard-{claim.pk}-heartbeat", daemon=True, args=(
        ctx, settings.lease_seconds, lambda: heartbeat(db, claim.pk, worker_id, settings.lease_seconds),
        "shard heartbeat"))
    thread.start()
    try:
        yield ctx
    finally:
        ctx._done.set()
        thread.join(timeout=5)
