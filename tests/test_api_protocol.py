"""The wire protocol, as boto3, the AWS CLI and a raw HTTP client see it: status codes from the
model, the AWS error envelope, validation messages in AWS's wording, timestamps, path labels,
operations we do not serve, identity (region from SigV4, account from the access key)."""

import datetime
import json
import os
import re
import subprocess
import sys
import uuid
from urllib.parse import quote

import boto3
import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bedrock_local.service import load_operations
from bedrock_local.service.aws_model import paginators
from bedrock_local.service.common import filter_rules
from conftest import upload_folder, wait_until

MODEL = botocore.session.get_session().get_service_model("bedrock")
CUSTOM_MODEL_ARN = re.compile(MODEL.shape_for("CustomModelArn").metadata["pattern"])
COPY_JOB_ARN = re.compile(MODEL.shape_for("ModelCopyJobArn").metadata["pattern"])
ISO_8601_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
TEXT_MODEL = "huggingface.smollm2-135m-instruct-v1:0"
EMBEDDING_MODEL = "sentence-transformers.all-minilm-l6-v2-v1:0"


# ---- helpers ---------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def client(server, region="us-east-1", access_key="AKIDEXAMPLE", secret="secret", validate=False):
    """A boto3 client that never waits long: an answer that does not come in 15 s is a failure."""
    return server.client(region, access_key, validate=validate, secret_key=secret, connect_timeout=5,
                         read_timeout=15)


def signed(server, method: str, path: str, body: bytes = b"", region: str = "us-east-1",
           access_key: str = "AKIDEXAMPLE", secret: str = "secret") -> httpx.Response:
    """A raw HTTP request signed with SigV4 as boto3 would sign it; `path` is sent as given (already encoded)."""
    headers = {"Content-Type": "application/json"} if body else {}
    request = AWSRequest(method=method, url=server.url + path, data=body, headers=headers)
    SigV4Auth(Credentials(access_key, secret), "bedrock", region).add_auth(request)
    return httpx.request(method, server.url + path, content=body, headers=dict(request.headers.items()),
                         timeout=15)


def empty_source(server, bucket="empty-src") -> str:
    """An s3:// folder that exists in the folder store but holds nothing (its import fails, the model stays)."""
    folder = server.folder(bucket) / "nothing"
    folder.mkdir(parents=True, exist_ok=True)
    return f"s3://{bucket}/nothing/"


