"""Model import jobs and imported models: CreateModelImportJob, GetModelImportJob, ListModelImportJobs,
GetImportedModel, ListImportedModels and DeleteImportedModel, and `find_imported_model` /
`imported_source` for the families that name an imported model (the runtime, batch inference,
provisioned throughput, evaluation). The import itself runs as a job on a worker
(jobs/handlers/model_import.py, the same work as CreateCustomModel's); the imported model exists once
the job has Completed."""

from bedrock_local.engine.catalog import KIND_TEXT
from bedrock_local.jobs import lease
from bedrock_local.jobs.artifacts import model_location
from bedrock_local.jobs.model_sources import ModelSource
from bedrock_local.service.buckets import s3_location
from bedrock_local.service.common import (as_answer, check_name_free, find_in_scope, idempotent_replay, insert_unique,
                                          list_resources, make_arn, new_id, request_hash)
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ConflictException
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.storage import S3Location
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource

JOB_KIND = "model-import-job"
MODEL_KIND = "imported-model"
JOB_COLUMNS = {"jobArn": "arn", "jobName": "name", "status": "status", "creationTime": "created_at",
               "lastModifiedTime": "updated_at"}
MODEL_COLUMNS = {"modelArn": "arn", "modelName": "name", "creationTime": "created_at"}


def find_imported_model(session, ctx: Context, identifier: str) -> Resource:
    """An imported model of the caller's account and region by ARN or name (ResourceNotFoundException
    otherwise, also for another account's ARN)."""
    return find_in_scope(session, ctx, MODEL_KIND, "imported model", identifier)


def imported_source(model: Resource) -> ModelSource:
    """An imported model as the ModelSource that workers and serving nodes load (on demand: AWS serves
    imported models without a deployment), with its architecture's InvokeModel body."""
    return ModelSource(reference=model.arn, kind=KIND_TEXT, artifacts=model.body["_artifacts"], account=model.account,
                       region=model.region, model_id=model.resource_id, body_format=model.body.get("_bodyFormat"))


def _kms_key_arn(ctx: Context, key: str | None) -> str | None:
    """A KMS key id as its key ARN in the caller's account and region (an alias stays an alias ARN:
    there is no KMS here to resolve it)."""
    if not key or key.startswith("arn:"):
        return key
    return f"arn:aws:kms:{ctx.region}:{ctx.account}:{key if key.startswith('alias/') else 'key/' + key}"


@operation("CreateModelImportJob")
def create_model_import_job(ctx: Context, params: dict) -> dict:
    source_uri = params["modelDataSource"]["s3DataSource"]["s3Uri"]
    s3_location(ctx, source_uri, "modelDataSource.s3DataSource.s3Uri")
    model_name = params["importedModelName"]
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, JOB_KIND, params)) is not None:
            return {"jobArn": earlier.arn}
        check_name_free(session, ctx, MODEL_KIND, "imported model", model_name)
        pending = resources.page(session, ctx.scope, JOB_KIND, [Resource.status == "InProgress"], descending=True,
                                 limit=1000, after=None)
        if any(job.body.get("importedModelName") == model_name for job in pending):
            raise ConflictException(f"An import job in progress already imports a model named '{model_name}' in "
                                    f"{ctx.region}.")
        check_count(session, ctx, "model-import-jobs", JOB_KIND, statuses=("InProgress",),
                    what="model import jobs are in progress")
        check_count(session, ctx, "imported-models", MODEL_KIND, what="imported models exist")
        job_id, model_id = new_id(), new_id()
        body = {"importedModelName": model_name, "roleArn": params["roleArn"],
                "modelDataSource": {"s3DataSource": {"s3Uri": source_uri}},
                "vpcConfig": params.get("vpcConfig"),
                "importedModelKmsKeyArn": _kms_key_arn(ctx, params.get("importedModelKmsKeyId")),
                "_modelId": model_id, "_modelArn": make_arn(ctx, f"imported-model/{model_id}"),
                "_importedModelTags": params.get("importedModelTags") or None,
                "_artifacts": model_location(ctx.settings, ctx.account, ctx.region, model_id).uri,
                "_requestHash": request_hash(params)}
        job = insert_unique(session, ctx, JOB_KIND, "model import job", name=params["jobName"], body=body,
                            resource_id=job_id, arn=make_arn(ctx, f"model-import-job/{job_id}"), status="InProgress",
                            client_token=params.get("clientRequestToken"), tags=params.get("jobTags"))
        lease.enqueue(session, job, JOB_KIND)
        return {"jobArn": job.arn}


@operation("GetModelImportJob")
def get_model_import_job(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        job = find_in_scope(session, ctx, JOB_KIND, "model import job", params["jobIdentifier"])
        return as_answer(job, JOB_COLUMNS)


@operation("ListModelImportJobs")
def list_model_import_jobs(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListModelImportJobs", JOB_KIND, JOB_COLUMNS)


@operation("GetImportedModel")
def get_imported_model(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        return as_answer(find_imported_model(session, ctx, params["modelIdentifier"]), MODEL_COLUMNS)


@operation("ListImportedModels")
def list_imported_models(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListImportedModels", MODEL_KIND, MODEL_COLUMNS)


@operation("DeleteImportedModel")
def delete_imported_model(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        model = find_imported_model(session, ctx, params["modelIdentifier"])
        artifacts = model.body.get("_artifacts")
        resources.delete_resource(session, model)
    if artifacts:
        ctx.objects.delete_prefix(S3Location.parse(artifacts))
    return {}
