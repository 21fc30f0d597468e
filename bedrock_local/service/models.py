"""Which model a request names, resolved once for every operation that takes a model id: a
foundation model id or ARN, or a custom model ARN or name, into the ModelSource a worker or a
serving node loads (batch inference and customization jobs, and the runtime's on-demand calls)."""

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.model_sources import ModelSource, custom_source, foundation_source
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import find_model
from bedrock_local.service.errors import ResourceNotFoundException, ValidationException

FOUNDATION_ARN = ":foundation-model/"
CUSTOM_ARNS = (":custom-model/", ":imported-model/")


def resolve_model_source(session, ctx: Context, identifier: str, *, custom_models: bool = True) -> ModelSource:
    """The model `identifier` names. With `custom_models` (batch inference, customization) an ARN
    that is not a foundation model's, or an id no foundation model has, is looked up as a custom
    model of the caller's scope, which must be Active. Without it (the runtime, where a custom model
    is invoked through its deployment) a custom model's ARN is refused with that advice, another
    ARN is not a model to invoke, and an unknown foundation model id is not found."""
    if not custom_models and any(marker in identifier for marker in CUSTOM_ARNS):
        raise ValidationException(
            f"The model '{identifier}' is a custom model: invoke it through a custom model deployment "
            "(CreateCustomModelDeployment) and use the deployment's ARN as modelId.")
    is_arn = identifier.startswith("arn:")
    if FOUNDATION_ARN in identifier or not is_arn:
        model_id = identifier.split(FOUNDATION_ARN, 1)[-1]
        foundation = find_foundation_model(model_id)
        if foundation is not None:
            return foundation_source(foundation)
        if not custom_models:
            raise ResourceNotFoundException(f"The model '{model_id}' does not exist.")
        if is_arn:
            raise ResourceNotFoundException(f"The foundation model '{identifier}' does not exist.")
    elif not custom_models:
        raise ValidationException(f"The modelId '{identifier}' is not a model this service can invoke.")
    try:
        model = find_model(session, ctx, identifier)
    except ResourceNotFoundException:
        raise ResourceNotFoundException(f"The model '{identifier}' is neither a foundation model nor a custom "
                                        f"model of account {ctx.account} in {ctx.region}.")
    if model.status != "Active":
        raise ValidationException(
            f"The custom model '{model.arn}' is {model.status}; only an Active model can be used.")
    return custom_source(model)