def create_model(bedrock, server, name=None, tags=None) -> tuple[str, dict]:
    name = name or unique("m")
    kwargs = {"modelTags": tags} if tags is not None else {}
    response = bedrock.create_custom_model(
        modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": empty_source(server)}}, **kwargs)
    return name, response


def error_of(excinfo) -> tuple[str, int, str]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


@pytest.fixture(scope="module")
def loose(server):
    """A client with boto3's own validation off: it sends what boto3 would refuse."""
    return client(server)


# ---- status codes from the model's responseCode ----------------------------------------------
def test_create_custom_model_answers_202_with_a_modelled_arn(server, bedrock):
    _, response = create_model(bedrock, server)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    arn = response["modelArn"]
    assert CUSTOM_MODEL_ARN.fullmatch(arn), arn
    assert arn.startswith("arn:aws:bedrock:us-east-1:123456789012:custom-model/imported/")


@pytest.fixture(scope="module")
def active_west_model(server, tiny_model_dir):
    """An Active imported model in us-west-2 (the source of copy jobs into us-east-1)."""
    west = server.client("us-west-2")
    uri = upload_folder(server, "protocol-src", "tiny", tiny_model_dir)
    name = unique("west")
    arn = west.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    model = wait_until(lambda: (lambda m: m if m["modelStatus"] != "Creating" else None)(
        west.get_custom_model(modelIdentifier=arn)), timeout=120, what="the import to end")
    assert model["modelStatus"] == "Active", model.get("failureMessage")
    return arn


@pytest.fixture(scope="module")
def copy_job(bedrock, active_west_model):
    response = bedrock.create_model_copy_job(sourceModelArn=active_west_model, targetModelName=unique("copy"))
    return response


def test_create_model_copy_job_answers_201(copy_job):
    assert copy_job["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert COPY_JOB_ARN.fullmatch(copy_job["jobArn"]), copy_job["jobArn"]
    assert copy_job["jobArn"].startswith("arn:aws:bedrock:us-east-1:123456789012:model-copy-job/")


def test_get_model_copy_job_by_full_arn_routes_through_the_encoded_path_label(server, bedrock, copy_job,
                                                                               active_west_model):
    job = bedrock.get_model_copy_job(jobArn=copy_job["jobArn"])
    assert job["jobArn"] == copy_job["jobArn"]
    assert job["sourceModelArn"] == active_west_model
    # the same through the wire: ':' and '/' of the ARN percent-encoded in one path segment
    raw = signed(server, "GET", "/model-copy-jobs/" + quote(copy_job["jobArn"], safe=""))
    assert raw.status_code == 200, raw.text
    assert raw.json()["jobArn"] == copy_job["jobArn"]


def test_get_custom_model_by_full_arn_in_the_path(server, bedrock):
    name, response = create_model(bedrock, server)
    by_arn = bedrock.get_custom_model(modelIdentifier=response["modelArn"])
    assert by_arn["modelName"] == name and by_arn["modelArn"] == response["modelArn"]
    raw = signed(server, "GET", "/custom-models/" + quote(response["modelArn"], safe=""))
    assert raw.status_code == 200, raw.text
    assert raw.json()["modelName"] == name


# ---- the error envelope on the wire -----------------------------------------------------------
@pytest.fixture(scope="module")
def model_with_150_tags(server, bedrock):
    tags = [{"key": f"k{i}", "value": str(i)} for i in range(150)]
    name, response = create_model(bedrock, server, tags=tags)
    return name, response["modelArn"]


def _envelope_case(case, server, model_with_150_tags):
    name, arn = model_with_150_tags
    if case == "ValidationException":
        return signed(server, "GET", "/custom-models?maxResults=0")
    if case == "ResourceNotFoundException":
        return signed(server, "GET", "/custom-models/no-such-model")
    if case == "ConflictException":
        body = {"modelName": name, "modelSourceConfig": {"s3DataSource": {"s3Uri": empty_source(server)}}}
        return signed(server, "POST", "/custom-models/create-custom-model", json.dumps(body).encode())
    if case == "TooManyTagsException":
        body = {"resourceARN": arn, "tags": [{"key": f"new{i}", "value": "v"} for i in range(60)]}
        return signed(server, "POST", "/tagResource", json.dumps(body).encode())
    raise AssertionError(case)


@pytest.mark.parametrize("case,status", [
    ("ValidationException", 400),
    ("ResourceNotFoundException", 404),
    ("ConflictException", 400),
    ("TooManyTagsException", 400),
])
def test_error_envelope_on_the_wire(server, model_with_150_tags, case, status):
    response = _envelope_case(case, server, model_with_150_tags)
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-ErrorType"] == case
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"].strip()
    # the status the model gives the error shape
    assert MODEL.shape_for(case).metadata["error"]["httpStatusCode"] == status


def test_boto3_raises_the_modelled_exception_classes(server, bedrock, loose, model_with_150_tags):
    name, arn = model_with_150_tags
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.list_custom_models(maxResults=0)
    assert error_of(excinfo)[:2] == ("ValidationException", 400)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as excinfo:
        bedrock.get_custom_model(modelIdentifier="no-such-model")
    assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(bedrock.exceptions.ConflictException) as excinfo:
        create_model(bedrock, server, name=name)
    assert error_of(excinfo)[:2] == ("ConflictException", 400)
    assert name in error_of(excinfo)[2]
    with pytest.raises(bedrock.exceptions.TooManyTagsException) as excinfo:
        bedrock.tag_resource(resourceARN=arn, tags=[{"key": f"more{i}", "value": "v"} for i in range(60)])
    assert error_of(excinfo)[:2] == ("TooManyTagsException", 400)
    assert "200" in error_of(excinfo)[2]
    assert len(bedrock.list_tags_for_resource(resourceARN=arn)["tags"]) == 150


# ---- validation messages in AWS's wording -----------------------------------------------------
NAME_PATTERN = MODEL.shape_for("CustomModelName").metadata["pattern"]


@pytest.mark.parametrize("model_name", ["good-name!", "!good", "two words"])
def test_pattern_is_a_full_match(server, loose, model_name):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.create_custom_model(modelName=model_name,
                                  modelSourceConfig={"s3DataSource": {"s3Uri": empty_source(server)}})
    code, status, message = error_of(excinfo)
    assert status == 400
    assert message == (f"1 validation error detected: Value '{model_name}' at 'modelName' failed to satisfy "
                       f"constraint: Member must satisfy regular expression pattern: {NAME_PATTERN}")
    assert loose.list_custom_models(nameContains="good")["modelSummaries"] == []


def test_max_length(server, loose):
    name = "a" * 64
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": empty_source(server)}})
    message = error_of(excinfo)[2]
    assert re.match(r"\d+ validation errors? detected: ", message), message
    assert (f"Value '{name}' at 'modelName' failed to satisfy constraint: "
            f"Member must have length less than or equal to 63") in message
    # 63 is fine
    _, response = create_model(loose, server, name="b" * 63)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202


@pytest.mark.parametrize("value,constraint", [
    (0, "Member must have value greater than or equal to 1"),
    (1001, "Member must have value less than or equal to 1000"),
])
def test_range(loose, value, constraint):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.list_custom_models(maxResults=value)
    assert error_of(excinfo)[2] == (f"1 validation error detected: Value '{value}' at 'maxResults' failed to "
                                    f"satisfy constraint: {constraint}")
    for bound in (1, 1000):
        assert "modelSummaries" in loose.list_custom_models(maxResults=bound)


def test_enum(loose):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.list_custom_models(sortOrder="Sideways")
    assert error_of(excinfo)[2] == ("1 validation error detected: Value 'Sideways' at 'sortOrder' failed to "
                                    "satisfy constraint: Member must satisfy enum value set: [Ascending, Descending]")


def test_required(server, loose):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.create_custom_model(modelSourceConfig={"s3DataSource": {"s3Uri": empty_source(server)}})
    assert error_of(excinfo)[2] == ("1 validation error detected: Value null at 'modelName' failed to satisfy "
                                    "constraint: Member must not be null")


def test_malformed_arn_is_a_validation_error(loose):
    bad = "arn:aws:bedrock:us-east-1:123456789012:model-copy-job/SHORT"
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.get_model_copy_job(jobArn=bad)
    code, status, message = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert f"Value '{bad}' at 'jobArn' failed to satisfy constraint: Member must satisfy regular expression pattern" \
        in message


@pytest.mark.parametrize("call", [
    lambda c: c.get_custom_model(modelIdentifier="never-created"),
    lambda c: c.get_custom_model(modelIdentifier="arn:aws:bedrock:us-east-1:123456789012:custom-model/imported/abcdefabcdef"),
    lambda c: c.delete_custom_model(modelIdentifier="never-created"),
    lambda c: c.get_model_copy_job(jobArn="arn:aws:bedrock:us-east-1:123456789012:model-copy-job/abcdefabcdef"),
    lambda c: c.get_foundation_model(modelIdentifier="nobody.no-model-v1:0"),
    lambda c: c.list_tags_for_resource(
        resourceARN="arn:aws:bedrock:us-east-1:123456789012:custom-model/imported/abcdefabcdef"),
], ids=["model-by-name", "model-by-arn", "delete-model", "copy-job", "foundation-model", "tags"])
def test_unknown_resources_are_not_found(loose, call):
    with pytest.raises(loose.exceptions.ResourceNotFoundException) as excinfo:
        call(loose)
    assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404)


# ---- timestamps -------------------------------------------------------------------------------
def test_timestamps_are_iso8601_on_the_wire_and_aware_datetimes_in_boto3(server, bedrock):
    before = datetime.datetime.now(datetime.timezone.utc)
    name, _ = create_model(bedrock, server)
    raw = signed(server, "GET", f"/custom-models/{name}")
    assert raw.status_code == 200, raw.text
    text = raw.json()["creationTime"]
    assert isinstance(text, str) and ISO_8601_UTC.fullmatch(text), text
    parsed = bedrock.get_custom_model(modelIdentifier=name)["creationTime"]
    assert isinstance(parsed, datetime.datetime) and parsed.tzinfo is not None
    assert parsed == datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert before - datetime.timedelta(seconds=5) <= parsed <= datetime.datetime.now(datetime.timezone.utc) \
        + datetime.timedelta(seconds=5)
    listed = [m for m in bedrock.list_custom_models(nameContains=name)["modelSummaries"]]
    assert [m["creationTime"] for m in listed] == [parsed]


def test_timestamp_filters_are_parsed(server, bedrock):
    name, _ = create_model(bedrock, server)
    created = bedrock.get_custom_model(modelIdentifier=name)["creationTime"]
    after = bedrock.list_custom_models(nameContains=name, creationTimeAfter=created - datetime.timedelta(seconds=1))
    assert [m["modelName"] for m in after["modelSummaries"]] == [name]
    later = bedrock.list_custom_models(nameContains=name, creationTimeAfter=created + datetime.timedelta(seconds=1))
    assert later["modelSummaries"] == []


def test_every_filter_of_a_served_list_operation_has_a_rule():
    """The List operations take their filters from the service model (service/common.py, list_resources):
    a filter member that a newer botocore adds, and no module compares yet, is found here."""
    operations = load_operations()
    paginated = [name for name in operations if name in paginators("bedrock")]
    assert len(paginated) == 10
    for name in paginated:
        module = sys.modules[operations[name].__module__]
        rules = filter_rules(name, getattr(module, "FILTERS", {}))
        assert [member for member, rule in rules.items() if rule is None] == [], name


# ---- what we do not serve --------------------------------------------------------------------
@pytest.mark.parametrize("call,operation", [
    (lambda c: c.get_guardrail(guardrailIdentifier="abc123"), "GetGuardrail"),
    (lambda c: c.list_guardrails(), "ListGuardrails"),
    (lambda c: c.list_prompt_routers(), "ListPromptRouters"),
])
def test_operations_we_do_not_serve_answer_a_modelled_error(loose, call, operation):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        call(loose)
    code, status, message = error_of(excinfo)
    assert status == 400
    assert "not supported" in message and operation in message


def test_unknown_path_is_404_in_the_envelope(server):
    response = signed(server, "GET", "/nope")
    assert response.status_code == 404
    assert response.headers.get("x-amzn-ErrorType")
    assert response.json()["message"]
    unsigned = httpx.get(server.url + "/nope/deeper?x=1", timeout=15)
    assert unsigned.status_code == 404 and unsigned.headers.get("x-amzn-ErrorType")


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "DELETE"])
def test_wrong_method_answers_in_the_envelope(server, method):
    response = httpx.request(method, server.url + "/foundation-models", timeout=15)
    assert response.status_code == 404, response.text
    assert response.headers.get("x-amzn-ErrorType") == "UnknownOperationException"
    assert "foundation-models" in response.json()["message"]


