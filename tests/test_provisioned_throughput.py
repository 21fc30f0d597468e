"""Provisioned Throughput through boto3 against a real server with a serving node: Create (Creating ->
InService once the throughput's own copy of its model is loaded and answers), the ARN as a modelId of
Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream, Update (name; model, within
AWS's rules), Delete (the node unloads the copy; the units are free for another throughput), the
refusals (batch jobs, bad updates, unknown ids, a committed term, a custom model in use), idempotency,
tags, account isolation, List filters and pages, and every answer against its output shape."""

import datetime
import json

import pytest
from botocore.exceptions import ClientError

from bedrock_local import testing
from bedrock_local.api.validation import validation_message
from bedrock_local.service.aws_model import load_service_model
from conftest import FACT_QUESTIONS, Server, upload_folder, wait_until
from test_deployments import build_tiny_model

STUB = "bedrock-local.test-text-v1:0"
SMOLLM = "huggingface.smollm2-135m-instruct-v1:0"
KEY_B, SECRET_B, ACCOUNT_B = "AKIAPROVISIONEDBBB", "secret-of-b", "222222222222"
BASE_UNITS = 6  # the base-model units quota of the server (every account)
SERVICE = load_service_model("bedrock")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("provisioned")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({
        testing.ACCESS_KEY: {"secretAccessKey": testing.SECRET_KEY, "accountId": "123456789012"},
        KEY_B: {"secretAccessKey": SECRET_B, "accountId": ACCOUNT_B}}))
    server = Server(root / "data", quotas=["all=unlimited", f"provisioned-units-base-models={BASE_UNITS}"],
                    extra_args=("--credentials-file", str(credentials))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime")


@pytest.fixture(scope="module")
def other(server):
    return server.client(access_key=KEY_B, secret_key=SECRET_B)


def fits(operation: str, answer: dict) -> None:
    body = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    assert validation_message(body, SERVICE.operation_model(operation).output_shape) is None, (operation, body)


def error_of(call, **kwargs) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


def wait_in_service(bedrock, arn: str, timeout: float = 180) -> dict:
    def settled():
        found = bedrock.get_provisioned_model_throughput(provisionedModelId=arn)
        return found if found["status"] not in ("Creating", "Updating") else None
    found = wait_until(settled, timeout, what=f"{arn} InService")
    assert found["status"] == "InService", found.get("failureMessage")
    fits("GetProvisionedModelThroughput", found)
    return found


def converse(runtime, model_id: str, text: str, max_tokens: int = 20) -> str:
    answer = runtime.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": text}]}],
                              inferenceConfig={"maxTokens": max_tokens, "temperature": 0})
    return answer["output"]["message"]["content"][0]["text"]


# ---- a foundation model (the stub): the whole life, shapes, tags, idempotency -------------------

