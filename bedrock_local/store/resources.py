"""Reading and writing resources and their tags: lookups within an (account, region) scope,
keyset pages in creation order, and tag edits. The rules of each resource live in service/."""

import datetime
import secrets
import string
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from bedrock_local.store.schema import Resource, Tag


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
    query = select(Resource).where(Resource.account == scope.account, Resource.region == scope.region,
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
    return list(session.scalars(query.order_by(*order).limit(limit)))


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
