"""The Mistral AI text completion InvokeModel body (limits of Mistral 7B Instruct): prompt,
max_tokens, stop, temperature, top_p, top_k -> outputs with text and stop reason; a single
`<s>[INST] ... [/INST]` prompt is read as one user turn."""

from __future__ import annotations

import re
from typing import ClassVar

from .checks import strings, top_k
from .common import InvokeRequest, TextRequest
from .prompt_completion import PromptCompletion

_MISTRAL_TURN = re.compile(r"\s*(?:<s>)?\s*\[INST\](?P<text>(?:(?!\[INST\]|\[/INST\]).)*)\[/INST\]\s*", re.S)


class Mistral(PromptCompletion):
    name = "mistral"
    title = "Mistral AI text completion"
    optional = ("max_tokens", "stop", "temperature", "top_p", "top_k")

    DEFAULTS: ClassVar[dict] = {"max_tokens": 512, "temperature": 0.5, "top_p": 0.9, "top_k": 50}
    TOKEN_LIMIT_FIELD = "max_tokens"
    MAX_TOKEN_LIMIT = 8192
    MAX_TOP_K = 200
    MAX_STOP_SEQUENCES = 10

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        prompt, max_tokens, temperature, top_p = cls.prompt_fields(body, where)
        chosen_top_k = top_k(body, where, 1, cls.MAX_TOP_K, cls.DEFAULTS["top_k"], temperature)
        stops = strings(body.get("stop", []), f"{where}.stop", cls.MAX_STOP_SEQUENCES)
        turn = _mistral_turn(prompt)
        text = TextRequest(messages=turn, prompt=None if turn else prompt, system=None, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops)
        return InvokeRequest(cls.name, text=text, options={} if chosen_top_k is None else {"top_k": chosen_top_k})

    @classmethod
    def piece(cls, text: str, input_tokens: int | None, output_tokens: int | None, stop_reason: str | None) -> dict:
        return {"outputs": [{"text": text, "stop_reason": stop_reason}]}


def _mistral_turn(prompt: str) -> list[dict] | None:
    """A single-turn Mistral prompt (`<s>[INST] ... [/INST]`) as one user message, so the local model
    answers it through its own chat template; None for any other prompt (used as raw text)."""
    found = _MISTRAL_TURN.fullmatch(prompt)
    return [{"role": "user", "content": found["text"].strip()}] if found and found["text"].strip() else None
