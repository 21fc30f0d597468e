"""Isolation between accounts (a credentials file with keys in two accounts): one account can neither
see nor touch another's resources, by name or by ARN, in any family we serve (ResourceNotFoundException,
as AWS answers, never AccessDenied); jobs read and write only where their request says; object keys
never leave the store; buckets the file gives an account are that account's; s3BucketOwner is checked."""

import hashlib
import json
import uuid

import pytest
from botocore.exceptions import ClientError

from bedrock_local import testing
from conftest import Server, wait_until
from test_deployments import build_tiny_model, import_model, wait_status

A_KEY, A_SECRET, A = "AKIAISOLATIONAAA", "secret-of-a", "111111111111"
A2_KEY, A2_SECRET = "AKIAISOLATIONAA2", "another-secret-of-a"
B_KEY, B_SECRET, B = "AKIAISOLATIONBBB", "secret-of-b", "222222222222"
ROLE_A, ROLE_B = f"arn:aws:iam::{A}:role/batch", f"arn:aws:iam::{B}:role/batch"
TEST_MODEL = "bedrock-local.test-text-v1:0"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({
        A_KEY: {"secretAccessKey": A_SECRET, "accountId": A, "buckets": ["bucket-a"]},
        A2_KEY: {"secretAccessKey": A2_SECRET, "accountId": A},
        B_KEY: {"secretAccessKey": B_SECRET, "accountId": B, "buckets": ["bucket-b"]},
    }))
    server = Server(root / "data", extra_args=("--credentials-file", str(credentials))).start()
    yield server
    server.stop()


def client(server, key, secret, service="bedrock", region="us-east-1"):
    return server.client(region, key, service, secret_key=secret, read_timeout=60)


@pytest.fixture(scope="module")
def a(server):
    return client(server, A_KEY, A_SECRET)


@pytest.fixture(scope="module")
def b(server):
    return client(server, B_KEY, B_SECRET)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_records(server, bucket: str, key: str, count: int = 3) -> str:
    path = server.folder(bucket) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"recordId": f"r{i}", "modelInput": {"prompt": f"word{i} other",
                                                                           "max_gen_len": 4}}) + "\n"
                            for i in range(count)))
    return f"s3://{bucket}/{key}"


def batch_job(client, input_uri: str, output_uri: str, role=ROLE_A, input_owner=None, output_owner=None) -> str:
    inputs = {"s3Uri": input_uri, **({"s3BucketOwner": input_owner} if input_owner else {})}
    outputs = {"s3Uri": output_uri, **({"s3BucketOwner": output_owner} if output_owner else {})}
    return client.create_model_invocation_job(
        jobName=unique("iso-batch"), roleArn=role, modelId=TEST_MODEL, modelInvocationType="InvokeModel",
        inputDataConfig={"s3InputDataConfig": inputs}, outputDataConfig={"s3OutputDataConfig": outputs})["jobArn"]


def wait_job(client, arn: str) -> dict:
    return wait_until(lambda: (job := client.get_model_invocation_job(jobIdentifier=arn))["status"] in FINAL and job,
                      120, what=f"{arn} to end")


def error_of(call, *args, **kwargs) -> dict:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    return raised.value.response


