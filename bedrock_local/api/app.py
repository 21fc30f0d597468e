"""The HTTP application: one ASGI callable that routes every request through the
model-driven codecs (the `bedrock` control plane and `bedrock-runtime`, on the same port; their
routes do not overlap) to the registered operation, and answers errors in the AWS envelope of the
service the request was for. Operations that stream (ConverseStream, ...) answer event-stream frames.
Every runtime call passes `Invocations` (service/call_inspection.py) on its way: it is recorded for
the test endpoint under /_bedrock-local/ (docs/testing-endpoint.md), which this app also answers, and
handed to model invocation logging.
"""

import inspect
import json
import logging
import os
import time
import traceback

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from bedrock_local.api import eventstream, metrics
from bedrock_local.api.codec import RestJsonCodec, UnknownOperation, dumps
from bedrock_local.api.identity import Accounts
from bedrock_local.api.openapi import openapi_document
from bedrock_local.api.validation import validation_message
from bedrock_local.console.web import PREFIX as CONSOLE_PREFIX, Console
from bedrock_local.service.context import Context
from bedrock_local.service.errors import BedrockError, InternalServerException, ValidationException
from bedrock_local.service import call_inspection, load_operations, projects
from bedrock_local.service.invocation_logging import Delivery
from bedrock_local.service.aws_model import load_service_model
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database

log = logging.getLogger("bedrock_local.api")

OPENAPI_PATH = "/openapi.json"


class UnknownOperationError(BedrockError):
    code = "UnknownOperationException"


