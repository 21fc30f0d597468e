"""The API process's side of serving: which serving node answers a modelId, and a call to it.

`resolve_target` turns a bedrock-runtime modelId into where to send the request: a deployment ARN
goes to the node holding that deployment's lease; a foundation model id or ARN goes to a live node
chosen by the model (so one node keeps one copy loaded). `NodeCall` is one request on the node's
socket (node_protocol.py), read message by message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from dataclasses import dataclass

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs import lease
from bedrock_local.jobs.model_sources import ModelSource, body_format, foundation_source
from bedrock_local import node_protocol as protocol
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import DEPLOYMENT_KIND
from bedrock_local.service.errors import (BedrockError, ModelNotReadyException, ResourceNotFoundException,
                                          ServiceUnavailableException, ValidationException)
from bedrock_local.store import nodes, resources

CONNECT_TIMEOUT = 10.0
NODE_START_WAIT = 60.0  # seconds a request waits for the serving processes this server started


@dataclass(frozen=True)
class Target:
    endpoint: str
    message_target: dict  # the "target" member of the request line
    kind: str             # "text" | "embedding"
    body_format: str      # the InvokeModel body its model takes (engine/formats.py)
    model_id: str         # the model id the response names (Anthropic's "model")


def resolve_target(ctx: Context, model_id: str) -> Target:
    """Blocking (database reads): run it in a thread."""
    with ctx.db.read_session() as session:
        live = nodes.live_endpoints(session)
        if ":custom-model-deployment/" in model_id:
            deployment = resources.find(session, ctx.scope, DEPLOYMENT_KIND, arn=model_id)
            if deployment is None:
                raise ResourceNotFoundException(f"The custom model deployment '{model_id}' does not exist.")
            if deployment.status == "Creating":
                raise ModelNotReadyException(
                    f"The deployment '{deployment.name}' is still Creating: its model is being loaded. "
                    "Retry once GetCustomModelDeployment shows it Active.")
            if deployment.status != "Active":
                raise ValidationException(
                    f"The deployment '{deployment.name}' is {deployment.status} and cannot serve requests: "
                    f"{deployment.body.get('failureMessage', '')}".rstrip(": "))
            job = lease.job_for(session, deployment)
            endpoint = live.get(job.lease_owner) if job is not None and job.state == "running" else None
            if endpoint is None:
                raise ModelNotReadyException(
                    f"The deployment '{deployment.name}' is moving to another serving node; retry shortly.")
            source = ModelSource.from_json(deployment.body["_source"])
            return Target(endpoint, {"deployment": deployment.arn}, "text", body_format(source),
                          source.foundation_model_id or deployment.arn)
        source = _foundation(model_id)
        if not live:
            live = _wait_for_nodes(ctx)
        endpoints = [live[node] for node in sorted(live)]
        endpoint = endpoints[zlib.crc32(source.reference.encode()) % len(endpoints)]
        return Target(endpoint, {"source": source.to_json()}, source.kind, body_format(source), source.reference)


def _wait_for_nodes(ctx: Context) -> dict[str, str]:
    """The live nodes, once one is up: a server that started its own serving processes gives them
    time to register (they take seconds to start); with none of its own it answers at once."""
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


def _foundation(model_id: str) -> ModelSource:
    if ":custom-model/" in model_id or ":imported-model/" in model_id:
        raise ValidationException(
            f"The model '{model_id}' is a custom model: invoke it through a custom model deployment "
            "(CreateCustomModelDeployment) and use the deployment's ARN as modelId.")
    if model_id.startswith("arn:"):
        if ":foundation-model/" not in model_id:
            raise ValidationException(f"The modelId '{model_id}' is not a model this service can invoke.")
        model_id = model_id.split(":foundation-model/", 1)[1]
    model = find_foundation_model(model_id)
    if model is None:
        raise ResourceNotFoundException(f"The model '{model_id}' does not exist.")
    return foundation_source(model)


class NodeCall:
    """One request to a serving node; `next()` answers its messages in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target, task: str, request: dict) -> "NodeCall":
        host, port = target.endpoint.rsplit(":", 1)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), limit=protocol.MAX_LINE), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            raise ModelNotReadyException("The serving node of this model cannot be reached; retry shortly.")
        call = cls(reader, writer)
        writer.write(protocol.encode({"target": target.message_target, "task": task, "request": request}))
        await writer.drain()
        return call

    async def next(self) -> dict:
        line = await self.reader.readline()
        if not line:
            raise ModelNotReadyException("The serving node stopped while answering; retry.")
        message = protocol.decode(line)
        if "error" in message:
            raise node_error(message["error"])
        return message

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def node_error(error: dict) -> BedrockError:
    """A node's error line as the modelled exception it names."""
    from bedrock_local.service import errors

    cls = getattr(errors, error.get("code", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, BedrockError)):
        cls = errors.InternalServerException
    return cls(error.get("message", "The model failed."))
