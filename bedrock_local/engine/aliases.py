"""Model aliases: AWS model ids that existing Bedrock code names, answered by packaged models.

Each alias is an AWS foundation model id with the metadata AWS lists for it (name, provider,
modalities, streaming, customizations, inference types, lifecycle, inference-profile geographies,
whether AWS serves it on demand only through a profile, the toolChoice kinds it takes, CountTokens),
the body format of its provider's InvokeModel requests (engine/formats/) and `runsOn`: the packaged
model that answers for it, or one of the test models (`bedrock-local.test-text-v1:0`,
`bedrock-local.test-embed-v1:0`, engine/stub_models.py), which load nothing and answer a documented
function of the input. The default map is AWS's catalog as recorded in supported_models.json (its
date and sources are in the file): text ids run on SmolLM2, embedding ids on MiniLM. A JSON file
(`serve --model-aliases FILE`) adds aliases or replaces default ones by id; `"replaceDefaults": true`
drops the defaults:

    {"replaceDefaults": false,
     "aliases": [{"modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                  "runsOn": "huggingface.smollm2-135m-instruct-v1:0",
                  "bodyFormat": "anthropic-messages",
                  "modelName": "Claude 3 Haiku", "providerName": "Anthropic",
                  "inputModalities": ["TEXT", "IMAGE"], "outputModalities": ["TEXT"],
                  "responseStreamingSupported": true, "customizationsSupported": ["FINE_TUNING"],
                  "inferenceTypesSupported": ["ON_DEMAND"], "geographies": ["us", "eu", "apac"],
                  "profileOnly": false, "toolChoices": ["auto", "any", "tool"], "countTokens": false}]}

Instead of runsOn, `runsOnWeights` names a local Hugging Face folder of a text model (config.json,
*.safetensors, a tokenizer; a relative path is taken from the alias file's folder): the AWS id is then
answered by those weights, for self-hosters who want code written for an AWS id to run on their own
model. The folder is checked when the file is read (its config.json, weights and tokenizer; its
weights load on first use); such an alias supports no tool use and no CountTokens unless its entry
says so (`toolChoices`, `countTokens`), and may be customized like a packaged model:

    {"modelId": "meta.llama3-1-405b-instruct-v1:0", "runsOnWeights": "/models/my-llama",
     "bodyFormat": "meta-llama"}

A distillation student lists DISTILLATION in customizationsSupported and names its teachers in
`distillationTeachers` (foundation model ids; an AWS student's default is the pairs AWS allows, as
recorded in supported_models.json).

Exactly one of runsOn and runsOnWeights is required, and modelId and bodyFormat. For an id in AWS's catalog the rest defaults to
what AWS says about it (customizationsSupported excepted: none unless given); for another id, from the
model it runs on (geographies: none, profileOnly: false, toolChoices and countTokens: the model's own;
modelName: the id cut to 20 characters). modelName and
providerName are what GetFoundationModel reports, so at most 20 characters each (the service model's
BrandedName); `fullName` may hold a longer name. An alias on a test model supports no customization
(customizationsSupported must stay empty) and may carry `"faults"`, the faults it injects for testing
retry logic (engine/stub_models.py):

    {"modelId": "anthropic.claude-3-haiku-20240307-v1:0", "runsOn": "bedrock-local.test-text-v1:0",
     "bodyFormat": "anthropic-messages",
     "faults": {"throttle": {"every": 3},
                "errors": {"fault": "model-error", "rate": 0.1, "seed": 7},
                "job": {"action": "fail", "afterRecords": 500}}}
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from .catalog import (ACTIVE, CONTINUED_PRE_TRAINING, DISTILLATION, EMBEDDING, FINE_TUNING, FOUNDATION_MODELS,
                      GEOGRAPHY_REGIONS, IMAGE, KIND_EMBEDDING, KIND_TEXT, LEGACY, ON_DEMAND, PROVISIONED, TEXT,
                      TOOL_CHOICES, FoundationModel, set_aliases, weights_of_id)
from .formats import EMBEDDING_FORMATS, TEXT_FORMATS
from .stub_models import FaultConfigError, parse_faults

SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
MINILM = "sentence-transformers.all-minilm-l6-v2-v1:0"
TEXT_BODY_FORMATS = TEXT_FORMATS
EMBEDDING_BODY_FORMATS = tuple(name for name in EMBEDDING_FORMATS if name != "titan-embed")  # that one is MiniLM's own
MODEL_ID = re.compile(r"[a-z0-9-]{1,63}[.][a-z0-9-]{1,63}([.:]?[a-z0-9-]{1,63}){0,3}")
BRANDED_NAME_MAX = 20  # the service model's BrandedName (modelName, providerName): 1 to 20 characters
SUPPORTED_MODELS_FILE = Path(__file__).with_name("supported_models.json")


def supported_models() -> dict:
    """AWS's catalog as recorded in supported_models.json: {"asOf", "source", "fields", "models": [...]}."""
    return json.loads(SUPPORTED_MODELS_FILE.read_text(encoding="utf-8"))


