"""Reading and writing resources and their tags: lookups within an (account, region) scope,
keyset pages in creation order, and tag edits. The rules of each resource live in service/."""

import datetime
import secrets
import string
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from sqlalchemy import Text, and_, bindparam, delete, func, or_, select, type_coerce
from sqlalchemy.orm import Session

from bedrock_local.store.database import Database
from bedrock_local.store.schema import Resource, Tag, UtcDateTime


_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id() -> str:
    """A resource id as Bedrock makes them: 12 characters of [a-z0-9]."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def utcnow() -> datetime.datetime:
    """Now, in whole milliseconds: the precision of timestamps on the wire, so that a time a client
    read back and passes as a filter (creationTimeAfter, ...) compares equal to the stored one."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Scope:
    account: str
    region: str


def find(session: Session, scope: Scope, kind: str, *, arn: str | None = None,
         resource_id: str | None = None, name: str | None = None) -> Resource | None:
    query = select(Resource).where(Resource.account == scope.account, Resource.region == scope.region,
                                   Resource.kind == kind)
    if arn is not None:  # unique: the arn index finds it, the scope columns only confirm it
        return session.scalars(query.where(Resource.arn == arn)).first()
    if resource_id is not None:
        query = query.where(Resource.resource_id == resource_id)
    if name is not None:
        query = query.where(Resource.name == name)
    return session.scalars(query.order_by(Resource.created_at.desc()).limit(1)).first()


def find_by_arn(session: Session, arn: str) -> Resource | None:
    return session.scalars(select(Resource).where(Resource.arn == arn)).first()


def find_by_token(session: Session, scope: Scope, kind: str, client_token: str) -> Resource | None:
    return session.scalars(select(Resource).where(
        Resource.account == scope.account, Resource.region == scope.region, Resource.kind == kind,
        Resource.client_token == client_token)).first()


def name_taken(session: Session, scope: Scope, kind: str, unique_name: str) -> bool:
    return session.scalar(select(func.count()).select_from(Resource).where(
        Resource.account == scope.account, Resource.region == scope.region, Resource.kind == kind,
        Resource.unique_name == unique_name)) > 0


class ResourceRow(NamedTuple):
    """A resource as read to answer a Get or a List: the columns of `resources` under the ORM's
    attribute names, the body decoded. No session, identity map or change tracking behind it."""

    pk: int
    kind: str
    account: str
    region: str
    resource_id: str
    arn: str
    name: str | None
    unique_name: str | None
    status: str | None
    ref_arn: str | None
    ref_account: str | None
    origin_arn: str | None
    client_token: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    body: dict


# the body as the text it is stored as (SQLite): orjson decodes it several times faster than the JSON
# type's json.loads; PostgreSQL's driver hands over the decoded value itself
_ROW_COLUMNS = [getattr(Resource, name) for name in ResourceRow._fields[:-1]] + [type_coerce(Resource.body, Text)]


def _row(values) -> ResourceRow:
    body = values[-1]
    return ResourceRow(*values[:-1], orjson.loads(body) if isinstance(body, (str, bytes)) else body)


def _sqlite_utc(value: str) -> datetime.datetime:
    """A UtcDateTime as SQLite holds it (SQLAlchemy's text form, 2026-11-30 23:54:48.123000) read in one
    C call, the value SQLAlchemy's own regex-based processor and UtcDateTime give."""
    return datetime.datetime.fromisoformat(value).replace(tzinfo=datetime.timezone.utc)


class _CompiledRead:
    """A SELECT compiled once for one database's dialect and run straight on a pooled DBAPI
    connection, its values through the columns' own bind and result processors (so a row holds what
    a Core or ORM query gives: aware UTC datetimes). A lookup by ARN is one indexed query; the
    Session or Connection around it, the per-call cache key and SQLite's BEGIN/ROLLBACK would cost
    several times the query. One statement reads one consistent snapshot: SQLite runs it in
    autocommit, PostgreSQL's transaction ends when the pool takes the connection back."""

    def __init__(self, statement, dialect):
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.positional = compiled.positional
        names = compiled.positiontup if compiled.positional else list(dict.fromkeys(compiled.bind_names.values()))
        self.binds = []  # (name, the caller's key or None for a constant, the constant, bind processor)
        for name in names:
            bind = compiled.binds[name]
            self.binds.append((name, bind.key if bind.required else None, bind.effective_value,
                               bind.type.dialect_impl(dialect).bind_processor(dialect)))
        self.processors = [_sqlite_utc if dialect.name == "sqlite" and isinstance(column.type, UtcDateTime)
                           else column.type.dialect_impl(dialect).result_processor(dialect, None)
                           for column in statement.selected_columns]

    def rows(self, db: Database, values: dict) -> list:
        args = []
        for _name, key, constant, process in self.binds:
            value = values[key] if key is not None else constant
            args.append(process(value) if process is not None and value is not None else value)
        parameters = tuple(args) if self.positional else {b[0]: a for b, a in zip(self.binds, args)}
        if db.is_sqlite:
            cursor = db.own_read_connection().cursor()
            try:
                fetched = cursor.execute(self.sql, parameters).fetchall()
            finally:
                cursor.close()
        else:
            connection = db.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute(self.sql, parameters)
                fetched = cursor.fetchall()
                cursor.close()
            finally:
                connection.close()
        processors = self.processors
        return [[value if process is None or value is None else process(value)
                 for process, value in zip(processors, row)] for row in fetched]


