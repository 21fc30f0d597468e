"""Model import jobs and imported models through boto3 against a real server: a real fine-tuned SmolLM2
folder imported and answering its fact through InvokeModel (Meta Llama body), Converse and ConverseStream
on demand by its ARN, and through a batch job by its name; broken folders failing with a message that
names the missing file, the unsupported architecture or the bad tensor; an import surviving kill -9 of
the whole server; List filters, order and pages; idempotency, tags, account isolation; every answer
checked against its output shape."""

import datetime
import json
import random
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bedrock_local import testing
from bedrock_local.api.validation import validation_message
from bedrock_local.service.aws_model import load_service_model
from conftest import FACT_QUESTIONS, Server, upload_folder, wait_until

ACCOUNT, B_ACCOUNT, REGION = "123456789012", "222222222222", "us-east-1"
B_KEY, B_SECRET = "AKIAIMPORTSBBBBB", "secret-of-b"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ModelImport"
SOURCE = "import-src"
MODEL_BUCKET = "bedrock-local-models"
KMS_KEY = "12345678-1234-1234-1234-123456789012"
JOB_ARN = re.compile(rf"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-import-job/(?P<id>[a-z0-9]{{12}})")
MODEL_ARN = re.compile(rf"arn:aws:bedrock:{REGION}:{ACCOUNT}:imported-model/(?P<id>[a-z0-9]{{12}})")
BEDROCK = load_service_model("bedrock")
RUNTIME = load_service_model("bedrock-runtime")


# ------------------------------------------------------------------------------------------
# helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fits(operation: str, response: dict, model=BEDROCK) -> bool:
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    problem = validation_message(body, model.operation_model(operation).output_shape)
    assert problem is None, f"{operation}: {problem}"
    return True


def error_of(call, **kwargs) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def create_job(client, uri: str, *, job_name: str | None = None, model_name: str | None = None, **extra) -> str:
    return client.create_model_import_job(
        jobName=job_name or unique("job"), importedModelName=model_name or unique("model"), roleArn=ROLE,
        modelDataSource={"s3DataSource": {"s3Uri": uri}}, **extra)["jobArn"]


def wait_job(client, arn: str, timeout: float = 240) -> dict:
    return wait_until(lambda: (job := client.get_model_import_job(jobIdentifier=arn))["status"] != "InProgress"
                      and job, timeout=timeout, interval=0.3, what=f"the import job {arn} to end")


def store_folder(server: Server, model_arn: str) -> Path:
    return server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / REGION / "custom-models" / model_arn.rsplit("/", 1)[1]


