"""Pieces every resource family uses: ids and ARNs, identifiers given by ARN or id or name,
signed pagination tokens, idempotent creates, tag lists and creation-time filters."""

import base64
import datetime
import hashlib
import hmac
import json
import re

from sqlalchemy.exc import IntegrityError

from bedrock_local.service.context import Context
from bedrock_local.service.errors import (ConflictException, ResourceNotFoundException, TooManyTagsException,
                                          ValidationException)
from bedrock_local.store import resources
from bedrock_local.store.resources import new_id  # noqa: F401  (re-exported for the service modules)
from bedrock_local.store.schema import Resource

MAX_TAGS = 200
DEFAULT_PAGE = 100
ARN_RE = re.compile(r"arn:aws(?:-[^:]+)?:bedrock:(?P<region>[a-z0-9-]{1,20}):(?P<account>[0-9]{12}|):(?P<resource>.+)")


def make_arn(ctx: Context, resource: str, region: str | None = None, account: str | None = None) -> str:
    return f"arn:aws:bedrock:{region or ctx.region}:{ctx.account if account is None else account}:{resource}"


def parse_arn(arn: str) -> dict | None:
    found = ARN_RE.fullmatch(arn)
    return found.groupdict() if found else None


def request_hash(params: dict) -> str:
    """A fingerprint of a create request, to tell a retry from a different request with the same token."""
    clean = {k: v for k, v in params.items() if k != "clientRequestToken"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def idempotent_replay(session, ctx: Context, kind: str, params: dict) -> Resource | None:
    """The resource an earlier request with the same clientRequestToken made, if any."""
    token = params.get("clientRequestToken")
    if not token:
        return None
    earlier = resources.find_by_token(session, ctx.scope, kind, token)
    if earlier is not None and earlier.body.get("_requestHash") != request_hash(params):
        raise ConflictException(
            f"The clientRequestToken '{token}' was already used with different parameters for {earlier.arn}.")
    return earlier


def find_in_scope(session, ctx: Context, kind: str, what: str, identifier: str) -> Resource:
    """A resource of the caller's account and region by ARN or by name; anything else, including an
    ARN of another account or region, is not found (existence never leaks across accounts)."""
    if identifier.startswith("arn:"):
        found = resources.find(session, ctx.scope, kind, arn=identifier)  # the scope is part of the query
    else:
        found = resources.find(session, ctx.scope, kind, name=identifier)
    if found is None:
        raise ResourceNotFoundException(f"The {what} '{identifier}' does not exist.")
    return found


def read_in_scope(ctx: Context, kind: str, what: str, identifier: str) -> resources.ResourceRow:
    """`find_in_scope` for an answer (Get): the row, read without a session."""
    by = "arn" if identifier.startswith("arn:") else "name"
    found = resources.read(ctx.db, ctx.scope, kind, **{by: identifier})
    if found is None:
        raise ResourceNotFoundException(f"The {what} '{identifier}' does not exist.")
    return found


def check_name_free(session, ctx: Context, kind: str, what: str, name: str) -> None:
    if resources.name_taken(session, ctx.scope, kind, name):
        raise ConflictException(f"A {what} with the name '{name}' already exists in {ctx.region}.")


def insert_unique(session, ctx: Context, kind: str, what: str, *, name: str, body: dict, **columns) -> Resource:
    """Insert a resource of the caller's scope whose name is unique among its kind: a name taken
    before or by a concurrent request is a ConflictException. Members that are None are left out."""
    check_name_free(session, ctx, kind, what, name)
    try:
        with session.begin_nested():
            return resources.insert(session, kind=kind, account=ctx.account, region=ctx.region, name=name,
                                    unique_name=name, body={k: v for k, v in body.items() if v is not None},
                                    **columns)
    except IntegrityError:
        raise ConflictException(f"A {what} with the name '{name}' already exists in {ctx.region}.")


def check_tag_limit(count: int, arn: str | None = None) -> None:
    if count > MAX_TAGS:
        raise TooManyTagsException(
            f"A resource can have at most {MAX_TAGS} tags; this request would give it {count}.",
            **({"resourceName": arn} if arn else {}))


def creation_time_filters(params: dict) -> list:
    conditions = []
    if params.get("creationTimeAfter") is not None:
        conditions.append(Resource.created_at > params["creationTimeAfter"])
    if params.get("creationTimeBefore") is not None:
        conditions.append(Resource.created_at < params["creationTimeBefore"])
    return conditions


class Pager:
    """Keyset pagination with tokens signed for one caller, one operation and one set of filters."""

    def __init__(self, ctx: Context, operation: str, params: dict, filter_names: list[str]):
        self.ctx = ctx
        self.limit = params.get("maxResults") or DEFAULT_PAGE
        self.descending = params.get("sortOrder", "Descending") == "Descending"
        view = {name: params.get(name) for name in sorted(filter_names)}
        view.update(op=operation, account=ctx.account, region=ctx.region, desc=self.descending)
        self.fingerprint = hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.after = self._read(params.get("nextToken"))

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self.ctx.db.token_secret(), payload, hashlib.sha256).hexdigest()[:32]

    def _read(self, token: str | None):
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4))
            payload, signature = raw.rsplit(b".", 1)
            if not hmac.compare_digest(signature.decode(), self._sign(payload)):
                raise ValueError("bad signature")
            data = json.loads(payload)
            if data["f"] != self.fingerprint:
                raise ValueError("other request")
            return datetime.datetime.fromisoformat(data["c"]), int(data["p"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ValidationException(
                "The nextToken is not valid for this request: pass the token from the previous page "
                "of the same List call, with the same filters and sort order.")

    def page(self, session, kind: str, conditions: list) -> tuple[list[Resource], str | None]:
        return self._cut(resources.page(session, self.ctx.scope, kind, conditions, descending=self.descending,
                                        limit=self.limit + 1, after=self.after))

    def read_page(self, kind: str, conditions: list) -> tuple[list[resources.ResourceRow], str | None]:
        """`page` for an answer: rows read without a session."""
        return self._cut(resources.read_page(self.ctx.db, self.ctx.scope, kind, conditions,
                                             descending=self.descending, limit=self.limit + 1, after=self.after))

    def _cut(self, rows: list) -> tuple[list, str | None]:
        if len(rows) <= self.limit:
            return rows, None
        rows = rows[: self.limit]
        last = rows[-1]
        payload = json.dumps({"f": self.fingerprint, "c": last.created_at.isoformat(), "p": last.pk}).encode()
        token = base64.urlsafe_b64encode(payload + b"." + self._sign(payload).encode()).decode().rstrip("=")
        return rows, token


def public(body: dict) -> dict:
    """A stored body without its private (underscore) members."""
    return {k: v for k, v in body.items() if not k.startswith("_")}
