"""The batch inference job behind CreateModelInvocationJob.

Submitted → Validating (every input file readable, every line JSON with recordId and modelInput,
record counts within quotas) → Scheduled → InProgress → Completed, writing AWS's layout under the
output URI: `<job id>/<input file>.out` (one line per record, in input order, with modelOutput or
error) and `<job id>/manifest.json.out`. Each chunk of finished records is flushed to the `.out`
object before the checkpoint records it, so a Stop or a crash keeps finished work, and a job taken
back after a crash resumes from the checkpoint without losing or duplicating a record.

The model is asked for each chunk of records (RecordRunner), or, on an engine that takes records as
its slots free (vLLM: engine/vllm_batch.py), records stream through it with no chunk boundary: they are
parsed as the engine pulls them, and finished lines are appended (and saved) in input order only, so a
checkpoint never vouches for a record after one still running. An engine may look at each record first
(`check_record`: a record it fails becomes an error line, as for any model error; a JobSignal ends the
job right before that record, through the same path as a Stop, a failure or the timeout). The stub
models use this for their faults (docs/stub-models.md).

A job of more records than --batch-shard-records is split into shards (jobs/shards.py): record ranges,
found while validating (the byte offset of each shard's first record), that every worker process may
claim. Each shard writes its lines to a part object of its own in the model bucket
(`batch-shards/<account>/<job id>/`, not in the user's output) and checkpoints how many it wrote; the
worker holding the job (the coordinator) runs shards too, sums the shards' counts into the job's, and
once every shard is done concatenates the parts in record order into the `.out` objects above,
writes the manifest and ends the job as a single-shard job ends. A Stop, a timeout or a fault ends every
shard at its next chunk; the `.out` objects then hold every written line in input order (with the
records no shard reached left out, so not always a prefix of the input). A job of one shard runs as
before, with no shard rows: its `.out` objects are written as it goes. Both write their records through
one loop (`_write`).
"""

import contextlib
import datetime
import io
import itertools
import json
import logging
import re
import threading
import time
import traceback
from dataclasses import dataclass

from bedrock_local import quotas
from bedrock_local.engine.catalog import KIND_TEXT
from bedrock_local.engine.errors import JobSignal, ModelCallError
from bedrock_local.jobs import lease, shards
from bedrock_local.jobs.lifecycle import move, update_body
from bedrock_local.jobs.model_sources import ModelSource, body_format, load_engine
from bedrock_local.jobs.protocol import (Handler, JobContext, JobStopped, LeaseLost, ShardContext,
                                         too_many_interruptions)
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.batch")

VALIDATION_CHECK_LINES = 10_000
FLUSH_SHARE = 10  # flush at most once per 10x the time the last flush took
COUNT_NAMES = ("processedRecordCount", "successRecordCount", "errorRecordCount", "inputTokenCount", "outputTokenCount")
_cache = None
_cache_lock = threading.Lock()


class ValidationFailed(Exception):
    pass


class TimedOut(Exception):
    """The job reached its timeout (or its model says so: str() then says why)."""


class JobFailed(Exception):
    """The job fails with this message (its model asked for it, or a shard's run failed)."""


def model_cache():
    """The worker process's model cache: a model loads once and serves every later job."""
    global _cache
    with _cache_lock:
        if _cache is None:
            from bedrock_local.engine.model_cache import ModelCache
            _cache = ModelCache()
        return _cache


def chunk_records() -> int:
    import torch
    return 512 if torch.cuda.is_available() else 64


class OversizedLine(bytes):
    """The start of an input line longer than the record limit (its first `limit` bytes) and its size."""
    size: int
    limit: int
    _RECORD_ID = re.compile(rb'"recordId"\s*:\s*"((?:[^"\\]|\\.){1,1000})"')

    @classmethod
    def skip_rest(cls, start: bytes, handle, limit: int) -> "OversizedLine":
        size = len(start)
        while chunk := handle.readline(1024 * 1024):  # the rest of the line, a piece at a time
            size += len(chunk)
            if chunk.endswith(b"\n"):
                size -= 1
                break
        line = cls(start)
        line.size, line.limit = size, limit
        return line

    def record_id(self) -> str | None:
        """The line's recordId when its start shows one (the output line keeps it, as for any error)."""
        found = self._RECORD_ID.search(self[:65536])
        try:
            return json.loads(b'"' + found.group(1) + b'"') if found else None
        except ValueError:
            return None


def error_line(record: dict, code: int, message: str) -> dict:
    return {"recordId": record.get("recordId"), "modelInput": record.get("modelInput"),
            "error": {"errorCode": code, "errorMessage": message}}


