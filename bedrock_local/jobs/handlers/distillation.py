"""The teacher's half of a DISTILLATION customization job: the prompts (from the training JSONL, or
from invocation logs filtered by their request metadata), the teacher's answers to them through the
batch inference path (batch_inference.RecordRunner, Converse bodies, maxResponseLengthForInference as
maxTokens, greedy), and the data the student is then fine-tuned on (customization.py trains it).

Where things go (docs/distillation.md):
- under the job's output folder `model-customization-job-<id>/distillation_artifacts/`:
  `prompt_insights.jsonl` (every input record, ACCEPTED or REJECTED with the reason) and
  `synthetic_data.jsonl` (bedrock-conversation-2024 records: each prompt with the teacher's answer,
  or the response a labelled record or a log already had; exactly what the student trains on);
- while the teacher works, in the model bucket under `<account>/<region>/customization-jobs/<id>/
  distillation/`: `prompts.jsonl` (the accepted prompts, fixed once, so that a resumed job answers the
  same ones even when more logs arrived since) and `answers/part-<n>.jsonl` (PART_RECORDS prompts
  each). A job taken back after a crash keeps every part already written and answers only the rest.
  Once synthetic_data.jsonl is written, these are deleted; its presence means the teacher is done."""

import gzip
import json
import logging
from dataclasses import dataclass

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.artifacts import jsonl_objects
from bedrock_local.jobs.handlers.batch_inference import RecordRunner
from bedrock_local.jobs.model_sources import ModelSource
from bedrock_local.jobs.protocol import JobContext, JobStopped
from bedrock_local.storage import S3Location, StorageError

log = logging.getLogger("bedrock_local.distillation")

SCHEMA_VERSION = "bedrock-conversation-2024"
PART_RECORDS = 64  # prompts per answers part: the unit a resumed job keeps
MAX_PROMPTS = 15_000  # the user guide: at most 15K prompts or prompt-response pairs
MULTI_TURN_FORMATS = ("amazon-nova",)  # Nova students take multi-turn records; Meta and Anthropic one user turn
LOGGED_OPERATIONS = ("InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream")


class DistillationFailed(Exception):
    pass


@dataclass
class Prompt:
    """One accepted input record: its conversation (system, messages ending with a user turn, or with
    an assistant turn when the record is labelled) and where it came from."""

    source: str
    system: list[dict] | None
    messages: list[dict]

    @property
    def labelled(self) -> bool:
        return self.messages[-1]["role"] == "assistant"

    def to_json(self) -> dict:
        record = {"schemaVersion": SCHEMA_VERSION, "messages": self.messages}
        if self.system:
            record = {"schemaVersion": SCHEMA_VERSION, "system": self.system, "messages": self.messages}
        return record


class Rejected(Exception):
    """An input record that is not taken; str() says why (prompt insights)."""


# ---- locations ---------------------------------------------------------------------------------

def artifacts_root(output_root: S3Location) -> S3Location:
    return output_root.join("distillation_artifacts/")


def synthetic_data(output_root: S3Location) -> S3Location:
    return artifacts_root(output_root).join("synthetic_data.jsonl")


def work_root(model_bucket: str, account: str, region: str, job_id: str) -> S3Location:
    return S3Location(model_bucket, f"{account}/{region}/customization-jobs/{job_id}/distillation/")


# ---- records -----------------------------------------------------------------------------------

def _text_blocks(value, where: str) -> list[dict]:
    """Content blocks as text blocks only: other blocks (images, tools) are not distilled."""
    if isinstance(value, str):
        value = [{"text": value}]
    if not isinstance(value, list):
        raise Rejected(f"{where} must be a list of content blocks")
    texts = [{"text": block["text"]} for block in value if isinstance(block, dict) and isinstance(block.get("text"), str)]
    if not texts or not any(block["text"].strip() for block in texts):
        raise Rejected(f"{where} holds no text (distillation takes text-to-text records only)")
    return texts


