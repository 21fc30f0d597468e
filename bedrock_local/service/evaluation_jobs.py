"""Automated model evaluation jobs: CreateEvaluationJob, GetEvaluationJob, ListEvaluationJobs,
StopEvaluationJob and BatchDeleteEvaluationJob. The job runs on a worker (jobs/handlers/evaluation.py)
InProgress → Completed | Failed, or Stopping → Stopped; BatchDelete removes ended jobs (answered as
Deleting). What is refused here, with the reason: human evaluation, RAG evaluation, built-in datasets
(no package ships them offline), Builtin.Toxicity (no toxicity classifier is packaged), two models
in one automated job, Robustness on precomputed responses (nothing to answer the perturbed prompts)."""

import json

from sqlalchemy import false

from bedrock_local.engine.catalog import KIND_EMBEDDING
from bedrock_local.engine.evaluation import JUDGE_METRICS
from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import is_final, unfinished_statuses
from bedrock_local.service.buckets import s3_location
from bedrock_local.service.common import (as_answer, idempotent_replay, insert_unique, list_resources, make_arn, new_id,
                                          request_hash, stop_job)
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ConflictException, ResourceNotFoundException, ValidationException
from bedrock_local.service.models import resolve_model_source
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource

KIND = "evaluation-job"
UNFINISHED = unfinished_statuses(KIND)
COLUMNS = {"jobArn": "arn", "jobName": "name", "status": "status", "creationTime": "created_at"}
GET_COLUMNS = {**COLUMNS, "lastModifiedTime": "updated_at"}
PAGE_MOST = 5  # the service model's EvaluationSummaries holds at most 5 summaries a page
ALGORITHMIC = {"Builtin.Accuracy", "Builtin.Robustness"}
TOXICITY = "Builtin.Toxicity"
JUDGE = set(JUDGE_METRICS)  # the model-as-judge metrics engine/evaluation.py has prompts for
# every job stored here is a ModelEvaluation one: RagEvaluation is refused at create
FILTERS = {"applicationTypeEquals": lambda value: None if value == "ModelEvaluation" else false()}
INFERENCE_KEYS = {"maxTokens": int, "temperature": float, "topP": float, "stopSequences": list}


def describe(resource) -> dict:
    return as_answer(resource, GET_COLUMNS)


def find_job(session, ctx: Context, identifier: str) -> Resource:
    job_id = identifier.rsplit("/", 1)[-1]
    found = resources.find(session, ctx.scope, KIND, resource_id=job_id)
    if found is None or found.arn != identifier:
        raise ResourceNotFoundException(f"The evaluation job '{identifier}' does not exist.")
    return found


def _refuse_unsupported(params: dict) -> dict:
    """The automated config, once every kind of evaluation bedrock-local does not run is refused."""
    if params.get("applicationType") == "RagEvaluation" or params["inferenceConfig"].get("ragConfigs"):
        raise ValidationException(
            "RAG evaluation (applicationType RagEvaluation, inferenceConfig.ragConfigs) is not supported by "
            "bedrock-local: it serves no knowledge bases. Use applicationType ModelEvaluation.")
    config = params["evaluationConfig"]
    if config.get("human"):
        raise ValidationException(
            "evaluationConfig.human: evaluation jobs that use human workers are not supported by bedrock-local "
            "(there is no SageMaker work team to rate responses). Use evaluationConfig.automated.")
    if not config.get("automated"):
        raise ValidationException("evaluationConfig.automated is required.")
    return config["automated"]


