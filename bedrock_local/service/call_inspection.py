"""Inspecting and scripting runtime calls, for tests of applications (docs/testing-endpoint.md).

- The calls: every runtime call the API process received (InvokeModel, InvokeModelWithResponseStream,
  Converse, ConverseStream), kept per account (the last KEEP_CALLS), listed oldest first with what
  was asked and answered, clearable.
- The scripts: replies a test registers for a model id and a regex over the last user turn: text,
  or a tool call. A matching call is answered by the script, in the operation's own form, without a
  model (service/node_client.py asks `SCRIPTS.reply` before it reaches a serving node).
- `Invocations`: the api layer's hook around each runtime call (`begin`, then `finish` or `failed`),
  which records the call here and hands it to invocation logging (service/invocation_logging.py).
- `handle`: the `/_bedrock-local/calls` and `/_bedrock-local/scripts` endpoint, for the caller's
  own account only.

Both lists live in the memory of the API process: a server with several API processes behind one
address keeps one list per process.
"""

from __future__ import annotations

import collections
import contextvars
import json
import threading
import uuid
from dataclasses import dataclass

import regex

from bedrock_local.engine.formats import TextRequest
from bedrock_local.engine.formats.common import END_TURN, TOOL_USE
from bedrock_local.engine.formats.tools import call_text, new_tool_use_id
from bedrock_local.engine.stub_models import count_tokens, request_texts
from bedrock_local.service.invocation_logging import Delivery, Invocation, input_body, jsonable, output_body

PREFIX = "/_bedrock-local"
CALLS_PATH = PREFIX + "/calls"
SCRIPTS_PATH = PREFIX + "/scripts"
RUNTIME_OPERATIONS = frozenset({"InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream"})
KEEP_CALLS = 1000  # per account
KEEP_BYTES = 64 * 1024 * 1024  # per account: the requests' bodies, texts and blobs (estimated)
MAX_SCRIPTS = 1000  # per account
PATTERN_SECONDS = 0.05  # the most one pattern may take on one text (a pattern is the caller's regex)

# the runtime call being answered, for service/node_client.py (token counts, scripted replies)
current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("bedrock_local_call", default=None)


class ScriptError(ValueError):
    """A script that cannot be registered; the message says which member and why."""


# ---- the calls ---------------------------------------------------------------------------------


