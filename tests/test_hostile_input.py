"""Hostile input against a live server: schemathesis fuzzes every served operation from the OpenAPI
document generated from the botocore models (GET /openapi.json), and hand-made attacks check the
edges a fuzzer does not reach: oversized and undecodable bodies, deep nesting, forged page tokens,
path traversal in s3 URIs and model names. Every answer must be a modelled error, never a 500 or
a hang, and nothing outside the data dir may be touched.
"""

import json
import os
import re
import socket
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_headers_conformance, response_schema_conformance,
                                 status_code_conformance)

from bedrock_local.api.app import load_service_model
from bedrock_local.api.openapi import error_statuses, openapi_document
from bedrock_local.service import load_operations
from bedrock_local.testing.calls import Calls
from conftest import Server

MODELS = {name: load_service_model(name) for name in ("bedrock", "bedrock-runtime")}
DOCUMENT = openapi_document(list(MODELS.values()), load_operations())
EXAMPLES_PER_OPERATION = 8
PHASES = os.environ.get("HOSTILE_PHASES", "examples,coverage,fuzzing").split(",")
LIMIT = 100_000  # the api server's --max-request-bytes
REQUEST_TIMEOUT = 15  # seconds: an answer that takes longer is a hang

schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION, modes=["positive", "negative"])
schema.config.phases.update(phases=PHASES)

SERVED = sorted(op for model in MODELS.values() for op in model.operation_names if op in load_operations())


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """An API-only node (no workers, no serving nodes): fuzzed Create calls queue jobs that never run."""
    server = Server(tmp_path_factory.mktemp("hostile") / "data", workers=0,
                    extra_args=("--max-request-bytes", str(LIMIT))).start()
    yield server
    server.stop()


def modelled_error(ctx, response, case):
    """An error answer is one the model gives the operation (or the ValidationException every request
    may get), with that error's status code and the AWS envelope."""
    if response.status_code < 400:
        return None
    name = case.operation.definition.raw["operationId"]
    model = next(m for m in MODELS.values() if name in m.operation_names)
    error_type = response.headers.get("x-amzn-errortype", [None])[0]
    if case.method.upper() != model.operation_model(name).http["method"]:
        # another method on the operation's path is no operation of the model (the envelope says so),
        # unless another operation's route takes it (GET /evaluation-jobs/batch-delete is
        # GetEvaluationJob of the job "batch-delete"): then that operation's errors
        other = operation_at(model, case.method.upper(), case.formatted_path)
        if other is not None:
            allowed = error_statuses(model, model.operation_model(other)).get(response.status_code, [])
        else:
            allowed = ["UnknownOperationException"] if response.status_code == 404 else []
    else:
        allowed = error_statuses(model, model.operation_model(name)).get(response.status_code, [])
    assert error_type in allowed, (f"{name} answered {response.status_code} {error_type}; modelled for that "
                                   f"status: {allowed}")
    body = json.loads(response.content)
    assert isinstance(body.get("message"), str) and body["message"], body
    return True


def operation_at(model, method: str, path: str) -> str | None:
    """The operation of `model` whose route takes `method` and `path` (its requestUri, labels as any
    segment, greedy labels as any rest), if one does."""
    for name in model.operation_names:
        http = model.operation_model(name).http
        if http["method"] != method:
            continue
        parts = re.split(r"(\{[^}]+\})", http["requestUri"].split("?", 1)[0])
        pattern = "".join((".+" if part.endswith("+}") else "[^/]+") if part.startswith("{") else re.escape(part)
                          for part in parts)
        if re.fullmatch(pattern, path.split("?", 1)[0]):
            return name
    return None


REQUESTS: dict[str, int] = {}  # requests made, by operation


