"""Fast deterministic test models, and the faults they inject for testing retry logic.

Two foundation models that load nothing (no weights, no torch) and answer in microseconds, so a
pipeline written for Bedrock runs its batch jobs and runtime calls in seconds and can assert exact
outputs. They are listed like any foundation model (provider "bedrock-local"), and an alias may run
on them (`"runsOn": "bedrock-local.test-text-v1:0"` in the alias file, engine/aliases.py), so an AWS
model id with its provider's body format can be answered by them.

Tokens: a token is a whitespace-separated word (`str.split()`); every token count they report is a
number of such words.

`bedrock-local.test-text-v1:0` (`TestTextModel`):
- reads the system text, every message and the prompt: `input_tokens` is the number of words in all of them;
- answers the words of the *last user message* (chat forms: Converse, Anthropic Messages; an
  assistant prefill after it is ignored) or of the *prompt* (Meta Llama, Titan Text, Mistral) in
  reverse order, joined by single spaces: "Say hello to the world" -> "world the to hello Say";
- ends like the real generator: at `max_tokens` words (stop reason max_tokens, `output_tokens` =
  max_tokens) unless every word fits (end_turn, `output_tokens` = the word count); a stop sequence
  found in the answer cuts the text just before it (stop_sequence; `output_tokens` = the fewest
  leading words whose text holds it, as the real generator counts the tokens through the stop);
  only the first max_tokens words are searched for stop sequences, as a generator never sees
  tokens after its limit;
- temperature, top_p, top_k and the seed are validated by the body formats but change nothing: the
  answer is the same greedy or sampled, in a batch job (`generate`) and at runtime (`submit`);
- a request with no word at all (whitespace only) is a FormatError, as an empty prompt is for the
  real model;
- streams one `TextDelta` per answer word (the word with its leading space; the last one may be
  shorter when a stop sequence cuts it), then `Finished`: the deltas concatenate to the text.
It has both interfaces of the real engines: `generate(requests, seed=0)` like
generation.TextGenerator (batch jobs) and `start` / `submit(request, on_event, seed=0)` /
`close(drain, timeout)` / `active` like continuous.ContinuousBatcher (serving); `submit` answers on
the caller's thread, before it returns, so nothing is ever queued.

`bedrock-local.test-embed-v1:0` (`TestEmbeddingModel`): feature hashing of words. Each word,
lowercased and with punctuation stripped from both ends (a word of punctuation only is kept
lowercased), adds +1 or -1 to one coordinate: sha256 of the word's UTF-8 bytes, its first 8 bytes
(big-endian) modulo the size pick the coordinate, the lowest bit of byte 8 the sign (0: +1). Texts
that share words share coordinates, so cosine similarity means something; the vector is made unit
length when the request normalizes (a text with no word stays all zeros). The size is the one the
body format asks for (`EmbeddingRequest.dimensions`: 1536 for Titan G1, 1024/512/256 for Titan V2,
1024 for Cohere), else 1024; `input_tokens` is the number of words. `embed(requests)` like
embeddings.Embedder (batch jobs); `invoke(requests)` is the runtime's entry point (it counts calls
for the throttling and error rules below).

Faults (`Faults`, and the names in `FAULTS`): an injected fault answers the modelled exception a
retry loop must handle, at runtime the exception itself with its HTTP status, in a batch job an
error line `{"errorCode": <status>, "errorMessage": ...}`; every message says it was injected.

- per request: a directive `[[fault:NAME]]` anywhere in the text the model reads (system,
  messages, prompt; an embedding's input text) fails that request (runtime) or record (batch) with
  NAME's exception: throttle, model-error, timeout, validation, internal, unavailable, not-ready.
  `[[fault:job-fail]]`, `[[fault:job-stop]]`, `[[fault:job-timeout]]` in a batch record end the job
  right before that record (see "job" below); at runtime they are ordinary words.
- per model, in an alias entry that runs on a test model (`"faults": {...}`, engine/aliases.py):
  - `"throttle": {"every": K}` or `{"rate": P, "seed": S}`: runtime calls to the model, counted
    from 1 on the serving node that holds it (every request for one model id goes to the same
    node; a node that restarts or unloads it counts again from 1), answer ThrottlingException
    (HTTP 429) when `n % K == 0`, or when `u(S, n) < P` where `u(S, n)` is the first 8 bytes of
    sha256("S:n"), big-endian, divided by 2**64 (a seeded, reproducible rate);
  - `"errors": {"fault": NAME, "every": K | "rate": P, "seed": S, "message": "..."}`: the same rule
    over runtime calls (checked after throttling, on the same call number) and over the records
    of each batch job (record n = its position in the job, from 1, across input files in order):
    those fail with NAME's exception (default model-error);
  - `"job": {"action": "fail" | "stop" | "timeout", "afterRecords": N, "message": "..."}`: a batch
    job on the model processes N records, writes their output lines, then fails (Failed, with a
    message saying it was injected), stops (Stopping -> Stopped, as if StopModelInvocationJob had
    come) or times out (PartiallyCompleted with the timeout's message), as its real counterpart
    would. N at or past the job's record count: the job completes.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import string
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ModelCallError
from .formats import (END_TURN, MAX_TOKENS, STOP_SEQUENCE, EmbeddingRequest, EmbeddingResult, FormatError,
                      TextRequest, TextResult)

TEST_TEXT_MODEL = "bedrock-local.test-text-v1:0"
TEST_EMBEDDING_MODEL = "bedrock-local.test-embed-v1:0"
TEST_EMBEDDING_DIMENSIONS = 1024

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
JOB_ACTIONS = ("fail", "stop", "timeout")
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

    def job_point(self, done: int, count: int) -> int | None:
        """Where, among the next `count` records of a job that has processed `done`, the job must
        end (records before that position are processed); None: not among them."""
        if self.job is None or self.job.after_records - done >= count:
            return None
        return max(0, self.job.after_records - done)


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
    """Every text the model reads: the system text, each message, the prompt."""
    return [request.system, *(m["content"] for m in request.messages or []), request.prompt]


def answer_words(request: TextRequest) -> list[str]:
    """The words the answer is made of: those of the last user message (or the prompt), reversed."""
    if request.messages is not None:
        users = [m["content"] for m in request.messages if m["role"] == "user"]
        source = users[-1] if users else ""
    else:
        source = request.prompt or ""
    return words(source)[::-1]


def answer(request: TextRequest) -> TextResult:
    """The test text model's answer to `request` (see the module docstring)."""
    input_tokens = sum(count_tokens(text) for text in request_texts(request))
    if input_tokens == 0:
        raise FormatError("the prompt is empty once tokenized (the test model's tokens are whitespace-separated "
                          "words)")
    if request.max_tokens < 1:
        raise FormatError(f"max_tokens must be at least 1, got {request.max_tokens}")
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


