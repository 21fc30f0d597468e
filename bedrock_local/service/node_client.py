"""The API process's client of the serving nodes: where one request goes (`Target`), the request on
the node's socket read message by message (`NodeCall`, over node_protocol.py), and a node's error
line as the modelled exception it names (`node_error`).

Each request is signed with the cluster secret and goes over TLS to a node that registered a
`tls://` endpoint (`Hop`, one per database: node_protocol.py has the wire and the rules).

Every runtime call reaches a node here, so this is also where the call being answered
(service/call_inspection.py `current`) learns its model's kind and token counts, and where a test's
scripted reply for it answers instead of a node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from dataclasses import dataclass

from bedrock_local import node_protocol as protocol
from bedrock_local.jobs import lease
from bedrock_local.jobs.model_sources import ModelSource, body_format
from bedrock_local.service import call_inspection, errors
from bedrock_local.service.errors import BedrockError, ModelNotReadyException, ValidationException

CONNECT_TIMEOUT = 10.0  # seconds to connect, TLS handshake included
log = logging.getLogger("bedrock_local.node_client")


class Hop:
    """What this API process needs to reach the nodes of one database: the cluster secret and, for
    nodes that speak TLS, the context that verifies them (`--serving-tls-ca`)."""

    def __init__(self, settings, db):
        self.secret = protocol.cluster_secret(settings, db)
        self.tls = protocol.client_tls(settings)
        self.require_tls = settings.serving_tls_ca is not None


_hops: "weakref.WeakKeyDictionary[object, Hop]" = weakref.WeakKeyDictionary()  # by Database


async def hop_for(ctx) -> Hop:
    hop = _hops.get(ctx.db)
    if hop is None:  # the first call reads (or makes) the secret in the database
        hop = _hops[ctx.db] = await asyncio.to_thread(Hop, ctx.settings, ctx.db)
    return hop


@dataclass(frozen=True)
class Target:
    endpoint: str
    message_target: dict  # the "target" member of the request line
    kind: str             # "text" | "embedding"
    body_format: str      # the InvokeModel body its model takes (engine/formats)
    model_id: str         # the model id the response names (Anthropic's "model")


def held_model_target(session, live: dict[str, str], resource, *, title: str, ready: str,
                      get_operation: str) -> Target:
    """Where a model a serving node holds under a job's lease (a deployment's, a Provisioned
    Throughput's) is answered: the node holding the lease, told the resource's ARN. Still loading, or
    between nodes: ModelNotReadyException (a client retries it); ended in another status: the reason."""
    if resource.status == "Creating":
        raise ModelNotReadyException(
            f"The {title} '{resource.name}' is still Creating: its model is being loaded. "
            f"Retry once {get_operation} shows it {ready}.")
    if resource.status == "Failed":
        raise ValidationException(f"The {title} '{resource.name}' is Failed and cannot serve requests: "
                                  f"{resource.body.get('failureMessage', '')}".rstrip(": "))
    job = lease.job_for(session, resource)
    endpoint = live.get(job.lease_owner) if job is not None and job.state == "running" else None
    if endpoint is None:
        raise ModelNotReadyException(f"The {title} '{resource.name}' is moving to another serving node; retry shortly.")
    source = ModelSource.from_json(resource.body["_source"])
    return Target(endpoint, {"deployment": resource.arn}, source.kind, body_format(source),
                  source.foundation_model_id or resource.arn)


class NodeCall:
    """One request to a serving node; `next()` answers its messages in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.call = call_inspection.current.get()  # the runtime call it answers, if any

    @classmethod
    async def open(cls, ctx, target: Target, task: str, request: dict) -> "NodeCall | _Counted":
        call = call_inspection.current.get()
        if call is not None and task != "count":
            call.kind = target.kind
            if task == "text":  # a test's scripted reply answers without a node
                script = call_inspection.SCRIPTS.reply(call.account, {call.model_id, target.model_id}, request)
                if script is not None:
                    call.script_id = script.script_id
                    return _Counted(call_inspection.ScriptedCall(script, request), call)
        hop = await hop_for(ctx)
        host, port, tls = protocol.parse_endpoint(target.endpoint)
        if hop.require_tls and not tls:  # with --serving-tls-ca, no request goes over plain TCP
            log.error("serving node %s does not speak TLS, and --serving-tls-ca requires it", target.endpoint)
            raise ModelNotReadyException("The serving node of this model cannot be reached; retry shortly.")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, limit=protocol.MAX_LINE, ssl=hop.tls if tls else None,
                server_hostname=host if tls else None), CONNECT_TIMEOUT)
        except ssl.SSLError as exc:
            log.error("serving node %s: TLS failed: %s", target.endpoint, exc)
            raise ModelNotReadyException("The serving node of this model cannot be reached; retry shortly.")
        except (OSError, asyncio.TimeoutError):
            raise ModelNotReadyException("The serving node of this model cannot be reached; retry shortly.")
        call = cls(reader, writer)
        line = protocol.encode({"target": target.message_target, "task": task, "request": request})
        writer.write(protocol.sign(hop.secret, line) + line)
        await writer.drain()
        return call

    async def next(self) -> dict:
        line = await self.reader.readline()
        if not line:
            raise ModelNotReadyException("The serving node stopped while answering; retry.")
        message = protocol.decode(line)
        if "error" in message:
            raise node_error(message["error"])
        if "done" in message and self.call is not None:
            self.call.usage(message["done"])
        return message

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Counted:
    """A scripted reply whose final message gives the call its token counts, as a node's does."""

    def __init__(self, scripted: "call_inspection.ScriptedCall", call):
        self.scripted, self.call = scripted, call

    async def next(self) -> dict:
        message = await self.scripted.next()
        if "done" in message:
            self.call.usage(message["done"])
        return message

    def close(self) -> None:
        self.scripted.close()


def node_error(error: dict) -> BedrockError:
    """A node's error line as the modelled exception it names."""
    cls = getattr(errors, error.get("code", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, BedrockError)):
        cls = errors.InternalServerException
    return cls(error.get("message", "The model failed."))
