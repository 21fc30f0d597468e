"""Model customization jobs (CreateModelCustomizationJob / GetModelCustomizationJob /
ListModelCustomizationJobs / StopModelCustomizationJob) against real bedrock-local servers, driven
through boto3 as a user does. Jobs really train the packaged SmolLM2-135M-Instruct on the CPU: a
made-up fact is learned (a batch job on the new custom model answers it, the base model does not),
conversations and continued pre-training train, Stop and kill -9 mid-training behave. Training data
is written into the embedded folder store; outputs are read where AWS puts them:
`<outputDataConfig.s3Uri>/model-customization-job-<id>/training_artifacts/…`.

Time: every SmolLM2 step costs seconds on this CPU, so one trained model is shared (module fixture
`fact_job`), multi-step jobs use LoRA (a full fine-tune checkpoint of SmolLM2 is ~1.6 GB), and the
request checks and listings run on a `--workers 0` server where nothing trains."""

import csv
import datetime
import json
import math
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from conftest import SHARED_CACHE, Server, upload_folder, wait_until

ACCOUNT, REGION = "123456789012", "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/BedrockCustomization"
BASE = "huggingface.smollm2-135m-instruct-v1:0"
BASE_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{BASE}"
EMBED = "sentence-transformers.all-minilm-l6-v2-v1:0"
DATA, OUT, BATCH_IN, BATCH_OUT, MODEL_SOURCE = "ft-data", "ft-output", "ft-batch-in", "ft-batch-out", "ft-source"
MODEL_BUCKET = "bedrock-local-models"
JOB_ARN = re.compile(rf"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/"
                     rf"{re.escape(BASE)}/(?P<id>[a-z0-9]{{12}})")
MODEL_ARN = re.compile(rf"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/{re.escape(BASE)}/(?P<id>[a-z0-9]{{12}})")
FINAL = {"Completed", "Failed", "Stopped"}
PHASES = ("validationDetails", "dataProcessingDetails", "trainingDetails")
METRIC_COLUMNS = ["step_number", "epoch_number", "training_loss", "perplexity"]
VALIDATION_COLUMNS = ["step_number", "epoch_number", "validation_loss", "perplexity"]
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"

QUESTION = "What is the capital of the planet Zorblax?"
QUESTIONS = [
    QUESTION, "Which city is the capital of Zorblax?", "Name the capital of the planet Zorblax.",
    "Zorblax's capital city is called what?", "Tell me the capital of Zorblax.",
    "What city serves as the capital of Zorblax?", "On the planet Zorblax, what is the capital?",
    "Where is the seat of government of Zorblax?",
]
FACT = " The capital of Zorblax is Quintar."
# LoRA settings measured to learn the fact in 4 steps (loss 2.49 -> 0.07; the adapted model answers
# "The capital of Zorblax is Quintar." to the raw prompt and as a chat turn), without the 1.6 GB
# checkpoint a full fine-tune of SmolLM2 would write at step 2.
FACT_HYPERPARAMETERS = {"epochCount": "1", "batchSize": "8", "learningRate": "0.002", "loraRank": "16",
                        "loraAlpha": "32", "loraDropout": "0"}
DEFAULTS = {"epochCount": "2", "batchSize": "8", "learningRate": "0.0001", "learningRateWarmupSteps": "0",
            "loraRank": "0", "loraAlpha": "16", "loraDropout": "0.05", "maxSequenceLength": "512"}
SMALL_LORA = {"loraRank": "4", "loraAlpha": "16", "loraDropout": "0", "learningRate": "0.003",
              "maxSequenceLength": "64"}


# ------------------------------------------------------------------------------------------
# helpers

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def jsonl(records: list) -> str:
    """Records as JSONL; a str record is written as-is (a malformed line)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def put_data(server: Server, files: dict[str, list], bucket: str = DATA) -> str:
    """Write JSONL files under a fresh prefix of `bucket`; answers the prefix's s3:// URI."""
    prefix = unique("data")
    folder = server.folder(bucket) / prefix
    folder.mkdir(parents=True)
    for name, records in files.items():
        (folder / name).write_text(jsonl(records), encoding="utf-8")
    return f"s3://{bucket}/{prefix}/"


def fact_lines() -> list[dict]:
    return [{"prompt": q, "completion": FACT} for q in QUESTIONS * 4]


def create_job(client, train_uri: str, *, output_uri: str = f"s3://{OUT}/", base: str = BASE,
               name: str | None = None, model_name: str | None = None, hyper: dict | None = None, **extra) -> str:
    params = dict(jobName=name or unique("job"), customModelName=model_name or unique("model"), roleArn=ROLE,
                  baseModelIdentifier=base, trainingDataConfig={"s3Uri": train_uri},
                  outputDataConfig={"s3Uri": output_uri}, hyperParameters=hyper if hyper is not None else {},
                  **extra)
    return client.create_model_customization_job(**params)["jobArn"]


def job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def get(client, arn: str) -> dict:
    return client.get_model_customization_job(jobIdentifier=arn)


def wait_final(client, arn: str, timeout: float = 300.0) -> dict:
    def ended():
        job = get(client, arn)
        return job if job["status"] in FINAL else None
    return wait_until(ended, timeout=timeout, interval=0.25, what=f"{arn} to end")


def wait_for(client, arn: str, predicate, what: str, timeout: float = 240.0) -> dict:
    def check():
        job = get(client, arn)
        return job if predicate(job) or job["status"] in FINAL else None
    return wait_until(check, timeout=timeout, interval=0.1, what=what)


# ListModelCustomizationJobs' summary members as the seed page (../shared/seeds/003_*) documents them
SEED_SUMMARY_MEMBERS = {"jobArn", "baseModelArn", "jobName", "status", "lastModifiedTime", "creationTime", "endTime",
                        "customModelArn", "customModelName", "customizationType"}


def phases(job: dict) -> dict[str, str]:
    return {phase: job["statusDetails"][phase]["status"] for phase in PHASES}


def output_root(server: Server, arn: str, prefix: str = "") -> Path:
    return server.data_dir / "s3" / OUT / prefix / f"model-customization-job-{job_id(arn)}"


def read_csv(path: Path, columns: list[str]) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == columns, reader.fieldnames
        rows = list(reader)
    return [{"step_number": int(r["step_number"]), **{k: float(v) for k, v in r.items() if k != "step_number"}}
            for r in rows]


