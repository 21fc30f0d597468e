"""Model copy jobs: CreateModelCopyJob (made in the target region, the caller's, from a custom
model of the same account in another region), GetModelCopyJob and ListModelCopyJobs. The
worker copies every artifact, verifies checksums and makes the target model Active."""

import re

from bedrock_local.jobs import lease
from bedrock_local.jobs.artifacts import model_location
from bedrock_local.jobs.model_sources import ADAPTER_BASE_MEMBER
from bedrock_local.service.common import (as_answer, idempotent_replay, insert_unique, list_resources, make_arn,
                                          new_id, parse_arn, request_hash)
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import KIND as MODEL_KIND
from bedrock_local.service.errors import ResourceNotFoundException, ValidationException
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.store import resources
from bedrock_local.store.resources import Scope
from bedrock_local.store.schema import Resource

KIND = "model-copy-job"
_CUSTOM_MODEL_PATH = re.compile(r"custom-model/(?P<path>.+)/(?P<id>[a-z0-9]{12})")
# what a copy keeps of its source: its lineage, and the base foundation model of a LoRA adapter (the
# adapter's files are copied like any model's; the base is in every region's catalog)
_LINEAGE = ("baseModelArn", "baseModelName", "customizationType", "hyperParameters", "trainingDataConfig",
            "validationDataConfig", "outputDataConfig", "trainingMetrics", "validationMetrics",
            "customizationConfig", "jobName", "jobArn", ADAPTER_BASE_MEMBER)
COLUMNS = {"jobArn": "arn", "status": "status", "creationTime": "created_at"}
FILTERS = {"sourceAccountEquals": Resource.ref_account, "sourceModelArnEquals": Resource.ref_arn,
           "targetModelNameContains": Resource.name}


def _kms_key_arn(ctx: Context, key: str | None) -> str | None:
    if not key or key.startswith("arn:"):
        return key
    return f"arn:aws:kms:{ctx.region}:{ctx.account}:{key if key.startswith('alias/') else 'key/' + key}"


def _source_model(session, ctx: Context, arn: str) -> Resource:
    parts = parse_arn(arn)
    path = _CUSTOM_MODEL_PATH.fullmatch(parts["resource"]) if parts else None
    if path is None:
        raise ValidationException(f"sourceModelArn '{arn}' is not a custom model ARN; only custom models can be copied.")
    if parts["account"] != ctx.account:
        raise ResourceNotFoundException(f"The source model '{arn}' does not exist.")
    if parts["region"] == ctx.region:
        raise ValidationException(
            f"The source model is already in {ctx.region}: a model copy job copies a model from another region "
            f"into the region you call it in.")
    source = resources.find(session, Scope(ctx.account, parts["region"]), MODEL_KIND, arn=arn)
    if source is None:
        raise ResourceNotFoundException(f"The source model '{arn}' does not exist.")
    if source.status != "Active":
        raise ValidationException(f"The source model '{arn}' is {source.status}; only an Active model can be copied.")
    return source


def describe(resource: Resource) -> dict:
    return as_answer(resource, COLUMNS)


@operation("CreateModelCopyJob")
def create_model_copy_job(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"jobArn": earlier.arn}
        source = _source_model(session, ctx, params["sourceModelArn"])
        check_count(session, ctx, "custom-models", MODEL_KIND, what="custom models exist")
        name = params["targetModelName"]
        model_id = new_id()
        path = _CUSTOM_MODEL_PATH.fullmatch(parse_arn(source.arn)["resource"])["path"]
        kms = _kms_key_arn(ctx, params.get("modelKmsKeyId"))
        lineage = {k: source.body[k] for k in _LINEAGE if k in source.body}
        target = insert_unique(
            session, ctx, MODEL_KIND, "custom model", name=name, resource_id=model_id,
            arn=make_arn(ctx, f"custom-model/{path}/{model_id}"),
            status="Creating", ref_arn=source.ref_arn, origin_arn=source.origin_arn,
            body={**lineage, "ownerAccountId": ctx.account, "modelKmsKeyArn": kms,
                  "_artifacts": model_location(ctx.settings, ctx.account, ctx.region, model_id).uri,
                  "_copiedFrom": source.arn},
            tags=params.get("targetModelTags"))
        job_id = new_id()
        body = {"targetModelArn": target.arn, "targetModelName": name, "sourceAccountId": source.account,
                "sourceModelArn": source.arn, "sourceModelName": source.name, "targetModelKmsKeyArn": kms,
                "targetModelTags": params.get("targetModelTags") or [], "_requestHash": request_hash(params),
                "_sourceArtifacts": source.body.get("_artifacts"), "_targetArtifacts": target.body["_artifacts"]}
        job = resources.insert(
            session, kind=KIND, account=ctx.account, region=ctx.region, resource_id=job_id,
            arn=make_arn(ctx, f"model-copy-job/{job_id}"), name=name, status="InProgress",
            ref_arn=source.arn, ref_account=source.account, client_token=params.get("clientRequestToken"),
            body={k: v for k, v in body.items() if v is not None})
        lease.enqueue(session, job, "model-copy")
        return {"jobArn": job.arn}


@operation("GetModelCopyJob")
def get_model_copy_job(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        job = resources.find(session, ctx.scope, KIND, arn=params["jobArn"])
        if job is None:
            raise ResourceNotFoundException(f"The model copy job '{params['jobArn']}' does not exist.")
        return describe(job)


@operation("ListModelCopyJobs")
def list_model_copy_jobs(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListModelCopyJobs", KIND, COLUMNS, filters=FILTERS)