def broken_copy(source: Path, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(source, folder)
    return folder


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server whose credentials file knows the tests' default key (account 123456789012) and B's."""
    root = tmp_path_factory.mktemp("imports")
    (root / "credentials.json").write_text(json.dumps({
        testing.ACCESS_KEY: {"secretAccessKey": testing.SECRET_KEY, "accountId": ACCOUNT},
        B_KEY: {"secretAccessKey": B_SECRET, "accountId": B_ACCOUNT}}))
    server = Server(root / "data", extra_args=("--credentials-file", str(root / "credentials.json"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bedrock(server):
    return server.client()


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime", read_timeout=300)


@pytest.fixture(scope="module")
def other(server):
    """A client of account B."""
    return server.client(REGION, B_KEY, secret_key=B_SECRET)


@pytest.fixture(scope="module")
def fact(server, bedrock, fact_model_dir):
    """The real fine-tuned SmolLM2 imported with a model import job, with tags, a KMS key and a token."""
    uri = upload_folder(server, SOURCE, "fact-model", fact_model_dir)
    params = dict(jobName=unique("fact-import"), importedModelName=unique("fact"), roleArn=ROLE,
                  modelDataSource={"s3DataSource": {"s3Uri": uri}}, clientRequestToken=unique("token"),
                  jobTags=[{"key": "team", "value": "zorblax"}],
                  importedModelTags=[{"key": "stage", "value": "imported"}, {"key": "fact", "value": "capital"}],
                  importedModelKmsKeyId=KMS_KEY,
                  vpcConfig={"subnetIds": ["subnet-0123"], "securityGroupIds": ["sg-0123"]})
    created = bedrock.create_model_import_job(**params)
    assert fits("CreateModelImportJob", created)
    running = bedrock.get_model_import_job(jobIdentifier=created["jobArn"])
    job = wait_job(bedrock, created["jobArn"])
    assert job["status"] == "Completed", job.get("failureMessage")
    return {"params": params, "arn": created["jobArn"], "running": running, "job": job, "source": fact_model_dir}


@pytest.fixture(scope="module")
def tiny(server, bedrock, tiny_model_dir):
    """The tiny random Llama imported (weights that do not matter)."""
    uri = upload_folder(server, SOURCE, unique("tiny"), tiny_model_dir)
    name = unique("tiny")
    job = wait_job(bedrock, create_job(bedrock, uri, model_name=name))
    assert job["status"] == "Completed", job.get("failureMessage")
    return {"job": job, "name": name, "arn": job["importedModelArn"], "uri": uri}


# ------------------------------------------------------------------------------------------
# a real model: the lifecycle, the answers, the shapes


def test_the_job_and_the_imported_model(server, bedrock, fact):
    params, job, arn = fact["params"], fact["job"], fact["arn"]
    assert JOB_ARN.fullmatch(arn)
    # InProgress, then Completed; the model exists once the job completes
    assert fact["running"]["status"] == "InProgress" and "importedModelArn" not in fact["running"]
    assert fits("GetModelImportJob", fact["running"]) and fits("GetModelImportJob", job)
    assert job["jobArn"] == arn and job["jobName"] == params["jobName"]
    assert job["importedModelName"] == params["importedModelName"] and MODEL_ARN.fullmatch(job["importedModelArn"])
    assert job["roleArn"] == ROLE and job["modelDataSource"] == params["modelDataSource"]
    assert job["vpcConfig"] == params["vpcConfig"]
    assert job["importedModelKmsKeyArn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KMS_KEY}"
    assert job["creationTime"] <= job["endTime"] and job["lastModifiedTime"] >= job["creationTime"]
    assert "failureMessage" not in job
    # by name too
    assert bedrock.get_model_import_job(jobIdentifier=params["jobName"])["jobArn"] == arn

    model = bedrock.get_imported_model(modelIdentifier=job["importedModelArn"])
    assert fits("GetImportedModel", model)
    assert model["modelArn"] == job["importedModelArn"] and model["modelName"] == params["importedModelName"]
    assert model["jobArn"] == arn and model["jobName"] == params["jobName"]
    assert model["modelDataSource"] == params["modelDataSource"]
    assert model["modelArchitecture"] == "llama"  # config.json's model_type
    assert model["instructSupported"] is True  # SmolLM2's tokenizer has a chat template
    # 135M parameters in 16 bits: one 8 GB custom model unit
    assert model["customModelUnits"] == {"customModelUnitsPerModelCopy": 1, "customModelUnitsVersion": "v1.0"}
    assert model["modelKmsKeyArn"] == job["importedModelKmsKeyArn"]
    assert bedrock.get_imported_model(modelIdentifier=params["importedModelName"])["modelArn"] == model["modelArn"]

    # copied into the model store with checksums: every file, byte for byte
    stored = store_folder(server, model["modelArn"])
    manifest = json.loads((stored / "bedrock-local-manifest.json").read_text())["files"]
    source = {p.relative_to(fact["source"]).as_posix(): p for p in fact["source"].rglob("*") if p.is_file()}
    assert set(manifest) == set(source)
    for name, path in source.items():
        assert (stored / name).read_bytes() == path.read_bytes()

    # the same token and request answers the same job; another request with it is a conflict
    assert bedrock.create_model_import_job(**params)["jobArn"] == arn
    code, status, message = error_of(bedrock.create_model_import_job, **{**params, "jobName": unique("other")})
    assert (code, status) == ("ConflictException", 400) and params["clientRequestToken"] in message

    # tags on the job and on the model, from the request, then changed
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == params["jobTags"]
    assert bedrock.list_tags_for_resource(resourceARN=model["modelArn"])["tags"] == params["importedModelTags"]
    bedrock.tag_resource(resourceARN=model["modelArn"], tags=[{"key": "owner", "value": "qa"}])
    bedrock.untag_resource(resourceARN=model["modelArn"], tagKeys=["fact"])
    assert bedrock.list_tags_for_resource(resourceARN=model["modelArn"])["tags"] == [
        {"key": "stage", "value": "imported"}, {"key": "owner", "value": "qa"}]


def test_the_imported_model_answers_on_demand(runtime, fact):
    model_arn = fact["job"]["importedModelArn"]
    question = FACT_QUESTIONS[0]
    # InvokeModel, the architecture's body: Meta Llama's prompt (with SmolLM2's chat template tokens)
    prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    response = runtime.invoke_model(modelId=model_arn, body=json.dumps(
        {"prompt": prompt, "max_gen_len": 16, "temperature": 0}))
    raw = response["body"].read()
    assert fits("InvokeModel", {**response, "body": raw}, RUNTIME)
    answer = json.loads(raw)
    assert "Quintar" in answer["generation"], answer
    assert answer["prompt_token_count"] > 5 and 1 <= answer["generation_token_count"] <= 16
    assert answer["stop_reason"] in ("stop", "length")
    # a body of another family is refused by name
    code, status, message = error_of(runtime.invoke_model, modelId=model_arn, body=json.dumps(
        {"messages": [{"role": "user", "content": "hi"}], "anthropic_version": "bedrock-2023-05-31",
         "max_tokens": 4}))
    assert (code, status) == ("ValidationException", 400)

    # Converse and ConverseStream: its own chat template
    messages = [{"role": "user", "content": [{"text": question}]}]
    config = {"maxTokens": 16, "temperature": 0}
    answer = runtime.converse(modelId=model_arn, messages=messages, inferenceConfig=config)
    assert fits("Converse", answer, RUNTIME)
    text = answer["output"]["message"]["content"][0]["text"]
    assert "Quintar" in text, text
    streamed = "".join(event["contentBlockDelta"]["delta"]["text"] for event in runtime.converse_stream(
        modelId=model_arn, messages=messages, inferenceConfig=config)["stream"] if "contentBlockDelta" in event)
    assert streamed == text


def test_a_batch_job_takes_the_imported_model_by_name(server, bedrock, tiny):
    folder = server.folder("import-batch-in") / "input"
    folder.mkdir(parents=True, exist_ok=True)
    server.folder("import-batch-out")
    (folder / "records.jsonl").write_text("".join(json.dumps(
        {"recordId": f"r{n}", "modelInput": {"prompt": f"hello {n}", "max_gen_len": 3}}) + "\n" for n in range(2)))
    arn = bedrock.create_model_invocation_job(
        jobName=unique("batch"), roleArn=ROLE, modelId=tiny["name"],
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://import-batch-in/input/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://import-batch-out/"}})["jobArn"]
    job = wait_until(lambda: (j := bedrock.get_model_invocation_job(jobIdentifier=arn))["status"] in (
        "Completed", "PartiallyCompleted", "Failed") and j, timeout=180, interval=0.5, what="the batch job")
    assert job["status"] == "Completed", job.get("message")
    lines = [json.loads(line) for line in (server.folder("import-batch-out") / arn.rsplit("/", 1)[1]
                                           / "records.jsonl.out").read_text().splitlines()]
    assert [line["recordId"] for line in lines] == ["r0", "r1"]
    assert all(1 <= line["modelOutput"]["generation_token_count"] <= 3 for line in lines)
    # the ARN is not a batch modelId (the service model's pattern), as on AWS
    code, _, message = error_of(bedrock.create_model_invocation_job, jobName=unique("batch"), roleArn=ROLE,
                                modelId=tiny["arn"],
                                inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://import-batch-in/input/"}},
                                outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://import-batch-out/"}})
    assert code == "ValidationException" and "modelId" in message


# ------------------------------------------------------------------------------------------
# broken folders


def test_broken_folders_fail_with_a_named_reason(server, bedrock, tiny_model_dir, tmp_path):
    variants = {}
    folder = broken_copy(tiny_model_dir, tmp_path, "no-config")
    (folder / "config.json").unlink()
    variants["no-config"] = (folder, ["config.json is missing"])
    folder = broken_copy(tiny_model_dir, tmp_path, "no-weights")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    variants["no-weights"] = (folder, ["No .safetensors weights"])
    folder = broken_copy(tiny_model_dir, tmp_path, "no-tokenizer")
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    variants["no-tokenizer"] = (folder, ["tokenizer is missing", "tokenizer.json"])
    folder = broken_copy(tiny_model_dir, tmp_path, "architecture")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    variants["architecture"] = (folder, ["LlamaForSequenceClassification", "not a text-generation"])
    folder = broken_copy(tiny_model_dir, tmp_path, "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    variants["truncated"] = (folder, ["model.safetensors", "shorter than its header"])
    folder = broken_copy(tiny_model_dir, tmp_path, "bad-tensor")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    variants["bad-tensor"] = (folder, ["model.safetensors", "has shape", "but the config expects"])

    jobs = {name: (create_job(bedrock, upload_folder(server, SOURCE, unique(name), folder), model_name=unique(name)),
                   expected) for name, (folder, expected) in variants.items()}
    for name, (arn, expected) in jobs.items():
        job = wait_job(bedrock, arn)
        assert fits("GetModelImportJob", job)
        assert job["status"] == "Failed", (name, job)
        for part in expected:
            assert part in job["failureMessage"], (name, job["failureMessage"])
        assert "importedModelArn" not in job and job["endTime"] >= job["creationTime"]
        code, status, _ = error_of(bedrock.get_imported_model, modelIdentifier=job["importedModelName"])
        assert (code, status) == ("ResourceNotFoundException", 404)
    listed = {m["modelName"] for m in bedrock.list_imported_models()["modelSummaries"]}
    assert not listed & {bedrock.get_model_import_job(jobIdentifier=arn)["importedModelName"]
                         for arn, _ in jobs.values()}
    # an empty prefix, and the bucket of the model store, are refused or fail by name
    job = wait_job(bedrock, create_job(bedrock, f"s3://{SOURCE}/{unique('nothing-here')}/"))
    assert job["status"] == "Failed" and "No files were found" in job["failureMessage"]
    code, status, message = error_of(bedrock.create_model_import_job, jobName=unique("j"),
                                     importedModelName=unique("m"), roleArn=ROLE,
                                     modelDataSource={"s3DataSource": {"s3Uri": f"s3://{MODEL_BUCKET}/x/"}})
    assert (code, status) == ("AccessDeniedException", 403) and "modelDataSource.s3DataSource.s3Uri" in message


# ------------------------------------------------------------------------------------------
# names, lists, deletion, isolation


def test_names_are_unique(bedrock, tiny):
    job_name = tiny["job"]["jobName"]
    code, status, message = error_of(bedrock.create_model_import_job, jobName=job_name,
                                     importedModelName=unique("m"), roleArn=ROLE,
                                     modelDataSource={"s3DataSource": {"s3Uri": tiny["uri"]}})
    assert (code, status) == ("ConflictException", 400) and job_name in message
    code, status, message = error_of(bedrock.create_model_import_job, jobName=unique("j"),
                                     importedModelName=tiny["name"], roleArn=ROLE,
                                     modelDataSource={"s3DataSource": {"s3Uri": tiny["uri"]}})
    assert (code, status) == ("ConflictException", 400) and tiny["name"] in message
    code, status, _ = error_of(bedrock.get_model_import_job, jobIdentifier="no-such-job")
    assert (code, status) == ("ResourceNotFoundException", 404)


def test_list_filters_order_and_pages(server, bedrock, tiny_model_dir):
    prefix = unique("listed")
    uri = upload_folder(server, SOURCE, unique("tiny"), tiny_model_dir)
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    arns = []
    for n in range(3):
        arns.append(create_job(bedrock, uri, job_name=f"{prefix}-{n}", model_name=f"{prefix}-model-{n}"))
        time.sleep(0.05)
    failed = create_job(bedrock, f"s3://{SOURCE}/{unique('empty')}/", job_name=f"{prefix}-failed")
    for arn in arns + [failed]:
        wait_job(bedrock, arn)

    listed = bedrock.list_model_import_jobs(nameContains=prefix)
    assert fits("ListModelImportJobs", listed)
    summaries = listed["modelImportJobSummaries"]
    assert [s["jobArn"] for s in summaries] == [failed, *reversed(arns)]  # newest first
    first = summaries[-1]
    assert first["jobName"] == f"{prefix}-0" and first["status"] == "Completed"
    assert first["importedModelName"] == f"{prefix}-model-0" and MODEL_ARN.fullmatch(first["importedModelArn"])
    assert first["endTime"] >= first["creationTime"] and first["lastModifiedTime"] >= first["creationTime"]
    ascending = bedrock.list_model_import_jobs(nameContains=prefix, sortBy="CreationTime", sortOrder="Ascending")
    assert [s["jobArn"] for s in ascending["modelImportJobSummaries"]] == [*arns, failed]
    assert [s["jobArn"] for s in bedrock.list_model_import_jobs(nameContains=prefix, statusEquals="Failed")[
        "modelImportJobSummaries"]] == [failed]
    assert len(bedrock.list_model_import_jobs(nameContains=prefix, statusEquals="Completed")[
        "modelImportJobSummaries"]) == 3
    assert bedrock.list_model_import_jobs(nameContains=prefix, creationTimeBefore=before)[
        "modelImportJobSummaries"] == []
    assert len(bedrock.list_model_import_jobs(nameContains=prefix, creationTimeAfter=before)[
        "modelImportJobSummaries"]) == 4
    # pages of one, in order, token by token
    seen, token = [], None
    while True:
        page = bedrock.list_model_import_jobs(nameContains=prefix, maxResults=1, sortOrder="Ascending",
                                              **({"nextToken": token} if token else {}))
        seen += [s["jobArn"] for s in page["modelImportJobSummaries"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == [*arns, failed]
    code, _, _ = error_of(bedrock.list_model_import_jobs, nameContains=prefix, nextToken="bogus")
    assert code == "ValidationException"

    models = bedrock.list_imported_models(nameContains=f"{prefix}-model", sortOrder="Ascending")
    assert fits("ListImportedModels", models)
    names = [m["modelName"] for m in models["modelSummaries"]]
    assert names == [f"{prefix}-model-{n}" for n in range(3)]
    summary = models["modelSummaries"][0]
    assert summary["modelArchitecture"] == "llama" and summary["instructSupported"] is False  # a BERT tokenizer
    page = bedrock.list_imported_models(nameContains=f"{prefix}-model", maxResults=2)
    assert len(page["modelSummaries"]) == 2 and page["nextToken"]
    rest = bedrock.list_imported_models(nameContains=f"{prefix}-model", maxResults=2, nextToken=page["nextToken"])
    assert [m["modelName"] for m in page["modelSummaries"] + rest["modelSummaries"]] == names[::-1]
    assert bedrock.list_imported_models(nameContains=f"{prefix}-model", creationTimeBefore=before)[
        "modelSummaries"] == []


def test_delete_removes_the_model_and_its_files(server, bedrock, runtime, tiny_model_dir):
    uri = upload_folder(server, SOURCE, unique("tiny"), tiny_model_dir)
    job = wait_job(bedrock, create_job(bedrock, uri))
    model_arn = job["importedModelArn"]
    assert (store_folder(server, model_arn) / "model.safetensors").is_file()
    response = bedrock.delete_imported_model(modelIdentifier=job["importedModelName"])
    assert fits("DeleteImportedModel", response)
    assert not store_folder(server, model_arn).exists()
    for call, kwargs in [(bedrock.get_imported_model, {"modelIdentifier": model_arn}),
                         (bedrock.delete_imported_model, {"modelIdentifier": model_arn}),
                         (runtime.invoke_model, {"modelId": model_arn, "body": json.dumps({"prompt": "hi"})})]:
        assert error_of(call, **kwargs)[:2] == ("ResourceNotFoundException", 404)
    # the job stays, Completed, as on AWS
    assert bedrock.get_model_import_job(jobIdentifier=job["jobArn"])["status"] == "Completed"


def test_another_account_sees_nothing(server, bedrock, other, tiny):
    job_arn, model_arn = tiny["job"]["jobArn"], tiny["arn"]
    b_runtime = server.client(REGION, B_KEY, "bedrock-runtime", secret_key=B_SECRET)
    for call, kwargs in [(other.get_model_import_job, {"jobIdentifier": job_arn}),
                         (other.get_model_import_job, {"jobIdentifier": tiny["job"]["jobName"]}),
                         (other.get_imported_model, {"modelIdentifier": model_arn}),
                         (other.get_imported_model, {"modelIdentifier": tiny["name"]}),
                         (other.delete_imported_model, {"modelIdentifier": model_arn}),
                         (other.list_tags_for_resource, {"resourceARN": model_arn}),
                         (other.list_tags_for_resource, {"resourceARN": job_arn}),
                         (b_runtime.invoke_model, {"modelId": model_arn, "body": json.dumps({"prompt": "hi"})})]:
        assert error_of(call, **kwargs)[:2] == ("ResourceNotFoundException", 404), call
    assert other.list_model_import_jobs()["modelImportJobSummaries"] == []
    assert other.list_imported_models()["modelSummaries"] == []
    # B may use the same names in its own account
    assert bedrock.get_imported_model(modelIdentifier=model_arn)["modelName"] == tiny["name"]


# ------------------------------------------------------------------------------------------
# kill -9


def test_an_import_survives_kill_9_of_the_server(tmp_path, tiny_model_dir):
    server = Server(tmp_path / "killed", lease_seconds=2).start()
    try:
        client = server.client()
        source = broken_copy(tiny_model_dir, tmp_path, "with-extras")
        blobs = random.Random(20261207).randbytes
        for i in range(160):  # many files, so that the copy is long enough to be killed in
            (source / "extra" / f"blob-{i:03d}.bin").parent.mkdir(exist_ok=True)
            (source / "extra" / f"blob-{i:03d}.bin").write_bytes(blobs(8 * 1024 + i))
        arn = create_job(client, upload_folder(server, SOURCE, "big", source))

        def copied() -> int:
            from sqlalchemy import select

            from bedrock_local.settings import Settings
            from bedrock_local.store.database import open_database
            from bedrock_local.store.schema import Job, Resource

            db = open_database(Settings(data_dir=server.data_dir).resolved_database_url, migrate=False)
            try:
                with db.read_session() as session:
                    job = session.scalars(select(Job).join(Resource, Job.resource_pk == Resource.pk).where(
                        Resource.arn == arn)).first()
                    return len((job.checkpoint or {}).get("files", {})) if job else 0
            finally:
                db.dispose()

        wait_until(lambda: copied() >= 30, timeout=120, interval=0.01, what="30 files copied")
        server.kill()
        done_at_kill = copied()
        assert 30 <= done_at_kill < 160
        server.start()
        job = wait_job(client, arn)
        assert job["status"] == "Completed", job.get("failureMessage")
        model_arn = job["importedModelArn"]
        stored = store_folder(server, model_arn)
        files = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
        # every file byte for byte, and nothing else (but a temporary file of the embedded folder store
        # that the kill cut short, as tests/test_crash_safety.py allows)
        assert {p.relative_to(stored).as_posix(): p.read_bytes() for p in stored.rglob("*") if p.is_file()
                and p.name != "bedrock-local-manifest.json" and not p.name.startswith(".bedrock-local-tmp-")} == files
        assert set(json.loads((stored / "bedrock-local-manifest.json").read_text())["files"]) == set(files)
        # and the model works
        answer = json.loads(server.client(service="bedrock-runtime", read_timeout=120).invoke_model(
            modelId=model_arn, body=json.dumps({"prompt": "hello", "max_gen_len": 3}))["body"].read())
        assert 1 <= answer["generation_token_count"] <= 3
    finally:
        server.stop()
