"""Model invocation logging through boto3 against real servers: Put/Get/Delete (answers checked against
the output shapes); runtime calls (Converse, InvokeModel and both streams) delivered as AWS's log
records, gzip'd JSON lines under AWS's key layout, read back from the folder store and from an S3
endpoint (moto); the delivery flags honoured; a missing bucket does not fail the call and the record
lands once the bucket exists; the cloudWatchConfig file; a bucket of another account refused.
Each test works in a region of its own: the configuration is per account and region."""

import datetime
import gzip
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from conftest import Server, s3_client, wait_until

A_KEY, A_SECRET, A = "AKIALOGGINGAAAA", "secret-of-a", "111111111111"
B_KEY, B_SECRET = "AKIALOGGINGBBBB", "secret-of-b"
STUB = "bedrock-local.test-text-v1:0"
STUB_EMBED = "bedrock-local.test-embed-v1:0"
KEY = re.compile(r"(?P<prefix>.*)AWSLogs/(?P<account>\d{12})/BedrockModelInvocationLogs/(?P<region>[a-z0-9-]+)/"
                 r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/\d{8}T\d{9}Z_[0-9a-f]{16}\.json\.gz")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("logging")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({A_KEY: {"secretAccessKey": A_SECRET, "accountId": A, "buckets": ["logs-a"]},
                                       B_KEY: {"secretAccessKey": B_SECRET, "accountId": "222222222222",
                                               "buckets": ["logs-b"]}}))
    server = Server(root / "data", workers=0, serving_workers=1,
                    extra_args=("--credentials-file", str(credentials))).start()
    yield server
    server.stop()


def clients(server, region: str):
    return (server.client(region, A_KEY, secret_key=A_SECRET),
            server.client(region, A_KEY, "bedrock-runtime", secret_key=A_SECRET))


def checked(client, operation: str, response: dict) -> dict:
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    problem = validation_message(body, client.meta.service_model.operation_model(operation).output_shape)
    assert problem is None, f"{operation} answered outside its output shape: {problem}"
    return body


def put(bedrock, config: dict) -> None:
    checked(bedrock, "PutModelInvocationLoggingConfiguration",
            bedrock.put_model_invocation_logging_configuration(loggingConfig=config))


def folder_records(root: Path) -> list[tuple[str, dict]]:
    """(key, record) of every log object under a folder-store bucket folder."""
    found = []
    for path in sorted(root.rglob("*.json.gz")):
        for line in gzip.decompress(path.read_bytes()).decode().splitlines():
            found.append((path.relative_to(root).as_posix(), json.loads(line)))
    return found


def record_of(records: list[tuple[str, dict]], request_id: str) -> tuple[str, dict] | None:
    return next(((key, r) for key, r in records if r["requestId"] == request_id), None)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"text": text}]}]


def test_put_get_delete(server):
    bedrock, _ = clients(server, "ap-south-1")
    assert checked(bedrock, "GetModelInvocationLoggingConfiguration",
                   bedrock.get_model_invocation_logging_configuration()) == {}
    config = {"s3Config": {"bucketName": "logs-a", "keyPrefix": "invocations"},
              "cloudWatchConfig": {"logGroupName": "/aws/bedrock/invocations",
                                   "roleArn": f"arn:aws:iam::{A}:role/logging",
                                   "largeDataDeliveryS3Config": {"bucketName": "logs-a", "keyPrefix": "large"}},
              "textDataDeliveryEnabled": True, "imageDataDeliveryEnabled": False,
              "embeddingDataDeliveryEnabled": True}
    put(bedrock, config)
    assert checked(bedrock, "GetModelInvocationLoggingConfiguration",
                   bedrock.get_model_invocation_logging_configuration()) == {"loggingConfig": config}
    put(bedrock, {"s3Config": {"bucketName": "logs-a"}, "textDataDeliveryEnabled": True})  # replaces it
    assert bedrock.get_model_invocation_logging_configuration()["loggingConfig"] == {
        "s3Config": {"bucketName": "logs-a"}, "textDataDeliveryEnabled": True}
    # another region of the same account has its own (none)
    assert "loggingConfig" not in clients(server, "ap-south-2")[0].get_model_invocation_logging_configuration()
    checked(bedrock, "DeleteModelInvocationLoggingConfiguration",
            bedrock.delete_model_invocation_logging_configuration())
    assert "loggingConfig" not in bedrock.get_model_invocation_logging_configuration()


def test_a_bucket_of_another_account_is_refused(server):
    bedrock, _ = clients(server, "us-east-2")
    for config in ({"s3Config": {"bucketName": "logs-b"}},
                   {"cloudWatchConfig": {"logGroupName": "g", "roleArn": f"arn:aws:iam::{A}:role/r",
                                         "largeDataDeliveryS3Config": {"bucketName": "logs-b"}}}):
        with pytest.raises(ClientError) as raised:
            bedrock.put_model_invocation_logging_configuration(
                loggingConfig={**config, "textDataDeliveryEnabled": True})
        error = raised.value.response
        assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ValidationException", 400)
        assert "logs-b" in error["Error"]["Message"] and "another account" in error["Error"]["Message"]
    assert "loggingConfig" not in bedrock.get_model_invocation_logging_configuration()


