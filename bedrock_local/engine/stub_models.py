"""The stub models: two deterministic foundation models that load no weights and answer in
microseconds (a text model that reverses the prompt's words, an embedding model that hashes words),
the faults they inject for testing retry logic, and the hook through which a batch job meets those
faults. What they answer and how faults are configured: docs/stub-models.md."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import string
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import JobSignal, ModelCallError
from .formats import (END_TURN, MAX_TOKENS, STOP_SEQUENCE, EmbeddingRequest, EmbeddingResult, FormatError,
                      TextRequest, TextResult)
from .formats.common import TOOL_USE
from .formats.tools import call_text, new_tool_use_id, validate_input

TEST_TEXT_MODEL = "bedrock-local.test-text-v1:0"
TEST_EMBEDDING_MODEL = "bedrock-local.test-embed-v1:0"
TEST_EMBEDDING_DIMENSIONS = 1024
# Records per chunk of a batch job (the loop's flush and checkpoint unit). Not larger: with more records
# alive at once, more of them survive into older garbage-collector generations, whose collections walk
# the worker's whole heap (benchmarks/README.md has the figures).
RECORDS_PER_CHUNK = 64

# fault name: (the modelled exception, its HTTP status, what the exception says)
FAULTS: dict[str, tuple[str, int, str]] = {
    "throttle": ("ThrottlingException", 429, "Too many requests, please wait before trying your request again."),
    "model-error": ("ModelErrorException", 424, "The model failed to process the request."),
    "timeout": ("ModelTimeoutException", 408, "The model did not answer in time."),
    "validation": ("ValidationException", 400, "The request is not valid for this model."),
    "internal": ("InternalServerException", 500, "An internal server error occurred."),
    "unavailable": ("ServiceUnavailableException", 503, "The service is unavailable; try again later."),
    "not-ready": ("ModelNotReadyException", 429, "The model is not ready to serve requests; try again later."),
}
JOB_ACTIONS = JobSignal.ACTIONS
JOB_VERBS = {"fail": "fail", "stop": "stop", "timeout": "time out"}
DIRECTIVE = re.compile(r"\[\[fault:([A-Za-z0-9_-]*)\]\]")
JOB_DIRECTIVE = re.compile(r"\[\[fault:job-(fail|stop|timeout)\]\]")


def words(text: str | None) -> list[str]:
    """The tokens of `text`: its whitespace-separated words."""
    return text.split() if text else []


def count_tokens(text: str | None) -> int:
    return len(words(text))


# --------------------------------------------------------------------------------------------
# Faults


class InjectedFault(ModelCallError):
    """A fault injected on purpose: the modelled exception a real model's call would raise."""

    def __init__(self, name: str, why: str, message: str | None = None):
        code, status, default = FAULTS[name]
        self.name = name
        super().__init__(code, status, f"{message or default} (injected fault '{name}': {why})")


class FaultConfigError(ValueError):
    """A `faults` setting is wrong; the message names the field."""


@dataclass(frozen=True)
class Rule:
    """Which calls or records (numbered from 1) a fault hits: every K-th, or a seeded rate."""

    every: int | None = None
    rate: float | None = None
    seed: int = 0

    def fires(self, n: int) -> bool:
        if self.every is not None:
            return n % self.every == 0
        return seeded_uniform(self.seed, n) < (self.rate or 0.0)

    def describe(self, what: str) -> str:
        if self.every == 1:
            return f"every {what}"
        if self.every is not None:
            return f"every {_ordinal(self.every)} {what}"
        return f"{what}s at a rate of {self.rate:g} (seed {self.seed})"


@dataclass(frozen=True)
class JobFault:
    action: str  # fail | stop | timeout
    after_records: int
    message: str | None = None


