"""CreateCustomModel / GetCustomModel / ListCustomModels / DeleteCustomModel against a real
bedrock-local server, driven through boto3 as a user does. Imports really copy a tiny random
Llama HF folder into the model store; the tests look at the bytes on disk (or in S3)."""

import datetime
import hashlib
import json
import re
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from bedrock_local.api.app import load_service_model
from conftest import s3_client, upload_folder, wait_until

ACCOUNT = "123456789012"
MODEL_BUCKET = "bedrock-local-models"
SOURCE_BUCKET = "import-source"
IMPORTED_ARN = re.compile(rf"arn:aws:bedrock:(?P<region>[a-z0-9-]+):{ACCOUNT}:custom-model/imported/(?P<id>[a-z0-9]{{12}})")
FOUNDATION_ARN = "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0"
LIST_REGION = "eu-west-1"  # the list tests own this region of the module server
FINAL = ("Active", "Failed")


# ------------------------------------------------------------------------------------------
# helpers

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def status_code(excinfo) -> int:
    return excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


def create_import(client, name: str, uri: str, **extra) -> str:
    response = client.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}}, **extra)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    return response["modelArn"]


def wait_final(client, identifier: str, timeout: float = 90.0) -> dict:
    def done():
        model = client.get_custom_model(modelIdentifier=identifier)
        return model if model["modelStatus"] in FINAL else None
    return wait_until(done, timeout=timeout, what=f"{identifier} to leave Creating")


def model_id(arn: str) -> str:
    return IMPORTED_ARN.fullmatch(arn)["id"]