@pytest.mark.parametrize("s3", [{"bucketName": "Not_A_Bucket"}, {"bucketName": "logs-a", "keyPrefix": "a/../b"}])
def test_a_destination_that_cannot_hold_objects_is_refused(server, s3):
    bedrock, _ = clients(server, "us-east-2")
    with pytest.raises(ClientError) as raised:
        bedrock.put_model_invocation_logging_configuration(loggingConfig={"s3Config": s3})
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "loggingConfig.s3Config" in raised.value.response["Error"]["Message"]


def test_runtime_calls_are_delivered_as_aws_log_records(server):
    region = "us-west-2"
    bedrock, runtime = clients(server, region)
    bucket = server.folder("logs-a")
    put(bedrock, {"s3Config": {"bucketName": "logs-a", "keyPrefix": "team/logs"}, "textDataDeliveryEnabled": True})
    converse = runtime.converse(modelId=STUB, messages=user("one two three"), inferenceConfig={"maxTokens": 10},
                                requestMetadata={"team": "search", "run": "7"})
    body = {"prompt": "alpha beta gamma", "max_gen_len": 5}
    invoke = runtime.invoke_model(modelId=STUB, body=json.dumps(body))
    invoke_answer = json.loads(invoke["body"].read())
    stream = runtime.converse_stream(modelId=STUB, messages=user("red green"))
    events = [event for event in stream["stream"]]
    chunks_response = runtime.invoke_model_with_response_stream(modelId=STUB, body=json.dumps(body),
                                                                requestMetadata='{"team": "ranking"}')
    chunks = [json.loads(event["chunk"]["bytes"]) for event in chunks_response["body"]]
    ids = [r["ResponseMetadata"]["RequestId"] for r in (converse, invoke, stream, chunks_response)]
    records = wait_until(lambda: (lambda found: found if all(record_of(found, i) for i in ids) else None)(
        folder_records(bucket / "team/logs")), 30, what="the four records")

    key, record = record_of(records, ids[0])
    parts = KEY.fullmatch(key).groupdict()
    now = datetime.datetime.now(datetime.timezone.utc)
    assert parts["prefix"] == "" and (parts["account"], parts["region"]) == (A, region)
    assert parts["y"] == f"{now:%Y}" and parts["m"] == f"{now:%m}"
    assert record["schemaType"] == "ModelInvocationLog" and record["schemaVersion"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["timestamp"])
    assert (record["accountId"], record["region"], record["operation"], record["modelId"]) == (
        A, region, "Converse", STUB)
    assert record["identity"]["arn"].startswith(f"arn:aws:iam::{A}:")
    assert record["requestMetadata"] == {"team": "search", "run": "7"}
    assert record["input"]["inputContentType"] == "application/json"
    assert record["input"]["inputBodyJson"]["messages"] == user("one two three")
    assert record["input"]["inputBodyJson"]["inferenceConfig"] == {"maxTokens": 10}
    assert record["input"]["inputTokenCount"] == converse["usage"]["inputTokens"]
    assert record["output"]["outputBodyJson"]["output"] == converse["output"]
    assert record["output"]["outputBodyJson"]["usage"] == converse["usage"]
    assert record["output"]["outputTokenCount"] == converse["usage"]["outputTokens"]

    _, record = record_of(records, ids[1])
    assert record["operation"] == "InvokeModel" and "requestMetadata" not in record
    assert record["input"]["inputBodyJson"] == body
    assert record["output"]["outputBodyJson"] == invoke_answer
    assert record["input"]["inputTokenCount"] == invoke_answer["prompt_token_count"]
    assert record["output"]["outputTokenCount"] == invoke_answer["generation_token_count"]

    _, record = record_of(records, ids[2])  # a stream: its events, as the client got them
    assert record["operation"] == "ConverseStream"
    assert record["output"]["outputBodyJson"] == events
    assert record["output"]["outputTokenCount"] == events[-1]["metadata"]["usage"]["outputTokens"]

    _, record = record_of(records, ids[3])
    assert record["operation"] == "InvokeModelWithResponseStream"
    assert record["requestMetadata"] == {"team": "ranking"}  # InvokeModel's header, JSON, logged as the map
    assert record["output"]["outputBodyJson"] == chunks
    assert record["input"]["inputTokenCount"] == 3