def conversation(record, where: str, multi_turn: bool, *, schema: bool = True) -> tuple[list | None, list[dict]]:
    """(system, messages) of a bedrock-conversation-2024 record: a user turn first, turns alternating,
    one user turn (and its answer) unless the student takes multi-turn records."""
    if not isinstance(record, dict):
        raise Rejected(f"{where} must be a JSON object")
    if schema and record.get("schemaVersion") != SCHEMA_VERSION:
        raise Rejected(f"{where}.schemaVersion must be {SCHEMA_VERSION!r}, got {record.get('schemaVersion')!r}")
    system = _text_blocks(record["system"], f"{where}.system") if record.get("system") else None
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise Rejected(f"{where}.messages must hold at least one message")
    messages = []
    for index, message in enumerate(raw):
        here = f"{where}.messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise Rejected(f"{here}.role must be {expected!r} (turns alternate, starting with the user), got {role!r}")
        messages.append({"role": role, "content": _text_blocks(message.get("content"), f"{here}.content")})
    users = sum(1 for message in messages if message["role"] == "user")
    if users > 1 and not multi_turn:
        raise Rejected(f"{where}.messages holds {users} user turns; this student (like every Meta Llama and "
                       f"Anthropic model) takes single-turn prompts only")
    return system, messages


def read_prompt_file(ctx: JobContext, uri: str, multi_turn: bool, insights: list[dict]) -> list[Prompt]:
    """Option 1 of the user guide: .jsonl files of bedrock-conversation-2024 records (a file, or every
    .jsonl under a prefix)."""
    try:
        files = jsonl_objects(ctx.objects, S3Location.parse(uri))
    except StorageError as exc:
        raise DistillationFailed(f"The training data at {uri} cannot be read: {exc}")
    if not files:
        raise DistillationFailed(f"No .jsonl data was found at {uri}.")
    prompts = []
    for found in files:
        try:
            data = ctx.objects.get_bytes(found)
        except StorageError as exc:
            raise DistillationFailed(f"The training data {found.uri} cannot be read: {exc}")
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            source = f"{found.uri}:{number}"
            try:
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise Rejected(f"not valid JSON ({exc})")
                system, messages = conversation(record, "record", multi_turn)
            except Rejected as why:
                insights.append({"source": source, "status": "REJECTED", "reason": str(why)})
                continue
            insights.append({"source": source, "status": "ACCEPTED"})
            prompts.append(Prompt(source, system, messages))
    return prompts


# ---- invocation logs ---------------------------------------------------------------------------

def _metadata_matches(metadata: dict, rule: dict) -> bool:
    """One RequestMetadataBaseFilters: `equals` and `notEquals` (one key each), both when both given."""
    for key, value in (rule.get("equals") or {}).items():
        if metadata.get(key) != value:
            return False
    for key, value in (rule.get("notEquals") or {}).items():
        if metadata.get(key) == value:
            return False
    return True


def metadata_filter_matches(metadata: dict, filters: dict | None) -> bool:
    """requestMetadataFilters (a union): equals, notEquals, andAll or orAll of base filters."""
    if not filters:
        return True
    metadata = metadata or {}
    if filters.get("andAll"):
        return all(_metadata_matches(metadata, rule) for rule in filters["andAll"])
    if filters.get("orAll"):
        return any(_metadata_matches(metadata, rule) for rule in filters["orAll"])
    return _metadata_matches(metadata, filters)


def _foundation_of(model_id: str):
    """The catalog model a logged modelId names: an id, a foundation-model ARN or a system profile id."""
    model_id = model_id.split(":foundation-model/", 1)[-1]
    model = find_foundation_model(model_id)
    if model is None and "." in model_id:
        model = find_foundation_model(model_id.split(".", 1)[1])  # us.meta.llama3-... (a profile id)
    return model


