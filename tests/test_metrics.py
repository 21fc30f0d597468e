"""GET /metrics of a real server, parsed with prometheus_client's own text parser: requests by
operation and HTTP status, the latency histogram, jobs by type and status, and the batch records,
tokens and training steps the job workers recorded in the database."""

import json
import uuid

import httpx
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from conftest import batch_job_of_prompts, wait_until


def scrape(server) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape."""
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")  # the text exposition format
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def batch_job(server, name: str, prompts: list[str]) -> str:
    return batch_job_of_prompts(server, name, prompts, ("metrics-input", "metrics-output"), max_gen_len=3)


def ended(server, arn: str) -> dict | None:
    job = server.client().get_model_invocation_job(jobIdentifier=arn)
    return job if job["status"] in ("Completed", "Failed") else None


def test_requests_are_counted_by_operation_and_status_with_a_latency_histogram(server):
    before = scrape(server)
    client, raw = server.client(), server.client(validate=False)
    for _ in range(3):
        client.list_foundation_models()
    for _ in range(2):
        with pytest.raises(ClientError) as missing:
            client.get_model_invocation_job(jobIdentifier="abcdefghijkl")
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as invalid:
        raw.get_foundation_model(modelIdentifier="no such model!")
    assert invalid.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert httpx.get(f"{server.url}/no/such/route").status_code == 404
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "bedrock_local_requests_total"
    assert delta(requests, operation="ListFoundationModels", status="200") == 3
    assert delta(requests, operation="GetModelInvocationJob", status="404") == 2
    assert delta(requests, operation="GetModelInvocationJob", status="200") == 0
    assert delta(requests, operation="GetFoundationModel", status="400") == 1
    assert delta(requests, operation="unknown", status="404") == 1
    assert not any(labels and dict(labels).get("operation") == "/metrics" for _, labels in after)  # scrapes: not counted

    histogram = "bedrock_local_request_duration_seconds"
    for operation, count in (("ListFoundationModels", 3), ("GetModelInvocationJob", 2)):
        buckets = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                          if name == histogram + "_bucket" and dict(labels)["operation"] == operation))
        assert len(buckets) > 10 and buckets[-1][0] == float("inf")
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))  # cumulative
        assert buckets[-1][1] == value(after, histogram + "_count", operation=operation)
        assert delta(histogram + "_count", operation=operation) == count
        assert delta(histogram + "_sum", operation=operation) > 0
        requests_of_operation = sum(v for (name, labels), v in after.items()
                                    if name == requests and dict(labels)["operation"] == operation)
        assert buckets[-1][1] == requests_of_operation


def test_jobs_by_type_and_status_and_the_records_and_tokens_they_processed(server):
    before = scrape(server)
    done = batch_job(server, "metrics-done", [f"one two three {n}" for n in range(9)] + ["bad [[fault:model-error]]"])
    failed = batch_job(server, "metrics-failed", ["a b", "c d e", "[[fault:job-fail]]", "never"])
    done_job = wait_until(lambda: ended(server, done), what="the first job to end")
    failed_job = wait_until(lambda: ended(server, failed), what="the second job to end")
    assert (done_job["status"], failed_job["status"]) == ("Completed", "Failed")
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("bedrock_local_jobs", type="batch", status="Completed") == 1
    assert delta("bedrock_local_jobs", type="batch", status="Failed") == 1
    assert value(after, "bedrock_local_jobs", type="batch", status="Submitted") == 0
    assert delta("bedrock_local_batch_records_processed_total") == 10 + 2
    assert delta("bedrock_local_batch_records_total", outcome="success") == 9 + 2
    assert delta("bedrock_local_batch_records_total", outcome="error") == 1
    manifest = json.loads((server.folder("metrics-output") / "out" / done.rsplit("/", 1)[-1]
                           / "manifest.json.out").read_text())
    assert manifest["inputTokenCount"] >= 9 * 4  # every successful record's four words
    # a failed job writes no manifest; the test model's tokens are words: "a b" -> "b a", "c d e" -> "e d c"
    for direction, count in (("input", "inputTokenCount"), ("output", "outputTokenCount")):
        assert delta("bedrock_local_batch_tokens_total", direction=direction) == manifest[count] + 2 + 3


@pytest.mark.timeout(1200)  # a real LoRA run on the packaged SmolLM2: minutes on a busy 2-core machine
def test_training_steps_of_a_real_customization_job_are_counted(server):
    """A real fine-tuning job (LoRA on the packaged SmolLM2, 4 lines, batch 2: two optimizer steps) runs
    in a worker process; /metrics, read in the API process, counts its steps and its status from what
    the worker wrote into the job's row."""
    before = scrape(server)
    prefix = f"train-{uuid.uuid4().hex[:8]}"
    folder = server.folder("metrics-input") / prefix
    folder.mkdir(parents=True)
    server.folder("metrics-output")
    (folder / "train.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is the code word {n}?", "completion": "The code word is zorblax."}) + "\n"
        for n in range(4)))
    client = server.client()
    arn = client.create_model_customization_job(
        jobName=f"metrics-ft-{uuid.uuid4().hex[:8]}", customModelName=f"metrics-model-{uuid.uuid4().hex[:8]}",
        roleArn="arn:aws:iam::123456789012:role/customization", baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
        trainingDataConfig={"s3Uri": f"s3://metrics-input/{prefix}/"},
        outputDataConfig={"s3Uri": "s3://metrics-output/training/"},
        hyperParameters={"epochCount": "1", "batchSize": "2", "loraRank": "4", "loraAlpha": "16", "loraDropout": "0",
                         "learningRate": "0.003", "maxSequenceLength": "64"})["jobArn"]
    job = wait_until(lambda: (lambda j: j if j["status"] in ("Completed", "Failed", "Stopped") else None)(
        client.get_model_customization_job(jobIdentifier=arn)), timeout=1100, interval=1, what="the training job to end")
    assert job["status"] == "Completed", job.get("failureMessage")
    after = scrape(server)
    assert value(after, "bedrock_local_training_steps_total") - value(before, "bedrock_local_training_steps_total") == 2
    assert value(after, "bedrock_local_jobs", type="customization", status="Completed") == \
        value(before, "bedrock_local_jobs", type="customization", status="Completed") + 1
    assert value(after, "bedrock_local_custom_models", status="Active") == \
        value(before, "bedrock_local_custom_models", status="Active") + 1  # the job's output model
    assert ("process_cpu_seconds_total", frozenset()) in after  # the API process's own figures
