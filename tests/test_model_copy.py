"""CreateModelCopyJob / GetModelCopyJob / ListModelCopyJobs against a real bedrock-local server,
driven through boto3: a model imported in us-east-1 is copied by a client of another region, the
worker really moves and verifies the bytes, and the target model appears in the target region."""

import datetime
import json
import re
import time
import uuid
from pathlib import Path

import pytest

from conftest import upload_folder, wait_until

ACCOUNT = "123456789012"
SOURCE_REGION = "us-east-1"
TARGET_REGION = "us-west-2"
LIST_REGION = "eu-central-1"  # the list tests own this region of the module server
IDEM_REGION = "ap-northeast-1"  # and the idempotency test this one
MODEL_BUCKET = "bedrock-local-models"
SOURCE_BUCKET = "copy-source"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
JOB_ARN = re.compile(rf"arn:aws:bedrock:(?P<region>[a-z0-9-]+):{ACCOUNT}:model-copy-job/(?P<id>[a-z0-9]{{12}})")
MODEL_ARN = re.compile(rf"arn:aws:bedrock:(?P<region>[a-z0-9-]+):{ACCOUNT}:custom-model/imported/(?P<id>[a-z0-9]{{12}})")
FOUNDATION_ARN = "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0"
JOB_FIELDS = {"jobArn", "status", "creationTime", "targetModelArn", "targetModelName", "sourceAccountId",
              "sourceModelArn", "sourceModelName", "targetModelKmsKeyArn", "targetModelTags"}


# ------------------------------------------------------------------------------------------
# helpers

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def status_code(excinfo) -> int:
    return excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


def import_model(server, client, folder: Path | None, name: str) -> str:
    if folder is None:
        server.folder(SOURCE_BUCKET)
        uri = f"s3://{SOURCE_BUCKET}/empty-prefix/"
    else:
        uri = upload_folder(server, SOURCE_BUCKET, unique("upload"), folder)
    return client.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]


def wait_model(client, arn: str, timeout: float = 90.0) -> dict:
    def done():
        model = client.get_custom_model(modelIdentifier=arn)
        return model if model["modelStatus"] != "Creating" else None
    return wait_until(done, timeout=timeout, what=f"{arn} to leave Creating")


def wait_job(client, arn: str, timeout: float = 90.0) -> dict:
    def done():
        job = client.get_model_copy_job(jobArn=arn)
        return job if job["status"] != "InProgress" else None
    return wait_until(done, timeout=timeout, what=f"{arn} to end")


def copy(client, source_arn: str, name: str, **extra) -> str:
    response = client.create_model_copy_job(sourceModelArn=source_arn, targetModelName=name, **extra)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert JOB_ARN.fullmatch(response["jobArn"])["region"] == client.meta.region_name
    return response["jobArn"]


