"""Batch inference (CreateModelInvocationJob / GetModelInvocationJob / ListModelInvocationJobs /
StopModelInvocationJob) against real bedrock-local servers, driven through boto3 as a user does.
Jobs really run: SmolLM2-135M-Instruct answers a question, all-MiniLM-L6-v2 embeds sentences, a
tiny random Llama imported with CreateCustomModel generates. The tests write JSONL input files
into the embedded folder store and read the outputs where AWS puts them:
`<output uri>/<job id>/<input file name>.out` and `<output uri>/<job id>/manifest.json.out`."""

import datetime
import json
import math
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import upload_folder, wait_until

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchInference"
TEXT_MODEL = "huggingface.smollm2-135m-instruct-v1:0"
EMBED_MODEL = "sentence-transformers.all-minilm-l6-v2-v1:0"
IN_BUCKET, OUT_BUCKET, MODEL_SOURCE_BUCKET = "batch-input", "batch-output", "batch-model-source"
LIST_REGION = "eu-west-1"  # the list test owns this region of the module server
JOB_ARN = re.compile(rf"arn:aws:bedrock:(?P<region>[a-z0-9-]+):{ACCOUNT}:model-invocation-job/(?P<id>[a-z0-9]{{12}})")
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
LIFECYCLE = ["Submitted", "Validating", "Scheduled", "InProgress", "Stopping"]
COUNTS = ("totalRecordCount", "processedRecordCount", "successRecordCount", "errorRecordCount")
MANIFEST_KEYS = {*COUNTS, "inputTokenCount", "outputTokenCount"}
TMP_PREFIX = ".bedrock-local-tmp-"  # the folder store's temp files of unfinished writes


# ------------------------------------------------------------------------------------------
# helpers

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def job_id(arn: str) -> str:
    return JOB_ARN.fullmatch(arn)["id"]


def converse(text: str, max_tokens: int, system: str | None = None) -> dict:
    body = {"messages": [{"role": "user", "content": [{"text": text}]}],
            "inferenceConfig": {"maxTokens": max_tokens, "temperature": 0}}
    if system:
        body["system"] = [{"text": system}]
    return body


def jsonl(records: list) -> str:
    """Records as JSONL; a str record is written as-is (a malformed line)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def put_input(server, files: dict[str, list], prefix: str | None = None) -> str:
    """Write input files under a fresh prefix of the input bucket; answers the prefix's s3:// URI."""
    prefix = prefix or unique("input")
    folder = server.folder(IN_BUCKET) / prefix
    for name, records in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((records if isinstance(records, str) else jsonl(records)).encode("utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    return f"s3://{IN_BUCKET}/{prefix}/"


def create_job(client, model: str, input_uri: str, output_uri: str = f"s3://{OUT_BUCKET}/", *,
               name: str | None = None, invocation_type: str | None = "InvokeModel", **extra) -> str:
    params = dict(jobName=name or unique("job"), modelId=model, roleArn=ROLE,
                  inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
                  outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}}, **extra)
    if invocation_type:
        params["modelInvocationType"] = invocation_type
    response = client.create_model_invocation_job(**params)
    assert JOB_ARN.fullmatch(response["jobArn"]), response["jobArn"]
    return response["jobArn"]


def watch(client, arn: str, timeout: float = 180.0, interval: float = 0.05):
    """Poll a job until it ends; answers the final job and every (status, processedRecordCount) seen."""
    seen = []

    def ended():
        job = client.get_model_invocation_job(jobIdentifier=arn)
        seen.append((job["status"], job.get("processedRecordCount")))
        return job if job["status"] in FINAL else None
    job = wait_until(ended, timeout=timeout, interval=interval, what=f"{arn} to end")
    return job, seen


def wait_final(client, arn: str, timeout: float = 180.0) -> dict:
    return watch(client, arn, timeout, interval=0.1)[0]


def wait_for(client, arn: str, predicate, what: str, timeout: float = 120.0) -> dict:
    def check():
        job = client.get_model_invocation_job(jobIdentifier=arn)
        return job if predicate(job) else None
    return wait_until(check, timeout=timeout, interval=0.05, what=what)


def job_folder(server, arn: str, output_prefix: str = "") -> Path:
    return server.data_dir / "s3" / OUT_BUCKET / output_prefix / job_id(arn)


def output_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(TMP_PREFIX)}


def read_out(path: Path) -> list[dict]:
    """The JSON lines of an output file (split at \\n only: U+2028 and U+0085 may appear inside a line)."""
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


def read_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json.out").read_text())
    assert set(manifest) == MANIFEST_KEYS, manifest
    return manifest


def assert_counts_match(job: dict, manifest: dict, lines: list[dict], total: int) -> None:
    """The job's counts, the manifest's counts and the .out lines tell the same story."""
    errors = sum(1 for line in lines if "error" in line)
    expected = {"totalRecordCount": total, "processedRecordCount": len(lines),
                "successRecordCount": len(lines) - errors, "errorRecordCount": errors}
    assert {k: manifest[k] for k in COUNTS} == expected
    assert {k: job.get(k) for k in COUNTS} == expected


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def statuses_in_order(seen: list[tuple]) -> list[str]:
    order = []
    for status, _ in seen:
        if not order or order[-1] != status:
            order.append(status)
    return order


def assert_legal_sequence(order: list[str], final: str) -> None:
    """Observed statuses follow Submitted → Validating → Scheduled → InProgress (→ Stopping) → final."""
    assert order[-1] == final and order.count(final) == 1, order
    ranks = [LIFECYCLE.index(status) for status in order[:-1]]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks), order


def prompts(count: int, max_gen_len: int = 16) -> list[dict]:
    return [{"recordId": f"r{i:04d}", "modelInput": {"prompt": f"record number {i}", "max_gen_len": max_gen_len,
                                                      "temperature": 0}} for i in range(count)]