@dataclass(frozen=True)
class Faults:
    """A test model's fault settings (the `faults` member of its alias entry)."""

    throttle: Rule | None = None
    errors: Rule | None = None
    error: str = "model-error"  # the fault the errors rule injects
    error_message: str | None = None
    job: JobFault | None = None

    def call_fault(self, n: int, model_id: str) -> InjectedFault | None:
        """The fault of the n-th runtime call to the model, if any: throttling first, then errors."""
        if self.throttle is not None and self.throttle.fires(n):
            return InjectedFault("throttle", f"faults.throttle of {model_id} throttles "
                                             f"{self.throttle.describe('call')}; this was call {n}")
        if self.errors is not None and self.errors.fires(n):
            return InjectedFault(self.error, f"faults.errors of {model_id} fails {self.errors.describe('call')}; "
                                             f"this was call {n}", self.error_message)
        return None

    def record_fault(self, n: int, model_id: str) -> InjectedFault | None:
        """The fault of the n-th record of a batch job, if any."""
        if self.errors is not None and self.errors.fires(n):
            return InjectedFault(self.error, f"faults.errors of {model_id} fails "
                                             f"{self.errors.describe('record')}; this was record {n}",
                                 self.error_message)
        return None

    def job_signal(self, number: int, model_id: str) -> JobSignal | None:
        """The signal that ends a batch job right before its record `number` (from 1): `job` after N
        records, from record N + 1 on (a job resumed past it ends at once); None: the job goes on."""
        job = self.job
        if job is None or number - 1 < job.after_records:
            return None
        return job_signal(job.action, f"faults.job of {model_id} asks the job to {JOB_VERBS[job.action]} after "
                                      f"{job.after_records} records", number, job.message)


def job_signal(action: str, why: str, number: int, message: str | None = None) -> JobSignal:
    """The JobSignal of an injected job fault met right before record `number`: a failure's message
    (the user's own, or how many records were processed) or the note a stop or timeout adds."""
    note = f"(injected fault: {why})"
    if action == "fail":
        return JobSignal(action, f"{message or f'The job failed after {number - 1} records.'} {note}")
    return JobSignal(action, note)


