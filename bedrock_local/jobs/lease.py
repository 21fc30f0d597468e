"""Leases on jobs and on the shards of batch jobs: both are rows that a worker claims with a lease,
renews with a heartbeat, checkpoints, and marks done. A row whose lease ran out (its worker died) is
claimable again. One mechanism serves both tables (`_take`, `_renew`, `_held`, `_ENDED`).

Claiming is a conditional UPDATE that only one worker can win, on SQLite (writes serialized by
BEGIN IMMEDIATE) and on PostgreSQL (the row lock re-checks the condition) alike.
"""

import datetime
import logging
import traceback
from dataclasses import dataclass

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from bedrock_local.store.database import Database
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import BatchShard, Job, Resource

log = logging.getLogger("bedrock_local.queue")


# Key the worker adds to a saved checkpoint: the attempt that saved it. The attempts after it that
# were lost before saving another are the job's interruptions in a row (protocol.too_many_interruptions).
SAVED_IN_ATTEMPT = "_savedInAttempt"


@dataclass(frozen=True)
class Claim:
    job_pk: int
    resource_pk: int
    kind: str
    attempts: int
    checkpoint: dict | None


def enqueue(session: Session, resource: Resource, kind: str) -> Job:
    job = Job(resource_pk=resource.pk, kind=kind, state="queued", attempts=0, stop_requested=False,
              created_at=utcnow())
    session.add(job)
    session.flush()
    return job


def _claimable(now: datetime.datetime):
    return or_(Job.state == "queued", and_(Job.state == "running", Job.lease_expires_at < now))


def _take(session: Session, table, pks, claimable, worker_id: str, lease_seconds: float, now: datetime.datetime):
    """The first row of `pks` (of `table`: Job or BatchShard) still `claimable` that this worker wins:
    running under its lease, one attempt more; None when others won them all."""
    for pk in pks:
        won = session.execute(
            update(table).where(table.pk == pk, claimable).values(
                state="running", lease_owner=worker_id,
                lease_expires_at=now + datetime.timedelta(seconds=lease_seconds),
                attempts=table.attempts + 1)
            .execution_options(synchronize_session=False))
        if won.rowcount == 1:
            row = session.get(table, pk)
            session.refresh(row)
            return row
    return None


def _held(table, pk: int, worker_id: str):
    """The row is running under this worker's lease."""
    return and_(table.pk == pk, table.lease_owner == worker_id, table.state == "running")


def _renew(session: Session, table, pk: int, worker_id: str, lease_seconds: float, **values) -> bool:
    """Push the lease of a row this worker holds forward (and set `values`); whether it still holds it."""
    renewed = session.execute(update(table).where(_held(table, pk, worker_id)).values(
        lease_expires_at=utcnow() + datetime.timedelta(seconds=lease_seconds), **values)
        .execution_options(synchronize_session=False))
    return renewed.rowcount == 1


_ENDED = {"lease_owner": None, "lease_expires_at": None}  # with a state: the row's run is over


def claim(db: Database, worker_id: str, lease_seconds: float, kinds: tuple[str, ...] | None = None) -> Claim | None:
    with db.session() as session, session.begin():
        now = utcnow()
        query = select(Job.pk).where(_claimable(now))
        if kinds:
            query = query.where(Job.kind.in_(kinds))
        job = _take(session, Job, session.scalars(query.order_by(Job.pk).limit(8)).all(), _claimable(now),
                    worker_id, lease_seconds, now)
        return None if job is None else Claim(job.pk, job.resource_pk, job.kind, job.attempts, job.checkpoint)


def heartbeat(db: Database, job_pk: int, worker_id: str, lease_seconds: float,
              progress: dict | None = None) -> tuple[bool, bool]:
    """Renew the lease; answers (still ours, stop requested)."""
    with db.session() as session, session.begin():
        renewed = _renew(session, Job, job_pk, worker_id, lease_seconds,
                         **({"progress": progress} if progress is not None else {}))
        stop = session.scalar(select(Job.stop_requested).where(Job.pk == job_pk))
        return renewed, bool(stop)


def still_owned(session: Session, job_pk: int, worker_id: str) -> bool:
    """Whether this worker still holds the job; inside a write transaction it also locks the row,
    so a takeover cannot slip in before the transaction commits."""
    held = session.execute(update(Job).where(_held(Job, job_pk, worker_id))
                           .values(lease_owner=worker_id).execution_options(synchronize_session=False))
    return held.rowcount == 1


def save_checkpoint(session: Session, job_pk: int, worker_id: str, checkpoint: dict) -> bool:
    done = session.execute(update(Job).where(Job.pk == job_pk, Job.lease_owner == worker_id).values(
        checkpoint=checkpoint).execution_options(synchronize_session=False))
    return done.rowcount == 1


def finish(session: Session, job_pk: int, worker_id: str) -> bool:
    done = session.execute(update(Job).where(Job.pk == job_pk, Job.lease_owner == worker_id).values(
        state="done", **_ENDED).execution_options(synchronize_session=False))
    return done.rowcount == 1


def request_stop(session: Session, resource: Resource) -> None:
    session.execute(update(Job).where(Job.resource_pk == resource.pk).values(stop_requested=True)
                    .execution_options(synchronize_session=False))