def sentences(count: int) -> list[dict]:
    return [{"recordId": f"s{i:04d}", "modelInput": {"inputText": f"Sentence number {i} is about a cat."}}
            for i in range(count)]


def wait_model(client, arn: str) -> dict:
    def ended():
        model = client.get_custom_model(modelIdentifier=arn)
        return model if model["modelStatus"] != "Creating" else None
    return wait_until(ended, timeout=120, what=f"the import of {arn} to end")


# ------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module", autouse=True)
def buckets(server):
    server.folder(IN_BUCKET)
    server.folder(OUT_BUCKET)


@pytest.fixture(scope="module")
def tiny_model(server, bedrock, tiny_model_dir) -> dict:
    """The tiny random Llama imported into the module server with CreateCustomModel."""
    name = unique("tiny-batch")
    uri = upload_folder(server, MODEL_SOURCE_BUCKET, unique("tiny"), tiny_model_dir)
    arn = bedrock.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    model = wait_model(bedrock, arn)
    assert model["modelStatus"] == "Active", model
    return {"name": name, "arn": arn}


# ------------------------------------------------------------------------------------------
# real models, request and response bodies, output layout

def test_converse_job_on_smollm2_answers_paris(server, bedrock):
    records = [
        {"recordId": "france", "modelInput": converse("What is the capital of France?", 16)},
        {"recordId": "count", "modelInput": converse("Count from one to twenty in words.", 10)},
        {"recordId": "sky", "modelInput": converse("What color is the sky on a clear day? One word.", 12,
                                                   system="You answer in as few words as possible.")},
    ]
    uri = put_input(server, {"questions.jsonl": records})
    output = f"s3://{OUT_BUCKET}/results/converse/"
    arn = create_job(bedrock, TEXT_MODEL, uri, output, invocation_type="Converse", timeoutDurationInHours=48)
    job = wait_final(bedrock, arn, timeout=240)
    assert job["status"] == "Completed", job.get("message")
    assert job["modelInvocationType"] == "Converse" and job["timeoutDurationInHours"] == 48
    assert job["jobExpirationTime"] - job["submitTime"] == datetime.timedelta(hours=48)

    folder = job_folder(server, arn, "results/converse")
    assert output_files(folder) == {"questions.jsonl.out", "manifest.json.out"}
    lines = read_out(folder / "questions.jsonl.out")
    assert [line["recordId"] for line in lines] == ["france", "count", "sky"]  # input order, not batch order
    for line, record in zip(lines, records):
        assert set(line) == {"recordId", "modelInput", "modelOutput"}
        assert line["modelInput"] == record["modelInput"]
        output = line["modelOutput"]
        assert {"output", "stopReason", "usage"} <= set(output) <= {"output", "stopReason", "usage", "metrics"}
        message = output["output"]["message"]
        assert message["role"] == "assistant" and isinstance(message["content"][0]["text"], str)
        usage = output["usage"]
        assert set(usage) == {"inputTokens", "outputTokens", "totalTokens"}
        assert usage["inputTokens"] > 0
        assert 0 < usage["outputTokens"] <= record["modelInput"]["inferenceConfig"]["maxTokens"]
        assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
        assert output["stopReason"] in ("end_turn", "max_tokens")
    france, count, _ = (line["modelOutput"] for line in lines)
    assert "Paris" in france["output"]["message"]["content"][0]["text"]
    assert france["stopReason"] == "end_turn"
    assert count["stopReason"] == "max_tokens" and count["usage"]["outputTokens"] == 10

    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=3)
    assert manifest["inputTokenCount"] == sum(line["modelOutput"]["usage"]["inputTokens"] for line in lines)
    assert manifest["outputTokenCount"] == sum(line["modelOutput"]["usage"]["outputTokens"] for line in lines)


def test_invoke_model_job_with_meta_llama_bodies(server, bedrock):
    records = [
        {"recordId": "a", "modelInput": {"prompt": "The capital of France is", "max_gen_len": 8, "temperature": 0}},
        {"recordId": "b", "modelInput": {"prompt": "One, two, three,", "max_gen_len": 1, "temperature": 0,
                                         "top_p": 0.9}},
        {"recordId": "c", "modelInput": {"prompt": "Once upon a time there was a small village where",
                                         "max_gen_len": 6, "temperature": 0.7, "top_p": 0.9}},
    ]
    uri = put_input(server, {"prompts.jsonl": records})
    arn = create_job(bedrock, TEXT_MODEL, uri, f"s3://{OUT_BUCKET}/results/llama")  # no trailing slash
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["modelInvocationType"] == "InvokeModel"
    job = wait_final(bedrock, arn, timeout=240)
    assert job["status"] == "Completed", job.get("message")

    folder = job_folder(server, arn, "results/llama")
    lines = read_out(folder / "prompts.jsonl.out")
    assert [line["recordId"] for line in lines] == ["a", "b", "c"]
    for line, record in zip(lines, records):
        assert set(line) == {"recordId", "modelInput", "modelOutput"} and line["modelInput"] == record["modelInput"]
        output = line["modelOutput"]
        assert set(output) == {"generation", "prompt_token_count", "generation_token_count", "stop_reason"}
        assert isinstance(output["generation"], str) and output["generation"]
        assert 0 < output["generation_token_count"] <= record["modelInput"]["max_gen_len"]
        assert output["stop_reason"] in ("stop", "length")
    a, b, c = (line["modelOutput"] for line in lines)
    assert b["generation_token_count"] == 1 and b["stop_reason"] == "length"
    assert 0 < a["prompt_token_count"] < c["prompt_token_count"]

    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=3)
    assert manifest["inputTokenCount"] == sum(line["modelOutput"]["prompt_token_count"] for line in lines)
    assert manifest["outputTokenCount"] == sum(line["modelOutput"]["generation_token_count"] for line in lines)