def seeded_uniform(seed: int, n: int) -> float:
    """A number in [0, 1) that depends only on (seed, n): sha256("seed:n"), 8 bytes, / 2**64."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{n}".encode()).digest()[:8], "big") / 2.0 ** 64


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def parse_faults(value: Any, where: str = "faults") -> Faults:
    """The `faults` member of an alias entry; FaultConfigError names the field that is wrong."""
    if not isinstance(value, dict):
        raise FaultConfigError(f"{where} must be an object with throttle, errors and/or job")
    unknown = [key for key in value if key not in ("throttle", "errors", "job")]
    if unknown:
        raise FaultConfigError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"allowed: throttle, errors, job")
    throttle = errors = job = None
    error, error_message = "model-error", None
    if "throttle" in value:
        throttle = _rule(value["throttle"], f"{where}.throttle", ())
    if "errors" in value:
        entry = value["errors"]
        errors = _rule(entry, f"{where}.errors", ("fault", "message"))
        error = entry.get("fault", "model-error")
        if error not in FAULTS:
            raise FaultConfigError(f"{where}.errors.fault must be one of {', '.join(FAULTS)}, got {error!r}")
        error_message = _optional_message(entry, f"{where}.errors")
    if "job" in value:
        entry = value["job"]
        here = f"{where}.job"
        if not isinstance(entry, dict):
            raise FaultConfigError(f"{here} must be an object with action and afterRecords")
        unknown = [key for key in entry if key not in ("action", "afterRecords", "message")]
        if unknown:
            raise FaultConfigError(f"{here} has unknown field(s) {', '.join(map(repr, unknown))}; "
                                   f"allowed: action, afterRecords, message")
        action = entry.get("action")
        if action not in JOB_ACTIONS:
            raise FaultConfigError(f"{here}.action must be one of {', '.join(JOB_ACTIONS)}, got {action!r}")
        after = entry.get("afterRecords")
        if not _is_int(after) or after < 0:
            raise FaultConfigError(f"{here}.afterRecords must be an integer of at least 0, got {after!r}")
        job = JobFault(action, after, _optional_message(entry, here))
    return Faults(throttle=throttle, errors=errors, error=error, error_message=error_message, job=job)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_message(entry: dict, where: str) -> str | None:
    message = entry.get("message")
    if message is not None and (not isinstance(message, str) or not message):
        raise FaultConfigError(f"{where}.message must be a non-empty string, got {message!r}")
    return message


def _rule(entry: Any, where: str, extra: tuple[str, ...]) -> Rule:
    if not isinstance(entry, dict):
        raise FaultConfigError(f'{where} must be an object: {{"every": K}} or {{"rate": P, "seed": S}}')
    allowed = ("every", "rate", "seed", *extra)
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise FaultConfigError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"allowed: {', '.join(allowed)}")
    if ("every" in entry) == ("rate" in entry):
        raise FaultConfigError(f'{where} needs exactly one of "every" (every K-th) and "rate" (a seeded rate)')
    if "every" in entry:
        every = entry["every"]
        if not _is_int(every) or every < 1:
            raise FaultConfigError(f"{where}.every must be an integer of at least 1, got {every!r}")
        if "seed" in entry:
            raise FaultConfigError(f"{where}.seed goes with rate, not every")
        return Rule(every=every)
    rate = entry["rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 <= rate <= 1:
        raise FaultConfigError(f"{where}.rate must be a number between 0 and 1, got {rate!r}")
    seed = entry.get("seed", 0)
    if not _is_int(seed):
        raise FaultConfigError(f"{where}.seed must be an integer, got {seed!r}")
    return Rule(rate=float(rate), seed=seed)


def request_fault(texts: list[str | None]) -> InjectedFault | None:
    """The fault a request's own text asks for (`[[fault:NAME]]`, the first one found), if any; job
    directives are not request faults. An unknown NAME is a FormatError that lists the known ones."""
    for text in texts:
        if not text or "[[fault:" not in text:
            continue
        for match in DIRECTIVE.finditer(text):
            name = match.group(1)
            if name in FAULTS:
                return InjectedFault(name, f"the request asked for it with [[fault:{name}]]")
            if JOB_DIRECTIVE.fullmatch(match.group(0)):
                continue
            raise FormatError(f"[[fault:{name}]] is not a fault this test model knows: use one of "
                              f"{', '.join(FAULTS)} (or job-fail, job-stop, job-timeout in a batch record)")
    return None


def job_directive(model_input: Any) -> str | None:
    """The job fault (fail, stop, timeout) a batch record's modelInput asks for with
    `[[fault:job-ACTION]]` in any of its strings, if any."""
    if isinstance(model_input, str):
        match = JOB_DIRECTIVE.search(model_input) if "[[fault:job-" in model_input else None
        return match.group(1) if match else None
    if isinstance(model_input, dict):
        model_input = model_input.values()
    elif not isinstance(model_input, list):
        return None
    for item in model_input:
        found = job_directive(item)
        if found:
            return found
    return None


def check_record(faults: Faults | None, model_id: str, number: int, record: dict) -> None:
    """The batch-job hook of a stub engine, asked about each input record (`number`: its position in the
    job, from 1) before its chunk runs: raises the JobSignal that ends the job right before it (faults.job,
    or a `[[fault:job-ACTION]]` in its modelInput), else the InjectedFault it fails with (faults.errors)."""
    signal = faults.job_signal(number, model_id) if faults is not None else None
    action = job_directive(record.get("modelInput")) if signal is None else None
    if action is not None:
        signal = job_signal(action, f"record {record.get('recordId')!r} asks the job to {JOB_VERBS[action]} "
                                    f"with [[fault:job-{action}]]", number)
    if signal is not None:
        raise signal
    fault = faults.record_fault(number, model_id) if faults is not None else None
    if fault is not None:
        raise fault


class _Calls:
    """A thread-safe counter of runtime calls, from 1."""

    def __init__(self):
        self._n = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._n += 1
            return self._n


# --------------------------------------------------------------------------------------------
# The text model


def request_texts(request: TextRequest) -> list[str | None]:
    """Every text the model reads: the system text, each message (an assistant's tool calls as their
    call text, formats/tools.py), the prompt, and each tool offered as JSON."""
    texts = [request.system]
    for m in request.messages or []:
        texts.append(m["content"])
        texts += [call_text(c["name"], c["arguments"]) for c in m.get("tool_calls") or []]
    texts.append(request.prompt)
    texts += [json.dumps(tool, ensure_ascii=False) for tool in request.tools or []]
    return texts


def answer_words(request: TextRequest) -> list[str]:
    """The words the answer is made of: those of the last user message or tool result (or the
    prompt), reversed."""
    if request.messages is not None:
        users = [m["content"] for m in request.messages if m["role"] in ("user", "tool")]
        source = users[-1] if users else ""
    else:
        source = request.prompt or ""
    return words(source)[::-1]


# --------------------------------------------------------------------------------------------
# Tool calls (docs/stub-models.md "Tool use")


def chosen_tool(request: TextRequest) -> dict | None:
    """The tool the test model calls, or None when it answers text: toolChoice tool: that tool; any:
    the tool at sha256(last user text) modulo the number of tools; auto: the same, unless the last
    turn is a tool result (then it answers text, so an agent loop ends)."""
    tools = request.tools or []
    if not tools or request.messages is None:
        return None
    if request.tool_choice == "tool":
        return next(t for t in tools if t["name"] == request.tool_name)
    if request.tool_choice not in ("any", "tool") and request.messages[-1]["role"] == "tool":
        return None
    return tools[_digest(" ".join(answer_words(request))) % len(tools)]


def tool_input(schema: dict, request: TextRequest) -> Any:
    """A value that validates against `schema`, built from the schema and the last user text alone."""
    value = _instance(schema, answer_words(request)[::-1], "")
    problem = validate_input(schema, value)
    if problem is not None:
        raise FormatError(f"the test model cannot build an input for this schema ({problem}); it takes "
                          "types, properties, required, enum, const, items, minimum/maximum and lengths")
    return value


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _instance(schema: Any, source: list[str], path: str) -> Any:
    """The value of `schema` at `path`: const, else the enum member at sha256(path + words), else by type."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    key = _digest(path + "|" + " ".join(source))
    if schema.get("enum"):
        return schema["enum"][key % len(schema["enum"])]
    for combined in ("anyOf", "oneOf", "allOf"):
        if schema.get(combined):
            return _instance(schema[combined][0], source, path)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: _instance(properties.get(name, {}), source, f"{path}.{name}")
                for name in schema.get("required", [])}
    if kind == "array":
        count = max(schema.get("minItems", 1), 0)
        count = min(count, schema.get("maxItems", count))
        return [_instance(schema.get("items", {}), source, f"{path}[{i}]") for i in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -math.inf))
        high = schema.get("maximum", schema.get("exclusiveMaximum", math.inf))
        value = min(max(len(source), math.floor(low) + 1 if "exclusiveMinimum" in schema else low),
                    math.ceil(high) - 1 if "exclusiveMaximum" in schema else high)
        return int(math.ceil(value)) if kind == "integer" else float(value)
    if kind == "boolean":
        return key % 2 == 0
    if kind == "null":
        return None
    text = source[key % len(source)] if source else "test"
    text = text[: schema.get("maxLength", len(text))]
    return text + "x" * max(0, schema.get("minLength", 0) - len(text))