class RecordRunner:
    """Turns a chunk of input records into output lines with one model, counting tokens. Converse
    records use the Converse body; InvokeModel records the body format of the model's provider
    (engine/formats/: Meta Llama, Anthropic Messages, Titan, Mistral, Cohere Embed, ...). An executor
    builds it (jobs/executors/): `RecordRunner(settings, objects, source, invocation_type)`."""

    def __init__(self, settings, objects, source: ModelSource, invocation_type: str):
        self.kind = source.kind
        self.invocation_type = invocation_type
        self.body_format = body_format(source)
        self.model_id = source.foundation_model_id or source.reference
        self.model = load_engine(source, settings, objects,
                                 lambda path, adapters=False: (
                                     model_cache().text_generator(path, engine=settings.engine,
                                                                  kv_cache_gib=settings.vllm_kv_cache_gib,
                                                                  adapters=adapters)
                                     if source.kind == KIND_TEXT else model_cache().embedder(path)))
        # optional engine hooks: a look at each record before its chunk runs (it may fail the record
        # with a ModelCallError or end the job with a JobSignal), and the records per chunk it prefers
        self.check_record = getattr(self.model, "check_record", None)
        self.records_per_chunk = getattr(self.model, "records_per_chunk", None)
        # an engine that takes records as its slots free (vllm_batch.VllmGenerator) streams them (`stream`)
        self.streams = source.kind == KIND_TEXT and hasattr(self.model, "stream")

    def chunk_size(self) -> int:
        return self.records_per_chunk or chunk_records()

    def _parse(self, record: dict):
        from bedrock_local.engine import formats

        if self.invocation_type == "Converse":
            return formats.parse_converse_body(record["modelInput"])
        return formats.parse_invoke(self.body_format, record["modelInput"])

    def _prepare(self, number: int, record: dict):
        """Record `number` of the job (from 1) as a parsed request, or its error line (a dict); the
        engine's JobSignal passes through (the job ends right before this record)."""
        from bedrock_local.engine import formats

        refused = None
        if self.check_record is not None:
            try:
                self.check_record(number, record)
            except ModelCallError as exc:
                refused = exc
        if "_error" in record:  # the line changed since validation and no longer parses
            return error_line(record, 400, record.pop("_error"))
        if refused is not None:
            return error_line(record, refused.status, refused.message)
        try:
            return self._parse(record)
        except formats.FormatError as exc:
            return error_line(record, 400, str(exc))

    def run(self, records: list[dict], seed: int, start: int = 0) -> tuple[list[tuple[dict, int, int]], JobSignal | None]:
        """Output lines of `records`, with their input and output tokens; `start` is the number of
        records of the job before them. When the model ends the job at a record (a JobSignal), the
        lines of the records before it, and that signal."""
        from bedrock_local.engine import formats

        parsed, lines, ending = [], [], None
        for index, record in enumerate(records):
            try:
                prepared = self._prepare(start + index + 1, record)
            except JobSignal as signal:
                ending = signal
                break
            if isinstance(prepared, dict):
                lines.append((prepared, 0, 0))
            else:
                lines.append(None)
                parsed.append((index, prepared))
        # what the model computes: one TextRequest per text record, every EmbeddingRequest of every
        # embedding record (a Cohere record holds many texts)
        work = []
        for _, request in parsed:
            if isinstance(request, formats.InvokeRequest):
                work.extend([request.text] if request.text is not None else request.embeddings)
            else:
                work.append(request)
        try:
            results = (self.model.generate(work, seed=seed) if self.kind == KIND_TEXT else self.model.embed(work))
        except Exception as exc:  # the model failed on this chunk: its records become error lines
            log.error("model failed on a chunk: %s", traceback.format_exc())
            results = [exc] * len(work)
        position = 0
        for index, request in parsed:
            count = len(request.embeddings) if getattr(request, "embeddings", None) is not None else 1
            mine, position = results[position:position + count], position + count
            lines[index] = self._output_line(records[index], request, mine)
        return lines, ending

    def stream(self, records, seed: int, start: int = 0):
        """The streamed counterpart of `run` (engines with `stream`): records are pulled from the
        iterator `records` and prepared as the engine has room for them (`start`: the number of records
        of the job before them); yields ([(output line, input tokens, output tokens), ...], None) each
        time a record finishes, with the lines that became writable in input order (none while an
        earlier record still runs), and last ([], signal) when the model ended the job at a record (the
        records before it all written). Closing it aborts what the engine still runs."""
        from bedrock_local.engine import formats

        held: dict[int, tuple[dict, object]] = {}  # records in the engine: position -> (record, parsed request)
        ready: dict[int, tuple[dict, int, int]] = {}  # finished lines waiting for an earlier record
        written, signal = 0, None

        def requests():
            nonlocal signal
            for position, record in enumerate(records):
                try:
                    prepared = self._prepare(start + position + 1, record)
                except JobSignal as ending:  # the records before this one finish, then the job ends
                    signal = ending
                    return
                if isinstance(prepared, dict):
                    yield position, _Line(prepared)
                    continue
                held[position] = (record, prepared)
                text = prepared.text if isinstance(prepared, formats.InvokeRequest) else prepared
                yield position, (text if text is not None else
                                 formats.FormatError("this model generates text; the record asks for embeddings"))

        results = self.model.stream(requests(), seed=seed)
        try:
            for position, result in results:
                if isinstance(result, _Line):
                    ready[position] = (result.line, 0, 0)
                else:
                    record, request = held.pop(position)
                    ready[position] = self._output_line(record, request, [result])
                done = []
                while written in ready:
                    done.append(ready.pop(written))
                    written += 1
                yield done, None
        finally:
            results.close()  # (a consumer that stopped early: vLLM aborts what still runs)
        if signal is not None:
            yield [], signal

    def _output_line(self, record: dict, request, mine: list) -> tuple[dict, int, int]:
        """The output line of `record` (parsed as `request`) from the model's results for it (or the
        exceptions that refused them), with its input and output tokens."""
        from bedrock_local.engine import formats

        problem = next((r for r in mine if isinstance(r, Exception)), None)
        if isinstance(problem, formats.FormatError):
            return error_line(record, 400, str(problem)), 0, 0
        if isinstance(problem, ModelCallError):
            return error_line(record, problem.status, problem.message), 0, 0
        if problem is not None:
            return error_line(record, 500, f"The model failed on this record: {problem}"), 0, 0
        if not isinstance(request, formats.InvokeRequest):
            output = formats.render_converse_response(mine[0])
            tokens = (mine[0].input_tokens, mine[0].output_tokens)
        elif request.text is not None:
            output = formats.render_invoke(request, mine[0], model_id=self.model_id)
            tokens = (mine[0].input_tokens, mine[0].output_tokens)
        else:
            output = formats.render_invoke(request, mine, model_id=self.model_id)
            tokens = (sum(r.input_tokens for r in mine), 0)
        return {"recordId": record["recordId"], "modelInput": record["modelInput"], "modelOutput": output}, *tokens


