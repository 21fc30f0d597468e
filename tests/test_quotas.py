"""Service quotas through boto3 against real servers with small configured values (`serve --quota
KEY=VALUE`): each Create past a concurrency or count quota answers ServiceQuotaExceededException
(HTTP 400, the modelled error) naming the quota as AWS names it and its value; concurrent Creates
from many threads never pass a quota, on SQLite and on PostgreSQL; input sizes and training records
past their quotas fail the job at validation with a message naming the quota.

The test servers of other modules run with `--quota all=unlimited` (conftest.py); the servers here
set the quotas each test is about, after it."""

import json
import subprocess
import sys
import threading
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import upload_folder, wait_until

TEXT = "bedrock-local.test-text-v1:0"
EMBED = "bedrock-local.test-embed-v1:0"
ROLE = "arn:aws:iam::123456789012:role/quotas"
IN, OUT, MODELS = "quota-in", "quota-out", "quota-models"
BATCH_FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def quota_message(call, **kwargs) -> str:
    """The message of the ServiceQuotaExceededException a call answers (checked on the wire)."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    assert response["Error"]["Code"] == "ServiceQuotaExceededException", response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith("ServiceQuotaExceededException")
    return response["Error"]["Message"]


def quota_server(make_server, *quotas: str, workers: int = 0, name: str = "data", **kwargs):
    args = [arg for quota in quotas for arg in ("--quota", quota)]
    server = make_server(name, workers=workers, extra_args=tuple(args) + kwargs.pop("extra_args", ()), **kwargs)
    server.folder(IN)
    server.folder(OUT)
    return server


def put_input(server, files: dict[str, str]) -> str:
    prefix = unique("input")
    folder = server.folder(IN) / prefix
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return f"s3://{IN}/{prefix}/"


def records(count: int, pad: int = 0) -> str:
    return "".join(json.dumps({"recordId": f"r{i:03d}", "modelInput": {"prompt": "one two three " + "x" * pad,
                                                                         "max_gen_len": 4}}) + "\n"
                   for i in range(count))


def batch_job(client, model: str = TEXT, input_uri: str = f"s3://{IN}/nothing/", **extra) -> str:
    return client.create_model_invocation_job(
        jobName=extra.pop("jobName", unique("job")), modelId=model, roleArn=ROLE,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT}/"}}, **extra)["jobArn"]


def wait_batch(client, arn: str) -> dict:
    return wait_until(lambda: (job := client.get_model_invocation_job(jobIdentifier=arn))["status"] in BATCH_FINAL
                      and job, 120, what=f"{arn} to end")


def import_model(server, client, folder, name: str) -> str:
    uri = upload_folder(server, MODELS, f"{name}/", folder)
    return client.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]


# ---- batch inference jobs per model ------------------------------------------------------------

def test_batch_jobs_per_model(make_server):
    server = quota_server(make_server, "batch-jobs-per-base-model=2")  # no worker: jobs stay Submitted
    bedrock = server.client()
    first = batch_job(bedrock, clientRequestToken="first-token")
    batch_job(bedrock)
    message = quota_message(batch_job, client=bedrock)
    assert ("'Sum of in-progress and submitted batch inference jobs using a base model for "
            "bedrock-local.test-text-v1:0' of 2") in message, message
    assert "2 batch inference jobs" in message and "123456789012" in message and "us-east-1" in message, message
    assert "--quota batch-jobs-per-base-model=" in message
    # a retry of an accepted request is answered, not counted
    assert batch_job(bedrock, clientRequestToken="first-token", jobName=bedrock.get_model_invocation_job(
        jobIdentifier=first)["jobName"]) == first
    # the quota is per model and per region
    batch_job(bedrock, model=EMBED)
    batch_job(server.client(region="us-west-2"))
    # a job that ends frees its place
    bedrock.stop_model_invocation_job(jobIdentifier=first)
    assert bedrock.get_model_invocation_job(jobIdentifier=first)["status"] == "Stopped"
    batch_job(bedrock)
    quota_message(batch_job, client=bedrock)
    jobs = bedrock.list_model_invocation_jobs(statusEquals="Submitted")["invocationJobSummaries"]
    assert sorted(j["modelId"] for j in jobs) == [EMBED, TEXT, TEXT]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_concurrent_creates_never_pass_the_quota(make_server, database_url):
    server = quota_server(make_server, "batch-jobs-per-base-model=3", "customization-jobs=2",
                          database_url=database_url)
    results: dict[str, list] = {"batch": [], "customization": []}
    start = threading.Barrier(16)

    def create(kind: str) -> None:
        client = server.client()
        start.wait()
        try:
            if kind == "batch":
                batch_job(client)
            else:
                client.create_model_customization_job(
                    jobName=unique("ft"), customModelName=unique("model"), roleArn=ROLE,
                    baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
                    trainingDataConfig={"s3Uri": f"s3://{IN}/train.jsonl"}, outputDataConfig={"s3Uri": f"s3://{OUT}/"})
            results[kind].append("created")
        except ClientError as exc:
            results[kind].append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=create, args=("batch" if i % 2 else "customization",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results["batch"]) == ["ServiceQuotaExceededException"] * 5 + ["created"] * 3, results
    assert sorted(results["customization"]) == ["ServiceQuotaExceededException"] * 6 + ["created"] * 2, results
    bedrock = server.client()
    assert len(bedrock.list_model_invocation_jobs()["invocationJobSummaries"]) == 3
    assert len(bedrock.list_model_customization_jobs()["modelCustomizationJobSummaries"]) == 2


# ---- customization, import, custom models, copies, deployments ---------------------------------

def test_customization_jobs(make_server):
    server = quota_server(make_server, "customization-jobs=1")
    bedrock = server.client()

    def create():
        return bedrock.create_model_customization_job(
            jobName=unique("ft"), customModelName=unique("model"), roleArn=ROLE,
            baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
            trainingDataConfig={"s3Uri": f"s3://{IN}/train.jsonl"},
            outputDataConfig={"s3Uri": f"s3://{OUT}/"})["jobArn"]

    first = create()
    message = quota_message(create)
    assert "'Scheduled customization jobs' of 1" in message and "1 model customization jobs" in message, message
    bedrock.stop_model_customization_job(jobIdentifier=first)  # queued: Stopped at once
    create()


def test_model_import_jobs_at_aws_default_and_custom_models(make_server, tiny_model_dir):
    server = quota_server(make_server, "model-import-jobs=default")  # AWS's 1; no worker: imports stay Creating
    bedrock = server.client()
    import_model(server, bedrock, tiny_model_dir, "first")
    message = quota_message(import_model, server=server, client=bedrock, folder=tiny_model_dir, name="second")
    assert "'Concurrent model import jobs' of 1" in message and "1 custom models are being imported" in message
    import_model(server, server.client(region="eu-west-1"), tiny_model_dir, "elsewhere")  # per region

    server.extra_args = ["--quota", "custom-models=2"]
    server.restart()
    import_model(server, bedrock, tiny_model_dir, "second")
    message = quota_message(import_model, server=server, client=bedrock, folder=tiny_model_dir, name="third")
    assert "'Custom models per account' of 2" in message and "2 custom models exist" in message, message


def test_copies_and_deployments(make_server, tiny_model_dir):
    server = quota_server(make_server, "custom-models=2", "model-import-jobs=1", "in-progress-deployments=1",
                          workers=1, extra_args=("--serving-workers", "0"))  # nothing loads: deployments stay Creating
    east = server.client()
    model = import_model(server, east, tiny_model_dir, "tiny")
    wait_until(lambda: east.get_custom_model(modelIdentifier=model)["modelStatus"] == "Active", 120, what="import")
    import_model(server, east, tiny_model_dir, "tiny-2")  # the ended import holds no place any more
    # a copy makes a custom model in the caller's region: counted there
    west = server.client(region="us-west-2")
    west.create_model_copy_job(sourceModelArn=model, targetModelName="copy-1")
    west.create_model_copy_job(sourceModelArn=model, targetModelName="copy-2")
    message = quota_message(west.create_model_copy_job, sourceModelArn=model, targetModelName="copy-3")
    assert "'Custom models per account' of 2" in message and "us-west-2" in message, message

    first = east.create_custom_model_deployment(modelDeploymentName="dep-1", modelArn=model)["customModelDeploymentArn"]
    message = quota_message(east.create_custom_model_deployment, modelDeploymentName="dep-2", modelArn=model)
    assert "'In-progress custom model deployments' of 1" in message and "1 custom model deployments are Creating" \
        in message, message
    east.delete_custom_model_deployment(customModelDeploymentIdentifier=first)
    east.create_custom_model_deployment(modelDeploymentName="dep-2", modelArn=model)

    server.extra_args = ["--serving-workers", "0", "--quota", "deployments=2"]
    server.restart()
    east.create_custom_model_deployment(modelDeploymentName="dep-3", modelArn=model)
    message = quota_message(east.create_custom_model_deployment, modelDeploymentName="dep-4", modelArn=model)
    assert "'Total custom model deployments' of 2" in message and "2 custom model deployments exist" in message


# ---- sizes and records: the job fails its validation -------------------------------------------

def test_batch_input_sizes_fail_the_job(make_server):
    server = quota_server(make_server, "batch-input-file-size=1KB", "batch-job-size=1500", workers=1)
    bedrock = server.client()
    big = put_input(server, {"big.jsonl": records(13)})                        # 1,079 bytes: past 1 KB
    pair = put_input(server, {"a.jsonl": records(10), "b.jsonl": records(10)})  # 830 bytes each, 1,660 in all
    small = put_input(server, {"small.jsonl": records(8)})
    assert (server.folder(IN) / big[len(f"s3://{IN}/"):] / "big.jsonl").stat().st_size > 1000
    jobs = {name: batch_job(bedrock, input_uri=uri) for name, uri in (("big", big), ("pair", pair), ("small", small))}

    job = wait_batch(bedrock, jobs["big"])
    assert job["status"] == "Failed", job
    assert f"{big}big.jsonl" in job["message"], job["message"]
    assert "'Batch inference input file size (in GB)' of 1 KB (1,000 bytes)" in job["message"], job["message"]
    job = wait_batch(bedrock, jobs["pair"])
    assert job["status"] == "Failed", job
    assert "'Batch inference job size (in GB)' of 1.5 KB (1,500 bytes)" in job["message"], job["message"]
    assert wait_batch(bedrock, jobs["small"])["status"] == "Completed"


def test_training_records_fail_the_job(make_server):
    server = quota_server(make_server, "fine-tuning-records=3", workers=1)
    bedrock = server.client()
    (server.folder(IN) / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {i}", "completion": "answer"}) + "\n" for i in range(3)))
    (server.folder(IN) / "validation.jsonl").write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    arn = bedrock.create_model_customization_job(
        jobName="too-many", customModelName="too-many", roleArn=ROLE,
        baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
        trainingDataConfig={"s3Uri": f"s3://{IN}/train.jsonl"}, outputDataConfig={"s3Uri": f"s3://{OUT}/"},
        validationDataConfig={"validators": [{"s3Uri": f"s3://{IN}/validation.jsonl"}]})["jobArn"]
    job = wait_until(lambda: (found := bedrock.get_model_customization_job(jobIdentifier=arn))["status"] != "InProgress"
                     and found, 180, what="the job to end")
    assert job["status"] == "Failed", job
    assert "4 records" in job["failureMessage"], job["failureMessage"]
    assert "'Sum of training and validation records for a fine-tuning job' of 3" in job["failureMessage"]
    assert job["statusDetails"]["validationDetails"]["status"] == "Failed"


# ---- the flag ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, words", [
    ("no-such-quota=1", ["unknown quota 'no-such-quota'", "customization-jobs"]),
    ("customization-jobs=2GB", ["'2GB' is not a whole number"]),
    ("batch-job-size=lots", ["'lots' is not a size"]),
    ("customization-jobs", ["expected KEY=VALUE"]),
])
def test_a_bad_quota_flag_is_refused(tmp_path, flag, words):
    done = subprocess.run([sys.executable, "-m", "bedrock_local.cli", "serve", "--data-dir", str(tmp_path),
                           "--quota", flag], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    for word in words:
        assert word in done.stderr, done.stderr