def answer(request: TextRequest) -> TextResult:
    """The test text model's answer to `request` (see the module docstring)."""
    input_tokens = sum(count_tokens(text) for text in request_texts(request))
    if input_tokens == 0:
        raise FormatError("the prompt is empty once tokenized (the test model's tokens are whitespace-separated "
                          "words)")
    if request.max_tokens < 1:
        raise FormatError(f"max_tokens must be at least 1, got {request.max_tokens}")
    tool = chosen_tool(request)
    if tool is not None:
        return _call(request, tool, input_tokens)
    reply = answer_words(request)
    limit = min(request.max_tokens, len(reply))
    text = " ".join(reply[:limit])
    stops = [s for s in request.stop_sequences if s]
    found = [(i, s) for i, s in ((text.find(s), s) for s in stops) if i >= 0]
    if found:
        cut, stop = min(found, key=lambda pair: pair[0])
        through = next(k for k in range(1, limit + 1) if _holds_stop(" ".join(reply[:k]), stops))
        return TextResult(text=text[:cut], input_tokens=input_tokens, output_tokens=through,
                          stop_reason=STOP_SEQUENCE, stop_sequence=stop)
    reason = MAX_TOKENS if limit < len(reply) else END_TURN
    return TextResult(text=text, input_tokens=input_tokens, output_tokens=limit, stop_reason=reason)