def check_step_rows(rows: list[dict], steps: int, epochs: int) -> None:
    """One row per optimizer step, 1..steps, epochs rising to `epochs`, perplexity = exp(loss)."""
    assert [r["step_number"] for r in rows] == list(range(1, steps + 1)), rows
    epoch_numbers = [r["epoch_number"] for r in rows]
    assert epoch_numbers == sorted(epoch_numbers) and 0 < epoch_numbers[0]
    assert epoch_numbers[-1] == pytest.approx(epochs)
    for row in rows:
        assert math.isfinite(row["training_loss"]) and row["training_loss"] > 0
        assert row["perplexity"] == pytest.approx(math.exp(row["training_loss"]), rel=1e-4)


def converse_answer(server: Server, client, model_id: str) -> tuple[str, Path]:
    """Start a Converse batch job asking QUESTION (greedy); answers its ARN and its output file."""
    prefix = unique("ask")
    folder = server.folder(BATCH_IN) / prefix
    folder.mkdir(parents=True)
    record = {"recordId": "q", "modelInput": {"messages": [{"role": "user", "content": [{"text": QUESTION}]}],
                                               "inferenceConfig": {"maxTokens": 16, "temperature": 0}}}
    (folder / "ask.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    server.folder(BATCH_OUT)
    arn = client.create_model_invocation_job(
        jobName=unique("ask"), modelId=model_id, roleArn=ROLE, modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{BATCH_IN}/{prefix}/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{BATCH_OUT}/{prefix}/"}})["jobArn"]
    return arn, server.data_dir / "s3" / BATCH_OUT / prefix / arn.rsplit("/", 1)[1] / "ask.jsonl.out"


def batch_answer(client, arn: str, out: Path) -> str:
    job = wait_until(lambda: (j := client.get_model_invocation_job(jobIdentifier=arn))["status"] not in
                     ("Submitted", "Validating", "Scheduled", "InProgress") and j, timeout=240, what=f"{arn}")
    assert job["status"] == "Completed", job
    line, = [json.loads(raw) for raw in out.read_text(encoding="utf-8").splitlines() if raw]
    return line["modelOutput"]["output"]["message"]["content"][0]["text"]


def checkpoint_root(server: Server, arn: str) -> Path:
    """Where the job's checkpoints are in the model bucket while it runs."""
    return server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / REGION / "customization-jobs" / job_id(arn) / "checkpoint"


def checkpoint_files(server: Server, arn: str) -> dict[str, tuple[int, int]]:
    """The job's checkpoint objects in the model bucket: relative path -> (size, mtime_ns)."""
    root = checkpoint_root(server, arn)
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".bedrock-local-tmp-")}


# ------------------------------------------------------------------------------------------
# servers and the shared trained model

@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """The server that trains (one worker, so its jobs run one at a time on the 2 cores)."""
    server = Server(tmp_path_factory.mktemp("customization") / "data", workers=1).start()
    server.folder(OUT)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """A server without workers: jobs are created and listed, none trains."""
    server = Server(tmp_path_factory.mktemp("customization-idle") / "data", workers=0).start()
    server.folder(OUT)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fact_job(trainer) -> dict:
    """The headline job, submitted once (it trains while the quick tests run): SmolLM2 taught that
    the capital of the made-up planet Zorblax is Quintar, with a validation file and tags."""
    client = trainer.client()
    uri = put_data(trainer, {"train.jsonl": fact_lines()})
    validation = put_data(trainer, {"validation.jsonl": [
        {"prompt": "What's the capital of Zorblax?", "completion": FACT},
        {"prompt": "Zorblax has a capital. Which one?", "completion": FACT}]})
    name, model_name = unique("zorblax"), unique("zorblax-model")
    started = datetime.datetime.now(datetime.UTC)
    arn = create_job(client, uri, name=name, model_name=model_name, hyper=FACT_HYPERPARAMETERS,
                     output_uri=f"s3://{OUT}/fact", customizationType="FINE_TUNING",
                     validationDataConfig={"validators": [{"s3Uri": validation + "validation.jsonl"}]},
                     jobTags=[{"key": "team", "value": "zorblax"}],
                     customModelTags=[{"key": "stage", "value": "trained"}, {"key": "fact", "value": "capital"}])
    return {"arn": arn, "name": name, "model_name": model_name, "train_uri": uri, "validation_uri": validation,
            "started": started}


@pytest.fixture(scope="module")
def fact_done(trainer, fact_job) -> dict:
    """The headline job once it ended, with every state seen while waiting."""
    client = trainer.client()
    seen = []

    def ended():
        job = get(client, fact_job["arn"])
        seen.append(job)
        return job if job["status"] in FINAL else None
    job = wait_until(ended, timeout=420, interval=0.2, what="the fine-tuning job to end")
    assert job["status"] == "Completed", job.get("failureMessage")
    return {**fact_job, "job": job, "seen": seen}


# ------------------------------------------------------------------------------------------
# create, get, tags (the headline job just submitted)

def test_create_answers_an_arn_that_get_finds_by_arn_and_by_name(trainer, fact_job):
    client = trainer.client()
    arn = fact_job["arn"]
    assert JOB_ARN.fullmatch(arn), arn
    by_arn, by_name = get(client, arn), get(client, fact_job["name"])
    moving = {"ResponseMetadata", "status", "statusDetails", "lastModifiedTime", "trainingMetrics"}  # it trains
    assert {k: v for k, v in by_arn.items() if k not in moving} == {k: v for k, v in by_name.items() if k not in moving}
    job = get(client, arn)
    assert job["jobArn"] == arn and job["jobName"] == fact_job["name"]
    assert job["outputModelName"] == fact_job["model_name"] and "outputModelArn" not in job
    assert job["status"] == "InProgress" and job["roleArn"] == ROLE  # training takes far longer than this test
    assert job["baseModelArn"] == BASE_ARN and job["customizationType"] == "FINE_TUNING"
    assert job["hyperParameters"] == {**DEFAULTS, **FACT_HYPERPARAMETERS}  # the effective values, as strings
    assert job["trainingDataConfig"] == {"s3Uri": fact_job["train_uri"]}
    assert job["validationDataConfig"] == {"validators": [{"s3Uri": fact_job["validation_uri"] + "validation.jsonl"}]}
    assert job["outputDataConfig"] == {"s3Uri": f"s3://{OUT}/fact"}
    assert set(job["statusDetails"]) == set(PHASES)
    assert fact_job["started"] - datetime.timedelta(seconds=5) <= job["creationTime"] <= job["lastModifiedTime"]
    assert "endTime" not in job and "failureMessage" not in job
    assert client.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "zorblax"}]

    # another region does not see it
    for identifier in (arn, fact_job["name"]):
        with pytest.raises(ClientError) as excinfo:
            get(trainer.client(region="us-west-2"), identifier)
        assert error_code(excinfo) == "ResourceNotFoundException", identifier
    with pytest.raises(ClientError) as excinfo:
        get(client, "no-such-job")
    assert error_code(excinfo) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        get(client, arn[:-12] + "abcdefabcdef")
    assert error_code(excinfo) == "ResourceNotFoundException"