def store_folder(server, arn: str) -> Path:
    parts = MODEL_ARN.fullmatch(arn)
    return server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / parts["region"] / "custom-models" / parts["id"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def all_jobs(client, **filters) -> list[dict]:
    return [job for page in client.get_paginator("list_model_copy_jobs").paginate(**filters)
            for job in page["modelCopyJobSummaries"]]


# ------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def east(server):
    return server.client(SOURCE_REGION)


@pytest.fixture(scope="module")
def west(server):
    return server.client(TARGET_REGION)


@pytest.fixture(scope="module")
def source(server, east, tiny_model_dir):
    """An Active imported model in us-east-1."""
    name = unique("copy-src")
    arn = import_model(server, east, tiny_model_dir, name)
    model = wait_model(east, arn)
    assert model["modelStatus"] == "Active", model.get("failureMessage")
    return {"arn": arn, "name": name}


@pytest.fixture(scope="module")
def damaged_source(server, east, tiny_model_dir):
    """An Active imported model in us-east-1 whose model.safetensors was then damaged in the model
    store (same size, different bytes), so its checksum no longer matches the manifest."""
    name = unique("damaged-src")
    arn = import_model(server, east, tiny_model_dir, name)
    assert wait_model(east, arn)["modelStatus"] == "Active"
    weights = store_folder(server, arn) / "model.safetensors"
    content = bytearray(weights.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 16] = bytes(b ^ 0xFF for b in content[middle:middle + 16])
    weights.write_bytes(bytes(content))
    return {"arn": arn, "name": name}


@pytest.fixture(scope="module")
def failed_source(server, east):
    name = unique("failed-src")
    arn = import_model(server, east, None, name)
    assert wait_model(east, arn)["modelStatus"] == "Failed"
    return {"arn": arn, "name": name}


@pytest.fixture(scope="module")
def copied(server, west, source):
    """One copy of `source` into us-west-2, with a KMS key id and tags, and what was seen while it ran."""
    name = unique("copied")
    tags = [{"key": "project", "value": "copy-test"}, {"key": "owner", "value": "ml-team"}]
    started = datetime.datetime.now(datetime.timezone.utc)
    job_arn = copy(west, source["arn"], name, modelKmsKeyId=KEY_ID, targetModelTags=tags)
    first = west.get_model_copy_job(jobArn=job_arn)
    job = wait_job(west, job_arn)
    return {"arn": job_arn, "name": name, "tags": tags, "first": first, "job": job, "started": started}


# ------------------------------------------------------------------------------------------
# the copy

def test_copy_job_completes_with_every_field(copied, source):
    first, job = copied["first"], copied["job"]
    assert first["status"] in ("InProgress", "Completed")
    assert job["status"] == "Completed", job.get("failureMessage")
    job.pop("ResponseMetadata")
    assert set(job) == JOB_FIELDS  # every member the model lists, failureMessage aside
    assert job["jobArn"] == copied["arn"]
    assert JOB_ARN.fullmatch(job["jobArn"])["region"] == TARGET_REGION
    assert copied["started"] - datetime.timedelta(seconds=5) < job["creationTime"] \
        <= datetime.datetime.now(datetime.timezone.utc)
    assert first["creationTime"] == job["creationTime"]
    assert job["targetModelName"] == copied["name"]
    assert MODEL_ARN.fullmatch(job["targetModelArn"])["region"] == TARGET_REGION
    assert job["targetModelArn"] != source["arn"]
    assert job["sourceAccountId"] == ACCOUNT
    assert job["sourceModelArn"] == source["arn"]
    assert job["sourceModelName"] == source["name"]
    assert job["targetModelKmsKeyArn"] == f"arn:aws:kms:{TARGET_REGION}:{ACCOUNT}:key/{KEY_ID}"
    assert job["targetModelTags"] == copied["tags"]


def test_target_model_is_active_in_the_target_region_with_tags(copied, west, source):
    target = copied["job"]["targetModelArn"]
    for identifier in (target, copied["name"]):
        model = west.get_custom_model(modelIdentifier=identifier)
        assert model["modelArn"] == target
        assert model["modelName"] == copied["name"]
        assert model["modelStatus"] == "Active"
        assert model["customizationType"] == "IMPORTED"
        assert model["modelKmsKeyArn"] == f"arn:aws:kms:{TARGET_REGION}:{ACCOUNT}:key/{KEY_ID}"
        assert "failureMessage" not in model
    tags = west.list_tags_for_resource(resourceARN=target)["tags"]
    assert sorted((t["key"], t["value"]) for t in tags) == [("owner", "ml-team"), ("project", "copy-test")]
    listed = west.list_custom_models(nameContains=copied["name"])["modelSummaries"]
    assert [(m["modelArn"], m["modelStatus"]) for m in listed] == [(target, "Active")]


def test_artifacts_are_the_same_bytes_in_both_regions(server, copied, source, tiny_model_dir):
    source_folder = store_folder(server, source["arn"])
    target_folder = store_folder(server, copied["job"]["targetModelArn"])
    assert source_folder != target_folder
    assert f"/{TARGET_REGION}/custom-models/" in str(target_folder)
    source_files, target_files = files_of(source_folder), files_of(target_folder)
    assert target_files == source_files
    manifest = json.loads(target_files.pop("bedrock-local-manifest.json"))["files"]
    assert target_files == files_of(tiny_model_dir)
    assert set(manifest) == set(target_files)


def test_copied_model_is_not_in_the_source_region(copied, east, source):
    with pytest.raises(east.exceptions.ResourceNotFoundException):
        east.get_custom_model(modelIdentifier=copied["name"])
    with pytest.raises(east.exceptions.ResourceNotFoundException):
        east.get_custom_model(modelIdentifier=copied["job"]["targetModelArn"])
    assert copied["name"] not in [m["modelName"] for m in east.list_custom_models()["modelSummaries"]]
    # and the copy job belongs to the target region only
    with pytest.raises(east.exceptions.ResourceNotFoundException):
        east.get_model_copy_job(jobArn=copied["arn"])
    assert copied["arn"] not in [j["jobArn"] for j in all_jobs(east)]
    # the source is untouched
    assert east.get_custom_model(modelIdentifier=source["arn"])["modelStatus"] == "Active"


# ------------------------------------------------------------------------------------------
# rejected requests

def test_source_in_the_same_region_is_a_validation_error(east, source):
    with pytest.raises(east.exceptions.ValidationException) as excinfo:
        east.create_model_copy_job(sourceModelArn=source["arn"], targetModelName=unique("same-region"))
    assert status_code(excinfo) == 400
    assert SOURCE_REGION in excinfo.value.response["Error"]["Message"]
    assert all_jobs(east) == []


def test_unknown_source_is_not_found(west, source):
    before = len(all_jobs(west))
    unknown = source["arn"][:-12] + "zzzzzzzzzzzz"
    other_account = source["arn"].replace(ACCOUNT, "210987654321")
    for arn in (unknown, other_account):
        with pytest.raises(west.exceptions.ResourceNotFoundException) as excinfo:
            west.create_model_copy_job(sourceModelArn=arn, targetModelName=unique("unknown"))
        assert status_code(excinfo) == 404
    assert len(all_jobs(west)) == before


def test_source_that_is_not_active_is_a_validation_error(west, failed_source):
    name = unique("from-failed")
    with pytest.raises(west.exceptions.ValidationException) as excinfo:
        west.create_model_copy_job(sourceModelArn=failed_source["arn"], targetModelName=name)
    assert "Failed" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.get_custom_model(modelIdentifier=name)  # no target model was made


@pytest.mark.parametrize("arn", [FOUNDATION_ARN, "arn:aws:bedrock:us-east-1:123456789012:custom-model/nope",
                                 "not-an-arn-at-all-really"])
def test_foundation_model_or_malformed_source_is_a_validation_error(west, arn):
    with pytest.raises(west.exceptions.ValidationException) as excinfo:
        west.create_model_copy_job(sourceModelArn=arn, targetModelName=unique("bad-source"))
    assert status_code(excinfo) == 400
    assert "sourceModelArn" in excinfo.value.response["Error"]["Message"]


def test_target_name_taken_in_the_target_region_is_a_conflict(west, source, copied):
    # the source's own name is free in us-west-2: names are per region
    job = wait_job(west, copy(west, source["arn"], source["name"]))
    assert job["status"] == "Completed"
    before = len(all_jobs(west))
    for taken in (source["name"], copied["name"]):
        with pytest.raises(west.exceptions.ConflictException) as excinfo:
            west.create_model_copy_job(sourceModelArn=source["arn"], targetModelName=taken)
        assert status_code(excinfo) == 400  # the service model gives ConflictException status 400
        assert taken in excinfo.value.response["Error"]["Message"]
    assert len(all_jobs(west)) == before
    assert len(west.list_custom_models(nameContains=source["name"])["modelSummaries"]) == 1


def test_get_unknown_copy_job_is_not_found(west, copied):
    with pytest.raises(west.exceptions.ResourceNotFoundException) as excinfo:
        west.get_model_copy_job(jobArn=copied["arn"][:-12] + "zzzzzzzzzzzz")
    assert status_code(excinfo) == 404
    with pytest.raises(west.exceptions.ValidationException):
        west.get_model_copy_job(jobArn="arn:aws:bedrock:us-west-2:123456789012:model-copy-job/NOT-VALID")


# ------------------------------------------------------------------------------------------
# a damaged source

def test_damaged_source_fails_the_job_and_the_target_model(server, west, damaged_source):
    name = unique("from-damaged")
    job = wait_job(west, copy(west, damaged_source["arn"], name))
    assert job["status"] == "Failed"
    message = job["failureMessage"]
    assert "model.safetensors" in message and "checksum" in message
    target = west.get_custom_model(modelIdentifier=name)
    assert target["modelArn"] == job["targetModelArn"]
    assert target["modelStatus"] == "Failed"
    assert "checksum" in target["failureMessage"] and job["jobArn"] in target["failureMessage"]
    assert not store_folder(server, job["targetModelArn"]).exists()  # nothing half-copied is left


# ------------------------------------------------------------------------------------------
# ListModelCopyJobs

@pytest.fixture(scope="module")
def listed(server, source, damaged_source):
    """Seven jobs in LIST_REGION, in creation order: five from `source` (Completed), two from
    `damaged_source` (Failed), interleaved."""
    client = server.client(LIST_REGION)
    plan = [("good", source), ("good", source), ("bad", damaged_source), ("good", source), ("good", source),
            ("bad", damaged_source), ("good", source)]
    job_arns = []
    for index, (kind, src) in enumerate(plan):
        job_arns.append(copy(client, src["arn"], f"lst-{kind}-{index}"))
        time.sleep(0.003)  # distinct creation times (millisecond precision) for the time filters
    jobs = [wait_job(client, arn) for arn in job_arns]
    assert [j["status"] for j in jobs] == ["Failed" if kind == "bad" else "Completed" for kind, _ in plan]
    return client, jobs


def arns(jobs) -> list[str]:
    return [j["jobArn"] for j in jobs]


def test_list_copy_jobs_pages_through_everything_once(listed):
    client, jobs = listed
    pages, token = [], None
    while True:
        response = client.list_model_copy_jobs(maxResults=3, sortOrder="Ascending",
                                               **({"nextToken": token} if token else {}))
        pages.append(response["modelCopyJobSummaries"])
        token = response.get("nextToken")
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [j["jobArn"] for p in pages for j in p] == arns(jobs)
    paginated = list(client.get_paginator("list_model_copy_jobs").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(p["modelCopyJobSummaries"]) for p in paginated] == [2, 2, 2, 1]
    assert [j["jobArn"] for p in paginated for j in p["modelCopyJobSummaries"]] == list(reversed(arns(jobs)))


def test_list_copy_jobs_summaries_have_the_fields(listed, source):
    client, jobs = listed
    summary = client.list_model_copy_jobs(maxResults=1, sortOrder="Ascending")["modelCopyJobSummaries"][0]
    expected = dict(jobs[0])
    expected.pop("ResponseMetadata")
    assert summary == expected
    assert summary["sourceModelArn"] == source["arn"] and summary["targetModelName"] == "lst-good-0"
    failed = client.list_model_copy_jobs(statusEquals="Failed")["modelCopyJobSummaries"]
    assert all("checksum" in j["failureMessage"] for j in failed)


def test_list_copy_jobs_sort_orders(listed):
    client, jobs = listed
    assert arns(client.list_model_copy_jobs(sortBy="CreationTime", sortOrder="Ascending")["modelCopyJobSummaries"]) \
        == arns(jobs)
    assert arns(client.list_model_copy_jobs(sortBy="CreationTime", sortOrder="Descending")["modelCopyJobSummaries"]) \
        == list(reversed(arns(jobs)))
    assert arns(client.list_model_copy_jobs()["modelCopyJobSummaries"]) == list(reversed(arns(jobs)))


def test_list_copy_jobs_creation_time_filters(listed):
    client, jobs = listed
    times = [j["creationTime"] for j in jobs]
    after = client.list_model_copy_jobs(creationTimeAfter=times[4], sortOrder="Ascending")["modelCopyJobSummaries"]
    assert arns(after) == arns(jobs[5:])
    before = client.list_model_copy_jobs(creationTimeBefore=times[2], sortOrder="Ascending")["modelCopyJobSummaries"]
    assert arns(before) == arns(jobs[:2])
    between = client.list_model_copy_jobs(creationTimeAfter=times[1], creationTimeBefore=times[5],
                                          sortOrder="Ascending")["modelCopyJobSummaries"]
    assert arns(between) == arns(jobs[2:5])
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    assert client.list_model_copy_jobs(creationTimeAfter=future)["modelCopyJobSummaries"] == []


def test_list_copy_jobs_status_filter(listed):
    client, jobs = listed
    completed = client.list_model_copy_jobs(statusEquals="Completed", sortOrder="Ascending")["modelCopyJobSummaries"]
    assert [j["targetModelName"] for j in completed] == ["lst-good-0", "lst-good-1", "lst-good-3", "lst-good-4",
                                                         "lst-good-6"]
    failed = client.list_model_copy_jobs(statusEquals="Failed", sortOrder="Ascending")["modelCopyJobSummaries"]
    assert [j["targetModelName"] for j in failed] == ["lst-bad-2", "lst-bad-5"]
    assert client.list_model_copy_jobs(statusEquals="InProgress")["modelCopyJobSummaries"] == []


def test_list_copy_jobs_source_filters(listed, source, damaged_source):
    client, jobs = listed
    assert len(client.list_model_copy_jobs(sourceAccountEquals=ACCOUNT)["modelCopyJobSummaries"]) == 7
    assert client.list_model_copy_jobs(sourceAccountEquals="210987654321")["modelCopyJobSummaries"] == []
    from_good = client.list_model_copy_jobs(sourceModelArnEquals=source["arn"])["modelCopyJobSummaries"]
    assert len(from_good) == 5 and {j["sourceModelArn"] for j in from_good} == {source["arn"]}
    from_bad = client.list_model_copy_jobs(sourceModelArnEquals=damaged_source["arn"], sortOrder="Ascending")
    assert arns(from_bad["modelCopyJobSummaries"]) == [jobs[2]["jobArn"], jobs[5]["jobArn"]]
    assert client.list_model_copy_jobs(
        sourceModelArnEquals=source["arn"][:-12] + "zzzzzzzzzzzz")["modelCopyJobSummaries"] == []


def test_list_copy_jobs_target_name_contains(listed):
    client, jobs = listed
    bad = client.list_model_copy_jobs(targetModelNameContains="bad", sortOrder="Ascending")["modelCopyJobSummaries"]
    assert [j["targetModelName"] for j in bad] == ["lst-bad-2", "lst-bad-5"]
    assert [j["targetModelName"] for j in client.list_model_copy_jobs(
        targetModelNameContains="good-3")["modelCopyJobSummaries"]] == ["lst-good-3"]
    assert client.list_model_copy_jobs(targetModelNameContains="nothing")["modelCopyJobSummaries"] == []
    # filters combine, and paginate together
    first = client.list_model_copy_jobs(targetModelNameContains="good", statusEquals="Completed", maxResults=4)
    second = client.list_model_copy_jobs(targetModelNameContains="good", statusEquals="Completed", maxResults=4,
                                         nextToken=first["nextToken"])
    assert len(first["modelCopyJobSummaries"]) == 4 and len(second["modelCopyJobSummaries"]) == 1
    assert "nextToken" not in second


def test_list_copy_jobs_rejects_a_token_with_other_filters_or_forged(listed, server):
    client, jobs = listed
    token = client.list_model_copy_jobs(maxResults=3)["nextToken"]
    for other in ({"statusEquals": "Completed"}, {"sortOrder": "Ascending"}, {"targetModelNameContains": "good"}):
        with pytest.raises(client.exceptions.ValidationException) as excinfo:
            client.list_model_copy_jobs(maxResults=3, nextToken=token, **other)
        assert "nextToken" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(client.exceptions.ValidationException):
        client.list_model_copy_jobs(maxResults=3, nextToken=token[:-3] + ("xyz" if not token.endswith("xyz") else "abc"))
    # a ListCustomModels token is not a ListModelCopyJobs token
    models_token = client.list_custom_models(maxResults=2)["nextToken"]
    with pytest.raises(client.exceptions.ValidationException):
        client.list_model_copy_jobs(maxResults=2, nextToken=models_token)
    assert arns(client.list_model_copy_jobs(maxResults=3, nextToken=token)["modelCopyJobSummaries"]) == \
        list(reversed(arns(jobs)))[3:6]


# ------------------------------------------------------------------------------------------
# idempotency

def test_same_client_request_token_returns_the_same_job(server, source):
    client = server.client(IDEM_REGION)
    token = uuid.uuid4().hex
    params = dict(sourceModelArn=source["arn"], targetModelName=unique("idem"), modelKmsKeyId="alias/my-key",
                  clientRequestToken=token)
    response = client.create_model_copy_job(**params)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 201
    first = response["jobArn"]
    again = client.create_model_copy_job(**params)["jobArn"]
    assert again == first
    job = wait_job(client, first)
    assert job["status"] == "Completed"
    assert job["targetModelKmsKeyArn"] == f"arn:aws:kms:{IDEM_REGION}:{ACCOUNT}:alias/my-key"
    assert client.create_model_copy_job(**params)["jobArn"] == first  # a retry after it ended, too
    assert arns(all_jobs(client)) == [first]
    assert [m["modelArn"] for m in client.list_custom_models()["modelSummaries"]] == [job["targetModelArn"]]

    for changed in ({"targetModelName": unique("idem-other")}, {"modelKmsKeyId": KEY_ID},
                    {"targetModelTags": [{"key": "a", "value": "b"}]}):
        with pytest.raises(client.exceptions.ConflictException):
            client.create_model_copy_job(**{**params, **changed})
    assert arns(all_jobs(client)) == [first]


# ------------------------------------------------------------------------------------------
# the copy does not depend on its source once done

def test_copy_outlives_its_source(server, east, west, tiny_model_dir):
    name = unique("short-lived")
    arn = import_model(server, east, tiny_model_dir, name)
    assert wait_model(east, arn)["modelStatus"] == "Active"
    job = wait_job(west, copy(west, arn, unique("survivor")))
    assert job["status"] == "Completed"
    east.delete_custom_model(modelIdentifier=arn)
    assert not store_folder(server, arn).exists()
    target = west.get_custom_model(modelIdentifier=job["targetModelArn"])
    assert target["modelStatus"] == "Active"
    assert files_of(store_folder(server, job["targetModelArn"])).keys() >= {"model.safetensors", "config.json"}
    # the job keeps pointing at the source it copied
    assert west.get_model_copy_job(jobArn=job["jobArn"])["sourceModelArn"] == arn


def test_a_copy_can_be_copied_again(server, copied, source):
    paris = server.client("eu-west-3")
    job = wait_job(paris, copy(paris, copied["job"]["targetModelArn"], unique("second-hop")))
    assert job["status"] == "Completed", job.get("failureMessage")
    assert job["sourceModelName"] == copied["name"]
    assert job["sourceModelArn"] == copied["job"]["targetModelArn"]
    assert job["targetModelTags"] == [] and "targetModelKmsKeyArn" not in job
    assert paris.get_custom_model(modelIdentifier=job["targetModelArn"])["modelStatus"] == "Active"
    assert files_of(store_folder(server, job["targetModelArn"])) == files_of(store_folder(server, source["arn"]))


# ------------------------------------------------------------------------------------------
# an API-only node queues the job; a worker runs it after a restart (restarts the module server)

def test_job_stays_in_progress_without_workers_and_runs_after_restart(server, east, source, tiny_model_dir):
    client = server.client("ca-central-1")
    doomed = import_model(server, east, tiny_model_dir, unique("doomed-src"))
    assert wait_model(east, doomed)["modelStatus"] == "Active"
    server.workers = 0
    try:
        server.restart()
        name = unique("queued")
        job_arn = copy(client, source["arn"], name, targetModelTags=[{"key": "queued", "value": "yes"}])
        job = client.get_model_copy_job(jobArn=job_arn)
        assert job["status"] == "InProgress"
        assert "failureMessage" not in job
        target = client.get_custom_model(modelIdentifier=name)
        assert target["modelStatus"] == "Creating" and target["modelArn"] == job["targetModelArn"]
        assert arns(client.list_model_copy_jobs(statusEquals="InProgress")["modelCopyJobSummaries"]) == [job_arn]
        assert client.list_model_copy_jobs(statusEquals="Completed")["modelCopyJobSummaries"] == []
        with pytest.raises(client.exceptions.ConflictException):
            client.delete_custom_model(modelIdentifier=name)  # still Creating
        # a model still Creating cannot be the source of a copy
        creating = import_model(server, east, None, unique("creating-src"))
        with pytest.raises(client.exceptions.ValidationException) as excinfo:
            client.create_model_copy_job(sourceModelArn=creating, targetModelName=unique("from-creating"))
        assert "Creating" in excinfo.value.response["Error"]["Message"]
        # a source deleted after the job was accepted, before it ran
        orphan_name = unique("orphan")
        orphan_arn = copy(client, doomed, orphan_name)
        east.delete_custom_model(modelIdentifier=doomed)
    finally:
        server.workers = 1
        server.restart()
    done = wait_job(client, job_arn)
    assert done["status"] == "Completed", done.get("failureMessage")
    assert done["creationTime"] == job["creationTime"]
    model = client.get_custom_model(modelIdentifier=name)
    assert model["modelStatus"] == "Active"
    assert client.list_tags_for_resource(resourceARN=model["modelArn"])["tags"] == [{"key": "queued", "value": "yes"}]
    assert files_of(store_folder(server, model["modelArn"])) == files_of(store_folder(server, source["arn"]))
    assert wait_model(east, creating)["modelStatus"] == "Failed"
    orphan = wait_job(client, orphan_arn)
    assert orphan["status"] == "Failed"
    assert doomed in orphan["failureMessage"] and "deleted" in orphan["failureMessage"]
    orphan_model = client.get_custom_model(modelIdentifier=orphan_name)
    assert orphan_model["modelStatus"] == "Failed" and "deleted" in orphan_model["failureMessage"]


# ------------------------------------------------------------------------------------------
# restart persistence (last)

REGIONS = (SOURCE_REGION, TARGET_REGION, LIST_REGION, IDEM_REGION, "ca-central-1", "eu-west-3")


def snapshot(server) -> dict:
    state = {}
    for region in REGIONS:
        client = server.client(region)
        for job in all_jobs(client):
            state[job["jobArn"]] = {"summary": job, "get": {
                k: v for k, v in client.get_model_copy_job(jobArn=job["jobArn"]).items() if k != "ResponseMetadata"}}
        for page in client.get_paginator("list_custom_models").paginate():
            for summary in page["modelSummaries"]:
                model = client.get_custom_model(modelIdentifier=summary["modelArn"])
                model.pop("ResponseMetadata")
                tags = client.list_tags_for_resource(resourceARN=summary["modelArn"])["tags"]
                state[summary["modelArn"]] = {"summary": summary, "model": model, "tags": tags}
    return state


def test_copy_jobs_models_and_tags_survive_a_restart(server, copied, listed):
    for region in REGIONS:
        client = server.client(region)
        wait_until(lambda: not client.list_model_copy_jobs(statusEquals="InProgress")["modelCopyJobSummaries"]
                   and not client.list_custom_models(modelStatus="Creating")["modelSummaries"],
                   what=f"every job in {region} to end")
    before = snapshot(server)
    assert copied["arn"] in before and copied["job"]["targetModelArn"] in before
    assert before[copied["job"]["targetModelArn"]]["tags"]
    assert sum(1 for v in before.values() if "get" in v) >= 10
    server.restart()
    assert snapshot(server) == before