def _size(value) -> int:
    """About how many bytes a request holds: its blobs and texts (an InvokeModel body may be 25 MB).
    Walked without recursion: a document member may be nested as deep as the JSON parser allowed."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (bytes, bytearray, str)):
            total += len(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        else:
            total += 8
    return total


class CallLog:
    """The last calls of each account: at most KEEP_CALLS of them and KEEP_BYTES of requests, the
    oldest dropped first."""

    def __init__(self):
        self._calls: dict[str, collections.deque[tuple[Invocation, int]]] = {}
        self._bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, call: Invocation) -> None:
        size = _size(call.params)
        with self._lock:
            calls = self._calls.setdefault(call.account, collections.deque())
            calls.append((call, size))
            total = self._bytes.get(call.account, 0) + size
            while len(calls) > 1 and (len(calls) > KEEP_CALLS or total > KEEP_BYTES):
                total -= calls.popleft()[1]
            self._bytes[call.account] = total

    def list(self, account: str) -> list[Invocation]:
        with self._lock:
            return [call for call, _ in self._calls.get(account, ())]

    def clear(self, account: str) -> int:
        with self._lock:
            self._bytes.pop(account, None)
            return len(self._calls.pop(account, ()))


def describe_call(call: Invocation) -> dict:
    described = {
        "operation": call.operation, "modelId": call.model_id, "requestId": call.request_id,
        "region": call.region, "time": call.time.isoformat().replace("+00:00", "Z"),
        "request": input_body(call),
        "usage": {"inputTokens": call.input_tokens, "outputTokens": call.output_tokens},
    }
    if call.operation.startswith("InvokeModel"):
        described["contentType"] = call.params.get("contentType")
    if call.error is not None:
        described["error"] = call.error
    else:
        described["response"] = output_body(call)
    if call.script_id:
        described["scriptId"] = call.script_id
    return described


# ---- the scripts -------------------------------------------------------------------------------


@dataclass
class Script:
    script_id: str
    account: str
    model_id: str
    pattern: str | None
    reply: dict  # {"text": str} | {"toolUse": {"name": str, "input": JSON value}}
    times: int | None  # how many calls it still answers (None: every one)
    used: int = 0

    def describe(self) -> dict:
        return {"scriptId": self.script_id, "modelId": self.model_id, "pattern": self.pattern,
                **self.reply, "times": self.times, "used": self.used}


def parse_script(account: str, spec) -> Script:
    """A script from the JSON a test posts: {"modelId", "pattern"?, "text" | "toolUse": {"name",
    "input"}, "times"?}."""
    if not isinstance(spec, dict):
        raise ScriptError('the body must be a JSON object: {"modelId", "pattern", "text" or "toolUse", "times"}')
    unknown = set(spec) - {"modelId", "pattern", "text", "toolUse", "times"}
    if unknown:
        raise ScriptError(f"unknown member(s) {sorted(unknown)}; a script has modelId, pattern, text or toolUse, "
                          "and times")
    model_id = spec.get("modelId")
    if not isinstance(model_id, str) or not model_id:
        raise ScriptError("modelId must be the model id (or ARN) the calls name, a non-empty string")
    pattern = spec.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ScriptError("pattern must be a regular expression (a string)")
        try:
            regex.compile(pattern)
        except regex.error as exc:
            raise ScriptError(f"pattern is not a valid regular expression: {exc}")
    if ("text" in spec) == ("toolUse" in spec):
        raise ScriptError("a script answers either text or toolUse: give exactly one of them")
    if "text" in spec:
        if not isinstance(spec["text"], str) or not spec["text"]:
            raise ScriptError("text must be a non-empty string")
        reply = {"text": spec["text"]}
    else:
        tool = spec["toolUse"]
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ScriptError("toolUse must be {\"name\": the tool's name, \"input\": its input (a JSON object)}")
        if not isinstance(tool.get("input", {}), dict):
            raise ScriptError("toolUse.input must be a JSON object (Converse's toolUse input is one)")
        reply = {"toolUse": {"name": tool["name"], "input": tool.get("input", {})}}
    times = spec.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise ScriptError("times must be a whole number, 1 or more (leave it out: every matching call)")
    return Script(f"script-{uuid.uuid4().hex[:12]}", account, model_id, pattern, reply, times)


def last_user_text(request: dict) -> str:
    """The text a pattern is matched against: the last user turn's, else the raw prompt."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            return message.get("content") or ""
    return request.get("prompt") or ""


class Scripts:
    def __init__(self):
        self._scripts: dict[str, list[Script]] = {}
        self._lock = threading.Lock()

    def add(self, script: Script) -> None:
        with self._lock:
            scripts = self._scripts.setdefault(script.account, [])
            if len(scripts) >= MAX_SCRIPTS:
                raise ScriptError(f"an account may hold at most {MAX_SCRIPTS} scripts; delete some first")
            scripts.append(script)

    def list(self, account: str) -> list[Script]:
        with self._lock:
            return list(self._scripts.get(account, ()))

    def remove(self, account: str, script_id: str | None = None) -> int:
        with self._lock:
            scripts = self._scripts.get(account, [])
            kept = [s for s in scripts if script_id is not None and s.script_id != script_id]
            self._scripts[account] = kept
            return len(scripts) - len(kept)

    def reply(self, account: str, model_ids: set[str], request: dict) -> Script | None:
        """The first registered script of `account` for one of `model_ids` whose pattern matches the
        request (a toolUse script only where the request offers tools), counted as used once."""
        text = last_user_text(request)
        with self._lock:
            for script in self._scripts.get(account, ()):
                if script.model_id not in model_ids:
                    continue
                if "toolUse" in script.reply and not request.get("tools"):
                    continue
                if script.pattern is not None:
                    try:
                        if regex.search(script.pattern, text, timeout=PATTERN_SECONDS) is None:
                            continue
                    except TimeoutError:
                        continue
                script.used += 1
                if script.times is not None:
                    script.times -= 1
                    if script.times == 0:
                        self._scripts[account].remove(script)
                return script
        return None


CALLS = CallLog()
SCRIPTS = Scripts()