@pytest.mark.parametrize("query,member,kind", [
    ("maxResults=abc", "maxResults", "integer"),
    ("isOwned=maybe", "isOwned", "boolean"),
    ("creationTimeAfter=yesterday", "creationTimeAfter", "timestamp"),
])
def test_query_members_of_the_wrong_type(server, query, member, kind):
    response = signed(server, "GET", f"/custom-models?{query}")
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-ErrorType"] == "ValidationException"
    value = query.split("=", 1)[1]
    assert response.json()["message"] == (f"1 validation error detected: Value '{value}' at '{member}' failed to "
                                           f"satisfy constraint: Member must be of type {kind}")


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe"])
def test_bad_bodies_are_validation_errors(server, body):
    response = signed(server, "POST", "/custom-models/create-custom-model", body)
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-ErrorType"] == "ValidationException"
    assert response.json()["message"]


def test_member_of_the_wrong_type_is_a_validation_error(server):
    body = {"modelName": ["a", "list"], "modelSourceConfig": {"s3DataSource": {"s3Uri": empty_source(server)}}}
    response = signed(server, "POST", "/custom-models/create-custom-model", json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-ErrorType"] == "ValidationException"
    assert "modelName" in response.json()["message"]


# ---- identity: region from SigV4, account from the access key --------------------------------
def test_region_comes_from_the_sigv4_scope(server):
    east, west = client(server, "us-east-1"), client(server, "us-west-2")
    name, response = create_model(east, server)
    arn = response["modelArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:")
    assert east.get_custom_model(modelIdentifier=name)["modelArn"] == arn
    for identifier in (name, arn):
        with pytest.raises(west.exceptions.ResourceNotFoundException):
            west.get_custom_model(modelIdentifier=identifier)
    assert west.list_custom_models(nameContains=name)["modelSummaries"] == []
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.list_tags_for_resource(resourceARN=arn)
    # the same name is free in the other region
    _, other = create_model(west, server, name=name)
    assert other["modelArn"].startswith("arn:aws:bedrock:us-west-2:")


def test_region_comes_from_a_presigned_url(server):
    west = client(server, "us-west-2")
    name, _ = create_model(west, server)
    url = west.generate_presigned_url("list_custom_models", Params={"nameContains": name})
    response = httpx.get(url, timeout=15)
    assert response.status_code == 200, response.text
    assert [m["modelName"] for m in response.json()["modelSummaries"]] == [name]
    east_url = client(server, "us-east-1").generate_presigned_url("list_custom_models", Params={"nameContains": name})
    assert httpx.get(east_url, timeout=15).json()["modelSummaries"] == []


def test_accounts_come_from_the_credentials_file(make_server, tmp_path):
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({
        "AKIAONE": {"secretAccessKey": "s1", "accountId": "111111111111"},
        "AKIATWO": {"secretAccessKey": "s2", "accountId": "222222222222"},
    }))
    server = make_server("accounts", workers=0, extra_args=("--credentials-file", str(credentials)))
    one = client(server, access_key="AKIAONE", secret="s1")
    two = client(server, access_key="AKIATWO", secret="s2")
    name, response = create_model(one, server)
    arn = response["modelArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:111111111111:custom-model/imported/")
    assert one.get_custom_model(modelIdentifier=arn)["modelArn"] == arn
    assert [m["ownerAccountId"] for m in one.list_custom_models()["modelSummaries"]] == ["111111111111"]
    for identifier in (name, arn):
        with pytest.raises(two.exceptions.ResourceNotFoundException):
            two.get_custom_model(modelIdentifier=identifier)
    with pytest.raises(two.exceptions.ResourceNotFoundException):
        two.list_tags_for_resource(resourceARN=arn)
    assert two.list_custom_models()["modelSummaries"] == []
    _, mine = create_model(two, server, name=name)
    assert mine["modelArn"].startswith("arn:aws:bedrock:us-east-1:222222222222:")
    assert [m["modelArn"] for m in one.list_custom_models()["modelSummaries"]] == [arn]


