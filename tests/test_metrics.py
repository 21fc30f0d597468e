"""GET /metrics of a real server, parsed with prometheus_client's own text parser: requests by
operation and HTTP status, the latency histogram, jobs by type and status, and the batch records,
tokens and training steps the job workers recorded in the database."""

import json
import uuid

import httpx
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until

TEST_MODEL = "bedrock-local.test-text-v1:0"


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
    prefix = f"in-{uuid.uuid4().hex[:8]}"
    folder = server.folder("metrics-input") / prefix
    folder.mkdir(parents=True)
    server.folder("metrics-output")
    (folder / "records.jsonl").write_text("".join(
        json.dumps({"recordId": f"r{n}", "modelInput": {"prompt": prompt, "max_gen_len": 3}}) + "\n"
        for n, prompt in enumerate(prompts)))
    return server.client().create_model_invocation_job(
        jobName=name, roleArn="arn:aws:iam::123456789012:role/batch", modelId=TEST_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://metrics-input/{prefix}/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://metrics-output/out/"}})["jobArn"]


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


def test_training_steps_and_other_resources_are_read_from_the_database(server):
    """Workers write a customization job's progress into its row (`_progress`, jobs/customization.py):
    /metrics sums what the rows say, whichever process wrote them. Here the row is written as a
    training worker writes it, into the server's own database."""
    from bedrock_local.store import resources
    from bedrock_local.store.database import open_database

    before = scrape(server)
    db = open_database(f"sqlite:///{(server.data_dir / 'bedrock-local.db').resolve()}", migrate=False)
    try:
        with db.session() as session, session.begin():
            for steps, status in ((7, "InProgress"), (30, "Completed")):
                job_id = uuid.uuid4().hex[:12]
                resources.insert(session, kind="model-customization-job", account="123456789012", region="us-east-1",
                                 resource_id=job_id, name=f"metrics-ft-{job_id}", status=status,
                                 arn=f"arn:aws:bedrock:us-east-1:123456789012:model-customization-job/x.y/{job_id}",
                                 body={"_progress": {"step": steps, "epoch": 1.0, "trainingLoss": 1.5}})
    finally:
        db.dispose()
    after = scrape(server)
    assert value(after, "bedrock_local_training_steps_total") - value(before, "bedrock_local_training_steps_total") == 37
    assert value(after, "bedrock_local_jobs", type="customization", status="InProgress") == \
        value(before, "bedrock_local_jobs", type="customization", status="InProgress") + 1
    assert value(after, "bedrock_local_jobs", type="customization", status="Completed") == \
        value(before, "bedrock_local_jobs", type="customization", status="Completed") + 1
    assert ("process_cpu_seconds_total", frozenset()) in after  # the API process's own figures