def assert_not_found(call, *args, **kwargs):
    response = error_of(call, *args, **kwargs)
    assert response["Error"]["Code"] == "ResourceNotFoundException", response["Error"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return response


def assert_denied(call, *args, **kwargs) -> str:
    response = error_of(call, *args, **kwargs)
    assert response["Error"]["Code"] == "AccessDeniedException", response["Error"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return response["Error"]["Message"]


@pytest.fixture(scope="module")
def world(server, a, tmp_path_factory):
    """One resource of every family in account A (us-east-1), each tagged."""
    tags = [{"key": "owner", "value": "a"}]
    model_name = unique("iso-model")
    model = import_model(server, a, build_tiny_model(tmp_path_factory.mktemp("iso") / "tiny", 3), model_name)
    a.tag_resource(resourceARN=model, tags=tags)
    west = client(server, A_KEY, A_SECRET, region="us-west-2")
    copy_job = west.create_model_copy_job(sourceModelArn=model, targetModelName=unique("iso-copy"))["jobArn"]
    batch = batch_job(a, write_records(server, "bucket-a", "in/records.jsonl"), "s3://bucket-a/out/")
    a.tag_resource(resourceARN=batch, tags=tags)
    bad_training = server.folder("bucket-a") / "train" / "bad.jsonl"
    bad_training.parent.mkdir(parents=True, exist_ok=True)
    bad_training.write_text("this is not json\n")
    customization_name = unique("iso-ft")
    customization = a.create_model_customization_job(
        jobName=customization_name, customModelName=unique("iso-ft-model"), roleArn=ROLE_A,
        baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0", jobTags=tags,
        trainingDataConfig={"s3Uri": "s3://bucket-a/train/bad.jsonl"},
        outputDataConfig={"s3Uri": "s3://bucket-a/ft-out/"})["jobArn"]
    deployment_name = unique("iso-deployment")
    deployment = a.create_custom_model_deployment(modelDeploymentName=deployment_name, modelArn=model,
                                                  tags=tags)["customModelDeploymentArn"]
    wait_status(a, deployment)
    wait_job(a, batch)
    wait_until(lambda: west.get_model_copy_job(jobArn=copy_job)["status"] != "InProgress", 120, what="copy job")
    wait_until(lambda: a.get_model_customization_job(jobIdentifier=customization)["status"] == "Failed", 120,
               what="customization job to fail")
    return {"model": model, "model_name": model_name, "copy_job": copy_job, "batch": batch,
            "customization": customization, "customization_name": customization_name,
            "deployment": deployment, "deployment_name": deployment_name, "tags": tags}


# ---- resources ---------------------------------------------------------------------------------
def test_custom_models_of_another_account_are_not_found(a, b, world):
    for identifier in (world["model"], world["model_name"]):
        assert_not_found(b.get_custom_model, modelIdentifier=identifier)
        assert_not_found(b.delete_custom_model, modelIdentifier=identifier)
    assert b.list_custom_models()["modelSummaries"] == []
    assert b.list_custom_models(isOwned=False)["modelSummaries"] == []
    # using it: deploy, copy, batch, customize
    assert_not_found(b.create_custom_model_deployment, modelDeploymentName=unique("steal"), modelArn=world["model"])
    b_west = testing.client("bedrock", b.meta.endpoint_url, region="us-west-2", access_key=B_KEY, secret_key=B_SECRET)
    assert_not_found(b_west.create_model_copy_job, sourceModelArn=world["model"], targetModelName=unique("steal"))
    # (an imported model's ARN is no batch modelId by the model's pattern; by name it is looked up)
    assert_not_found(b.create_model_invocation_job, jobName=unique("steal"), roleArn=ROLE_B, modelId=world["model_name"],
                     inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://bucket-b/in/"}},
                     outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://bucket-b/out/"}})
    assert_not_found(b.create_model_customization_job, jobName=unique("steal"), customModelName=unique("steal"),
                     roleArn=ROLE_B, baseModelIdentifier=world["model_name"],
                     trainingDataConfig={"s3Uri": "s3://bucket-b/train.jsonl"},
                     outputDataConfig={"s3Uri": "s3://bucket-b/out/"})
    assert a.get_custom_model(modelIdentifier=world["model"])["modelStatus"] == "Active"  # still there


def test_copy_jobs_of_another_account_are_not_found(server, b, world):
    b_west = client(server, B_KEY, B_SECRET, region="us-west-2")
    assert_not_found(b_west.get_model_copy_job, jobArn=world["copy_job"])
    assert b_west.list_model_copy_jobs()["modelCopyJobSummaries"] == []
    assert b_west.list_model_copy_jobs(sourceAccountEquals=A)["modelCopyJobSummaries"] == []
    a_west = client(server, A_KEY, A_SECRET, region="us-west-2")
    assert [j["jobArn"] for j in a_west.list_model_copy_jobs()["modelCopyJobSummaries"]] == [world["copy_job"]]


def test_invocation_jobs_of_another_account_are_not_found(a, b, world):
    job_id = world["batch"].rsplit("/", 1)[1]
    for identifier in (world["batch"], job_id):
        assert_not_found(b.get_model_invocation_job, jobIdentifier=identifier)
        assert_not_found(b.stop_model_invocation_job, jobIdentifier=identifier)
    assert b.list_model_invocation_jobs()["invocationJobSummaries"] == []
    assert a.get_model_invocation_job(jobIdentifier=world["batch"])["status"] == "Completed"


def test_customization_jobs_of_another_account_are_not_found(a, b, world):
    for identifier in (world["customization"], world["customization_name"]):
        assert_not_found(b.get_model_customization_job, jobIdentifier=identifier)
        assert_not_found(b.stop_model_customization_job, jobIdentifier=identifier)
    assert b.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []
    assert a.get_model_customization_job(jobIdentifier=world["customization_name"])["status"] == "Failed"


def test_deployments_of_another_account_are_not_found(a, b, world):
    for identifier in (world["deployment"], world["deployment_name"]):
        assert_not_found(b.get_custom_model_deployment, customModelDeploymentIdentifier=identifier)
        assert_not_found(b.delete_custom_model_deployment, customModelDeploymentIdentifier=identifier)
    assert_not_found(b.update_custom_model_deployment, customModelDeploymentIdentifier=world["deployment"],
                     modelArn=world["model"])
    assert b.list_custom_model_deployments()["modelDeploymentSummaries"] == []
    assert a.get_custom_model_deployment(customModelDeploymentIdentifier=world["deployment"])["status"] == "Active"


def test_tags_of_another_accounts_resources(a, b, world):
    for arn in (world["model"], world["batch"], world["customization"], world["deployment"]):
        assert_not_found(b.list_tags_for_resource, resourceARN=arn)
        assert_not_found(b.tag_resource, resourceARN=arn, tags=[{"key": "owner", "value": "b"}])
        assert_not_found(b.untag_resource, resourceARN=arn, tagKeys=["owner"])
        assert a.list_tags_for_resource(resourceARN=arn)["tags"] == world["tags"]


def test_runtime_calls_to_another_accounts_deployment(server, a, world):
    messages = [{"role": "user", "content": [{"text": "hello"}]}]
    mine = client(server, A_KEY, A_SECRET, "bedrock-runtime")
    assert mine.converse(modelId=world["deployment"], messages=messages, inferenceConfig={"maxTokens": 2})["output"]
    theirs = client(server, B_KEY, B_SECRET, "bedrock-runtime")
    assert_not_found(theirs.converse, modelId=world["deployment"], messages=messages)
    assert_not_found(theirs.converse_stream, modelId=world["deployment"], messages=messages)
    assert_not_found(theirs.invoke_model, modelId=world["deployment"], body=b'{"prompt": "hi", "max_gen_len": 2}')
    assert_not_found(theirs.invoke_model_with_response_stream, modelId=world["deployment"],
                     body=b'{"prompt": "hi", "max_gen_len": 2}')


def test_another_region_of_the_same_account_does_not_see_them(server, world):
    west = client(server, A_KEY, A_SECRET, region="us-west-2")
    assert_not_found(west.get_custom_model, modelIdentifier=world["model"])
    assert_not_found(west.get_model_invocation_job, jobIdentifier=world["batch"])
    assert_not_found(west.get_custom_model_deployment, customModelDeploymentIdentifier=world["deployment"])


def test_every_key_of_an_account_sees_the_accounts_resources(server, world):
    a2 = client(server, A2_KEY, A2_SECRET)
    assert a2.get_custom_model(modelIdentifier=world["model_name"])["modelArn"] == world["model"]
    assert world["batch"] in [j["jobArn"] for j in a2.list_model_invocation_jobs()["invocationJobSummaries"]]


# ---- buckets and keys --------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["s3://bucket-a/../bucket-b/x.jsonl", "s3://bucket-a/in/../../etc/passwd",
                                 "s3://bucket-a//abs/x", "s3://bucket-a/./x", "s3://../x", "s3://bucket-a/a\\..\\b"])
def test_keys_that_would_leave_the_store_are_refused(server, a, uri):
    calls = [
        lambda: batch_job(a, uri, "s3://bucket-a/out/"),
        lambda: batch_job(a, "s3://bucket-a/in/", uri),
        lambda: a.create_model_customization_job(
            jobName=unique("esc"), customModelName=unique("esc"), roleArn=ROLE_A,
            baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
            trainingDataConfig={"s3Uri": uri}, outputDataConfig={"s3Uri": "s3://bucket-a/out/"}),
        lambda: a.create_custom_model(modelName=unique("esc"), modelSourceConfig={"s3DataSource": {"s3Uri": uri}}),
    ]
    for call in calls:
        with pytest.raises(ClientError) as raised:
            call()
        error = raised.value.response["Error"]
        assert error["Code"] == "ValidationException", error  # by the model's pattern, or by the store's key rules
        assert "s3Uri" in error["Message"] and uri in error["Message"]
    assert not (server.data_dir / "etc").exists()


def test_the_model_bucket_is_no_requests_to_read_or_write(server, a, world):
    stored = f"s3://bedrock-local-models/{A}/us-east-1/custom-models/{world['model'][-12:]}/"
    assert "bedrock-local-models" in assert_denied(
        a.create_custom_model, modelName=unique("copy"), modelSourceConfig={"s3DataSource": {"s3Uri": stored}})
    assert_denied(batch_job, a, "s3://bucket-a/in/", stored)
    assert_denied(batch_job, a, stored, "s3://bucket-a/out/")
    assert_denied(a.create_model_customization_job, jobName=unique("m"), customModelName=unique("m"), roleArn=ROLE_A,
                  baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
                  trainingDataConfig={"s3Uri": "s3://bucket-a/train/bad.jsonl"}, outputDataConfig={"s3Uri": stored})


def test_a_bucket_of_another_account_is_refused(server, a, b):
    input_uri = write_records(server, "bucket-a", "private/records.jsonl")
    message = assert_denied(batch_job, b, input_uri, "s3://bucket-b/out/", role=ROLE_B)
    assert "bucket-a" in message and "another account" in message
    assert_denied(batch_job, b, write_records(server, "bucket-b", "in/r.jsonl"), "s3://bucket-a/steal/", role=ROLE_B)
    assert_denied(b.create_model_customization_job, jobName=unique("x"), customModelName=unique("x"), roleArn=ROLE_B,
                  baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
                  trainingDataConfig={"s3Uri": "s3://bucket-a/train/bad.jsonl"},
                  outputDataConfig={"s3Uri": "s3://bucket-b/out/"})
    assert_denied(b.create_custom_model, modelName=unique("x"),
                  modelSourceConfig={"s3DataSource": {"s3Uri": "s3://bucket-a/models/"}})
    assert not (server.folder("bucket-a") / "steal").exists()


def test_s3_bucket_owner_must_own_the_bucket(server, a):
    input_uri = write_records(server, "bucket-a", "owner/records.jsonl")
    shared_input = write_records(server, "shared-bucket", "in/records.jsonl")
    # the owner named right: A's own bucket, and a bucket the file gives no one (the caller's)
    arn = batch_job(a, input_uri, "s3://bucket-a/owner-out/", input_owner=A, output_owner=A)
    assert wait_job(a, arn)["status"] == "Completed"
    job = a.get_model_invocation_job(jobIdentifier=arn)
    assert job["inputDataConfig"]["s3InputDataConfig"]["s3BucketOwner"] == A
    assert job["outputDataConfig"]["s3OutputDataConfig"]["s3BucketOwner"] == A
    assert wait_job(a, batch_job(a, shared_input, "s3://shared-bucket/out/", input_owner=A))["status"] == "Completed"
    # the owner named wrong
    for owner_in, owner_out in ((B, None), (None, B), ("999999999999", A)):
        message = assert_denied(batch_job, a, input_uri, "s3://bucket-a/owner-out/", input_owner=owner_in,
                                output_owner=owner_out)
        assert "s3BucketOwner" in message
    assert_denied(batch_job, a, shared_input, "s3://shared-bucket/out/", input_owner=B)


def files_of(root) -> dict:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in root.rglob("*") if path.is_file()}