def store_folder(server, region: str, arn: str) -> Path:
    return server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / region / "custom-models" / model_id(arn)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def broken_copy(tiny_model_dir: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    return folder


def import_variant(server, bedrock, folder: Path, what: str) -> dict:
    prefix = unique(what)
    uri = upload_folder(server, SOURCE_BUCKET, prefix, folder)
    arn = create_import(bedrock, unique(what), uri)
    return wait_final(bedrock, arn)


# ------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def imported(server, bedrock, tiny_model_dir):
    """The tiny model imported once into us-east-1 of the module server, with tags."""
    uri = upload_folder(server, SOURCE_BUCKET, "tiny/llama", tiny_model_dir)
    name = unique("tiny")
    arn = create_import(bedrock, name, uri, modelTags=[{"key": "team", "value": "ml"}, {"key": "stage", "value": "test"}])
    model = wait_final(bedrock, arn)
    assert model["modelStatus"] == "Active", model.get("failureMessage")
    return {"arn": arn, "name": name, "uri": uri}


@pytest.fixture(scope="module")
def empty_prefix(server):
    server.folder(SOURCE_BUCKET)
    return f"s3://{SOURCE_BUCKET}/nothing-here/"


@pytest.fixture(scope="module")
def listed(server, empty_prefix):
    """25 models in LIST_REGION (all pointing at an empty prefix, so they end Failed): 20 named
    list-a-NN and 5 named list-b-NN, in creation order."""
    client = server.client(LIST_REGION)
    arns = []
    for index in range(25):
        name = f"list-{'a' if index < 20 else 'b'}-{index:02d}"
        arns.append(create_import(client, name, empty_prefix))
        time.sleep(0.003)  # distinct creation times (millisecond precision) for the time filters
    for arn in arns:
        assert wait_final(client, arn)["modelStatus"] == "Failed"
    models = [client.get_custom_model(modelIdentifier=arn) for arn in arns]
    return client, models


# ------------------------------------------------------------------------------------------
# CreateCustomModel: the import really happens

def test_import_becomes_active_with_the_same_bytes_in_the_model_store(server, bedrock, imported, tiny_model_dir):
    model = bedrock.get_custom_model(modelIdentifier=imported["arn"])
    assert model["modelStatus"] == "Active"
    assert "failureMessage" not in model

    folder = store_folder(server, "us-east-1", imported["arn"])
    assert folder.is_dir()
    stored = files_of(folder)
    uploaded = files_of(tiny_model_dir)
    manifest = json.loads(stored.pop("bedrock-local-manifest.json"))["files"]
    assert stored == uploaded  # every file, byte for byte
    assert "model.safetensors" in stored and "config.json" in stored
    assert set(manifest) == set(uploaded)
    for name, content in uploaded.items():
        assert manifest[name]["size"] == len(content)
        assert manifest[name]["sha256"] == hashlib.sha256(content).hexdigest()


def test_get_custom_model_by_name_and_by_arn(bedrock, imported):
    by_arn = bedrock.get_custom_model(modelIdentifier=imported["arn"])
    by_name = bedrock.get_custom_model(modelIdentifier=imported["name"])
    for model in (by_arn, by_name):
        model.pop("ResponseMetadata")
    assert by_arn == by_name
    assert IMPORTED_ARN.fullmatch(by_arn["modelArn"])["region"] == "us-east-1"
    assert by_arn["modelArn"] == imported["arn"]
    assert by_arn["modelName"] == imported["name"]
    assert by_arn["customizationType"] == "IMPORTED"
    assert by_arn["modelStatus"] == "Active"
    assert isinstance(by_arn["creationTime"], datetime.datetime)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now - datetime.timedelta(minutes=10) < by_arn["creationTime"] <= now
    assert set(by_arn) <= set(bedrock.meta.service_model.operation_model("GetCustomModel").output_shape.members)


def test_tags_given_at_create_time(bedrock, imported):
    tags = bedrock.list_tags_for_resource(resourceARN=imported["arn"])["tags"]
    assert sorted((t["key"], t["value"]) for t in tags) == [("stage", "test"), ("team", "ml")]


def test_get_unknown_model_is_not_found(bedrock, imported):
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as excinfo:
        bedrock.get_custom_model(modelIdentifier="no-such-model")
    assert status_code(excinfo) == 404
    unknown_arn = imported["arn"][:-12] + "zzzzzzzzzzzz"
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.get_custom_model(modelIdentifier=unknown_arn)


def test_models_are_isolated_per_region(server, imported):
    west = server.client("us-west-2")
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.get_custom_model(modelIdentifier=imported["name"])
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.get_custom_model(modelIdentifier=imported["arn"])
    assert imported["arn"] not in [m["modelArn"] for m in west.list_custom_models()["modelSummaries"]]


# ------------------------------------------------------------------------------------------
# CreateCustomModel: precise failures

def test_empty_prefix_fails_naming_the_prefix(bedrock, empty_prefix):
    model = wait_final(bedrock, create_import(bedrock, unique("empty"), empty_prefix))
    assert model["modelStatus"] == "Failed"
    assert "No files were found" in model["failureMessage"]
    assert "nothing-here" in model["failureMessage"]


def test_missing_bucket_fails(bedrock):
    model = wait_final(bedrock, create_import(bedrock, unique("nobucket"), "s3://no-such-bucket-here/model/"))
    assert model["modelStatus"] == "Failed"
    assert "bucket 'no-such-bucket-here' does not exist" in model["failureMessage"]


def test_missing_config_json_fails(server, bedrock, tiny_model_dir, tmp_path):
    folder = broken_copy(tiny_model_dir, tmp_path, "noconfig")
    (folder / "config.json").unlink()
    model = import_variant(server, bedrock, folder, "noconfig")
    assert model["modelStatus"] == "Failed"
    assert "config.json is missing" in model["failureMessage"]
    assert model["modelArn"] not in [m["modelArn"] for m in bedrock.list_custom_models(modelStatus="Active")["modelSummaries"]]


def test_no_safetensors_fails(server, bedrock, tiny_model_dir, tmp_path):
    folder = broken_copy(tiny_model_dir, tmp_path, "noweights")
    (folder / "model.safetensors").unlink()
    model = import_variant(server, bedrock, folder, "noweights")
    assert model["modelStatus"] == "Failed"
    assert ".safetensors" in model["failureMessage"]
    assert "No .safetensors weights" in model["failureMessage"]


def test_truncated_safetensors_fails_and_leaves_no_artifacts(server, bedrock, tiny_model_dir, tmp_path):
    folder = broken_copy(tiny_model_dir, tmp_path, "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model = import_variant(server, bedrock, folder, "truncated")
    assert model["modelStatus"] == "Failed"
    message = model["failureMessage"]
    assert "model.safetensors" in message
    assert "shorter than its header" in message
    assert not store_folder(server, "us-east-1", model["modelArn"]).exists()


def test_config_that_does_not_match_the_weights_fails(server, bedrock, tiny_model_dir, tmp_path):
    folder = broken_copy(tiny_model_dir, tmp_path, "mismatch")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    model = import_variant(server, bedrock, folder, "mismatch")
    assert model["modelStatus"] == "Failed"
    message = model["failureMessage"]
    assert "model.safetensors" in message
    assert "has shape" in message and "but the config expects" in message and "64]" in message


# ------------------------------------------------------------------------------------------
# CreateCustomModel: conflicts, idempotency, validation

def test_taken_name_is_a_conflict(bedrock, imported, empty_prefix):
    with pytest.raises(bedrock.exceptions.ConflictException) as excinfo:
        create_import(bedrock, imported["name"], empty_prefix)
    assert status_code(excinfo) == 400  # the service model gives ConflictException status 400
    assert imported["name"] in excinfo.value.response["Error"]["Message"]
    names = [m["modelName"] for m in bedrock.list_custom_models(nameContains=imported["name"])["modelSummaries"]]
    assert names == [imported["name"]]


def test_same_client_request_token_and_params_returns_the_same_model(bedrock, empty_prefix):
    name, token = unique("idem"), uuid.uuid4().hex
    first = create_import(bedrock, name, empty_prefix, clientRequestToken=token)
    again = create_import(bedrock, name, empty_prefix, clientRequestToken=token)
    assert again == first
    summaries = bedrock.list_custom_models(nameContains=name)["modelSummaries"]
    assert [m["modelArn"] for m in summaries] == [first]

    with pytest.raises(bedrock.exceptions.ConflictException) as excinfo:
        create_import(bedrock, name, "s3://import-source/other-prefix/", clientRequestToken=token)
    assert status_code(excinfo) == 400  # the service model gives ConflictException status 400
    with pytest.raises(bedrock.exceptions.ConflictException):
        create_import(bedrock, unique("idem-other"), empty_prefix, clientRequestToken=token)
    assert [m["modelArn"] for m in bedrock.list_custom_models(nameContains="idem")["modelSummaries"]] == [first]


@pytest.mark.parametrize("uri", ["s3://bucket/../x", "s3://Bucket/model/", "s3://ab", "https://bucket/model/"])
def test_invalid_s3_uri_is_a_validation_error(bedrock, uri):
    name = unique("baduri")
    with pytest.raises(bedrock.exceptions.ValidationException) as excinfo:
        create_import(bedrock, name, uri)
    assert status_code(excinfo) == 400
    assert "s3Uri" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.get_custom_model(modelIdentifier=name)


def test_invalid_model_name_is_a_validation_error(bedrock, empty_prefix):
    with pytest.raises(bedrock.exceptions.ValidationException) as excinfo:
        create_import(bedrock, "bad name!", empty_prefix)
    assert "modelName" in excinfo.value.response["Error"]["Message"]


MODEL_SOURCE_OPTIONAL = "customModelDataSource" in load_service_model("bedrock").shape_for(
    "CreateCustomModelRequest").members


@pytest.mark.parametrize("source, says, says_before_1_44", [
    ({}, "modelSourceConfig is required",
     "Value null at 'modelSourceConfig' failed to satisfy constraint: Member must not be null"),
    ({"customModelDataSource": {"modelPackageArnDataSource": {
        "modelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/pkg/1"}}},
     "customModelDataSource (a SageMaker AI model package) is not supported",
     "Value null at 'modelSourceConfig' failed to satisfy constraint: Member must not be null"),
])
def test_a_model_source_is_needed(server, source, says, says_before_1_44):
    """botocore 1.44's model makes modelSourceConfig optional beside customModelDataSource: sent raw
    (an older boto3 would refuse it client-side), a create without an S3 source is a ValidationException.
    With an older model installed, the model's own checks refuse both requests (the server's answer
    follows the installed model)."""
    name = unique("nosource")
    response = httpx.post(f"{server.url}/custom-models/create-custom-model", timeout=30,
                          json={"modelName": name, "roleArn": f"arn:aws:iam::{ACCOUNT}:role/import", **source})
    assert response.status_code == 400 and response.headers["x-amzn-ErrorType"].startswith("ValidationException")
    assert (says if MODEL_SOURCE_OPTIONAL else says_before_1_44) in response.json()["message"]


# ------------------------------------------------------------------------------------------
# ListCustomModels

def test_list_pages_through_everything_once(listed):
    client, models = listed
    expected = [m["modelArn"] for m in models]
    pages, token = [], None
    while True:
        response = client.list_custom_models(maxResults=10, **({"nextToken": token} if token else {}))
        pages.append([m["modelArn"] for m in response["modelSummaries"]])
        token = response.get("nextToken")
        if not token:
            break
    assert [len(page) for page in pages] == [10, 10, 5]
    seen = [arn for page in pages for arn in page]
    assert len(seen) == len(set(seen)) == 25
    assert seen == list(reversed(expected))  # default: newest first


def test_list_with_the_boto3_paginator(listed):
    client, models = listed
    pages = list(client.get_paginator("list_custom_models").paginate(
        sortOrder="Ascending", PaginationConfig={"PageSize": 7}))
    assert [len(p["modelSummaries"]) for p in pages] == [7, 7, 7, 4]
    assert [m["modelArn"] for p in pages for m in p["modelSummaries"]] == [m["modelArn"] for m in models]


def test_list_summaries_have_the_modelled_fields(listed):
    client, models = listed
    summary = client.list_custom_models(maxResults=1, sortOrder="Ascending")["modelSummaries"][0]
    first = models[0]
    assert summary["modelArn"] == first["modelArn"]
    assert summary["modelName"] == "list-a-00"
    assert summary["creationTime"] == first["creationTime"]
    assert summary["customizationType"] == "IMPORTED"
    assert summary["ownerAccountId"] == ACCOUNT
    assert summary["modelStatus"] == "Failed"


def test_list_sort_orders(listed):
    client, models = listed
    ascending = client.list_custom_models(sortBy="CreationTime", sortOrder="Ascending")["modelSummaries"]
    descending = client.list_custom_models(sortBy="CreationTime", sortOrder="Descending")["modelSummaries"]
    assert [m["modelArn"] for m in ascending] == [m["modelArn"] for m in models]
    assert [m["modelArn"] for m in descending] == [m["modelArn"] for m in reversed(models)]
    times = [m["creationTime"] for m in ascending]
    assert times == sorted(times)


def test_list_creation_time_filters(listed):
    client, models = listed
    times = [m["creationTime"] for m in models]
    after = client.list_custom_models(creationTimeAfter=times[14], sortOrder="Ascending")["modelSummaries"]
    assert [m["modelArn"] for m in after] == [m["modelArn"] for m in models[15:]]
    before = client.list_custom_models(creationTimeBefore=times[5], sortOrder="Ascending")["modelSummaries"]
    assert [m["modelArn"] for m in before] == [m["modelArn"] for m in models[:5]]
    between = client.list_custom_models(creationTimeAfter=times[3], creationTimeBefore=times[8],
                                        sortOrder="Ascending")["modelSummaries"]
    assert [m["modelArn"] for m in between] == [m["modelArn"] for m in models[4:8]]
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    assert client.list_custom_models(creationTimeAfter=future)["modelSummaries"] == []


def test_list_name_contains(listed):
    client, models = listed
    found = client.list_custom_models(nameContains="list-b", sortOrder="Ascending")["modelSummaries"]
    assert [m["modelName"] for m in found] == [f"list-b-{i:02d}" for i in range(20, 25)]
    assert [m["modelName"] for m in client.list_custom_models(nameContains="a-07")["modelSummaries"]] == ["list-a-07"]
    assert client.list_custom_models(nameContains="zzz")["modelSummaries"] == []
    # only a substring of the name, never a pattern
    assert client.list_custom_models(nameContains="list_a")["modelSummaries"] == []
    with pytest.raises(client.exceptions.ValidationException) as excinfo:
        client.list_custom_models(nameContains="%")
    assert "nameContains" in excinfo.value.response["Error"]["Message"]


def test_list_model_status_filter(listed, bedrock, imported):
    client, models = listed
    failed = client.list_custom_models(modelStatus="Failed", maxResults=100)["modelSummaries"]
    assert len(failed) == 25
    assert client.list_custom_models(modelStatus="Active")["modelSummaries"] == []
    assert client.list_custom_models(modelStatus="Creating")["modelSummaries"] == []
    active = bedrock.list_custom_models(modelStatus="Active")["modelSummaries"]
    assert imported["arn"] in [m["modelArn"] for m in active]
    assert {m["modelStatus"] for m in active} == {"Active"}


def test_list_is_owned_and_base_model_filters(listed):
    client, models = listed
    assert len(client.list_custom_models(isOwned=True, maxResults=100)["modelSummaries"]) == 25
    assert client.list_custom_models(isOwned=False)["modelSummaries"] == []
    assert client.list_custom_models(baseModelArnEquals=FOUNDATION_ARN)["modelSummaries"] == []
    assert client.list_custom_models(foundationModelArnEquals=FOUNDATION_ARN)["modelSummaries"] == []


def test_list_filters_paginate_together(listed):
    client, models = listed
    first = client.list_custom_models(nameContains="list-a", maxResults=8, sortOrder="Ascending")
    second = client.list_custom_models(nameContains="list-a", maxResults=8, sortOrder="Ascending",
                                       nextToken=first["nextToken"])
    third = client.list_custom_models(nameContains="list-a", maxResults=8, sortOrder="Ascending",
                                      nextToken=second["nextToken"])
    names = [m["modelName"] for page in (first, second, third) for m in page["modelSummaries"]]
    assert names == [f"list-a-{i:02d}" for i in range(20)]
    assert "nextToken" not in third


def test_next_token_with_other_filters_or_forged_is_rejected(listed, bedrock):
    client, models = listed
    token = client.list_custom_models(maxResults=10)["nextToken"]
    for other in ({"nameContains": "list"}, {"sortOrder": "Ascending"}, {"modelStatus": "Failed"}):
        with pytest.raises(client.exceptions.ValidationException) as excinfo:
            client.list_custom_models(maxResults=10, nextToken=token, **other)
        assert status_code(excinfo) == 400
        assert "nextToken" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(bedrock.exceptions.ValidationException):
        bedrock.list_custom_models(maxResults=10, nextToken=token)  # another region's token
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (forged, "not-a-token", "eyJmIjoiMSJ9"):
        with pytest.raises(client.exceptions.ValidationException):
            client.list_custom_models(maxResults=10, nextToken=bad)
    # the genuine token still works with the same request
    assert len(client.list_custom_models(maxResults=10, nextToken=token)["modelSummaries"]) == 10


def test_list_max_results_is_validated(server, listed):
    client = server.client(LIST_REGION, validate=False)  # let the server, not botocore, check it
    for bad in (0, 1001):
        with pytest.raises(client.exceptions.ValidationException) as excinfo:
            client.list_custom_models(maxResults=bad)
        assert "maxResults" in excinfo.value.response["Error"]["Message"]


# ------------------------------------------------------------------------------------------
# DeleteCustomModel

def test_delete_removes_the_model_and_its_artifacts(server, bedrock, tiny_model_dir):
    uri = upload_folder(server, SOURCE_BUCKET, "to-delete", tiny_model_dir)
    name = unique("delete-me")
    arn = create_import(bedrock, name, uri, modelTags=[{"key": "k", "value": "v"}])
    assert wait_final(bedrock, arn)["modelStatus"] == "Active"
    folder = store_folder(server, "us-east-1", arn)
    assert (folder / "model.safetensors").is_file()

    response = bedrock.delete_custom_model(modelIdentifier=name)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert not folder.exists()
    for identifier in (name, arn):
        with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
            bedrock.get_custom_model(modelIdentifier=identifier)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.list_tags_for_resource(resourceARN=arn)
    assert arn not in [m["modelArn"] for m in bedrock.list_custom_models(nameContains=name)["modelSummaries"]]
    # the user's source files are not touched
    assert (server.folder(SOURCE_BUCKET) / "to-delete" / "model.safetensors").is_file()
    # the name is free again
    again = create_import(bedrock, name, "s3://import-source/nothing-here/")
    assert again != arn
    assert wait_final(bedrock, again)["modelStatus"] == "Failed"
    bedrock.delete_custom_model(modelIdentifier=again)  # a Failed model can be deleted, by ARN


def test_delete_unknown_model_is_not_found(bedrock):
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as excinfo:
        bedrock.delete_custom_model(modelIdentifier="never-created")
    assert status_code(excinfo) == 404
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.delete_custom_model(
            modelIdentifier=f"arn:aws:bedrock:us-east-1:{ACCOUNT}:custom-model/imported/zzzzzzzzzzzz")


def test_delete_while_creating_is_a_conflict(make_server):
    api_only = make_server("api-only", workers=0)
    client = api_only.client()
    api_only.folder(SOURCE_BUCKET)
    arn = create_import(client, "stays-creating", f"s3://{SOURCE_BUCKET}/x/")
    with pytest.raises(client.exceptions.ConflictException) as excinfo:
        client.delete_custom_model(modelIdentifier=arn)
    assert status_code(excinfo) == 400  # the service model gives ConflictException status 400
    assert client.get_custom_model(modelIdentifier=arn)["modelStatus"] == "Creating"
    assert [m["modelStatus"] for m in client.list_custom_models()["modelSummaries"]] == ["Creating"]


# ------------------------------------------------------------------------------------------
# a real S3 endpoint (moto) instead of the folder store

def test_import_through_an_s3_endpoint(make_server, moto_s3, tiny_model_dir):
    s3 = s3_client(moto_s3)
    bucket = unique("user-models")
    s3.create_bucket(Bucket=bucket)
    uploaded = files_of(tiny_model_dir)
    for name, content in uploaded.items():
        s3.put_object(Bucket=bucket, Key=f"llama/tiny/{name}", Body=content)

    with_s3 = make_server("with-s3", s3_endpoint_url=moto_s3)
    client = with_s3.client()
    arn = create_import(client, "from-real-s3", f"s3://{bucket}/llama/tiny/")
    model = wait_final(client, arn)
    assert model["modelStatus"] == "Active", model.get("failureMessage")

    prefix = f"{ACCOUNT}/us-east-1/custom-models/{model_id(arn)}/"
    listing = s3.list_objects_v2(Bucket=MODEL_BUCKET, Prefix=prefix)["Contents"]
    stored = {obj["Key"][len(prefix):]: s3.get_object(Bucket=MODEL_BUCKET, Key=obj["Key"])["Body"].read()
              for obj in listing}
    manifest = json.loads(stored.pop("bedrock-local-manifest.json"))["files"]
    assert stored == uploaded
    assert {n: m["sha256"] for n, m in manifest.items()} == {n: hashlib.sha256(c).hexdigest() for n, c in uploaded.items()}
    # nothing was written to the embedded folder store
    assert not (with_s3.data_dir / "s3" / MODEL_BUCKET / ACCOUNT).exists()

    client.delete_custom_model(modelIdentifier=arn)
    assert s3.list_objects_v2(Bucket=MODEL_BUCKET, Prefix=prefix).get("KeyCount", 0) == 0


# ------------------------------------------------------------------------------------------
# restart persistence (last: it restarts the module server)

def snapshot(server, regions) -> dict:
    state = {}
    for region in regions:
        client = server.client(region)
        for page in client.get_paginator("list_custom_models").paginate():
            for summary in page["modelSummaries"]:
                model = client.get_custom_model(modelIdentifier=summary["modelArn"])
                model.pop("ResponseMetadata")
                tags = client.list_tags_for_resource(resourceARN=summary["modelArn"])["tags"]
                state[summary["modelArn"]] = {"summary": summary, "model": model, "tags": tags}
    return state


def test_everything_survives_a_restart(server, bedrock, imported, listed):
    regions = ("us-east-1", "us-west-2", LIST_REGION)
    for region in regions:
        client = server.client(region)
        wait_until(lambda: not client.list_custom_models(modelStatus="Creating")["modelSummaries"],
                   what=f"no model Creating in {region}")
    before = snapshot(server, regions)
    assert imported["arn"] in before and len(before) >= 26
    assert before[imported["arn"]]["tags"]
    files_before = files_of(store_folder(server, "us-east-1", imported["arn"]))
    listing = server.client(LIST_REGION)
    first_page = listing.list_custom_models(maxResults=10)

    server.restart()

    after = snapshot(server, regions)
    assert after == before
    assert files_of(store_folder(server, "us-east-1", imported["arn"])) == files_before
    assert bedrock.get_custom_model(modelIdentifier=imported["name"])["modelStatus"] == "Active"
    # a page token made before the restart still works after it
    second_page = listing.list_custom_models(maxResults=10, nextToken=first_page["nextToken"])
    assert [m["modelArn"] for m in second_page["modelSummaries"]] == \
        [m["modelArn"] for m in listing.list_custom_models(maxResults=20)["modelSummaries"]][10:]
