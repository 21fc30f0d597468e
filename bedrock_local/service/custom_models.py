"""Custom models: CreateCustomModel (import an HF folder from S3), GetCustomModel,
ListCustomModels and DeleteCustomModel. The import itself runs as a job on a worker."""

from sqlalchemy import false

from bedrock_local.jobs import lease
from bedrock_local.jobs.artifacts import model_location
from bedrock_local.service.common import (as_answer, find_in_scope, idempotent_replay, insert_unique, list_resources,
                                          make_arn, new_id, request_hash)
from bedrock_local.service.buckets import s3_location
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ConflictException, ValidationException
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.storage import S3Location
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource


KIND = "custom-model"
DEPLOYMENT_KIND = "custom-model-deployment"
PROVISIONED_KIND = "provisioned-model-throughput"
COLUMNS = {"modelArn": "arn", "modelName": "name", "creationTime": "created_at", "modelStatus": "status"}
FILTERS = {"baseModelArnEquals": Resource.ref_arn, "foundationModelArnEquals": Resource.origin_arn,
           "modelStatus": Resource.status,
           # no model is shared with an account here: every model is owned
           "isOwned": lambda owned: None if owned else false()}


def find_model(session, ctx: Context, identifier: str) -> Resource:
    return find_in_scope(session, ctx, KIND, "custom model", identifier)


def describe(resource: Resource) -> dict:
    return as_answer(resource, COLUMNS)


@operation("CreateCustomModel")
def create_custom_model(ctx: Context, params: dict) -> dict:
    # Newer service models make modelSourceConfig optional beside customModelDataSource (a SageMaker AI
    # model package, which this server cannot reach): one of the two is still needed.
    if "modelSourceConfig" not in params:
        if params.get("customModelDataSource"):
            raise ValidationException(
                "customModelDataSource (a SageMaker AI model package) is not supported by bedrock-local: "
                "import the model from S3 with modelSourceConfig.s3DataSource.s3Uri.")
        raise ValidationException("modelSourceConfig is required: give the S3 folder of the model to import in "
                                  "modelSourceConfig.s3DataSource.s3Uri.")
    source = s3_location(ctx, params["modelSourceConfig"]["s3DataSource"]["s3Uri"],
                         "modelSourceConfig.s3DataSource.s3Uri")
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"modelArn": earlier.arn}
        check_count(session, ctx, "model-import-jobs", KIND, job_kind="model-import",
                    what="custom models are being imported")
        check_count(session, ctx, "custom-models", KIND, what="custom models exist")
        model_id = new_id()
        body = {"customizationType": "IMPORTED", "modelKmsKeyArn": params.get("modelKmsKeyArn"),
                "ownerAccountId": ctx.account, "_source": source.uri, "_requestHash": request_hash(params),
                "_artifacts": model_location(ctx.settings, ctx.account, ctx.region, model_id).uri}
        resource = insert_unique(
            session, ctx, KIND, "custom model", name=params["modelName"], body=body, resource_id=model_id,
            arn=make_arn(ctx, f"custom-model/imported/{model_id}"), status="Creating",
            client_token=params.get("clientRequestToken"), tags=params.get("modelTags"))
        lease.enqueue(session, resource, "model-import")
        return {"modelArn": resource.arn}


@operation("GetCustomModel")
def get_custom_model(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        return describe(find_model(session, ctx, params["modelIdentifier"]))


@operation("ListCustomModels")
def list_custom_models(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListCustomModels", KIND, COLUMNS, filters=FILTERS)


@operation("DeleteCustomModel")
def delete_custom_model(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        model = find_model(session, ctx, params["modelIdentifier"])
        if model.status == "Creating":
            raise ConflictException(f"The custom model '{model.name}' is still being created; delete it once it is Active or Failed.")
        in_use = resources.page(session, ctx.scope, DEPLOYMENT_KIND, [Resource.ref_arn == model.arn],
                                descending=True, limit=1, after=None)
        if in_use:
            raise ConflictException(
                f"The custom model '{model.name}' is used by the deployment {in_use[0].arn}; delete the deployment first.")
        if (throughput := _provisioned_on(session, ctx, model.arn)) is not None:
            raise ConflictException(f"The custom model '{model.name}' is used by the Provisioned Throughput "
                                    f"{throughput.arn}; delete the Provisioned Throughput first.")
        artifacts = model.body.get("_artifacts")
        resources.delete_resource(session, model)
    if artifacts:
        ctx.objects.delete_prefix(S3Location.parse(artifacts))
    return {}


def _provisioned_on(session, ctx: Context, model_arn: str) -> Resource | None:
    """A Provisioned Throughput of the caller's scope that serves `model_arn` or is being updated to it."""
    serving = resources.page(session, ctx.scope, PROVISIONED_KIND, [Resource.ref_arn == model_arn],
                             descending=True, limit=1, after=None)
    if serving:
        return serving[0]
    updating = resources.page(session, ctx.scope, PROVISIONED_KIND, [Resource.status == "Updating"],
                              descending=True, limit=1000, after=None)
    return next((t for t in updating if t.body.get("desiredModelArn") == model_arn), None)
