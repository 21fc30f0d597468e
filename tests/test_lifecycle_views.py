"""What the client commands and /metrics show of a custom model's whole life, against real servers:
`bedrock-local jobs` lists model import jobs, evaluation jobs with their scores and distillation jobs;
`models` lists imported models and Provisioned Throughputs; `watch` follows an import job by name and
an evaluation job to its scores; /metrics counts each of them by type and status. (The web console's
view of them is in tests/test_console.py.)"""

import json
import os
import subprocess
import sys

import pytest

from conftest import FACT_HYPERPARAMETERS, Server, one_of_each_lifecycle_resource
from test_metrics import scrape, value

ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
ENV.pop("AWS_ENDPOINT_URL_BEDROCK", None)
ENV.pop("COLUMNS", None)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bedrock_local.cli", *args, "--endpoint-url", server.url],
                          capture_output=True, text=True, timeout=120, env=ENV)


@pytest.fixture(scope="module")
def made(server, tiny_model_dir) -> dict:
    return one_of_each_lifecycle_resource(server, tiny_model_dir)


@pytest.fixture(scope="module")
def distillation(tmp_path_factory) -> tuple[Server, str]:
    """A server without workers holding one distillation job (it stays InProgress: nothing runs it)."""
    server = Server(tmp_path_factory.mktemp("distillation-view") / "data", workers=0).start()
    prompts = server.folder("views-data") / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "train.jsonl").write_text(json.dumps({
        "schemaVersion": "bedrock-conversation-2024",
        "messages": [{"role": "user", "content": [{"text": "What is the capital of Zorblax?"}]}]}) + "\n")
    server.folder("views-out")
    arn = server.client().create_model_customization_job(
        jobName="distil-view", customModelName="distil-view-model", roleArn="arn:aws:iam::123456789012:role/d",
        baseModelIdentifier="meta.llama3-1-8b-instruct-v1:0", customizationType="DISTILLATION",
        hyperParameters=FACT_HYPERPARAMETERS, trainingDataConfig={"s3Uri": "s3://views-data/prompts/"},
        outputDataConfig={"s3Uri": "s3://views-out/"},
        customizationConfig={"distillationConfig": {"teacherModelConfig": {
            "teacherModelIdentifier": "meta.llama3-1-405b-instruct-v1:0", "maxResponseLengthForInference": 16}}},
    )["jobArn"]
    yield server, arn
    server.stop()


def test_jobs_lists_import_and_evaluation_jobs_with_scores(server, made):
    result = cli(server, "jobs", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["arn"]: row for row in json.loads(result.stdout)}
    imported = rows[made["import_job"]]
    assert (imported["type"], imported["name"], imported["status"]) == ("import", made["import_name"], "Completed")
    evaluation = rows[made["evaluation"]]
    assert (evaluation["type"], evaluation["name"], evaluation["status"]) == \
        ("evaluation", made["evaluation_name"], "Completed")
    assert evaluation["progress"] == "Accuracy 0.5", evaluation

    only = cli(server, "jobs", "--type", "evaluation", "--status", "completed", "--json")
    assert only.returncode == 0, only.stderr
    assert {row["type"] for row in json.loads(only.stdout)} == {"evaluation"}
    table = cli(server, "jobs", "--type", "import", "--name", made["import_name"])
    assert table.returncode == 0 and made["import_name"] in table.stdout and "Completed" in table.stdout


def test_jobs_shows_a_distillation_as_its_own_type(distillation):
    server, arn = distillation
    result = cli(server, "jobs", "--type", "customization", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(row["arn"], row["type"], row["status"]) for row in rows] == [(arn, "distillation", "InProgress")]
    samples = scrape(server)
    assert value(samples, "bedrock_local_jobs", type="distillation", status="InProgress") == 1
    assert value(samples, "bedrock_local_jobs", type="customization", status="InProgress") == 0


def test_models_lists_imported_models_and_throughputs(server, made):
    result = cli(server, "models", "--only", "imported", "--only", "provisioned", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert set(found) == {"imported", "provisioned"}
    model = next(m for m in found["imported"] if m["modelArn"] == made["imported_model"])
    assert model["modelName"] == made["model_name"] and model["modelArchitecture"] == "llama"
    throughput = next(p for p in found["provisioned"] if p["provisionedModelArn"] == made["throughput"])
    assert throughput["status"] == "InService" and throughput["modelUnits"] == 1
    table = cli(server, "models", "--only", "imported", "--only", "provisioned")
    assert table.returncode == 0, table.stderr
    assert "Imported models" in table.stdout and made["model_name"] in table.stdout
    assert "Provisioned throughputs" in table.stdout and made["throughput_name"] in table.stdout


def test_watch_follows_an_import_job_by_name_and_an_evaluation_to_its_scores(server, made):
    imported = cli(server, "watch", made["import_name"])
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert f"Imported model: {made['imported_model']}" in imported.stdout
    evaluated = cli(server, "watch", made["evaluation"])
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert "Scores: Accuracy 0.5" in evaluated.stdout and "Results: s3://lifecycle/results/" in evaluated.stdout


def test_metrics_count_the_new_resources_by_status(server, made):
    samples = scrape(server)
    assert value(samples, "bedrock_local_jobs", type="import", status="Completed") >= 1
    assert value(samples, "bedrock_local_jobs", type="evaluation", status="Completed") >= 1
    assert value(samples, "bedrock_local_imported_models") >= 1
    assert value(samples, "bedrock_local_provisioned_throughputs", status="InService") >= 1
