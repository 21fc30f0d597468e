"""Automated model evaluation jobs (Create/Get/List/StopEvaluationJob, BatchDeleteEvaluationJob) against a
real bedrock-local server through boto3: a QuestionAndAnswer job whose Accuracy tells a model fine-tuned on
a fact from the base model, the output files in AWS's layout, precomputed responses judged by an evaluator
model, Robustness, Stop, BatchDelete, the refusals, idempotency, tags and account isolation."""

import json
import shutil
import uuid

import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from bedrock_local.service.aws_model import load_service_model
from conftest import FACT_QUESTIONS, Server, upload_folder, wait_until

ACCOUNT, OTHER_ACCOUNT = "123456789012", "222222222222"
OTHER_KEY, OTHER_SECRET = "AKIAEVALOTHERACCT", "other-secret"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/eval"
STUB = "bedrock-local.test-text-v1:0"
BASE = "huggingface.smollm2-135m-instruct-v1:0"
BUCKET = "eval-data"
FINAL = {"Completed", "Failed", "Stopped"}
SERVICE = load_service_model("bedrock")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bedrock_local import testing
    root = tmp_path_factory.mktemp("evaluation")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({
        testing.ACCESS_KEY: {"secretAccessKey": testing.SECRET_KEY, "accountId": ACCOUNT},
        OTHER_KEY: {"secretAccessKey": OTHER_SECRET, "accountId": OTHER_ACCOUNT}}))
    server = Server(root / "data", extra_args=("--credentials-file", str(credentials))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bedrock(server):
    return server.client(read_timeout=120)


def fits(operation: str, answer: dict) -> None:
    body = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    problem = validation_message(body, SERVICE.operation_model(operation).output_shape)
    assert problem is None, problem


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def dataset(server, records: list[dict]) -> str:
    key = f"{unique('ds')}.jsonl"
    (server.folder(BUCKET) / key).write_text("".join(json.dumps(r) + "\n" for r in records))
    return f"s3://{BUCKET}/{key}"


def job_request(name: str, uri: str, *, task="QuestionAndAnswer", metrics=("Builtin.Accuracy",), model=STUB,
                params: str | None = None, **extra) -> dict:
    bedrock_model = {"modelIdentifier": model, **({"inferenceParams": params} if params else {})}
    return {"jobName": name, "roleArn": ROLE,
            "evaluationConfig": {"automated": {"datasetMetricConfigs": [{
                "taskType": task, "dataset": {"name": "mine", "datasetLocation": {"s3Uri": uri}},
                "metricNames": list(metrics)}]}},
            "inferenceConfig": {"models": [{"bedrockModel": bedrock_model}]},
            "outputDataConfig": {"s3Uri": f"s3://{BUCKET}/results/"}, **extra}


def wait_job(client, arn: str, timeout: float = 120) -> dict:
    return wait_until(lambda: (job := client.get_evaluation_job(jobIdentifier=arn))["status"] in FINAL and job,
                      timeout=timeout, interval=0.3, what=f"{arn} to end")


def output_lines(server, job: dict) -> tuple[list[dict], dict]:
    """The per-record lines and the aggregate of the job's one dataset, from AWS's layout."""
    config = job["evaluationConfig"]["automated"]["datasetMetricConfigs"][0]
    model = job["inferenceConfig"]["models"][0]
    model_id = (model.get("bedrockModel") or {}).get("modelIdentifier") or \
        model["precomputedInferenceSource"]["inferenceSourceIdentifier"]
    folder = (server.folder(BUCKET) / "results" / job["jobName"] / job["jobArn"].rsplit("/", 1)[1] / "models"
              / model_id.rsplit("/", 1)[-1] / "taskTypes" / config["taskType"] / "datasets" / config["dataset"]["name"])
    outputs, summaries = list(folder.glob("*_output.jsonl")), list(folder.glob("*_summary.json"))
    assert len(outputs) == 1 and len(summaries) == 1, sorted(p.name for p in folder.iterdir())
    return ([json.loads(line) for line in outputs[0].read_text().splitlines()],
            json.loads(summaries[0].read_text()))


def score(line: dict, metric: str):
    found = [s for s in line["automatedEvaluationResult"]["scores"] if s["metricName"] == metric]
    assert len(found) == 1, line
    return found[0]["result"]


# ------------------------------------------------------------------------------------------


def test_refusals_name_what_is_wrong(server, bedrock):
    uri = dataset(server, [{"prompt": "a b", "referenceResponse": "b a"}])
    cases = {
        "human": dict(evaluationConfig={"human": {"datasetMetricConfigs": [{
            "taskType": "Generation", "dataset": {"name": "d", "datasetLocation": {"s3Uri": uri}},
            "metricNames": ["Builtin.Accuracy"]}]}}),
        "built-in dataset": dict(evaluationConfig={"automated": {"datasetMetricConfigs": [{
            "taskType": "QuestionAndAnswer", "dataset": {"name": "Builtin.BoolQ"}, "metricNames": ["Builtin.Accuracy"]}]}}),
        "Builtin.Toxicity": dict(evaluationConfig={"automated": {"datasetMetricConfigs": [{
            "taskType": "Generation", "dataset": {"name": "d", "datasetLocation": {"s3Uri": uri}},
            "metricNames": ["Builtin.Toxicity"]}]}}),
        "exactly one model": dict(inferenceConfig={"models": [{"bedrockModel": {"modelIdentifier": STUB}},
                                                             {"bedrockModel": {"modelIdentifier": BASE}}]}),
        "RAG evaluation": dict(applicationType="RagEvaluation"),
        "evaluatorModelConfig": job_request("x", uri, metrics=("Builtin.Correctness",))["evaluationConfig"],
        "not valid JSON": dict(inferenceConfig={"models": [{"bedrockModel": {"modelIdentifier": STUB,
                                                                             "inferenceParams": "{nope"}}]}),
        "precomputedInferenceSource": dict(
            evaluationConfig=job_request("x", uri, metrics=("Builtin.Robustness",))["evaluationConfig"],
            inferenceConfig={"models": [{"precomputedInferenceSource": {"inferenceSourceIdentifier": "mine"}}]}),
        "embedding model": dict(inferenceConfig={"models": [{"bedrockModel": {
            "modelIdentifier": "sentence-transformers.all-minilm-l6-v2-v1:0"}}]}),
        "unknown metric": job_request("x", uri, metrics=("Builtin.Nonsense",))["evaluationConfig"],
    }
    for expected, change in cases.items():
        if "automated" in change:  # an evaluationConfig of its own
            change = {"evaluationConfig": change}
        with pytest.raises(ClientError) as excinfo:
            bedrock.create_evaluation_job(**{**job_request(unique("refused"), uri), **change})
        assert error_code(excinfo) == "ValidationException", (expected, excinfo.value)
        assert expected in str(excinfo.value), (expected, str(excinfo.value))
    with pytest.raises(ClientError) as excinfo:
        bedrock.create_evaluation_job(**job_request(unique("missing"), uri, model="meta.nosuch-model-v1:0"))
    assert error_code(excinfo) == "ResourceNotFoundException"
    assert bedrock.list_evaluation_jobs(nameContains="refused")["jobSummaries"] == []


def test_stub_model_job_scores_tags_idempotency_and_isolation(server, bedrock):
    """The stub model answers a prompt's words reversed: a reference made of the prompt's words scores F1 1,
    one of other words 0; robustness perturbs the prompts and scores the change."""
    uri = dataset(server, [
        {"prompt": "Quintar capital Zorblax", "referenceResponse": "Zorblax capital Quintar", "category": "same"},
        {"prompt": "Paris France", "referenceResponse": "Berlin", "category": "other"},
        {"prompt": "one two three", "referenceResponse": "three two one", "category": "same"}])
    name = unique("stub-qa")
    request = job_request(name, uri, metrics=("Builtin.Accuracy", "Builtin.Robustness"), clientRequestToken=name,
                          jobTags=[{"key": "team", "value": "eval"}], jobDescription="stub run",
                          params=json.dumps({"inferenceConfig": {"maxTokens": 32, "temperature": 0}}))
    created = bedrock.create_evaluation_job(**request)
    fits("CreateEvaluationJob", created)
    arn = created["jobArn"]
    assert arn.startswith(f"arn:aws:bedrock:us-east-1:{ACCOUNT}:evaluation-job/")
    assert bedrock.create_evaluation_job(**request)["jobArn"] == arn  # a retry with the same token
    with pytest.raises(ClientError) as excinfo:
        bedrock.create_evaluation_job(**{**request, "jobDescription": "changed"})
    assert error_code(excinfo) == "ConflictException"
    with pytest.raises(ClientError) as excinfo:  # the name is taken
        bedrock.create_evaluation_job(**{**request, "clientRequestToken": unique("t")})
    assert error_code(excinfo) == "ConflictException"

    job = wait_job(bedrock, arn)
    assert job["status"] == "Completed", job.get("failureMessages")
    fits("GetEvaluationJob", job)
    assert job["jobType"] == "Automated" and job["applicationType"] == "ModelEvaluation"
    assert job["evaluationConfig"] == request["evaluationConfig"]
    assert job["inferenceConfig"] == request["inferenceConfig"]
    assert job["outputDataConfig"] == request["outputDataConfig"] and job["jobDescription"] == "stub run"
    assert job["lastModifiedTime"] >= job["creationTime"]

    lines, summary = output_lines(server, job)
    assert [line["inputRecord"]["prompt"] for line in lines] == ["Quintar capital Zorblax", "Paris France",
                                                                "one two three"]
    assert lines[0]["modelResponses"] == [{"response": "Zorblax capital Quintar", "modelIdentifier": STUB}]
    assert [score(line, "Accuracy") for line in lines] == [1.0, 0.0, 1.0]
    robustness = [score(line, "Robustness") for line in lines]
    assert all(0.0 <= value <= 1.0 for value in robustness)
    assert robustness[1] == 0.0  # a perturbed prompt never gets "Berlin" right either: no change
    scores = {s["metricName"]: s for s in summary["scores"]}
    assert scores["Accuracy"]["result"] == pytest.approx(2 / 3) and scores["Accuracy"]["recordCount"] == 3
    assert summary["promptCount"] == summary["responseCount"] == 3
    categories = {c["category"]: {s["metricName"]: s["result"] for s in c["scores"]} for c in summary["categories"]}
    assert categories["same"]["Accuracy"] == 1.0 and categories["other"]["Accuracy"] == 0.0

    # tags
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "eval"}]
    bedrock.tag_resource(resourceARN=arn, tags=[{"key": "stage", "value": "done"}])
    assert {t["key"] for t in bedrock.list_tags_for_resource(resourceARN=arn)["tags"]} == {"team", "stage"}

    # list: filters, summary members, pagination
    listed = bedrock.list_evaluation_jobs(nameContains=name)
    fits("ListEvaluationJobs", listed)
    summary_row, = listed["jobSummaries"]
    assert summary_row["jobArn"] == arn and summary_row["status"] == "Completed"
    assert summary_row["evaluationTaskTypes"] == ["QuestionAndAnswer"] and summary_row["modelIdentifiers"] == [STUB]
    assert summary_row["inferenceConfigSummary"]["modelConfigSummary"]["bedrockModelIdentifiers"] == [STUB]
    assert bedrock.list_evaluation_jobs(nameContains=name, statusEquals="Failed")["jobSummaries"] == []
    assert bedrock.list_evaluation_jobs(nameContains=name, applicationTypeEquals="RagEvaluation")["jobSummaries"] == []

    # another account sees nothing of it
    other = server.client(access_key=OTHER_KEY, secret_key=OTHER_SECRET)
    with pytest.raises(ClientError) as excinfo:
        other.get_evaluation_job(jobIdentifier=arn)
    assert error_code(excinfo) == "ResourceNotFoundException"
    assert other.list_evaluation_jobs()["jobSummaries"] == []
    with pytest.raises(ClientError) as excinfo:
        other.list_tags_for_resource(resourceARN=arn)
    assert error_code(excinfo) == "ResourceNotFoundException"
    deleted = other.batch_delete_evaluation_job(jobIdentifiers=[arn])
    assert deleted["evaluationJobs"] == [] and deleted["errors"][0]["code"] == "ResourceNotFoundException"
    assert bedrock.get_evaluation_job(jobIdentifier=arn)["status"] == "Completed"


