"""Inference profiles through boto3 (and the AWS CLI) against a real server whose catalog is two AWS
model ids run by the stub text model (an alias file gives them geographies, and makes Claude 3.7
profile-only as on AWS): ListInferenceProfiles (typeEquals, pages), GetInferenceProfile by id and
ARN, CreateInferenceProfile from a foundation model and from a system profile, tags,
DeleteInferenceProfile, their errors, profile ids and ARNs as the modelId of Converse,
ConverseStream, InvokeModel and its stream and of a batch job, and the on-demand refusal of a model
AWS serves only through a profile. Every answer is checked against the service model's output shape."""

import json
import os
import re
import subprocess
import uuid

import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from conftest import Server, wait_until

A_KEY, A_SECRET, A = "AKIAPROFILESAAAA", "secret-of-a", "111111111111"
B_KEY, B_SECRET, B = "AKIAPROFILESBBBB", "secret-of-b", "222222222222"
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"  # on demand, and in three geographies
CLAUDE_37 = "anthropic.claude-3-7-sonnet-20250219-v1:0"  # profile-only, as on AWS
LLAMA = "meta.llama3-8b-instruct-v1:0"  # no geography: no system profile
ALIASES = {"replaceDefaults": True, "aliases": [
    {"modelId": SONNET, "runsOn": "bedrock-local.test-text-v1:0", "bodyFormat": "anthropic-messages",
     "modelName": "Claude 3.5 Sonnet v2", "providerName": "Anthropic", "geographies": ["us", "eu", "apac"]},
    {"modelId": CLAUDE_37, "runsOn": "bedrock-local.test-text-v1:0", "bodyFormat": "anthropic-messages",
     "modelName": "Claude 3.7 Sonnet", "providerName": "Anthropic", "geographies": ["us", "eu", "global"],
     "profileOnly": True},
    {"modelId": LLAMA, "runsOn": "bedrock-local.test-text-v1:0", "bodyFormat": "meta-llama",
     "modelName": "Llama 3 8B Instruct", "providerName": "Meta"},
]}
US_REGIONS = ["us-east-1", "us-east-2", "us-west-2"]
APP_ARN = re.compile(rf"arn:aws:bedrock:us-east-1:{A}:application-inference-profile/[a-z0-9]{{12}}")
IN_BUCKET, OUT_BUCKET = "profiles-in", "profiles-out"
ROLE = f"arn:aws:iam::{A}:role/batch"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
HELLO = [{"role": "user", "content": [{"text": "say hello to the profile"}]}]
REVERSED = "profile the to hello say"  # the stub text model answers the words in reverse order


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    (folder / "aliases.json").write_text(json.dumps(ALIASES))
    (folder / "credentials.json").write_text(json.dumps({
        A_KEY: {"secretAccessKey": A_SECRET, "accountId": A, "buckets": [IN_BUCKET, OUT_BUCKET]},
        B_KEY: {"secretAccessKey": B_SECRET, "accountId": B}}))
    server = Server(folder / "data", extra_args=("--model-aliases", str(folder / "aliases.json"),
                                                  "--credentials-file", str(folder / "credentials.json"))).start()
    yield server
    server.stop()