class _Line(Exception):
    """A record's error line made before the model saw it, passed through the engine's stream in turn
    (vllm_batch.VllmGenerator.stream hands back Exception values as they are)."""

    def __init__(self, line: dict):
        super().__init__(line["error"]["errorMessage"])
        self.line = line


def _chunks(runner, records, seed: int, start: int):
    """`RecordRunner.stream`'s shape over a runner that takes chunks (`run`): one group of lines per
    chunk of runner.chunk_size() records, with the model's JobSignal if it ended the job at a record of
    that chunk, or "done" with the last chunk (the next one is read before the group is handed on, so
    a job whose records are all written ends done even if a Stop arrives meanwhile)."""
    size = runner.chunk_size()
    chunk = list(itertools.islice(records, size))
    while chunk:
        done, signal = runner.run(chunk, seed, start)
        if signal is not None:
            yield done, signal
            return
        start += len(chunk)
        chunk = list(itertools.islice(records, size))
        yield done, (None if chunk else "done")


class _Counting:
    """A binary stream's readline that counts the bytes read (the offset of the next line)."""

    def __init__(self, handle, position: int = 0):
        self.handle, self.position = handle, position

    def readline(self, limit: int = -1) -> bytes:
        data = self.handle.readline(limit)
        self.position += len(data)
        return data


def open_at(objects, loc: S3Location, offset: int):
    """A binary stream of the object from byte `offset` (a ranged GET on an S3 endpoint)."""
    if offset and hasattr(objects, "client"):  # storage/s3.py S3Store
        from bedrock_local.storage.s3 import _Body
        try:
            body = objects.client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={offset}-")["Body"]
        except Exception as exc:
            raise StorageError(f"could not read {loc.uri} from byte {offset}: {exc}") from exc
        return io.BufferedReader(_Body(body), buffer_size=1024 * 1024)
    handle = objects.open_read(loc)
    if offset:
        if handle.seekable():
            handle.seek(offset)
        else:
            left = offset
            while left > 0 and (piece := handle.read(min(left, 1024 * 1024))):
                left -= len(piece)
    return handle


@dataclass(frozen=True)
class JobInfo:
    """What processing a job (or a shard of it) reads from its resource."""

    files: list[dict]
    root: S3Location
    deadline: datetime.datetime
    source: ModelSource
    invocation_type: str
    seed: int
    shards: list[dict] | None  # the shard plan, for a job of more than one shard
    parts: S3Location  # where shards write their part objects


def _zero_counts() -> dict:
    return {name: 0 for name in COUNT_NAMES}


def _sum_counts(rows) -> dict:
    counts = _zero_counts()
    for row in rows:
        for name, value in ((row.checkpoint or {}).get("counts") or {}).items():
            if name in counts:
                counts[name] += value
    return counts