def test_embeddings_job_puts_near_synonyms_closer(server, bedrock):
    texts = {"cat": "The cat sat on the mat.", "cat2": "A cat was sitting on the rug.",
             "money": "Quarterly revenue grew by eight percent over the fiscal year."}
    records = [{"recordId": key, "modelInput": {"inputText": text}} for key, text in texts.items()]
    uri = put_input(server, {"sentences.jsonl": records})

    with pytest.raises(ClientError) as excinfo:  # an embedding model does not converse
        create_job(bedrock, EMBED_MODEL, uri, invocation_type="Converse")
    assert error_code(excinfo) == "ValidationException" and "Converse" in str(excinfo.value)

    arn = create_job(bedrock, EMBED_MODEL, uri)
    job = wait_final(bedrock, arn)
    assert job["status"] == "Completed", job.get("message")
    folder = job_folder(server, arn)
    lines = read_out(folder / "sentences.jsonl.out")
    assert [line["recordId"] for line in lines] == list(texts)
    vectors = {}
    for line in lines:
        output = line["modelOutput"]
        assert set(output) == {"embedding", "inputTextTokenCount"}
        assert len(output["embedding"]) == 384 and all(isinstance(x, float) for x in output["embedding"])
        assert math.isclose(math.sqrt(sum(x * x for x in output["embedding"])), 1.0, abs_tol=1e-4)  # normalized
        assert output["inputTextTokenCount"] > 2
        vectors[line["recordId"]] = output["embedding"]
    synonyms = cosine(vectors["cat"], vectors["cat2"])
    assert synonyms > cosine(vectors["cat"], vectors["money"]) + 0.2
    assert synonyms > cosine(vectors["cat2"], vectors["money"]) + 0.2

    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=3)
    assert manifest["inputTokenCount"] == sum(line["modelOutput"]["inputTextTokenCount"] for line in lines)
    assert manifest["outputTokenCount"] == 0


def test_several_input_files_and_a_single_file_uri(server, bedrock):
    files = {
        "part-a.jsonl": sentences(3),
        # no newline after the last line; CRLF line ends, blank lines and non-ASCII text
        "part-b.jsonl": jsonl([{"recordId": rid, "modelInput": {"inputText": f"text {rid}"}}
                               for rid in ("b9", "b1", "b5")]).rstrip("\n"),
        "part-c.jsonl": "\r\n" + json.dumps({"recordId": "c1", "modelInput": {"inputText": "Le chat — 猫"}},
                                             ensure_ascii=False) + "\r\n\r\n",
        "README.txt": "not an input file",
    }
    uri = put_input(server, files)
    arn = create_job(bedrock, EMBED_MODEL, uri)
    job = wait_final(bedrock, arn)
    assert job["status"] == "Completed", job.get("message")
    folder = job_folder(server, arn)
    assert output_files(folder) == {"part-a.jsonl.out", "part-b.jsonl.out", "part-c.jsonl.out", "manifest.json.out"}
    a, b, c = (read_out(folder / f"part-{x}.jsonl.out") for x in "abc")
    assert [line["recordId"] for line in a] == ["s0000", "s0001", "s0002"]
    assert [line["recordId"] for line in b] == ["b9", "b1", "b5"]
    assert [line["recordId"] for line in c] == ["c1"]  # blank lines are not records
    assert c[0]["modelInput"]["inputText"] == "Le chat — 猫"
    assert all(len(line["modelOutput"]["embedding"]) == 384 for line in a + b + c)
    assert_counts_match(job, read_manifest(folder), a + b + c, total=7)

    single = create_job(bedrock, EMBED_MODEL, uri + "part-b.jsonl")
    job = wait_final(bedrock, single)
    assert job["status"] == "Completed", job.get("message")
    folder = job_folder(server, single)
    assert output_files(folder) == {"part-b.jsonl.out", "manifest.json.out"}
    lines = read_out(folder / "part-b.jsonl.out")
    assert [line["recordId"] for line in lines] == ["b9", "b1", "b5"]
    assert_counts_match(job, read_manifest(folder), lines, total=3)

    no_slash = create_job(bedrock, EMBED_MODEL, uri.rstrip("/"))  # a prefix named without its trailing slash
    job = wait_final(bedrock, no_slash)
    assert job["status"] == "Completed" and job["totalRecordCount"] == 7, job
    assert output_files(job_folder(server, no_slash)) == {"part-a.jsonl.out", "part-b.jsonl.out", "part-c.jsonl.out",
                                                          "manifest.json.out"}


# ------------------------------------------------------------------------------------------
# bad records and bad inputs

def test_bad_embedding_records_become_error_lines(server, bedrock):
    records = [
        {"recordId": "good1", "modelInput": {"inputText": "A fine sentence."}},
        {"recordId": "wrong-type", "modelInput": {"inputText": 42}},
        {"recordId": "missing", "modelInput": {}},
        {"recordId": "unknown-key", "modelInput": {"inputText": "x", "dimensions": 256}},
        {"recordId": "bad-bool", "modelInput": {"inputText": "x", "normalize": "yes"}},
        {"recordId": "empty", "modelInput": {"inputText": ""}},
        {"recordId": "good2", "modelInput": {"inputText": "Another fine sentence.", "normalize": False}},
    ]
    uri = put_input(server, {"mixed.jsonl": records})
    arn = create_job(bedrock, EMBED_MODEL, uri)
    job = wait_final(bedrock, arn)
    assert job["status"] == "Completed", job.get("message")
    folder = job_folder(server, arn)
    lines = read_out(folder / "mixed.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    by_id = {line["recordId"]: line for line in lines}
    for rid, field in [("wrong-type", "modelInput.inputText"), ("missing", "modelInput.inputText"),
                       ("unknown-key", "dimensions"), ("bad-bool", "modelInput.normalize"),
                       ("empty", "modelInput.inputText")]:
        line = by_id[rid]
        assert set(line) == {"recordId", "modelInput", "error"}, line
        assert line["modelInput"] == next(r["modelInput"] for r in records if r["recordId"] == rid)
        assert line["error"]["errorCode"] == 400
        assert field in line["error"]["errorMessage"], (rid, line["error"])
    assert "modelOutput" in by_id["good1"] and "modelOutput" in by_id["good2"]
    assert len(by_id["good2"]["modelOutput"]["embedding"]) == 384
    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=7)
    assert (job["successRecordCount"], job["errorRecordCount"]) == (2, 5)
    good_tokens = [by_id[rid]["modelOutput"]["inputTextTokenCount"] for rid in ("good1", "good2")]
    assert manifest["inputTokenCount"] == sum(good_tokens)


