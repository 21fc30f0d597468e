"""Provisioned Throughput: CreateProvisionedModelThroughput, GetProvisionedModelThroughput,
ListProvisionedModelThroughputs, UpdateProvisionedModelThroughput and DeleteProvisionedModelThroughput,
and the runtime's view of a throughput (`serving_target`, `provisioned_source`).

A throughput is a resource (Creating -> InService, Updating while a new model loads, Failed with the
reason) and a long-lived job of kind `provisioned-throughput` that a serving node claims
(jobs/handlers/provisioned.py, the deployment machinery): the node loads the throughput's own copy
of its model with `modelUnits * SLOTS_PER_MODEL_UNIT` generation slots, marks it InService once it
answers, and serves the throughput's ARN as a modelId of the runtime operations while it holds the
lease. The units of an account's throughputs count against AWS's model-unit quotas; a delete frees
them at once and the node unloads the copy. Rules as AWS has them: only a throughput of a custom
model may change its model, and only to that model's base or another custom model of the same base;
a throughput with a commitment cannot be deleted before the term ends. docs/provisioned-throughput.md.
"""

from __future__ import annotations

import datetime
import functools
import json

from bedrock_local.engine.catalog import (KIND_TEXT, FoundationModel, all_foundation_models, find_foundation_model,
                                          is_test_model, packaged_weights)
from bedrock_local.jobs import lease
from bedrock_local.jobs.model_sources import ModelSource, custom_source, foundation_source
from bedrock_local.quotas import describe as describe_quota
from bedrock_local.quotas import limit
from bedrock_local.service.common import (as_answer, check_name_free, find_in_scope, idempotent_replay, insert_unique,
                                          list_resources, make_arn, new_id, request_hash)
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import PROVISIONED_KIND as KIND
from bedrock_local.service.custom_models import find_model
from bedrock_local.service.errors import (ConflictException, ResourceNotFoundException,
                                          ServiceQuotaExceededException, ValidationException)
from bedrock_local.service.node_client import Target, held_model_target
from bedrock_local.service.registry import operation
from bedrock_local.storage import S3Location
from bedrock_local.store import resources
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import Resource

JOB_KIND = "provisioned-throughput"  # jobs/handlers/provisioned.py
CREATING, IN_SERVICE, UPDATING, FAILED = "Creating", "InService", "Updating", "Failed"
COMMITMENT_MONTHS = {"OneMonth": 1, "SixMonths": 6}
COLUMNS = {"provisionedModelArn": "arn", "provisionedModelName": "name", "modelArn": "ref_arn",
           "foundationModelArn": "origin_arn", "status": "status", "creationTime": "created_at",
           "lastModifiedTime": "updated_at"}
FILTERS = {"modelArnEquals": Resource.ref_arn}
UNIT_QUOTAS = {False: "provisioned-units-base-models", True: "provisioned-units-custom-models"}
# the config.json members that identify an architecture: an imported model whose members match a
# packaged foundation model's was customized from it (its base, for foundationModelArn and updates)
SIGNATURE = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "vocab_size")
GGUF_SIGNATURE = ("general.architecture", "{arch}.embedding_length", "{arch}.block_count",
                  "{arch}.attention.head_count", "{arch}.attention.head_count_kv", "{arch}.feed_forward_length")


def find_throughput(session, ctx: Context, identifier: str) -> Resource:
    return find_in_scope(session, ctx, KIND, "Provisioned Throughput", identifier)


def foundation_arn(ctx: Context, model: FoundationModel) -> str:
    return make_arn(ctx, f"foundation-model/{model.model_id}", account="")


# ---- which model a throughput serves -----------------------------------------------------------

@functools.cache
def _packaged_signature(model_id: str) -> tuple | None:
    """The architecture of a packaged text model, read from its GGUF header (once per process)."""
    import gguf

    try:
        reader = gguf.GGUFReader(packaged_weights(find_foundation_model(model_id)))
        arch = reader.fields["general.architecture"].contents()
        values = [reader.fields[key.format(arch=arch)].contents() for key in GGUF_SIGNATURE]
        return (*values, len(reader.fields["tokenizer.ggml.tokens"].data))
    except Exception:  # not installed or not a GGUF file: no model can be matched to it
        return None


def _packaged_text_models() -> list[FoundationModel]:
    return [m for m in all_foundation_models()
            if m.kind == KIND_TEXT and m.package and not m.runs_on and not is_test_model(m)]


def _warm_signatures() -> None:
    """Read the packaged models' architectures before a write transaction opens (the first read
    takes seconds; a transaction open that long would hold the database's write lock)."""
    for model in _packaged_text_models():
        _packaged_signature(model.model_id)


def _imported_signature(ctx: Context, model: Resource) -> tuple | None:
    try:
        config = json.loads(ctx.objects.get_bytes(S3Location.parse(model.body["_artifacts"]).join("config.json")))
    except Exception:
        return None
    return tuple(config.get(key) for key in SIGNATURE)


