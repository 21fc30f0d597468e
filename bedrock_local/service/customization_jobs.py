"""Model customization jobs: CreateModelCustomizationJob (fine-tuning, continued pre-training and
distillation: a teacher's answers teach a student, from a prompt file or invocation logs),
GetModelCustomizationJob (by ARN or name), ListModelCustomizationJobs and
StopModelCustomizationJob. The work runs on a worker (jobs/handlers/customization.py, the teacher's
part in jobs/handlers/distillation.py; docs/distillation.md)."""

import hashlib
import re

from sqlalchemy import select, text

from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import unfinished_statuses
from bedrock_local.service.common import (as_answer, check_name_free, find_in_scope, idempotent_replay, insert_unique,
                                          list_resources, make_arn, new_id, read_in_scope, request_hash, stop_job)
from bedrock_local.service.context import Context
from bedrock_local.service.custom_models import KIND as MODEL_KIND
from bedrock_local.service.buckets import s3_location
from bedrock_local.service.errors import ConflictException, ResourceNotFoundException, ValidationException
from bedrock_local.service.foundation_models import foundation_model_arn
from bedrock_local.service.models import resolve_model_source
from bedrock_local.engine.catalog import KIND_TEXT, all_foundation_models, find_foundation_model
from bedrock_local.service.quotas import check_count
from bedrock_local.service.registry import operation
from bedrock_local.store import resources
from bedrock_local.store.resources import utcnow
from bedrock_local.store.schema import Resource

KIND = "model-customization-job"
SUPPORTED_TYPES = ("FINE_TUNING", "CONTINUED_PRE_TRAINING", "DISTILLATION")
DISTILLATION = "DISTILLATION"
# maxResponseLengthForInference: the service model gives no range; the teacher's maxTokens here
MAX_RESPONSE_LENGTH, DEFAULT_RESPONSE_LENGTH = 8192, 1024
# a distillation student's id as the user guide names it: the model id and its context window
STUDENT_CONTEXT_SUFFIX = re.compile(r"(?P<model>.+):(?P<window>[0-9]+k)")
UNFINISHED = unfinished_statuses(KIND)  # InProgress, Stopping: a job in these holds its customModelName
PHASES = ("validationDetails", "dataProcessingDetails", "trainingDetails")
COLUMNS = {"jobArn": "arn", "jobName": "name", "status": "status", "creationTime": "created_at",
           "lastModifiedTime": "updated_at"}


def describe(resource: Resource) -> dict:
    return as_answer(resource, COLUMNS)


def find_job(session, ctx: Context, identifier: str) -> Resource:
    return find_in_scope(session, ctx, KIND, "model customization job", identifier)


def _effective_hyperparameters(values: dict, customization_type: str) -> dict:
    from bedrock_local.engine.training_data import HyperParameterError, parse_hyperparameters

    try:  # a distillation trains its student as a fine-tuning does
        return parse_hyperparameters(values, "FINE_TUNING" if customization_type == DISTILLATION
                                     else customization_type)[1]
    except HyperParameterError as exc:
        raise ValidationException(str(exc))


def _check_model_name_free(session, ctx: Context, name: str) -> None:
    """A customModelName is taken by a custom model, or by a job of the same account and region that
    has not ended yet (InProgress, Stopping): its model will take that name. A job that ended
    Failed or Stopped frees it. Two Creates with the same name at once: SQLite runs write
    transactions one at a time (BEGIN IMMEDIATE); on PostgreSQL a transaction lock on the name
    makes the second wait for the first to commit, then see its job."""
    if session.get_bind().dialect.name == "postgresql":
        key = hashlib.sha256(f"custom-model-name/{ctx.account}/{ctx.region}/{name}".encode()).digest()[:8]
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int.from_bytes(key, "big", signed=True)})
    check_name_free(session, ctx, MODEL_KIND, "custom model", name)
    training = session.scalars(select(Resource).where(
        Resource.account == ctx.account, Resource.region == ctx.region, Resource.kind == KIND,
        Resource.status.in_(UNFINISHED), Resource.body["outputModelName"].as_string() == name).limit(1)).first()
    if training is not None:
        raise ConflictException(
            f"The custom model name '{name}' is already in use in {ctx.region}: the model customization job "
            f"'{training.name}' ({training.status}) will create a model with that name. Use another "
            f"customModelName, or wait until that job has ended Failed or Stopped.")


