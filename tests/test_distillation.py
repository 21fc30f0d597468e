"""Distillation through boto3 against one real server: CreateModelCustomizationJob with customizationType
DISTILLATION, a teacher aliased to a model that knows a made-up fact (`runsOnWeights`: the fact model's
HF folder) and a student on SmolLM2 that does not; the student answers like the teacher afterwards and
not before. Then distillation from the server's own invocation logs (requestMetadata filters,
usePromptResponse true and false, Stop), the teacher/student pairs AWS allows, bad teacher ids, the
students listed by ListFoundationModels, every answer within its output shape, idempotency, tags and
account isolation."""

import gzip
import json

import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from conftest import FACT_HYPERPARAMETERS, FACT_QUESTIONS, Server, wait_until

A_KEY, A_SECRET, A = "AKIADISTILLAAAAA", "secret-of-a", "111111111111"
B_KEY, B_SECRET = "AKIADISTILLBBBBB", "secret-of-b"
TEACHER = "meta.llama3-1-405b-instruct-v1:0"  # aliased to the fact model's folder
STUDENT = "meta.llama3-1-8b-instruct-v1:0"  # the default alias: SmolLM2, which does not know the fact
ROLE = f"arn:aws:iam::{A}:role/distillation"
FINAL = ("Completed", "Failed", "Stopped")


@pytest.fixture(scope="module")
def server(tmp_path_factory, fact_model_dir):
    root = tmp_path_factory.mktemp("distillation")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({
        A_KEY: {"secretAccessKey": A_SECRET, "accountId": A, "buckets": ["distil-data", "distil-out", "distil-logs"]},
        B_KEY: {"secretAccessKey": B_SECRET, "accountId": "222222222222", "buckets": ["b-data"]}}))
    aliases = root / "aliases.json"
    aliases.write_text(json.dumps({"aliases": [{"modelId": TEACHER, "runsOnWeights": str(fact_model_dir),
                                                "bodyFormat": "meta-llama"}]}))
    server = Server(root / "data", workers=1, serving_workers=1,
                    extra_args=("--credentials-file", str(credentials), "--model-aliases", str(aliases))).start()
    for bucket in ("distil-data", "distil-out", "distil-logs"):
        server.folder(bucket)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bedrock(server):
    return server.client("us-east-1", A_KEY, secret_key=A_SECRET, read_timeout=120)


@pytest.fixture(scope="module")
def runtime(server):
    return server.client("us-east-1", A_KEY, "bedrock-runtime", secret_key=A_SECRET, read_timeout=120)


def checked(client, operation: str, response: dict) -> dict:
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    problem = validation_message(body, client.meta.service_model.operation_model(operation).output_shape)
    assert problem is None, f"{operation} answered outside its output shape: {problem}"
    return body


def error(excinfo) -> tuple[str, str]:
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["Error"]["Message"]


def ask(runtime, model_id: str, question: str, **extra) -> str:
    answer = runtime.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": question}]}],
                              inferenceConfig={"maxTokens": 24, "temperature": 0}, **extra)
    return answer["output"]["message"]["content"][0]["text"]


def request(name: str, **changes) -> dict:
    base = {"jobName": name, "customModelName": f"{name}-model", "roleArn": ROLE, "baseModelIdentifier": STUDENT,
            "customizationType": "DISTILLATION", "hyperParameters": FACT_HYPERPARAMETERS,
            "trainingDataConfig": {"s3Uri": "s3://distil-data/prompts/"},
            "outputDataConfig": {"s3Uri": f"s3://distil-out/{name}/"},
            "customizationConfig": {"distillationConfig": {"teacherModelConfig": {
                "teacherModelIdentifier": TEACHER, "maxResponseLengthForInference": 24}}}}
    return {**base, **changes}


def conversation(question: str) -> dict:
    return {"schemaVersion": "bedrock-conversation-2024", "messages": [{"role": "user", "content": [{"text": question}]}]}


def finished(bedrock, arn: str, timeout: float = 600) -> dict:
    return wait_until(lambda: (job := bedrock.get_model_customization_job(jobIdentifier=arn))["status"] in FINAL
                      and job, timeout=timeout, interval=1, what=f"the distillation job {arn}")