class ScriptedCall:
    """A script's reply as the messages of a serving node (node_protocol.py), for the runtime to
    render in its operation's form: NodeCall's interface (`next`, `close`)."""

    def __init__(self, script: Script, request: dict):
        input_tokens = sum(count_tokens(text) for text in request_texts(TextRequest(**request)))
        if "text" in script.reply:
            words = script.reply["text"].split(" ")
            self.messages = [{"delta": piece} for piece in
                             [words[0], *(" " + word for word in words[1:])] if piece]
            done = {"text": script.reply["text"], "input_tokens": input_tokens,
                    "output_tokens": count_tokens(script.reply["text"]), "stop_reason": END_TURN}
        else:
            tool = script.reply["toolUse"]
            use = {"toolUseId": new_tool_use_id(), "name": tool["name"]}
            self.messages = [{"tool_use": use}, {"tool_input": json.dumps(tool["input"], ensure_ascii=False)}]
            done = {"text": "", "input_tokens": input_tokens,
                    "output_tokens": count_tokens(call_text(tool["name"], tool["input"])), "stop_reason": TOOL_USE,
                    "tool_calls": [{**use, "input": tool["input"]}]}
        self.messages.append({"done": done})

    async def next(self) -> dict:
        return self.messages.pop(0)

    def close(self) -> None:
        return None


# ---- the hook ----------------------------------------------------------------------------------


class Invocations:
    """What the api layer calls around each runtime call: `begin` before the operation runs (it
    makes the call `current` for node_client), then `finish` with its result or `failed`."""

    def __init__(self, delivery: Delivery):
        self.delivery = delivery

    @staticmethod
    def begin(ctx, operation: str, params: dict) -> Invocation | None:
        if operation not in RUNTIME_OPERATIONS:
            current.set(None)
            return None
        call = Invocation(ctx.account, ctx.region, ctx.request_id, operation, params.get("modelId", ""), params)
        current.set(call)
        return call

    def finish(self, call: Invocation, result: dict, stream_member: str | None) -> dict:
        """The result to answer: as it is, or with its event stream wrapped so that the call is
        recorded once the stream has ended (or the client went away)."""
        if stream_member is None:
            call.output = result
            self._done(call)
            return result
        call.streamed = True
        events, call.output = result[stream_member], []

        async def recorded():
            try:
                async for event in events:
                    call.output.append(event)
                    yield event
            finally:
                self._done(call)

        return {**result, stream_member: recorded()}

    def failed(self, call: Invocation, code: str, message: str) -> None:
        call.error = {"code": code, "message": message}
        CALLS.add(call)

    def _done(self, call: Invocation) -> None:
        errors = [event for event in call.output if len(event) == 1 and next(iter(event)).endswith("Exception")] \
            if call.streamed else []
        if errors:  # a stream that ended in an exception event failed
            (name, body), = errors[-1].items()
            call.error = {"code": name[0].upper() + name[1:], "message": (body or {}).get("message", "")}
        CALLS.add(call)
        self.delivery.submit(call)


# ---- the endpoint ------------------------------------------------------------------------------


def handle(account: str, method: str, path: str, body: bytes) -> tuple[int, dict]:
    """One request to the endpoint, by the caller of `account`: (HTTP status, JSON answer)."""
    path = path.rstrip("/")
    if path == CALLS_PATH:
        if method == "GET":
            return 200, {"calls": [jsonable(describe_call(call)) for call in CALLS.list(account)]}
        if method == "DELETE":
            return 200, {"cleared": CALLS.clear(account)}
        return _error(405, "MethodNotAllowed", f"{path} takes GET (list the calls) and DELETE (clear them)")
    if path == SCRIPTS_PATH:
        if method == "GET":
            return 200, {"scripts": [script.describe() for script in SCRIPTS.list(account)]}
        if method == "POST":
            try:
                script = parse_script(account, json.loads(body or b"null"))
                SCRIPTS.add(script)
            except ValueError as exc:  # ScriptError, and JSON's own
                return _error(400, "ValidationException", f"The script cannot be registered: {exc}")
            return 200, script.describe()
        if method == "DELETE":
            return 200, {"deleted": SCRIPTS.remove(account)}
        return _error(405, "MethodNotAllowed", f"{path} takes GET, POST (add a script) and DELETE (remove all)")
    if path.startswith(SCRIPTS_PATH + "/") and method == "DELETE":
        script_id = path[len(SCRIPTS_PATH) + 1:]
        if SCRIPTS.remove(account, script_id) == 0:
            return _error(404, "ResourceNotFoundException", f"No script {script_id!r} of account {account}.")
        return 200, {"deleted": 1}
    return _error(404, "UnknownOperationException",
                  f"{path} is not an endpoint: use {CALLS_PATH} or {SCRIPTS_PATH} (docs/testing-endpoint.md)")


def _error(status: int, code: str, message: str) -> tuple[int, dict]:
    return status, {"__type": code, "message": message}
