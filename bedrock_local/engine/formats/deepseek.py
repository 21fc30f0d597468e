"""The DeepSeek-R1 InvokeModel body (text completion): prompt, max_tokens, temperature, top_p, stop ->
choices [{text, stop_reason}]; a prompt in DeepSeek's chat template is read as one user turn."""

from __future__ import annotations

import re
from typing import ClassVar

from .checks import strings
from .common import InvokeRequest, TextRequest
from .prompt_completion import PromptCompletion

# DeepSeek's template: <｜begin▁of▁sentence｜>[system]<｜User｜>question<｜Assistant｜>[<think>\n]
_DEEPSEEK_TURN = re.compile(r"\s*(?:<｜begin▁of▁sentence｜>)?(?P<system>(?:(?!<｜User｜>).)*)<｜User｜>"
                            r"(?P<text>(?:(?!<｜User｜>|<｜Assistant｜>).)+)<｜Assistant｜>\s*(?:<think>\s*)?", re.S)


class DeepSeek(PromptCompletion):
    name = "deepseek"
    title = "DeepSeek text completion"
    optional = ("max_tokens", "temperature", "top_p", "stop")

    TOKEN_LIMIT_FIELD = "max_tokens"
    MAX_TOKEN_LIMIT = 32768
    # the guide gives no defaults; these are the ones the other prompt bodies here share
    DEFAULTS: ClassVar[dict] = {"max_tokens": 512, "temperature": 0.5, "top_p": 0.9}
    MAX_STOP_SEQUENCES = 10

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        prompt, max_tokens, temperature, top_p = cls.prompt_fields(body, where)
        stops = strings(body.get("stop", []), f"{where}.stop", cls.MAX_STOP_SEQUENCES)
        found = _DEEPSEEK_TURN.fullmatch(prompt)
        messages = [{"role": "user", "content": found["text"].strip()}] if found else None
        system = (found["system"].strip() or None) if found else None
        text = TextRequest(messages=messages, prompt=None if found else prompt, system=system, max_tokens=max_tokens,
                           temperature=temperature, top_p=top_p, stop_sequences=stops)
        return InvokeRequest(cls.name, text=text)

    @classmethod
    def piece(cls, text: str, input_tokens: int | None, output_tokens: int | None, stop_reason: str | None) -> dict:
        return {"choices": [{"text": text, "stop_reason": stop_reason}]}
