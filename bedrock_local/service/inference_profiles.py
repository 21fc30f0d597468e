"""Inference profiles: ListInferenceProfiles, GetInferenceProfile, CreateInferenceProfile and
DeleteInferenceProfile, and which model a profile id or ARN names when a request invokes one.

Two kinds, as on AWS:
- system-defined (cross-region) profiles, computed from the catalog and never stored: one per
  catalog model and geography it lists (`FoundationModel.geographies`), id `{geo}.{modelId}`, ARN
  `inference-profile/{id}` in the caller's account and region, `models[]` the foundation-model ARNs of
  the geography's regions (GEOGRAPHY_REGIONS). A region sees only the geographies that contain it: a
  us-east-1 caller has the `us.` and `global.` profiles, an eu-west-1 caller `eu.` and `global.`.
- application profiles, made by CreateInferenceProfile from a foundation-model ARN (one region) or a
  system profile ARN (its regions), kept as resources of kind `application-inference-profile` with
  tags, ARN `application-inference-profile/{12 characters}`.

Where AWS's own names and descriptions break the service model's patterns (a '.' in a name, a comma in
a description), ours are made to fit them: every answer validates against the output shape.
"""

import datetime
from typing import NamedTuple

from bedrock_local.engine.catalog import (GEOGRAPHY_REGIONS, FoundationModel, all_foundation_models,
                                          find_foundation_model)
from bedrock_local.service.common import (Pager, as_answer, find_in_scope, idempotent_replay, insert_unique,
                                          list_resources, list_shape, make_arn, new_id, parse_arn, request_hash)
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ResourceNotFoundException, ValidationException
from bedrock_local.service.foundation_models import foundation_model_arn
from bedrock_local.service.registry import operation
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource

KIND = "application-inference-profile"
SYSTEM, APPLICATION = "SYSTEM_DEFINED", "APPLICATION"  # InferenceProfileType
ACTIVE = "ACTIVE"  # InferenceProfileStatus: the only status there is
COLUMNS = {"inferenceProfileName": "name", "createdAt": "created_at", "updatedAt": "updated_at",
           "inferenceProfileArn": "arn", "inferenceProfileId": "resource_id", "status": "status"}
# every stored profile is an APPLICATION one: typeEquals chooses between them and the computed system ones
FILTERS = {"typeEquals": lambda value: None}
GEOGRAPHY_LABELS = {"us": "US", "eu": "EU", "apac": "APAC", "global": "Global"}  # as AWS names its profiles
# System profiles are not made by anyone here: one fixed time keeps their answers and pages stable.
SYSTEM_CREATED = datetime.datetime(2024, 8, 27, tzinfo=datetime.timezone.utc)
MAX_MODELS = 5  # InferenceProfileModels' maximum
PROFILE_ARN_KINDS = ("inference-profile", "application-inference-profile")
# what AWS answers for a profile id it does not know, or one of a geography the caller's region is not in
INVALID_IDENTIFIER = "The provided model identifier is invalid."


# ------------------------------------------------------------------------------------------
# names and descriptions within the model's patterns

def _fit(text: str, limit: int, word_chars: str = "") -> str:
    """`text` as the patterns `([0-9a-zA-Z<word_chars>][ _-]?)+` want it: one separator (space, '_' or
    '-') between words at most, any other character a separator ('.' a '-': "3.5" -> "3-5"), at most
    `limit` characters."""
    out: list[str] = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in word_chars):
            out.append(ch)
            continue
        separator = ch if ch in " _-" else "-" if ch == "." else " "
        if out and out[-1] in " _-":
            if separator == " ":
                out[-1] = " "  # "G1 - Express": the space wins over the dash
        elif out:
            out.append(separator)
    return "".join(out)[:limit].rstrip(" _-")


def _profile_name(model: FoundationModel, geography: str) -> str:
    name = model.model_name
    if not name.lower().startswith(model.provider_name.lower()):
        name = f"{model.provider_name} {name}"
    return _fit(f"{GEOGRAPHY_LABELS.get(geography, geography.upper())} {name}", 64)


def _description(model: FoundationModel, geography: str, regions: list[str]) -> str:
    if geography == "global":
        text = f"Routes requests to {model.model_name} globally across all supported AWS Regions."
    else:
        text = f"Routes requests to {model.model_name} in {' '.join(regions[:-1])} and {regions[-1]}."
    return _fit(text, 200, ":.")


# ------------------------------------------------------------------------------------------
# system-defined profiles

def visible_geographies(region: str) -> list[str]:
    """The geographies whose profiles a caller in `region` sees and may invoke."""
    return [geo for geo, regions in GEOGRAPHY_REGIONS.items() if region in regions]


def _profile_regions(ctx: Context, geography: str) -> list[str]:
    regions = list(GEOGRAPHY_REGIONS[geography])
    if len(regions) > MAX_MODELS:  # the shape holds five: keep the caller's region among them
        regions = [ctx.region, *[r for r in regions if r != ctx.region]][:MAX_MODELS]
    return regions