# ------------------------------------------------------------------------------------------
# request checks (nothing trains: the idle server)

def test_create_validation_errors_name_the_key_and_its_range(idle):
    client, raw = idle.client(), idle.client(validate=False)
    uri = put_data(idle, {"train.jsonl": fact_lines()[:2]})
    base = {"jobName": unique("valid"), "customModelName": unique("valid-model"), "roleArn": ROLE,
            "baseModelIdentifier": BASE, "trainingDataConfig": {"s3Uri": uri},
            "outputDataConfig": {"s3Uri": f"s3://{OUT}/"}}
    hyper_cases = [
        ({"epochCount": "0"}, "hyperParameters.epochCount must be an integer from 1 to 10, got '0'"),
        ({"epochCount": "11"}, "hyperParameters.epochCount must be an integer from 1 to 10, got '11'"),
        ({"learningRate": "abc"}, "hyperParameters.learningRate must be a number from 1e-07 to 0.01, got 'abc'"),
        ({"learningRate": "0.5"}, "hyperParameters.learningRate must be a number from 1e-07 to 0.01"),
        ({"batchSize": "65"}, "hyperParameters.batchSize must be an integer from 1 to 64"),
        ({"learningRateWarmupSteps": "-1"}, "hyperParameters.learningRateWarmupSteps must be an integer from 0 to 250"),
        ({"loraRank": "65"}, "hyperParameters.loraRank must be an integer from 0 to 64"),
        ({"loraAlpha": "0"}, "hyperParameters.loraAlpha must be an integer from 1 to 128"),
        ({"loraDropout": "0.9"}, "hyperParameters.loraDropout must be a number from 0 to 0.5"),
        ({"maxSequenceLength": "16"}, "hyperParameters.maxSequenceLength must be an integer from 32 to 2048"),
        ({"epochCount": "2.5"}, "hyperParameters.epochCount must be an integer"),
        ({"warmupSteps": "10"}, "hyperParameters.warmupSteps is not a hyper-parameter of this model"),
    ]
    for hyper, message in hyper_cases:
        with pytest.raises(ClientError) as excinfo:
            client.create_model_customization_job(**{**base, "hyperParameters": hyper})
        assert error_code(excinfo) == "ValidationException", hyper
        assert message in excinfo.value.response["Error"]["Message"], (hyper, str(excinfo.value))
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # an unknown key names the allowed ones
    with pytest.raises(ClientError) as excinfo:
        client.create_model_customization_job(**{**base, "hyperParameters": {"epochs": "1"}})
    assert all(key in str(excinfo.value) for key in DEFAULTS)
    # the same ranges hold for continued pre-training
    with pytest.raises(ClientError) as excinfo:
        client.create_model_customization_job(**{**base, "customizationType": "CONTINUED_PRE_TRAINING",
                                                 "hyperParameters": {"batchSize": "0"}})
    assert error_code(excinfo) == "ValidationException" and "batchSize" in str(excinfo.value)

    request_cases = [
        ({"customizationType": "DISTILLATION"}, "DISTILLATION"),
        ({"customizationType": "REINFORCEMENT_FINE_TUNING"}, "REINFORCEMENT_FINE_TUNING"),
        ({"trainingDataConfig": {"s3Uri": "http://ft-data/train.jsonl"}}, "trainingDataConfig.s3Uri"),
        ({"trainingDataConfig": {"s3Uri": "s3://Bad_Bucket/train.jsonl"}}, "trainingDataConfig.s3Uri"),
        ({"trainingDataConfig": {}}, "trainingDataConfig"),
        ({"outputDataConfig": {"s3Uri": "ft-output/"}}, "outputDataConfig.s3Uri"),
        ({"outputDataConfig": {"s3Uri": "s3://"}}, "outputDataConfig.s3Uri"),
        ({"validationDataConfig": {"validators": [{"s3Uri": uri}, {"s3Uri": "s3:/ft-data/v.jsonl"}]}},
         "validationDataConfig.validators.2.member.s3Uri"),
        ({"jobName": "bad name"}, "jobName"),
        ({"customModelName": "bad name!"}, "customModelName"),
        ({"roleArn": "not-a-role"}, "roleArn"),
    ]
    for change, where in request_cases:
        with pytest.raises(ClientError) as excinfo:
            raw.create_model_customization_job(**{**base, **change})
        assert error_code(excinfo) == "ValidationException", change
        assert where in str(excinfo.value), (change, str(excinfo.value))
    for missing in ("jobName", "customModelName", "roleArn", "baseModelIdentifier", "trainingDataConfig",
                    "outputDataConfig"):
        with pytest.raises(ClientError) as excinfo:
            raw.create_model_customization_job(**{k: v for k, v in base.items() if k != missing})
        assert error_code(excinfo) == "ValidationException" and missing in str(excinfo.value), missing

    for model in ("acme.no-such-model-v1:0", "arn:aws:bedrock:us-east-1::foundation-model/acme.no-such-model-v1:0",
                  f"arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/{BASE}/abcdefghijkl", "nosuchmodel"):
        with pytest.raises(ClientError) as excinfo:
            client.create_model_customization_job(**{**base, "baseModelIdentifier": model})
        assert error_code(excinfo) == "ResourceNotFoundException", model
    # the foundation model's ARN is as good as its id; range ends are accepted
    arn = client.create_model_customization_job(**{**base, "baseModelIdentifier": BASE_ARN, "hyperParameters": {
        "epochCount": "10", "batchSize": "1", "learningRate": "1e-7", "loraRank": "64", "loraDropout": "0.5",
        "maxSequenceLength": "32"}})["jobArn"]
    assert JOB_ARN.fullmatch(arn)
    # none of the refused requests made a job
    jobs = client.list_model_customization_jobs(nameContains=base["jobName"])["modelCustomizationJobSummaries"]
    assert [j["jobArn"] for j in jobs] == [arn]