def _call(request: TextRequest, tool: dict, input_tokens: int) -> TextResult:
    """A call of `tool`: its output tokens are the words of its call text; one that does not fit
    max_tokens is cut off (no call, MAX_TOKENS), as a model's would be."""
    arguments = tool_input(tool["input_schema"], request)
    size = count_tokens(call_text(tool["name"], arguments))
    if size > request.max_tokens:
        return TextResult(text="", input_tokens=input_tokens, output_tokens=request.max_tokens,
                          stop_reason=MAX_TOKENS)
    return TextResult(text="", input_tokens=input_tokens, output_tokens=size, stop_reason=TOOL_USE,
                      tool_calls=[{"toolUseId": new_tool_use_id(), "name": tool["name"], "input": arguments}])


def _holds_stop(text: str, stops: list[str]) -> bool:
    return any(s in text for s in stops)


def stream_pieces(request: TextRequest, result: TextResult) -> list[str]:
    """The streamed deltas of `result`: one per answer word (with its leading space), cut to the
    final text; empty pieces left out. They concatenate to result.text."""
    reply = answer_words(request)
    pieces, sent = [], 0
    for k in range(1, result.output_tokens + 1):
        upto = min(len(" ".join(reply[:k])), len(result.text))
        if upto > sent:
            pieces.append(result.text[sent:upto])
            sent = upto
    if sent < len(result.text):  # cannot happen for results of `answer`; kept so the deltas always add up
        pieces.append(result.text[sent:])
    return pieces


class _Done:
    """What `submit` answers: the request is already finished, so cancel does nothing."""

    def cancel(self) -> None:
        return None


class _StubEngine:
    """What both stub engines share: their model id, faults and runtime call counter, their tokens,
    and the batch-job hooks (the records per chunk they prefer, `check_record`)."""

    records_per_chunk = RECORDS_PER_CHUNK

    def __init__(self, model_id: str, faults: Faults | None):
        self.model_id = model_id
        self.faults = faults
        self._calls = _Calls()

    # no weights and no work to wait for: a serving node answers it on its event loop
    answers_inline = True

    @staticmethod
    def count_tokens(text: str) -> int:
        return count_tokens(text)

    def check_record(self, number: int, record: dict) -> None:
        check_record(self.faults, self.model_id, number, record)


