"""What a customization request and its data must satisfy, without loading any ML library: the
hyper-parameters a base model offers (`HYPERPARAMETERS`, strings on the wire as on AWS) parsed into
a `TrainingConfig`, and JSONL training / validation lines (`{"prompt", "completion"}`, the
`bedrock-conversation-2024` conversation form, `{"input"}` for continued pre-training) read into the
rows the trainer consumes, or a `DataError` naming the file and line. The API process checks
requests with this module; engine/training.py trains."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FINE_TUNING, CONTINUED_PRE_TRAINING = "FINE_TUNING", "CONTINUED_PRE_TRAINING"
CUSTOMIZATION_TYPES = (FINE_TUNING, CONTINUED_PRE_TRAINING)
CONVERSATION_SCHEMA = "bedrock-conversation-2024"


class DataError(Exception):
    """A training or validation file is unusable; the message names the file and line."""


class HyperParameterError(Exception):
    """A hyper-parameter is unknown or out of range; the message names the key and what it accepts."""


# --------------------------------------------------------------------------------------------
# Hyper-parameters


def _int(low: int, high: int, default: str, description: str) -> dict:
    return {"type": "int", "min": low, "max": high, "default": default, "description": description}


def _float(low: float, high: float, default: str, description: str) -> dict:
    return {"type": "float", "min": low, "max": high, "default": default, "description": description}


# The schema a base model offers: strings on the wire, as on AWS.
HYPERPARAMETERS: dict[str, dict] = {
    "epochCount": _int(1, 10, "2", "Number of passes over the training data."),
    "batchSize": _int(1, 64, "8", "Records per optimizer step."),
    "learningRate": _float(1e-7, 1e-2, "0.0001", "Peak learning rate of AdamW (then a linear decay to 0)."),
    "learningRateWarmupSteps": _int(0, 250, "0", "Steps over which the learning rate rises from 0 to its peak."),
    "loraRank": _int(0, 64, "0", "0 trains every weight (full fine-tuning); above 0, the rank of LoRA adapters on "
                     "the attention and MLP projections, merged into the model at the end."),
    "loraAlpha": _int(1, 128, "16", "LoRA scaling factor (used when loraRank > 0)."),
    "loraDropout": _float(0.0, 0.5, "0.05", "Dropout on the LoRA inputs (used when loraRank > 0)."),
    "maxSequenceLength": _int(32, 2048, "512", "Records longer than this many tokens are truncated."),
}


@dataclass
class TrainingConfig:
    customization_type: str  # FINE_TUNING | CONTINUED_PRE_TRAINING
    epoch_count: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    lora_rank: int  # 0: full fine-tuning
    lora_alpha: int
    lora_dropout: float
    max_length: int
    seed: int = 0
    # Trainer checkpoint every this many optimizer steps; None: spaced by their measured cost, so that
    # they take at most checkpoint_budget of the training time (engine/training.py CheckpointClock).
    checkpoint_steps: int | None = None
    checkpoint_budget: float = 0.05
    # Recompute activations in the backward pass (less memory, ~20-30% slower). Off by default:
    # the packaged models are small; turn it on for long sequences on a big model.
    gradient_checkpointing: bool = False


def _show_number(value: float) -> str:
    return f"{value:g}"


def _allowed(key: str, spec: dict) -> str:
    kind = "an integer" if spec["type"] == "int" else "a number"
    return f"hyperParameters.{key} must be {kind} from {_show_number(spec['min'])} to {_show_number(spec['max'])}"


def _parse_value(key: str, raw: Any) -> int | float:
    spec = HYPERPARAMETERS[key]
    text = raw if isinstance(raw, str) else str(raw)
    problem = f"{_allowed(key, spec)}, got {text!r}"
    if isinstance(raw, bool):
        raise HyperParameterError(problem)
    try:
        if spec["type"] == "int":
            if isinstance(raw, float) or not re.fullmatch(r"\s*[+-]?\d+\s*", text):
                raise ValueError
            value: int | float = int(text)
        else:
            value = float(text)
    except ValueError:
        raise HyperParameterError(problem) from None
    if not math.isfinite(value) or not spec["min"] <= value <= spec["max"]:
        raise HyperParameterError(problem)
    return value


def parse_hyperparameters(values: dict[str, str], customization_type: str) -> tuple[TrainingConfig, dict[str, str]]:
    """Check `values` (hyperParameters of CreateModelCustomizationJob) against HYPERPARAMETERS.
    Answers the config and every effective value as a string (defaults filled in). Raises
    HyperParameterError naming the key and its allowed range, or the allowed keys."""
    if customization_type not in CUSTOMIZATION_TYPES:
        raise HyperParameterError(
            f"customizationType must be one of {', '.join(CUSTOMIZATION_TYPES)}, got {customization_type!r}"
        )
    values = dict(values or {})
    for key in sorted(values):
        if key not in HYPERPARAMETERS:
            raise HyperParameterError(
                f"hyperParameters.{key} is not a hyper-parameter of this model; the allowed keys are "
                + ", ".join(sorted(HYPERPARAMETERS))
            )
    effective = {key: str(values.get(key, spec["default"])) for key, spec in HYPERPARAMETERS.items()}
    parsed = {key: _parse_value(key, values.get(key, spec["default"])) for key, spec in HYPERPARAMETERS.items()}
    config = TrainingConfig(
        customization_type=customization_type,
        epoch_count=parsed["epochCount"],
        batch_size=parsed["batchSize"],
        learning_rate=parsed["learningRate"],
        warmup_steps=parsed["learningRateWarmupSteps"],
        lora_rank=parsed["loraRank"],
        lora_alpha=parsed["loraAlpha"],
        lora_dropout=parsed["loraDropout"],
        max_length=parsed["maxSequenceLength"],
    )
    return config, effective


# --------------------------------------------------------------------------------------------
# Training data


class _Problem(Exception):
    """What is wrong with one line (read_records adds the file and line)."""


def _kinds(record: dict) -> str:
    return ", ".join(sorted(record)) or "none"


def _text_field(value: Any, what: str, *, non_empty: bool) -> str:
    if not isinstance(value, str):
        raise _Problem(f"{what} must be a string, got {_json_type(value)}")
    if non_empty and not value.strip():
        raise _Problem(f"{what} is empty")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _text_blocks(blocks: Any, what: str) -> str:
    """The text of a list of content blocks [{"text": ...}, ...] (joined by newlines)."""
    if not isinstance(blocks, list) or not blocks:
        raise _Problem(f'{what} must be a non-empty array of content blocks like [{{"text": "..."}}]')
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or "text" not in block:
            found = _kinds(block) if isinstance(block, dict) else _json_type(block)
            raise _Problem(f'{what}[{index}] must be a text block {{"text": "..."}} (found {found}); '
                           "only text content can be trained on")
        texts.append(_text_field(block["text"], f"{what}[{index}].text", non_empty=False))
    return "\n".join(texts)


def _conversation(record: dict) -> list[dict]:
    """A bedrock-conversation-2024 line -> one conversational prompt/completion row per assistant turn."""
    schema = record.get("schemaVersion")
    if schema != CONVERSATION_SCHEMA:
        raise _Problem(f'"schemaVersion" must be "{CONVERSATION_SCHEMA}", got {json.dumps(schema)}')
    unknown = sorted(set(record) - {"schemaVersion", "system", "messages"})
    if unknown:
        raise _Problem(f"unknown field(s) {', '.join(unknown)} (a conversation has schemaVersion, system, messages)")
    context: list[dict] = []
    if "system" in record:
        system = record["system"]
        if not isinstance(system, list):
            raise _Problem(f'"system" must be an array of content blocks, got {_json_type(system)}')
        if system:
            context.append({"role": "system", "content": _text_blocks(system, "system")})
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Problem('"messages" must be a non-empty array of {"role", "content"} objects')
    rows: list[dict] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _Problem(f"{where} must be an object, got {_json_type(message)}")
        role = message.get("role")
        expected = "user" if index % 2 == 0 else "assistant"
        if role not in ("user", "assistant"):
            raise _Problem(f'{where}.role must be "user" or "assistant", got {json.dumps(role)}')
        if role != expected:
            raise _Problem(f'{where}.role is "{role}": messages must alternate, starting with "user"')
        turn = {"role": role, "content": _text_blocks(message.get("content"), f"{where}.content")}
        if role == "assistant":
            if not turn["content"].strip():
                raise _Problem(f"{where} (assistant) has no text to train on")
            rows.append({"prompt": list(context), "completion": [turn]})
        context.append(turn)
    if messages[-1].get("role") != "assistant":
        raise _Problem(f'the last message is "{messages[-1].get("role")}": a conversation must end with an '
                       "assistant turn (the response to train on)")
    return rows


def _fine_tuning_rows(record: dict) -> tuple[str, list[dict]]:
    if "schemaVersion" in record or "messages" in record:
        return "conversation", _conversation(record)
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if key not in record:
                raise _Problem(f'"{key}" is missing (a fine-tuning line is {{"prompt": "...", "completion": "..."}})')
        prompt = _text_field(record["prompt"], '"prompt"', non_empty=False)
        completion = _text_field(record["completion"], '"completion"', non_empty=True)
        return "prompt/completion", [{"prompt": prompt, "completion": completion}]
    raise _Problem(
        f'a fine-tuning line is {{"prompt": "...", "completion": "..."}} or a "{CONVERSATION_SCHEMA}" '
        f"conversation (schemaVersion, system, messages); found the field(s) {_kinds(record)}"
    )


def _pre_training_rows(record: dict) -> tuple[str, list[dict]]:
    if "input" not in record:
        raise _Problem(f'"input" is missing (a continued pre-training line is {{"input": "..."}}); '
                       f"found the field(s) {_kinds(record)}")
    return "input", [{"text": _text_field(record["input"], '"input"', non_empty=True)}]


def read_records(lines: Iterable[bytes | str], file_name: str, customization_type: str) -> list[dict]:
    """Parse JSONL training or validation data into SFTTrainer rows:
    FINE_TUNING `{"prompt", "completion"}` -> the same (completion-only loss); a
    bedrock-conversation-2024 line -> `{"prompt": [messages...], "completion": [assistant turn]}`
    per assistant turn (assistant-only loss); CONTINUED_PRE_TRAINING `{"input"}` -> `{"text"}`.
    Blank lines are skipped; one file holds one format. Raises DataError
    ("line 3 of train.jsonl: ...") at the first bad line, or when there is no record."""
    if customization_type not in CUSTOMIZATION_TYPES:
        raise ValueError(f"unknown customization type {customization_type!r}")
    parse = _fine_tuning_rows if customization_type == FINE_TUNING else _pre_training_rows
    rows: list[dict] = []
    first_form: tuple[str, int] | None = None
    number = 0
    for number, line in enumerate(lines, start=1):
        where = f"line {number} of {file_name}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: must be a JSON object, got {_json_type(record)}")
        try:
            form, new_rows = parse(record)
        except _Problem as exc:
            raise DataError(f"{where}: {exc}") from None
        if first_form is None:
            first_form = (form, number)
        elif form != first_form[0]:
            raise DataError(f"{where}: a {form} line, but line {first_form[1]} is a {first_form[0]} line; "
                            "one file holds one format")
        rows += new_rows
    if not rows:
        what = "lines" if number else "content"
        raise DataError(f"{file_name} has no records (no non-blank {what}); it needs at least one JSON line")
    return rows


def row_form(row: dict) -> str:
    if "text" in row:
        return "text"
    return "conversation" if isinstance(row.get("prompt"), list) else "prompt/completion"
