"""Pieces every resource family uses: ids and ARNs, identifiers given by ARN or id or name,
idempotent creates, tag lists, a resource as an answer, and List operations (their filters, summaries
and signed pagination tokens, read from the service model)."""

import base64
import datetime
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter

from botocore.model import Shape
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import QueryableAttribute

from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import is_final, move
from bedrock_local.service.aws_model import load_service_model, paginators
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


class Pager:
    """Keyset pagination with tokens signed for one caller, one operation and one set of filters."""

    def __init__(self, ctx: Context, operation: str, params: dict, filter_names: Iterable[str], *, limit_key: str,
                 input_token: str):
        self.ctx = ctx
        self.limit = params.get(limit_key) or DEFAULT_PAGE
        self.descending = params.get("sortOrder", "Descending") == "Descending"
        view = {name: params.get(name) for name in sorted(filter_names)}
        view.update(op=operation, account=ctx.account, region=ctx.region, desc=self.descending)
        self.fingerprint = hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.after = self._read(params.get(input_token))

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

    def read_page(self, kind: str, conditions: list) -> tuple[list[resources.ResourceRow], str | None]:
        """The page of `kind` that the token points at, and the token of the next one: rows read without a session."""
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


def as_answer(resource: Resource | resources.ResourceRow, columns: dict[str, str]) -> dict:
    """A resource as a Get answers it: the public members of its body, and the members that are its
    columns (`columns`: member -> column attribute, e.g. {"jobArn": "arn"})."""
    answer = public(resource.body)
    answer.update({member: getattr(resource, column) for member, column in columns.items()})
    return answer


# The columns the filters of most List operations compare, beside the module's own table; a timestamp
# filter (creationTimeAfter, submitTimeBefore, createdAfter, ...) compares the creation time.
# projectIdentifier: every resource is in the account's default project, the only one (service/projects.py,
# checked before the operation runs), so it filters nothing out.
SHARED_FILTERS = {"nameContains": Resource.name, "statusEquals": Resource.status,
                  "projectIdentifier": lambda value: None}
FilterRule = QueryableAttribute | Callable  # a column to compare, or value -> condition (None: no condition)


@dataclass(frozen=True)
class ListShape:
    """A List operation as the service model describes it."""

    filters: dict[str, Shape]  # the request members that choose and order resources: not the token, size or order
    limit_key: str
    input_token: str
    output_token: str
    result_key: str
    summary_members: tuple[str, ...]  # the members of one item of the result list


@functools.cache
def list_shape(operation: str) -> ListShape:
    paging = paginators("bedrock")[operation]
    model = load_service_model("bedrock").operation_model(operation)
    not_filters = {paging["input_token"], paging["limit_key"], "sortOrder"}
    return ListShape(
        filters={name: shape for name, shape in model.input_shape.members.items() if name not in not_filters},
        limit_key=paging["limit_key"], input_token=paging["input_token"], output_token=paging["output_token"],
        result_key=paging["result_key"],
        summary_members=tuple(model.output_shape.members[paging["result_key"]].member.members))


def filter_rules(operation: str, columns: dict[str, FilterRule]) -> dict[str, FilterRule | None]:
    """Each filter member of `operation` with its rule (None where bedrock-local has none). sortBy has
    one value, CreationTime, the order every page is in: it filters nothing."""
    rules = {**SHARED_FILTERS, **columns}
    return {name: rules.get(name, Resource.created_at if _is_time_bound(name, shape) else None)
            for name, shape in list_shape(operation).filters.items() if name != "sortBy"}


def _is_time_bound(name: str, shape: Shape) -> bool:
    return shape.type_name == "timestamp" and name.endswith(("After", "Before"))


def _condition(name: str, shape: Shape, rule: FilterRule | None, value):
    if rule is None:
        raise ValidationException(f"The filter {name} is not supported by bedrock-local.")
    if not isinstance(rule, QueryableAttribute):
        return rule(value)
    if _is_time_bound(name, shape):
        return rule > value if name.endswith("After") else rule < value
    if value == "":  # an empty string filters nothing out
        return None
    return rule.contains(value, autoescape=True) if name.endswith("Contains") else rule == value


def list_resources(ctx: Context, params: dict, operation: str, kind: str, columns: dict[str, str], *,
                   filters: dict[str, FilterRule] | None = None, body_names: dict[str, str] | None = None,
                   left_out: tuple[str, ...] = ()) -> dict:
    """A List operation over the caller's resources of `kind`, newest first unless sortOrder says
    otherwise. The service model names the filters, the summary members and the paging members;
    the caller gives what it cannot say: the column of each filter beyond SHARED_FILTERS (`filters`),
    the summary members that are columns (`columns`, as for `as_answer`), the body member a summary
    member is stored as where the names differ (`body_names`), and members a summary leaves out."""
    shape = list_shape(operation)
    conditions = []
    for name, rule in filter_rules(operation, filters or {}).items():
        value = params.get(name)
        if value is not None and (condition := _condition(name, shape.filters[name], rule, value)) is not None:
            conditions.append(condition)
    pager = Pager(ctx, operation, params, shape.filters, limit_key=shape.limit_key, input_token=shape.input_token)
    rows, token = pager.read_page(kind, conditions)
    body_names = body_names or {}
    readers = [(member, attrgetter(columns[member]) if member in columns
                else _body_reader(body_names.get(member, member)))
               for member in shape.summary_members if member not in left_out]
    return {shape.result_key: [{member: read(row) for member, read in readers} for row in rows],
            shape.output_token: token}


def _body_reader(name: str) -> Callable:
    return lambda row: row.body.get(name)


def stop_job(session, job: Resource, what: str, ended_error: type[Exception],
             stopped_changes: Callable[[], dict], cancellable: bool = True) -> None:
    """The Stop operations' rule for a job resource: an ended job answers `ended_error`; a Stopping one
    nothing more; one no worker took yet (and `cancellable`) ends Stopped here at once, with
    `stopped_changes()`; a running one moves to Stopping and its worker is asked to stop."""
    if is_final(job):
        raise ended_error(f"The {what} '{job.name}' is already {job.status} and cannot be stopped.")
    if job.status == "Stopping":
        return
    if cancellable and lease.cancel_queued(session, job):
        move(job, "Stopped", **stopped_changes())
    else:
        move(job, "Stopping")
        lease.request_stop(session, job)
