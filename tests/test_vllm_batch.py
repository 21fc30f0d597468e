"""Batch inference jobs on the vLLM backend (engine/vllm_batch.py), through boto3 against real servers:
the same greedy outputs as the transformers backend, bad records as error lines on either backend,
kill -9 mid-job with every record exactly once, tool calls under structured outputs, and `--engine
auto` picking vLLM where it is installed.

One vLLM server (`--engine vllm --vllm-kv-cache-gib 1`) serves the module: each engine start costs
tens of seconds. The module is skipped, saying why, only where vLLM cannot run here."""

import json
import uuid

import jsonschema
import pytest

from bedrock_local.engine import backends
from conftest import Server, wait_until

if backends.vllm_problem():
    print(f"test_vllm_batch skipped: {backends.vllm_problem()}")
    pytest.skip(backends.vllm_problem(), allow_module_level=True)

ROLE = "arn:aws:iam::123456789012:role/BedrockBatchInference"
SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
IN_BUCKET, OUT_BUCKET = "batch-input", "batch-output"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
VLLM_ARGS = ("--engine", "vllm", "--vllm-kv-cache-gib", "1")
QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write one sentence about the sea.",
             "What is 12 plus 30?", "Give a synonym of happy.", "Who wrote Hamlet?"]
from conftest import WEATHER  # noqa: E402  (the tool schema of test_tool_use)


# ------------------------------------------------------------------------------------------
# helpers

def converse(text: str, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": [{"text": text}]}],
            "inferenceConfig": {"maxTokens": max_tokens, "temperature": 0}}


def put_input(server: Server, records: list[dict], name: str = "records.jsonl") -> str:
    prefix = f"in-{uuid.uuid4().hex[:8]}"
    folder = server.folder(IN_BUCKET) / prefix
    folder.mkdir(parents=True)
    server.folder(OUT_BUCKET)
    (folder / name).write_text("".join(json.dumps(record) + "\n" for record in records))
    return f"s3://{IN_BUCKET}/{prefix}/"


def create_job(server: Server, records: list[dict], invocation_type: str = "Converse") -> str:
    return server.client().create_model_invocation_job(
        jobName=f"vllm-{uuid.uuid4().hex[:8]}", roleArn=ROLE, modelId=SMOLLM2, modelInvocationType=invocation_type,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": put_input(server, records)}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT_BUCKET}/out/"}})["jobArn"]


def job(server: Server, arn: str) -> dict:
    return server.client().get_model_invocation_job(jobIdentifier=arn)


def wait_final(server: Server, arn: str, timeout: float = 300) -> dict:
    return wait_until(lambda: (found := job(server, arn))["status"] in FINAL and found,
                      timeout=timeout, interval=0.2, what=f"{arn} to end")


def out_lines(server: Server, arn: str, name: str = "records.jsonl") -> list[dict]:
    path = server.data_dir / "s3" / OUT_BUCKET / "out" / arn.rsplit("/", 1)[1] / f"{name}.out"
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


def run_job(server: Server, records: list[dict], invocation_type: str = "Converse") -> tuple[dict, list[dict]]:
    arn = create_job(server, records, invocation_type)
    ended = wait_final(server, arn)
    return ended, out_lines(server, arn)


def answer(line: dict) -> str:
    return line["modelOutput"]["output"]["message"]["content"][0]["text"]


# ------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """The module's vLLM server (restarted in place by the kill -9 test, which comes last)."""
    server = Server(tmp_path_factory.mktemp("vllm") / "data", extra_args=VLLM_ARGS).start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------------------

