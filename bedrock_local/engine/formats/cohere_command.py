"""The Cohere Command R / R+ InvokeModel body: message, chat_history, preamble, max_tokens,
temperature, p, k, stop_sequences -> response_id, text, generation_id, chat_history, finish_reason;
streamed as stream-start, text-generation and stream-end events."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, ClassVar

from .checks import a_list, a_number, a_string, an_integer, an_object, no_unknown_keys, one_of, strings, top_k
from .common import MAX_TOKENS, METRICS_KEY, FormatError, InvokeRequest, TextFormat, TextRequest, TextResult

if TYPE_CHECKING:
    from .streaming import StreamRenderer


class CohereCommandR(TextFormat):
    name = "cohere-command-r"
    title = "Cohere Command R"
    required = ("message",)
    optional = ("chat_history", "preamble", "max_tokens", "temperature", "p", "k", "stop_sequences", "seed",
                "prompt_truncation")
    unsupported = (("documents", "document grounding"), ("search_queries_only", "search query generation"),
                   ("tools", "tool use through InvokeModel (use Converse)"), ("tool_results", "tool use"),
                   ("frequency_penalty", "frequency penalties"), ("presence_penalty", "presence penalties"),
                   ("return_prompt", "returning the prompt"), ("raw_prompting", "raw prompting"))

    # defaults and bounds as the guide gives them, but max_tokens: its default is the model's limit
    DEFAULTS: ClassVar[dict] = {"max_tokens": 512, "temperature": 0.3, "p": 0.75, "k": 0}
    MAX_TOKENS_LIMIT = 4000
    MAX_STOP_SEQUENCES = 4
    ROLES: ClassVar[dict] = {"USER": "user", "CHATBOT": "assistant"}

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        message = a_string(body["message"], f"{where}.message")
        system = [a_string(body["preamble"], f"{where}.preamble")] if body.get("preamble") is not None else []
        turns: list[dict] = []
        for i, entry in enumerate(a_list(body.get("chat_history", []), f"{where}.chat_history")):
            here = f"{where}.chat_history[{i}]"
            entry = an_object(entry, here)
            no_unknown_keys(entry, ("role", "message"), here)
            role = one_of(entry.get("role"), f"{here}.role", ("USER", "CHATBOT", "SYSTEM"))
            text = a_string(entry.get("message"), f"{here}.message")
            if role == "SYSTEM":
                system.append(text)
            elif turns and turns[-1]["role"] == cls.ROLES[role]:
                turns[-1]["content"] += "\n" + text
            else:
                turns.append({"role": cls.ROLES[role], "content": text})
        if turns and turns[0]["role"] != "user":
            raise FormatError(f"{where}.chat_history must start with a 'USER' turn")
        if turns and turns[-1]["role"] == "user":
            turns[-1]["content"] += "\n" + message
        else:
            turns.append({"role": "user", "content": message})
        max_tokens = an_integer(body.get("max_tokens", cls.DEFAULTS["max_tokens"]), f"{where}.max_tokens", 1,
                                cls.MAX_TOKENS_LIMIT)
        temperature = a_number(body.get("temperature", cls.DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
        top_p = a_number(body.get("p", cls.DEFAULTS["p"]), f"{where}.p", 0.01, 0.99)
        top_k({"top_k": body["k"]} if "k" in body else {}, where, 0, 500, cls.DEFAULTS["k"], temperature)
        if "seed" in body:
            an_integer(body["seed"], f"{where}.seed", 0, None)
        if "prompt_truncation" in body:
            one_of(body["prompt_truncation"], f"{where}.prompt_truncation", ("OFF", "AUTO_PRESERVE_ORDER"))
        stops = strings(body.get("stop_sequences", []), f"{where}.stop_sequences", cls.MAX_STOP_SEQUENCES)
        text = TextRequest(messages=turns, prompt=None, system="\n".join(system) or None, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops)
        history = list(body.get("chat_history", []))
        return InvokeRequest(cls.name, text=text, options={"message": message, "chat_history": history})

    @classmethod
    def stop_reason(cls, reason: str) -> str:
        return "MAX_TOKENS" if reason == MAX_TOKENS else "COMPLETE"

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str,
                 generation_id: str | None = None) -> dict:
        history = [*request.options.get("chat_history", []),
                   {"role": "USER", "message": request.options.get("message", "")},
                   {"role": "CHATBOT", "message": result.text}]
        return {"response_id": str(uuid.uuid4()), "text": result.text,
                "generation_id": generation_id or str(uuid.uuid4()), "chat_history": history,
                "finish_reason": cls.stop_reason(result.stop_reason)}

    @classmethod
    def _generation_id(cls, stream: StreamRenderer) -> str:
        return stream.state.setdefault("generation_id", str(uuid.uuid4()))

    @classmethod
    def opening_chunks(cls, stream: StreamRenderer, input_tokens: int | None, output_tokens: int | None) -> list[dict]:
        return [{"is_finished": False, "event_type": "stream-start", "generation_id": cls._generation_id(stream)}]

    @classmethod
    def delta_chunks(cls, stream: StreamRenderer, text: str, input_tokens: int | None,
                     output_tokens: int | None) -> list[dict]:
        return [{"is_finished": False, "event_type": "text-generation", "text": text}] if text else []

    @classmethod
    def closing_chunks(cls, stream: StreamRenderer, result: TextResult, metrics: dict) -> list[dict]:
        response = cls.response(stream.request, result, stream.model_id, cls._generation_id(stream))
        return [{"is_finished": True, "event_type": "stream-end", "finish_reason": response["finish_reason"],
                 "response": response, METRICS_KEY: metrics}]