def output_file(server, name: str, job: dict, file: str) -> list[dict]:
    job_id = job["jobArn"].rsplit("/", 1)[1]
    path = server.folder("distil-out") / name / f"model-customization-job-{job_id}" / "distillation_artifacts" / file
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_students_are_listed_with_their_customization(bedrock):
    students = checked(bedrock, "ListFoundationModels", bedrock.list_foundation_models(
        byCustomizationType="DISTILLATION"))["modelSummaries"]
    ids = {model["modelId"] for model in students}
    assert {STUDENT, "meta.llama3-1-70b-instruct-v1:0", "meta.llama3-2-1b-instruct-v1:0",
            "meta.llama3-2-3b-instruct-v1:0", "meta.llama3-3-70b-instruct-v1:0", "amazon.nova-lite-v1:0",
            "amazon.nova-micro-v1:0", "amazon.nova-pro-v1:0"} == ids
    assert all("DISTILLATION" in model["customizationsSupported"] for model in students)
    teacher = checked(bedrock, "GetFoundationModel", bedrock.get_foundation_model(modelIdentifier=TEACHER))
    assert "DISTILLATION" not in teacher["modelDetails"].get("customizationsSupported", [])


def test_wrong_pairs_and_bad_teachers_are_refused(bedrock):
    def refused(change: dict, code: str, *words: str) -> None:
        with pytest.raises(ClientError) as excinfo:
            bedrock.create_model_customization_job(**request("refused", **change))
        got, message = error(excinfo)
        assert got == code and all(word in message for word in words), (change, got, message)

    def teacher(identifier: str, length: int = 24) -> dict:
        return {"customizationConfig": {"distillationConfig": {"teacherModelConfig": {
            "teacherModelIdentifier": identifier, "maxResponseLengthForInference": length}}}}

    # a pair AWS does not offer: Llama 3.1 405B teaches 3.1 8B, 3.1 70B, 3.2 1B and 3.3 70B, not 3.2 3B
    refused({"baseModelIdentifier": "meta.llama3-2-3b-instruct-v1:0"}, "ValidationException",
            TEACHER, "not a teacher", "meta.llama3-2-3b-instruct-v1:0")
    refused(teacher("amazon.nova-pro-v1:0"), "ValidationException", "not a teacher", STUDENT)
    # a model that is nobody's student
    refused({"baseModelIdentifier": "huggingface.smollm2-135m-instruct-v1:0"}, "ValidationException",
            "cannot be a distillation student", STUDENT)
    # bad teacher ids: unknown; a model AWS serves only through an inference profile, by its bare id
    refused(teacher("meta.no-such-model-v1:0"), "ResourceNotFoundException", "teacherModelIdentifier",
            "meta.no-such-model-v1:0")
    refused({"baseModelIdentifier": "amazon.nova-lite-v1:0", **teacher("amazon.nova-premier-v1:0")},
            "ValidationException", "teacherModelIdentifier", "inference profile")
    refused(teacher(TEACHER, 0), "ValidationException", "maxResponseLengthForInference")
    without_config = request("refused")
    del without_config["customizationConfig"]
    with pytest.raises(ClientError) as excinfo:
        bedrock.create_model_customization_job(**without_config)
    assert error(excinfo)[0] == "ValidationException" and "distillationConfig" in error(excinfo)[1]
    refused({"trainingDataConfig": {"s3Uri": "s3://distil-data/prompts/", "invocationLogsConfig": {
        "invocationLogSource": {"s3Uri": "s3://distil-logs/"}}}}, "ValidationException", "exactly one")
    refused({"customizationType": "FINE_TUNING"}, "ValidationException", "distillationConfig", "DISTILLATION")
    # the student as the user guide names it (with its context window) is the catalog's model
    with pytest.raises(ClientError) as excinfo:  # (refused for its pair, so the name was understood)
        bedrock.create_model_customization_job(**request(
            "windowed", baseModelIdentifier="meta.llama3-2-3b-instruct-v1:0:128k"))
    assert "not a teacher" in error(excinfo)[1]


