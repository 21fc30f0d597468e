"""Resolving the model a request names (a foundation model id or ARN, a custom model ARN or name)
into a ModelSource that a worker can load; the same rules for batch jobs and, later, runtime."""

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.model_sources import ModelSource, custom_source, foundation_source
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import find_model
from bedrock_local.service.errors import ResourceNotFoundException, ValidationException


def resolve_model_source(session, ctx: Context, identifier: str) -> ModelSource:
    if ":foundation-model/" in identifier or not identifier.startswith("arn:"):
        model_id = identifier.split(":foundation-model/", 1)[-1]
        foundation = find_foundation_model(model_id)
        if foundation is not None:
            return foundation_source(foundation)
        if identifier.startswith("arn:"):
            raise ResourceNotFoundException(f"The foundation model '{identifier}' does not exist.")
    try:
        model = find_model(session, ctx, identifier)
    except ResourceNotFoundException:
        raise ResourceNotFoundException(f"The model '{identifier}' is neither a foundation model nor a custom "
                                        f"model of account {ctx.account} in {ctx.region}.")
    if model.status != "Active":
        raise ValidationException(f"The custom model '{model.arn}' is {model.status}; only an Active model can be used.")
    return custom_source(model)