def release(session: Session, job_pk: int, worker_id: str) -> None:
    """Give a running job up at once (its worker is shutting down): claimable by another worker
    now rather than when the lease runs out."""
    session.execute(update(Job).where(_held(Job, job_pk, worker_id))
                    .values(lease_expires_at=utcnow()).execution_options(synchronize_session=False))


def forget(session: Session, resource: Resource) -> None:
    """Remove the resource's job (its resource is being deleted); a worker holding it loses the lease."""
    session.execute(delete(Job).where(Job.resource_pk == resource.pk))


def job_for(session: Session, resource: Resource) -> Job | None:
    return session.scalars(select(Job).where(Job.resource_pk == resource.pk)).first()


def keep_lease(ctx, lease_seconds: float, renew, what: str) -> None:
    """A heartbeat loop, until the run of `ctx` (a protocol.RunContext) finishes: every fifth of the
    lease, `renew()` answers (still ours, stop asked); a stop calls `ctx.request_stop()`, a lease taken
    over `ctx.mark_lost()`. A passing database error is logged (as `what`) and tried again at the next
    beat. Jobs (processes/worker.py) and shards of batch jobs (jobs/shards.py) both beat this way."""
    interval = max(0.2, lease_seconds / 5)
    while not ctx.finished(interval):
        try:
            ours, stop = renew()
        except Exception:
            log.warning("%s failed: %s", what, traceback.format_exc(limit=1))
            continue
        if stop:
            ctx.request_stop()
        if not ours:
            ctx.mark_lost()


def cancel_queued(session: Session, resource: Resource) -> bool:
    """End the resource's job before any worker took it: True when it was still queued (it is done
    now and no worker will run it), False when a worker holds it or it has ended."""
    done = session.execute(update(Job).where(Job.resource_pk == resource.pk, Job.state == "queued")
                           .values(state="done").execution_options(synchronize_session=False))
    return done.rowcount == 1


# ---- shards of batch jobs (jobs/shards.py plans them) -------------------------------------------

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


def _shard_claimable(now: datetime.datetime):
    return and_(or_(BatchShard.state == "pending",
                    and_(BatchShard.state == "running", BatchShard.lease_expires_at < now)),
                BatchShard.halt.is_(False), BatchShard.fault.is_(None))


def claim_shard(db: Database, worker_id: str, lease_seconds: float, job_pk: int | None = None) -> ShardClaim | None:
    """Claim the first claimable shard of a running job (of `job_pk` only, when given). A shard is not
    claimable while its job is stopping, once its job's shards were halted, or when its job is not running."""
    def candidates(session, now):
        query = (select(BatchShard.pk).join(Job, Job.pk == BatchShard.job_pk)
                 .where(_shard_claimable(now), Job.state == "running", Job.stop_requested.is_(False)))
        if job_pk is not None:
            query = query.where(BatchShard.job_pk == job_pk)
        return session.scalars(query.order_by(BatchShard.job_pk, BatchShard.number).limit(8)).all()

    with db.read_session() as session:  # an idle worker's poll takes no write lock (SQLite) when none is there
        if not candidates(session, utcnow()):
            return None
    with db.session() as session, session.begin():
        now = utcnow()
        shard = _take(session, BatchShard, candidates(session, now), _shard_claimable(now), worker_id,
                      lease_seconds, now)
        if shard is None:
            return None
        job = session.get(Job, shard.job_pk)
        return ShardClaim(shard.pk, shard.job_pk, job.resource_pk, job.kind, shard.number, shard.first,
                          shard.count, dict(shard.start), shard.attempts, shard.checkpoint)


def shard_heartbeat(db: Database, shard_pk: int, worker_id: str, lease_seconds: float) -> tuple[bool, bool]:
    """Renew the shard's lease; answers (still ours, its job asks it to stop: Stop, halt, job gone)."""
    with db.session() as session, session.begin():
        renewed = _renew(session, BatchShard, shard_pk, worker_id, lease_seconds)
        row = session.execute(select(BatchShard.halt, Job.stop_requested, Job.state)
                              .join(Job, Job.pk == BatchShard.job_pk).where(BatchShard.pk == shard_pk)).first()
        stop = row is None or bool(row[0]) or bool(row[1]) or row[2] != "running"
        return renewed, stop


def save_shard(db: Database, claim: ShardClaim, worker_id: str, checkpoint: dict, *, state: str | None = None,
               fault: dict | None = None) -> None:
    """Record the shard's checkpoint (and, with `state`, end its run: done, or pending to give it up;
    with `fault`, how it ends its job); ShardLeaseLost when another worker holds it now."""
    values = {"checkpoint": {**checkpoint, SAVED_IN_ATTEMPT: claim.attempts}}
    if state is not None:
        values.update(state=state, **_ENDED)
        if state == "done":
            values["done_by"] = worker_id
    if fault is not None:
        values["fault"] = fault
    with db.session() as session, session.begin():
        done = session.execute(update(BatchShard).where(_held(BatchShard, claim.pk, worker_id)).values(**values)
                               .execution_options(synchronize_session=False))
        if done.rowcount != 1:
            raise ShardLeaseLost()
