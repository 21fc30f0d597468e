"""The HTTP application: one Starlette endpoint that routes every request through the
model-driven codec to the registered service operation, and answers errors in the AWS envelope."""

import logging
import traceback
import uuid

from botocore.loaders import create_loader
from botocore.model import ServiceModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bedrock_local.api.codec import RestJsonCodec, UnknownOperation
from bedrock_local.api.identity import Accounts
from bedrock_local.api.validation import validation_message
from bedrock_local.service.context import Context
from bedrock_local.service.errors import BedrockError, InternalServerException, ValidationException
from bedrock_local.service.registry import load_operations
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database

log = logging.getLogger("bedrock_local.api")

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]  # every one answers in the envelope
MAX_BODY_BYTES = 16 * 1024 * 1024


def load_service_model(name: str) -> ServiceModel:
    return ServiceModel(create_loader().load_service_model(name, "service-2"), name)


class UnknownOperationError(BedrockError):
    code = "UnknownOperationException"


class BedrockApi:
    def __init__(self, settings: Settings, db: Database, objects: ObjectStore):
        self.settings = settings
        self.db = db
        self.objects = objects
        self.codec = RestJsonCodec(load_service_model("bedrock"))
        self.operations = load_operations()
        self.accounts = Accounts(settings.default_account, settings.default_region, settings.credentials_file)

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            return await self._handle(request, request_id)
        except BedrockError as error:
            return self._error(error, request_id)
        except Exception:
            log.error("request %s failed:\n%s", request_id, traceback.format_exc())
            return self._error(InternalServerException(
                f"The request could not be completed (request id {request_id})."), request_id)

    async def _handle(self, request: Request, request_id: str) -> Response:
        raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        try:
            op, labels = self.codec.match(request.method, raw_path.split("?", 1)[0])
        except UnknownOperation as exc:
            raise UnknownOperationError(str(exc))
        function = self.operations.get(op.name)
        if function is None:
            raise ValidationException(f"The operation {op.name} is not supported by bedrock-local.")
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await self._read_body(request)
        params = self.codec.parse_request(op, labels, query_string, headers, body)
        problem = validation_message(params, op.input_shape) if op.input_shape is not None else None
        if problem:
            raise ValidationException(problem)
        caller = self.accounts.caller(headers, query_string)
        ctx = Context(caller.account, caller.region, self.db, self.objects, self.settings, request_id)
        result = await run_in_threadpool(function, ctx, params)
        status, out_headers, payload = self.codec.serialize_response(op, result or {})
        out_headers["x-amzn-RequestId"] = request_id
        return Response(payload, status_code=status, headers=out_headers)

    @staticmethod
    async def _read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ValidationException(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, error: BedrockError, request_id: str) -> Response:
        status, headers, payload = self.codec.serialize_error(error, request_id)
        if error.code == "UnknownOperationException":
            status = 404
        return Response(payload, status_code=status, headers=headers)


def create_app(settings: Settings, db: Database, objects: ObjectStore) -> Starlette:
    api = BedrockApi(settings, db, objects)
    app = Starlette(routes=[Route("/{path:path}", api.handle, methods=METHODS)])
    app.state.api = api
    return app