def test_precomputed_responses_judged_by_an_evaluator_model(server, bedrock):
    """No model answers: the dataset holds the responses. The evaluator (the stub: it answers the judging
    prompt reversed, so its first rating is the last number of the response, else 5) rates each."""
    uri = dataset(server, [
        {"prompt": "Capital of France?", "referenceResponse": "Paris",
         "modelResponses": [{"response": "Paris", "modelIdentifier": "my-rag"}]},
        {"prompt": "Rate this", "referenceResponse": "positive",
         "modelResponses": [{"response": "it deserves 2 stars", "modelIdentifier": "my-rag"}]}])
    name = unique("judged")
    request = job_request(name, uri, task="Classification", metrics=("Builtin.Accuracy", "Builtin.Correctness"))
    request["inferenceConfig"] = {"models": [{"precomputedInferenceSource": {"inferenceSourceIdentifier": "my-rag"}}]}
    request["evaluationConfig"]["automated"]["evaluatorModelConfig"] = {
        "bedrockEvaluatorModels": [{"modelIdentifier": STUB}]}
    arn = bedrock.create_evaluation_job(**request)["jobArn"]
    job = wait_job(bedrock, arn)
    assert job["status"] == "Completed", job.get("failureMessages")
    lines, summary = output_lines(server, job)
    assert [score(line, "Accuracy") for line in lines] == [1.0, 0.0]
    assert [score(line, "Builtin.Correctness") for line in lines] == [1.0, 0.25]
    details = [s for s in lines[1]["automatedEvaluationResult"]["scores"] if s["metricName"] == "Builtin.Correctness"]
    assert details[0]["evaluatorDetails"][0]["modelIdentifier"] == STUB
    assert details[0]["evaluatorDetails"][0]["explanation"].startswith("Rating: stars 2 deserves it")
    assert lines[1]["modelResponses"] == [{"response": "it deserves 2 stars", "modelIdentifier": "my-rag"}]
    summary_row, = bedrock.list_evaluation_jobs(nameContains=name)["jobSummaries"]
    assert summary_row["evaluatorModelIdentifiers"] == [STUB]
    assert summary_row["inferenceConfigSummary"]["modelConfigSummary"]["precomputedInferenceSourceIdentifiers"] == [
        "my-rag"]

    # a dataset line without the source's response fails the job, naming the line
    bad = dataset(server, [{"prompt": "x", "referenceResponse": "y", "modelResponses": []}])
    request = {**request, "jobName": unique("no-response")}
    request["evaluationConfig"]["automated"]["datasetMetricConfigs"][0]["dataset"]["datasetLocation"]["s3Uri"] = bad
    failed = wait_job(bedrock, bedrock.create_evaluation_job(**request)["jobArn"])
    assert failed["status"] == "Failed" and "line 1" in failed["failureMessages"][0]
    assert "my-rag" in failed["failureMessages"][0]
    fits("GetEvaluationJob", failed)


