"""The API process's client of the serving nodes: where one request goes (`Target`), the request on
the node's socket read message by message (`NodeCall`, over node_protocol.py), and a node's error
line as the modelled exception it names (`node_error`).

Every runtime call reaches a node here, so this is also where the call being answered
(service/call_inspection.py `current`) learns its model's kind and token counts, and where a test's
scripted reply for it answers instead of a node."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from bedrock_local import node_protocol as protocol
from bedrock_local.service import call_inspection, errors
from bedrock_local.service.errors import BedrockError, ModelNotReadyException

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Target:
    endpoint: str
    message_target: dict  # the "target" member of the request line
    kind: str             # "text" | "embedding"
    body_format: str      # the InvokeModel body its model takes (engine/formats)
    model_id: str         # the model id the response names (Anthropic's "model")


class NodeCall:
    """One request to a serving node; `next()` answers its messages in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.call = call_inspection.current.get()  # the runtime call it answers, if any

    @classmethod
    async def open(cls, target: Target, task: str, request: dict) -> "NodeCall | _Counted":
        call = call_inspection.current.get()
        if call is not None and task != "count":
            call.kind = target.kind
            if task == "text":  # a test's scripted reply answers without a node
                script = call_inspection.SCRIPTS.reply(call.account, {call.model_id, target.model_id}, request)
                if script is not None:
                    call.script_id = script.script_id
                    return _Counted(call_inspection.ScriptedCall(script, request), call)
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