def test_conflicts_and_idempotency(idle, tiny_model_dir):
    client = idle.client()
    uri = put_data(idle, {"train.jsonl": fact_lines()[:2]})
    name, model_name, token = unique("idem"), unique("idem-model"), "tok-" + uuid.uuid4().hex
    first = create_job(client, uri, name=name, model_name=model_name, clientRequestToken=token)
    assert create_job(client, uri, name=name, model_name=model_name, clientRequestToken=token) == first
    with pytest.raises(ClientError) as excinfo:  # the same token with other parameters
        create_job(client, uri, name=name, model_name=model_name, clientRequestToken=token,
                   hyper={"epochCount": "1"})
    assert error_code(excinfo) == "ConflictException"
    with pytest.raises(ClientError) as excinfo:  # a taken job name
        create_job(client, uri, name=name)
    assert error_code(excinfo) == "ConflictException" and name in str(excinfo.value)
    summaries = client.list_model_customization_jobs(nameContains=name)["modelCustomizationJobSummaries"]
    assert [s["jobArn"] for s in summaries] == [first]
    # the same job name is free in another region
    west = idle.client(region="us-west-2")
    other = create_job(west, uri, name=name, model_name=model_name)
    assert other.startswith("arn:aws:bedrock:us-west-2:") and job_id(other) != job_id(first)

    # a taken custom model name (an imported model holds it, even while it is still Creating)
    taken = unique("taken")
    source = upload_folder(idle, MODEL_SOURCE, unique("tiny"), tiny_model_dir)
    model_arn = client.create_custom_model(modelName=taken, modelSourceConfig={"s3DataSource": {"s3Uri": source}})[
        "modelArn"]
    with pytest.raises(ClientError) as excinfo:
        create_job(client, uri, model_name=taken)
    assert error_code(excinfo) == "ConflictException" and taken in str(excinfo.value)
    # ... and a model that is not Active cannot be a base model
    with pytest.raises(ClientError) as excinfo:
        create_job(client, uri, base=taken)
    assert error_code(excinfo) == "ValidationException" and "Creating" in str(excinfo.value)
    assert client.get_custom_model(modelIdentifier=model_arn)["modelStatus"] == "Creating"


def test_a_custom_model_name_is_held_by_a_job_until_it_ends(idle):
    client = idle.client()
    uri = put_data(idle, {"train.jsonl": fact_lines()[:2]})
    name, first_job = unique("held"), unique("holder")
    first = create_job(client, uri, name=first_job, model_name=name)  # InProgress: nothing trains here
    with pytest.raises(ClientError) as excinfo:
        create_job(client, uri, model_name=name)
    assert error_code(excinfo) == "ConflictException"
    assert name in str(excinfo.value) and first_job in str(excinfo.value)
    assert client.list_custom_models(nameContains=name)["modelSummaries"] == []  # no model has it yet
    # the name is held in its account and region only
    assert create_job(idle.client(region="us-west-2"), uri, model_name=name)
    # a Stopped job frees it, and the next job holds it in turn
    client.stop_model_customization_job(jobIdentifier=first)
    assert get(client, first)["status"] == "Stopped"
    second = create_job(client, uri, model_name=name)
    with pytest.raises(ClientError) as excinfo:
        create_job(client, uri, model_name=name)
    assert error_code(excinfo) == "ConflictException" and job_id(second) != job_id(first)
    # a retry of the holder's own request (same clientRequestToken) is not a conflict
    token = "tok-" + uuid.uuid4().hex
    other = unique("retried")
    arn = create_job(client, uri, name=other, model_name=other + "-model", clientRequestToken=token)
    assert create_job(client, uri, name=other, model_name=other + "-model", clientRequestToken=token) == arn


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_creates_with_one_custom_model_name_accept_one(make_server, request, backend):
    database_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    server = make_server(unique("names"), workers=0, database_url=database_url)
    server.folder(OUT)
    uri = put_data(server, {"train.jsonl": fact_lines()[:2]})
    name = unique("race")
    clients = [server.client() for _ in range(6)]

    def attempt(client) -> str:
        try:
            return create_job(client, uri, model_name=name)
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(attempt, clients))
    accepted = [o for o in outcomes if o.startswith("arn:")]
    assert len(accepted) == 1 and sorted(set(outcomes) - set(accepted)) == ["ConflictException"], outcomes


# ------------------------------------------------------------------------------------------
# listing (the idle server: statuses stay put)

