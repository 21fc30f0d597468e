"""Model invocation logging: Put/Get/DeleteModelInvocationLoggingConfiguration (one configuration
per account and region, a row of the resources table), the log record AWS writes for a runtime
call (`log_record`), and `Delivery`, the background thread that writes those records where the
configuration says, so that delivery never blocks nor fails the call it logs.

Where records go (docs/invocation-logging.md):
- `s3Config`: gzip'd JSON-lines objects at
  `{keyPrefix}/AWSLogs/{account}/BedrockModelInvocationLogs/{region}/{yyyy}/{mm}/{dd}/{hh}/{stamp}_{id}.json.gz`,
  through the server's object store (the folder store, or S3 with --s3-endpoint-url);
- `cloudWatchConfig`: one JSON line per record appended to
  `<data-dir>/cloudwatch-logs/{account}/{region}/{quoted log group name}.jsonl` (no CloudWatch here).

A destination that cannot be written (a bucket that does not exist yet) is reported in the server
log and retried with back-off, a bounded number of times and records.
"""

from __future__ import annotations

import base64
import collections
import datetime
import gzip
import json
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.exc import IntegrityError

from bedrock_local.service.buckets import owner
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ValidationException
from bedrock_local.service.registry import operation
from bedrock_local.storage import S3Location
from bedrock_local.storage.location import bucket_problem, key_problem
from bedrock_local.store import resources
from bedrock_local.store.resources import Scope

log = logging.getLogger("bedrock_local.invocation_logging")

KIND = "model-invocation-logging"
NAME = "default"  # the one configuration of a scope (its unique name: a concurrent second Put updates it)
LOGGED_OPERATIONS = frozenset({"InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream"})
JSON = "application/json"
CLOUDWATCH_FOLDER = "cloudwatch-logs"
# delivery bounds: records waiting for the thread, records waiting for a retry, tries of one object
MAX_QUEUED = 10_000
MAX_RETRY_RECORDS = 10_000
MAX_TRIES = 12
FIRST_RETRY_SECONDS, LAST_RETRY_SECONDS = 0.5, 60.0  # doubling in between: about 7 minutes in all
FLAGS = {"text": "textDataDeliveryEnabled", "embedding": "embeddingDataDeliveryEnabled"}


# ---- the operations ----------------------------------------------------------------------------


def _check_bucket(ctx: Context, s3: dict, member: str) -> None:
    """A destination that can hold objects: a legal bucket name and key prefix; and, as AWS delivers
    logs to buckets of the configuring account only (user guide: "Only destinations from the same
    account and Region are supported"), a bucket of the caller's."""
    bucket, prefix = s3["bucketName"], (s3.get("keyPrefix") or "").strip("/")
    problem = bucket_problem(bucket) or (key_problem(prefix + "/") if prefix else None)
    if problem:
        raise ValidationException(f"The S3 destination at '{member}' cannot hold log objects: {problem}.")
    member += ".bucketName"
    if bucket == ctx.settings.model_bucket or owner(ctx, bucket) != ctx.account:
        raise ValidationException(
            f"Failed to validate permissions for the S3 bucket '{bucket}' at '{member}': it belongs to another "
            f"account. Model invocation logs are delivered only to destinations of account {ctx.account}.")


@operation("PutModelInvocationLoggingConfiguration")
def put_configuration(ctx: Context, params: dict) -> dict:
    config = params["loggingConfig"]
    if not config.get("s3Config") and not config.get("cloudWatchConfig"):
        raise ValidationException("loggingConfig must name a destination: s3Config, cloudWatchConfig or both.")
    if config.get("s3Config"):
        _check_bucket(ctx, config["s3Config"], "loggingConfig.s3Config")
    large = (config.get("cloudWatchConfig") or {}).get("largeDataDeliveryS3Config")
    if large:
        _check_bucket(ctx, large, "loggingConfig.cloudWatchConfig.largeDataDeliveryS3Config")
    for _ in range(2):  # a concurrent first Put of the scope wins the insert; this one then updates it
        try:
            with ctx.db.session() as session, session.begin():
                row = resources.find(session, ctx.scope, KIND, name=NAME)
                if row is None:
                    resources.insert(session, kind=KIND, account=ctx.account, region=ctx.region, resource_id=NAME,
                                     arn=f"arn:aws:bedrock:{ctx.region}:{ctx.account}:{KIND}/{NAME}",
                                     name=NAME, unique_name=NAME, body=config)
                else:
                    row.body = config
                    row.updated_at = resources.utcnow()
            return {}
        except IntegrityError:
            continue
    raise ValidationException("The logging configuration changed concurrently; retry.")


@operation("GetModelInvocationLoggingConfiguration")
def get_configuration(ctx: Context, params: dict) -> dict:
    config = configuration(ctx.db, ctx.scope)
    return {"loggingConfig": config} if config is not None else {}