class TestTextModel:
    """The test text model as an engine: `generate` for batch jobs, `submit` for serving."""

    __test__ = False  # not a pytest test class

    def __init__(self, model_id: str = TEST_TEXT_MODEL, faults: Faults | None = None):
        self.model_id = model_id
        self.faults = faults
        self._calls = _Calls()
        self._closing = False

    @staticmethod
    def count_tokens(text: str) -> int:
        return count_tokens(text)

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
        from .continuous import Finished, TextDelta

        if self._closing:
            raise RuntimeError("the model is being unloaded; it takes no new requests")
        n = self._calls.next()
        fault = self.faults.call_fault(n, self.model_id) if self.faults is not None else None
        fault = fault or request_fault(request_texts(request))
        if fault is not None:
            raise fault
        result = answer(request)
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


class TestEmbeddingModel:
    """The test embedding model as an engine: `embed` for batch jobs, `invoke` for runtime calls."""

    __test__ = False

    dimension = TEST_EMBEDDING_DIMENSIONS

    def __init__(self, model_id: str = TEST_EMBEDDING_MODEL, faults: Faults | None = None):
        self.model_id = model_id
        self.faults = faults
        self._calls = _Calls()

    @staticmethod
    def count_tokens(text: str) -> int:
        return count_tokens(text)

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


def is_test_engine(engine: object) -> bool:
    """Whether `engine` is a test model's (no weights; faults may be injected)."""
    return isinstance(engine, (TestTextModel, TestEmbeddingModel))


def engine_for(kind: str, model_id: str, faults: Faults | None = None) -> TestTextModel | TestEmbeddingModel:
    """The engine of a test model (or of an alias that runs on one): `kind` "text" or "embedding"."""
    if kind == "embedding":
        return TestEmbeddingModel(model_id, faults)
    return TestTextModel(model_id, faults)