def new_request_id() -> str:
    """A random (version 4) UUID as text, like str(uuid.uuid4()) at a third of its cost."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class BedrockApi:
    def __init__(self, settings: Settings, db: Database, objects: ObjectStore):
        self.settings = settings
        self.db = db
        self.objects = objects
        self.codec = RestJsonCodec(load_service_model("bedrock"))
        self.runtime_codec = RestJsonCodec(load_service_model("bedrock-runtime"))
        self.operations = load_operations()
        self.accounts = Accounts(settings.default_account, settings.default_region, settings.credentials_file)
        self.max_body_bytes = settings.max_request_bytes
        self._openapi: bytes | None = None
        self._how: dict[str, str] = {}  # per operation: "await" (a coroutine), "inline" or "thread" (_reads_inline)
        self.console = Console(self)
        self.metrics = metrics.RequestMetrics(db)
        self.invocations = call_inspection.Invocations(Delivery(db, objects, settings.data_dir))

    async def __call__(self, scope, receive, send) -> None:
        """The ASGI application uvicorn runs: every HTTP request, whatever its method and path, is
        answered by `handle`, in the AWS envelope. (Starlette's router and middleware, with nothing to
        route, cost a sixth of a GetModelCustomizationJob's own server time.)"""
        if scope["type"] == "http":
            if scope["path"] == metrics.PATH and scope["method"] in ("GET", "HEAD"):
                response = await self.metrics_response()
            elif scope["path"] == OPENAPI_PATH and scope["method"] in ("GET", "HEAD"):
                response = self.openapi_response()
            elif scope["path"] == CONSOLE_PREFIX or scope["path"].startswith(CONSOLE_PREFIX + "/"):
                response = await self.console.handle(Request(scope, receive), new_request_id())
            elif scope["path"].startswith(call_inspection.PREFIX + "/"):
                response = await self.inspection_response(scope, receive)
            else:
                started = time.perf_counter()
                response = await self._answer(scope, receive)
                ready = time.perf_counter() - started  # the latency api/metrics.py documents
                try:
                    await response(scope, receive, send)
                finally:  # tallied once the answer is sent (the client reads it meanwhile), or failed to be
                    self.metrics.observe(scope.get("bedrock_local.operation") or self._operation_name(scope),
                                         response.status_code, ready)
                return
            await response(scope, receive, send)
        elif scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        else:  # websocket: no AWS protocol uses one
            await send({"type": "websocket.close", "code": 1000})

    async def metrics_response(self) -> Response:
        """GET /metrics: Prometheus's text format (api/metrics.py); it reads the database, in a thread."""
        return Response(await run_in_threadpool(self.metrics.exposition), media_type=metrics.CONTENT_TYPE)

    def openapi_response(self) -> Response:
        """GET /openapi.json: the OpenAPI document of the served operations (api/openapi.py), made once."""
        if self._openapi is None:
            document = openapi_document([self.codec.service_model, self.runtime_codec.service_model],
                                        self.operations)
            self._openapi = dumps(document)
        return Response(self._openapi, media_type="application/json")

    async def inspection_response(self, scope, receive) -> "Answer":
        """/_bedrock-local/calls and /scripts: signed like any request, for the caller's own account."""
        request_id = new_request_id()
        raw_path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        query_string = scope.get("query_string", b"").decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._read_body(headers, receive)
            caller = self.accounts.authenticate(scope["method"], raw_path.split("?", 1)[0], query_string, headers,
                                                scope["headers"], body)
        except ClientGone:
            return Answer(b"", 400, {})
        except BedrockError as error:
            status, answer = getattr(error, "http_status", 400), {"__type": error.code, "message": error.message}
        else:
            # in a worker thread: its stack is shallow, and a recorded request may hold a document
            # nested almost as deep as the parser allows
            status, answer = await run_in_threadpool(call_inspection.handle, caller.account, scope["method"],
                                                     scope["path"], body)
        return Answer(await run_in_threadpool(dumps, answer), status,
                      {"Content-Type": "application/json", "x-amzn-RequestId": request_id})

    def _operation_name(self, scope) -> str:
        """The operation of a request refused before it was routed (authentication), for the metrics."""
        try:
            return self._route(scope["method"], scope["path"])[1].name
        except BedrockError:
            return "unknown"

    async def _answer(self, scope, receive) -> "Answer | StreamingResponse":
        request_id = new_request_id()
        codec = [self.codec]  # the codec of the service the request is for, once routed
        try:
            return await self._handle(scope, receive, request_id, codec)
        except BedrockError as error:
            return self._error(error, request_id, codec[0])
        except ClientGone:  # nobody to answer: a 400 for the metrics
            return Answer(b"", 400, {})
        except Exception:
            log.error("request %s failed:\n%s", request_id, traceback.format_exc())
            return self._error(InternalServerException(
                f"The request could not be completed (request id {request_id})."), request_id, codec[0])

    def _route(self, method: str, path: str):
        try:
            return self.codec, *self.codec.match(method, path)
        except UnknownOperation as exc:
            try:
                return self.runtime_codec, *self.runtime_codec.match(method, path)
            except UnknownOperation:
                raise UnknownOperationError(str(exc))

    async def _handle(self, scope, receive, request_id: str, matched: list) -> "Answer | StreamingResponse":
        method = scope["method"]
        raw_path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        query_string = scope.get("query_string", b"").decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await self._read_body(headers, receive)
        # the caller is verified first, as on AWS: an unsigned request gets the auth error, not a routing
        # or validation one (the body is read first: its hash is part of the signature)
        # (a console page's request carries its session cookie instead of a signature: console/session.py)
        caller = self.console.caller(headers, query_string) or self.accounts.authenticate(
            method, raw_path.split("?", 1)[0], query_string, headers, scope["headers"], body)
        codec, op, labels = self._route(method, raw_path.split("?", 1)[0])
        matched[0] = codec
        scope["bedrock_local.operation"] = op.name  # for the metrics
        function = self.operations.get(op.name)
        if function is None:
            raise ValidationException(f"The operation {op.name} is not supported by bedrock-local.")
        params = codec.parse_request(op, labels, query_string, headers, body)
        problem = validation_message(params, op.input_shape) if op.input_shape is not None else None
        if problem:
            raise ValidationException(problem)
        if isinstance(params.get("requestMetadata"), str):
            params["requestMetadata"] = self._request_metadata(params["requestMetadata"])
        ctx = Context(caller.account, caller.region, self.db, self.objects, self.settings, request_id,
                      bucket_owners=self.accounts.bucket_owners)
        if params.get(projects.MEMBER) is not None:
            projects.check_project(ctx, params[projects.MEMBER], not_found_modelled=any(
                error.name == "ResourceNotFoundException" for error in op.error_shapes))
        how = self._how.get(op.name)
        if how is None:
            how = self._how[op.name] = ("await" if inspect.iscoroutinefunction(function) else
                                        "inline" if self._reads_inline(op) else "thread")
        call = self.invocations.begin(ctx, op.name, params)  # a runtime call: recorded and logged
        try:
            if how == "await":
                result = await function(ctx, params)
            elif how == "inline":
                result = function(ctx, params)
            else:
                result = await run_in_threadpool(function, ctx, params)
        except BedrockError as error:
            if call is not None:
                self.invocations.failed(call, error.code, error.message)
            raise
        if call is not None:
            result = self.invocations.finish(call, result, op.output_shape.serialization.get("payload")
                                             if op.has_event_stream_output else None)
        if op.has_event_stream_output:
            return self._stream(codec, op, result, request_id)
        status, out_headers, payload = codec.serialize_response(op, result or {})
        out_headers["x-amzn-RequestId"] = request_id
        return Answer(payload, status, out_headers)

    def _request_metadata(self, text: str) -> dict:
        """InvokeModel's X-Amzn-Bedrock-Request-Metadata header: the map Converse takes as requestMetadata,
        as JSON; checked against that map's shape, and passed on as the map."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValidationException(f"requestMetadata (the X-Amzn-Bedrock-Request-Metadata header) is not "
                                      f"valid JSON: {exc}")
        if not isinstance(value, dict):
            raise ValidationException("requestMetadata (the X-Amzn-Bedrock-Request-Metadata header) must be a "
                                      "JSON object of string keys and values.")
        problem = validation_message(value, self.runtime_codec.service_model.shape_for("RequestMetadata"))
        if problem:
            raise ValidationException(problem.replace("at 'input'", "at 'requestMetadata'"))
        return value

    def _reads_inline(self, op) -> bool:
        """A read (the model's GET operations: Get*, List*) of the embedded SQLite database runs on the
        event loop: one indexed query of a local file that never waits for a writer (WAL), cheaper
        than the hop to a worker thread and back (measured on a busy 2-core machine: 0.30 ms of server
        CPU per GetModelCustomizationJob inline, 0.43-0.93 ms through the thread pool, and twice the
        latency). Writes may wait for SQLite's write lock, and PostgreSQL is across a network: those
        run in threads."""
        return self.db.is_sqlite and op.http["method"] == "GET"

    @staticmethod
    def _stream(codec: RestJsonCodec, op, result: dict, request_id: str) -> StreamingResponse:
        """The output's event-stream member as frames, its other members as headers."""
        name = op.output_shape.serialization["payload"]
        events, stream_shape = result.pop(name), op.output_shape.members[name]
        status, headers, _ = codec.serialize_response(op, result)
        headers.pop("Content-Type", None)
        headers["x-amzn-RequestId"] = request_id

        async def frames():
            async for event in events:
                yield eventstream.event_frame(stream_shape, event, codec._to_json)

        return StreamingResponse(frames(), status_code=status, headers=headers,
                                 media_type=eventstream.CONTENT_TYPE)

    async def _read_body(self, headers: dict[str, str], receive) -> bytes:
        """The whole body, refused (ValidationException, 400: the one error every operation may answer for
        a request it cannot take) as soon as its Content-Length or the bytes received pass the limit."""
        limit = self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ValidationException(f"The request body is {int(declared)} bytes; the most this server takes "
                                      f"is {limit} bytes (--max-request-bytes).")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ValidationException(f"The request body is larger than {limit} bytes, the most this server "
                                          f"takes (--max-request-bytes).")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _error(self, error: BedrockError, request_id: str, codec: RestJsonCodec) -> "Answer":
        status, headers, payload = codec.serialize_error(error, request_id)
        status = getattr(error, "http_status", status)  # errors of no service model (authentication)
        if error.code == "UnknownOperationException":
            status = 404
        return Answer(payload, status, headers)


class ClientGone(Exception):
    """The client closed the connection before its request's body was all received."""


class Answer:
    """A whole response (status, headers, body) as the two ASGI messages that send it: what Starlette's
    Response does for it, without its header handling, for the answer every API request gets."""

    __slots__ = ("status_code", "headers", "body")

    def __init__(self, body: bytes, status_code: int, headers: dict[str, str]):
        self.body, self.status_code, self.headers = body, status_code, headers

    async def __call__(self, scope, receive, send) -> None:
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers.items()]
        raw.append((b"content-length", str(len(self.body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


def create_app(settings: Settings, db: Database, objects: ObjectStore) -> BedrockApi:
    return BedrockApi(settings, db, objects)