def test_delivery_flags_are_honoured(server):
    region = "eu-west-1"
    bedrock, runtime = clients(server, region)
    bucket = server.folder("logs-a")
    prefix = bucket / "flags"
    put(bedrock, {"s3Config": {"bucketName": "logs-a", "keyPrefix": "flags"}, "textDataDeliveryEnabled": False,
                  "embeddingDataDeliveryEnabled": True})
    text = runtime.converse(modelId=STUB, messages=user("not logged"))["ResponseMetadata"]["RequestId"]
    embed = runtime.invoke_model(modelId=STUB_EMBED, body=json.dumps({"inputText": "logged words"}))
    vector = json.loads(embed["body"].read())
    records = wait_until(lambda: (lambda found: found if record_of(found, embed["ResponseMetadata"]["RequestId"])
                                  else None)(folder_records(prefix)), 30, what="the embedding record")
    _, record = record_of(records, embed["ResponseMetadata"]["RequestId"])
    assert record["output"]["outputBodyJson"] == vector and record["input"]["inputTokenCount"] == 2
    put(bedrock, {"s3Config": {"bucketName": "logs-a", "keyPrefix": "flags"}, "textDataDeliveryEnabled": True})
    logged = runtime.converse(modelId=STUB, messages=user("now logged"))["ResponseMetadata"]["RequestId"]
    records = wait_until(lambda: (lambda found: found if record_of(found, logged) else None)(folder_records(prefix)),
                         30, what="the text record")
    assert record_of(records, text) is None  # delivered in order: the first call's record would be there


def test_a_missing_bucket_does_not_fail_the_call_and_the_record_lands_once_it_exists(server):
    region = "eu-central-1"
    bedrock, runtime = clients(server, region)
    bucket = "late-logs-" + region
    put(bedrock, {"s3Config": {"bucketName": bucket}, "textDataDeliveryEnabled": True})
    answer = runtime.converse(modelId=STUB, messages=user("before the bucket"))
    assert answer["stopReason"] == "end_turn"
    folder = server.data_dir / "s3" / bucket
    # delivery runs in the background: the bucket is made only once a write was refused and reported
    wait_until(lambda: f"to s3://{bucket}/" in server.log.read_text() and "retrying" in server.log.read_text(),
               30, what="the refused write reported in the server log")
    assert not folder.exists()
    folder.mkdir(parents=True)  # the bucket is created (the folder store's bucket is its folder)
    records = wait_until(lambda: folder_records(folder) or None, 60, what="the record after the retry")
    assert record_of(records, answer["ResponseMetadata"]["RequestId"]) is not None


def test_cloudwatch_records_go_to_a_file_under_the_data_dir(server):
    region = "ap-northeast-1"
    bedrock, runtime = clients(server, region)
    group = "/aws/bedrock/model-invocations"
    put(bedrock, {"cloudWatchConfig": {"logGroupName": group, "roleArn": f"arn:aws:iam::{A}:role/logs"},
                  "textDataDeliveryEnabled": True})
    request_id = runtime.converse(modelId=STUB, messages=user("to the log group"))["ResponseMetadata"]["RequestId"]
    path = server.data_dir / "cloudwatch-logs" / A / region / (quote(group, safe="") + ".jsonl")
    lines = wait_until(lambda: path.exists() and path.read_text().splitlines(), 30, what="the log group file")
    (record,) = [json.loads(line) for line in lines]
    assert record["requestId"] == request_id and record["schemaType"] == "ModelInvocationLog"


def test_records_are_delivered_to_an_s3_endpoint(make_server, moto_s3):
    server = make_server("moto", workers=0, serving_workers=1, s3_endpoint_url=moto_s3)
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket="moto-logs")
    bedrock, runtime = server.client(), server.client(service="bedrock-runtime")
    put(bedrock, {"s3Config": {"bucketName": "moto-logs", "keyPrefix": "p"}, "textDataDeliveryEnabled": True})
    answer = runtime.converse(modelId=STUB, messages=user("through moto"))

    def records():
        found = []
        for item in s3.list_objects_v2(Bucket="moto-logs", Prefix="p/").get("Contents", []):
            data = gzip.decompress(s3.get_object(Bucket="moto-logs", Key=item["Key"])["Body"].read())
            found += [(item["Key"], json.loads(line)) for line in data.decode().splitlines()]
        return found or None

    key, record = record_of(wait_until(records, 30, what="the record in moto"), answer["ResponseMetadata"]["RequestId"])
    assert KEY.fullmatch(key).group("prefix") == "p/"
    assert record["output"]["outputBodyJson"]["output"] == answer["output"]


@pytest.mark.parametrize("metadata, wrong", [
    ("{not json", "is not valid JSON"),
    ('["team"]', "must be a JSON object"),
    ('{"team": 7}', "Member must be of type string"),
    ('{"te!am": "a"}', "at 'te!am(key)'"),
    ("{}", "at 'requestMetadata' failed to satisfy constraint: Member must have length greater than or equal to 1"),
])
def test_invoke_model_request_metadata_header_is_checked_as_the_converse_map(server, metadata, wrong):
    _, runtime = clients(server, "us-west-2")
    with pytest.raises(ClientError) as raised:
        runtime.invoke_model(modelId=STUB, body=json.dumps({"prompt": "a b"}), requestMetadata=metadata)
    error = raised.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("ValidationException", 400)
    assert wrong in error["Error"]["Message"]
