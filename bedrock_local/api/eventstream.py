"""application/vnd.amazon.eventstream: the binary frames of a streaming response
(ConverseStream, InvokeModelWithResponseStream), in the form botocore's EventStream parser reads.

A frame: total length and headers length (big-endian uint32), the CRC32 of those 8 bytes, the
headers (name length uint8, name, value type 7 = string, value length uint16, value), the payload,
and the CRC32 of everything before it. An event carries `:message-type` event, `:event-type` (the
member of the stream's union) and `:content-type`; its payload is the event structure serialized
by the codec. An error in the middle of a stream is a frame of `:message-type` exception.
"""

import json
import struct
import zlib

from botocore.model import Shape

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        out += struct.pack(">B", len(name_bytes)) + name_bytes
        out += struct.pack(">BH", _STRING, len(value_bytes)) + value_bytes
    return bytes(out)


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = _headers(headers)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(stream_shape: Shape, event: dict, to_json) -> bytes:
    """One `{member: value}` of the stream's union as a frame; `to_json(value, shape)` is the
    codec's serializer for the member's structure."""
    (name, value), = event.items()
    member = stream_shape.members[name]
    payload = json.dumps(to_json(value, member), separators=(",", ":")).encode()
    if member.metadata.get("exception"):
        headers = {":message-type": "exception", ":exception-type": name, ":content-type": "application/json"}
    else:
        headers = {":message-type": "event", ":event-type": name, ":content-type": "application/json"}
    return frame(headers, payload)
