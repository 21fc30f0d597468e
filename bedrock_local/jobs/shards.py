"""Shards of a batch inference job: record ranges (rows of `batch_shards`) that every worker process
may claim, on any host sharing the database, with a lease of their own.

The worker that holds the job (its coordinator, jobs/handlers/batch_inference.py) makes the shards when the job
starts, runs shards itself, and merges their outputs when every one is done; an idle worker
(processes/worker.py `Worker.run_once`, when no job is queued) claims a shard of any running job. A shard
is claimed like a job (jobs/lease.py: claim_shard, shard_heartbeat, save_shard): a conditional UPDATE
that one worker wins, a lease renewed by a heartbeat thread, and a checkpoint (`done` records written to
its part object, their counts); a shard whose worker died is claimable again once its lease ran out and
resumes from its checkpoint. No node is special: a coordinator that dies loses the job's lease, and the
worker that claims the job next carries on with the same shards.

A shard is not claimable while its job is stopping (Job.stop_requested), once the coordinator halted
the job's shards (`halt`: the job ends, by a timeout or a fault), or when its job is not running.
"""

import contextlib
import datetime
import threading

from sqlalchemy import func, select, update

from bedrock_local.jobs.lease import ShardClaim, ShardLeaseLost, keep_lease, shard_heartbeat
from bedrock_local.jobs.protocol import ShardContext
from bedrock_local.store.database import Database
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import BatchShard

__all__ = ["ShardClaim", "ShardLeaseLost", "busy", "ensure", "halt", "of_job", "plan", "running"]


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


@contextlib.contextmanager
def running(ctx: ShardContext):
    """Run the block with the lease of `ctx`'s shard renewed by a heartbeat thread."""
    settings, claim = ctx.settings, ctx.claim
    thread = threading.Thread(target=keep_lease, name=f"shard-{claim.pk}-heartbeat", daemon=True, args=(
        ctx, settings.lease_seconds, lambda: shard_heartbeat(ctx.db, claim.pk, ctx.worker_id, settings.lease_seconds),
        "shard heartbeat"))
    thread.start()
    try:
        yield ctx
    finally:
        ctx.finish()
        thread.join(timeout=5)