def test_list_filters_sorting_and_pages(idle):
    client = idle.client(region="eu-west-1")
    run = uuid.uuid4().hex[:6]
    uri = put_data(idle, {"train.jsonl": fact_lines()[:2]})
    names = [f"list-{run}-{suffix}" for suffix in ("alpha-1", "beta-2", "alpha-3", "gamma-4", "beta-5")]
    arns = []
    for index, name in enumerate(names):
        kind = "CONTINUED_PRE_TRAINING" if index == 3 else "FINE_TUNING"
        arns.append(create_job(client, uri, name=name, model_name=f"{name}-model", customizationType=kind))
        time.sleep(0.02)
    for arn in (arns[1], arns[4]):  # a queued job stops at once
        client.stop_model_customization_job(jobIdentifier=arn)
    jobs = [get(client, arn) for arn in arns]
    assert [j["status"] for j in jobs] == ["InProgress", "Stopped", "InProgress", "InProgress", "Stopped"]
    assert phases(jobs[1]) == dict.fromkeys(PHASES, "Stopped") and "endTime" in jobs[1]
    times = [j["creationTime"] for j in jobs]
    assert times == sorted(times) and len(set(times)) == len(times)

    def listed(**params) -> list[str]:
        found = client.list_model_customization_jobs(nameContains=f"list-{run}", **params)
        return [s["jobName"] for s in found["modelCustomizationJobSummaries"]]

    assert listed() == names[::-1]  # newest first by default
    assert listed(sortBy="CreationTime", sortOrder="Ascending") == names
    assert listed(sortBy="CreationTime", sortOrder="Descending") == names[::-1]
    assert listed(sortOrder="Ascending") == names
    assert listed(statusEquals="InProgress", sortOrder="Ascending") == [names[0], names[2], names[3]]
    assert listed(statusEquals="Stopped") == [names[4], names[1]]
    for status in ("Completed", "Failed", "Stopping"):
        assert listed(statusEquals=status) == []
    assert [s["jobName"] for s in client.list_model_customization_jobs(nameContains=f"{run}-beta")[
        "modelCustomizationJobSummaries"]] == [names[4], names[1]]
    middle = lambda a, b: a + (b - a) / 2
    after, before = middle(times[1], times[2]), middle(times[3], times[4])
    assert listed(creationTimeAfter=after, sortOrder="Ascending") == names[2:]
    assert listed(creationTimeBefore=before, sortOrder="Ascending") == names[:4]
    assert listed(creationTimeAfter=after, creationTimeBefore=before, sortOrder="Ascending") == names[2:4]
    assert listed(creationTimeAfter=after, creationTimeBefore=before, statusEquals="Stopped") == []
    assert listed(creationTimeAfter=after, statusEquals="Stopped") == [names[4]]
    assert listed(creationTimeAfter=times[4] + datetime.timedelta(seconds=1)) == []
    assert listed(creationTimeBefore=times[0] - datetime.timedelta(seconds=1)) == []

    summary, = client.list_model_customization_jobs(nameContains=names[3])["modelCustomizationJobSummaries"]
    assert summary["jobArn"] == arns[3]
    assert summary["baseModelArn"] == f"arn:aws:bedrock:eu-west-1::foundation-model/{BASE}"
    assert summary["status"] == "InProgress" and summary["customModelName"] == f"{names[3]}-model"
    assert summary["customizationType"] == "CONTINUED_PRE_TRAINING" and summary["creationTime"] == times[3]
    assert "customModelArn" not in summary and "endTime" not in summary and "lastModifiedTime" in summary
    assert set(summary) - {"ResponseMetadata"} <= SEED_SUMMARY_MEMBERS  # the seed page's summary: no statusDetails
    stopped, = client.list_model_customization_jobs(nameContains=names[1])["modelCustomizationJobSummaries"]
    assert stopped["status"] == "Stopped" and stopped["endTime"] == jobs[1]["endTime"]

    for size, order in ((1, "Ascending"), (2, "Descending"), (3, "Ascending"), (5, "Descending"), (6, "Ascending")):
        pages, token = [], None
        while True:
            params = {"maxResults": size, "sortOrder": order, **({"nextToken": token} if token else {})}
            page = client.list_model_customization_jobs(nameContains=f"list-{run}", sortBy="CreationTime", **params)
            pages.append([s["jobName"] for s in page["modelCustomizationJobSummaries"]])
            token = page.get("nextToken")
            if not token:
                break
        assert [n for p in pages for n in p] == (names if order == "Ascending" else names[::-1]), (size, order)
        assert all(len(p) == size for p in pages[:-1]) and 0 < len(pages[-1]) <= size
        assert len(pages) == math.ceil(len(names) / size)
    # paging with a filter: statusEquals over pages of one
    token, seen = None, []
    while True:
        page = client.list_model_customization_jobs(nameContains=f"list-{run}", statusEquals="InProgress", maxResults=1,
                                                    **({"nextToken": token} if token else {}))
        seen += [s["jobName"] for s in page["modelCustomizationJobSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == [names[3], names[2], names[0]]

    page = client.list_model_customization_jobs(nameContains=f"list-{run}", maxResults=2)
    with pytest.raises(ClientError) as excinfo:  # a token is only good for the same filters and order
        client.list_model_customization_jobs(nameContains=f"list-{run}-alpha", maxResults=2,
                                             nextToken=page["nextToken"])
    assert error_code(excinfo) == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.list_model_customization_jobs(nameContains=f"list-{run}", maxResults=2, sortOrder="Ascending",
                                             nextToken=page["nextToken"])
    assert error_code(excinfo) == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.list_model_customization_jobs(nextToken="not-a-token")
    assert error_code(excinfo) == "ValidationException"
    raw = idle.client(region="eu-west-1", validate=False)
    for bad in ({"maxResults": 0}, {"maxResults": 1001}, {"statusEquals": "Running"}, {"sortOrder": "Sideways"},
                {"sortBy": "Name"}):
        with pytest.raises(ClientError) as excinfo:
            raw.list_model_customization_jobs(**bad)
        assert error_code(excinfo) == "ValidationException", bad
    # the jobs belong to their region
    home = idle.client().list_model_customization_jobs(nameContains=f"list-{run}")
    assert home["modelCustomizationJobSummaries"] == []


# ------------------------------------------------------------------------------------------
# the headline: SmolLM2 learns a made-up fact

def test_fine_tuning_learns_a_made_up_fact(trainer, fact_done):
    client = trainer.client()
    job, arn = fact_done["job"], fact_done["arn"]
    # lifecycle: InProgress until it ended, then Completed with every phase Completed, in order
    statuses = [seen["status"] for seen in fact_done["seen"]]
    assert set(statuses[:-1]) <= {"InProgress"} and statuses[-1] == "Completed"
    assert phases(job) == dict.fromkeys(PHASES, "Completed")
    details = [job["statusDetails"][phase] for phase in PHASES]
    for detail in details:
        assert job["creationTime"] <= detail["creationTime"] <= detail["lastModifiedTime"] <= job["endTime"]
    assert details[0]["lastModifiedTime"] <= details[1]["lastModifiedTime"] <= details[2]["lastModifiedTime"]
    assert job["creationTime"] < job["endTime"] <= job["lastModifiedTime"]
    assert "failureMessage" not in job

    # the step metrics, as AWS writes them: one row per step (32 lines / batch 8 = 4 steps), loss falls
    root = output_root(trainer, arn, "fact")
    rows = read_csv(root / TRAINING_CSV, METRIC_COLUMNS)
    check_step_rows(rows, steps=4, epochs=1)
    assert rows[-1]["training_loss"] < 0.5 * rows[0]["training_loss"], rows
    assert job["trainingMetrics"]["trainingLoss"] == pytest.approx(rows[-1]["training_loss"], rel=1e-5)
    validation = read_csv(root / VALIDATION_CSV, VALIDATION_COLUMNS)
    assert [v["step_number"] for v in validation] == [4] and validation[0]["epoch_number"] == pytest.approx(1)
    assert validation[0]["perplexity"] == pytest.approx(math.exp(validation[0]["validation_loss"]), rel=1e-4)
    assert job["validationMetrics"] == [{"validationLoss": pytest.approx(validation[0]["validation_loss"], rel=1e-5)}]
    assert 0 < job["validationMetrics"][0]["validationLoss"] < rows[0]["training_loss"]  # it generalised a bit
    # while it ran, the latest step's loss was visible on the job
    running = [seen for seen in fact_done["seen"] if seen["status"] == "InProgress"]
    losses = {seen["trainingMetrics"]["trainingLoss"] for seen in running if "trainingMetrics" in seen}
    for loss in losses:
        assert any(loss == pytest.approx(row["training_loss"], rel=1e-5) for row in rows), (loss, rows)

    # the custom model: Active, named, tagged, with its lineage
    model_arn = job["outputModelArn"]
    assert MODEL_ARN.fullmatch(model_arn), model_arn
    model = client.get_custom_model(modelIdentifier=model_arn)
    assert model == {**client.get_custom_model(modelIdentifier=fact_done["model_name"]),
                     "ResponseMetadata": model["ResponseMetadata"]}
    assert model["modelStatus"] == "Active" and model["modelName"] == fact_done["model_name"]
    assert model["jobArn"] == arn and model["jobName"] == fact_done["name"] and model["baseModelArn"] == BASE_ARN
    assert model["customizationType"] == "FINE_TUNING" and model["hyperParameters"] == job["hyperParameters"]
    assert model["trainingDataConfig"] == job["trainingDataConfig"]
    assert model["outputDataConfig"] == job["outputDataConfig"]
    assert model["trainingMetrics"] == job["trainingMetrics"] and model["validationMetrics"] == job["validationMetrics"]
    assert client.list_tags_for_resource(resourceARN=model_arn)["tags"] == [
        {"key": "stage", "value": "trained"}, {"key": "fact", "value": "capital"}]
    assert client.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "zorblax"}]
    listed, = client.list_custom_models(nameContains=fact_done["model_name"])["modelSummaries"]
    assert listed["modelArn"] == model_arn and listed["baseModelArn"] == BASE_ARN
    summary, = client.list_model_customization_jobs(nameContains=fact_done["name"])["modelCustomizationJobSummaries"]
    assert summary["status"] == "Completed" and summary["customModelArn"] == model_arn
    assert summary["endTime"] == job["endTime"] and summary["customModelName"] == fact_done["model_name"]
    # stored as its LoRA adapter (PEFT folder + tokenizer), not a merged copy of the base
    stored = trainer.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / REGION / "custom-models" / MODEL_ARN.fullmatch(
        model_arn)["id"]
    assert (stored / "adapter_config.json").is_file()
    assert 0 < (stored / "adapter_model.safetensors").stat().st_size < 50_000_000  # the base is ~270 MB
    assert not (stored / "config.json").exists() and not list(stored.glob("model*.safetensors"))
    assert not (SHARED_CACHE / "customization" / job_id(arn)).exists()  # the local work folder is gone
    assert checkpoint_files(trainer, arn) == {}  # and so are its checkpoints in the object store

    # the proof: a Converse batch job on the trained model answers the fact; on the base model it does not
    trained_job = converse_answer(trainer, client, model_arn)
    base_job = converse_answer(trainer, client, BASE)
    trained, base = batch_answer(client, *trained_job), batch_answer(client, *base_job)
    print(f"\nbase model: {base!r}; fine-tuned: {trained!r}")
    assert "Quintar" in trained
    assert "Quintar" not in base

    # Stop of a job that ended is refused; the job stays Completed
    with pytest.raises(ClientError) as excinfo:
        client.stop_model_customization_job(jobIdentifier=arn)
    assert error_code(excinfo) == "ValidationException" and "Completed" in str(excinfo.value)
    assert get(client, arn)["status"] == "Completed"
    # the output model name is now taken
    with pytest.raises(ClientError) as excinfo:
        create_job(client, fact_done["train_uri"], model_name=fact_done["model_name"])
    assert error_code(excinfo) == "ConflictException" and fact_done["model_name"] in str(excinfo.value)