def _invoke_text(body) -> str | None:
    """The answer text of an InvokeModel response body (or a stream chunk) of any text format."""
    if not isinstance(body, dict):
        return None
    for key in ("generation", "completion", "outputText"):
        if isinstance(body.get(key), str):
            return body[key]
    if isinstance(body.get("results"), list) and body["results"]:
        return _invoke_text(body["results"][0])
    if isinstance(body.get("outputs"), list) and body["outputs"]:
        return _invoke_text(body["outputs"][0]) or body["outputs"][0].get("text")
    if isinstance(body.get("choices"), list) and body["choices"]:
        choice = body["choices"][0]
        part = choice.get("message") or choice.get("delta") or {}
        return part.get("content") if isinstance(part.get("content"), str) else choice.get("text")
    if isinstance(body.get("content"), list):  # Anthropic Messages
        return "".join(block.get("text", "") for block in body["content"] if isinstance(block, dict))
    if isinstance(body.get("delta"), dict) and isinstance(body["delta"].get("text"), str):
        return body["delta"]["text"]
    if isinstance(body.get("output"), dict):  # Amazon Nova
        content = (body["output"].get("message") or {}).get("content") or []
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    if isinstance(body.get("contentBlockDelta"), dict):
        return (body["contentBlockDelta"].get("delta") or {}).get("text", "")
    if isinstance(body.get("text"), str):
        return body["text"]
    return None


def _logged_response(record: dict) -> str | None:
    operation, output = record.get("operation"), (record.get("output") or {}).get("outputBodyJson")
    if operation == "Converse":
        return _invoke_text(output)
    if isinstance(output, list):  # ConverseStream events, InvokeModelWithResponseStream chunks
        pieces = [_invoke_text(event) for event in output]
        return "".join(piece for piece in pieces if piece) or None
    return _invoke_text(output)


def _logged_prompt(record: dict, multi_turn: bool) -> tuple[list | None, list[dict]]:
    body = (record.get("input") or {}).get("inputBodyJson")
    if record.get("operation") in ("Converse", "ConverseStream"):
        system, messages = conversation(body, "input.inputBodyJson", multi_turn, schema=False)
        if messages[-1]["role"] != "user":
            raise Rejected("the logged request does not end with a user turn")
        return system, messages
    from bedrock_local.engine import formats

    model = _foundation_of(record.get("modelId") or "")
    if model is None:
        raise Rejected(f"the body of model {record.get('modelId')!r} cannot be read here (not a foundation model "
                       f"of this catalog)")
    try:
        request = formats.parse_invoke(model.body_format, body).text
    except formats.FormatError as exc:
        raise Rejected(f"the logged InvokeModel body does not parse as {model.body_format}: {exc}")
    if request is None:
        raise Rejected("the logged call is not a text generation")
    system = [{"text": request.system}] if request.system else None
    if request.messages:
        turns = {"messages": [{"role": m["role"], "content": [{"text": m["content"]}]} for m in request.messages]}
        return system, conversation(turns, "input.inputBodyJson", multi_turn, schema=False)[1]
    return system, [{"role": "user", "content": [{"text": request.prompt or ""}]}]


def read_invocation_logs(ctx: JobContext, config: dict, teacher_ids: set[str], multi_turn: bool,
                         insights: list[dict]) -> list[Prompt]:
    """Option 2 of the user guide: the model invocation log records under invocationLogSource.s3Uri
    (AWS's gzip'd JSON lines, as invocation logging writes them), filtered by requestMetadataFilters.
    usePromptResponse: the logged answer becomes the training target, and only records of the teacher
    count; otherwise the prompts of every model's records, which the teacher answers again."""
    uri = config["invocationLogSource"]["s3Uri"]
    use_response = bool(config.get("usePromptResponse"))
    loc = S3Location.parse(uri)
    prefix = loc if loc.is_prefix or not loc.key else S3Location(loc.bucket, loc.key + "/")
    try:
        objects = sorted((found for found, _ in ctx.objects.list_objects(prefix)
                          if found.key.endswith((".json.gz", ".json", ".jsonl"))), key=lambda found: found.key)
    except StorageError as exc:
        raise DistillationFailed(f"The invocation logs at {uri} cannot be read: {exc}")
    records = []
    for found in objects:
        try:
            data = ctx.objects.get_bytes(found)
            if found.key.endswith(".gz"):
                data = gzip.decompress(data)
        except (StorageError, OSError, EOFError) as exc:
            insights.append({"source": found.uri, "status": "REJECTED", "reason": f"the object cannot be read: {exc}"})
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if line.strip():
                records.append((f"{found.uri}:{number}", line))
    prompts = []
    for source, line in records:
        try:
            record = json.loads(line)
        except ValueError as exc:
            insights.append({"source": source, "status": "REJECTED", "reason": f"not valid JSON ({exc})"})
            continue
        if not isinstance(record, dict) or record.get("schemaType") != "ModelInvocationLog":
            insights.append({"source": source, "status": "REJECTED", "reason": "not a ModelInvocationLog record"})
            continue
        source = f"{source} (requestId {record.get('requestId')})"
        if not metadata_filter_matches(record.get("requestMetadata") or {}, config.get("requestMetadataFilters")):
            continue  # filtered out: not an input of this job at all
        try:
            if record.get("operation") not in LOGGED_OPERATIONS:
                raise Rejected(f"operation {record.get('operation')!r} is not a model invocation")
            system, messages = _logged_prompt(record, multi_turn)
            if use_response:
                model = _foundation_of(record.get("modelId") or "")
                if model is None or model.model_id not in teacher_ids:
                    raise Rejected(f"usePromptResponse takes the responses of the teacher model only; this record "
                                   f"is of {record.get('modelId')!r}")
                answer = _logged_response(record)
                if not answer or not answer.strip():
                    raise Rejected("the logged response holds no text")
                messages = [*messages, {"role": "assistant", "content": [{"text": answer}]}]
        except Rejected as why:
            insights.append({"source": source, "status": "REJECTED", "reason": str(why)})
            continue
        insights.append({"source": source, "status": "ACCEPTED"})
        prompts.append(Prompt(source, system, messages))
    return prompts