@schema.parametrize()
@pytest.mark.timeout(300)  # a server that stops answering fails here, not after CI's whole budget
@settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzzed_requests_answer_modelled_errors(case, api):
    label = f"{case.method} {case.operation.path}"
    REQUESTS[label] = REQUESTS.get(label, 0) + 1
    case.call_and_validate(
        base_url=api.url, timeout=REQUEST_TIMEOUT,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_headers_conformance, response_schema_conformance, negative_data_rejection,
                modelled_error])


def test_every_served_operation_was_fuzzed(api):
    """Runs after the fuzzing above (file order): every served operation got requests."""
    described = {f"{method.upper()} {path}": op["operationId"] for path, item in DOCUMENT["paths"].items()
                 for method, op in item.items()}
    assert sorted(described.values()) == SERVED
    missing = [label for label in described if REQUESTS.get(label, 0) == 0]
    assert not missing, missing
    ticks = os.sysconf("SC_CLK_TCK")
    server_cpu = sum(int(v) for v in open(f"/proc/{api.process.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
    print(f"\nschemathesis: {len(SERVED)} operations, {sum(REQUESTS.values())} requests; CPU so far: "
          f"{time.process_time():.0f} s test process, {server_cpu / ticks:.0f} s server")


# ---- the document itself --------------------------------------------------------------------------
def test_openapi_json_is_served_and_describes_the_served_operations(api):
    response = httpx.get(api.url + "/openapi.json", timeout=15)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    served = response.json()
    assert served == json.loads(json.dumps(DOCUMENT))
    assert served["openapi"].startswith("3.")
    operations = {op["operationId"]: (method, path) for path, item in served["paths"].items()
                  for method, op in item.items()}
    assert sorted(operations) == SERVED
    assert operations["GetCustomModel"] == ("get", "/custom-models/{modelIdentifier}")
    get = served["paths"]["/custom-models"]["get"]
    max_results = next(p for p in get["parameters"] if p["name"] == "maxResults")
    assert max_results["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    create = served["paths"]["/model-copy-jobs"]["post"]
    assert set(create["responses"]) == {"201", "400", "403", "404", "500"}  # ValidationException: every operation
    assert served["paths"]["/model/{modelId}/converse-stream"]["post"]["responses"]["200"]["content"] == {
        "application/vnd.amazon.eventstream": {"schema": {"type": "string", "format": "binary"}}}
    body = served["paths"]["/custom-models/create-custom-model"]["post"]["requestBody"]["content"]
    request = body["application/json"]["schema"]
    # what the installed botocore model requires (botocore 1.44 made modelSourceConfig optional)
    assert set(request["required"]) == set(MODELS["bedrock"].shape_for("CreateCustomModelRequest").required_members)
    assert "modelName" in request["required"]
    assert request["properties"]["modelName"] == {
        "type": "string", "pattern": "^(?:([0-9a-zA-Z][_-]?){1,63})$", "minLength": 1, "maxLength": 63}
    assert request["properties"]["modelKmsKeyArn"]["anyOf"][1] == {"type": "null"}  # optional: null is absent
    source = served["components"]["schemas"]["bedrock.ModelDataSource"]  # a union: exactly one member
    assert source["oneOf"] == [{"required": [name]} for name in source["properties"]]
    invoke = served["paths"]["/model/{modelId}/invoke"]["post"]
    assert set(invoke["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert "ModelErrorException" in invoke["responses"]["424"]["description"]


def test_greedy_labels_and_query_lists_are_described():
    from botocore.model import ServiceModel

    model = ServiceModel({
        "metadata": {"protocol": "rest-json", "apiVersion": "2020-01-01", "endpointPrefix": "x"},
        "operations": {"GetThing": {"name": "GetThing", "http": {"method": "GET", "requestUri": "/things/{key+}?x-id=1",
                                                                  "responseCode": 200},
                                    "input": {"shape": "GetThingRequest"}, "errors": [{"shape": "Missing"}]}},
        "shapes": {
            "GetThingRequest": {"type": "structure", "required": ["key"], "members": {
                "key": {"shape": "Key", "location": "uri", "locationName": "key"},
                "ids": {"shape": "Ids", "location": "querystring", "locationName": "id"}}},
            "Key": {"type": "string", "min": 1, "pattern": "[a-z/]+"},
            "Ids": {"type": "list", "member": {"shape": "Id"}, "max": 3},
            "Id": {"type": "integer", "min": 0, "max": 9},
            "Missing": {"type": "structure", "members": {"message": {"shape": "Key"}}, "exception": True,
                        "error": {"httpStatusCode": 404}},
        }}, "thing")
    document = openapi_document([model], {"GetThing"})
    operation = document["paths"]["/things/{key}"]["get"]
    key, ids = operation["parameters"]
    assert key == {"name": "key", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^(?:[a-z/]+)$", "minLength": 1}}
    assert ids["schema"] == {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3}
    assert set(operation["responses"]) == {"200", "404"}  # no ValidationException in this model: none added
    assert operation["responses"]["404"]["headers"]["x-amzn-ErrorType"]["schema"]["enum"] == ["Missing"]


# ---- raw attacks ----------------------------------------------------------------------------------
def aws_error(response: httpx.Response) -> tuple[int, str, str]:
    return response.status_code, response.headers.get("x-amzn-ErrorType"), response.json()["message"]


def post(api, path: str, body: bytes, **kwargs) -> httpx.Response:
    return httpx.post(api.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=15,
                      **kwargs)




def test_a_body_over_the_limit_is_a_validation_exception_naming_the_limit(api):
    body = b'{"messages": [{"role": "user", "content": [{"text": "' + b"x" * LIMIT + b'"}]}]}'
    status, kind, message = aws_error(post(api, "/model/bedrock-local.test-text-v1:0/converse", body))
    assert (status, kind) == (400, "ValidationException") and str(LIMIT) in message and "--max-request-bytes" in message

    def chunks():  # no Content-Length: the limit holds for a chunked body as it arrives
        for _ in range(50):
            yield b"x" * 10_000

    status, kind, message = aws_error(post(api, "/model/bedrock-local.test-text-v1:0/invoke", chunks()))
    assert (status, kind) == (400, "ValidationException") and str(LIMIT) in message
    # a body at the limit is read (and answered on its merits)
    status, kind, _ = aws_error(post(api, "/model-copy-jobs", b" " * (LIMIT - 2) + b"{}"))
    assert (status, kind) == (400, "ValidationException")
    assert httpx.get(api.url + "/foundation-models", timeout=15).status_code == 200


def test_a_client_gone_before_its_whole_body_is_no_error_and_the_server_answers_on(api):
    logged = len(api.log.read_text())
    with socket.create_connection(("127.0.0.1", api.port), timeout=15) as sock:
        sock.sendall(b"POST /model-copy-jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"sourceModelArn\": ")
        time.sleep(0.3)  # the server has the head and part of the body; then the client is gone
    time.sleep(0.5)
    assert httpx.get(api.url + "/foundation-models", timeout=15).status_code == 200
    after = api.log.read_text()[logged:]
    assert "Traceback" not in after and "failed" not in after, after[-2000:]


def test_a_body_over_the_limit_through_boto3(api):
    runtime = api.client(service="bedrock-runtime")
    with pytest.raises(runtime.exceptions.ValidationException, match=str(LIMIT)):
        runtime.invoke_model(modelId="bedrock-local.test-text-v1:0", body=b"{" + b" " * LIMIT + b"}")


@pytest.mark.parametrize("body", [
    b'{"sourceModelArn": "\xff\xfe", "targetModelName": "x"}',
    b'\xc3\x28',
    b'{"targetModelName": "\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
])
def test_invalid_utf8_is_a_validation_exception(api, body):
    status, kind, message = aws_error(post(api, "/model-copy-jobs", body))
    assert (status, kind) == (400, "ValidationException") and "UTF-8" in message


def test_100000_open_brackets_are_refused_without_a_crash(api):
    status, kind, message = aws_error(post(api, "/model-copy-jobs", b"[" * 99_990))  # under the body limit
    assert (status, kind) == (400, "ValidationException") and "nested too deeply" in message


@pytest.mark.parametrize("depth", [1_000, 5_000, 16_000])
def test_deeply_nested_json_is_refused_without_a_crash(api, depth):
    whole = b"[" * depth + b"]" * depth
    status, kind, message = aws_error(post(api, "/model-copy-jobs", whole))
    assert (status, kind) == (400, "ValidationException") and "nested too deeply" in message
    # the same depth inside a member that takes any JSON (a document)
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    body = (b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}], "additionalModelRequestFields": '
            + inner + b"}")
    status, kind, message = aws_error(post(api, "/model/bedrock-local.test-text-v1:0/converse", body))
    assert status == 400 and kind == "ValidationException" and "nested too deeply" in message


def test_nesting_just_below_the_parser_limit_is_answered_too(api):
    for depth in (100, 400, 800, 950):
        inner = b'{"a":' * depth + b"1" + b"}" * depth
        body = (b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}], "additionalModelRequestFields": '
                + inner + b"}")
        response = post(api, "/model/bedrock-local.test-text-v1:0/converse", body)
        # read and validated; then, with no serving node on this API-only server, the modelled 503
        assert (response.status_code, response.headers["x-amzn-ErrorType"]) == (
            503, "ServiceUnavailableException"), (depth, response.text)
    # each was recorded for the test endpoint, and is listed there whole
    calls = [call for call in Calls(api.url).list("Converse") if "additionalModelRequestFields" in call["request"]]
    deepest = calls[-1]["request"]["additionalModelRequestFields"]
    for _ in range(950):
        deepest = deepest["a"]
    assert deepest == 1


@pytest.mark.parametrize("value, wrong", [
    ("1000000000000000000000000000000", "Member must have value less than or equal to 1000"),
    ("0", "Member must have value greater than or equal to 1"),
    ("-5", "Member must have value greater than or equal to 1"),
    ("1e3", "Member must be of type integer"),
    ("NaN", "Member must be of type integer"),
])
def test_max_results_out_of_range_names_the_range(api, value, wrong):
    for path in ("/custom-models", "/foundation-models", "/model-invocation-jobs", "/model-copy-jobs",
                 "/model-customization-jobs", "/model-customization/custom-model-deployments"):
        if path == "/foundation-models":
            continue  # ListFoundationModels has no maxResults
        response = httpx.get(f"{api.url}{path}?maxResults={value}", timeout=15)
        status, kind, message = aws_error(response)
        assert (status, kind) == (400, "ValidationException"), (path, response.text)
        assert wrong in message and "maxResults" in message, message


# jobName's pattern nests `-*` inside a repeated group that also takes '-': Python's `re` backtracks
# exponentially on a long run of '-' that ends in a character the pattern refuses (CI's fuzzing found
# one such name that held the server's event loop for its whole budget)
ROLE = "arn:aws:iam::123456789012:role/r"
BACKTRACKING_NAME = "H--f--7" + "-" * 60 + "iA" + "-" * 30 + "n2*"


@pytest.mark.parametrize("path, body", [
    ("/model-customization-jobs", {"jobName": BACKTRACKING_NAME, "customModelName": "m", "roleArn": ROLE,
                                   "baseModelIdentifier": "amazon.titan-text-express-v1",
                                   "trainingDataConfig": {"s3Uri": "s3://b/train.jsonl"},
                                   "outputDataConfig": {"s3Uri": "s3://b/out/"}}),
    ("/model-invocation-job", {"jobName": BACKTRACKING_NAME, "roleArn": ROLE, "modelId": "bedrock-local.test-text-v1:0",
                               "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/in/"}},
                               "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/out/"}}}),
])
def test_a_name_that_makes_a_backtracking_regex_explode_is_refused_at_once(api, path, body):
    response = post(api, path, json.dumps(body).encode())  # httpx gives up after 15 s: a hang fails here
    status, kind, message = aws_error(response)
    assert (status, kind) == (400, "ValidationException"), response.text
    assert "'jobName' failed to satisfy constraint: Member must satisfy regular expression pattern" in message
    assert httpx.get(api.url + "/foundation-models", timeout=15).status_code == 200  # and it still answers


