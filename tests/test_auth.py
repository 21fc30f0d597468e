"""Authentication with a credentials file: every request's SigV4 signature (Authorization header or
presigned query) is verified, with AWS's errors and status codes for a missing, unknown, wrong,
tampered or out-of-time signature, on both codecs (bedrock and bedrock-runtime, event streams too);
open mode without the file; secrets never in the server's log or answers."""

import datetime
import json
import os
import subprocess
import uuid
from unittest import mock

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import Server

KEY, SECRET, ACCOUNT = "AKIAAUTHTESTONE", "s3cr3t-Auth-Key-0ne/xyz+", "111111111111"
OTHER_KEY, OTHER_SECRET, OTHER_ACCOUNT = "AKIAAUTHTESTTWO", "s3cr3t-Auth-Key-Tw0/abc+", "222222222222"
TOKEN_KEY, TOKEN_SECRET, TOKEN = "ASIAAUTHTESTTMP", "s3cr3t-Temp-Key/qrs+", "session-token-value-1"
SECRETS = (SECRET, OTHER_SECRET, TOKEN_SECRET, TOKEN)
TEXT_MODEL = "bedrock-local.test-text-v1:0"
SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({
        KEY: {"secretAccessKey": SECRET, "accountId": ACCOUNT},
        OTHER_KEY: {"secretAccessKey": OTHER_SECRET, "accountId": OTHER_ACCOUNT},
        TOKEN_KEY: {"secretAccessKey": TOKEN_SECRET, "accountId": ACCOUNT, "sessionToken": TOKEN},
    }))
    server = Server(root / "data", workers=0, extra_args=("--serving-workers", "1", "--credentials-file",
                                                           str(credentials), "--log-level", "debug")).start()
    yield server
    server.stop()


def client(server, service="bedrock", key=KEY, secret=SECRET, token=None, region="us-east-1"):
    return server.client(region, key, service, secret_key=secret, session_token=token, read_timeout=30)


def at(moment: datetime.datetime):
    """Sign as if the client's clock read `moment` (botocore's clock, not the server's)."""
    return mock.patch("botocore.auth.get_current_datetime", return_value=moment.replace(tzinfo=None))


def signed_headers(server, method, path, body=b"", key=KEY, secret=SECRET, service="bedrock", region="us-east-1",
                   headers=None) -> dict:
    request = AWSRequest(method=method, url=server.url + path, data=body,
                         headers={"Content-Type": "application/json", **(headers or {})})
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    return dict(request.headers.items())


def send(server, method, path, body=b"", headers=None) -> httpx.Response:
    return httpx.request(method, server.url + path, content=body, headers=headers or {}, timeout=30)