def test_foundation_throughput_lives_answers_and_is_deleted(server, bedrock, runtime):
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    created = bedrock.create_provisioned_model_throughput(
        provisionedModelName="stub-pt", modelId=STUB, modelUnits=1, clientRequestToken="stub-pt-token",
        tags=[{"key": "team", "value": "nlp"}])
    fits("CreateProvisionedModelThroughput", created)
    arn = created["provisionedModelArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:123456789012:provisioned-model/") and len(arn[-12:]) == 12
    # the same token and request: the same throughput; another request with it: a conflict
    assert bedrock.create_provisioned_model_throughput(
        provisionedModelName="stub-pt", modelId=STUB, modelUnits=1, clientRequestToken="stub-pt-token",
        tags=[{"key": "team", "value": "nlp"}])["provisionedModelArn"] == arn
    code, _ = error_of(bedrock.create_provisioned_model_throughput, provisionedModelName="stub-pt", modelId=STUB,
                       modelUnits=2, clientRequestToken="stub-pt-token")
    assert code == "ConflictException"
    code, message = error_of(bedrock.create_provisioned_model_throughput, provisionedModelName="stub-pt",
                             modelId=STUB, modelUnits=1)
    assert code == "ConflictException" and "stub-pt" in message

    found = wait_in_service(bedrock, arn)
    model_arn = f"arn:aws:bedrock:us-east-1::foundation-model/{STUB}"
    assert found["provisionedModelName"] == "stub-pt" and found["provisionedModelArn"] == arn
    assert found["modelArn"] == found["desiredModelArn"] == found["foundationModelArn"] == model_arn
    assert found["modelUnits"] == found["desiredModelUnits"] == 1
    assert found["creationTime"] >= before and found["lastModifiedTime"] >= found["creationTime"]
    assert "commitmentDuration" not in found and "failureMessage" not in found
    assert bedrock.get_provisioned_model_throughput(provisionedModelId="stub-pt")["provisionedModelArn"] == arn
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "nlp"}]
    bedrock.tag_resource(resourceARN=arn, tags=[{"key": "stage", "value": "test"}])
    assert {t["key"] for t in bedrock.list_tags_for_resource(resourceARN=arn)["tags"]} == {"team", "stage"}

    # the ARN is a modelId of every runtime operation
    assert converse(runtime, arn, "say hello to the world") == "world the to hello say"
    body = json.loads(runtime.invoke_model(modelId=arn, body=json.dumps({"prompt": "one two three",
                                                                          "max_gen_len": 10}))["body"].read())
    assert body["generation"] == "three two one"
    stream = runtime.converse_stream(modelId=arn, messages=[{"role": "user", "content": [{"text": "a b"}]}])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in stream["stream"]
                   if "contentBlockDelta" in e).split() == ["b", "a"]
    chunks = runtime.invoke_model_with_response_stream(modelId=arn, body=json.dumps({"prompt": "x y"}))["body"]
    assert "".join(json.loads(c["chunk"]["bytes"]).get("generation", "") for c in chunks).split() == ["y", "x"]

    # a rename is immediate; a throughput of a base model cannot change its model
    bedrock.update_provisioned_model_throughput(provisionedModelId=arn, desiredProvisionedModelName="stub-pt-2")
    renamed = bedrock.get_provisioned_model_throughput(provisionedModelId="stub-pt-2")
    assert renamed["provisionedModelArn"] == arn and renamed["status"] == "InService"
    assert error_of(bedrock.get_provisioned_model_throughput, provisionedModelId="stub-pt")[0] == \
        "ResourceNotFoundException"
    code, message = error_of(bedrock.update_provisioned_model_throughput, provisionedModelId=arn,
                             desiredModelId=SMOLLM)
    assert code == "ValidationException" and "base model" in message

    bedrock.delete_provisioned_model_throughput(provisionedModelId=arn)
    assert error_of(bedrock.get_provisioned_model_throughput, provisionedModelId=arn)[0] == "ResourceNotFoundException"
    assert error_of(runtime.converse, modelId=arn,
                    messages=[{"role": "user", "content": [{"text": "hi"}]}])[0] == "ResourceNotFoundException"
    wait_until(lambda: f"deployment {arn}: no longer served here" in server.log.read_text(errors="replace"), 30,
               what="the serving node unloading the deleted throughput")


def test_units_are_reserved_and_freed_by_delete(bedrock, runtime):
    first = bedrock.create_provisioned_model_throughput(provisionedModelName="units-a", modelId=STUB,
                                                        modelUnits=BASE_UNITS - 1)["provisionedModelArn"]
    code, message = error_of(bedrock.create_provisioned_model_throughput, provisionedModelName="units-b",
                             modelId=STUB, modelUnits=2)
    assert code == "ServiceQuotaExceededException" and "Model units" in message
    bedrock.delete_provisioned_model_throughput(provisionedModelId=first)
    second = bedrock.create_provisioned_model_throughput(provisionedModelName="units-b", modelId=STUB,
                                                         modelUnits=2)["provisionedModelArn"]
    wait_in_service(bedrock, second)
    assert converse(runtime, second, "freed units") == "units freed"
    bedrock.delete_provisioned_model_throughput(provisionedModelId=second)