def test_the_student_learns_what_the_teacher_knows(server, bedrock, runtime):
    question = FACT_QUESTIONS[0]
    assert "Quintar" in ask(runtime, TEACHER, question)  # the teacher's alias runs on the fact model's weights
    assert "Quintar" not in ask(runtime, STUDENT, question)  # the student does not know it

    prompts = server.folder("distil-data") / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "prompts.jsonl").write_text("".join(json.dumps(conversation(q)) + "\n" for q in FACT_QUESTIONS * 2)
                                           + "not json\n")
    name = "fact-distil"
    params = request(name, clientRequestToken="distil-once", hyperParameters={**FACT_HYPERPARAMETERS, "epochCount": "2"}, jobTags=[{"key": "team", "value": "zorblax"}],
                     customModelTags=[{"key": "stage", "value": "distilled"}])
    arn = checked(bedrock, "CreateModelCustomizationJob", bedrock.create_model_customization_job(**params))["jobArn"]
    assert bedrock.create_model_customization_job(**params)["jobArn"] == arn  # the same token: the same job
    with pytest.raises(ClientError) as excinfo:
        bedrock.create_model_customization_job(**{**params, "jobName": "other-name"})
    assert error(excinfo)[0] in ("ValidationException", "ConflictException")

    other = server.client("us-east-1", B_KEY, secret_key=B_SECRET)
    with pytest.raises(ClientError) as excinfo:
        other.get_model_customization_job(jobIdentifier=arn)
    assert error(excinfo)[0] in ("ResourceNotFoundException", "AccessDeniedException")
    assert name not in {j["jobName"] for j in other.list_model_customization_jobs()["modelCustomizationJobSummaries"]}

    job = checked(bedrock, "GetModelCustomizationJob", finished(bedrock, arn))
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["customizationType"] == "DISTILLATION"
    assert job["customizationConfig"]["distillationConfig"]["teacherModelConfig"]["teacherModelIdentifier"] == TEACHER
    assert {phase: details["status"] for phase, details in job["statusDetails"].items()} == {
        "validationDetails": "Completed", "dataProcessingDetails": "Completed", "trainingDetails": "Completed"}
    processing = job["statusDetails"]["dataProcessingDetails"]
    assert processing["lastModifiedTime"] >= processing["creationTime"]
    summaries = checked(bedrock, "ListModelCustomizationJobs", bedrock.list_model_customization_jobs(
        nameContains=name))["modelCustomizationJobSummaries"]
    assert [s["jobArn"] for s in summaries] == [arn]
    assert summaries[0]["statusDetails"]["dataProcessingDetails"]["status"] == "Completed"
    assert summaries[0]["customizationType"] == "DISTILLATION"

    # what the teacher wrote, and which records were taken
    synthetic = output_file(server, name, job, "synthetic_data.jsonl")
    assert len(synthetic) == len(FACT_QUESTIONS) * 2
    # the teacher's own answers (greedy): it knows the fact, if not in every phrasing
    knowing = [record for record in synthetic if "Quintar" in record["messages"][-1]["content"][0]["text"]]
    assert len(knowing) >= len(synthetic) * 3 // 4, synthetic
    insights = output_file(server, name, job, "prompt_insights.jsonl")
    assert [row["status"] for row in insights].count("ACCEPTED") == len(FACT_QUESTIONS) * 2
    assert [row for row in insights if row["status"] == "REJECTED"][0]["reason"].startswith("not valid JSON")

    model = checked(bedrock, "GetCustomModel", bedrock.get_custom_model(modelIdentifier=job["outputModelArn"]))
    assert model["customizationType"] == "DISTILLATION" and model["modelName"] == f"{name}-model"
    tags = {t["key"]: t["value"] for t in bedrock.list_tags_for_resource(resourceARN=arn)["tags"]}
    assert tags == {"team": "zorblax"}
    bedrock.tag_resource(resourceARN=arn, tags=[{"key": "reviewed", "value": "yes"}])
    assert {t["key"] for t in bedrock.list_tags_for_resource(resourceARN=arn)["tags"]} == {"team", "reviewed"}
    assert bedrock.list_tags_for_resource(resourceARN=job["outputModelArn"])["tags"] == [
        {"key": "stage", "value": "distilled"}]

    # the distilled student, asked in a batch job, now answers like the teacher
    batch_in = server.folder("distil-data") / "after"
    batch_in.mkdir()
    (batch_in / "questions.jsonl").write_text("".join(json.dumps({"recordId": f"q{i}", "modelInput": {
        "messages": [{"role": "user", "content": [{"text": q}]}], "inferenceConfig": {"maxTokens": 24,
                                                                                      "temperature": 0}}}) + "\n"
        for i, q in enumerate(FACT_QUESTIONS[:3])))
    batch = bedrock.create_model_invocation_job(
        jobName="after-distil", roleArn=ROLE, modelId=job["outputModelArn"], modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://distil-data/after/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://distil-out/after/"}})["jobArn"]
    done = wait_until(lambda: (j := bedrock.get_model_invocation_job(jobIdentifier=batch))["status"] in (
        "Completed", "Failed", "Stopped", "PartiallyCompleted") and j, timeout=300, interval=1, what="the batch job")
    assert done["status"] == "Completed", done.get("message")
    out = server.folder("distil-out") / "after" / batch.rsplit("/", 1)[1] / "questions.jsonl.out"
    answers = [json.loads(line)["modelOutput"]["output"]["message"]["content"][0]["text"]
               for line in out.read_text().splitlines()]
    assert len(answers) == 3 and all("Quintar" in answer for answer in answers), answers


def test_distillation_from_invocation_logs(server, bedrock, runtime):
    bedrock.put_model_invocation_logging_configuration(loggingConfig={
        "s3Config": {"bucketName": "distil-logs", "keyPrefix": "bedrock"}, "textDataDeliveryEnabled": True})
    chosen, others = FACT_QUESTIONS[:4], FACT_QUESTIONS[4:6]
    for question in chosen:
        ask(runtime, TEACHER, question, requestMetadata={"purpose": "distil", "team": "zorblax"})
    for question in others:  # the same teacher, but metadata the filter leaves out
        ask(runtime, TEACHER, question, requestMetadata={"purpose": "chat"})
    ask(runtime, STUDENT, "What is two plus two?", requestMetadata={"purpose": "distil", "team": "zorblax"})
    logs = server.folder("distil-logs")
    wait_until(lambda: sum(1 for _ in logs.rglob("*.json.gz")) > 0 and len(_logged(logs)) >= 7, timeout=60,
               interval=0.5, what="the invocation log records")

    # usePromptResponse: the teacher's logged answers are the training data, the student's call is not taken
    source = {"invocationLogSource": {"s3Uri": "s3://distil-logs/bedrock/"}, "usePromptResponse": True,
              "requestMetadataFilters": {"andAll": [{"equals": {"purpose": "distil"}},
                                                    {"equals": {"team": "zorblax"}}]}}
    name = "logs-responses"
    arn = bedrock.create_model_customization_job(**request(
        name, trainingDataConfig={"invocationLogsConfig": source}))["jobArn"]
    job = checked(bedrock, "GetModelCustomizationJob", finished(bedrock, arn))
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["trainingDataConfig"]["invocationLogsConfig"]["usePromptResponse"] is True
    synthetic = output_file(server, name, job, "synthetic_data.jsonl")
    assert sorted(r["messages"][0]["content"][0]["text"] for r in synthetic) == sorted(chosen)
    assert sum("Quintar" in r["messages"][-1]["content"][0]["text"] for r in synthetic) >= 3
    rejected = [row for row in output_file(server, name, job, "prompt_insights.jsonl") if row["status"] == "REJECTED"]
    assert len(rejected) == 1 and "teacher model only" in rejected[0]["reason"] and STUDENT in rejected[0]["reason"]

    # prompts only: every model's prompts the filter selects, answered again by the teacher; stopped in training
    name = "logs-prompts"
    arn = bedrock.create_model_customization_job(**request(name, trainingDataConfig={"invocationLogsConfig": {
        "invocationLogSource": {"s3Uri": "s3://distil-logs/bedrock/"},
        "requestMetadataFilters": {"notEquals": {"purpose": "chat"}}}}))["jobArn"]
    wait_until(lambda: bedrock.get_model_customization_job(jobIdentifier=arn)["statusDetails"]["trainingDetails"][
        "status"] in ("InProgress", "Completed", "Failed"), timeout=300, interval=0.5, what="the training phase")
    bedrock.stop_model_customization_job(jobIdentifier=arn)
    job = checked(bedrock, "GetModelCustomizationJob", finished(bedrock, arn))
    assert job["status"] in ("Stopped", "Completed"), job.get("failureMessage")
    assert job["statusDetails"]["dataProcessingDetails"]["status"] == "Completed"
    synthetic = output_file(server, name, job, "synthetic_data.jsonl")
    asked = {r["messages"][0]["content"][0]["text"]: r["messages"][-1]["content"][0]["text"] for r in synthetic}
    assert set(asked) == {*chosen, "What is two plus two?"}
    assert sum("Quintar" in asked[q] for q in chosen) >= 3  # the teacher answered them again


def _logged(folder) -> list[dict]:
    records = []
    for path in folder.rglob("*.json.gz"):
        try:
            records += [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line]
        except (OSError, EOFError, ValueError):
            continue  # an object still being written: the next look reads it
    return records
