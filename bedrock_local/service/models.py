"""Which model a request names, resolved once for every operation that takes a model id: a
foundation model id or ARN, an inference profile id or ARN (service/inference_profiles.py), an imported
model ARN or name (service/model_import_jobs.py), or a custom model ARN or name, into the ModelSource a
worker or a serving node loads (batch inference and customization jobs, and the runtime's on-demand calls)."""

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.model_sources import ModelSource, custom_source, foundation_source
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import find_model
from bedrock_local.service.errors import ResourceNotFoundException, ValidationException
from bedrock_local.service.inference_profiles import invoked_model
from bedrock_local.service.model_import_jobs import find_imported_model, imported_source

FOUNDATION_ARN = ":foundation-model/"
CUSTOM_ARNS = (":custom-model/",)
IMPORTED_ARN = ":imported-model/"


def on_demand_refusal(model_id: str) -> ValidationException:
    """AWS's answer to an on-demand call of a model it serves only through an inference profile
    (FoundationModel.profile_only), word for word (its apostrophe is U+2019)."""
    return ValidationException(
        f"Invocation of model ID {model_id} with on-demand throughput isn\u2019t supported. Retry your request "
        "with the ID or ARN of an inference profile that contains this model.")


def resolve_model_source(session, ctx: Context, identifier: str, *, custom_models: bool = True,
                         profiles: bool = False, provisioned: bool = False) -> ModelSource:
    """The model `identifier` names. Without `custom_models` the call is the runtime's, on demand:
    an inference profile id or ARN names its model; a foundation model AWS serves only through a
    profile is refused by its bare id or ARN; an imported model's ARN names it (AWS serves imported
    models on demand); a custom model's ARN is refused with the advice to deploy it; another ARN is
    not a model to invoke, and an unknown foundation model id is not found.
    With `custom_models` (batch inference, customization) an ARN that is not a foundation model's, or
    an id no foundation model has, is looked up as a custom model of the caller's scope, which must be
    Active, then as an imported model (by name: batch jobs name imported models so); inference
    profiles count there only with `profiles` (batch inference takes them, customization does not).
    With `provisioned` a Provisioned Throughput's ARN names the model it serves now
    (service/provisioned_throughput.py; evaluation runs a model through its throughput)."""
    if provisioned and ":provisioned-model/" in identifier:
        from bedrock_local.service.provisioned_throughput import provisioned_source
        return provisioned_source(session, ctx, identifier)
    if profiles or not custom_models:
        model = invoked_model(session, ctx, identifier)
        if model is not None:
            return foundation_source(model)
    if IMPORTED_ARN in identifier:
        return imported_source(find_imported_model(session, ctx, identifier))
    if not custom_models and any(marker in identifier for marker in CUSTOM_ARNS):
        raise ValidationException(
            f"The model '{identifier}' is a custom model: invoke it through a custom model deployment "
            "(CreateCustomModelDeployment) and use the deployment's ARN as modelId.")
    is_arn = identifier.startswith("arn:")
    if FOUNDATION_ARN in identifier or not is_arn:
        model_id = identifier.split(FOUNDATION_ARN, 1)[-1]
        foundation = find_foundation_model(model_id)
        if foundation is not None:
            if not custom_models and foundation.profile_only:
                raise on_demand_refusal(model_id)
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
        if not is_arn:
            try:
                return imported_source(find_imported_model(session, ctx, identifier))
            except ResourceNotFoundException:
                pass
        raise ResourceNotFoundException(f"The model '{identifier}' is neither a foundation model nor a custom "
                                        f"model or an imported model of account {ctx.account} in {ctx.region}.")
    if model.status != "Active":
        raise ValidationException(
            f"The custom model '{model.arn}' is {model.status}; only an Active model can be used.")
    return custom_source(model)