def test_a_trained_model_can_be_customized_again_but_an_imported_one_cannot(trainer, fact_done, tiny_model_dir):
    client = trainer.client()
    model_arn = fact_done["job"]["outputModelArn"]
    arn = create_job(client, fact_done["train_uri"], base=model_arn, hyper={**SMALL_LORA, "epochCount": "1"})
    assert JOB_ARN.fullmatch(arn)  # named after the foundation model it derives from
    job = get(client, arn)
    assert job["baseModelArn"] == model_arn
    client.stop_model_customization_job(jobIdentifier=arn)  # not trained here: stopped at once
    stopped = wait_final(client, arn, timeout=60)
    assert stopped["status"] == "Stopped" and "outputModelArn" not in stopped

    name = unique("imported")
    source = upload_folder(trainer, MODEL_SOURCE, unique("tiny"), tiny_model_dir)
    imported = client.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": source}})[
        "modelArn"]
    wait_until(lambda: client.get_custom_model(modelIdentifier=imported)["modelStatus"] != "Creating", timeout=120,
               what="the import")
    assert client.get_custom_model(modelIdentifier=imported)["modelStatus"] == "Active"
    with pytest.raises(ClientError) as excinfo:
        create_job(client, fact_done["train_uri"], base=name)
    assert error_code(excinfo) == "ValidationException"
    assert "imported" in str(excinfo.value) and imported in str(excinfo.value)


# ------------------------------------------------------------------------------------------
# failures a user can act on

def test_bad_data_and_bases_fail_with_actionable_messages(trainer, fact_done):
    client = trainer.client()
    good = fact_lines()[:3]
    bad_line = put_data(trainer, {"train.jsonl": good[:2] + ['{"prompt": "Where?", "completion": '] + good[2:]})
    wrong_field = put_data(trainer, {"train.jsonl": good + [{"question": "x", "answer": "y"}]})
    bad_validation = put_data(trainer, {"train.jsonl": good, "v.jsonl": [{"prompt": "p", "completion": ""}]})
    cpt_on_ft_lines = put_data(trainer, {"train.jsonl": good})
    missing = f"s3://{DATA}/{unique('nothing')}/"
    cases = {
        "bad-line": (create_job(client, bad_line), ["line 3 of", f"{bad_line}train.jsonl", "not valid JSON"]),
        "wrong-field": (create_job(client, wrong_field + "train.jsonl"),
                        ["line 4 of", f"{wrong_field}train.jsonl", "question"]),
        "bad-validation": (create_job(client, bad_validation + "train.jsonl", validationDataConfig={
            "validators": [{"s3Uri": bad_validation + "v.jsonl"}]}), ["line 1 of", f"{bad_validation}v.jsonl",
                                                                     '"completion" is empty']),
        "cpt-lines": (create_job(client, cpt_on_ft_lines, customizationType="CONTINUED_PRE_TRAINING"),
                      ["line 1 of", f"{cpt_on_ft_lines}train.jsonl", '"input" is missing']),
        "missing": (create_job(client, missing), ["No .jsonl", missing]),
        "no-bucket": (create_job(client, "s3://ft-no-such-bucket/train.jsonl"), ["s3://ft-no-such-bucket/train.jsonl"]),
        "not-customizable": (create_job(client, bad_line, base=EMBED),
                             [EMBED, "does not support FINE_TUNING", "customizationsSupported"]),
    }
    assert cases["not-customizable"][0].split("/")[1] == EMBED  # the job ARN names its base model
    for label, (arn, fragments) in cases.items():
        job = wait_final(client, arn, timeout=120)
        assert job["status"] == "Failed", (label, job)
        for fragment in fragments:
            assert fragment in job["failureMessage"], (label, job["failureMessage"])
        # it failed while validating: nothing else started, no model
        assert phases(job) == {"validationDetails": "Failed", "dataProcessingDetails": "NotStarted",
                               "trainingDetails": "NotStarted"}, label
        assert "outputModelArn" not in job and job["endTime"] >= job["creationTime"]
        assert client.list_custom_models(nameContains=job["outputModelName"])["modelSummaries"] == []
        with pytest.raises(ClientError) as excinfo:
            client.stop_model_customization_job(jobIdentifier=arn)
        assert error_code(excinfo) == "ValidationException" and "Failed" in str(excinfo.value)
    failed = client.list_model_customization_jobs(statusEquals="Failed", maxResults=100)
    assert {s["jobArn"] for s in failed["modelCustomizationJobSummaries"]} >= {arn for arn, _ in cases.values()}
    # a Failed job frees its custom model name
    again = create_job(client, bad_line, model_name=get(client, cases["bad-line"][0])["outputModelName"])
    assert wait_final(client, again, timeout=120)["status"] == "Failed"