TRAVERSALS = ["s3://hostile-bucket/../../../outside/", "s3://hostile-bucket/a/../../../../outside/x.jsonl",
              "s3://hostile-bucket/%2e%2e/%2e%2e/outside/", "s3://hostile-bucket//etc/passwd", "s3:///etc/passwd",
              "s3://../outside/", "s3://hostile-bucket/./x/", "s3://hostile-bucket/a\\..\\..\\outside/"]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_path_traversal_in_s3_uris_and_names_never_leaves_the_data_dir(api):
    base = api.data_dir.parent
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "x.jsonl").write_text('{"recordId": "r1", "modelInput": {"prompt": "secret words"}}\n')
    (api.data_dir / "s3" / "hostile-bucket").mkdir(parents=True, exist_ok=True)
    before_outside, before_s3 = files_under(base), files_under(api.data_dir / "s3")
    bedrock = api.client(validate=False)
    for uri in TRAVERSALS:
        attempts = {
            "CreateModelInvocationJob": lambda: bedrock.create_model_invocation_job(
                jobName="traversal", roleArn="arn:aws:iam::123456789012:role/r", modelId="bedrock-local.test-text-v1:0",
                inputDataConfig={"s3InputDataConfig": {"s3Uri": uri}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": uri}}),
            "CreateCustomModel": lambda: bedrock.create_custom_model(
                modelName="traversal", modelSourceConfig={"s3DataSource": {"s3Uri": uri}}),
            "CreateModelCustomizationJob": lambda: bedrock.create_model_customization_job(
                jobName="traversal", customModelName="traversal", roleArn="arn:aws:iam::123456789012:role/r",
                baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
                trainingDataConfig={"s3Uri": uri}, outputDataConfig={"s3Uri": uri},
                hyperParameters={"epochCount": "1"}),
        }
        for name, attempt in attempts.items():
            with pytest.raises(bedrock.exceptions.ValidationException) as excinfo:
                attempt()
            assert "s3Uri" in excinfo.value.response["Error"]["Message"], (name, uri)
    for name in ["../../outside", "a/b", "..", "%2e%2e", "/etc/passwd", "a\\b"]:
        with pytest.raises(bedrock.exceptions.ValidationException, match="modelName"):
            bedrock.create_custom_model(modelName=name,
                                        modelSourceConfig={"s3DataSource": {"s3Uri": "s3://hostile-bucket/m/"}})
    for identifier in ["..%2F..%2Foutside", "%2e%2e", "..%5C..%5Coutside", "a%00b", "%2F..%2F..%2Foutside"]:
        for path in (f"/custom-models/{identifier}", f"/model-invocation-job/{identifier}",
                     f"/foundation-models/{identifier}"):
            response = httpx.get(api.url + path, timeout=15)
            assert response.status_code in (400, 404), (path, response.text)
            assert response.headers["x-amzn-ErrorType"] in ("ValidationException", "ResourceNotFoundException")
    changed = set(files_under(base)) ^ set(before_outside)
    assert all(p.startswith("data") for p in changed), changed  # only the data dir (and the server log) may change
    assert files_under(api.data_dir / "s3") == before_s3  # refused requests wrote no object
    assert (outside / "x.jsonl").read_text().startswith('{"recordId": "r1"')


# ---- page tokens ----------------------------------------------------------------------------------
def test_forged_and_foreign_next_tokens_are_refused(make_server, tmp_path):
    import base64

    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"AKIAONE": {"secretAccessKey": "s1", "accountId": "111111111111"},
                                       "AKIATWO": {"secretAccessKey": "s2", "accountId": "222222222222"}}))
    server = make_server("tokens", workers=0, extra_args=("--credentials-file", str(credentials)))
    (server.folder("tokens-src") / "empty").mkdir(parents=True, exist_ok=True)

    def client(key, secret, region="us-east-1"):
        return server.client(region, key, secret_key=secret)

    one, two, one_west = client("AKIAONE", "s1"), client("AKIATWO", "s2"), client("AKIAONE", "s1", "us-west-2")
    for bedrock in (one, two, one_west):
        for i in range(3):
            bedrock.create_custom_model(modelName=f"tok-{i}",
                                        modelSourceConfig={"s3DataSource": {"s3Uri": "s3://tokens-src/empty/"}})
    first = one.list_custom_models(maxResults=1)
    token = first["nextToken"]
    assert len(one.list_custom_models(maxResults=1, nextToken=token)["modelSummaries"]) == 1  # its own request

    payload, signature = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).rsplit(b".", 1)
    moved = json.loads(payload)
    moved["p"] = moved["p"] + 1  # a forged position under the old signature
    forged = base64.urlsafe_b64encode(json.dumps(moved).encode() + b"." + signature).decode().rstrip("=")
    refused = {
        "another account": lambda: two.list_custom_models(maxResults=1, nextToken=token),
        "another region": lambda: one_west.list_custom_models(maxResults=1, nextToken=token),
        "another filter": lambda: one.list_custom_models(maxResults=1, nextToken=token, nameContains="tok"),
        "another sort order": lambda: one.list_custom_models(maxResults=1, nextToken=token, sortOrder="Ascending"),
        "another operation": lambda: one.list_model_copy_jobs(maxResults=1, nextToken=token),
        "a forged position": lambda: one.list_custom_models(maxResults=1, nextToken=forged),
        "not a token": lambda: one.list_custom_models(maxResults=1, nextToken="AAAA"),
        "garbage": lambda: one.list_custom_models(maxResults=1, nextToken="~!@#$%^&*()"),
    }
    for what, attempt in refused.items():
        with pytest.raises(one.exceptions.ValidationException, match="nextToken") as excinfo:
            attempt()
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, what