# ---- the teacher -------------------------------------------------------------------------------

def _jsonl(rows) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def _read_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


class Teacher:
    """Runs the teacher over the accepted prompts, a part at a time, through a batch RecordRunner
    made by the worker's executor (so a Ray cluster runs it as it runs batch jobs)."""

    def __init__(self, ctx: JobContext, source: ModelSource, max_tokens: int, should_stop):
        self.ctx, self.source, self.max_tokens, self.should_stop = ctx, source, max_tokens, should_stop
        self._runner = None

    def answer(self, prompts: list[dict], seed: int) -> list[tuple[str | None, str | None]]:
        """(answer, None) or (None, why it failed) per prompt."""
        if self._runner is None:
            self._runner = self.ctx.executor.record_runner(self.ctx, RecordRunner, self.source, "Converse")
        results = []
        size = self._runner.chunk_size()
        for start in range(0, len(prompts), size):
            if self.should_stop():
                raise JobStopped()
            chunk = []
            for offset, prompt in enumerate(prompts[start:start + size]):
                model_input = {"messages": prompt["messages"],
                               "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": 0}}
                if prompt.get("system"):
                    model_input["system"] = prompt["system"]
                chunk.append({"recordId": str(start + offset), "modelInput": model_input})
            lines, ending = self._runner.run(chunk, seed=seed, start=start)
            if ending is not None:
                raise DistillationFailed(f"The teacher model ended the work: {ending.message or ending.action}")
            for line, _, _ in lines:
                if "error" in line:
                    results.append((None, f"the teacher could not answer: {line['error'].get('errorMessage')}"))
                    continue
                content = ((line["modelOutput"].get("output") or {}).get("message") or {}).get("content") or []
                text = "".join(block.get("text", "") for block in content if isinstance(block, dict))
                results.append((text, None) if text.strip() else (None, "the teacher's answer was empty"))
        return results