def inference_params(raw: str | None, member: str) -> dict:
    """A model's inferenceParams (a JSON string: {"inferenceConfig": {maxTokens, temperature, topP,
    stopSequences}}, or those keys at the top level) as a Converse inferenceConfig."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValidationException(f"{member} is not valid JSON: {exc}")
    if not isinstance(data, dict):
        raise ValidationException(f"{member} must be a JSON object.")
    config = data.get("inferenceConfig", data)
    if not isinstance(config, dict):
        raise ValidationException(f"{member}: inferenceConfig must be a JSON object.")
    out = {}
    for key, value in config.items():
        if key not in INFERENCE_KEYS:
            raise ValidationException(f"{member}: unknown inference parameter '{key}'; known: "
                                      f"{', '.join(INFERENCE_KEYS)}.")
        kind = INFERENCE_KEYS[key]
        try:
            out[key] = ([str(v) for v in value] if kind is list and isinstance(value, list)
                        else kind(value) if kind is not list else None)
        except (TypeError, ValueError):
            out[key] = None
        if out[key] is None:
            raise ValidationException(f"{member}: '{key}' must be {'a list of strings' if kind is list else 'a number'}.")
    if "maxTokens" in out and not 1 <= out["maxTokens"] <= 4096:
        raise ValidationException(f"{member}: maxTokens must be between 1 and 4096.")
    if "temperature" in out and not 0 <= out["temperature"] <= 1:
        raise ValidationException(f"{member}: temperature must be between 0 and 1.")
    if "topP" in out and not 0 <= out["topP"] <= 1:
        raise ValidationException(f"{member}: topP must be between 0 and 1.")
    return out


def _evaluator(session, ctx: Context, config: dict | None, member: str) -> tuple[str | None, dict | None]:
    models = (config or {}).get("bedrockEvaluatorModels") or []
    if not models:
        return None, None
    identifier = models[0]["modelIdentifier"]
    source = resolve_model_source(session, ctx, identifier, profiles=True)
    if source.kind == KIND_EMBEDDING:
        raise ValidationException(f"{member}: '{identifier}' is an embedding model; an evaluator must generate text.")
    return identifier, source.to_json()


@operation("CreateEvaluationJob")
def create_evaluation_job(ctx: Context, params: dict) -> dict:
    automated = _refuse_unsupported(params)
    models = params["inferenceConfig"].get("models") or []
    if len(models) != 1:
        raise ValidationException(
            f"inferenceConfig.models names {len(models)} models; an automated model evaluation job evaluates "
            f"exactly one model.")
    model = models[0]
    bedrock_model, precomputed = model.get("bedrockModel"), model.get("precomputedInferenceSource")
    if bool(bedrock_model) == bool(precomputed):
        raise ValidationException("inferenceConfig.models[0] must have exactly one of bedrockModel and "
                                  "precomputedInferenceSource.")
    member = "inferenceConfig.models[0].bedrockModel.inferenceParams"
    generation = inference_params(bedrock_model.get("inferenceParams"), member) if bedrock_model else {}
    custom = automated.get("customMetricConfig") or {}
    custom_names = [m["customMetricDefinition"]["name"] for m in custom.get("customMetrics", [])
                    if m.get("customMetricDefinition")]
    if custom and len(custom_names) != len(custom.get("customMetrics", [])):
        raise ValidationException("evaluationConfig.automated.customMetricConfig.customMetrics: each item needs a "
                                  "customMetricDefinition.")
    judged = False
    for index, dataset_config in enumerate(automated["datasetMetricConfigs"]):
        where = f"evaluationConfig.automated.datasetMetricConfigs[{index}]"
        dataset = dataset_config["dataset"]
        if dataset["name"].startswith("Builtin."):
            raise ValidationException(
                f"{where}.dataset: the built-in dataset '{dataset['name']}' is not available in bedrock-local: no "
                f"installed package ships it offline. Give a custom prompt dataset in S3 (datasetLocation.s3Uri, "
                f"JSON lines of prompt, referenceResponse, category).")
        location = (dataset.get("datasetLocation") or {}).get("s3Uri")
        if not location:
            raise ValidationException(f"{where}.dataset.datasetLocation.s3Uri is required for the custom dataset "
                                      f"'{dataset['name']}'.")
        s3_location(ctx, location, f"{where}.dataset.datasetLocation.s3Uri")
        for name in dataset_config["metricNames"]:
            if name == TOXICITY:
                raise ValidationException(
                    f"{where}.metricNames: {TOXICITY} is not supported by bedrock-local: no toxicity classifier is "
                    f"packaged for offline use. Use Builtin.Accuracy, Builtin.Robustness or a model-as-judge metric "
                    f"such as Builtin.Harmfulness.")
            if name == "Builtin.Robustness" and precomputed:
                raise ValidationException(
                    f"{where}.metricNames: Builtin.Robustness needs the model to answer perturbed prompts, which a "
                    f"precomputedInferenceSource cannot do.")
            if name in JUDGE:
                judged = True
            elif name not in ALGORITHMIC and name not in custom_names:
                raise ValidationException(
                    f"{where}.metricNames: unknown metric '{name}'. Known: Builtin.Accuracy, Builtin.Robustness, "
                    f"{', '.join(sorted(JUDGE))}, and the names of customMetricConfig's metrics.")
    s3_location(ctx, params["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"jobArn": earlier.arn}
        source = None
        if bedrock_model:
            source = resolve_model_source(session, ctx, bedrock_model["modelIdentifier"], profiles=True,
                                          provisioned=True)
            if source.kind == KIND_EMBEDDING:
                raise ValidationException(
                    f"inferenceConfig.models[0].bedrockModel.modelIdentifier: '{bedrock_model['modelIdentifier']}' "
                    f"is an embedding model; model evaluation needs a model that generates text.")
        evaluator_id, evaluator = _evaluator(session, ctx, automated.get("evaluatorModelConfig"),
                                             "evaluationConfig.automated.evaluatorModelConfig")
        if judged and evaluator is None:
            raise ValidationException(
                "evaluationConfig.automated.evaluatorModelConfig.bedrockEvaluatorModels is required for the "
                "model-as-judge metrics named in metricNames.")
        custom_id, custom_evaluator = _evaluator(session, ctx, custom.get("evaluatorModelConfig"),
                                                 "evaluationConfig.automated.customMetricConfig.evaluatorModelConfig")
        check_count(session, ctx, "evaluation-jobs", KIND, UNFINISHED, what=f"evaluation jobs are {', '.join(UNFINISHED)}")
        job_id = new_id()
        task_types = list(dict.fromkeys(c["taskType"] for c in automated["datasetMetricConfigs"]))
        model_ids = [bedrock_model["modelIdentifier"]] if bedrock_model else []
        summary = {"modelConfigSummary": {"bedrockModelIdentifiers": model_ids,
                                          "precomputedInferenceSourceIdentifiers":
                                              [precomputed["inferenceSourceIdentifier"]] if precomputed else []}}
        body = {"jobDescription": params.get("jobDescription"), "roleArn": params["roleArn"],
                "customerEncryptionKeyId": params.get("customerEncryptionKeyId"), "jobType": "Automated",
                "applicationType": params.get("applicationType", "ModelEvaluation"),
                "evaluationConfig": params["evaluationConfig"], "inferenceConfig": params["inferenceConfig"],
                "outputDataConfig": params["outputDataConfig"], "evaluationTaskTypes": task_types,
                "modelIdentifiers": model_ids, "evaluatorModelIdentifiers": [evaluator_id] if evaluator_id else [],
                "customMetricsEvaluatorModelIdentifiers": [custom_id] if custom_id else [],
                "inferenceConfigSummary": summary, "clientRequestToken": params.get("clientRequestToken"),
                "_model": source.to_json() if source else None, "_generation": generation,
                "_evaluator": evaluator, "_customEvaluator": custom_evaluator, "_requestHash": request_hash(params)}
        job = insert_unique(
            session, ctx, KIND, "evaluation job", name=params["jobName"], body=body, resource_id=job_id,
            arn=make_arn(ctx, f"evaluation-job/{job_id}"), status="InProgress",
            ref_arn=source.reference if source else None, client_token=params.get("clientRequestToken"),
            tags=params.get("jobTags"))
        lease.enqueue(session, job, "evaluation")
        return {"jobArn": job.arn}


@operation("GetEvaluationJob")
def get_evaluation_job(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        job = find_job(session, ctx, params["jobIdentifier"])
        answer = describe(job)
    for member in ("evaluationTaskTypes", "modelIdentifiers", "evaluatorModelIdentifiers", "clientRequestToken",
                   "customMetricsEvaluatorModelIdentifiers", "inferenceConfigSummary", "results"):
        answer.pop(member, None)  # summary-only members, and what the output files hold
    return answer


@operation("ListEvaluationJobs")
def list_evaluation_jobs(ctx: Context, params: dict) -> dict:
    capped = {**params, "maxResults": min(params.get("maxResults") or PAGE_MOST, PAGE_MOST)}
    return list_resources(ctx, capped, "ListEvaluationJobs", KIND, COLUMNS, filters=FILTERS,
                          left_out=("ragIdentifiers",))


@operation("StopEvaluationJob")
def stop_evaluation_job(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        stop_job(session, find_job(session, ctx, params["jobIdentifier"]), "evaluation job", ConflictException,
                 dict)
    return {}


@operation("BatchDeleteEvaluationJob")
def batch_delete_evaluation_job(ctx: Context, params: dict) -> dict:
    """Deletes the jobs that have ended (Completed, Failed, Stopped), as AWS does; a job still running
    or not found is an entry of `errors`. Its output files in the caller's bucket stay."""
    deleted, errors = [], []
    with ctx.db.session() as session, session.begin():
        for identifier in dict.fromkeys(params["jobIdentifiers"]):
            try:
                job = find_job(session, ctx, identifier)
            except ResourceNotFoundException as exc:
                errors.append({"jobIdentifier": identifier, "code": "ResourceNotFoundException", "message": exc.message})
                continue
            if not is_final(job):
                errors.append({"jobIdentifier": identifier, "code": "ConflictException",
                               "message": f"The evaluation job '{job.name}' is {job.status}; only a Completed, Failed "
                                          f"or Stopped job can be deleted. Stop it first."})
                continue
            lease.forget(session, job)
            resources.delete_resource(session, job)
            deleted.append({"jobIdentifier": identifier, "jobStatus": "Deleting"})
    return {"errors": errors, "evaluationJobs": deleted}
