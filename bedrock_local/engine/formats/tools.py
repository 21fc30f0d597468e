"""Tool use, the same for every body family and every engine (torch-free): the checks of the tools a
request offers (a name and a JSON-schema input), how tool turns sit in `TextRequest.messages`, the one
plain text form of a tool call that every engine generates (`<tool_call>` + JSON + `</tool_call>`,
docs/formats.md "Tool use"), `ToolCallReader` that turns generated text into text and tool calls as it
streams, and the schema check of a call's input before it is answered.

Tool turns in `TextRequest.messages` take the form transformers' chat templates know:
- an assistant turn that called tools: {"role": "assistant", "content": text,
  "tool_calls": [{"id": toolUseId, "name": name, "arguments": input object}]};
- each tool result: {"role": "tool", "tool_call_id": toolUseId, "name": the tool's name,
  "content": the result as text (json blocks as compact JSON), "status": "error" or absent}.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from .common import TOOL_USE, FormatError

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
CALL_NAME = '{"name": '
CALL_ARGUMENTS = ', "arguments": '
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # the service model's ToolName
MALFORMED_TOOL_USE = "malformed_tool_use"  # a StopReason of Converse
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")  # ToolUseId


def new_tool_use_id() -> str:
    """A fresh toolUseId in AWS's form: "tooluse_" and 22 URL-safe characters."""
    return "tooluse_" + secrets.token_urlsafe(16)[:22]


def check_schema(schema: Any, where: str) -> dict:
    """`schema` is a JSON schema (its draft's meta-schema says so) of an object: what a tool's input is."""
    import jsonschema

    if not isinstance(schema, dict):
        raise FormatError(f"The value at {where} must be a JSON schema object.")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f".{p}" for p in exc.path)
        raise FormatError(f"The value at {where}{path} is not a valid JSON schema: {exc.message}") from None
    if schema.get("type") != "object":
        raise FormatError(f"The value at {where}.type must be one of the following: object.")
    return schema


def check_tools(tools: list[dict], where: str) -> list[dict]:
    """Tools as [{"name", "description", "input_schema"}]: names valid and distinct, schemas JSON schemas."""
    seen = set()
    for i, tool in enumerate(tools):
        name = tool["name"]
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise FormatError(f"The value at {where}[{i}].name must match the pattern [a-zA-Z0-9_-]{{1,64}}.")
        if name in seen:
            raise FormatError(f"The tool name '{name}' at {where}[{i}] is not unique: tool names must be unique.")
        seen.add(name)
    return tools


def check_choice(tools: list[dict] | None, choice: str | None, name: str | None, where: str) -> None:
    if choice is not None and not tools:
        raise FormatError(f"{where} needs tools to choose from.")
    if choice == "tool" and name not in {tool["name"] for tool in tools or []}:
        raise FormatError(f"The tool '{name}' named at {where} is not one of the tools in the request.")