def assert_error(response: httpx.Response, code: str, status: int, message: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-ErrorType"] == code
    assert response.headers["x-amzn-RequestId"]
    body = response.json()
    if message is not None:
        assert body["message"] == message
    for secret in SECRETS:
        assert secret not in response.text
    return body["message"]


def client_error(call, *args, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as raised:
        call(*args, **kwargs)
    return raised.value


# ---- the right signature works, on both codecs -------------------------------------------------
def test_signed_requests_of_a_known_key_are_answered(server):
    bedrock = client(server)
    assert bedrock.list_foundation_models()["modelSummaries"]
    assert bedrock.list_custom_models()["modelSummaries"] == []
    runtime = client(server, "bedrock-runtime")
    answer = runtime.converse(modelId=TEXT_MODEL, messages=[{"role": "user", "content": [{"text": "one two"}]}])
    assert answer["output"]["message"]["content"][0]["text"] == "two one"
    events = runtime.converse_stream(modelId=TEXT_MODEL, messages=[{"role": "user", "content": [{"text": "a b"}]}])
    assert [e for e in events["stream"] if "messageStop" in e]


def test_a_signed_request_with_a_bad_body_gets_the_validation_error(server):
    path = "/model-invocation-job"
    body = json.dumps({"jobName": "x"}).encode()
    response = send(server, "POST", path, body, signed_headers(server, "POST", path, body))
    assert_error(response, "ValidationException", 400)


def test_the_region_comes_from_the_credential_scope(server):
    west = client(server, region="eu-west-3")
    detail = west.get_foundation_model(modelIdentifier=TEXT_MODEL)["modelDetails"]
    assert detail["modelArn"] == f"arn:aws:bedrock:eu-west-3::foundation-model/{TEXT_MODEL}"


def test_temporary_credentials_need_their_session_token(server):
    assert client(server, key=TOKEN_KEY, secret=TOKEN_SECRET, token=TOKEN).list_custom_models()
    for token in (None, "another-token"):
        error = client_error(client(server, key=TOKEN_KEY, secret=TOKEN_SECRET, token=token).list_custom_models)
        assert error.response["Error"]["Code"] == "UnrecognizedClientException"
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # a long-term key does not take a token
    error = client_error(client(server, token="stray-token").list_custom_models)
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"


# ---- wrong, unknown, missing ---------------------------------------------------------------------
@pytest.mark.parametrize("service", ["bedrock", "bedrock-runtime"])
def test_a_wrong_secret_is_an_invalid_signature(server, service):
    wrong = client(server, service, secret="not-the-secret")
    if service == "bedrock":
        calls = [lambda: wrong.list_foundation_models(), lambda: wrong.get_custom_model(modelIdentifier="m")]
    else:
        messages = [{"role": "user", "content": [{"text": "hi"}]}]
        calls = [lambda: wrong.converse(modelId=TEXT_MODEL, messages=messages),
                 lambda: wrong.converse_stream(modelId=TEXT_MODEL, messages=messages)]
    for call in calls:
        error = client_error(call)
        assert error.response["Error"]["Code"] == "InvalidSignatureException"
        assert error.response["Error"]["Message"] == SIGNATURE_MISMATCH
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("service", ["bedrock", "bedrock-runtime"])
def test_an_unknown_key_is_an_unrecognized_client(server, service):
    stranger = client(server, service, key="AKIANOBODYKNOWS", secret=SECRET)
    call = (stranger.list_custom_models if service == "bedrock" else
            lambda: stranger.invoke_model(modelId=TEXT_MODEL, body=b'{"prompt": "a"}'))
    error = client_error(call)
    assert error.response["Error"]["Code"] == "UnrecognizedClientException"
    assert error.response["Error"]["Message"] == "The security token included in the request is invalid."
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/foundation-models", b""),
    ("POST", "/model-invocation-job", b'{"jobName": 3}'),        # would be a validation error
    ("GET", "/no/such/operation", b""),                           # would be an unknown operation
    ("POST", f"/model/{TEXT_MODEL}/converse", b'{"messages": []}'),  # bedrock-runtime
])
def test_no_signature_is_a_missing_authentication_token(server, method, path, body):
    response = send(server, method, path, body, {"Content-Type": "application/json"})
    assert_error(response, "MissingAuthenticationTokenException", 403, "Missing Authentication Token")