def test_a_batch_job_writes_only_under_its_output_prefix(server, a, world):
    input_uri = write_records(server, "bucket-a", "scoped/in/records.jsonl", count=5)
    (server.folder("bucket-a") / "scoped" / "in-other.jsonl").write_text("not read\n")  # beside the input prefix
    store = server.data_dir / "s3"
    before = files_of(store)
    arn = batch_job(a, "s3://bucket-a/scoped/in/", "s3://bucket-a/scoped/out/")
    assert wait_job(a, arn)["status"] == "Completed"
    after = files_of(store)
    changed = {path for path in after if before.get(path) != after[path]}
    assert not set(before) - set(after)  # nothing deleted
    job_id = arn.rsplit("/", 1)[1]
    assert changed == {f"bucket-a/scoped/out/{job_id}/records.jsonl.out",
                       f"bucket-a/scoped/out/{job_id}/manifest.json.out"}
    lines = (store / f"bucket-a/scoped/out/{job_id}/records.jsonl.out").read_text().splitlines()
    assert [json.loads(line)["recordId"] for line in lines] == [f"r{i}" for i in range(5)]
    assert input_uri.endswith("records.jsonl")


def test_bucket_rules_hold_with_an_s3_endpoint(make_server, moto_s3, tmp_path):
    """With --s3-endpoint-url the same rules apply: they come from the credentials file, not the store."""
    from conftest import s3_client

    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({
        A_KEY: {"secretAccessKey": A_SECRET, "accountId": A, "buckets": ["remote-a"]},
        B_KEY: {"secretAccessKey": B_SECRET, "accountId": B},
    }))
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket="remote-a")
    s3.put_object(Bucket="remote-a", Key="in/records.jsonl", Body=b'{"recordId": "r", "modelInput": {"prompt": "x"}}\n')
    server = make_server("remote", workers=0, s3_endpoint_url=moto_s3,
                         extra_args=("--serving-workers", "0", "--credentials-file", str(credentials)))
    a, b = client(server, A_KEY, A_SECRET), client(server, B_KEY, B_SECRET)
    arn = batch_job(a, "s3://remote-a/in/", "s3://remote-a/out/", input_owner=A, output_owner=A)
    assert a.get_model_invocation_job(jobIdentifier=arn)["status"] == "Submitted"  # accepted (no worker here)
    assert "s3BucketOwner" in assert_denied(batch_job, a, "s3://remote-a/in/", "s3://remote-a/out/", input_owner=B)
    assert "another account" in assert_denied(batch_job, b, "s3://remote-a/in/", "s3://remote-a/out/", role=ROLE_B)
    assert_not_found(b.get_model_invocation_job, jobIdentifier=arn)