def client(server, service="bedrock", region="us-east-1", key=A_KEY, secret=A_SECRET, validate=True):
    return server.client(region, key, service, secret_key=secret, validate=validate, read_timeout=60,
                         retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture(scope="module")
def bedrock(server):
    return client(server)


@pytest.fixture(scope="module")
def loose(server):
    """No client-side checks: the server's answer to what botocore would refuse is what is tested."""
    return client(server, validate=False)


@pytest.fixture(scope="module")
def runtime(server):
    return client(server, "bedrock-runtime")


def checked(client, operation: str, response: dict) -> dict:
    """`response` after checking it against the operation's output shape (lengths, patterns, enums)."""
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    shape = client.meta.service_model.operation_model(operation).output_shape
    problem = validation_message(body, shape)
    assert problem is None, f"{operation} answered outside its output shape: {problem}"
    return body


def error_of(call, **kwargs) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def list_all(client, **filters) -> list[dict]:
    pages = client.get_paginator("list_inference_profiles").paginate(**filters)
    return [summary for page in pages
            for summary in checked(client, "ListInferenceProfiles", page)["inferenceProfileSummaries"]]


def foundation_arn(model_id: str, region="us-east-1") -> str:
    return f"arn:aws:bedrock:{region}::foundation-model/{model_id}"


def system_arn(profile_id: str, region="us-east-1", account=A) -> str:
    return f"arn:aws:bedrock:{region}:{account}:inference-profile/{profile_id}"


def create(client, copy_from: str, **extra) -> str:
    response = client.create_inference_profile(inferenceProfileName=unique("app"), modelSource={"copyFrom": copy_from},
                                               **extra)
    checked(client, "CreateInferenceProfile", response)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201 and response["status"] == "ACTIVE"
    assert APP_ARN.fullmatch(response["inferenceProfileArn"]), response["inferenceProfileArn"]
    return response["inferenceProfileArn"]


@pytest.fixture(scope="module")
def app_profile(bedrock) -> str:
    """An application profile copied from the `us.` system profile of Claude 3.7."""
    return create(bedrock, system_arn(f"us.{CLAUDE_37}"), description="Team A: claude 3.7 in the US",
                  tags=[{"key": "team", "value": "a"}])


# ------------------------------------------------------------------------------------------
# system-defined profiles


def test_a_region_lists_the_system_profiles_of_its_geographies(server, bedrock):
    assert [p["inferenceProfileId"] for p in list_all(bedrock)] == sorted(
        [f"global.{CLAUDE_37}", f"us.{CLAUDE_37}", f"us.{SONNET}"])
    assert [p["inferenceProfileId"] for p in list_all(client(server, region="eu-west-1"))] == sorted(
        [f"eu.{SONNET}", f"eu.{CLAUDE_37}", f"global.{CLAUDE_37}"])
    assert [p["inferenceProfileId"] for p in list_all(client(server, region="ap-south-1"))] == [f"apac.{SONNET}"]


def test_a_system_profile_is_described_as_aws_does(bedrock):
    profile = checked(bedrock, "GetInferenceProfile", bedrock.get_inference_profile(
        inferenceProfileIdentifier=f"us.{SONNET}"))
    assert profile["inferenceProfileArn"] == system_arn(f"us.{SONNET}")
    assert profile["inferenceProfileName"] == "US Anthropic Claude 3-5 Sonnet v2"
    assert profile["models"] == [{"modelArn": foundation_arn(SONNET, region)} for region in US_REGIONS]
    assert (profile["type"], profile["status"]) == ("SYSTEM_DEFINED", "ACTIVE")
    assert "us-east-2" in profile["description"]
    assert profile["createdAt"] <= profile["updatedAt"]
    by_arn = bedrock.get_inference_profile(inferenceProfileIdentifier=profile["inferenceProfileArn"])
    assert checked(bedrock, "GetInferenceProfile", by_arn) == profile
    listed = {p["inferenceProfileId"]: p for p in list_all(bedrock)}
    assert listed[f"us.{SONNET}"] == profile


def test_pages_of_system_profiles(bedrock, loose):
    everything = list_all(bedrock)
    first = checked(bedrock, "ListInferenceProfiles", bedrock.list_inference_profiles(maxResults=2))
    assert len(first["inferenceProfileSummaries"]) == 2 and first["nextToken"]
    rest = checked(bedrock, "ListInferenceProfiles",
                   bedrock.list_inference_profiles(maxResults=2, nextToken=first["nextToken"]))
    assert "nextToken" not in rest
    assert first["inferenceProfileSummaries"] + rest["inferenceProfileSummaries"] == everything
    assert list_all(bedrock, typeEquals="SYSTEM_DEFINED") == everything
    # a token belongs to the listing that made it
    code, status, message = error_of(loose.list_inference_profiles, typeEquals="APPLICATION",
                                     nextToken=first["nextToken"])
    assert (code, status) == ("ValidationException", 400) and "nextToken" in message


# ------------------------------------------------------------------------------------------
# application profiles


def test_create_from_a_system_profile_copies_its_regions(bedrock, app_profile):
    profile = checked(bedrock, "GetInferenceProfile", bedrock.get_inference_profile(
        inferenceProfileIdentifier=app_profile))
    assert profile["models"] == [{"modelArn": foundation_arn(CLAUDE_37, region)} for region in US_REGIONS]
    assert (profile["type"], profile["status"]) == ("APPLICATION", "ACTIVE")
    assert profile["inferenceProfileId"] == app_profile.rsplit("/", 1)[1]
    assert profile["description"] == "Team A: claude 3.7 in the US"
    by_id = bedrock.get_inference_profile(inferenceProfileIdentifier=profile["inferenceProfileId"])
    assert checked(bedrock, "GetInferenceProfile", by_id) == profile


def test_create_from_a_foundation_model_is_one_region(bedrock):
    arn = create(bedrock, foundation_arn(SONNET))
    profile = bedrock.get_inference_profile(inferenceProfileIdentifier=arn)
    assert profile["models"] == [{"modelArn": foundation_arn(SONNET)}]
    assert "description" not in profile


def test_application_profiles_are_listed_with_type_application_only(bedrock, app_profile):
    made = [create(bedrock, foundation_arn(SONNET)) for _ in range(3)]
    applications = list_all(bedrock, typeEquals="APPLICATION", PaginationConfig={"PageSize": 2})
    arns = [p["inferenceProfileArn"] for p in applications]
    assert {app_profile, *made} <= set(arns) and len(arns) == len(set(arns))
    assert arns.index(made[2]) < arns.index(made[0])  # newest first
    assert {p["type"] for p in applications} == {"APPLICATION"}
    assert not {p["inferenceProfileArn"] for p in list_all(bedrock)} & set(arns)  # the default: system ones


def test_tags_of_an_application_profile(bedrock, app_profile):
    assert bedrock.list_tags_for_resource(resourceARN=app_profile)["tags"] == [{"key": "team", "value": "a"}]
    bedrock.tag_resource(resourceARN=app_profile, tags=[{"key": "cost-center", "value": "4711"}])
    bedrock.untag_resource(resourceARN=app_profile, tagKeys=["team"])
    assert bedrock.list_tags_for_resource(resourceARN=app_profile)["tags"] == [{"key": "cost-center", "value": "4711"}]
    code, _, _ = error_of(bedrock.tag_resource, resourceARN=system_arn(f"us.{SONNET}"),
                          tags=[{"key": "k", "value": "v"}])
    assert code == "ResourceNotFoundException"  # a system profile carries no tags of the caller's


def test_idempotent_create_and_duplicate_names(bedrock):
    name, token = unique("same"), uuid.uuid4().hex
    params = dict(inferenceProfileName=name, modelSource={"copyFrom": foundation_arn(SONNET)}, clientRequestToken=token)
    first = bedrock.create_inference_profile(**params)["inferenceProfileArn"]
    assert bedrock.create_inference_profile(**params)["inferenceProfileArn"] == first
    code, status, message = error_of(bedrock.create_inference_profile, inferenceProfileName=name,
                                     modelSource={"copyFrom": foundation_arn(SONNET)})
    assert (code, status) == ("ConflictException", 400) and name in message  # 400: the model says so


def test_delete_an_application_profile(bedrock, runtime):
    arn = create(bedrock, foundation_arn(SONNET))
    assert bedrock.delete_inference_profile(inferenceProfileIdentifier=arn)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert error_of(bedrock.get_inference_profile, inferenceProfileIdentifier=arn)[:2] == (
        "ResourceNotFoundException", 404)
    assert error_of(bedrock.delete_inference_profile, inferenceProfileIdentifier=arn)[0] == "ResourceNotFoundException"
    assert error_of(runtime.converse, modelId=arn, messages=HELLO)[0] == "ResourceNotFoundException"


@pytest.mark.parametrize("identifier,expected", [
    (f"us.{LLAMA}", "ResourceNotFoundException"),  # a model without that geography
    ("us.anthropic.claude-unknown-v1:0", "ResourceNotFoundException"),
    (f"apac.{CLAUDE_37}", "ResourceNotFoundException"),
    (f"eu.{SONNET}", "ResourceNotFoundException"),  # a geography us-east-1 is not in
    (system_arn(f"us.{SONNET}", region="us-west-2"), "ResourceNotFoundException"),  # another region's
    ("abcdefghijkl", "ResourceNotFoundException"),
])
def test_unknown_profiles_are_not_found(bedrock, identifier, expected):
    code, status, message = error_of(bedrock.get_inference_profile, inferenceProfileIdentifier=identifier)
    assert (code, status) == (expected, 404) and identifier in message


def test_a_system_profile_cannot_be_deleted(bedrock):
    code, status, message = error_of(bedrock.delete_inference_profile, inferenceProfileIdentifier=f"us.{SONNET}")
    assert (code, status) == ("ValidationException", 400) and "SYSTEM_DEFINED" in message


def test_another_accounts_profile_is_not_found(server, bedrock, app_profile):
    other = client(server, key=B_KEY, secret=B_SECRET)
    for call, kwargs in [(other.get_inference_profile, {"inferenceProfileIdentifier": app_profile}),
                         (other.delete_inference_profile, {"inferenceProfileIdentifier": app_profile}),
                         (other.list_tags_for_resource, {"resourceARN": app_profile}),
                         (client(server, "bedrock-runtime", key=B_KEY, secret=B_SECRET).converse,
                          {"modelId": app_profile, "messages": HELLO})]:
        assert error_of(call, **kwargs)[:2] == ("ResourceNotFoundException", 404)
    assert app_profile not in {p["inferenceProfileArn"] for p in list_all(other, typeEquals="APPLICATION")}
    # a system profile's ARN in B's account is not A's to copy
    code, _, _ = error_of(bedrock.create_inference_profile, inferenceProfileName=unique("x"),
                          modelSource={"copyFrom": system_arn(f"us.{SONNET}", account=B)})
    assert code == "ResourceNotFoundException"
    assert bedrock.get_inference_profile(inferenceProfileIdentifier=app_profile)["inferenceProfileArn"] == app_profile


@pytest.mark.parametrize("copy_from,expected", [
    (foundation_arn("anthropic.claude-unknown-v1:0"), "ResourceNotFoundException"),
    (foundation_arn(SONNET, region="us-west-2"), "ValidationException"),  # a model of another region
    (f"arn:aws:bedrock:us-east-1:{A}:foundation-model/{SONNET}", "ValidationException"),  # with an account
    (system_arn(f"eu.{SONNET}"), "ResourceNotFoundException"),  # not a us-east-1 profile
    (system_arn(f"us.{LLAMA}"), "ResourceNotFoundException"),
    (f"arn:aws:bedrock:us-east-1:{A}:application-inference-profile/abcdefghijkl", "ValidationException"),  # pattern
])
def test_bad_copy_from(loose, copy_from, expected):
    code, status, message = error_of(loose.create_inference_profile, inferenceProfileName=unique("bad"),
                                     modelSource={"copyFrom": copy_from})
    assert code == expected and status == (404 if expected == "ResourceNotFoundException" else 400)
    assert "copyFrom" in message or copy_from in message


def test_aws_cli_lists_and_gets_profiles(server):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": A_KEY, "AWS_SECRET_ACCESS_KEY": A_SECRET, "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_MAX_ATTEMPTS": "1"}

    def aws(*args):
        result = subprocess.run(["aws", "bedrock", *args, "--endpoint-url", server.url, "--region", "us-east-1",
                                 "--output", "json"], env=env, capture_output=True, text=True, timeout=60)
        return result.returncode, result.stdout, result.stderr

    code, out, err = aws("list-inference-profiles", "--type-equals", "SYSTEM_DEFINED")
    assert code == 0, err
    assert f"us.{SONNET}" in {p["inferenceProfileId"] for p in json.loads(out)["inferenceProfileSummaries"]}
    code, out, err = aws("get-inference-profile", "--inference-profile-identifier", f"global.{CLAUDE_37}")
    assert code == 0, err
    assert json.loads(out)["inferenceProfileName"] == "Global Anthropic Claude 3-7 Sonnet"
    code, out, err = aws("delete-inference-profile", "--inference-profile-identifier", f"us.{CLAUDE_37}")
    assert code != 0 and "ValidationException" in err


# ------------------------------------------------------------------------------------------
# profiles as the modelId of runtime calls and batch jobs


def converse_text(response) -> str:
    return response["output"]["message"]["content"][0]["text"]


@pytest.mark.parametrize("model_id", [f"us.{SONNET}", f"us.{CLAUDE_37}", f"global.{CLAUDE_37}",
                                      system_arn(f"us.{CLAUDE_37}"), "app"])
def test_converse_through_a_profile(runtime, app_profile, model_id):
    model_id = app_profile if model_id == "app" else model_id
    answer = runtime.converse(modelId=model_id, messages=HELLO)
    assert converse_text(checked(runtime, "Converse", answer)) == REVERSED
    assert answer["stopReason"] == "end_turn"


def test_converse_stream_through_a_profile(runtime, app_profile):
    for model_id in (f"us.{CLAUDE_37}", app_profile):
        events = [next(iter(event.items())) for event in runtime.converse_stream(modelId=model_id, messages=HELLO)["stream"]]
        text = "".join(body["delta"]["text"] for name, body in events if name == "contentBlockDelta")
        assert text.strip() == REVERSED
        assert events[-2] == ("messageStop", {"stopReason": "end_turn"})


def test_invoke_model_and_its_stream_through_a_profile(runtime, app_profile):
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
                       "messages": [{"role": "user", "content": "say hello to the profile"}]})
    for model_id in (f"us.{CLAUDE_37}", app_profile):
        response = runtime.invoke_model(modelId=model_id, body=body)
        answer = json.loads(response["body"].read())
        assert answer["content"][0]["text"] == REVERSED and answer["stop_reason"] == "end_turn"
        chunks = [json.loads(event["chunk"]["bytes"])
                  for event in runtime.invoke_model_with_response_stream(modelId=model_id, body=body)["body"]]
        streamed = "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
        assert streamed.strip() == REVERSED