def base_of(ctx: Context, model: Resource) -> FoundationModel | None:
    """The foundation model a custom model was customized from: its lineage for a model trained
    here; for an imported one, the packaged text model whose architecture its config.json has."""
    origin = model.origin_arn or ""
    if ":foundation-model/" in origin:
        return find_foundation_model(origin.split(":foundation-model/", 1)[1])
    signature = _imported_signature(ctx, model)
    if signature is None:
        return None
    return next((m for m in _packaged_text_models() if _packaged_signature(m.model_id) == signature), None)


def _refuse_imported_model(session, ctx: Context, identifier: str, member: str) -> None:
    """A model of the model import jobs (an imported-model resource) cannot be provisioned: the
    service model's patterns for modelId and modelArn have no imported-model ARN, as on AWS, where
    imported models run on demand."""
    try:
        from bedrock_local.service.model_import_jobs import find_imported_model
        imported = find_imported_model(session, ctx, identifier)
    except (ImportError, ResourceNotFoundException):
        return
    raise ValidationException(
        f"The model '{identifier}' at '{member}' is an imported model ({imported.arn}): imported models run on "
        "demand and cannot be provisioned. Invoke its ARN directly.")


def _model(session, ctx: Context, identifier: str, member: str) -> tuple[ModelSource, str, FoundationModel,
                                                                         Resource | None]:
    """What `identifier` names for a throughput: (the source a node loads, the model ARN, its
    foundation model, the custom model resource or None for a foundation model)."""
    is_arn = identifier.startswith("arn:")
    if ":foundation-model/" in identifier or not is_arn:
        model = find_foundation_model(identifier.split(":foundation-model/", 1)[-1])
        if model is not None:
            return foundation_source(model), foundation_arn(ctx, model), model, None
        if is_arn:
            raise ResourceNotFoundException(f"The foundation model '{identifier}' at '{member}' does not exist.")
    try:
        custom = find_model(session, ctx, identifier)
    except ResourceNotFoundException:
        _refuse_imported_model(session, ctx, identifier, member)
        raise ResourceNotFoundException(f"The model '{identifier}' at '{member}' is neither a foundation model nor a "
                                        f"custom model of account {ctx.account} in {ctx.region}.")
    if custom.status != "Active":
        raise ValidationException(f"The custom model '{custom.arn}' at '{member}' is {custom.status}; only an Active "
                                  "model can be provisioned.")
    base = base_of(ctx, custom)
    if base is None:
        raise ValidationException(
            f"The custom model '{custom.arn}' at '{member}' has no base model this service knows: it was imported "
            "and its architecture (config.json) matches no foundation model here, so it has no foundationModelArn "
            "and cannot be provisioned.")
    return custom_source(custom), custom.arn, base, custom


def provisioned_source(session, ctx: Context, identifier: str) -> ModelSource:
    """The model a throughput of the caller's scope serves now (by ARN or name), for the families
    that run a model "through" a throughput (evaluation jobs); it must be InService or Updating."""
    throughput = find_throughput(session, ctx, identifier)
    if throughput.status not in (IN_SERVICE, UPDATING):
        raise ValidationException(f"The Provisioned Throughput '{throughput.name}' is {throughput.status}; only an "
                                  "InService throughput serves its model.")
    return ModelSource.from_json(throughput.body["_source"])


def serving_target(session, ctx: Context, live: dict[str, str], model_id: str) -> Target:
    """The node serving the throughput `model_id` (an ARN) for a runtime call, and what it is told:
    the throughput's own copy, by ARN, on the node that holds its job's lease."""
    throughput = resources.find(session, ctx.scope, KIND, arn=model_id)
    if throughput is None:
        raise ResourceNotFoundException(f"The Provisioned Throughput '{model_id}' does not exist.")
    return held_model_target(session, live, throughput, title="Provisioned Throughput", ready=IN_SERVICE,
                             get_operation="GetProvisionedModelThroughput")


# ---- rules -------------------------------------------------------------------------------------

def _check_units(session, ctx: Context, on_custom_model: bool, units: int) -> None:
    """The model units of the caller's throughputs of this side (base or custom models), these
    included, within the quota; deleted throughputs hold none."""
    key = UNIT_QUOTAS[on_custom_model]
    most = limit(ctx.settings, key)
    if most is None:
        return
    held = sum(t.body.get("modelUnits", 0) for t in resources.page(session, ctx.scope, KIND, [], descending=True,
                                                                     limit=10_000, after=None)
               if bool(t.body.get("_onCustomModel")) == on_custom_model)
    if held + units > most:
        raise ServiceQuotaExceededException(
            f"This request for {units} model units would exceed the service quota {describe_quota(key, most)} of "
            f"account {ctx.account} in {ctx.region}: its Provisioned Throughputs hold {held}. Delete one, or raise "
            f"the quota (bedrock-local serve --quota {key}=N).")


