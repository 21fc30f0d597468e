"""ListFoundationModels and GetFoundationModel over the model catalog: the packaged models and the
AWS model ids aliased to them (engine/aliases.py, AWS's catalog in engine/supported_models.json), each
described as AWS describes it, within the service model's output shapes (names of at most 20
characters, inference types of the InferenceType enum: a model AWS serves only through an inference
profile lists none)."""

from bedrock_local.engine.catalog import FoundationModel, all_foundation_models, find_foundation_model
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ResourceNotFoundException
from bedrock_local.service.registry import operation


def foundation_model_arn(region: str, model_id: str) -> str:
    return f"arn:aws:bedrock:{region}::foundation-model/{model_id}"


def describe(ctx: Context, model: FoundationModel) -> dict:
    return {
        "modelArn": foundation_model_arn(ctx.region, model.model_id),
        "modelId": model.model_id,
        "modelName": model.model_name,
        "providerName": model.provider_name,
        "inputModalities": list(model.input_modalities),
        "outputModalities": list(model.output_modalities),
        "responseStreamingSupported": model.response_streaming_supported,
        "customizationsSupported": list(model.customizations_supported),
        "inferenceTypesSupported": list(model.inference_types_supported),
        "modelLifecycle": {"status": model.lifecycle},
    }


def resolve(ctx: Context, identifier: str) -> FoundationModel:
    """A foundation model by id or ARN (an ARN of another region names that region's copy of it)."""
    model_id = identifier
    if identifier.startswith("arn:"):
        model_id = identifier.split(":foundation-model/", 1)[1] if ":foundation-model/" in identifier else ""
    model = find_foundation_model(model_id)
    if model is None:
        raise ResourceNotFoundException(f"The foundation model '{identifier}' does not exist.")
    return model


@operation("ListFoundationModels")
def list_foundation_models(ctx: Context, params: dict) -> dict:
    def wanted(model: FoundationModel) -> bool:
        if params.get("byProvider") and params["byProvider"].lower() not in (
                model.provider_name.lower(), model.model_id.split(".", 1)[0]):
            return False
        if params.get("byCustomizationType") and params["byCustomizationType"] not in model.customizations_supported:
            return False
        if params.get("byOutputModality") and params["byOutputModality"] not in model.output_modalities:
            return False
        if params.get("byInferenceType") and params["byInferenceType"] not in model.inference_types_supported:
            return False
        return True
    return {"modelSummaries": [describe(ctx, m) for m in all_foundation_models() if wanted(m)]}


@operation("GetFoundationModel")
def get_foundation_model(ctx: Context, params: dict) -> dict:
    return {"modelDetails": describe(ctx, resolve(ctx, params["modelIdentifier"]))}