def _check_distillation_request(ctx: Context, params: dict, customization_type: str) -> int | None:
    """The members a distillation takes and the others refuse; answers the teacher's max tokens."""
    config = params.get("customizationConfig") or {}
    data = params["trainingDataConfig"]
    if config.get("rftConfig"):
        raise ValidationException("customizationConfig.rftConfig is for REINFORCEMENT_FINE_TUNING jobs, which are not "
                                  "supported here.")
    if customization_type != DISTILLATION:
        if config.get("distillationConfig"):
            raise ValidationException(f"customizationConfig.distillationConfig is for {DISTILLATION} jobs only; this "
                                      f"job's customizationType is {customization_type}.")
        if data.get("invocationLogsConfig"):
            raise ValidationException(f"trainingDataConfig.invocationLogsConfig is a training source of {DISTILLATION} "
                                      f"jobs only; give trainingDataConfig.s3Uri.")
        return None
    if not config.get("distillationConfig"):
        raise ValidationException(f"customizationType {DISTILLATION} needs customizationConfig.distillationConfig."
                                  f"teacherModelConfig (teacherModelIdentifier, maxResponseLengthForInference).")
    if bool(data.get("s3Uri")) == bool(data.get("invocationLogsConfig")):
        raise ValidationException("trainingDataConfig of a distillation job takes exactly one of s3Uri (prompts) and "
                                  "invocationLogsConfig (invocation logs).")
    if data.get("invocationLogsConfig"):
        logs = data["invocationLogsConfig"]
        s3_location(ctx, (logs.get("invocationLogSource") or {}).get("s3Uri") or "",
                    "trainingDataConfig.invocationLogsConfig.invocationLogSource.s3Uri")
        filters = logs.get("requestMetadataFilters") or {}
        for name in ("andAll", "orAll"):
            for index, rule in enumerate(filters.get(name) or []):
                if not rule.get("equals") and not rule.get("notEquals"):
                    raise ValidationException(f"trainingDataConfig.invocationLogsConfig.requestMetadataFilters.{name}."
                                              f"{index + 1}.member needs equals or notEquals.")
    teacher = config["distillationConfig"]["teacherModelConfig"]
    length = teacher.get("maxResponseLengthForInference", DEFAULT_RESPONSE_LENGTH)
    if not 1 <= length <= MAX_RESPONSE_LENGTH:
        raise ValidationException(f"customizationConfig.distillationConfig.teacherModelConfig."
                                  f"maxResponseLengthForInference must be from 1 to {MAX_RESPONSE_LENGTH}, got {length}.")
    return length


def _student_identifier(identifier: str) -> str:
    """A student id as the user guide writes it (meta.llama3-1-8b-instruct-v1:0:128k) names the catalog
    model without the context window."""
    found = STUDENT_CONTEXT_SUFFIX.fullmatch(identifier.split(":foundation-model/", 1)[-1])
    if found and find_foundation_model(identifier.split(":foundation-model/", 1)[-1]) is None \
            and find_foundation_model(found["model"]) is not None:
        return found["model"]
    return identifier


def _teacher_source(session, ctx: Context, student_id: str, identifier: str):
    """The teacher, resolved as the runtime resolves a modelId (an inference profile names its model;
    a model AWS serves only through a profile is refused by its bare id), paired with the student as
    AWS pairs them."""
    member = "customizationConfig.distillationConfig.teacherModelConfig.teacherModelIdentifier"
    try:
        source = resolve_model_source(session, ctx, identifier, custom_models=False)
    except ResourceNotFoundException as exc:
        raise ResourceNotFoundException(f"{member}: {exc.message}")
    except ValidationException as exc:
        raise ValidationException(f"{member}: {exc.message}")
    student = find_foundation_model(student_id)
    teachers = student.distillation_teachers if student is not None else ()
    if student is None or DISTILLATION not in student.customizations_supported:
        students = sorted(m.model_id for m in all_foundation_models() if DISTILLATION in m.customizations_supported)
        raise ValidationException(f"The base model {student_id} cannot be a distillation student; the students "
                                  f"are {', '.join(students) or 'none'} (ListFoundationModels with "
                                  f"byCustomizationType=DISTILLATION).")
    if source.foundation_model_id not in teachers:
        raise ValidationException(f"{member}: {identifier} is not a teacher of the student model {student_id}; its "
                                  f"teachers are {', '.join(teachers)}.")
    if source.kind != KIND_TEXT:
        raise ValidationException(f"{member}: {identifier} is not a text model; distillation is text to text.")
    return source


