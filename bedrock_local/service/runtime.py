"""The bedrock-runtime operations: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream, on a deployment or a Provisioned Throughput (by its ARN) or a foundation
model (by id or ARN).

`resolve_target` decides which serving node (processes/serving.py) answers a modelId: a deployment
goes to the node holding its job's lease; a foundation model to a live node chosen by the model, so
one node keeps one copy loaded. These functions resolve where, forward the request
(service/node_client.py) and shape the answer; bodies are parsed and rendered by engine/formats, by
the same rules batch jobs use: Converse, and for InvokeModel the body format of the model's provider
(Meta Llama, Anthropic Messages, Titan, Mistral, Cohere Embed, ...; engine/aliases.py). A streaming
operation returns its event stream as an async iterator of `{event name: event}` members; the api
layer frames them as application/vnd.amazon.eventstream. Anything that goes wrong before the first
event is an ordinary error response; after it, an exception event of the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator

from bedrock_local.engine.catalog import TOOL_CHOICES, find_foundation_model
from bedrock_local.engine.formats import (KIND_EMBEDDING, Converse, EmbeddingResult, FormatError, InvokeRequest,
                                          StreamRenderer, TextResult, invocation_metrics, parse_invoke,
                                          render_converse_response, render_invoke)
from bedrock_local.jobs.model_sources import body_format
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import DEPLOYMENT_KIND
from bedrock_local.service.errors import (BedrockError, ResourceNotFoundException,
                                          ServiceUnavailableException, ValidationException)
from bedrock_local.service.models import resolve_model_source
from bedrock_local.service.node_client import NodeCall, Target, held_model_target
from bedrock_local.service.provisioned_throughput import serving_target
from bedrock_local.service.registry import operation
from bedrock_local.store import nodes, resources

UNSUPPORTED_CONVERSE = {
    "guardrailConfig": "guardrails", "promptVariables": "prompt variables",
    "additionalModelRequestFields": "additional model request fields",
}
UNSUPPORTED_OUTPUT_CONFIG = {"textFormat": "structured output", "effort": "reasoning effort"}
JSON = "application/json"
NODE_START_WAIT = 60.0  # seconds a request waits for the serving processes this server started


def _converse_request(params: dict) -> dict:
    for member, what in UNSUPPORTED_CONVERSE.items():
        if params.get(member):
            raise ValidationException(f"This model doesn't support {what} ('{member}').")
    for member, value in (params.get("outputConfig") or {}).items():
        if value is not None:
            what = UNSUPPORTED_OUTPUT_CONFIG.get(member, "this output configuration")
            raise ValidationException(f"This model doesn't support {what} ('outputConfig.{member}').")
    try:  # the codec checked params against the Converse shape: only what the shape does not say is left
        return Converse.parse(params, where="request", validated=True).__dict__
    except FormatError as exc:
        raise ValidationException(str(exc))


def _invoke_request(params: dict, target: Target) -> InvokeRequest:
    content_type = (params.get("contentType") or JSON).split(";")[0].strip().lower()
    if content_type != JSON:
        raise ValidationException(f"The contentType '{params.get('contentType')}' is not supported; send "
                                  f"'{JSON}'.")
    raw = params.get("body") or b""
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ValidationException("The body is not valid UTF-8.")
    except ValueError as exc:
        raise ValidationException(f"The body is not valid JSON: {exc}")
    try:
        return parse_invoke(target.body_format, body, where="body")
    except FormatError as exc:
        raise ValidationException(str(exc))


def _tool_choices(target: Target) -> tuple[str, ...]:
    """The toolChoice kinds the target's model takes: a catalog model's own (none: no tool use); a
    custom model or a deployment runs an open-weight model under constrained decoding: all of them."""
    source = target.message_target.get("source") or {}
    model = find_foundation_model(source.get("foundation_model_id") or "") if source else None
    return model.tool_choices if model is not None else TOOL_CHOICES


def _check_tool_use(target: Target, request: dict, choice_field: str) -> None:
    """AWS's answers to tools the model cannot take: no tool use at all, or not this toolChoice
    (`choice_field` names where the body says it, e.g. toolConfig.toolChoice)."""
    if not request.get("tools"):
        return
    choices = _tool_choices(target)
    if not choices:
        raise ValidationException("This model doesn't support tool use.")
    choice = request.get("tool_choice") or "auto"
    if choice not in choices:
        raise ValidationException(f"This model doesn't support the {choice_field}.{choice} field. Remove "
                                  f"{choice_field}.{choice} and try again.")


def resolve_target(ctx: Context, model_id: str) -> Target:
    """The serving node that answers `model_id` and what it is told (blocking, database reads: run
    it in a thread)."""
    with ctx.db.read_session() as session:
        live = nodes.live_endpoints(session)
        if ":custom-model-deployment/" in model_id:
            deployment = resources.find(session, ctx.scope, DEPLOYMENT_KIND, arn=model_id)
            if deployment is None:
                raise ResourceNotFoundException(f"The custom model deployment '{model_id}' does not exist.")
            return held_model_target(session, live, deployment, title="deployment", ready="Active",
                                     get_operation="GetCustomModelDeployment")
        if ":provisioned-model/" in model_id:  # its own copy, on the node holding its job's lease
            return serving_target(session, ctx, live, model_id)
        source = resolve_model_source(session, ctx, model_id, custom_models=False)
        if not live:
            live = _wait_for_nodes(ctx)
        endpoints = [live[node] for node in sorted(live)]
        endpoint = endpoints[zlib.crc32(source.reference.encode()) % len(endpoints)]
        return Target(endpoint, {"source": source.to_json()}, source.kind, body_format(source), source.reference)


def _wait_for_nodes(ctx: Context) -> dict[str, str]:
    """The live nodes, once one is up: a server that started its own serving processes gives them
    NODE_START_WAIT to register; with none of its own it answers at once."""
    deadline = time.monotonic() + (NODE_START_WAIT if ctx.settings.serving_workers else 0)
    while True:
        with ctx.db.read_session() as session:
            live = nodes.live_endpoints(session)
        if live:
            return live
        if time.monotonic() >= deadline:
            raise ServiceUnavailableException(
                "No serving node is running: start the server with --serving-workers 1 or more.")
        time.sleep(0.2)


async def _target(ctx: Context, model_id: str) -> Target:
    return await asyncio.to_thread(resolve_target, ctx, model_id)


async def _text_call(ctx: Context, params: dict, parse,
                     choice_field: str = "toolConfig.toolChoice") -> tuple[NodeCall, dict]:
    """Open the request on its node and read its first message (a delta or the result), so that
    every error before the answer starts is an ordinary error response."""
    target = await _target(ctx, params["modelId"])
    if target.kind == KIND_EMBEDDING:
        raise ValidationException(f"The model '{params['modelId']}' is an embedding model; it cannot generate text.")
    request = parse(params)
    _check_tool_use(target, request, choice_field)
    call = await NodeCall.open(ctx, target, "text", request)
    try:
        return call, await call.next()
    except BaseException:
        call.close()
        raise


async def _run_to_end(call: NodeCall, first: dict) -> TextResult:
    try:
        message = first
        while "done" not in message:
            message = await call.next()
        return TextResult(**message["done"])
    finally:
        call.close()


@operation("Converse")
async def converse(ctx: Context, params: dict) -> dict:
    started = time.perf_counter()
    call, first = await _text_call(ctx, params, _converse_request)
    result = await _run_to_end(call, first)
    return render_converse_response(result, latency_ms=int((time.perf_counter() - started) * 1000))


@operation("InvokeModel")
async def invoke_model(ctx: Context, params: dict) -> dict:
    target = await _target(ctx, params["modelId"])
    request = _invoke_request(params, target)
    if request.embeddings is not None:
        call = await NodeCall.open(ctx, target, "embedding", {"items": [e.__dict__ for e in request.embeddings]})
        try:
            result = [EmbeddingResult(**item) for item in (await call.next())["done"]["results"]]
        finally:
            call.close()
    else:
        _check_tool_use(target, request.text.__dict__, "tool_choice.type")
        call = await NodeCall.open(ctx, target, "text", request.text.__dict__)
        try:
            first = await call.next()
        except BaseException:
            call.close()
            raise
        result = await _run_to_end(call, first)
    body = render_invoke(request, result, model_id=target.model_id)
    return {"body": json.dumps(body).encode(), "contentType": JSON}


async def _deltas(call: NodeCall, first: dict) -> AsyncIterator[tuple[str, object]]:
    """The node's messages in order: ("text", piece), ("tool_use", {"toolUseId", "name"}) and
    ("tool_input", piece of the input's JSON) as they stream, then ("done", TextResult)."""
    try:
        message = first
        while True:
            if "delta" in message:
                yield "text", message["delta"]
            elif "tool_use" in message:
                yield "tool_use", message["tool_use"]
            elif "tool_input" in message:
                yield "tool_input", message["tool_input"]
            elif "done" in message:
                yield "done", TextResult(**message["done"])
                return
            message = await call.next()
    finally:
        call.close()


def _unstreamed_calls(result: TextResult, started: set[str]) -> list[tuple[str, object]]:
    """The stream events of calls in `result` that were not streamed (a node may give calls only with
    its result): each call's start and its whole input."""
    events: list[tuple[str, object]] = []
    for call in result.tool_calls:
        if call["toolUseId"] not in started:
            events.append(("tool_use", {"toolUseId": call["toolUseId"], "name": call["name"]}))
            events.append(("tool_input", json.dumps(call["input"], ensure_ascii=False)))
    return events


def _stream_error(error: BedrockError, member: str = "modelStreamErrorException") -> dict:
    names = {"ValidationException": "validationException", "ThrottlingException": "throttlingException",
             "ServiceUnavailableException": "serviceUnavailableException",
             "InternalServerException": "internalServerException"}
    return {names.get(error.code, member): {"message": error.message}}


class _ContentBlocks:
    """ConverseStream's content blocks as AWS streams them: text deltas (no start event); a tool call
    as a contentBlockStart (toolUseId, name) and contentBlockDeltas of its input's JSON text; each
    block with its own contentBlockIndex, ended by a contentBlockStop when the next one starts."""

    def __init__(self):
        self.index = 0
        self.open = False
        self.calls: set[str] = set()

    def events(self, kind: str, value) -> list[dict]:
        if kind == "text":
            if not value:
                return []
            self.open = True
            return [{"contentBlockDelta": {"delta": {"text": value}, "contentBlockIndex": self.index}}]
        if kind == "tool_use":
            events = []
            if self.open:
                events.append({"contentBlockStop": {"contentBlockIndex": self.index}})
                self.index += 1
            self.open = True
            self.calls.add(value["toolUseId"])
            return events + [{"contentBlockStart": {"start": {"toolUse": value}, "contentBlockIndex": self.index}}]
        if not value:
            return []
        return [{"contentBlockDelta": {"delta": {"toolUse": {"input": value}}, "contentBlockIndex": self.index}}]


@operation("ConverseStream")
async def converse_stream(ctx: Context, params: dict) -> dict:
    started = time.perf_counter()
    call, first = await _text_call(ctx, params, _converse_request)

    async def events():
        yield {"messageStart": {"role": "assistant"}}
        blocks = _ContentBlocks()
        try:
            async for kind, value in _deltas(call, first):
                if kind != "done":
                    for event in blocks.events(kind, value):
                        yield event
                    continue
                for kind_, value_ in _unstreamed_calls(value, blocks.calls):
                    for event in blocks.events(kind_, value_):
                        yield event
                latency = int((time.perf_counter() - started) * 1000)
                rendered = render_converse_response(value, latency_ms=latency)
                yield {"contentBlockStop": {"contentBlockIndex": blocks.index}}
                yield {"messageStop": {"stopReason": rendered["stopReason"]}}
                yield {"metadata": {"usage": rendered["usage"], "metrics": rendered["metrics"]}}
        except BedrockError as error:
            yield _stream_error(error)

    return {"stream": events()}


@operation("InvokeModelWithResponseStream")
async def invoke_model_with_response_stream(ctx: Context, params: dict) -> dict:
    started = time.perf_counter()
    target = await _target(ctx, params["modelId"])
    if target.kind == KIND_EMBEDDING:
        raise ValidationException(f"The model '{params['modelId']}' is an embedding model; it does not stream.")
    request = _invoke_request(params, target)
    renderer = StreamRenderer(request, model_id=target.model_id)
    call, first = await _text_call(ctx, params, lambda p: request.text.__dict__, "tool_choice.type")

    async def events():
        # the provider's own streamed chunks (engine/formats StreamRenderer): text as it comes; the
        # token counts, the stop reason and the invocation metrics at the end (the node tells the
        # counts only with the result)
        first_byte = None
        calls: set[str] = set()
        try:
            async for kind, value in _deltas(call, first):
                if first_byte is None:
                    first_byte = int((time.perf_counter() - started) * 1000)
                if kind == "done":
                    chunks = []
                    for kind_, value_ in _unstreamed_calls(value, calls):
                        chunks += (renderer.tool_use(value_["toolUseId"], value_["name"]) if kind_ == "tool_use"
                                   else renderer.tool_input(value_))
                    metrics = invocation_metrics(value.input_tokens, value.output_tokens,
                                                 int((time.perf_counter() - started) * 1000), first_byte)
                    chunks += renderer.finish(value, metrics)
                elif kind == "text":
                    chunks = renderer.delta(value)
                elif kind == "tool_use":
                    calls.add(value["toolUseId"])
                    chunks = renderer.tool_use(value["toolUseId"], value["name"])
                else:
                    chunks = renderer.tool_input(value)
                for chunk in chunks:
                    yield {"chunk": {"bytes": json.dumps(chunk).encode()}}
        except BedrockError as error:
            yield _stream_error(error)

    return {"body": events(), "contentType": JSON}
