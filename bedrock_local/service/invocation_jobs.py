"""Batch inference jobs: CreateModelInvocationJob, GetModelInvocationJob (by ARN or id),
ListModelInvocationJobs and StopModelInvocationJob. The job itself runs on a worker
(jobs/handlers/batch_inference.py) through Submitted → Validating → Scheduled → InProgress → Completed."""

import datetime

from bedrock_local.engine.catalog import KIND_EMBEDDING
from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import unfinished_statuses
from bedrock_local.service.common import (as_answer, idempotent_replay, insert_unique, list_resources, make_arn, new_id,
                                          request_hash, stop_job)
from bedrock_local.service.context import Context
from bedrock_local.service.buckets import s3_location
from bedrock_local.service.errors import ConflictException, ResourceNotFoundException, ValidationException
from bedrock_local.service.models import resolve_model_source
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.store import resources
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import Resource

KIND = "model-invocation-job"
NOT_STARTED = {"Submitted", "Validating", "Scheduled"}
UNFINISHED = unfinished_statuses(KIND)  # Submitted ... Stopping: these count against the job quotas
DEFAULT_TIMEOUT_HOURS = 24
COLUMNS = {"jobArn": "arn", "jobName": "name", "status": "status", "submitTime": "created_at",
           "lastModifiedTime": "updated_at"}


def describe(resource: Resource) -> dict:
    return as_answer(resource, COLUMNS)


def find_job(session, ctx: Context, identifier: str) -> Resource:
    job_id = identifier.rsplit("/", 1)[-1]
    found = resources.find(session, ctx.scope, KIND, resource_id=job_id)
    if found is None or (identifier.startswith("arn:") and found.arn != identifier):
        raise ResourceNotFoundException(f"The model invocation job '{identifier}' does not exist.")
    return found


@operation("CreateModelInvocationJob")
def create_model_invocation_job(ctx: Context, params: dict) -> dict:
    input_config = params["inputDataConfig"].get("s3InputDataConfig")
    output_config = params["outputDataConfig"].get("s3OutputDataConfig")
    if not input_config or not output_config:
        raise ValidationException("inputDataConfig.s3InputDataConfig and outputDataConfig.s3OutputDataConfig are required.")
    s3_location(ctx, input_config["s3Uri"], "inputDataConfig.s3InputDataConfig.s3Uri", input_config.get("s3BucketOwner"))
    s3_location(ctx, output_config["s3Uri"], "outputDataConfig.s3OutputDataConfig.s3Uri",
                output_config.get("s3BucketOwner"))
    invocation_type = params.get("modelInvocationType", "InvokeModel")
    hours = params.get("timeoutDurationInHours", DEFAULT_TIMEOUT_HOURS)
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"jobArn": earlier.arn}
        source = resolve_model_source(session, ctx, params["modelId"], profiles=True)
        if invocation_type == "Converse" and source.kind == KIND_EMBEDDING:
            raise ValidationException(f"The model '{params['modelId']}' is an embedding model and does not "
                                      f"support modelInvocationType Converse; use InvokeModel.")
        quota = "batch-jobs-per-base-model" if source.foundation_model_id else "batch-jobs-per-custom-model"
        check_count(session, ctx, quota, KIND, UNFINISHED, ref_arn=source.reference, model_label=params["modelId"],
                    what=f"batch inference jobs on {params['modelId']} are {', '.join(UNFINISHED)}")
        now = utcnow()
        expires = now + datetime.timedelta(seconds=hours * ctx.settings.hour_seconds)
        job_id = new_id()
        body = {"modelId": params["modelId"], "roleArn": params["roleArn"],
                "clientRequestToken": params.get("clientRequestToken"),
                "inputDataConfig": params["inputDataConfig"], "outputDataConfig": params["outputDataConfig"],
                "vpcConfig": params.get("vpcConfig"), "timeoutDurationInHours": hours,
                "jobExpirationTime": expires.isoformat(), "modelInvocationType": invocation_type,
                "_model": source.to_json(), "_requestHash": request_hash(params)}
        job = insert_unique(
            session, ctx, KIND, "model invocation job", name=params["jobName"], body=body, resource_id=job_id,
            arn=make_arn(ctx, f"model-invocation-job/{job_id}"), status="Submitted", ref_arn=source.reference,
            client_token=params.get("clientRequestToken"), created_at=now, tags=params.get("tags"))
        lease.enqueue(session, job, "batch-inference")
        return {"jobArn": job.arn}


@operation("GetModelInvocationJob")
def get_model_invocation_job(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        return describe(find_job(session, ctx, params["jobIdentifier"]))


@operation("ListModelInvocationJobs")
def list_model_invocation_jobs(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListModelInvocationJobs", KIND, COLUMNS)


@operation("StopModelInvocationJob")
def stop_model_invocation_job(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        job = find_job(session, ctx, params["jobIdentifier"])
        stop_job(session, job, "model invocation job", ConflictException,
                 lambda: {"endTime": utcnow().isoformat(), "message": "The job was stopped before it started."},
                 cancellable=job.status in NOT_STARTED)
    return {}