def system_profile(ctx: Context, model: FoundationModel, geography: str) -> dict:
    """A system-defined profile as Get and List answer it."""
    profile_id = f"{geography}.{model.model_id}"
    regions = _profile_regions(ctx, geography)
    return {"inferenceProfileName": _profile_name(model, geography),
            "description": _description(model, geography, regions),
            "createdAt": SYSTEM_CREATED, "updatedAt": SYSTEM_CREATED,
            "inferenceProfileArn": make_arn(ctx, f"inference-profile/{profile_id}"),
            "models": [{"modelArn": foundation_model_arn(region, model.model_id)} for region in regions],
            "inferenceProfileId": profile_id, "status": ACTIVE, "type": SYSTEM}


def find_system_model(ctx: Context, profile_id: str) -> tuple[FoundationModel, str] | None:
    """The catalog model and geography of the system profile `profile_id` as the caller's region sees
    it, or None."""
    geography, dot, model_id = profile_id.partition(".")
    if not dot or geography not in GEOGRAPHY_REGIONS or ctx.region not in GEOGRAPHY_REGIONS[geography]:
        return None
    model = find_foundation_model(model_id)
    if model is None or geography not in model.geographies:
        return None
    return model, geography


def _system_profiles(ctx: Context) -> list[dict]:
    visible = visible_geographies(ctx.region)
    found = [system_profile(ctx, model, geo) for model in all_foundation_models() for geo in model.geographies
             if geo in visible]
    # the id pattern allows 64 characters: a longer catalog id has no profile AWS could name
    return sorted((p for p in found if len(p["inferenceProfileId"]) <= 64), key=lambda p: p["inferenceProfileId"])


def looks_like_system_id(identifier: str) -> bool:
    """Whether `identifier` has the form of a system profile id (`us.`, `eu.`, `apac.`, `global.` ...)."""
    geography, dot, rest = identifier.partition(".")
    return bool(dot and rest) and geography in GEOGRAPHY_REGIONS


# ------------------------------------------------------------------------------------------
# finding a profile by id or ARN

class _Arn(NamedTuple):
    kind: str  # inference-profile or application-inference-profile
    profile_id: str
    account: str
    region: str


def _profile_arn(identifier: str) -> _Arn | None:
    parts = parse_arn(identifier) if identifier.startswith("arn:") else None
    if parts is None:
        return None
    kind, slash, profile_id = parts["resource"].partition("/")
    if not slash or kind not in PROFILE_ARN_KINDS:
        return None
    return _Arn(kind, profile_id, parts["account"], parts["region"])


def _not_found(identifier: str) -> ResourceNotFoundException:
    return ResourceNotFoundException(f"The inference profile '{identifier}' does not exist.")


def _find(session, ctx: Context, identifier: str) -> dict | Resource:
    """The profile `identifier` names (system: its answer; application: its resource). Another
    account's or region's profile is not found, as an unknown one is: existence never leaks."""
    arn = _profile_arn(identifier)
    if arn is not None:
        # a system profile's ARN carries the caller's account; the model's pattern also allows none
        accounts = (ctx.account, "") if arn.kind == "inference-profile" else (ctx.account,)
        if arn.account not in accounts or arn.region != ctx.region:
            raise _not_found(identifier)
        if arn.kind == "application-inference-profile":
            return find_in_scope(session, ctx, KIND, "inference profile", identifier)
    found = find_system_model(ctx, arn.profile_id if arn else identifier)
    if found is not None:
        return system_profile(ctx, *found)
    if arn is None and not looks_like_system_id(identifier):
        row = resources.find(session, ctx.scope, KIND, resource_id=identifier)
        if row is not None:
            return row
    raise _not_found(identifier)


def _answer(found: dict | Resource) -> dict:
    return found if isinstance(found, dict) else as_answer(found, COLUMNS)


def invoked_model(session, ctx: Context, identifier: str) -> FoundationModel | None:
    """The catalog model a modelId that names an inference profile invokes, or None when `identifier`
    names no profile (a model id or another ARN). A system profile id of an unknown model, or of a
    geography the caller's region is not in, answers AWS's ValidationException; a profile ARN of another
    account, or an application profile that does not exist, is not found."""
    arn = _profile_arn(identifier)
    if arn is None:
        if not looks_like_system_id(identifier) or find_foundation_model(identifier) is not None:
            return None
        found = find_system_model(ctx, identifier)
        if found is None:
            raise ValidationException(INVALID_IDENTIFIER)
        return found[0]
    if arn.account != ctx.account:
        raise _not_found(identifier)
    if arn.kind == "inference-profile":
        found = find_system_model(ctx, arn.profile_id) if arn.region == ctx.region else None
        if found is None:
            raise ValidationException(INVALID_IDENTIFIER)
        return found[0]
    row = resources.find(session, ctx.scope, KIND, arn=identifier)
    if row is None:
        raise _not_found(identifier)
    model = find_foundation_model(row.body["_model"])
    if model is None:  # the alias it was made from left the catalog (another --model-aliases file)
        raise ValidationException(f"The inference profile '{identifier}' routes to {row.body['_model']}, "
                                  f"which is not a model of this server's catalog any more.")
    return model