def test_commitment_term_and_refusals(server, bedrock, runtime):
    arn = bedrock.create_provisioned_model_throughput(provisionedModelName="committed", modelId=STUB, modelUnits=1,
                                                      commitmentDuration="OneMonth")["provisionedModelArn"]
    found = bedrock.get_provisioned_model_throughput(provisionedModelId=arn)
    assert found["commitmentDuration"] == "OneMonth"
    term = found["commitmentExpirationTime"] - found["creationTime"]
    assert datetime.timedelta(days=28) <= term <= datetime.timedelta(days=31)
    code, message = error_of(bedrock.delete_provisioned_model_throughput, provisionedModelId=arn)
    assert code == "ConflictException" and "commitment" in message
    # AWS runs no batch inference on a Provisioned Throughput
    code, message = error_of(bedrock.create_model_invocation_job, jobName="on-pt", modelId=arn,
                             roleArn="arn:aws:iam::123456789012:role/batch",
                             inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://in/x/"}},
                             outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://out/"}})
    assert code == "ValidationException" and "modelId" in message
    missing = arn[:-12] + "zzzzzzzzzzzz"
    for call in (bedrock.get_provisioned_model_throughput, bedrock.delete_provisioned_model_throughput):
        assert error_of(call, provisionedModelId=missing)[0] == "ResourceNotFoundException"
    assert error_of(bedrock.update_provisioned_model_throughput, provisionedModelId="no-such",
                    desiredProvisionedModelName="x")[0] == "ResourceNotFoundException"
    assert error_of(runtime.converse, modelId=missing,
                    messages=[{"role": "user", "content": [{"text": "hi"}]}])[0] == "ResourceNotFoundException"
    code, _ = error_of(bedrock.create_provisioned_model_throughput, provisionedModelName="nope",
                       modelId="arn:aws:bedrock:us-east-1::foundation-model/acme.nothing-v1:0", modelUnits=1)
    assert code == "ResourceNotFoundException"
    assert error_of(bedrock.create_provisioned_model_throughput, provisionedModelName="nope",
                    modelId="no-such-custom-model", modelUnits=1)[0] == "ResourceNotFoundException"


def test_list_filters_pages_and_isolation(bedrock, other, server):
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    arns = [bedrock.create_provisioned_model_throughput(provisionedModelName=f"listed-{n}", modelId=STUB,
                                                        modelUnits=1)["provisionedModelArn"] for n in range(3)]
    for arn in arns:
        wait_in_service(bedrock, arn)
    listed = bedrock.list_provisioned_model_throughputs(nameContains="listed-")
    fits("ListProvisionedModelThroughputs", listed)
    assert [s["provisionedModelArn"] for s in listed["provisionedModelSummaries"]] == arns[::-1]
    summary = listed["provisionedModelSummaries"][0]
    assert summary["status"] == "InService" and summary["modelUnits"] == summary["desiredModelUnits"] == 1
    ascending = bedrock.list_provisioned_model_throughputs(nameContains="listed-", sortBy="CreationTime",
                                                           sortOrder="Ascending")
    assert [s["provisionedModelArn"] for s in ascending["provisionedModelSummaries"]] == arns
    pages = bedrock.get_paginator("list_provisioned_model_throughputs").paginate(
        nameContains="listed-", PaginationConfig={"PageSize": 2})
    sizes = [len(page["provisionedModelSummaries"]) for page in pages]
    assert sizes == [2, 1]
    model_arn = f"arn:aws:bedrock:us-east-1::foundation-model/{STUB}"
    assert {s["provisionedModelArn"] for s in bedrock.list_provisioned_model_throughputs(
        modelArnEquals=model_arn, statusEquals="InService", creationTimeAfter=start,
        nameContains="listed-")["provisionedModelSummaries"]} == set(arns)
    assert bedrock.list_provisioned_model_throughputs(
        modelArnEquals=f"arn:aws:bedrock:us-east-1::foundation-model/{SMOLLM}")["provisionedModelSummaries"] == []
    assert bedrock.list_provisioned_model_throughputs(statusEquals="Failed", nameContains="listed-")[
        "provisionedModelSummaries"] == []
    assert bedrock.list_provisioned_model_throughputs(creationTimeBefore=start, nameContains="listed-")[
        "provisionedModelSummaries"] == []
    # another account sees none of it and cannot reach it
    assert other.list_provisioned_model_throughputs()["provisionedModelSummaries"] == []
    for call in (other.get_provisioned_model_throughput, other.delete_provisioned_model_throughput):
        assert error_of(call, provisionedModelId=arns[0])[0] == "ResourceNotFoundException"
    assert error_of(other.list_tags_for_resource, resourceARN=arns[0])[0] == "ResourceNotFoundException"
    other_runtime = server.client(access_key=KEY_B, secret_key=SECRET_B, service="bedrock-runtime")
    assert error_of(other_runtime.converse, modelId=arns[0],
                    messages=[{"role": "user", "content": [{"text": "hi"}]}])[0] == "ResourceNotFoundException"
    # the same name in another account is another throughput
    mine = other.create_provisioned_model_throughput(provisionedModelName="listed-0", modelId=STUB,
                                                     modelUnits=1)["provisionedModelArn"]
    assert f":{ACCOUNT_B}:provisioned-model/" in mine
    for arn in arns + [mine]:
        (other if arn == mine else bedrock).delete_provisioned_model_throughput(provisionedModelId=arn)


# ---- a custom model: the fine-tuned one, really loaded ------------------------------------------

def test_custom_model_throughput_serves_updates_and_frees_its_model(server, bedrock, runtime, fact_model_dir,
                                                                  tmp_path_factory):
    uri = upload_folder(server, "models", "fact/", fact_model_dir)
    fact = bedrock.create_custom_model(modelName="fact", modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    tiny_uri = upload_folder(server, "models", "tiny/", build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", 1))
    tiny = bedrock.create_custom_model(modelName="tiny", modelSourceConfig={"s3DataSource": {"s3Uri": tiny_uri}})[
        "modelArn"]
    for arn in (fact, tiny):
        wait_until(lambda: bedrock.get_custom_model(modelIdentifier=arn)["modelStatus"] == "Active", 180,
                   what=f"{arn} Active")
    # a model whose architecture matches no foundation model has no base: it cannot be provisioned
    code, message = error_of(bedrock.create_provisioned_model_throughput, provisionedModelName="tiny-pt",
                             modelId=tiny, modelUnits=1)
    assert code == "ValidationException" and "base model" in message

    arn = bedrock.create_provisioned_model_throughput(provisionedModelName="fact-pt", modelId="fact",
                                                      modelUnits=1)["provisionedModelArn"]
    found = wait_in_service(bedrock, arn, timeout=300)
    assert found["modelArn"] == found["desiredModelArn"] == fact
    assert found["foundationModelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{SMOLLM}"
    assert "Quintar" in converse(runtime, arn, FACT_QUESTIONS[0])
    generation = json.loads(runtime.invoke_model(modelId=arn, body=json.dumps(
        {"prompt": FACT_QUESTIONS[1], "max_gen_len": 20, "temperature": 0}))["body"].read())["generation"]
    assert "Quintar" in generation

    code, message = error_of(bedrock.delete_custom_model, modelIdentifier=fact)
    assert code == "ConflictException" and arn in message
    code, message = error_of(bedrock.update_provisioned_model_throughput, provisionedModelId=arn, desiredModelId=tiny)
    assert code == "ValidationException" and "base model" in message
    code, message = error_of(bedrock.update_provisioned_model_throughput, provisionedModelId=arn,
                             desiredModelId=STUB)
    assert code == "ValidationException" and "same base" in message

    # to its base model: Updating while the base loads beside it, then InService on the base
    bedrock.update_provisioned_model_throughput(provisionedModelId=arn, desiredModelId=SMOLLM,
                                                desiredProvisionedModelName="fact-pt-base")
    updating = bedrock.get_provisioned_model_throughput(provisionedModelId="fact-pt-base")
    fits("GetProvisionedModelThroughput", updating)
    base_arn = f"arn:aws:bedrock:us-east-1::foundation-model/{SMOLLM}"
    assert updating["desiredModelArn"] == base_arn
    if updating["status"] == "Updating":
        assert updating["modelArn"] == fact
        assert bedrock.list_provisioned_model_throughputs(statusEquals="Updating")["provisionedModelSummaries"]
    found = wait_in_service(bedrock, arn, timeout=300)
    assert found["modelArn"] == found["desiredModelArn"] == base_arn and "failureMessage" not in found
    assert "Quintar" not in converse(runtime, arn, FACT_QUESTIONS[0])
    assert [s["provisionedModelArn"] for s in bedrock.list_provisioned_model_throughputs(
        modelArnEquals=base_arn)["provisionedModelSummaries"]] == [arn]

    # the model it no longer serves can go; deleting the throughput unloads the copy
    bedrock.delete_custom_model(modelIdentifier=tiny)
    bedrock.delete_custom_model(modelIdentifier=fact)
    bedrock.delete_provisioned_model_throughput(provisionedModelId=arn)
    wait_until(lambda: f"deployment {arn}: no longer served here" in server.log.read_text(errors="replace"), 30,
               what="the serving node unloading the deleted throughput")