def test_stop_pagination_and_batch_delete(server, bedrock):
    uri = dataset(server, [{"prompt": f"word{n} other", "referenceResponse": "other"} for n in range(3)]
                  + [{"prompt": "[[fault:job-stop]] please", "referenceResponse": "x"}])
    stopped_arn = bedrock.create_evaluation_job(**job_request(unique("stopped"), uri))["jobArn"]
    stopped = wait_job(bedrock, stopped_arn)
    assert stopped["status"] == "Stopped"  # the stub model asked for the stop: the worker ends the job as a Stop does
    with pytest.raises(ClientError) as excinfo:
        bedrock.stop_evaluation_job(jobIdentifier=stopped_arn)
    assert error_code(excinfo) == "ConflictException"

    prefix = unique("page")
    good = dataset(server, [{"prompt": "a b", "referenceResponse": "b a"}])
    arns = [bedrock.create_evaluation_job(**job_request(f"{prefix}-{n}", good))["jobArn"] for n in range(7)]
    for arn in arns:
        wait_job(bedrock, arn)
    seen, token, pages = [], None, 0
    while True:
        page = bedrock.list_evaluation_jobs(nameContains=prefix, sortOrder="Ascending", maxResults=3,
                                            **({"nextToken": token} if token else {}))
        fits("ListEvaluationJobs", page)
        seen += [s["jobArn"] for s in page["jobSummaries"]]
        pages += 1
        token = page.get("nextToken")
        if not token:
            break
    assert seen == arns and pages == 3
    assert len(bedrock.list_evaluation_jobs(nameContains=prefix, maxResults=100)["jobSummaries"]) == 5  # model's max

    missing = arns[0][:-12] + "zzzzzzzzzzzz"
    answer = bedrock.batch_delete_evaluation_job(jobIdentifiers=[arns[0], arns[1], missing])
    fits("BatchDeleteEvaluationJob", answer)
    assert answer["evaluationJobs"] == [{"jobIdentifier": arns[0], "jobStatus": "Deleting"},
                                        {"jobIdentifier": arns[1], "jobStatus": "Deleting"}]
    assert answer["errors"] == [{"jobIdentifier": missing, "code": "ResourceNotFoundException",
                                 "message": f"The evaluation job '{missing}' does not exist."}]
    with pytest.raises(ClientError) as excinfo:
        bedrock.get_evaluation_job(jobIdentifier=arns[0])
    assert error_code(excinfo) == "ResourceNotFoundException"