def test_bad_converse_records_become_error_lines(server, bedrock):
    good = converse("Name a fruit.", 4)
    records = [
        {"recordId": "messages-type", "modelInput": {"messages": "hello"}},
        {"recordId": "no-messages", "modelInput": {"inferenceConfig": {"maxTokens": 4}}},
        {"recordId": "unknown-config", "modelInput": {**good, "inferenceConfig": {"maxTokens": 4, "topK": 5}}},
        {"recordId": "max-tokens-type", "modelInput": {**good, "inferenceConfig": {"maxTokens": "4"}}},
        {"recordId": "good", "modelInput": good},
        {"recordId": "bad-role", "modelInput": {"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}},
        {"recordId": "image-block", "modelInput": {"messages": [{"role": "user", "content": [{"image": {}}]}]}},
        {"recordId": "unknown-top", "modelInput": {**good, "toolConfig": {}}},
    ]
    expected_fields = {"messages-type": "modelInput.messages", "no-messages": "modelInput.messages",
                       "unknown-config": "topK", "max-tokens-type": "modelInput.inferenceConfig.maxTokens",
                       "bad-role": "modelInput.messages[0].role", "image-block": "modelInput.messages[0].content[0]",
                       "unknown-top": "toolConfig"}
    uri = put_input(server, {"chats.jsonl": records})
    arn = create_job(bedrock, TEXT_MODEL, uri, invocation_type="Converse")
    job = wait_final(bedrock, arn, timeout=240)
    assert job["status"] == "Completed", job.get("message")
    folder = job_folder(server, arn)
    lines = read_out(folder / "chats.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    for line in lines:
        if line["recordId"] == "good":
            assert set(line) == {"recordId", "modelInput", "modelOutput"}
            assert line["modelOutput"]["usage"]["outputTokens"] <= 4
            continue
        assert set(line) == {"recordId", "modelInput", "error"}, line
        assert line["error"]["errorCode"] == 400
        assert expected_fields[line["recordId"]] in line["error"]["errorMessage"], line
    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=8)
    assert (job["successRecordCount"], job["errorRecordCount"]) == (1, 7)
    good_line = lines[4]["modelOutput"]["usage"]
    assert (manifest["inputTokenCount"], manifest["outputTokenCount"]) == (good_line["inputTokens"],
                                                                           good_line["outputTokens"])


@pytest.mark.parametrize("case", ["not-json", "no-record-id", "model-input-not-object", "top-level-list"])
def test_malformed_input_line_fails_validation_naming_file_and_line(server, bedrock, case):
    good = {"recordId": "ok", "modelInput": {"inputText": "fine"}}
    bad_line, expected = {
        "not-json": ('{"recordId": "x", "modelInput": ', "is not valid JSON"),
        "no-record-id": (json.dumps({"modelInput": {"inputText": "no id"}}), "recordId"),
        "model-input-not-object": (json.dumps({"recordId": "x", "modelInput": "text"}), "modelInput"),
        "top-level-list": (json.dumps([good]), "recordId"),
    }[case]
    uri = put_input(server, {"a-good.jsonl": [good], "b-bad.jsonl": [good, good, bad_line, good]})
    arn = create_job(bedrock, EMBED_MODEL, uri)
    job = wait_final(bedrock, arn)
    assert job["status"] == "Failed"
    assert f"Line 3 of {uri}b-bad.jsonl" in job["message"] and expected in job["message"], job["message"]
    assert job["endTime"] >= job["submitTime"]
    assert not job_folder(server, arn).exists()  # validation comes before any record runs
    with pytest.raises(ClientError) as excinfo:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert error_code(excinfo) == "ConflictException"


def test_missing_inputs_and_output_bucket_fail_validation(server, bedrock):
    empty = put_input(server, {"notes.txt": "no jsonl here", "data.json": "[]"})
    nowhere = f"s3://{IN_BUCKET}/{unique('no-such-prefix')}/"
    good = put_input(server, {"a.jsonl": sentences(1)})
    missing_bucket = unique("no-such-bucket")
    cases = [
        (create_job(bedrock, EMBED_MODEL, empty), ["No .jsonl input files", empty]),
        (create_job(bedrock, EMBED_MODEL, nowhere), ["No .jsonl input files", nowhere]),
        (create_job(bedrock, EMBED_MODEL, f"s3://{unique('no-input-bucket')}/x/"), ["no-input-bucket"]),
        (create_job(bedrock, EMBED_MODEL, good, f"s3://{missing_bucket}/out/"), [missing_bucket, "does not exist"]),
    ]
    for arn, words in cases:
        job = wait_final(bedrock, arn)
        assert job["status"] == "Failed", job
        for word in words:
            assert word in job["message"], (word, job["message"])
        assert "endTime" in job
    assert not (server.data_dir / "s3" / missing_bucket).exists()


def test_record_quotas_fail_validation(make_server):
    quota = make_server(unique("quota"), extra_args=("--batch-max-records", "4", "--batch-min-records", "2",
                                                      "--batch-max-records-per-file", "3"))
    client = quota.client()
    quota.folder(OUT_BUCKET)
    too_many_in_file = put_input(quota, {"big.jsonl": sentences(4)})
    too_many = put_input(quota, {"one.jsonl": sentences(3), "two.jsonl": sentences(2)})
    too_few = put_input(quota, {"one.jsonl": sentences(1)})
    cases = [
        (create_job(client, EMBED_MODEL, too_many_in_file, timeoutDurationInHours=168),
         [f"{too_many_in_file}big.jsonl", "3"]),
        (create_job(client, EMBED_MODEL, too_many, timeoutDurationInHours=168), ["5 records", "4"]),
        (create_job(client, EMBED_MODEL, too_few, timeoutDurationInHours=168), ["1 records", "at least 2"]),
    ]
    for arn, words in cases:
        job = wait_final(client, arn, timeout=60)
        assert job["status"] == "Failed", job
        for word in words:
            assert word in job["message"], (word, job["message"])
        assert not job_folder(quota, arn).exists()


# ------------------------------------------------------------------------------------------
# lifecycle, fields and live counts

def test_lifecycle_fields_and_live_counts(server, bedrock):
    uri = put_input(server, {"many.jsonl": sentences(320)})  # five chunks of 64
    name = unique("lifecycle")
    token = unique("token")
    before = datetime.datetime.now(datetime.timezone.utc)
    arn = create_job(bedrock, EMBED_MODEL, uri, name=name, clientRequestToken=token)  # default timeout
    first = bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert first["status"] in ("Submitted", "Validating", "Scheduled", "InProgress")
    job, seen = watch(bedrock, arn, interval=0.02)

    assert job["status"] == "Completed", job.get("message")
    assert_legal_sequence(statuses_in_order(seen), "Completed")
    processed = [count for _, count in seen if count is not None]
    assert processed == sorted(processed), "processedRecordCount never goes back"
    assert any(0 < count < 320 for count in processed), f"no intermediate count seen: {sorted(set(processed))}"

    by_id = bedrock.get_model_invocation_job(jobIdentifier=job_id(arn))
    by_arn = bedrock.get_model_invocation_job(jobIdentifier=arn)
    by_id.pop("ResponseMetadata"), by_arn.pop("ResponseMetadata")
    assert by_id == by_arn
    assert by_arn["jobArn"] == arn and by_arn["jobName"] == name and by_arn["modelId"] == EMBED_MODEL
    assert by_arn["roleArn"] == ROLE and by_arn["clientRequestToken"] == token
    assert by_arn["inputDataConfig"] == {"s3InputDataConfig": {"s3Uri": uri, "s3InputFormat": "JSONL"}}
    assert by_arn["outputDataConfig"] == {"s3OutputDataConfig": {"s3Uri": f"s3://{OUT_BUCKET}/"}}
    assert by_arn["timeoutDurationInHours"] == 24
    assert {k: by_arn[k] for k in COUNTS} == {"totalRecordCount": 320, "processedRecordCount": 320,
                                               "successRecordCount": 320, "errorRecordCount": 0}
    submit, end, modified = by_arn["submitTime"], by_arn["endTime"], by_arn["lastModifiedTime"]
    assert before - datetime.timedelta(seconds=1) <= submit <= end <= modified
    assert modified <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
    assert first["submitTime"] == submit and first["lastModifiedTime"] <= modified
    assert by_arn["jobExpirationTime"] - submit == datetime.timedelta(hours=24)

    lines = read_out(job_folder(server, arn) / "many.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"s{i:04d}" for i in range(320)]

    with pytest.raises(ClientError) as excinfo:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert error_code(excinfo) == "ConflictException"
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed"

    for missing in ("abcdefghijkl", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:model-invocation-job/abcdefghijkl"):
        with pytest.raises(ClientError) as excinfo:
            bedrock.get_model_invocation_job(jobIdentifier=missing)
        assert error_code(excinfo) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:  # the job lives in us-east-1 only
        server.client(region="us-west-2").get_model_invocation_job(jobIdentifier=job_id(arn))
    assert error_code(excinfo) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        bedrock.stop_model_invocation_job(jobIdentifier="abcdefghijkl")
    assert error_code(excinfo) == "ResourceNotFoundException"


def test_stop_mid_run_keeps_finished_records(server, bedrock, tiny_model):
    uri = put_input(server, {"long.jsonl": prompts(384)})  # six chunks of 64, over a second each
    arn = create_job(bedrock, tiny_model["name"], uri)
    running = wait_for(bedrock, arn, lambda j: j.get("processedRecordCount", 0) > 0, "the first finished chunk")
    assert running["status"] == "InProgress" and running["totalRecordCount"] == 384
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopping"
    bedrock.stop_model_invocation_job(jobIdentifier=arn)  # stopping again while Stopping is no error

    job, seen = watch(bedrock, arn, timeout=60)
    assert job["status"] == "Stopped", job.get("message")
    assert statuses_in_order([("Stopping", None)] + seen) == ["Stopping", "Stopped"]
    assert job["message"] and job["endTime"] >= job["submitTime"]
    assert running["processedRecordCount"] <= job["processedRecordCount"] < 384

    folder = job_folder(server, arn)
    lines = read_out(folder / "long.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"r{i:04d}" for i in range(len(lines))]
    assert all("modelOutput" in line for line in lines)
    assert_counts_match(job, read_manifest(folder), lines, total=384)

    with pytest.raises(ClientError) as excinfo:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert error_code(excinfo) == "ConflictException"


def test_stop_while_validating_ends_stopped(make_server):
    server = make_server(unique("stop-validating"),
                         extra_args=("--batch-max-records", "1000000", "--batch-max-records-per-file", "1000000"))
    client = server.client()
    server.folder(OUT_BUCKET)
    line = '{"recordId": "r", "modelInput": {"inputText": "x"}}\n'
    uri = put_input(server, {"huge.jsonl": line * 300_000})  # validation alone takes a while
    arn = create_job(client, EMBED_MODEL, uri)
    validating = wait_for(client, arn, lambda j: j["status"] != "Submitted", "the job to leave Submitted", timeout=30)
    assert validating["status"] == "Validating", validating
    client.stop_model_invocation_job(jobIdentifier=arn)
    assert client.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopping"
    job, seen = watch(client, arn, timeout=60)
    assert job["status"] == "Stopped", job
    assert statuses_in_order([("Stopping", None)] + seen) == ["Stopping", "Stopped"]
    assert job["message"] and job.get("processedRecordCount", 0) == 0


def test_stop_before_start_and_expired(make_server):
    name = unique("expiry")
    server = make_server(name, workers=0, extra_args=("--job-hour-seconds", "0.1"))  # 24 hours = 2.4 s
    client = server.client()
    server.folder(OUT_BUCKET)
    uri = put_input(server, {"a.jsonl": sentences(2)})
    expiring = create_job(client, EMBED_MODEL, uri)
    stopped = create_job(client, EMBED_MODEL, uri)

    job = client.get_model_invocation_job(jobIdentifier=expiring)
    assert job["status"] == "Submitted"
    assert job["jobExpirationTime"] - job["submitTime"] == datetime.timedelta(seconds=2.4)

    client.stop_model_invocation_job(jobIdentifier=stopped)  # no worker: it never started, so Stopped at once
    job = client.get_model_invocation_job(jobIdentifier=stopped)
    assert job["status"] == "Stopped" and job["message"] and job["endTime"] >= job["submitTime"]
    with pytest.raises(ClientError) as excinfo:
        client.stop_model_invocation_job(jobIdentifier=stopped)
    assert error_code(excinfo) == "ConflictException"

    expires = client.get_model_invocation_job(jobIdentifier=expiring)["jobExpirationTime"]
    wait_until(lambda: datetime.datetime.now(datetime.timezone.utc) > expires + datetime.timedelta(seconds=0.3),
               timeout=10, what="the expiration time to pass")
    assert client.get_model_invocation_job(jobIdentifier=expiring)["status"] == "Submitted"
    server.stop()
    server.workers = 1
    server.start()  # a worker arrives after the expiration time
    job = wait_final(client, expiring, timeout=60)
    assert job["status"] == "Expired", job
    assert job["message"] and job["endTime"] > expires
    assert not job_folder(server, expiring).exists()
    assert client.get_model_invocation_job(jobIdentifier=stopped)["status"] == "Stopped"
    assert not job_folder(server, stopped).exists()


def test_timeout_ends_partially_completed(make_server):
    # 24 hours = 12 s; the warm-up job's 168 hours = 84 s, time enough to load MiniLM on a busy machine
    server = make_server(unique("timeout"), extra_args=("--job-hour-seconds", "0.5"))
    client = server.client()
    server.folder(OUT_BUCKET)
    warm = create_job(client, EMBED_MODEL, put_input(server, {"a.jsonl": sentences(1)}), timeoutDurationInHours=168)
    assert wait_final(client, warm, timeout=60)["status"] == "Completed"  # the model is loaded now

    total = 12800  # two hundred chunks of 64: far more than 12 s of work
    uri = put_input(server, {"long.jsonl": sentences(total)})
    arn = create_job(client, EMBED_MODEL, uri, timeoutDurationInHours=24)
    job, seen = watch(client, arn, timeout=60)
    assert job["status"] == "PartiallyCompleted", job
    assert_legal_sequence(statuses_in_order(seen), "PartiallyCompleted")
    assert 0 < job["processedRecordCount"] < job["totalRecordCount"] == total
    assert "timeout" in job["message"] and str(total - job["processedRecordCount"]) in job["message"]
    assert job["endTime"] >= job["jobExpirationTime"]
    folder = job_folder(server, arn)
    lines = read_out(folder / "long.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"s{i:04d}" for i in range(len(lines))]
    assert_counts_match(job, read_manifest(folder), lines, total=total)


def test_kill_9_mid_run_then_restart_resumes_every_record_once(make_server):
    server = make_server(unique("crash"), lease_seconds=2)
    client = server.client()
    server.folder(OUT_BUCKET)
    total = 640  # ten chunks of 64
    records = sentences(total)
    # characters that str.splitlines() takes for line ends, inside the first (already written) chunk
    records[1]["modelInput"]["inputText"] = "one\u2028two\u2029three\x85four"
    uri = put_input(server, {"crash.jsonl": records})
    arn = create_job(client, EMBED_MODEL, uri)
    running = wait_for(client, arn, lambda j: j["status"] in FINAL or j.get("processedRecordCount", 0) > 0,
                       "the first finished chunk")
    assert running["status"] == "InProgress" and 0 < running["processedRecordCount"] < total, running
    server.kill()

    folder = job_folder(server, arn)
    kept = read_out(folder / "crash.jsonl.out")
    assert running["processedRecordCount"] <= len(kept) < total  # finished work was already written
    assert not (folder / "manifest.json.out").exists()

    server.start()
    job = wait_final(client, arn, timeout=120)
    assert job["status"] == "Completed", job
    lines = read_out(folder / "crash.jsonl.out")
    ids = [line["recordId"] for line in lines]
    assert ids == [f"s{i:04d}" for i in range(total)]  # every record exactly once, in input order
    assert all(len(line["modelOutput"]["embedding"]) == 384 for line in lines)
    assert lines[:len(kept)] == kept
    assert lines[1]["modelInput"] == records[1]["modelInput"]
    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=total)
    assert manifest["inputTokenCount"] == sum(line["modelOutput"]["inputTextTokenCount"] for line in lines)


# ------------------------------------------------------------------------------------------
# custom models

def test_custom_model_job_end_to_end(server, bedrock, tiny_model):
    records = prompts(3, max_gen_len=5) + [
        {"recordId": "too-long", "modelInput": {"prompt": "hello", "max_gen_len": 200}}]  # context is 128
    uri = put_input(server, {"custom.jsonl": records})
    arn = create_job(bedrock, tiny_model["name"], uri)
    job = wait_final(bedrock, arn)
    assert job["status"] == "Completed", job.get("message")
    assert job["modelId"] == tiny_model["name"]
    folder = job_folder(server, arn)
    lines = read_out(folder / "custom.jsonl.out")
    assert [line["recordId"] for line in lines] == ["r0000", "r0001", "r0002", "too-long"]
    for line in lines[:3]:
        output = line["modelOutput"]
        assert 0 < output["generation_token_count"] <= 5 and output["prompt_token_count"] > 0
    assert lines[3]["error"]["errorCode"] == 400 and "128" in lines[3]["error"]["errorMessage"]
    manifest = read_manifest(folder)
    assert_counts_match(job, manifest, lines, total=4)
    assert manifest["outputTokenCount"] == sum(line["modelOutput"]["generation_token_count"] for line in lines[:3])

    # a model without a chat template rejects Converse records: error lines, and the job still completes
    chat = create_job(bedrock, tiny_model["name"], put_input(server, {"chat.jsonl": [
        {"recordId": "c1", "modelInput": converse("hi", 4)}]}), invocation_type="Converse")
    job = wait_final(bedrock, chat)
    assert job["status"] == "Completed" and job["errorRecordCount"] == 1
    line, = read_out(job_folder(server, chat) / "chat.jsonl.out")
    assert line["error"]["errorCode"] == 400 and "template" in line["error"]["errorMessage"]


def test_imported_model_arn_is_not_a_batch_model_id(server, bedrock, tiny_model):
    # The service model's modelId pattern admits custom-model/<base.model>/<id> ARNs (trained models)
    # but not custom-model/imported/<id>: an imported model is named by its name, as on AWS.
    uri = put_input(server, {"custom.jsonl": prompts(1, max_gen_len=2)})
    with pytest.raises(ClientError) as excinfo:
        create_job(bedrock, tiny_model["arn"], uri)
    assert error_code(excinfo) == "ValidationException"
    assert "at 'modelId' failed to satisfy constraint" in str(excinfo.value)


def test_custom_model_that_is_not_active_is_refused(server, bedrock, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").unlink()
    name = unique("broken")
    uri = upload_folder(server, MODEL_SOURCE_BUCKET, unique("broken"), broken)
    model_arn = bedrock.create_custom_model(modelName=name,
                                            modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    job_input = put_input(server, {"a.jsonl": prompts(1)})
    model = wait_model(bedrock, model_arn)
    assert model["modelStatus"] == "Failed"
    with pytest.raises(ClientError) as excinfo:
        create_job(bedrock, name, job_input)
    assert error_code(excinfo) == "ValidationException" and "Failed" in str(excinfo.value)


# ------------------------------------------------------------------------------------------
# create validation, idempotency, names

def test_create_validation(server, bedrock):
    raw = server.client(validate=False)
    uri = put_input(server, {"a.jsonl": sentences(1)})
    base = dict(jobName=unique("valid"), modelId=EMBED_MODEL, roleArn=ROLE,
                inputDataConfig={"s3InputDataConfig": {"s3Uri": uri}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT_BUCKET}/"}})
    bad = [
        ("jobName", "bad name"), ("jobName", "bad_name"), ("jobName", "-leading-dash"), ("jobName", "x" * 64),
        ("timeoutDurationInHours", 23), ("timeoutDurationInHours", 169), ("timeoutDurationInHours", 0),
        ("roleArn", "not-an-arn"), ("modelInvocationType", "Chat"),
        ("inputDataConfig", {"s3InputDataConfig": {"s3Uri": "http://batch-input/a/"}}),
        ("inputDataConfig", {"s3InputDataConfig": {"s3Uri": "s3://Bad_Bucket/a/"}}),
        ("inputDataConfig", {"s3InputDataConfig": {"s3Uri": "s3://ab/"}}),
        ("inputDataConfig", {"s3InputDataConfig": {"s3Uri": uri, "s3InputFormat": "CSV"}}),
        ("inputDataConfig", {}),
        ("outputDataConfig", {"s3OutputDataConfig": {"s3Uri": "batch-output/"}}),
        ("outputDataConfig", {"s3OutputDataConfig": {}}),
    ]
    for member, value in bad:
        with pytest.raises(ClientError) as excinfo:
            raw.create_model_invocation_job(**{**base, member: value})
        assert error_code(excinfo) == "ValidationException", (member, value)
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    for missing in ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig"):
        with pytest.raises(ClientError) as excinfo:
            raw.create_model_invocation_job(**{k: v for k, v in base.items() if k != missing})
        assert error_code(excinfo) == "ValidationException" and missing in str(excinfo.value)

    for model in ("acme.no-such-model-v1:0", "arn:aws:bedrock:us-east-1::foundation-model/acme.no-such-model-v1:0",
                  f"arn:aws:bedrock:us-east-1:{ACCOUNT}:custom-model/acme.base-v1:0/abcdefghijkl", "nosuchmodel"):
        with pytest.raises(ClientError) as excinfo:
            raw.create_model_invocation_job(**{**base, "modelId": model})
        assert error_code(excinfo) == "ResourceNotFoundException", model

    # the bounds themselves are accepted
    for hours in (24, 168):
        arn = create_job(bedrock, EMBED_MODEL, uri, timeoutDurationInHours=hours)
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
        assert job["timeoutDurationInHours"] == hours
        assert job["jobExpirationTime"] - job["submitTime"] == datetime.timedelta(hours=hours)
        assert wait_final(bedrock, arn)["status"] == "Completed"
    # nothing was created by the refused requests
    assert bedrock.list_model_invocation_jobs(nameContains=base["jobName"])["invocationJobSummaries"] == []


def test_idempotency_and_name_conflicts(server, bedrock):
    uri = put_input(server, {"a.jsonl": sentences(1)})
    name = unique("idem")
    token = "tok-" + uuid.uuid4().hex
    first = create_job(bedrock, EMBED_MODEL, uri, name=name, clientRequestToken=token)
    again = create_job(bedrock, EMBED_MODEL, uri, name=name, clientRequestToken=token)
    assert again == first
    with pytest.raises(ClientError) as excinfo:  # same token, different parameters
        create_job(bedrock, EMBED_MODEL, uri, name=name, clientRequestToken=token, timeoutDurationInHours=48)
    assert error_code(excinfo) == "ConflictException"
    with pytest.raises(ClientError) as excinfo:  # same name, another request
        create_job(bedrock, EMBED_MODEL, uri, name=name)
    assert error_code(excinfo) == "ConflictException" and name in str(excinfo.value)
    summaries = bedrock.list_model_invocation_jobs(nameContains=name)["invocationJobSummaries"]
    assert [s["jobArn"] for s in summaries] == [first]
    assert wait_final(bedrock, first)["status"] == "Completed"
    assert create_job(bedrock, EMBED_MODEL, uri, name=name, clientRequestToken=token) == first  # still, once it ended
    # the same name is free in another region
    other = create_job(server.client(region="us-west-2"), EMBED_MODEL, uri, name=name)
    assert JOB_ARN.fullmatch(other)["region"] == "us-west-2"
    assert wait_final(server.client(region="us-west-2"), other)["status"] == "Completed"


# ------------------------------------------------------------------------------------------
# listing

def test_list_filters_sorting_and_pagination(server):
    client = server.client(region=LIST_REGION)
    run = uuid.uuid4().hex[:6]
    good = put_input(server, {"a.jsonl": sentences(1)})
    empty = f"s3://{IN_BUCKET}/{unique('nothing')}/"
    plan = [("alpha-1", good), ("beta-2", empty), ("alpha-3", empty), ("gamma-4", good), ("beta-5", empty)]
    arns, names = [], []
    for suffix, uri in plan:
        names.append(f"list-{run}-{suffix}")
        arns.append(create_job(client, EMBED_MODEL, uri, name=names[-1]))
        time.sleep(0.02)
    jobs = [wait_final(client, arn) for arn in arns]
    assert [j["status"] for j in jobs] == ["Completed", "Failed", "Failed", "Completed", "Failed"]
    times = [j["submitTime"] for j in jobs]
    assert times == sorted(times) and len(set(times)) == len(times)

    def listed(**params) -> list[str]:
        summaries = client.list_model_invocation_jobs(nameContains=f"list-{run}", **params)["invocationJobSummaries"]
        return [s["jobName"] for s in summaries]

    assert listed() == names[::-1]  # newest first by default
    assert listed(sortBy="CreationTime", sortOrder="Ascending") == names
    assert listed(sortBy="CreationTime", sortOrder="Descending") == names[::-1]
    assert listed(statusEquals="Completed", sortOrder="Ascending") == [names[0], names[3]]
    assert listed(statusEquals="Failed", sortOrder="Ascending") == [names[1], names[2], names[4]]
    assert listed(statusEquals="InProgress") == []
    assert client.list_model_invocation_jobs(nameContains=f"{run}-alpha", sortOrder="Ascending")[
        "invocationJobSummaries"][1]["jobName"] == names[2]
    assert [s["jobName"] for s in client.list_model_invocation_jobs(nameContains=f"{run}-beta")[
        "invocationJobSummaries"]] == [names[4], names[1]]
    middle = lambda a, b: a + (b - a) / 2  # noqa: E731 - between two submit times, whatever the bound's strictness
    after = middle(times[1], times[2])
    before = middle(times[3], times[4])
    assert listed(submitTimeAfter=after, sortOrder="Ascending") == names[2:]
    assert listed(submitTimeBefore=before, sortOrder="Ascending") == names[:4]
    assert listed(submitTimeAfter=after, submitTimeBefore=before, sortOrder="Ascending") == names[2:4]
    assert listed(submitTimeAfter=after, submitTimeBefore=before, statusEquals="Failed") == [names[2]]
    assert listed(submitTimeAfter=times[4] + datetime.timedelta(seconds=1)) == []

    summary = client.list_model_invocation_jobs(nameContains=names[0])["invocationJobSummaries"][0]
    assert summary["jobArn"] == arns[0] and summary["modelId"] == EMBED_MODEL and summary["roleArn"] == ROLE
    assert summary["status"] == "Completed" and summary["totalRecordCount"] == 1
    for key in ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime", "inputDataConfig",
                "outputDataConfig", "timeoutDurationInHours"):
        assert key in summary, key
    failed = client.list_model_invocation_jobs(nameContains=names[1])["invocationJobSummaries"][0]
    assert failed["status"] == "Failed" and "No .jsonl" in failed["message"]

    for size, order in ((1, "Ascending"), (2, "Descending"), (3, "Ascending")):
        pages, token = [], None
        while True:
            params = {"maxResults": size, "sortOrder": order, **({"nextToken": token} if token else {})}
            page = client.list_model_invocation_jobs(nameContains=f"list-{run}", **params)
            pages.append([s["jobName"] for s in page["invocationJobSummaries"]])
            token = page.get("nextToken")
            if not token:
                break
        assert [n for p in pages for n in p] == (names if order == "Ascending" else names[::-1])
        assert all(len(p) == size for p in pages[:-1]) and 0 < len(pages[-1]) <= size
        assert len(pages) == math.ceil(len(names) / size)

    page = client.list_model_invocation_jobs(nameContains=f"list-{run}", maxResults=2)
    with pytest.raises(ClientError) as excinfo:  # a token is only good for the same filters
        client.list_model_invocation_jobs(nameContains=f"list-{run}-alpha", maxResults=2, nextToken=page["nextToken"])
    assert error_code(excinfo) == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        client.list_model_invocation_jobs(nextToken="not-a-token")
    assert error_code(excinfo) == "ValidationException"
    for bad in ({"maxResults": 0}, {"maxResults": 1001}, {"statusEquals": "Running"}, {"sortOrder": "Sideways"}):
        with pytest.raises(ClientError) as excinfo:
            server.client(region=LIST_REGION, validate=False).list_model_invocation_jobs(**bad)
        assert error_code(excinfo) == "ValidationException", bad

    # the jobs belong to their region
    assert server.client().list_model_invocation_jobs(nameContains=f"list-{run}")["invocationJobSummaries"] == []