def check_pairs(messages: list[dict], has_tools: bool, where: str) -> None:
    """AWS's rules for tool turns: tool use needs the tool configuration, and a turn of tool results
    answers exactly the tool uses of the turn before it (`messages` in the TextRequest form; `where`
    names the body's messages, numbered by turn as the body numbers them)."""
    if not has_tools and any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        raise FormatError("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    turns = _turns(messages)
    for number in range(len(turns) + 1):
        turn = turns[number] if number < len(turns) else []
        previous = turns[number - 1] if number else []
        results = [m["tool_call_id"] for m in turn if m["role"] == "tool"]
        uses = [call["id"] for m in previous if m["role"] == "assistant" for call in m.get("tool_calls") or []]
        if len(results) > len(uses):
            raise FormatError(f"The number of toolResult blocks at {where}.{number}.content exceeds the number of "
                              "toolUse blocks of previous turn.")
        missing = [use for use in uses if use not in results]
        if missing:
            raise FormatError(f"Expected toolResult blocks at {where}.{number}.content for the following Ids: "
                              f"{', '.join(missing)}")
        unknown = [r for r in results if r not in uses]
        if unknown:
            raise FormatError(f"The toolResult blocks at {where}.{number}.content name toolUseId(s) "
                              f"{', '.join(unknown)} that the toolUse blocks of the previous turn do not.")


def _turns(messages: list[dict]) -> list[list[dict]]:
    """The body's turns: consecutive user-side messages (user and tool results) are one user turn."""
    turns: list[list[dict]] = []
    for message in messages:
        side = "assistant" if message["role"] == "assistant" else "user"
        if turns and ("assistant" if turns[-1][0]["role"] == "assistant" else "user") == side:
            turns[-1].append(message)
        else:
            turns.append([message])
    return turns


def result_text(blocks: list[dict]) -> str:
    """A toolResult's content as the text the model reads: text blocks as they are, json blocks as JSON."""
    parts = []
    for block in blocks:
        if "text" in block:
            parts.append(block["text"])
        elif "json" in block:
            parts.append(json.dumps(block["json"], ensure_ascii=False))
    return "\n".join(parts)


def call_text(name: str, arguments: Any) -> str:
    """A tool call in the plain form every engine generates."""
    return f"{CALL_OPEN}{CALL_NAME}{json.dumps(name)}{CALL_ARGUMENTS}{json.dumps(arguments, ensure_ascii=False)}}}" \
           f"{CALL_CLOSE}"


def validate_input(schema: dict, value: Any) -> str | None:
    """None when `value` validates against `schema`, else what is wrong."""
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return exc.message
    return None


class ToolCallReader:
    """Reads the text a model generates for a request with tools, piece by piece: `feed` answers the
    events to stream, ("text", piece), ("tool_use", {"toolUseId", "name"}) and ("tool_input", JSON piece);
    `finish` answers (text, tool calls), each call's input parsed and checked against its tool's schema.

    The answer is either text or one call: text that starts with `<tool_call>` is a call (the grammar of
    engine/constrained.py lets nothing else start with it). Text that could still be the start of the
    marker is held back."""

    def __init__(self, tools: list[dict]):
        self.schemas = {tool["name"]: tool.get("input_schema") or {} for tool in tools}
        self.raw = ""
        self.mode: str | None = None  # None (undecided), "text" or "call"
        self.sent = 0  # characters of raw handed out (text mode), or of the arguments (call mode)
        self.tool_use_id: str | None = None
        self.name: str | None = None
        self._head = len(CALL_OPEN) + len(CALL_NAME)

    def feed(self, piece: str) -> list[tuple[str, Any]]:
        self.raw += piece
        events: list[tuple[str, Any]] = []
        if self.mode is None:
            if self.raw.startswith(CALL_OPEN[: len(self.raw)]) and len(self.raw) < len(CALL_OPEN):
                return events
            self.mode = "call" if self.raw.startswith(CALL_OPEN) else "text"
        if self.mode == "text":
            events.append(("text", self.raw[self.sent:]))
            self.sent = len(self.raw)
            return [e for e in events if e[1]]
        if self.name is None:
            rest = self.raw[self._head:]
            end = rest.find(CALL_ARGUMENTS)
            if end < 0:
                return events
            self.name = json.loads(rest[:end])
            self.tool_use_id = new_tool_use_id()
            self._head += end + len(CALL_ARGUMENTS)
            events.append(("tool_use", {"toolUseId": self.tool_use_id, "name": self.name}))
        arguments = self.raw[self._head:]
        tail = "}" + CALL_CLOSE
        cut = arguments.find(tail)
        upto = cut if cut >= 0 else max(self.sent, len(arguments) - len(tail))
        if upto > self.sent:
            events.append(("tool_input", arguments[self.sent:upto]))
            self.sent = upto
        return events

    def finish(self) -> tuple[str, list[dict], str | None]:
        """(text, tool calls, stop reason) of everything fed: a call comes with the stop reason
        "tool_use"; a call cut off before it closed (max tokens) gives no call and no stop reason of
        its own (the generator's stands); a call that does not parse or validate (never, under the
        grammar) gives none either, with "malformed_tool_use"."""
        if self.mode != "call" and not self.raw.startswith(CALL_OPEN):
            return self.raw, [], None
        body = self.raw[len(CALL_OPEN):]
        if not body.endswith(CALL_CLOSE):
            return "", [], None
        try:
            call = json.loads(body[: -len(CALL_CLOSE)])
            name, arguments = call["name"], call["arguments"]
        except (ValueError, KeyError, TypeError):
            return "", [], MALFORMED_TOOL_USE
        if name not in self.schemas or validate_input(self.schemas[name], arguments) is not None:
            return "", [], MALFORMED_TOOL_USE
        return "", [{"toolUseId": self.tool_use_id or new_tool_use_id(), "name": name, "input": arguments}], TOOL_USE
