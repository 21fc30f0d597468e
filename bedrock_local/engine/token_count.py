"""CountTokens on the engine side: how many input tokens a TextRequest is for the model that
would answer it. The count is by construction the `input_tokens` the same request gets from
generation: a model with weights counts the ids of `TextModel.prompt_ids` (chat template, tools
and tool turns included: the one way a request becomes a prompt), a stub model (engine/stub_models.py)
counts the words it reads, as its `answer` does. Duck-typed on the engine, so it imports no torch."""

from __future__ import annotations

import contextlib
import dataclasses

from .formats import TextRequest


def prompt_tokens(engine, request: TextRequest) -> int:
    """The input tokens of `request` on `engine` (a TextModel such as the ContinuousBatcher, or a
    stub text model). Raises FormatError where generation would refuse the prompt itself (no chat
    template, empty)."""
    # counting asks for no new tokens: the generation budget must not make a count fail where the
    # prompt alone fits the context
    request = dataclasses.replace(request, max_tokens=1)
    prompt_ids = getattr(engine, "prompt_ids", None)
    if prompt_ids is not None:
        # the batcher renders prompts under this lock (its tokenizer is shared with its decoding thread)
        with getattr(engine, "_prompt_lock", None) or contextlib.nullcontext():
            return len(prompt_ids(request))
    from .stub_models import count_tokens, request_texts

    return sum(count_tokens(text) for text in request_texts(request))
