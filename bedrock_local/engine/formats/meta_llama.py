"""The Meta Llama InvokeModel body: prompt, max_gen_len, temperature, top_p -> generation and the
token counts; a prompt in Llama 3's chat template is read as chat turns."""

from __future__ import annotations

import re
from typing import ClassVar

from .common import InvokeRequest, TextRequest
from .prompt_completion import PromptCompletion

_LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(?P<role>system|user|assistant)<\|end_header_id\|>\n\n"
                          r"(?P<text>.*?)(?:<\|eot_id\|>|$)", re.S)


class MetaLlama(PromptCompletion):
    name = "meta-llama"
    title = "Meta Llama"
    optional = ("max_gen_len", "temperature", "top_p")

    # limits and defaults as AWS documents them
    TOKEN_LIMIT_FIELD = "max_gen_len"
    MAX_TOKEN_LIMIT = 2048
    DEFAULTS: ClassVar[dict] = {"max_gen_len": 512, "temperature": 0.5, "top_p": 0.9}

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        prompt, max_gen_len, temperature, top_p = cls.prompt_fields(body, where)
        turns = llama3_turns(prompt)  # Llama 3's chat template: through the local model's own instead
        system, messages = turns if turns else (None, None)
        text = TextRequest(messages=messages, prompt=None if turns else prompt, system=system, max_tokens=max_gen_len,
                           temperature=temperature, top_p=top_p, stop_sequences=[])
        return InvokeRequest(cls.name, text=text)

    @classmethod
    def piece(cls, text: str, input_tokens: int | None, output_tokens: int | None, stop_reason: str | None) -> dict:
        return {"generation": text, "prompt_token_count": input_tokens, "generation_token_count": output_tokens,
                "stop_reason": stop_reason}


def llama3_turns(prompt: str) -> tuple[str | None, list[dict]] | None:
    """A prompt in Llama 3's chat template (`<|begin_of_text|><|start_header_id|>user<|end_header_id|>
    ... <|eot_id|><|start_header_id|>assistant<|end_header_id|>`) as (system, messages), so the local
    model answers through its own template; None for any other prompt (used as raw text)."""
    if "<|start_header_id|>" not in prompt:
        return None
    turns = [(m["role"], m["text"].strip()) for m in _LLAMA3_TURN.finditer(prompt)]
    system = "\n".join(text for role, text in turns if role == "system") or None
    messages = [{"role": role, "content": text} for role, text in turns if role != "system"]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()  # the open assistant header the answer goes after
    roles = [m["role"] for m in messages]
    if not messages or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2):
        return None
    return system, messages
