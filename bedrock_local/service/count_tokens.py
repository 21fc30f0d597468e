"""CountTokens (bedrock-runtime): the input tokens a Converse or InvokeModel request would be for
the model behind the id, counted by the serving node that holds the model (its "count" task,
engine/token_count.py) with the tokenizer and chat template generation uses, so the count equals
the `inputTokens` Converse reports for the same input.

As on AWS: only models whose catalog entry says so count (FoundationModel.count_tokens); any other
id (an inference profile, a deployment, a model that does not count) answers ValidationException
"The provided model doesn't support counting tokens." A model AWS serves on demand only through a
profile (Claude 3.7, 4.x) still counts by its bare id: counting runs no inference.
"""

from __future__ import annotations

import asyncio
import json
import zlib

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.engine.formats import Converse, FormatError, parse_invoke
from bedrock_local.jobs.model_sources import body_format, foundation_source
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ValidationException
from bedrock_local.service.models import FOUNDATION_ARN
from bedrock_local.service.node_client import NodeCall, Target
from bedrock_local.service.registry import operation
from bedrock_local.service.runtime import _wait_for_nodes, resolve_target
from bedrock_local.store import nodes

UNSUPPORTED = "The provided model doesn't support counting tokens."


def _model(ctx: Context, model_id: str):
    """The catalog model that counts for `model_id` (a foundation model id or ARN), or AWS's errors:
    what names no model at all answers as the runtime does (not found, ...); what names something
    else, or a model that does not count, is refused."""
    bare = model_id.split(FOUNDATION_ARN, 1)[-1] if FOUNDATION_ARN in model_id else model_id
    model = find_foundation_model(bare) if (FOUNDATION_ARN in model_id or not model_id.startswith("arn:")) else None
    if model is None:
        resolve_target(ctx, model_id)  # raises the runtime's error for an id that names nothing
        raise ValidationException(UNSUPPORTED)
    if not model.count_tokens:
        raise ValidationException(UNSUPPORTED)
    return model


def _target(ctx: Context, model_id: str) -> Target:
    """The node that counts, chosen as the runtime chooses an on-demand model's (service/runtime.py
    resolve_target): the same node, so the model is loaded once (blocking: run it in a thread)."""
    source = foundation_source(_model(ctx, model_id))
    with ctx.db.read_session() as session:
        live = nodes.live_endpoints(session)
    if not live:
        live = _wait_for_nodes(ctx)
    endpoints = [live[node] for node in sorted(live)]
    endpoint = endpoints[zlib.crc32(source.reference.encode()) % len(endpoints)]
    return Target(endpoint, {"source": source.to_json()}, source.kind, body_format(source), source.reference)


def _text_request(params: dict, target: Target) -> dict:
    given = params["input"]
    try:
        if "converse" in given:
            converse = given["converse"]
            if converse.get("additionalModelRequestFields"):
                raise ValidationException("This model doesn't support additional model request fields "
                                          "('input.converse.additionalModelRequestFields').")
            members = {k: converse[k] for k in ("messages", "system", "toolConfig") if k in converse}
            return Converse.parse(members, where="input.converse", validated=True).__dict__
        if "invokeModel" in given:
            try:
                body = json.loads(given["invokeModel"]["body"] or b"")
            except UnicodeDecodeError:
                raise ValidationException("input.invokeModel.body is not valid UTF-8.")
            except ValueError as exc:
                raise ValidationException(f"input.invokeModel.body is not valid JSON: {exc}")
            request = parse_invoke(target.body_format, body, where="input.invokeModel.body")
            if request.text is None:
                raise ValidationException(UNSUPPORTED)
            return request.text.__dict__
    except FormatError as exc:
        raise ValidationException(str(exc))
    raise ValidationException("input must hold one of 'converse' or 'invokeModel'.")


@operation("CountTokens")
async def count_tokens(ctx: Context, params: dict) -> dict:
    target = await asyncio.to_thread(_target, ctx, params["modelId"])
    request = _text_request(params, target)
    call = await NodeCall.open(ctx, target, "count", request)
    try:
        message = await call.next()
    finally:
        call.close()
    return {"inputTokens": message["done"]["input_tokens"]}
