"""The job queue: jobs are rows; a worker claims one with a lease, renews the lease with a
heartbeat, and marks it done. A job whose lease ran out (its worker died) is claimable again.

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
from bedrock_local.store.schema import Job, Resource

log = logging.getLogger("bedrock_local.queue")


# Key the worker adds to a saved checkpoint: the attempt that saved it. The attempts after it that
# were lost before saving another are the job's interruptions in a row (worker.MAX_ATTEMPTS).
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


def claim(db: Database, worker_id: str, lease_seconds: float, kinds: tuple[str, ...] | None = None) -> Claim | None:
    with db.session() as session, session.begin():
        now = utcnow()
        query = select(Job.pk).where(_claimable(now))
        if kinds:
            query = query.where(Job.kind.in_(kinds))
        for pk in session.scalars(query.order_by(Job.pk).limit(8)).all():
            won = session.execute(
                update(Job).where(Job.pk == pk, _claimable(now)).values(
                    state="running", lease_owner=worker_id,
                    lease_expires_at=now + datetime.timedelta(seconds=lease_seconds),
                    attempts=Job.attempts + 1)
                .execution_options(synchronize_session=False))
            if won.rowcount == 1:
                job = session.get(Job, pk)
                session.refresh(job)
                return Claim(job.pk, job.resource_pk, job.kind, job.attempts, job.checkpoint)
    return None


def heartbeat(db: Database, job_pk: int, worker_id: str, lease_seconds: float,
              progress: dict | None = None) -> tuple[bool, bool]:
    """Renew the lease; answers (still ours, stop requested)."""
    with db.session() as session, session.begin():
        values = {"lease_expires_at": utcnow() + datetime.timedelta(seconds=lease_seconds)}
        if progress is not None:
            values["progress"] = progress
        renewed = session.execute(update(Job).where(
            Job.pk == job_pk, Job.lease_owner == worker_id, Job.state == "running").values(**values)
            .execution_options(synchronize_session=False))
        stop = session.scalar(select(Job.stop_requested).where(Job.pk == job_pk))
        return renewed.rowcount == 1, bool(stop)


def still_owned(session: Session, job_pk: int, worker_id: str) -> bool:
    """Whether this worker still holds the job; inside a write transaction it also locks the row,
    so a takeover cannot slip in before the transaction commits."""
    held = session.execute(update(Job).where(Job.pk == job_pk, Job.lease_owner == worker_id, Job.state == "running")
                           .values(lease_owner=worker_id).execution_options(synchronize_session=False))
    return held.rowcount == 1


def save_checkpoint(session: Session, job_pk: int, worker_id: str, checkpoint: dict) -> bool:
    done = session.execute(update(Job).where(Job.pk == job_pk, Job.lease_owner == worker_id).values(
        checkpoint=checkpoint).execution_options(synchronize_session=False))
    return done.rowcount == 1


def finish(session: Session, job_pk: int, worker_id: str) -> bool:
    done = session.execute(update(Job).where(Job.pk == job_pk, Job.lease_owner == worker_id).values(
        state="done", lease_owner=None, lease_expires_at=None).execution_options(synchronize_session=False))
    return done.rowcount == 1


def request_stop(session: Session, resource: Resource) -> None:
    session.execute(update(Job).where(Job.resource_pk == resource.pk).values(stop_requested=True)
                    .execution_options(synchronize_session=False))


def release(session: Session, job_pk: int, worker_id: str) -> None:
    """Give a running job up at once (its worker is shutting down): claimable by another worker
    now rather than when the lease runs out."""
    session.execute(update(Job).where(Job.pk == job_pk, Job.lease_owner == worker_id, Job.state == "running")
                    .values(lease_expires_at=utcnow()).execution_options(synchronize_session=False))


def forget(session: Session, resource: Resource) -> None:
    """Remove the resource's job (its resource is being deleted); a worker holding it loses the lease."""
    session.execute(delete(Job).where(Job.resource_pk == resource.pk))


def job_for(session: Session, resource: Resource) -> Job | None:
    return session.scalars(select(Job).where(Job.resource_pk == resource.pk)).first()


def keep_lease(ctx, lease_seconds: float, renew, what: str) -> None:
    """A heartbeat loop, until `ctx._done` is set: every fifth of the lease, `renew()` answers (still
    ours, stop asked); a stop sets `ctx._stop`, a lease taken over sets `ctx._lost`. A passing database
    error is logged (as `what`) and tried again at the next beat. Jobs (worker.py) and shards of batch
    jobs (shards.py) both beat this way."""
    interval = max(0.2, lease_seconds / 5)
    while not ctx._done.wait(interval):
        try:
            ours, stop = renew()
        except Exception:
            log.warning("%s failed: %s", what, traceback.format_exc(limit=1))
            continue
        if stop:
            ctx._stop.set()
        if not ours:
            ctx._lost.set()


def cancel_queued(session: Session, resource: Resource) -> bool:
    """End the resource's job before any worker took it: True when it was still queued (it is done
    now and no worker will run it), False when a worker holds it or it has ended."""
    done = session.execute(update(Job).where(Job.resource_pk == resource.pk, Job.state == "queued")
                           .values(state="done").execution_options(synchronize_session=False))
    return done.rowcount == 1