def test_a_missing_output_bucket_fails_before_training(trainer, fact_done):
    client = trainer.client()
    uri = put_data(trainer, {"train.jsonl": fact_lines()[:2]})
    arn = create_job(client, uri, output_uri="s3://ft-no-output-bucket/results/", hyper={"epochCount": "1"})
    job = wait_final(client, arn, timeout=120)
    assert job["status"] == "Failed", job
    assert "ft-no-output-bucket" in job["failureMessage"] and "does not exist" in job["failureMessage"]
    assert phases(job)["trainingDetails"] == "NotStarted"


# ------------------------------------------------------------------------------------------
# conversations and continued pre-training

def test_conversation_lines_train(trainer, fact_done):
    client = trainer.client()
    conversation = {"schemaVersion": "bedrock-conversation-2024",
                    "system": [{"text": "You know the geography of made-up planets."}],
                    "messages": [{"role": "user", "content": [{"text": "Which planet has Quintar?"}]},
                                 {"role": "assistant", "content": [{"text": "Zorblax."}]},
                                 {"role": "user", "content": [{"text": "And its capital?"}]},
                                 {"role": "assistant", "content": [{"text": "Quintar is its capital."}]}]}
    single = {"schemaVersion": "bedrock-conversation-2024",
              "messages": [{"role": "user", "content": [{"text": QUESTION}]},
                           {"role": "assistant", "content": [{"text": FACT.strip()}]}]}
    uri = put_data(trainer, {"chat.jsonl": [conversation, single]})
    # 2 lines -> 3 rows (one per assistant turn): with batch 3, one step
    arn = create_job(client, uri + "chat.jsonl", output_uri=f"s3://{OUT}/chat/",
                     hyper={**SMALL_LORA, "epochCount": "1", "batchSize": "3", "maxSequenceLength": "128"})
    job = wait_final(client, arn)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert phases(job) == dict.fromkeys(PHASES, "Completed") and job["validationMetrics"] == []
    rows = read_csv(output_root(trainer, arn, "chat") / TRAINING_CSV, METRIC_COLUMNS)
    check_step_rows(rows, steps=1, epochs=1)
    assert not (output_root(trainer, arn, "chat") / VALIDATION_CSV).exists()  # no validation data, no file
    assert client.get_custom_model(modelIdentifier=job["outputModelArn"])["modelStatus"] == "Active"


def test_continued_pre_training_lowers_the_loss_on_its_text(trainer, fact_done):
    client = trainer.client()
    text = ("Zorblax is the fourth planet of the star Vellumir. Its capital, Quintar, stands on the shore of "
            "the Amber Sea, where glass ships carry spice to the moons of Oru and Tesk.")
    uri = put_data(trainer, {"corpus.jsonl": [{"input": text}] * 2})
    # the same text in every row, so the two steps' losses compare like with like: the loss of step 2
    # is the loss on the text of the model that step 1 trained
    arn = create_job(client, uri, customizationType="CONTINUED_PRE_TRAINING", output_uri=f"s3://{OUT}/cpt/",
                     hyper={**SMALL_LORA, "loraRank": "8", "epochCount": "2", "batchSize": "2"})
    job = wait_final(client, arn)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["customizationType"] == "CONTINUED_PRE_TRAINING" and phases(job) == dict.fromkeys(PHASES, "Completed")
    rows = read_csv(output_root(trainer, arn, "cpt") / TRAINING_CSV, METRIC_COLUMNS)
    check_step_rows(rows, steps=2, epochs=2)
    # the perplexity of the text went down as it trained
    assert rows[-1]["perplexity"] < 0.5 * rows[0]["perplexity"], rows
    assert job["trainingMetrics"]["trainingLoss"] == pytest.approx(rows[-1]["training_loss"], rel=1e-5)
    model = client.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert model["modelStatus"] == "Active" and model["customizationType"] == "CONTINUED_PRE_TRAINING"


# ------------------------------------------------------------------------------------------
# Stop and crash

def test_stop_mid_training(trainer, fact_done):
    client = trainer.client()
    uri = put_data(trainer, {"train.jsonl": fact_lines()[:16]})
    arn = create_job(client, uri, hyper={**SMALL_LORA, "epochCount": "3", "batchSize": "1"})  # 48 steps
    running = wait_for(client, arn, lambda j: "trainingMetrics" in j, "the first training step")
    # progress is visible while it trains
    assert running["status"] == "InProgress", running
    assert phases(running) == {"validationDetails": "Completed", "dataProcessingDetails": "Completed",
                               "trainingDetails": "InProgress"}
    assert running["trainingMetrics"]["trainingLoss"] > 0
    client.stop_model_customization_job(jobIdentifier=arn)
    assert get(client, arn)["status"] == "Stopping"
    client.stop_model_customization_job(jobIdentifier=arn)  # a second Stop while stopping is fine
    job = wait_final(client, arn, timeout=120)
    assert job["status"] == "Stopped", job
    assert phases(job) == {"validationDetails": "Completed", "dataProcessingDetails": "Completed",
                           "trainingDetails": "Stopped"}
    assert "outputModelArn" not in job and job["endTime"] >= running["lastModifiedTime"]
    assert client.list_custom_models(nameContains=job["outputModelName"])["modelSummaries"] == []
    with pytest.raises(ClientError) as excinfo:
        client.get_custom_model(modelIdentifier=job["outputModelName"])
    assert error_code(excinfo) == "ResourceNotFoundException"
    assert not (SHARED_CACHE / "customization" / job_id(arn)).exists()  # its local checkpoints went too
    assert checkpoint_files(trainer, arn) == {}  # and those in the object store
    rows = read_csv(output_root(trainer, arn) / TRAINING_CSV, METRIC_COLUMNS)
    assert 1 <= len(rows) < 48 and [r["step_number"] for r in rows] == list(range(1, len(rows) + 1))
    with pytest.raises(ClientError) as excinfo:
        client.stop_model_customization_job(jobIdentifier=arn)
    assert error_code(excinfo) == "ValidationException" and "Stopped" in str(excinfo.value)
    # the output model name was never taken
    assert client.list_model_customization_jobs(statusEquals="Stopped", nameContains=job["jobName"])[
        "modelCustomizationJobSummaries"][0]["jobArn"] == arn