class BatchInferenceHandler(Handler):
    kind = "batch-inference"

    # ---- lifecycle -----------------------------------------------------------------------
    def run(self, ctx: JobContext) -> None:
        status = self._advance(ctx, {"Submitted": "Validating"}, check_expiry=True)
        if status is None:
            return
        if status == "Validating":
            files = self._validate(ctx)
            total = sum(f["records"] for f in files)
            with ctx.session() as session:
                job = ctx.resource(session)
                if job.status == "Stopping":  # a Stop arrived while the input was being validated
                    raise JobStopped()
                move(job, "Scheduled", totalRecordCount=total, _files=files, _shardRecords=ctx.settings.batch_shard_records,
                     **{name: 0 for name in COUNT_NAMES[:3]})
        status = self._advance(ctx, {"Scheduled": "InProgress"}, check_expiry=True)
        if status is None:
            return
        if status == "Stopping":
            raise JobStopped()
        ctx.check()
        try:
            counts = self._process(ctx)
        except TimedOut as timed_out:
            counts = ctx.checkpoint.get("counts", {})
            with ctx.session() as session:
                job = ctx.resource(session)
                left = job.body.get("totalRecordCount", 0) - counts.get("processedRecordCount", 0)
                if job.status == "Stopping":  # stopped and timed out at once: the user's Stop wins
                    self._finish(ctx, job, "Stopped", counts, "The job was stopped.")
                    return
                note = f" {timed_out}" if str(timed_out) else ""  # a timeout its model asked for says so
                self._finish(ctx, job, "PartiallyCompleted", counts,
                             f"The job reached its timeout of {job.body['timeoutDurationInHours']} hours "
                             f"with {left} records not processed.{note}")
            return
        with ctx.session() as session:
            job = ctx.resource(session)
            if job.status == "Stopping":  # every record finished as the stop arrived
                self._finish(ctx, job, "Stopped", counts, "The job was stopped.")
            else:
                self._finish(ctx, job, "Completed", counts)

    def _advance(self, ctx: JobContext, moves: dict[str, str], check_expiry: bool) -> str | None:
        """Make the next status move; None when the job ended here (it expired before it started)."""
        with ctx.session() as session:
            job = ctx.resource(session)
            if check_expiry and job.status in moves and utcnow() > self._deadline(job):
                move(job, "Expired", endTime=utcnow().isoformat(),
                     message="The job did not start before its expiration time.")
                return None
            if job.status in moves:
                move(job, moves[job.status])
            return job.status

    @staticmethod
    def _deadline(job: Resource) -> datetime.datetime:
        return datetime.datetime.fromisoformat(job.body["jobExpirationTime"])

    def _finish(self, ctx: JobContext, job: Resource, status: str, counts: dict, message: str | None = None) -> None:
        manifest = {"totalRecordCount": job.body.get("totalRecordCount", 0),
                    **{name: counts.get(name, 0) for name in COUNT_NAMES}}
        try:
            ctx.objects.put_bytes(self._output_root(job).join("manifest.json.out"), json.dumps(manifest).encode())
        except StorageError as exc:
            status, message = "Failed", f"The output cannot be written to {self._output_root(job).uri}: {exc}"
        move(job, status, endTime=utcnow().isoformat(), message=message,
             **{name: counts.get(name, 0) for name in COUNT_NAMES[:3]})

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", endTime=utcnow().isoformat(), message=message[:2048])

    def stopped(self, ctx: JobContext, session, resource: Resource) -> None:
        counts = ctx.checkpoint.get("counts", {})
        if resource.status != "Stopping":
            move(resource, "Stopping")
        note = ctx.checkpoint.get("stopNote")  # its model asked for the Stop, saying why (in memory only)
        self._finish(ctx, resource, "Stopped", counts, "The job was stopped." + (f" {note}" if note else ""))

    # ---- validation ----------------------------------------------------------------------
    def _validate(self, ctx: JobContext) -> list[dict]:
        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            uri = job.body["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
            output = self._output_root(job)
        if not ctx.objects.bucket_exists(output.bucket):
            raise ValidationFailed(f"The output bucket '{output.bucket}' of "
                                   f"{job.body['outputDataConfig']['s3OutputDataConfig']['s3Uri']} does not exist.")
        files = self._input_files(ctx, uri)
        try:  # sizes first: a job past them fails before a line is read
            quotas.check_input_sizes(ctx.settings, [(f["uri"], f.pop("size")) for f in files],
                                     "batch-input-file-size", "batch-job-size")
        except quotas.QuotaExceeded as exc:
            raise ValidationFailed(str(exc))
        settings, total = ctx.settings, 0
        size = settings.batch_shard_records
        for entry in files:
            ctx.check()
            count, entry["shardStarts"] = 0, []
            for number, raw, position in self._lines(ctx, S3Location.parse(entry["uri"])):
                if number % VALIDATION_CHECK_LINES == 0:  # honour a Stop during a long validation
                    ctx.check()
                if not raw.strip():
                    continue
                where = f"Line {number} of {entry['uri']}"
                if not isinstance(raw, OversizedLine):  # an oversized one is a record whose output is an error line
                    try:
                        record = json.loads(raw)
                    except UnicodeDecodeError:
                        raise ValidationFailed(f"{where} is not valid UTF-8.")
                    except ValueError as exc:
                        raise ValidationFailed(f"{where} is not valid JSON: {exc}.")
                    if not isinstance(record, dict) or not isinstance(record.get("recordId"), str) \
                            or not isinstance(record.get("modelInput"), dict):
                        raise ValidationFailed(f'{where} must be a JSON object with a string "recordId" and an '
                                               f'object "modelInput".')
                if (total + count) % size == 0:  # the first record of a shard: where its worker starts reading
                    entry["shardStarts"].append([total + count, position, number - 1])
                count += 1
                if count > settings.batch_max_records_per_file:
                    most = settings.batch_max_records_per_file
                    raise ValidationFailed(f"{entry['uri']} has more than {most} records, past the quota "
                                           f"{quotas.describe('batch-records-per-file', most)}.")
            entry["records"] = count
            total += count
        if total > settings.batch_max_records:
            raise ValidationFailed(f"The input has {total} records, past the quota "
                                   f"{quotas.describe('batch-records-per-job', settings.batch_max_records)}.")
        if total < settings.batch_min_records:
            raise ValidationFailed(f"The input has {total} records; a batch inference job needs at least "
                                   f"{settings.batch_min_records} (the quota "
                                   f"{quotas.describe('batch-min-records', settings.batch_min_records)}).")
        return files

    def _input_files(self, ctx: JobContext, uri: str) -> list[dict]:
        loc = S3Location.parse(uri)
        try:
            if not loc.is_prefix and ctx.objects.exists(loc) and not self._has_children(ctx, loc):
                size = next((size for found, size in ctx.objects.list_objects(loc) if found.key == loc.key), 0)
                return [{"uri": loc.uri, "name": loc.key.rsplit("/", 1)[-1], "records": 0, "size": size}]
            prefix = loc if loc.is_prefix else S3Location(loc.bucket, loc.key + "/")
            found = [(l, size) for l, size in ctx.objects.list_objects(prefix) if l.key.endswith(".jsonl")]
        except StorageError as exc:
            raise ValidationFailed(f"The input {uri} cannot be read: {exc}")
        if not found:
            raise ValidationFailed(f"No .jsonl input files were found at {uri}.")
        return [{"uri": l.uri, "name": l.key[len(prefix.key):], "records": 0, "size": size} for l, size in found]

    @staticmethod
    def _has_children(ctx: JobContext, loc: S3Location) -> bool:
        return any(True for _ in ctx.objects.list_objects(S3Location(loc.bucket, loc.key + "/")))

    @staticmethod
    def _lines(ctx, loc: S3Location, offset: int = 0, line: int = 0):
        """(line number, bytes, byte offset) of each line from byte `offset` (where line `line` + 1
        starts); a line longer than --batch-max-record-bytes comes as an OversizedLine (its start and
        its size), never read into memory whole."""
        limit = ctx.settings.batch_max_record_bytes
        with open_at(ctx.objects, loc, offset) as stream:
            handle = _Counting(stream, offset)
            number = line
            while True:
                position = handle.position
                raw = handle.readline(limit + 1)
                if not raw:
                    break
                number += 1
                if len(raw) > limit and not raw.endswith(b"\n"):
                    raw = OversizedLine.skip_rest(raw, handle, limit)
                yield number, raw, position

    # ---- processing ----------------------------------------------------------------------
    @staticmethod
    def _output_root(job: Resource) -> S3Location:
        out = S3Location.parse(job.body["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])
        base = out if out.is_prefix else S3Location(out.bucket, out.key + "/")
        return base.join(job.resource_id + "/")

    def _job_info(self, settings, job: Resource) -> JobInfo:
        files, total = job.body["_files"], job.body.get("totalRecordCount", 0)
        size = job.body.get("_shardRecords")  # None: validated before jobs were split into shards
        plan = None
        if size and total > size:
            starts = [[first, index, offset, line] for index, entry in enumerate(files)
                      for first, offset, line in entry.get("shardStarts", [])]
            plan = shards.plan(total, size, starts)
        return JobInfo(files=files, root=self._output_root(job), deadline=self._deadline(job),
                       source=ModelSource.from_json(job.body["_model"]),
                       invocation_type=job.body.get("modelInvocationType", "InvokeModel"),
                       seed=int(job.resource_id, 36) % (2 ** 31), shards=plan,
                       parts=S3Location(settings.model_bucket, f"batch-shards/{job.account}/{job.resource_id}/"))

    def _runner(self, ctx, info: JobInfo):
        """The RecordRunner of a job or of one of its shards, made by the worker's executor."""
        return ctx.executor.record_runner(ctx, RecordRunner, info.source, info.invocation_type)

    def _process(self, ctx: JobContext) -> dict:
        with ctx.db.read_session() as session:
            info = self._job_info(ctx.settings, ctx.resource(session))
        if info.shards and "file" not in ctx.checkpoint:  # (a checkpoint of the single-shard loop keeps it)
            return self._coordinate(ctx, info)
        state = ctx.checkpoint or {"file": 0, "done": 0, "counts": _zero_counts()}
        counts = dict(state["counts"])
        runner = self._runner(ctx, info)
        for index in range(state["file"], len(info.files)):
            entry = info.files[index]
            out = info.root.join(*(entry["name"] + ".out").split("/"))
            lines = self._kept_lines(ctx, out, state["done"] if index == state["file"] else 0)
            records = self._records(ctx, S3Location.parse(entry["uri"]), skip=len(lines))
            progress = {"file": index, "counts": counts}
            ending = self._write(ctx, runner, records, lines, counts, info,
                                 first=counts["processedRecordCount"] - len(lines),
                                 save=lambda: self._flush(ctx, out, lines, {**progress, "done": len(lines)}))
            if ending == "stop":
                ctx.check()  # JobStopped, or LeaseLost
            elif ending == "timeout":
                raise TimedOut()
            elif isinstance(ending, JobSignal):
                log.info("job %s: its model ends it (%s) after %d records", ctx.claim.job_pk, ending.action,
                         counts["processedRecordCount"])
                self._end_as(ctx, ending.action, ending.message)
            if not lines:
                ctx.objects.put_bytes(out, b"")
            self._record_progress(ctx, {"file": index + 1, "done": 0, "counts": counts})
        return counts

    def _write(self, ctx, runner, records, lines: list[str], counts: dict, info: JobInfo, first: int, save):
        """The record loop of a job and of a shard: run `records` through `runner` (streamed through an
        engine that takes records as its slots free, else a chunk at a time), appending their output
        lines to `lines` (which holds the lines kept from before; lines[0] is record `first` of the job)
        and counting them into `counts`; `save()` writes `lines` to their
        object and checkpoints them. Answers why it ended: "done" (no record left), "stop" (a Stop or a
        lost lease: ctx.should_stop()), "timeout" (the job's deadline passed) or the model's JobSignal;
        what is finished is saved before it answers."""
        # The whole output object is rewritten at each save (S3 has no append): save after every
        # chunk (every finished record when streaming) while that is cheap, but never spend more than
        # 1/FLUSH_SHARE of the time on it. Only lines appended in input order are saved, so a resumed
        # job skips exactly the records its checkpoint vouches for.
        groups = (runner.stream(records, info.seed, first + len(lines)) if getattr(runner, "streams", False)
                  else _chunks(runner, records, info.seed, first + len(lines)))
        last_flush, flush_cost, pending = time.monotonic(), 0.0, False
        with contextlib.closing(groups):  # an early end closes the stream: the engine aborts what runs
            while True:
                ending = "stop" if ctx.should_stop() else "timeout" if utcnow() > info.deadline else None
                if ending is None:
                    done, signal = next(groups, ([], "done"))
                    ending = signal
                    for line, tokens_in, tokens_out in done:
                        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
                        counts["processedRecordCount"] += 1
                        counts["errorRecordCount" if "error" in line else "successRecordCount"] += 1
                        counts["inputTokenCount"] += tokens_in
                        counts["outputTokenCount"] += tokens_out
                    pending = pending or bool(done)
                if pending and (ending is not None or time.monotonic() - last_flush >= FLUSH_SHARE * flush_cost):
                    started = time.monotonic()
                    save()
                    last_flush, pending = time.monotonic(), False
                    flush_cost = last_flush - started
                if ending is not None:
                    return ending

    def _end_as(self, ctx: JobContext, action: str, message: str = ""):
        """End the job early as `action` says, through the path of its real cause: "stopped" (the
        user's Stop), "timeout" (`message`: a note on why), "fail" (with `message`), or "stop" (its
        model asked for a Stop: as a StopModelInvocationJob would, Stopping then Stopped, with
        `message` noted)."""
        if action == "stopped":
            raise JobStopped()
        if action == "timeout":
            raise TimedOut(message)
        if action == "fail":
            raise JobFailed(message)
        with ctx.session() as session:
            job = ctx.resource(session)
            if job.status == "InProgress":
                move(job, "Stopping")
        ctx.checkpoint = {**ctx.checkpoint, "stopNote": message}
        raise JobStopped()

    # ---- a job of several shards -----------------------------------------------------------
    def _coordinate(self, ctx: JobContext, info: JobInfo) -> dict:
        """The coordinator's loop: run shards of this job while any is claimable, sum the shards'
        counts into the job's, and end the job once every shard is done (or a Stop, the timeout or a
        shard's fault ends it)."""
        if ctx.checkpoint.get("merged"):  # the last coordinator merged the parts, then was lost
            return self._end_merged(ctx, ctx.checkpoint)
        with ctx.session() as session:
            shards.ensure(session, ctx.claim.job_pk, info.shards)
        while True:
            ctx.check_lease()
            rows = shards.of_job(ctx.db, ctx.claim.job_pk)
            self._shard_progress(ctx, rows)
            fault = next((row.fault for row in rows if row.fault), None)
            if fault is not None:
                return self._end_shards(ctx, info, fault)
            if ctx.stop_requested():
                return self._end_shards(ctx, info, {"action": "stopped"})
            if utcnow() > info.deadline:
                return self._end_shards(ctx, info, {"action": "timeout", "message": ""})
            if all(row.state == "done" for row in rows):
                return self._end_shards(ctx, info, {"action": "complete"})
            claim = lease.claim_shard(ctx.db, ctx.worker_id, ctx.settings.lease_seconds, ctx.claim.job_pk)
            if claim is not None:
                self._run_claimed(ctx.shard(claim), info, on_flush=lambda: self._shard_progress(ctx))
                continue
            ctx.wait_for_stop(ctx.settings.poll_seconds)  # other workers run the shards left

    def _shard_progress(self, ctx: JobContext, rows=None) -> None:
        """The job's counts (Get, the checkpoint) become the sum of its shards' when they changed."""
        try:
            counts = _sum_counts(rows if rows is not None else shards.of_job(ctx.db, ctx.claim.job_pk))
            if counts != ctx.checkpoint.get("counts"):
                self._record_progress(ctx, {"sharded": True, "counts": counts})
        except LeaseLost:  # the coordinator's loop finds out and leaves the job to its new owner
            pass

    def _end_shards(self, ctx: JobContext, info: JobInfo, ending: dict) -> dict:
        """No shard starts again; once none runs, the parts are merged into the outputs and the job
        ends as `ending` says (complete, stopped, timeout, or a shard's fault)."""
        with ctx.session() as session:
            shards.halt(session, ctx.claim.job_pk)
        while True:  # running shards write what they finished and give up at their next chunk
            ctx.check_lease()
            rows = shards.of_job(ctx.db, ctx.claim.job_pk)
            if not any(shards.busy(row) for row in rows):
                break
            time.sleep(min(0.2, ctx.settings.poll_seconds))
        counts = _sum_counts(rows)
        try:
            self._merge(ctx, info, rows, complete=ending["action"] == "complete")
        except StorageError as exc:
            raise RuntimeError(f"The output cannot be written to {info.root.uri}: {exc}") from exc
        state = {"sharded": True, "counts": counts, "merged": True, "ending": ending}
        self._record_progress(ctx, state)
        try:
            ctx.objects.delete_prefix(info.parts)
        except StorageError as exc:
            log.warning("job %s: its shard parts under %s were not deleted: %s", ctx.claim.job_pk, info.parts.uri, exc)
        return self._end_merged(ctx, state)

    def _end_merged(self, ctx: JobContext, state: dict) -> dict:
        ending = state["ending"]
        if ending["action"] != "complete":
            self._end_as(ctx, ending["action"], ending.get("message", ""))
        return state["counts"]

    def _merge(self, ctx: JobContext, info: JobInfo, rows, complete: bool) -> None:
        """Write each input file's `.out` from the shards' parts, in record order: the lines each
        shard's checkpoint vouches for. With `complete`, every file (an empty one gets an empty .out);
        otherwise the files that have a line."""
        def merged():
            for row in rows:
                state = row.checkpoint or {}
                done = state.get("done", 0)
                if not done:
                    continue
                part = S3Location.parse(state["part"])
                lines = ctx.objects.get_bytes(part).split(b"\n")[:-1]
                if len(lines) < done:
                    raise RuntimeError(f"The part {part.uri} of shard {row.number} holds {len(lines)} lines, "
                                       f"fewer than the {done} its checkpoint records.")
                for offset in range(done):
                    yield row.first + offset, lines[offset]

        lines = merged()
        pending, first = next(lines, None), 0
        for entry in info.files:
            ctx.check_lease()
            end, out = first + entry["records"], []
            while pending is not None and pending[0] < end:
                out.append(pending[1])
                out.append(b"\n")
                pending = next(lines, None)
            if out or complete:
                ctx.objects.put_bytes(info.root.join(*(entry["name"] + ".out").split("/")), b"".join(out))
            first = end

    def run_shard(self, ctx: ShardContext) -> None:
        """Run a shard that an idle worker claimed (processes/worker.py)."""
        with ctx.db.read_session() as session:
            job = session.get(Resource, ctx.claim.resource_pk)
            if job is None:  # deleted: the shard rows go with it
                return
            info = self._job_info(ctx.settings, job)
        self._run_claimed(ctx, info, on_flush=lambda: None)

    def _run_claimed(self, ctx: ShardContext, info: JobInfo, on_flush) -> None:
        """Run one claimed shard, its lease renewed meanwhile (for its job's coordinator or any idle
        worker); a failure ends the job, as it would on one shard."""
        claim = ctx.claim
        with shards.running(ctx):
            try:
                self._shard(ctx, info, on_flush)
            except shards.ShardLeaseLost:
                log.warning("shard %s of job %s: lease lost, leaving it to its new owner", claim.number, claim.job_pk)
            except Exception as exc:
                log.error("shard %s of job %s failed: %s", claim.number, claim.job_pk, traceback.format_exc())
                with contextlib.suppress(shards.ShardLeaseLost):
                    ctx.save(self._shard_state(claim), state="pending",
                             fault={"action": "fail", "message": str(exc) or exc.__class__.__name__})

    @staticmethod
    def _shard_state(claim) -> dict:
        state = dict(claim.checkpoint or {"done": 0, "counts": _zero_counts()})
        state.pop(lease.SAVED_IN_ATTEMPT, None)
        return state

    def _shard(self, ctx: ShardContext, info: JobInfo, on_flush) -> None:
        claim = ctx.claim
        interrupted = too_many_interruptions(claim)
        if interrupted:
            ctx.save(self._shard_state(claim), state="pending", fault={"action": "fail", "message": (
                f"Records {claim.first + 1} to {claim.first + claim.count} of the job were interrupted "
                f"{interrupted} times in a row (their worker was lost: killed or crashed while running them) "
                f"and were not retried again.")})
            return
        state = self._shard_state(claim)
        counts = dict(state["counts"])
        if claim.attempts > 1:
            log.info("shard %s of job %s: resuming at record %d of %d (attempt %d)", claim.number, claim.job_pk,
                     state["done"], claim.count, claim.attempts)
        runner = self._runner(ctx, info)
        kept = S3Location.parse(state["part"]) if state.get("part") else None
        lines = self._kept_lines(ctx, kept, state["done"]) if kept else []
        # a part object of this attempt's own: a worker that lost the shard cannot write over its successor's
        part = info.parts.join(f"{claim.number:06d}-{claim.attempts}.jsonl")
        records = itertools.islice(self._shard_records(ctx, info.files, claim.start, len(lines)),
                                   claim.count - len(lines))
        saved = state  # the last checkpoint: the lines its part holds

        def save() -> None:
            nonlocal saved
            if ctx.lost():
                raise shards.ShardLeaseLost()
            ctx.objects.put_bytes(part, "".join(lines).encode())
            saved = {"done": len(lines), "counts": dict(counts), "part": part.uri}
            ctx.save(saved)
            on_flush()

        ending = self._write(ctx, runner, records, lines, counts, info, first=claim.first, save=save)
        if ending == "done":  # every record of the shard is written (saved by the loop)
            ctx.save(saved, state="done")
            on_flush()
            return
        if isinstance(ending, JobSignal):  # what is finished is kept, then the job ends as the model says
            log.info("job %s: its model ends it (%s) at record %d (shard %d)", claim.job_pk, ending.action,
                     claim.first + len(lines), claim.number)
            ctx.save(saved, state="pending", fault=ending.to_json())
            self._halt(ctx)
            return
        # Stop, halt or the timeout: what is finished is kept; the coordinator ends the job
        if utcnow() > info.deadline:
            self._halt(ctx)
        if not ctx.lost():
            ctx.save(saved, state="pending")

    @staticmethod
    def _halt(ctx: ShardContext) -> None:
        with ctx.db.session() as session, session.begin():
            shards.halt(session, ctx.claim.job_pk)

    def _shard_records(self, ctx, files: list[dict], start: dict, skip: int):
        """The records from a shard's first one on (its first `skip` left out), across input files."""
        index, offset, line = start["file"], start["offset"], start["line"]
        seen = 0
        while index < len(files):
            for record in self._records(ctx, S3Location.parse(files[index]["uri"]), 0, offset, line):
                seen += 1
                if seen > skip:
                    yield record
            index, offset, line = index + 1, 0, 0

    def _flush(self, ctx: JobContext, out: S3Location, lines: list[str], state: dict) -> None:
        ctx.check_lease()
        ctx.objects.put_bytes(out, "".join(lines).encode())
        self._record_progress(ctx, state)

    def _record_progress(self, ctx: JobContext, state: dict) -> None:
        ctx.save_checkpoint(state)
        ctx.progress = dict(state["counts"])
        with ctx.session() as session:
            job = ctx.resource(session)
            if job.status == "InProgress":
                update_body(job, **{name: state["counts"][name] for name in COUNT_NAMES[:3]})

    def _kept_lines(self, ctx: JobContext, out: S3Location, done: int) -> list[str]:
        """The output lines a checkpoint vouches for (lines flushed after it are produced again)."""
        if done == 0:
            return []
        try:  # split at \n only: str.splitlines() also splits at U+2028, U+0085, ... that JSON leaves raw
            existing = ctx.objects.get_bytes(out).split(b"\n")[:-1]  # whole lines only
        except StorageError:
            existing = []
        return [line.decode("utf-8") + "\n" for line in existing[:done]]

    def _records(self, ctx, loc: S3Location, skip: int, offset: int = 0, line: int = 0):
        seen = 0
        for number, raw, _ in self._lines(ctx, loc, offset, line):
            if not raw.strip():
                continue
            seen += 1
            if seen <= skip:
                continue
            if isinstance(raw, OversizedLine):
                yield {"recordId": raw.record_id(), "modelInput": None,
                       "_error": f"Line {number} is {raw.size} bytes, longer than the {raw.limit} bytes a record "
                                 f"may have (--batch-max-record-bytes)."}
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                record = {"recordId": None, "modelInput": None, "_error": f"Line {number} is not valid JSON: {exc}"}
            yield record
