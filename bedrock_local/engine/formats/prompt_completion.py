"""What the prompt completion bodies (Meta Llama, Mistral) share: a raw prompt, a token limit,
temperature and top_p; a response that is one piece with all the text; "stop" or "length"."""

from __future__ import annotations

from typing import ClassVar

from .checks import a_number, a_string, an_integer
from .common import MAX_TOKENS, InvokeRequest, TextFormat, TextResult


class PromptCompletion(TextFormat):
    required = ("prompt",)
    TOKEN_LIMIT_FIELD: ClassVar[str]  # the token limit's field
    MAX_TOKEN_LIMIT: ClassVar[int]  # its largest value
    DEFAULTS: ClassVar[dict]  # the default of each optional field

    @classmethod
    def prompt_fields(cls, body: dict, where: str) -> tuple[str, int, float, float]:
        """The prompt, the token limit, temperature and top_p, checked."""
        prompt = a_string(body["prompt"], f"{where}.prompt")
        limit = cls.TOKEN_LIMIT_FIELD
        max_tokens = an_integer(body.get(limit, cls.DEFAULTS[limit]), f"{where}.{limit}", 1, cls.MAX_TOKEN_LIMIT)
        temperature = a_number(body.get("temperature", cls.DEFAULTS["temperature"]), f"{where}.temperature", 0, 1)
        top_p = a_number(body.get("top_p", cls.DEFAULTS["top_p"]), f"{where}.top_p", 0, 1)
        return prompt, max_tokens, temperature, top_p

    @classmethod
    def stop_reason(cls, reason: str) -> str:
        return "length" if reason == MAX_TOKENS else "stop"

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        return cls.piece(result.text, result.input_tokens, result.output_tokens, cls.stop_reason(result.stop_reason))