@operation("DeleteModelInvocationLoggingConfiguration")
def delete_configuration(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        row = resources.find(session, ctx.scope, KIND, name=NAME)
        if row is not None:
            resources.delete_resource(session, row)
    return {}


def configuration(db, scope: Scope) -> dict | None:
    row = resources.read(db, scope, KIND, name=NAME)
    return row.body if row is not None else None


# ---- the record --------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One runtime call as the api layer saw it: who, what was asked, the answer (a whole answer's
    output members, or a stream's events in order), and the token counts the model reported
    (filled in by service/node_client.py as the node answers)."""

    account: str
    region: str
    request_id: str
    operation: str
    model_id: str
    params: dict
    time: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    kind: str = "text"  # the model's: "text" | "embedding"
    input_tokens: int | None = None
    output_tokens: int | None = None
    output: object = None
    streamed: bool = False
    error: dict | None = None  # {"code", "message"} of a call that failed
    script_id: str | None = None  # the scripted reply that answered it (service/call_inspection.py)

    def usage(self, done: dict) -> None:
        """Take the token counts of a node's final message (text, or embedding results)."""
        if "results" in done:
            self.kind = "embedding"
            self.input_tokens = (self.input_tokens or 0) + sum(r.get("input_tokens", 0) for r in done["results"])
            self.output_tokens = 0
        else:
            self.input_tokens = (self.input_tokens or 0) + done.get("input_tokens", 0)
            self.output_tokens = (self.output_tokens or 0) + done.get("output_tokens", 0)


def jsonable(value):
    """`value` as JSON can hold it: blobs (images, documents) as base64 text. Built without recursion:
    a document member may be nested as deep as the JSON parser allowed."""
    root = [None]
    pending = [(root, 0, value)]
    while pending:
        into, key, item = pending.pop()
        if isinstance(item, (bytes, bytearray, memoryview)):
            into[key] = base64.b64encode(bytes(item)).decode("ascii")
        elif isinstance(item, dict):
            into[key] = copy = dict.fromkeys(item)
            pending.extend((copy, k, v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            into[key] = copy = [None] * len(item)
            pending.extend((copy, i, v) for i, v in enumerate(item))
        elif isinstance(item, datetime.datetime):
            into[key] = item.isoformat()
        else:
            into[key] = item
    return root[0]


def _json_body(raw) -> object:
    """An InvokeModel body or stream chunk as the JSON it holds (its text, or base64, if it holds none)."""
    try:
        return json.loads(bytes(raw))
    except (ValueError, TypeError, RecursionError):
        return jsonable(raw)


def input_body(call: Invocation) -> object:
    """What the caller sent, as AWS logs it: InvokeModel's body; Converse's request members but modelId."""
    if call.operation.startswith("InvokeModel"):
        return _json_body(call.params.get("body") or b"")
    return jsonable({k: v for k, v in call.params.items() if k != "modelId"})


def output_body(call: Invocation) -> object:
    """What the caller got: InvokeModel's body, Converse's response, or a stream's list of events
    (InvokeModelWithResponseStream: each chunk's JSON)."""
    if call.operation == "InvokeModel":
        return _json_body((call.output or {}).get("body") or b"")
    if call.operation == "InvokeModelWithResponseStream":
        return [_json_body(event["chunk"]["bytes"]) if "chunk" in event else jsonable(event)
                for event in call.output or []]
    return jsonable(call.output)


def log_record(call: Invocation) -> dict:
    """AWS's model invocation log record (schemaType ModelInvocationLog, schemaVersion 1.0)."""
    record = {
        "schemaType": "ModelInvocationLog",
        "schemaVersion": "1.0",
        "timestamp": call.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "accountId": call.account,
        "identity": {"arn": f"arn:aws:iam::{call.account}:root"},  # no IAM principals here: the account's
        "region": call.region,
        "requestId": call.request_id,
        "operation": call.operation,
        "modelId": call.model_id,
        "input": {"inputContentType": (call.params.get("contentType") or JSON) if call.operation.startswith(
                      "InvokeModel") else JSON,
                  "inputBodyJson": input_body(call), "inputTokenCount": call.input_tokens or 0},
        "output": {"outputContentType": JSON, "outputBodyJson": output_body(call),
                   "outputTokenCount": call.output_tokens or 0},
    }
    if call.params.get("requestMetadata"):
        record["requestMetadata"] = dict(call.params["requestMetadata"])
    return record


def s3_key(prefix: str, account: str, region: str, when: datetime.datetime) -> str:
    """Where AWS puts a log object: {prefix}/AWSLogs/{account}/BedrockModelInvocationLogs/{region}/yyyy/mm/dd/hh/..."""
    stamp = when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z"
    key = (f"AWSLogs/{account}/BedrockModelInvocationLogs/{region}/{when:%Y/%m/%d/%H}/"
           f"{stamp}_{secrets.token_hex(8)}.json.gz")
    prefix = (prefix or "").strip("/")
    return f"{prefix}/{key}" if prefix else key


def cloudwatch_file(data_dir: Path, account: str, region: str, log_group: str) -> Path:
    return Path(data_dir) / CLOUDWATCH_FOLDER / account / region / (quote(log_group, safe="") + ".jsonl")


# ---- delivery ----------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Records bound for one destination: ("s3", bucket, key) or ("cloudwatch", path)."""

    destination: tuple
    lines: list[str]
    tries: int = 0
    next_at: float = 0.0


class Delivery:
    """The API process's delivery thread. `submit` never blocks: a call is queued (dropped, with a
    warning, past MAX_QUEUED) and the thread reads its scope's configuration, builds the record and
    writes it; what fails waits in `retry` for its next try."""

    def __init__(self, db, objects, data_dir: Path):
        self.db, self.objects, self.data_dir = db, objects, Path(data_dir)
        self.queue: queue.Queue[Invocation] = queue.Queue(MAX_QUEUED)
        self.retry: collections.deque[_Batch] = collections.deque()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, call: Invocation) -> None:
        if call.error is not None or call.operation not in LOGGED_OPERATIONS:
            return  # failed calls and CountTokens are not logged
        try:
            self.queue.put_nowait(call)
        except queue.Full:
            log.warning("model invocation logging: %d records wait for delivery; the record of request %s is "
                        "dropped", MAX_QUEUED, call.request_id)
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="invocation-logging", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            wait = min((b.next_at for b in self.retry), default=time.monotonic() + 3600) - time.monotonic()
            calls = []
            try:
                calls.append(self.queue.get(timeout=max(0.05, wait)))
                while len(calls) < 1000:
                    calls.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            try:
                batches = self._batches(calls)
            except Exception:  # a database that cannot be read now: those calls are not logged
                log.exception("model invocation logging: reading the logging configuration failed")
                batches = []
            now = time.monotonic()
            due = [b for b in self.retry if b.next_at <= now]
            for batch in due:
                self.retry.remove(batch)
            for batch in batches + due:
                self._write(batch)

    def _batches(self, calls: list[Invocation]) -> list[_Batch]:
        """The calls' records grouped by destination, per the configuration of each call's scope now."""
        configs: dict[Scope, dict | None] = {}
        grouped: dict[tuple, _Batch] = {}
        for call in calls:
            scope = Scope(call.account, call.region)
            if scope not in configs:
                configs[scope] = configuration(self.db, scope)
            config = configs[scope]
            if not config or not config.get(FLAGS.get(call.kind, "textDataDeliveryEnabled")):
                continue
            line = json.dumps(log_record(call), ensure_ascii=False, separators=(",", ":"))
            s3 = config.get("s3Config")
            if s3:
                hour = call.time.replace(minute=0, second=0, microsecond=0)
                group = ("s3", s3["bucketName"], s3.get("keyPrefix", ""), call.account, call.region, hour)
                if group not in grouped:
                    key = s3_key(s3.get("keyPrefix", ""), call.account, call.region, call.time)
                    grouped[group] = _Batch(("s3", s3["bucketName"], key), [])
                grouped[group].lines.append(line)
            cloudwatch = config.get("cloudWatchConfig")
            if cloudwatch:
                path = cloudwatch_file(self.data_dir, call.account, call.region, cloudwatch["logGroupName"])
                grouped.setdefault(("cloudwatch", path), _Batch(("cloudwatch", path), [])).lines.append(line)
        return list(grouped.values())

    def _write(self, batch: _Batch) -> None:
        try:
            if batch.destination[0] == "s3":
                _, bucket, key = batch.destination
                data = gzip.compress(("\n".join(batch.lines) + "\n").encode("utf-8"))
                self.objects.put_bytes(S3Location(bucket, key), data)
            else:
                path = batch.destination[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:  # one append per batch: lines stay whole
                    f.write("".join(line + "\n" for line in batch.lines))
        except Exception as exc:  # StorageError, OSError, or an S3 endpoint's own: all retried
            self._later(batch, exc)

    def _later(self, batch: _Batch, exc: Exception) -> None:
        batch.tries += 1
        where = (f"s3://{batch.destination[1]}/{batch.destination[2]}" if batch.destination[0] == "s3"
                 else str(batch.destination[1]))
        if batch.tries >= MAX_TRIES:
            log.error("model invocation logging: %d record(s) for %s dropped after %d tries: %s",
                      len(batch.lines), where, batch.tries, exc)
            return
        delay = min(LAST_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (batch.tries - 1))
        log.warning("model invocation logging: cannot write %d record(s) to %s (%s); retrying in %.1f s",
                    len(batch.lines), where, exc, delay)
        batch.next_at = time.monotonic() + delay
        self.retry.append(batch)
        waiting = sum(len(b.lines) for b in self.retry)
        while waiting > MAX_RETRY_RECORDS and self.retry:
            dropped = self.retry.popleft()
            waiting -= len(dropped.lines)
            log.error("model invocation logging: too many records wait for a retry; %d dropped",
                      len(dropped.lines))