def test_a_profile_only_model_is_refused_on_demand(runtime):
    for model_id in (CLAUDE_37, foundation_arn(CLAUDE_37)):
        code, status, message = error_of(runtime.converse, modelId=model_id, messages=HELLO)
        assert (code, status) == ("ValidationException", 400)
        assert message == (f"Invocation of model ID {CLAUDE_37} with on-demand throughput isn\u2019t supported. Retry "
                           "your request with the ID or ARN of an inference profile that contains this model.")
    assert converse_text(runtime.converse(modelId=SONNET, messages=HELLO)) == REVERSED  # on demand on AWS too


@pytest.mark.parametrize("model_id,expected", [
    (f"eu.{SONNET}", "ValidationException"),  # a geography us-east-1 is not in
    (f"us.{LLAMA}", "ValidationException"),
    ("us.anthropic.claude-unknown-v1:0", "ValidationException"),
    (system_arn("us.anthropic.claude-unknown-v1:0"), "ValidationException"),
    (system_arn(f"us.{SONNET}", account=B), "ResourceNotFoundException"),
    (f"arn:aws:bedrock:us-east-1:{A}:application-inference-profile/abcdefghijkl", "ResourceNotFoundException"),
])
def test_unknown_profiles_in_runtime_calls(runtime, model_id, expected):
    code, status, message = error_of(runtime.converse, modelId=model_id, messages=HELLO)
    assert (code, status) == (expected, 400 if expected == "ValidationException" else 404)
    if expected == "ValidationException":
        assert message == "The provided model identifier is invalid."