def default_entry(model: dict) -> dict:
    """One supported_models.json entry as an alias entry: text models run on SmolLM2, embedding models
    on MiniLM."""
    embedding = EMBEDDING in model["outputModalities"]
    return {"modelId": model["modelId"], "runsOn": MINILM if embedding else SMOLLM2, "bodyFormat": model["bodyFormat"],
            "modelName": model["shortName"], "fullName": model["name"], "providerName": model["provider"],
            "inputModalities": model["inputModalities"], "outputModalities": model["outputModalities"],
            "responseStreamingSupported": model["streaming"], "customizationsSupported": model["customizations"],
            "inferenceTypesSupported": model["inferenceTypes"], "lifecycle": model["lifecycle"],
            "geographies": model["geographies"], "profileOnly": model["profileOnly"],
            "toolChoices": model["toolChoices"], "countTokens": model["countTokens"],
            "distillationTeachers": model.get("distillationTeachers", [])}


DEFAULT_ALIASES: list[dict] = [default_entry(model) for model in supported_models()["models"]]
_AWS_ENTRIES = {entry["modelId"]: entry for entry in DEFAULT_ALIASES}


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


def _weights_folder(value: str, where: str, base: Path | None) -> Path:
    """runsOnWeights: a local HF folder of a text model, checked without loading it (no torch here)."""
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        folder = (base or Path.cwd()) / folder
    folder = folder.resolve()
    if not folder.is_dir():
        raise AliasError(f"{where}.runsOnWeights {value!r}: no folder at {folder}")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise AliasError(f"{where}.runsOnWeights {value!r}: {folder} has no config.json (a Hugging Face model "
                         f"folder has config.json, *.safetensors and a tokenizer)") from None
    except ValueError as exc:
        raise AliasError(f"{where}.runsOnWeights {value!r}: {folder}/config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("architectures")):
        raise AliasError(f"{where}.runsOnWeights {value!r}: {folder}/config.json names no model_type or "
                         f"architectures")
    if not any(folder.glob("*.safetensors")):
        raise AliasError(f"{where}.runsOnWeights {value!r}: {folder} has no *.safetensors weights")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        raise AliasError(f"{where}.runsOnWeights {value!r}: {folder} has no tokenizer (tokenizer.json or "
                         f"tokenizer_config.json)")
    return folder


def _teachers(merged: dict, customizations: tuple, where: str) -> tuple[str, ...]:
    """distillationTeachers of a DISTILLATION student: given, or AWS's pairs for an AWS id (a model that
    does not list DISTILLATION has none, whatever the entry says: an alias on a test model keeps the
    AWS entry's teachers but is nobody's student)."""
    if DISTILLATION not in customizations:
        return ()
    teachers = _field(merged, "distillationTeachers", where, list, default=[])
    if not teachers:
        raise AliasError(f"{where}: a {DISTILLATION} student names its teachers in distillationTeachers "
                         f"(foundation model ids)")
    for teacher in teachers:
        if not isinstance(teacher, str) or not MODEL_ID.fullmatch(teacher):
            raise AliasError(f"{where}.distillationTeachers: {teacher!r} is not a Bedrock model id")
    return tuple(teachers)


def alias_model(entry: dict, where: str, base: Path | None = None) -> FoundationModel:
    """One alias entry as a catalog model (`base`: the folder relative runsOnWeights paths start from)."""
    if not isinstance(entry, dict):
        raise AliasError(f"{where} must be an object")
    model_id = _field(entry, "modelId", where, str, required=True)
    if not MODEL_ID.fullmatch(model_id):
        raise AliasError(f"{where}.modelId {model_id!r} is not a Bedrock model id (provider.name-vN:M)")
    where = f"{where} ({model_id})"
    if weights_of_id(model_id) is not None:
        raise AliasError(f"{where}.modelId names a packaged or test model itself; give the alias an id of its "
                         f"own (e.g. an AWS model id) and name {model_id} in runsOn")
    runs_on = _field(entry, "runsOn", where, str)
    weights = _field(entry, "runsOnWeights", where, str)
    if (runs_on is None) == (weights is None):
        raise AliasError(f"{where}: give exactly one of 'runsOn' (a packaged or test model) and 'runsOnWeights' "
                         f"(a local Hugging Face folder)")
    folder = None
    if weights is not None:
        folder = _weights_folder(weights, where, base)
        # what a model in a folder is taken to be: a text model, chat-templated, no tools unless told
        target = dataclasses.replace(weights_of_id(SMOLLM2), kind=KIND_TEXT, tool_choices=(), count_tokens=False)
        runs_on = ""
    else:
        target = weights_of_id(runs_on)
    if target is None:
        names = ", ".join(model.model_id for model in FOUNDATION_MODELS)
        raise AliasError(f"{where}.runsOn {runs_on!r} is not a packaged or test model ({names})")
    body_format = _field(entry, "bodyFormat", where, str, required=True)
    formats = EMBEDDING_BODY_FORMATS if target.kind == KIND_EMBEDDING else TEXT_BODY_FORMATS
    if body_format not in formats:
        raise AliasError(f"{where}.bodyFormat {body_format!r} does not fit a {target.kind} model: "
                         f"one of {', '.join(formats)}")
    customizations = _enum_list(entry, "customizationsSupported", where,
                                (FINE_TUNING, CONTINUED_PRE_TRAINING, DISTILLATION), ())
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
    # What AWS says about the id (when it is in its catalog) is the default of what the entry leaves out;
    # customizations stay the entry's own (a test model has none) and inference types follow profileOnly.
    aws = {key: value for key, value in _AWS_ENTRIES.get(model_id, {}).items()
           if key not in ("runsOn", "bodyFormat", "customizationsSupported", "inferenceTypesSupported")}
    entry = {**aws, **entry}
    teachers = _teachers(entry, customizations, where)
    model_name = _branded(entry, "modelName", where, _short_name(model_id))
    provider_name = _branded(entry, "providerName", where, model_id.split(".", 1)[0][:BRANDED_NAME_MAX])
    profile_only = _field(entry, "profileOnly", where, bool, default=False)
    # AWS lists INFERENCE_PROFILE for a model it serves only through a profile: a value outside the
    # service model's InferenceType enum, so such a model reports no ON_DEMAND (and keeps out of that filter)
    inference_types = _enum_list(entry, "inferenceTypesSupported", where, (ON_DEMAND, PROVISIONED),
                                 () if profile_only else (ON_DEMAND,))
    if profile_only and ON_DEMAND in inference_types:
        raise AliasError(f"{where}: profileOnly models are not invoked on demand, so inferenceTypesSupported "
                         f"must not list {ON_DEMAND}")
    return FoundationModel(
        model_id=model_id,
        model_name=model_name,
        provider_name=provider_name,
        kind=target.kind,
        input_modalities=_enum_list(entry, "inputModalities", where, (TEXT, IMAGE, EMBEDDING),
                                    target.input_modalities),
        output_modalities=_enum_list(entry, "outputModalities", where, (TEXT, IMAGE, EMBEDDING),
                                     target.output_modalities),
        response_streaming_supported=_field(entry, "responseStreamingSupported", where, bool,
                                            default=target.kind != KIND_EMBEDDING),
        customizations_supported=customizations,
        inference_types_supported=inference_types,
        package="",
        weights=None,
        body_format=body_format,
        runs_on=runs_on,
        faults=faults,
        geographies=_enum_list(entry, "geographies", where, tuple(GEOGRAPHY_REGIONS), ()),
        profile_only=profile_only,
        tool_choices=_enum_list(entry, "toolChoices", where, TOOL_CHOICES, target.tool_choices),
        count_tokens=_field(entry, "countTokens", where, bool, default=target.count_tokens),
        full_name=_field(entry, "fullName", where, str, default=""),
        lifecycle=_enum_list({"lifecycle": [entry["lifecycle"]]} if "lifecycle" in entry else {}, "lifecycle", where,
                             (ACTIVE, LEGACY), (ACTIVE,))[0],
        distillation_teachers=teachers,
        weights_folder=str(folder) if folder is not None else "",
    )


def _short_name(model_id: str) -> str:
    """The default modelName of an id AWS does not list: the id, or its name part, cut to 20 characters."""
    return model_id if len(model_id) <= BRANDED_NAME_MAX else model_id.split(".", 1)[1][:BRANDED_NAME_MAX]


def _branded(entry: dict, key: str, where: str, default: str) -> str:
    """modelName / providerName: what GetFoundationModel reports, within BrandedName's length."""
    value = _field(entry, key, where, str, default=default)
    if len(value) > BRANDED_NAME_MAX:
        raise AliasError(f"{where}.{key} {value!r} is {len(value)} characters; GetFoundationModel reports at most "
                         f"{BRANDED_NAME_MAX} (put the long name in fullName)")
    return value


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
    base = Path(path).resolve().parent if path is not None else None
    return [alias_model(entry, where, base) for entry, where in entries.values()]


def install(path: Path | None) -> None:
    """Configure this process's catalog with the aliases (the defaults and `path`'s)."""
    set_aliases(load_aliases(path))
