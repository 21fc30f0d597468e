"""Tool use on the engine side: how a request's tools and tool turns reach the chat template, and the
constrained decoding that makes a tool call's input parse and validate against its tool's schema.

Prompts (`chat_messages`): a chat template that knows tools (its source reads `tools`) gets them the
transformers way (`tools=` of apply_chat_template, `tool_calls` on assistant messages, "tool"
messages); any other template gets them in a documented plain form (docs/formats.md "Tool use"): the
tools and the call syntax in the system prompt, earlier calls as their call text in the assistant
turns, tool results as `<tool_response>` user turns.

Decoding (`tool_grammar`, `ToolConstraint`): the answer of a request with tools follows a grammar,
built with llguidance from the tools' JSON schemas (the same schema goes as-is to any engine with
its own guided decoding, vLLM's included): toolChoice any / tool: exactly one call of one of the
tools / of the named tool; auto: either one call, or free text that does not start with `<`. A call
is `<tool_call>\\n{"name": NAME, "arguments": INPUT}\\n</tool_call>` (formats/tools.py), after which
only end of turn is allowed. `ToolConstraint` keeps one request's matcher: the mask of the tokens
allowed next, and the tokens taken.

Importing this module loads neither torch nor llguidance: both are imported where they are used.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .formats import FormatError, TextRequest
from .formats.tools import CALL_ARGUMENTS, CALL_CLOSE, CALL_NAME, CALL_OPEN, call_text

# the JSON the grammar lets through: no free whitespace (a small model could loop on it), and the
# separators of Python's json.dumps, the form the stub model and earlier turns use
JSON_FORM = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
FREE_TEXT = r"/[^<](.|\n)*/"


# --------------------------------------------------------------------------------------------
# Prompts


def template_knows_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = " ".join(template.values())
    return isinstance(template, str) and "tools" in template


def uses_tools(request: TextRequest) -> bool:
    return bool(request.tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in request.messages or [])


def tools_prompt(request: TextRequest) -> str:
    """The plain form of the tools for a template that does not know tools (goes in the system prompt)."""
    lines = ["You can call these tools. Each is a JSON object of its name, description and the JSON schema "
             "of its input:", "<tools>"]
    lines += [json.dumps({"name": t["name"], "description": t.get("description") or "",
                          "input_schema": t["input_schema"]}, ensure_ascii=False) for t in request.tools or []]
    lines += ["</tools>", "To call a tool, answer with nothing but:",
              f"{CALL_OPEN}{CALL_NAME}<the tool's name>{CALL_ARGUMENTS}<its input, a JSON object>}}{CALL_CLOSE}"]
    if request.tool_choice == "any":
        lines.append("You must call one of the tools.")
    elif request.tool_choice == "tool":
        lines.append(f"You must call the tool {request.tool_name}.")
    return "\n".join(lines)


def chat_messages(request: TextRequest, knows_tools: bool) -> tuple[list[dict], str | None, list[dict] | None]:
    """(messages, system text, tools for apply_chat_template) of a chat request, its tool turns in the
    form the template takes."""
    messages = request.messages or []
    if not uses_tools(request):
        return [dict(m) for m in messages], request.system, None
    if knows_tools:
        tools = [{"type": "function", "function": {"name": t["name"], "description": t.get("description") or "",
                                                   "parameters": t["input_schema"]}} for t in request.tools or []]
        converted = []
        for m in messages:
            if m["role"] == "tool":
                converted.append({"role": "tool", "content": m["content"], "tool_call_id": m["tool_call_id"],
                                  "name": m.get("name", "")})
            elif m.get("tool_calls"):
                converted.append({"role": "assistant", "content": m["content"], "tool_calls": [
                    {"type": "function", "id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in m["tool_calls"]]})
            else:
                converted.append(dict(m))
        return converted, request.system, tools or None
    plain: list[dict] = []
    for m in messages:
        if m["role"] == "tool":
            status = ' status="error"' if m.get("status") == "error" else ""
            text = f"<tool_response name={json.dumps(m.get('name', ''))}{status}>\n{m['content']}\n</tool_response>"
            if plain and plain[-1]["role"] == "user":
                plain[-1]["content"] += "\n" + text
            else:
                plain.append({"role": "user", "content": text})
        elif m["role"] == "user" and plain and plain[-1]["role"] == "user":
            plain[-1]["content"] += "\n" + m["content"]
        elif m.get("tool_calls"):
            calls = "\n".join(call_text(c["name"], c["arguments"]) for c in m["tool_calls"])
            plain.append({"role": "assistant", "content": f"{m['content']}\n{calls}" if m["content"] else calls})
        else:
            plain.append(dict(m))
    system = request.system
    if request.tools:
        system = f"{system}\n\n{tools_prompt(request)}" if system else tools_prompt(request)
    return plain, system, None


# --------------------------------------------------------------------------------------------
# The grammar


def tool_grammar(request: TextRequest) -> str | None:
    """The Lark grammar (llguidance's dialect) of the answer to `request`; None without tools."""
    if not request.tools:
        return None
    tools = request.tools
    if request.tool_choice == "tool":
        tools = [t for t in tools if t["name"] == request.tool_name]
    calls = [_call_rule(t) for t in tools]
    free = request.tool_choice not in ("any", "tool")  # auto: the model may answer text instead
    alternatives = [f"call_{i}" for i in range(len(calls))] + (["TEXT"] if free else [])
    lines = ["start: " + " | ".join(alternatives)]
    lines += [f"call_{i}: {rule}" for i, rule in enumerate(calls)]
    if free:
        lines.append(f"TEXT: {FREE_TEXT}")
    return "\n".join(lines)


def _call_rule(tool: dict) -> str:
    schema = dict(tool["input_schema"])
    schema["x-guidance"] = {**JSON_FORM, **schema.get("x-guidance", {})}
    opening = f"{CALL_OPEN}{CALL_NAME}{json.dumps(tool['name'])}{CALL_ARGUMENTS}"
    return f"{json.dumps(opening)} %json {json.dumps(schema)} {json.dumps('}' + CALL_CLOSE)}"


_LL_TOKENIZERS: dict[int, Any] = {}
_LOCK = threading.Lock()


def ll_tokenizer(tokenizer, eos_ids: set[int]):
    """The llguidance view of `tokenizer` (built once per tokenizer: about half a second)."""
    with _LOCK:
        found = _LL_TOKENIZERS.get(id(tokenizer))
        if found is None or found[0] is not tokenizer:
            import llguidance.hf

            eos = sorted(eos_ids) or None
            found = (tokenizer, llguidance.hf.from_tokenizer(tokenizer, eos_token=eos))
            _LL_TOKENIZERS[id(tokenizer)] = found
        return found[1]


class ToolConstraint:
    """One request's constrained decoding: `allowed()` the tokens that may come next (a bool tensor
    over the model's vocabulary), `take(token)` the token chosen. Built before the request is queued:
    a schema the grammar compiler cannot take is a FormatError then."""

    def __init__(self, request: TextRequest, tokenizer, eos_ids: set[int]):
        from llguidance import LLMatcher

        grammar = tool_grammar(request)
        self.tokenizer = ll_tokenizer(tokenizer, eos_ids)
        self.matcher = LLMatcher(self.tokenizer, LLMatcher.grammar_from_lark(grammar), log_level=0)
        if self.matcher.is_error():
            raise FormatError(f"a tool's inputSchema cannot be used for constrained decoding: "
                              f"{self.matcher.get_error()}")
        self.vocab = self.tokenizer.vocab_size

    @property
    def active(self) -> bool:
        """Still following the grammar (once the call is complete, end of turn is all it allows)."""
        return not self.matcher.is_error()

    def allowed(self, width: int, device) -> Any:
        import torch

        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
        mask = bits.flatten()[: min(self.vocab, width)].bool()
        if mask.numel() < width:  # model rows wider than the tokenizer's vocabulary: never allowed
            mask = torch.cat([mask, mask.new_zeros(width - mask.numel())])
        return mask.to(device)

    def take(self, token: int) -> None:
        if self.active and not self.matcher.is_stopped():
            self.matcher.consume_token(int(token))

    def restrict(self, logits, row: int) -> None:
        """Leave only the allowed tokens finite in `logits[row]` (in place)."""
        if self.active:
            allowed = self.allowed(logits.shape[-1], logits.device)
            logits[row].masked_fill_(~allowed, float("-inf"))
