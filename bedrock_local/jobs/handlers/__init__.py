"""Job handlers, one module per job kind (batch inference, customization, model copy, model import),
and the registry a worker runs them from."""


def handlers() -> dict:
    """Every job kind a worker runs, by kind: a protocol.Handler each (importing them loads their code)."""
    from bedrock_local.jobs.handlers.batch_inference import BatchInferenceHandler
    from bedrock_local.jobs.handlers.customization import CustomizationHandler
    from bedrock_local.jobs.handlers.evaluation import EvaluationHandler
    from bedrock_local.jobs.handlers.model_copy import ModelCopyHandler
    from bedrock_local.jobs.handlers.model_import import ModelImportHandler, ModelImportJobHandler
    return {h.kind: h for h in (ModelImportHandler(), ModelImportJobHandler(), ModelCopyHandler(),
                                BatchInferenceHandler(), CustomizationHandler(), EvaluationHandler())}