def prepare(ctx: JobContext, body: dict, output_root: S3Location, work: S3Location, set_phase, should_stop) -> None:
    """The validation and data processing phases of a distillation job: the synthetic data at
    synthetic_data(output_root), made once (a resumed job keeps the parts already answered)."""
    done = synthetic_data(output_root)
    if ctx.objects.exists(done):
        return
    student = find_foundation_model(body["_foundationModelId"])
    multi_turn = student is not None and student.body_format in MULTI_TURN_FORMATS
    teacher_source = ModelSource.from_json(body["_teacher"])
    prompts_object = work.join("prompts.jsonl")
    set_phase("validationDetails", "InProgress")
    insights: list[dict] = []
    if ctx.objects.exists(prompts_object):
        chosen = _read_jsonl(ctx.objects.get_bytes(prompts_object))
    else:
        data = body["trainingDataConfig"]
        if data.get("invocationLogsConfig"):
            prompts = read_invocation_logs(ctx, data["invocationLogsConfig"], {body["_teacherFoundationModelId"]},
                                           multi_turn, insights)
        else:
            prompts = read_prompt_file(ctx, data["s3Uri"], multi_turn, insights)
        ctx.check_lease()
        insights_object = artifacts_root(output_root).join("prompt_insights.jsonl")
        ctx.objects.put_bytes(insights_object, _jsonl(insights))
        if not prompts:
            first = next((f"{row['source']}: {row['reason']}" for row in insights if row["status"] == "REJECTED"),
                         "the source holds no record that the requestMetadataFilters select")
            raise DistillationFailed(f"No prompt was accepted for distillation ({first}); every record's reason is "
                                     f"in {insights_object.uri}.")
        if len(prompts) > MAX_PROMPTS:
            raise DistillationFailed(f"The training data holds {len(prompts):,} prompts; a distillation job takes at "
                                     f"most {MAX_PROMPTS:,} prompts or prompt-response pairs.")
        chosen = [{"source": p.source, "system": p.system, "messages": p.messages} for p in prompts]
        ctx.objects.put_bytes(prompts_object, _jsonl(chosen))  # fixed from here on, whatever logs come later
    set_phase("validationDetails", "Completed")
    set_phase("dataProcessingDetails", "InProgress")
    teacher = Teacher(ctx, teacher_source, int(body["_maxResponseLength"]), should_stop)
    seed = sum(body["_teacher"]["reference"].encode()) % (2 ** 31)
    rows, rejected = [], []
    for first in range(0, len(chosen), PART_RECORDS):
        part = work.join("answers", f"part-{first // PART_RECORDS:05d}.jsonl")
        try:
            rows += _read_jsonl(ctx.objects.get_bytes(part))
            continue  # answered by an earlier attempt
        except StorageError:
            pass
        if should_stop():
            raise JobStopped()
        batch = chosen[first:first + PART_RECORDS]
        asking = [prompt for prompt in batch if prompt["messages"][-1]["role"] == "user"]
        answers = iter(teacher.answer(asking, seed) if asking else [])
        written = []
        for prompt in batch:
            record = {"source": prompt["source"], "system": prompt["system"], "messages": prompt["messages"]}
            if prompt["messages"][-1]["role"] == "user":
                text, why = next(answers)
                if text is None:
                    written.append({**record, "rejected": why})
                    continue
                record["messages"] = [*prompt["messages"], {"role": "assistant", "content": [{"text": text}]}]
            written.append(record)
        ctx.check_lease()  # the parts are the new owner's to write once the lease is lost
        ctx.objects.put_bytes(part, _jsonl(written))
        ctx.save_checkpoint({"teacherPromptsDone": min(first + PART_RECORDS, len(chosen))})
        rows += written
        log.info("job %s: prompts %d-%d of %d ready (%d answered by the teacher)", ctx.claim.job_pk, first + 1,
                 first + len(batch), len(chosen), len(asking))
    kept = []
    for row in rows:
        if row.get("rejected"):
            rejected.append({"source": row["source"], "status": "REJECTED", "reason": row["rejected"]})
        else:
            kept.append(Prompt(row["source"], row["system"], row["messages"]).to_json())
    if rejected:  # the teacher's failures join the insights written at validation
        try:
            earlier = _read_jsonl(ctx.objects.get_bytes(artifacts_root(output_root).join("prompt_insights.jsonl")))
        except StorageError:
            earlier = []
        failed = {row["source"] for row in rejected}
        merged = [row for row in earlier if row["source"] not in failed] + rejected
        ctx.objects.put_bytes(artifacts_root(output_root).join("prompt_insights.jsonl"), _jsonl(merged))
    if not kept:
        raise DistillationFailed(f"The teacher answered none of the {len(chosen)} prompts "
                                 f"({rejected[0]['reason'] if rejected else 'no answer'}).")
    ctx.check_lease()
    ctx.objects.put_bytes(done, _jsonl(kept))
    discard(ctx, work)


def discard(ctx: JobContext, work: S3Location) -> None:
    """The teacher's working objects (the fixed prompts, the answered parts)."""
    try:
        ctx.objects.delete_prefix(work)
    except StorageError as exc:
        log.warning("job %s: the distillation work under %s was not deleted: %s", ctx.claim.job_pk, work.uri, exc)
