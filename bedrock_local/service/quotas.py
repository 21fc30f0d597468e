"""The concurrency and count quotas of the Create operations (the list of quotas is
bedrock_local/quotas.py): a Create that would pass one answers ServiceQuotaExceededException (HTTP
400 in the botocore model) with a message naming the quota, its value and the count.

The count is taken inside the transaction that inserts, so concurrent Creates never pass a quota
together: on SQLite write transactions run one at a time (BEGIN IMMEDIATE), on PostgreSQL a
transaction-scoped advisory lock on (quota, account, region, model) makes the second Create wait
until the first has committed, then count its row.
"""

import hashlib

from sqlalchemy import func, select, text

from bedrock_local.quotas import describe, limit
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ServiceQuotaExceededException
from bedrock_local.store.schema import Job, Resource


def _lock(session, ctx: Context, key: str, model: str | None) -> None:
    """PostgreSQL: one Create at a time per (quota, account, region, model) until its transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"quota/{key}/{ctx.account}/{ctx.region}/{model or ''}".encode()).digest()[:8]
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int.from_bytes(digest, "big", signed=True)})


def check_count(session, ctx: Context, key: str, kind: str, statuses=None, *, ref_arn: str | None = None,
                job_kind: str | None = None, model_label: str | None = None, what: str) -> None:
    """Refuse a Create that would make more than the quota's value of resources of `kind` in the
    caller's account and region (those in `statuses`; on `ref_arn`; with an unfinished job row of
    `job_kind`). Call it inside the transaction that inserts, before the insert."""
    value = limit(ctx.settings, key)
    if value is None:
        return
    _lock(session, ctx, key, ref_arn)
    query = select(func.count()).select_from(Resource).where(
        Resource.account == ctx.account, Resource.region == ctx.region, Resource.kind == kind)
    if statuses is not None:
        query = query.where(Resource.status.in_(statuses))
    if ref_arn is not None:
        query = query.where(Resource.ref_arn == ref_arn)
    if job_kind is not None:
        query = query.join(Job, Job.resource_pk == Resource.pk).where(Job.kind == job_kind, Job.state != "done")
    count = session.scalar(query)
    if count >= value:
        raise ServiceQuotaExceededException(
            f"This request would exceed the service quota {describe(key, value, model_label)} of account "
            f"{ctx.account} in {ctx.region}: {count} {what}. Wait until one ends or remove one, or "
            f"raise the quota (bedrock-local serve --quota {key}=N).")
