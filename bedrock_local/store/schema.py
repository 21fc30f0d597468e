"""The tables: every Bedrock resource is a row of `resources`, its tags rows of `tags`, and every
long-running piece of work a row of `jobs` that workers claim with a lease (a batch job split across
workers also has rows of `batch_shards`); serving processes register in `serving_nodes`.

A resource keeps the columns that are filtered, sorted or unique (scope, name, status, times, the
ARN it refers to) and the rest of its description as JSON, in the form the API answers it.
"""

import datetime

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, MetaData,
                        String, Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=datetime.timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Resource(Base):
    __tablename__ = "resources"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40))
    account: Mapped[str] = mapped_column(String(12))
    region: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64))
    arn: Mapped[str] = mapped_column(String(1011), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    unique_name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str | None] = mapped_column(String(40))
    ref_arn: Mapped[str | None] = mapped_column(String(1011))
    ref_account: Mapped[str | None] = mapped_column(String(12))
    origin_arn: Mapped[str | None] = mapped_column(String(1011))
    client_token: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime())
    body: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (
        Index(None, "account", "region", "kind", "created_at", "pk"),
        Index(None, "account", "region", "kind", "resource_id"),
        UniqueConstraint("account", "region", "kind", "unique_name"),
        UniqueConstraint("account", "region", "kind", "client_token"),
    )


class Tag(Base):
    __tablename__ = "tags"

    resource_pk: Mapped[int] = mapped_column(ForeignKey("resources.pk", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    position: Mapped[int] = mapped_column(Integer)


class Job(Base):
    __tablename__ = "jobs"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = mapped_column(ForeignKey("resources.pk", ondelete="CASCADE"), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(16))          # queued | running | done
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime.datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    checkpoint: Mapped[dict | None] = mapped_column(JSON)
    progress: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime())

    __table_args__ = (Index(None, "state", "lease_expires_at"),)


class ServingNode(Base):
    """A live serving process (processes/serving.py) and where the API reaches it; it renews
    `expires_at` while it lives, so a node that died is ignored once that time has passed."""

    __tablename__ = "serving_nodes"

    node_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255))  # host:port of its request socket
    started_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime())


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class BatchShard(Base):
    """A record range of a batch inference job split across workers (jobs/shards.py): any worker may
    claim it with a lease of its own, checkpoints how many of its records are written to its part
    object, and marks it done; `fault` says how a shard ended the whole job (an injected test-model
    fault, or a failure), `halt` that its job is ending and the shard may not be claimed again."""

    __tablename__ = "batch_shards"

    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.pk", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)            # 0, 1, ...: the shards in record order
    first: Mapped[int] = mapped_column(BigInteger)          # its first record's position in the job (from 0)
    count: Mapped[int] = mapped_column(Integer)             # how many records it holds
    start: Mapped[dict] = mapped_column(JSON)               # where its first record is: file, byte offset, line
    state: Mapped[str] = mapped_column(String(16))          # pending | running | done
    halt: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime.datetime | None] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint: Mapped[dict | None] = mapped_column(JSON)  # {"done": records written, "counts": {...}}
    fault: Mapped[dict | None] = mapped_column(JSON)       # {"action": fail|stop|timeout, "note", "message"}
    done_by: Mapped[str | None] = mapped_column(String(128))  # the worker that finished it

    __table_args__ = (UniqueConstraint("job_pk", "number"), Index(None, "state", "lease_expires_at"))
