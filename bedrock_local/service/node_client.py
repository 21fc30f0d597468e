"""The API process's client of the serving nodes: where one request goes (`Target`), the request on
the node's socket read message by message (`NodeCall`, over node_protocol.py), and a node's error
line as the modelled exception it names (`node_error`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from bedrock_local import node_protocol as protocol
from bedrock_local.service import errors
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
    cls = getattr(errors, error.get("code", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, BedrockError)):
        cls = errors.InternalServerException
    return cls(error.get("message", "The model failed."))