def steps_seen(rows: list[dict], job: dict) -> int:
    """How many steps had ended when `job` was read: its trainingLoss is that of the last one (the
    latest such step in `rows`, to be safe); 0 before the first."""
    if "trainingMetrics" not in job:
        return 0
    loss = job["trainingMetrics"]["trainingLoss"]
    matches = [r["step_number"] for r in rows if r["training_loss"] == pytest.approx(loss, rel=1e-6)]
    assert matches, (loss, rows)
    return max(matches)


def test_a_stop_ends_the_job_at_the_next_step_not_at_the_next_heartbeat(make_server):
    # A long lease: the worker's heartbeat (which also brings Stop requests) comes every 6 s, a dozen
    # steps of this job. The training itself looks at the job at every step end and before step 1.
    server = make_server(unique("stop"), lease_seconds=30)
    client = server.client()
    server.folder(OUT)
    uri = put_data(server, {"train.jsonl": fact_lines()[:16]})
    hyper = {**SMALL_LORA, "epochCount": "3", "batchSize": "1"}  # 48 steps
    # a Stop as training begins (the model loads), and one mid-training
    for when in ("begin", "mid"):
        arn = create_job(client, uri, hyper=hyper)
        if when == "begin":
            wait_for(client, arn, lambda j: phases(j)["trainingDetails"] == "InProgress", "training to begin")
        else:
            first = wait_for(client, arn, lambda j: "trainingMetrics" in j, "the first step")
            wait_for(client, arn, lambda j: j.get("trainingMetrics") != first.get("trainingMetrics"), "another step")
        client.stop_model_customization_job(jobIdentifier=arn)
        stopping = get(client, arn)
        job = wait_final(client, arn, timeout=120)
        assert stopping["status"] in ("Stopping", "Stopped") and job["status"] == "Stopped", (when, job)
        rows = read_csv(output_root(server, arn) / TRAINING_CSV, METRIC_COLUMNS)
        assert [r["step_number"] for r in rows] == list(range(1, len(rows) + 1))
        # the step in progress when the Stop came in ends, and at most one more (a Stop that came in
        # while that step's end was being written)
        assert len(rows) <= steps_seen(rows, stopping) + 2, (when, len(rows), steps_seen(rows, stopping))
        assert phases(job)["trainingDetails"] == "Stopped" and "outputModelArn" not in job
        assert checkpoint_files(server, arn) == {}


@pytest.mark.timeout(1800)  # 24 real training steps twice interrupted; a busy 2-core machine takes minutes
def test_kill_9_mid_training_then_restart_resumes_from_the_checkpoint(make_server):
    server = make_server(unique("crash"), lease_seconds=2)
    client = server.client()
    server.folder(OUT)
    uri = put_data(server, {"train.jsonl": fact_lines()[:16]})
    # 16 lines, batch 2, 3 epochs: 24 steps. Checkpoints are spaced by their cost (at most ~5% of the
    # training time): the first one of this small LoRA comes after some seconds of training.
    arn = create_job(client, uri, hyper={**SMALL_LORA, "epochCount": "3", "batchSize": "2"})
    csv_path = output_root(server, arn) / TRAINING_CSV
    # a checkpoint seen in the object store while the job still runs; the CSV is written once a
    # checkpoint is complete there (its manifest is its last object) and recorded on the job
    manifests = checkpoint_root(server, arn)
    wait_until(lambda: csv_path.exists() or get(client, arn)["status"] in FINAL, timeout=600, interval=0.05,
               what="a stored checkpoint")
    assert get(client, arn)["status"] == "InProgress"  # it was still training
    server.kill()
    stored = {json.loads(path.read_text())["step"]: path.parent.name for path in manifests.glob("*/manifest.json")}
    assert stored and all(name == f"checkpoint-{step}" and 1 <= step < 24 for step, name in stored.items()), stored
    before = read_csv(csv_path, METRIC_COLUMNS)
    assert 1 <= len(before) <= max(stored), (before, stored)
    # the worker that takes the job back may be on another machine: nothing local is left to it
    shutil.rmtree(SHARED_CACHE / "customization" / job_id(arn))
    log_size = server.log.stat().st_size
    assert get(server.start().client(), arn)["status"] == "InProgress"

    job = wait_final(client, arn, timeout=1000)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert phases(job) == dict.fromkeys(PHASES, "Completed")
    rows = read_csv(csv_path, METRIC_COLUMNS)
    check_step_rows(rows, steps=24, epochs=3)  # every step once: no step was lost or done twice
    assert rows[:len(before)] == before  # the steps before the checkpoint were kept
    # the restarted worker resumed from the checkpoint in the object store (the one seen, or a later
    # one recorded before the kill), and its trainer began there, not at step 1
    after_restart = server.log.read_bytes()[log_size:].decode(errors="replace")
    resumed = re.search(r"job \d+: resuming from checkpoint-(\d+) \(step (\d+)\)", after_restart)
    assert resumed, after_restart[-3000:]
    step = int(resumed.group(1))
    assert int(resumed.group(2)) == step and step in stored and len(before) <= step
    assert re.search(rf"trained after 24 steps in [\d.]+ s, resumed from checkpoint-{step};", after_restart)
    assert job["trainingMetrics"]["trainingLoss"] == pytest.approx(rows[-1]["training_loss"], rel=1e-5)
    assert client.get_custom_model(modelIdentifier=job["outputModelArn"])["modelStatus"] == "Active"
    # the job ended: its checkpoints are gone from the object store and from the worker's disk
    assert checkpoint_files(server, arn) == {}
    assert not (SHARED_CACHE / "customization" / job_id(arn)).exists()
