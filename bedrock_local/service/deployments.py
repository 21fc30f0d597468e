"""Custom model deployments: CreateCustomModelDeployment, GetCustomModelDeployment,
ListCustomModelDeployments, UpdateCustomModelDeployment and DeleteCustomModelDeployment.

A deployment is a resource (Creating -> Active, or Failed) and a long-lived job of kind
`model-deployment` that a serving node (processes/serving.py) claims: the node loads the model, checks
that it answers, marks the deployment Active and then serves bedrock-runtime requests for it for as
long as it holds the job's lease. An update records the new model in `updateDetails` (Updating);
the node loads it beside the old one and switches over when it answers (UpdateCompleted), or keeps
the old one serving (UpdateFailed). A delete removes the resource and its job; the node notices at
its next heartbeat and unloads the model.
"""

from bedrock_local.jobs import lease
from bedrock_local.service.common import (as_answer, find_in_scope, idempotent_replay, insert_unique, list_resources,
                                          make_arn, new_id, request_hash)
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import DEPLOYMENT_KIND as KIND
from bedrock_local.service.custom_models import find_model
from bedrock_local.service.errors import ValidationException
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.jobs.model_sources import ModelSource, custom_source
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource

JOB_KIND = "model-deployment"
UPDATING, UPDATE_COMPLETED, UPDATE_FAILED = "Updating", "UpdateCompleted", "UpdateFailed"
COLUMNS = {"customModelDeploymentArn": "arn", "modelDeploymentName": "name", "modelArn": "ref_arn",
           "createdAt": "created_at", "status": "status", "lastUpdatedAt": "updated_at"}
FILTERS = {"modelArnEquals": Resource.ref_arn}


def find_deployment(session, ctx: Context, identifier: str) -> Resource:
    return find_in_scope(session, ctx, KIND, "custom model deployment", identifier)


def _deployable_source(session, ctx: Context, model_arn: str, member: str) -> ModelSource:
    """The weights a deployment of `model_arn` serves: an Active text custom model of the caller's
    account and region (another scope's model is not found, as AWS answers)."""
    model = find_model(session, ctx, model_arn)
    if model.status != "Active":
        raise ValidationException(
            f"The custom model '{model_arn}' at '{member}' is {model.status}; only an Active model can be deployed.")
    return custom_source(model)


def describe(resource: Resource) -> dict:
    return as_answer(resource, COLUMNS)


@operation("CreateCustomModelDeployment")
def create_custom_model_deployment(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"customModelDeploymentArn": earlier.arn}
        source = _deployable_source(session, ctx, params["modelArn"], "modelArn")
        check_count(session, ctx, "deployments", KIND, what="custom model deployments exist")
        check_count(session, ctx, "in-progress-deployments", KIND, ("Creating",),
                    what="custom model deployments are Creating")
        deployment_id = new_id()
        body = {"description": params.get("description"), "_source": source.to_json(),
                "_requestHash": request_hash(params)}
        resource = insert_unique(
            session, ctx, KIND, "custom model deployment", name=params["modelDeploymentName"], body=body,
            resource_id=deployment_id, arn=make_arn(ctx, f"custom-model-deployment/{deployment_id}"),
            status="Creating", ref_arn=source.reference, client_token=params.get("clientRequestToken"),
            tags=params.get("tags"))
        lease.enqueue(session, resource, JOB_KIND)
        return {"customModelDeploymentArn": resource.arn}


@operation("GetCustomModelDeployment")
def get_custom_model_deployment(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        return describe(find_deployment(session, ctx, params["customModelDeploymentIdentifier"]))


@operation("ListCustomModelDeployments")
def list_custom_model_deployments(ctx: Context, params: dict) -> dict:
    return list_resources(ctx, params, "ListCustomModelDeployments", KIND,
                          {**COLUMNS, "customModelDeploymentName": "name"}, filters=FILTERS)


@operation("UpdateCustomModelDeployment")
def update_custom_model_deployment(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        deployment = find_deployment(session, ctx, params["customModelDeploymentIdentifier"])
        if deployment.status != "Active":
            raise ValidationException(
                f"The deployment '{deployment.name}' is {deployment.status}; only an Active deployment can be updated.")
        if (deployment.body.get("updateDetails") or {}).get("updateStatus") == UPDATING:
            raise ValidationException(
                f"The deployment '{deployment.name}' is already being updated to "
                f"{deployment.body['updateDetails']['modelArn']}; wait for that update to end.")
        source = _deployable_source(session, ctx, params["modelArn"], "modelArn")
        resources.update(deployment, updateDetails={"modelArn": source.reference, "updateStatus": UPDATING},
                         _pendingSource=source.to_json())
        return {"customModelDeploymentArn": deployment.arn}


@operation("DeleteCustomModelDeployment")
def delete_custom_model_deployment(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        deployment = find_deployment(session, ctx, params["customModelDeploymentIdentifier"])
        lease.forget(session, deployment)  # the node serving it loses the lease and unloads the model
        resources.delete_resource(session, deployment)
    return {}