# ---- clients configured the usual ways ---------------------------------------------------------
def test_endpoint_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    plain = boto3.client("bedrock", region_name="eu-west-1")
    ids = {m["modelId"] for m in plain.list_foundation_models()["modelSummaries"]}
    assert {TEXT_MODEL, EMBEDDING_MODEL} <= ids
    detail = plain.get_foundation_model(modelIdentifier=TEXT_MODEL)["modelDetails"]
    assert detail["modelArn"] == f"arn:aws:bedrock:eu-west-1::foundation-model/{TEXT_MODEL}"


def _aws(server, *args):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_MAX_ATTEMPTS": "1"}
    env.pop("AWS_ENDPOINT_URL_BEDROCK", None)
    return subprocess.run(["aws", "bedrock", *args, "--endpoint-url", server.url, "--region", "us-east-1",
                           "--output", "json"], env=env, capture_output=True, text=True, timeout=60)


def test_aws_cli_lists_foundation_models(server):
    result = _aws(server, "list-foundation-models")
    assert result.returncode == 0, result.stderr
    ids = {m["modelId"] for m in json.loads(result.stdout)["modelSummaries"]}
    assert {TEXT_MODEL, EMBEDDING_MODEL} <= ids


def test_aws_cli_reports_a_modelled_error(server):
    result = _aws(server, "get-custom-model", "--model-identifier", "nope")
    assert result.returncode != 0
    assert "ResourceNotFoundException" in result.stderr