def _add_months(moment: datetime.datetime, months: int) -> datetime.datetime:
    month = moment.month - 1 + months
    year, month = moment.year + month // 12, month % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    return moment.replace(year=year, month=month, day=min(moment.day, days[month - 1]))


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def describe(resource) -> dict:
    return as_answer(resource, COLUMNS)


# ---- operations --------------------------------------------------------------------------------

@operation("CreateProvisionedModelThroughput")
def create_provisioned_model_throughput(ctx: Context, params: dict) -> dict:
    _warm_signatures()
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"provisionedModelArn": earlier.arn}
        source, model_arn, base, custom = _model(session, ctx, params["modelId"], "modelId")
        units = params["modelUnits"]
        _check_units(session, ctx, custom is not None, units)
        now = utcnow()
        commitment = params.get("commitmentDuration")
        throughput_id = new_id()
        body = {"modelUnits": units, "desiredModelUnits": units, "desiredModelArn": model_arn,
                "commitmentDuration": commitment,
                "commitmentExpirationTime": _iso(_add_months(now, COMMITMENT_MONTHS[commitment])) if commitment else None,
                "_onCustomModel": custom is not None, "_source": source.to_json(), "_requestHash": request_hash(params)}
        resource = insert_unique(
            session, ctx, KIND, "Provisioned Throughput", name=params["provisionedModelName"], body=body,
            resource_id=throughput_id, arn=make_arn(ctx, f"provisioned-model/{throughput_id}"), status=CREATING,
            ref_arn=model_arn, origin_arn=foundation_arn(ctx, base), client_token=params.get("clientRequestToken"),
            tags=params.get("tags"))
        lease.enqueue(session, resource, JOB_KIND)
        return {"provisionedModelArn": resource.arn}


@operation("GetProvisionedModelThroughput")
def get_provisioned_model_throughput(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        return describe(find_throughput(session, ctx, params["provisionedModelId"]))


@operation("ListProvisionedModelThroughputs")
def list_provisioned_model_throughputs(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListProvisionedModelThroughputs", KIND, COLUMNS, filters=FILTERS)


def _check_new_model(ctx: Context, throughput: Resource, base: FoundationModel, custom: Resource | None,
                     identifier: str) -> None:
    """AWS's rule: only a throughput bought for a custom model changes its model, and only to that
    model's base or another custom model customized from the same base."""
    if not throughput.body.get("_onCustomModel"):
        raise ValidationException(
            f"The Provisioned Throughput '{throughput.name}' is associated with a base model; its model cannot be "
            "changed (desiredModelId is only for a Provisioned Throughput of a custom model).")
    if foundation_arn(ctx, base) != throughput.origin_arn:
        what = "custom model" if custom is not None else "foundation model"
        raise ValidationException(
            f"The {what} '{identifier}' at 'desiredModelId' is not {throughput.origin_arn} nor a custom model "
            f"customized from it: a Provisioned Throughput of a custom model can change only to the base model "
            "it was customized from or to another custom model of the same base.")


@operation("UpdateProvisionedModelThroughput")
def update_provisioned_model_throughput(ctx: Context, params: dict) -> dict:
    new_name, new_model = params.get("desiredProvisionedModelName"), params.get("desiredModelId")
    if new_model is not None:
        _warm_signatures()
    with ctx.db.session() as session, session.begin():
        throughput = find_throughput(session, ctx, params["provisionedModelId"])
        pending = None
        if new_model is not None:
            source, model_arn, base, custom = _model(session, ctx, new_model, "desiredModelId")
            _check_new_model(ctx, throughput, base, custom, new_model)
            if model_arn != throughput.ref_arn:
                if throughput.status != IN_SERVICE:
                    raise ValidationException(
                        f"The Provisioned Throughput '{throughput.name}' is {throughput.status}; its model can be "
                        "changed only while it is InService.")
                pending = source, model_arn
        if new_name is not None and new_name != throughput.name:
            check_name_free(session, ctx, KIND, "Provisioned Throughput", new_name)
            throughput.name = throughput.unique_name = new_name
            resources.update(throughput)
        if pending is not None:  # the node serving it loads the new model beside the old one
            source, model_arn = pending
            resources.update(throughput, status=UPDATING, desiredModelArn=model_arn, _pendingSource=source.to_json(),
                             failureMessage=None)
    return {}


@operation("DeleteProvisionedModelThroughput")
def delete_provisioned_model_throughput(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        throughput = find_throughput(session, ctx, params["provisionedModelId"])
        expires = throughput.body.get("commitmentExpirationTime")
        if expires and datetime.datetime.fromisoformat(expires.replace("Z", "+00:00")) > utcnow():
            raise ConflictException(
                f"The Provisioned Throughput '{throughput.name}' has a {throughput.body['commitmentDuration']} "
                f"commitment until {expires}; it cannot be deleted before the commitment term is over.")
        lease.forget(session, throughput)  # the node serving it loses the lease and unloads its copy
        resources.delete_resource(session, throughput)
    return {}
