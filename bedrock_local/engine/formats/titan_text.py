"""The Amazon Titan Text (Express) InvokeModel body: inputText, textGenerationConfig -> results with
the output text, its token count and completion reason."""

from __future__ import annotations

import re
from typing import ClassVar

from .checks import a_number, a_string, an_integer, an_object, no_unknown_keys, strings
from .common import END_TURN, MAX_TOKENS, STOP_SEQUENCE, InvokeRequest, TextFormat, TextRequest, TextResult

_TITAN_TURN = re.compile(r"\s*User:(?P<text>.+?)\n\s*Bot:\s*", re.S)  # Titan's documented "User: ...\nBot:"


class TitanText(TextFormat):
    name = "titan-text"
    title = "Amazon Titan Text"
    required = ("inputText",)
    optional = ("textGenerationConfig",)

    CONFIG = ("temperature", "topP", "maxTokenCount", "stopSequences")
    DEFAULTS: ClassVar[dict] = {"maxTokenCount": 512, "temperature": 0.7, "topP": 0.9}
    MAX_TOKEN_COUNT = 8192
    # the service answers "FINISH" where the user guide lists "FINISHED"
    COMPLETION: ClassVar[dict] = {END_TURN: "FINISH", MAX_TOKENS: "LENGTH", STOP_SEQUENCE: "STOP_CRITERIA_MET"}

    @classmethod
    def parse(cls, body: dict, where: str) -> InvokeRequest:
        # inputText is the instruction to an instruction-tuned model: one user turn through the local
        # model's chat template (as a raw prompt the packaged chat model tends to end at once)
        prompt = a_string(body["inputText"], f"{where}.inputText")
        here = f"{where}.textGenerationConfig"
        config = an_object(body.get("textGenerationConfig", {}), here)
        no_unknown_keys(config, cls.CONFIG, here)
        max_tokens = an_integer(config.get("maxTokenCount", cls.DEFAULTS["maxTokenCount"]),
                                f"{here}.maxTokenCount", 1, cls.MAX_TOKEN_COUNT)
        temperature = a_number(config.get("temperature", cls.DEFAULTS["temperature"]), f"{here}.temperature", 0, 1)
        top_p = a_number(config.get("topP", cls.DEFAULTS["topP"]), f"{here}.topP", 0, 1)
        stops = strings(config.get("stopSequences", []), f"{here}.stopSequences", None)
        found = _TITAN_TURN.fullmatch(prompt)
        text = TextRequest(messages=[{"role": "user", "content": found["text"].strip() if found else prompt}],
                           prompt=None, system=None, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                           stop_sequences=stops)
        return InvokeRequest(cls.name, text=text)

    @classmethod
    def stop_reason(cls, reason: str) -> str:
        return cls.COMPLETION[reason]

    @classmethod
    def response(cls, request: InvokeRequest, result: TextResult, model_id: str) -> dict:
        return {
            "inputTextTokenCount": result.input_tokens,
            "results": [{
                "tokenCount": result.output_tokens,
                "outputText": result.text,
                "completionReason": cls.stop_reason(result.stop_reason),
            }],
        }

    @classmethod
    def piece(cls, text: str, input_tokens: int | None, output_tokens: int | None, stop_reason: str | None) -> dict:
        return {"outputText": text, "index": 0, "totalOutputTextTokenCount": output_tokens,
                "completionReason": stop_reason, "inputTextTokenCount": input_tokens}
