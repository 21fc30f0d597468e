"""The wire between the API process and a serving node: one TCP connection per request, JSON
lines both ways.

The API sends one line:
  {"target": {"deployment": "<arn>"} | {"source": <ModelSource json>},
   "task": "text" | "embedding" | "count", "request": <TextRequest fields> | {"items": [<EmbeddingRequest fields>, ...]}}
The node answers, for a text request, zero or more `{"delta": "<text>"}` lines as tokens come out
(for a tool call, `{"tool_use": {"toolUseId", "name"}}` and then `{"tool_input": "<json piece>"}` lines)
and then exactly one final line: `{"done": <TextResult fields>}` (`{"done": {"results": [<EmbeddingResult fields>, ...]}}` for
embeddings, `{"done": {"input_tokens": n}}` for a count) or
`{"error": {"code": "<modelled exception name>", "message": "..."}}`. Closing the connection
early cancels the request.
"""

import json

MAX_LINE = 64 * 1024 * 1024  # a request line holds the whole prompt


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    return json.loads(line)


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}