# ---- batch input lines ----------------------------------------------------------------------------
def test_an_oversized_jsonl_line_becomes_an_error_line_and_the_job_goes_on(make_server):
    from test_batch_inference import OUT_BUCKET, create_job, job_folder, put_input, read_out, wait_final

    server = make_server("lines", workers=1, extra_args=("--batch-max-record-bytes", "2000"))
    bedrock = server.client()
    server.folder(OUT_BUCKET)
    records = [{"recordId": "r1", "modelInput": {"prompt": "one two three", "max_gen_len": 8}},
               {"recordId": "r2", "modelInput": {"prompt": "big " * 1000, "max_gen_len": 8}},  # 4,000 bytes
               {"recordId": "r3", "modelInput": {"prompt": "four five", "max_gen_len": 8}}]
    text = "\n".join(json.dumps(r) for r in records) + "\n"
    uri = put_input(server, {"in.jsonl": text})
    arn = create_job(bedrock, "bedrock-local.test-text-v1:0", uri)
    job = wait_final(bedrock, arn, timeout=120)
    assert job["status"] == "Completed", job.get("message")
    lines = read_out(job_folder(server, arn) / "in.jsonl.out")
    assert [line["recordId"] for line in lines] == ["r1", "r2", "r3"]
    assert lines[0]["modelOutput"]["generation"] == "three two one"
    assert lines[2]["modelOutput"]["generation"] == "five four"
    error = lines[1]["error"]
    assert error["errorCode"] == 400 and "2000 bytes" in error["errorMessage"] and "Line 2" in error["errorMessage"]
    assert str(len(json.dumps(records[1]))) in error["errorMessage"]
