"""Model aliases: AWS model ids that existing Bedrock code names, answered by packaged models.

Each alias is an AWS foundation model id with the metadata AWS lists for it (name, provider,
modalities, streaming, customizations), the body format of its provider's InvokeModel requests
(engine/formats/) and `runsOn`: the packaged model that answers for it, or one of the test
models (`bedrock-local.test-text-v1:0`, `bedrock-local.test-embed-v1:0`, engine/stub_models.py),
which load nothing and answer a documented function of the input. The default map sends
text ids to SmolLM2 and embedding ids to MiniLM. A JSON file (`serve --model-aliases FILE`) adds
aliases or replaces default ones by id; `"replaceDefaults": true` drops the defaults:

    {"replaceDefaults": false,
     "aliases": [{"modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                  "runsOn": "huggingface.smollm2-135m-instruct-v1:0",
                  "bodyFormat": "anthropic-messages",
                  "modelName": "Claude 3 Haiku", "providerName": "Anthropic",
                  "inputModalities": ["TEXT", "IMAGE"], "outputModalities": ["TEXT"],
                  "responseStreamingSupported": true, "customizationsSupported": ["FINE_TUNING"],
                  "inferenceTypesSupported": ["ON_DEMAND"]}]}

Only modelId, runsOn and bodyFormat are required; the rest default from the model it runs on.
An alias on a test model supports no customization (customizationsSupported must stay empty) and
may carry `"faults"`, the faults it injects for testing retry logic (engine/stub_models.py):

    {"modelId": "anthropic.claude-3-haiku-20240307-v1:0", "runsOn": "bedrock-local.test-text-v1:0",
     "bodyFormat": "anthropic-messages",
     "faults": {"throttle": {"every": 3},
                "errors": {"fault": "model-error", "rate": 0.1, "seed": 7},
                "job": {"action": "fail", "afterRecords": 500}}}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .catalog import (CONTINUED_PRE_TRAINING, EMBEDDING, FINE_TUNING, FOUNDATION_MODELS, IMAGE, KIND_EMBEDDING,
                      KIND_TEXT, ON_DEMAND, PROVISIONED, TEXT, FoundationModel, set_aliases, weights_of_id)
from .stub_models import FaultConfigError, parse_faults

SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
MINILM = "sentence-transformers.all-minilm-l6-v2-v1:0"
TEXT_BODY_FORMATS = ("meta-llama", "anthropic-messages", "titan-text", "mistral")
EMBEDDING_BODY_FORMATS = ("titan-embed-v1", "titan-embed-v2", "cohere-embed")
MODEL_ID = re.compile(r"[a-z0-9-]{1,63}[.][a-z0-9-]{1,63}([.:]?[a-z0-9-]{1,63}){0,3}")


def _text(model_id, name, provider, body_format, *, image=False, customizations=()):
    return {"modelId": model_id, "runsOn": SMOLLM2, "bodyFormat": body_format, "modelName": name,
            "providerName": provider, "inputModalities": [TEXT, IMAGE] if image else [TEXT],
            "outputModalities": [TEXT], "responseStreamingSupported": True,
            "customizationsSupported": list(customizations), "inferenceTypesSupported": [ON_DEMAND]}


def _embedding(model_id, name, provider, body_format):
    return {"modelId": model_id, "runsOn": MINILM, "bodyFormat": body_format, "modelName": name,
            "providerName": provider, "inputModalities": [TEXT], "outputModalities": [EMBEDDING],
            "responseStreamingSupported": False, "customizationsSupported": [],
            "inferenceTypesSupported": [ON_DEMAND]}


DEFAULT_ALIASES: list[dict] = [
    _text("anthropic.claude-3-haiku-20240307-v1:0", "Claude 3 Haiku", "Anthropic", "anthropic-messages",
          image=True, customizations=[FINE_TUNING]),
    _text("anthropic.claude-3-sonnet-20240229-v1:0", "Claude 3 Sonnet", "Anthropic", "anthropic-messages", image=True),
    _text("anthropic.claude-3-5-sonnet-20240620-v1:0", "Claude 3.5 Sonnet", "Anthropic", "anthropic-messages",
          image=True),
    _text("amazon.titan-text-express-v1", "Titan Text G1 - Express", "Amazon", "titan-text",
          customizations=[FINE_TUNING, CONTINUED_PRE_TRAINING]),
    _text("amazon.titan-text-lite-v1", "Titan Text G1 - Lite", "Amazon", "titan-text",
          customizations=[FINE_TUNING, CONTINUED_PRE_TRAINING]),
    _text("meta.llama3-8b-instruct-v1:0", "Llama 3 8B Instruct", "Meta", "meta-llama"),
    _text("meta.llama3-70b-instruct-v1:0", "Llama 3 70B Instruct", "Meta", "meta-llama"),
    _text("meta.llama3-1-8b-instruct-v1:0", "Llama 3.1 8B Instruct", "Meta", "meta-llama",
          customizations=[FINE_TUNING]),
    _text("mistral.mistral-7b-instruct-v0:2", "Mistral 7B Instruct", "Mistral AI", "mistral"),
    _text("mistral.mixtral-8x7b-instruct-v0:1", "Mixtral 8x7B Instruct", "Mistral AI", "mistral"),
    _embedding("amazon.titan-embed-text-v1", "Titan Embeddings G1 - Text", "Amazon", "titan-embed-v1"),
    _embedding("amazon.titan-embed-text-v2:0", "Titan Text Embeddings V2", "Amazon", "titan-embed-v2"),
    _embedding("cohere.embed-english-v3", "Embed English", "Cohere", "cohere-embed"),
    _embedding("cohere.embed-multilingual-v3", "Embed Multilingual", "Cohere", "cohere-embed"),
]


class AliasError(ValueError):
    """The alias file is wrong; the message names the entry and the field."""


def _field(entry: dict, key: str, where: str, kind, required: bool = False, default=None):
    if key not in entry:
        if required:
            raise AliasError(f"{where}: '{key}' is required")
        return default
    value = entry[key]
    if not isinstance(value, kind) or (kind is str and not value):
        raise AliasError(f"{where}.{key} must be {'a non-empty string' if kind is str else kind.__name__}, "
                         f"got {value!r}")
    return value


def _enum_list(entry: dict, key: str, where: str, allowed: tuple[str, ...], default: tuple[str, ...]) -> tuple:
    values = _field(entry, key, where, list, default=list(default))
    for value in values:
        if value not in allowed:
            raise AliasError(f"{where}.{key}: {value!r} is not one of {', '.join(allowed)}")
    return tuple(values)


def alias_model(entry: dict, where: str) -> FoundationModel:
    """One alias entry as a catalog model."""
    if not isinstance(entry, dict):
        raise AliasError(f"{where} must be an object")
    model_id = _field(entry, "modelId", where, str, required=True)
    if not MODEL_ID.fullmatch(model_id):
        raise AliasError(f"{where}.modelId {model_id!r} is not a Bedrock model id (provider.name-vN:M)")
    where = f"{where} ({model_id})"
    if weights_of_id(model_id) is not None:
        raise AliasError(f"{where}.modelId names a packaged or test model itself; give the alias an id of its "
                         f"own (e.g. an AWS model id) and name {model_id} in runsOn")
    runs_on = _field(entry, "runsOn", where, str, required=True)
    target = weights_of_id(runs_on)
    if target is None:
        names = ", ".join(model.model_id for model in FOUNDATION_MODELS)
        raise AliasError(f"{where}.runsOn {runs_on!r} is not a packaged or test model ({names})")
    body_format = _field(entry, "bodyFormat", where, str, required=True)
    formats = EMBEDDING_BODY_FORMATS if target.kind == KIND_EMBEDDING else TEXT_BODY_FORMATS
    if body_format not in formats:
        raise AliasError(f"{where}.bodyFormat {body_format!r} does not fit a {target.kind} model: "
                         f"one of {', '.join(formats)}")
    customizations = _enum_list(entry, "customizationsSupported", where, (FINE_TUNING, CONTINUED_PRE_TRAINING), ())
    if target.test_model and customizations:
        raise AliasError(f"{where}.customizationsSupported must be empty: {runs_on} is a test model, which "
                         f"cannot be customized")
    faults = None
    if "faults" in entry:
        if not target.test_model:
            raise AliasError(f"{where}.faults: faults are injected by the test models only; runsOn {runs_on!r} "
                             f"is not one")
        try:
            faults = parse_faults(entry["faults"], f"{where}.faults")
        except FaultConfigError as exc:
            raise AliasError(str(exc)) from exc
    return FoundationModel(
        model_id=model_id,
        model_name=_field(entry, "modelName", where, str, default=model_id),
        provider_name=_field(entry, "providerName", where, str, default=model_id.split(".", 1)[0]),
        kind=target.kind,
        input_modalities=_enum_list(entry, "inputModalities", where, (TEXT, IMAGE, EMBEDDING),
                                    target.input_modalities),
        output_modalities=_enum_list(entry, "outputModalities", where, (TEXT, IMAGE, EMBEDDING),
                                     target.output_modalities),
        response_streaming_supported=_field(entry, "responseStreamingSupported", where, bool,
                                            default=target.kind == KIND_TEXT),
        customizations_supported=customizations,
        inference_types_supported=_enum_list(entry, "inferenceTypesSupported", where, (ON_DEMAND, PROVISIONED),
                                             (ON_DEMAND,)),
        package="",
        weights=None,
        body_format=body_format,
        runs_on=runs_on,
        faults=faults,
    )


def load_aliases(path: Path | None) -> list[FoundationModel]:
    """The default map, with the file's entries added or replacing defaults by modelId."""
    entries = {entry["modelId"]: (entry, f"default alias {entry['modelId']}") for entry in DEFAULT_ALIASES}
    if path is not None:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise AliasError(f"{path}: cannot read it: {exc}") from exc
        except ValueError as exc:
            raise AliasError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(document, dict) or not isinstance(document.get("aliases", []), list):
            raise AliasError(f'{path}: expected {{"aliases": [...], "replaceDefaults": false}}')
        if document.get("replaceDefaults"):
            entries = {}
        for i, entry in enumerate(document.get("aliases", [])):
            key = entry.get("modelId") if isinstance(entry, dict) else None
            entries[key or f"#{i}"] = (entry, f"{path}: aliases[{i}]")
    return [alias_model(entry, where) for entry, where in entries.values()]


def install(path: Path | None) -> None:
    """Configure this process's catalog with the aliases (the defaults and `path`'s)."""
    set_aliases(load_aliases(path))