@operation("CreateModelCustomizationJob")
def create_model_customization_job(ctx: Context, params: dict) -> dict:
    customization_type = params.get("customizationType", "FINE_TUNING")
    if customization_type not in SUPPORTED_TYPES:
        raise ValidationException(f"customizationType {customization_type} is not supported here; use one of "
                                  f"{', '.join(SUPPORTED_TYPES)}.")
    max_response_length = _check_distillation_request(ctx, params, customization_type)
    if not params["trainingDataConfig"].get("invocationLogsConfig"):
        s3_location(ctx, params["trainingDataConfig"].get("s3Uri") or "", "trainingDataConfig.s3Uri")
    s3_location(ctx, params["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
    validators = (params.get("validationDataConfig") or {}).get("validators", [])
    for index, validator in enumerate(validators):
        s3_location(ctx, validator["s3Uri"], f"validationDataConfig.validators.{index + 1}.member.s3Uri")
    hyperparameters = _effective_hyperparameters(params.get("hyperParameters") or {}, customization_type)
    with ctx.db.session() as session, session.begin():
        if (earlier := idempotent_replay(session, ctx, KIND, params)) is not None:
            return {"jobArn": earlier.arn}
        base_identifier = params["baseModelIdentifier"]
        if customization_type == DISTILLATION:
            base_identifier = _student_identifier(base_identifier)
        source = resolve_model_source(session, ctx, base_identifier)
        teacher = None
        if customization_type == DISTILLATION:
            if not source.foundation_model_id:
                raise ValidationException(f"The base model {params['baseModelIdentifier']} of a distillation is a "
                                          f"custom model; a student is a foundation model.")
            teacher = _teacher_source(session, ctx, source.foundation_model_id, params["customizationConfig"][
                "distillationConfig"]["teacherModelConfig"]["teacherModelIdentifier"])
        if source.foundation_model_id:
            foundation_id, base_arn = source.foundation_model_id, foundation_model_arn(ctx.region, source.foundation_model_id)
        else:
            base = resources.find(session, ctx.scope, MODEL_KIND, arn=source.reference)
            base_arn = source.reference
            origin = base.origin_arn or ""
            foundation_id = origin.split(":foundation-model/", 1)[1] if ":foundation-model/" in origin else None
            if foundation_id is None:
                raise ValidationException(f"The custom model '{base.arn}' was imported, not derived from a foundation "
                                          f"model: it cannot be customized further.")
        _check_model_name_free(session, ctx, params["customModelName"])
        check_count(session, ctx, "customization-jobs", KIND, UNFINISHED,
                    what=f"model customization jobs are {' or '.join(UNFINISHED)}")
        job_id, created = new_id(), utcnow()
        now = created.isoformat()  # the phases start when the job does
        kms = params.get("customModelKmsKeyId")
        body = {"outputModelName": params["customModelName"], "roleArn": params["roleArn"],
                "clientRequestToken": params.get("clientRequestToken"), "baseModelArn": base_arn,
                "hyperParameters": hyperparameters, "trainingDataConfig": params["trainingDataConfig"],
                "validationDataConfig": params.get("validationDataConfig") or {"validators": []},
                "outputDataConfig": params["outputDataConfig"], "customizationType": customization_type,
                "outputModelKmsKeyArn": kms if kms and kms.startswith("arn:") and ":key/" in kms else None,
                "vpcConfig": params.get("vpcConfig"),
                "statusDetails": {phase: {"status": "NotStarted", "creationTime": now, "lastModifiedTime": now}
                                  for phase in PHASES},
                "_model": source.to_json(), "_foundationModelId": foundation_id,
                "_foundationModelArn": foundation_model_arn(ctx.region, foundation_id),
                "_customModelTags": params.get("customModelTags") or [], "_requestHash": request_hash(params)}
        if teacher is not None:
            body.update(customizationConfig=params["customizationConfig"], _teacher=teacher.to_json(),
                        _teacherFoundationModelId=teacher.foundation_model_id, _maxResponseLength=max_response_length)
        job = insert_unique(
            session, ctx, KIND, "model customization job", name=params["jobName"], body=body, resource_id=job_id,
            arn=make_arn(ctx, f"model-customization-job/{foundation_id}/{job_id}"), status="InProgress",
            ref_arn=base_arn, client_token=params.get("clientRequestToken"), tags=params.get("jobTags"),
            created_at=created)
        lease.enqueue(session, job, "customization")
        return {"jobArn": job.arn}


@operation("GetModelCustomizationJob")
def get_model_customization_job(ctx: Context, params: dict) -> dict:
    return describe(read_in_scope(ctx, KIND, "model customization job", params["jobIdentifier"]))


@operation("ListModelCustomizationJobs")
def list_model_customization_jobs(ctx: Context, params: dict) -> dict:
    # A summary carries statusDetails "for a Distillation job" (the service model's words): a distillation's
    # summary has it, the others' leave it out (their phases are on GetModelCustomizationJob; a page of
    # 100 without them is a third of the JSON and of the timestamps boto3 parses).
    page = list_resources(ctx, params, "ListModelCustomizationJobs", KIND, COLUMNS,
                          body_names={"customModelArn": "outputModelArn", "customModelName": "outputModelName"})
    for summary in page["modelCustomizationJobSummaries"]:
        if summary.get("customizationType") != DISTILLATION:
            summary.pop("statusDetails", None)
    return page


@operation("StopModelCustomizationJob")
def stop_model_customization_job(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        job = find_job(session, ctx, params["jobIdentifier"])

        def stopped_before_it_started() -> dict:
            now = utcnow().isoformat()
            return {"endTime": now, "statusDetails": {
                phase: {**info, "status": "Stopped" if info["status"] != "Completed" else "Completed",
                        "lastModifiedTime": now} for phase, info in job.body["statusDetails"].items()}}
        stop_job(session, job, "model customization job", ValidationException, stopped_before_it_started)
    return {}