def test_both_backends_give_the_same_greedy_outputs(server, vllm_server):
    """The same Converse job, greedy, float32 on both: the same texts and token counts."""
    records = [{"recordId": f"q{i}", "modelInput": converse(question, 24)} for i, question in enumerate(QUESTIONS)]
    on_transformers, reference = run_job(server, records)
    on_vllm, lines = run_job(vllm_server, records)
    assert on_transformers["status"] == on_vllm["status"] == "Completed", (on_transformers, on_vllm)
    assert [line["recordId"] for line in lines] == [line["recordId"] for line in reference]
    assert [answer(line) for line in lines] == [answer(line) for line in reference]
    assert [line["modelOutput"]["usage"] for line in lines] == [line["modelOutput"]["usage"] for line in reference]
    assert [line["modelOutput"]["stopReason"] for line in lines] == [line["modelOutput"]["stopReason"]
                                                                    for line in reference]
    assert "Paris" in answer(lines[0])


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_a_bad_record_is_an_error_line_and_the_job_completes(server, vllm_server, backend):
    target = vllm_server if backend == "vllm" else server
    records = [{"recordId": "good-1", "modelInput": converse("Name a fruit.", 6)},
               {"recordId": "bad-input", "modelInput": {"messages": "hello"}},  # refused while parsing
               {"recordId": "too-long", "modelInput": converse("Name a fruit.", 9000)},  # refused by the model
               {"recordId": "good-2", "modelInput": converse("Name a colour.", 6)}]
    ended, lines = run_job(target, records)
    assert ended["status"] == "Completed", ended
    assert [line["recordId"] for line in lines] == ["good-1", "bad-input", "too-long", "good-2"]
    assert "modelOutput" in lines[0] and "modelOutput" in lines[3]
    assert lines[1]["error"]["errorCode"] == 400 and "modelInput.messages" in lines[1]["error"]["errorMessage"]
    assert lines[2]["error"]["errorCode"] == 400 and "context" in lines[2]["error"]["errorMessage"]
    assert (ended["successRecordCount"], ended["errorRecordCount"], ended["processedRecordCount"]) == (2, 2, 4)


def test_a_tool_offered_with_tool_choice_any_gets_a_tool_use_that_fits_its_schema(vllm_server):
    body = converse("What is the weather in Paris for the next 3 days, in celsius?", 60)
    body["toolConfig"] = {"tools": [{"toolSpec": {"name": "get_weather", "description": "The weather in a city",
                                                  "inputSchema": {"json": WEATHER}}}],
                          "toolChoice": {"any": {}}}
    ended, (line,) = run_job(vllm_server, [{"recordId": "tool", "modelInput": body}])
    assert ended["status"] == "Completed", ended
    output = line["modelOutput"]
    assert output["stopReason"] == "tool_use", output
    (call,) = [block["toolUse"] for block in output["output"]["message"]["content"] if "toolUse" in block]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["input"], WEATHER)


def test_a_streamed_job_survives_kill_9_with_every_record_once_in_order(vllm_server):
    """kill -9 of the server (and its workers and vLLM's processes) mid-job; after a restart on
    `--engine auto` the job resumes from its checkpoint on vLLM (auto picks it where it is installed:
    the worker's log says so) and ends with every record exactly once, in input order."""
    server = vllm_server
    total = 48
    records = [{"recordId": f"r{i:03d}", "modelInput": converse(f"Tell me a short story about the number {i}.", 40)}
               for i in range(total)]
    arn = create_job(server, records)
    running = wait_until(lambda: (found := job(server, arn)).get("processedRecordCount", 0) > 0 and found,
                         timeout=300, interval=0.05, what="the first finished records")
    assert running["status"] == "InProgress" and running["processedRecordCount"] < total, running
    server.kill()
    kept = out_lines(server, arn)
    assert running["processedRecordCount"] <= len(kept) < total  # what was counted was written
    assert [line["recordId"] for line in kept] == [f"r{i:03d}" for i in range(len(kept))]

    server.extra_args = ["--engine", "auto", "--vllm-kv-cache-gib", "1"]
    log_start = server.log.stat().st_size if server.log.exists() else 0
    server.start()
    ended = wait_final(server, arn)
    assert ended["status"] == "Completed", ended
    lines = out_lines(server, arn)
    assert [line["recordId"] for line in lines] == [f"r{i:03d}" for i in range(total)]  # each once, in order
    assert lines[:len(kept)] == kept
    assert all(line["modelOutput"]["usage"]["outputTokens"] > 0 for line in lines)
    assert ended["processedRecordCount"] == ended["successRecordCount"] == total
    log = server.log.read_bytes()[log_start:].decode("utf-8", "replace")
    assert "loads on vllm (--engine auto)" in log, log[-3000:]