def test_an_unsigned_boto3_client_gets_missing_token(server):
    from botocore import UNSIGNED

    unsigned = boto3.client("bedrock", endpoint_url=server.url, region_name="us-east-1",
                            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    error = client_error(unsigned.list_custom_models)
    assert error.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("authorization,says", [
    ("AWS4-HMAC-SHA256 Credential=AKIAAUTHTESTONE/20240101/us-east-1/bedrock/aws4_request",
     "Authorization header requires 'Signature' parameter."),
    ("AWS AKIAAUTHTESTONE:c2lnbmF0dXJl", "Unsupported authorization type"),
    ("AWS4-HMAC-SHA256 Credential=AKIAAUTHTESTONE/us-east-1/bedrock/aws4_request, SignedHeaders=host, "
     "Signature=00", "Credential must have the form"),
])
def test_an_incomplete_signature(server, authorization, says):
    response = send(server, "GET", "/foundation-models", headers={"Authorization": authorization,
                                                                  "X-Amz-Date": "20240101T000000Z"})
    assert says in assert_error(response, "IncompleteSignatureException", 400)


def test_a_bearer_token_is_not_a_known_credential(server):
    response = send(server, "GET", "/foundation-models", headers={"Authorization": "Bearer bedrock-api-key-abc"})
    assert_error(response, "UnrecognizedClientException", 403, "The security token included in the request is invalid.")


def test_a_signature_for_another_service_is_refused(server):
    headers = signed_headers(server, "GET", "/foundation-models", service="bedrock-runtime")
    message = assert_error(send(server, "GET", "/foundation-models", headers=headers), "InvalidSignatureException", 403)
    assert "'bedrock'" in message


# ---- tampering ---------------------------------------------------------------------------------
def test_a_changed_body_path_query_or_header_breaks_the_signature(server):
    path = "/model-invocation-job"
    body = json.dumps({"jobName": "a"}).encode()
    headers = signed_headers(server, "POST", path, body)
    assert_error(send(server, "POST", path, body.replace(b'"a"', b'"b"'), headers), "InvalidSignatureException", 403,
                 SIGNATURE_MISMATCH)
    assert_error(send(server, "POST", "/custom-models/create-custom-model", body, headers),
                 "InvalidSignatureException", 403, SIGNATURE_MISMATCH)
    listing = "/custom-models?maxResults=5"
    headers = signed_headers(server, "GET", listing)
    assert send(server, "GET", listing, headers=headers).status_code == 200
    assert_error(send(server, "GET", "/custom-models?maxResults=6", headers=headers), "InvalidSignatureException", 403)
    assert_error(send(server, "GET", listing, headers={**headers, "Content-Type": "text/plain"}),
                 "InvalidSignatureException", 403)
    # someone else's key with this key's signature
    assert_error(send(server, "GET", listing, headers={
        **headers, "Authorization": headers["Authorization"].replace(KEY, OTHER_KEY)}), "InvalidSignatureException", 403)


def test_the_declared_body_hash_must_be_the_bodys(server):
    path = "/model-invocation-job"
    body = b'{"jobName": "a"}'
    for declared in ("UNSIGNED-PAYLOAD", "0" * 64):
        headers = signed_headers(server, "POST", path, body, headers={"X-Amz-Content-SHA256": declared})
        assert_error(send(server, "POST", path, body, headers), "InvalidSignatureException", 403)
    import hashlib

    headers = signed_headers(server, "POST", path, body,
                             headers={"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    assert_error(send(server, "POST", path, body, headers), "ValidationException", 400)  # signed right: validated


def test_percent_encoded_paths_verify(server):
    """An ARN in a path label is percent-encoded by boto3 and signed double-encoded (as for every non-S3
    service); the server verifies the path it received, byte for byte."""
    arn = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:custom-model/imported/abcdefghijkl"
    error = client_error(client(server).get_custom_model, modelIdentifier=arn)
    assert error.response["Error"]["Code"] == "ResourceNotFoundException"
    error = client_error(client(server).get_custom_model, modelIdentifier="name with spaces+plus")
    assert error.response["Error"]["Code"] in ("ResourceNotFoundException", "ValidationException")


# ---- time --------------------------------------------------------------------------------------
@pytest.mark.parametrize("minutes,code,says", [
    (-6, "InvalidSignatureException", "Signature expired"),
    (6, "InvalidSignatureException", "Signature not yet current"),
    (-4, None, None),
    (4, None, None),
])
def test_the_clock_skew_window_is_five_minutes(server, minutes, code, says):
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    bedrock = client(server)
    with at(moment):
        if code is None:
            assert bedrock.list_custom_models()["modelSummaries"] == []
            return
        error = client_error(bedrock.list_custom_models)
    assert error.response["Error"]["Code"] == code
    assert error.response["Error"]["Message"].startswith(says)
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# ---- presigned URLs ----------------------------------------------------------------------------
def test_presigned_urls(server):
    bedrock = client(server)
    url = bedrock.generate_presigned_url("list_custom_models", Params={"maxResults": 3, "nameContains": "a-b"},
                                         ExpiresIn=120)
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200 and answer.json()["modelSummaries"] == []
    arn = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:custom-model/imported/abcdefghijkl"
    url = bedrock.generate_presigned_url("get_custom_model", Params={"modelIdentifier": arn}, ExpiresIn=120)
    assert_error(httpx.get(url, timeout=30), "ResourceNotFoundException", 404)
    # tampered: another query value, another signature, another key's secret
    url = bedrock.generate_presigned_url("list_custom_models", Params={"maxResults": 3}, ExpiresIn=120)
    assert_error(httpx.get(url.replace("maxResults=3", "maxResults=4"), timeout=30), "InvalidSignatureException", 403)
    assert_error(httpx.get(url[:-4] + "0000", timeout=30), "InvalidSignatureException", 403, SIGNATURE_MISMATCH)
    forged = client(server, key=KEY, secret=OTHER_SECRET).generate_presigned_url(
        "list_custom_models", Params={"maxResults": 3}, ExpiresIn=120)
    assert_error(httpx.get(forged, timeout=30), "InvalidSignatureException", 403, SIGNATURE_MISMATCH)
    unknown = client(server, key="AKIANOBODYKNOWS").generate_presigned_url("list_custom_models", ExpiresIn=120)
    assert_error(httpx.get(unknown, timeout=30), "UnrecognizedClientException", 403)


def test_an_expired_presigned_url_is_refused(server):
    bedrock = client(server)
    with at(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=3)):
        stale = bedrock.generate_presigned_url("list_custom_models", ExpiresIn=60)
        fresh = bedrock.generate_presigned_url("list_custom_models", ExpiresIn=600)
    message = assert_error(httpx.get(stale, timeout=30), "InvalidSignatureException", 403)
    assert message.startswith("Signature expired")
    assert httpx.get(fresh, timeout=30).status_code == 200
    with at(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)):
        early = bedrock.generate_presigned_url("list_custom_models", ExpiresIn=600)
    assert assert_error(httpx.get(early, timeout=30), "InvalidSignatureException", 403).startswith(
        "Signature not yet current")


# ---- the AWS CLI -------------------------------------------------------------------------------
def test_the_aws_cli_signs_and_is_refused_with_a_wrong_secret(server):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_MAX_ATTEMPTS": "1"}
    env.pop("AWS_SESSION_TOKEN", None)
    command = ["aws", "bedrock", "list-custom-models", "--endpoint-url", server.url, "--output", "json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["modelSummaries"] == []
    done = subprocess.run(command, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "InvalidSignatureException" in done.stderr


# ---- secrets -----------------------------------------------------------------------------------
def test_secrets_never_reach_the_log(server):
    """After good and bad requests of every kind (this module's tests ran before this one), the
    server's log (at debug level) holds no secret key, no session token and no Authorization header."""
    client(server).list_custom_models()
    client_error(client(server, secret="wrong").list_custom_models)
    client_error(client(server, key=TOKEN_KEY, secret=TOKEN_SECRET, token="bad").list_custom_models)
    headers = signed_headers(server, "GET", "/foundation-models")
    log = server.log.read_text()
    assert "authentication on" in log
    for secret in SECRETS:
        assert secret not in log
    assert headers["Authorization"] not in log
    assert headers["Authorization"].split("Signature=")[1] not in log
    assert "AWS4-HMAC-SHA256 Credential=" not in log


# ---- start-up ----------------------------------------------------------------------------------
def test_open_mode_is_said_at_start_up_and_takes_any_request(make_server):
    server = make_server("open", workers=0, extra_args=("--serving-workers", "0"))
    response = httpx.get(server.url + "/foundation-models", timeout=30)
    assert response.status_code == 200
    wrong = client(server, secret="anything")
    assert wrong.list_custom_models()["modelSummaries"] == []
    assert "open mode" in server.log.read_text()


@pytest.mark.parametrize("content,says", [
    ("{not json", "not valid JSON"),
    ('{"AKIAX": {"secretAccessKey": "hidden-secret-1", "accountId": "12"}}', "accountId must be a string of 12 digits"),
    ('{"AKIAX": {"secretAccessKey": "hidden-secret-1", "accountId": "111111111111", "buckets": ["Bad_Bucket"]}}',
     "bucket name"),
    ('{"AKIAX": {"secretAccessKey": "hidden-secret-1", "accountId": "111111111111", "buckets": ["b-1"]}, '
     '"AKIAY": {"secretAccessKey": "hidden-secret-2", "accountId": "222222222222", "buckets": ["b-1"]}}',
     "a bucket has one owner"),
])
def test_a_bad_credentials_file_stops_the_server_without_showing_secrets(tmp_path, content, says):
    credentials = tmp_path / f"{uuid.uuid4().hex}.json"
    credentials.write_text(content)
    server = Server(tmp_path / "bad", workers=0, extra_args=("--serving-workers", "0", "--credentials-file",
                                                             str(credentials)))
    with pytest.raises(RuntimeError) as raised:
        server.start()
    server.stop()
    assert says in str(raised.value)
    assert "hidden-secret" not in server.log.read_text()