_IN_SCOPE = (Resource.account == bindparam("account"), Resource.region == bindparam("region"),
             Resource.kind == bindparam("kind"))
_READS = {  # one per way of finding a resource, compiled per dialect on first use
    "arn": select(*_ROW_COLUMNS).where(*_IN_SCOPE, Resource.arn == bindparam("arn")),
    "name": select(*_ROW_COLUMNS).where(*_IN_SCOPE, Resource.name == bindparam("name"))
                                 .order_by(Resource.created_at.desc()).limit(1),
}
_compiled_reads: dict[tuple[str, str, str], _CompiledRead] = {}


def read(db: Database, scope: Scope, kind: str, *, arn: str | None = None, name: str | None = None) -> ResourceRow | None:
    """`find` by ARN or by name, for an answer: no session; one query."""
    by = "arn" if arn is not None else "name"
    key = (db.engine.dialect.name, db.engine.dialect.driver, by)
    compiled = _compiled_reads.get(key)
    if compiled is None:
        compiled = _compiled_reads[key] = _CompiledRead(_READS[by], db.engine.dialect)
    rows = compiled.rows(db, {"account": scope.account, "region": scope.region, "kind": kind,
                              "arn": arn, "name": name})
    return _row(rows[0]) if rows else None


def insert(session: Session, **columns) -> Resource:
    now = columns.pop("created_at", None) or utcnow()
    tags = columns.pop("tags", None) or []
    resource = Resource(created_at=now, updated_at=now, **columns)
    session.add(resource)
    session.flush()
    replace_tags(session, resource, tags)
    return resource


def update(resource: Resource, *, status: str | None = None, **body_changes) -> None:
    """Change a resource's status and merge members into its body (None removes a member)."""
    if status is not None:
        resource.status = status
    if body_changes:
        body = dict(resource.body)
        for key, value in body_changes.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        resource.body = body
    resource.updated_at = utcnow()


def page(session: Session, scope: Scope, kind: str, conditions: list, *, descending: bool,
         limit: int, after: tuple[datetime.datetime, int] | None) -> list[Resource]:
    """One page in creation order; `after` is the (created_at, pk) of the last row of the page before."""
    return list(session.scalars(_page_query(select(Resource), scope, kind, conditions, descending, limit, after)))


def read_page(db: Database, scope: Scope, kind: str, conditions: list, *, descending: bool,
              limit: int, after: tuple[datetime.datetime, int] | None) -> list[ResourceRow]:
    """`page`, for an answer: rows, not ORM objects. The statement varies with the filters, so it
    goes through SQLAlchemy's statement cache (a few tens of microseconds on a page of rows)."""
    query = _page_query(select(*_ROW_COLUMNS), scope, kind, conditions, descending, limit, after)
    with db.engine.connect().execution_options(readonly=True) as connection:
        return [_row(values) for values in connection.execute(query).all()]


def _page_query(query, scope: Scope, kind: str, conditions: list, descending: bool, limit: int,
                after: tuple[datetime.datetime, int] | None):
    query = query.where(Resource.account == scope.account, Resource.region == scope.region,
                        Resource.kind == kind, *conditions)
    if after is not None:
        created, pk = after
        # The plain bound on created_at (implied by the OR) lets the index seek to the page's start
        # instead of walking the scope from its first row: a late page costs as little as the first.
        if descending:
            query = query.where(Resource.created_at <= created,
                                or_(Resource.created_at < created, and_(Resource.created_at == created, Resource.pk < pk)))
        else:
            query = query.where(Resource.created_at >= created,
                                or_(Resource.created_at > created, and_(Resource.created_at == created, Resource.pk > pk)))
    order = (Resource.created_at.desc(), Resource.pk.desc()) if descending else (Resource.created_at, Resource.pk)
    return query.order_by(*order).limit(limit)


def get_tags(session: Session, resource: Resource) -> list[dict]:
    rows = session.scalars(select(Tag).where(Tag.resource_pk == resource.pk).order_by(Tag.position, Tag.key))
    return [{"key": row.key, "value": row.value} for row in rows]


def tag_count_after(session: Session, resource: Resource, tags: list[dict]) -> int:
    existing = {t["key"] for t in get_tags(session, resource)}
    return len(existing | {t["key"] for t in tags})


def replace_tags(session: Session, resource: Resource, tags: list[dict]) -> None:
    """Add or overwrite each tag by key; other tags stay."""
    if not tags:
        return
    current = {row.key: row for row in session.scalars(select(Tag).where(Tag.resource_pk == resource.pk))}
    position = max((row.position for row in current.values()), default=-1)
    for tag in tags:
        row = current.get(tag["key"])
        if row is not None:
            row.value = tag["value"]
        else:
            position += 1
            row = Tag(resource_pk=resource.pk, key=tag["key"], value=tag["value"], position=position)
            session.add(row)
            current[tag["key"]] = row
    session.flush()


def remove_tags(session: Session, resource: Resource, keys: list[str]) -> None:
    if keys:
        session.execute(delete(Tag).where(Tag.resource_pk == resource.pk, Tag.key.in_(keys)))


def delete_resource(session: Session, resource: Resource) -> None:
    session.execute(delete(Tag).where(Tag.resource_pk == resource.pk))
    session.delete(resource)