# ------------------------------------------------------------------------------------------
# the operations

def _source(ctx: Context, session, copy_from: str) -> tuple[FoundationModel, list[dict]]:
    """The model and the `models[]` of a new application profile, from `modelSource.copyFrom`: a
    foundation model of the caller's region (that region alone) or a system profile (its regions)."""
    parts = parse_arn(copy_from)
    kind, _, name = parts["resource"].partition("/") if parts else ("", "", "")
    if kind == "foundation-model":
        if parts["account"]:
            raise ValidationException(f"modelSource.copyFrom '{copy_from}': a foundation-model ARN has no "
                                      f"account (arn:aws:bedrock:{ctx.region}::foundation-model/<model id>).")
        if parts["region"] != ctx.region:
            raise ValidationException(
                f"modelSource.copyFrom '{copy_from}' is a foundation model of {parts['region']}: a profile made in "
                f"{ctx.region} copies a model of {ctx.region}, or a system-defined inference profile for several "
                f"regions.")
        model = find_foundation_model(name)
        if model is None:
            raise ResourceNotFoundException(f"The foundation model '{copy_from}' does not exist.")
        return model, [{"modelArn": foundation_model_arn(ctx.region, model.model_id)}]
    found = _find(session, ctx, copy_from)
    if not isinstance(found, dict):  # the pattern lets no application profile through; kept for safety
        raise ValidationException("modelSource.copyFrom must be a foundation-model or a system-defined "
                                  "inference-profile ARN.")
    model, _ = find_system_model(ctx, found["inferenceProfileId"])
    return model, found["models"]


@operation("CreateInferenceProfile")
def create_inference_profile(ctx: Context, params: dict) -> dict:
    copy_from = params["modelSource"].get("copyFrom")
    if not copy_from:
        raise ValidationException("modelSource.copyFrom is required: the ARN of a foundation model or of a "
                                  "system-defined inference profile.")
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"inferenceProfileArn": earlier.arn, "status": earlier.status}
        model, models = _source(ctx, session, copy_from)
        profile_id = new_id()
        body = {"description": params.get("description"), "models": models, "type": APPLICATION,
                "_model": model.model_id, "_requestHash": request_hash(params)}
        profile = insert_unique(
            session, ctx, KIND, "inference profile", name=params["inferenceProfileName"], body=body,
            resource_id=profile_id, arn=make_arn(ctx, f"application-inference-profile/{profile_id}"),
            status=ACTIVE, ref_arn=copy_from, client_token=params.get("clientRequestToken"),
            tags=params.get("tags"))
        return {"inferenceProfileArn": profile.arn, "status": ACTIVE}


@operation("GetInferenceProfile")
def get_inference_profile(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        return _answer(_find(session, ctx, params["inferenceProfileIdentifier"]))


@operation("DeleteInferenceProfile")
def delete_inference_profile(ctx: Context, params: dict) -> dict:
    identifier = params["inferenceProfileIdentifier"]
    with ctx.db.session() as session, session.begin():
        found = _find(session, ctx, identifier)
        if isinstance(found, dict):
            raise ValidationException(
                f"The inference profile '{identifier}' is system-defined (SYSTEM_DEFINED): only application "
                f"inference profiles, made with CreateInferenceProfile, can be deleted.")
        resources.delete_resource(session, found)
    return {}


class _SystemRow(NamedTuple):
    """A system profile in the keyset order a page token records: (created_at, pk)."""

    created_at: datetime.datetime
    pk: int
    profile: dict


@operation("ListInferenceProfiles")
def list_inference_profiles(ctx: Context, params: dict) -> dict:
    # without typeEquals AWS lists the system-defined profiles only (aws-cli#9728 shows it doing so)
    if params.get("typeEquals") == APPLICATION:
        return list_resources(ctx, params, "ListInferenceProfiles", KIND, COLUMNS, filters=FILTERS)
    shape = list_shape("ListInferenceProfiles")
    pager = Pager(ctx, "ListInferenceProfiles", params, shape.filters, limit_key=shape.limit_key,
                  input_token=shape.input_token)
    rows = [_SystemRow(SYSTEM_CREATED, position, profile) for position, profile in enumerate(_system_profiles(ctx))]
    start = pager.after[1] + 1 if pager.after else 0
    page, token = pager._cut(rows[start:start + pager.limit + 1])  # the same signed tokens as stored resources
    return {shape.result_key: [row.profile for row in page], shape.output_token: token}