def test_a_batch_job_through_a_profile(server, bedrock, app_profile):
    records = [{"recordId": f"r{i}", "modelInput": {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
        "messages": [{"role": "user", "content": f"record {i} says hello"}]}} for i in range(3)]
    prefix = unique("in")
    (server.folder(IN_BUCKET) / prefix).mkdir(parents=True)
    (server.folder(IN_BUCKET) / prefix / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server.folder(OUT_BUCKET)
    for model_id in (f"us.{CLAUDE_37}", app_profile):
        arn = bedrock.create_model_invocation_job(
            jobName=unique("profile-batch"), roleArn=ROLE, modelId=model_id,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{IN_BUCKET}/{prefix}/"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT_BUCKET}/"}})["jobArn"]
        job = wait_until(lambda: (j := bedrock.get_model_invocation_job(jobIdentifier=arn))["status"] in FINAL and j,
                         120, what=f"{arn} to end")
        assert job["status"] == "Completed" and job["modelId"] == model_id, job
        out = server.folder(OUT_BUCKET) / arn.rsplit("/", 1)[1] / "records.jsonl.out"
        lines = {line["recordId"]: line for line in map(json.loads, out.read_text().splitlines())}
        assert {k: v["modelOutput"]["content"][0]["text"] for k, v in lines.items()} == {
            f"r{i}": f"hello says {i} record" for i in range(3)}
    code, _, message = error_of(bedrock.create_model_invocation_job, jobName=unique("bad"), roleArn=ROLE,
                                modelId=f"eu.{SONNET}",
                                inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{IN_BUCKET}/{prefix}/"}},
                                outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT_BUCKET}/"}})
    assert (code, message) == ("ValidationException", "The provided model identifier is invalid.")