class StubTextModel(_StubEngine):
    """The test text model as an engine: `generate` for batch jobs, `submit` for serving."""

    def __init__(self, model_id: str = TEST_TEXT_MODEL, faults: Faults | None = None):
        super().__init__(model_id, faults)
        self._closing = False

    def generate(self, requests: list[TextRequest], *, seed: int = 0,
                 **_: Any) -> list[TextResult | FormatError | InjectedFault]:
        """One result per request, in order: a TextResult, or the FormatError / InjectedFault of that
        request (a `[[fault:NAME]]` directive). `seed` changes nothing."""
        results: list[TextResult | FormatError | InjectedFault] = []
        for request in requests:
            try:
                results.append(request_fault(request_texts(request)) or answer(request))
            except FormatError as error:
                results.append(error)
        return results

    # ---- the serving interface (continuous.ContinuousBatcher's) ------------------------------

    def start(self) -> None:
        return None

    def submit(self, request: TextRequest, on_event: Callable[[object], None], *, seed: int = 0) -> _Done:
        """Answer `request` at once: on_event gets one TextDelta per word, then Finished. Raises
        before any event: RuntimeError (closed), FormatError, or InjectedFault (a directive in the
        request, or the model's throttle / errors rules on this call's number)."""
        from .continuous import Finished, TextDelta, ToolInputDelta, ToolUseStart

        if self._closing:
            raise RuntimeError("the model is being unloaded; it takes no new requests")
        n = self._calls.next()
        fault = self.faults.call_fault(n, self.model_id) if self.faults is not None else None
        fault = fault or request_fault(request_texts(request))
        if fault is not None:
            raise fault
        result = answer(request)
        for call in result.tool_calls:  # the input's JSON in two pieces, as a model streams it
            on_event(ToolUseStart(call["toolUseId"], call["name"]))
            document = json.dumps(call["input"], ensure_ascii=False)
            half = len(document) // 2
            for piece in (document[:half], document[half:]):
                if piece:
                    on_event(ToolInputDelta(piece))
        if not result.tool_calls:
            for piece in stream_pieces(request, result):
                on_event(TextDelta(piece))
        on_event(Finished(result))
        return _Done()

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        self._closing = True

    @property
    def active(self) -> int:
        return 0


# --------------------------------------------------------------------------------------------
# The embedding model


_PUNCTUATION = string.punctuation


@functools.lru_cache(maxsize=65536)
def _feature(word: str, size: int) -> tuple[int, float]:
    """The coordinate and sign a word adds to (see the module docstring)."""
    key = word.lower().strip(_PUNCTUATION) or word.lower()
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % size, (-1.0 if digest[8] & 1 else 1.0)


def hash_embedding(text: str, size: int = TEST_EMBEDDING_DIMENSIONS, normalize: bool = True) -> list[float]:
    """The test embedding model's vector of `text`."""
    vector = [0.0] * size
    for word in words(text):
        index, sign = _feature(word, size)
        vector[index] += sign
    if normalize:
        norm = math.sqrt(math.fsum(x * x for x in vector))
        if norm > 0:
            vector = [x / norm for x in vector]
    return vector


class StubEmbeddingModel(_StubEngine):
    """The test embedding model as an engine: `embed` for batch jobs, `invoke` for runtime calls."""

    dimension = TEST_EMBEDDING_DIMENSIONS

    def __init__(self, model_id: str = TEST_EMBEDDING_MODEL, faults: Faults | None = None):
        super().__init__(model_id, faults)

    def embed(self, requests: list[EmbeddingRequest], **_: Any) -> list[EmbeddingResult | InjectedFault | FormatError]:
        """One result per request: an EmbeddingResult at the request's size (1024 by default), or
        the fault its `[[fault:NAME]]` directive asks for."""
        results: list[EmbeddingResult | InjectedFault | FormatError] = []
        for request in requests:
            try:
                fault = request_fault([request.text])
            except FormatError as error:
                results.append(error)
                continue
            results.append(fault or EmbeddingResult(
                vector=hash_embedding(request.text, request.dimensions or self.dimension, request.normalize),
                input_tokens=count_tokens(request.text)))
        return results

    def invoke(self, requests: list[EmbeddingRequest]) -> list[EmbeddingResult]:
        """A runtime call (one InvokeModel, however many texts): raises the call's InjectedFault
        (throttle / errors rules, or a directive in one of its texts) or FormatError."""
        n = self._calls.next()
        fault = self.faults.call_fault(n, self.model_id) if self.faults is not None else None
        if fault is not None:
            raise fault
        results = self.embed(requests)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results  # type: ignore[return-value]


def engine_for(kind: str, model_id: str, faults: Faults | None = None) -> StubTextModel | StubEmbeddingModel:
    """The engine of a stub model (or of an alias that runs on one): `kind` "text" or "embedding"."""
    if kind == "embedding":
        return StubEmbeddingModel(model_id, faults)
    return StubTextModel(model_id, faults)