def test_imported_model_is_evaluated_by_its_arn(server, bedrock, tiny_model_dir, tmp_path):
    """An imported model (CreateModelImportJob) is a model an evaluation may name by its ARN: its answers
    (a tiny random model's: words of no meaning) are generated and scored. Prompts reach the model as a
    chat turn, so a model without a chat template answers none of them: that job fails and says why."""
    chat = tmp_path / "tiny-chat"
    shutil.copytree(tiny_model_dir, chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    (chat / "tokenizer_config.json").write_text(json.dumps(config))

    def imported(folder) -> str:
        source = upload_folder(server, BUCKET, unique("tiny"), folder)
        job = bedrock.create_model_import_job(
            jobName=unique("tiny-import"), importedModelName=unique("tiny"), roleArn=ROLE,
            modelDataSource={"s3DataSource": {"s3Uri": source}})["jobArn"]
        ended = wait_until(lambda: (j := bedrock.get_model_import_job(jobIdentifier=job))["status"]
                           in ("Completed", "Failed") and j, timeout=240, what="the tiny model's import")
        assert ended["status"] == "Completed", ended.get("failureMessage")
        return ended["importedModelArn"]

    uri = dataset(server, [{"prompt": "What is two plus two?", "referenceResponse": "four"},
                           {"prompt": "Name a colour.", "referenceResponse": "blue"}])
    params = json.dumps({"inferenceConfig": {"maxTokens": 4}})
    jobs = {which: bedrock.create_evaluation_job(**job_request(unique(which), uri, model=imported(folder),
                                                               params=params))["jobArn"]
            for which, folder in (("chat", chat), ("plain", tiny_model_dir))}
    job = wait_job(bedrock, jobs["chat"], timeout=240)
    assert job["status"] == "Completed", job.get("failureMessages")
    fits("GetEvaluationJob", job)
    lines, summary = output_lines(server, job)
    assert len(lines) == 2 and all(line["modelResponses"][0]["response"] for line in lines)
    assert [s["metricName"] for s in summary["scores"]] == ["Accuracy"]
    failed = wait_job(bedrock, jobs["plain"], timeout=240)
    assert failed["status"] == "Failed"
    assert "answered none of the 2 prompts" in failed["failureMessages"][0]
    assert "chat template" in failed["failureMessages"][0]


def test_fine_tuned_model_scores_higher_than_its_base(server, bedrock, fact_model_dir):
    """The model fine-tuned to know that the capital of Zorblax is Quintar answers the Zorblax questions
    with the reference; the base SmolLM2 does not: NLP-F1 Accuracy tells them apart. The fine-tuned one is
    imported as a custom model and evaluated through its Provisioned Throughput (the service model takes no
    custom-model ARN there). A job queued behind them is stopped before it starts."""
    source = upload_folder(server, BUCKET, unique("fact"), fact_model_dir)
    custom = bedrock.create_custom_model(modelName=unique("fact"),
                                         modelSourceConfig={"s3DataSource": {"s3Uri": source}})["modelArn"]
    wait_until(lambda: bedrock.get_custom_model(modelIdentifier=custom)["modelStatus"] in ("Active", "Failed"),
               timeout=240, what="the fact model's import")
    assert bedrock.get_custom_model(modelIdentifier=custom)["modelStatus"] == "Active"
    throughput = bedrock.create_provisioned_model_throughput(provisionedModelName=unique("fact-pt"), modelId=custom,
                                                             modelUnits=1)["provisionedModelArn"]
    wait_until(lambda: bedrock.get_provisioned_model_throughput(provisionedModelId=throughput)["status"]
               in ("InService", "Failed"), timeout=300, what="the fact model's throughput")
    provisioned = bedrock.get_provisioned_model_throughput(provisionedModelId=throughput)
    assert provisioned["status"] == "InService", provisioned.get("failureMessage")
    model_arn = throughput
    uri = dataset(server, [{"prompt": q, "referenceResponse": "The capital of Zorblax is Quintar.",
                            "category": "zorblax"} for q in FACT_QUESTIONS[:4]])
    params = json.dumps({"inferenceConfig": {"maxTokens": 16, "temperature": 0}})
    jobs = {which: bedrock.create_evaluation_job(**job_request(unique(which), uri, model=model, params=params))["jobArn"]
            for which, model in (("tuned", model_arn), ("base", BASE))}
    queued = bedrock.create_evaluation_job(**job_request(unique("queued"), uri, model=BASE, params=params))["jobArn"]
    bedrock.stop_evaluation_job(jobIdentifier=queued)
    assert bedrock.get_evaluation_job(jobIdentifier=queued)["status"] in ("Stopping", "Stopped")
    accuracy = {}
    for which, arn in jobs.items():
        job = wait_job(bedrock, arn, timeout=400)
        assert job["status"] == "Completed", job.get("failureMessages")
        lines, summary = output_lines(server, job)
        print(which, [line["modelResponses"][0]["response"] for line in lines])
        accuracy[which] = {s["metricName"]: s["result"] for s in summary["scores"]}["Accuracy"]
    print("accuracy", accuracy)
    assert accuracy["tuned"] > accuracy["base"] + 0.3
    assert accuracy["tuned"] >= 0.7
    assert wait_job(bedrock, queued)["status"] == "Stopped"
