"""Serving on vLLM's async engine (engine/vllm_serving.py) through boto3 against one real server started
with `--engine vllm`: Converse on the packaged SmolLM2, ConverseStream whose deltas concatenate to the
text a greedy Converse gives, stop sequences never streamed, a stream the client drops aborted in the
engine (the node's log says so, with how few tokens it had made), tool use under vLLM's structured
outputs (streamed and not), CountTokens agreeing with Converse's usage, a Provisioned Throughput on an
engine of its own, and two deployments of one model sharing one engine that outlives the first's delete.

The module skips, saying why, only where vLLM cannot run (backends.vllm_problem)."""

import json
import re
import time

import jsonschema
import pytest

from bedrock_local.engine.backends import vllm_problem
from conftest import SHARED_CACHE, Server, upload_folder, wait_until

PROBLEM = vllm_problem()
if PROBLEM is not None:
    print(f"test_vllm_serving skipped: vLLM cannot run here: {PROBLEM}")
    pytest.skip(f"vLLM cannot run here: {PROBLEM}", allow_module_level=True)

pytestmark = pytest.mark.real_weights

SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
LOAD_TIMEOUT = 600  # seconds: a vLLM engine starts in 30-90 s here, more while other tests load the CPUs
from conftest import WEATHER  # noqa: E402  (the tool schema of test_tool_use)
TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "description": "The weather in a city",
                                 "inputSchema": {"json": WEATHER}}}],
         "toolChoice": {"any": {}}}
ABORTED = re.compile(r"vLLM request (\w+) aborted \(cancelled\) after (\d+) tokens; (\d+) requests left in the engine")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("vllm-serving") / "data",
                    extra_args=("--engine", "vllm", "--vllm-kv-cache-gib", "1")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    # the first call waits for the engine to start
    return server.client(service="bedrock-runtime", read_timeout=LOAD_TIMEOUT,
                         retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture(scope="module")
def bedrock(server):
    return server.client()


def user(text: str) -> dict:
    return {"role": "user", "content": [{"text": text}]}


def converse(runtime, text: str, max_tokens: int = 40, model_id: str = SMOLLM2, **extra) -> dict:
    return runtime.converse(modelId=model_id, messages=[user(text)],
                            inferenceConfig={"maxTokens": max_tokens, "temperature": 0, **extra})


def stream(runtime, text: str, max_tokens: int = 40, **extra) -> list[tuple[str, dict]]:
    response = runtime.converse_stream(modelId=SMOLLM2, messages=[user(text)],
                                       inferenceConfig={"maxTokens": max_tokens, "temperature": 0, **extra})
    return [next(iter(event.items())) for event in response["stream"]]


def streamed_text(events) -> str:
    return "".join(p["delta"]["text"] for name, p in events if name == "contentBlockDelta" and "text" in p["delta"])


def log_of(server) -> str:
    return server.log.read_text(errors="replace")


# ------------------------------------------------------------------------------------------


def test_converse_answers_on_vllm(server, runtime):
    answer = converse(runtime, "What is the capital of France?")
    text = answer["output"]["message"]["content"][0]["text"]
    assert "Paris" in text
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["inputTokens"] > 5 and 1 <= answer["usage"]["outputTokens"] < 40
    # it ran on vLLM, not on the transformers fallback
    assert "vLLM engine for huggingface.smollm2-135m-instruct-v1_0 started" in log_of(server)


def test_stream_deltas_concatenate_to_the_greedy_converse_text(runtime):
    prompt = "Write two sentences about the sea, with an accent: café, naïve, 日本."
    expected = converse(runtime, prompt, max_tokens=60)
    events = stream(runtime, prompt, max_tokens=60)
    deltas = [p["delta"]["text"] for name, p in events if name == "contentBlockDelta"]
    assert len(deltas) > 3  # streamed as it was generated, not in one piece
    assert "".join(deltas) == expected["output"]["message"]["content"][0]["text"]
    (stop,) = [p for name, p in events if name == "messageStop"]
    assert stop["stopReason"] == expected["stopReason"]
    (metadata,) = [p for name, p in events if name == "metadata"]
    assert metadata["usage"]["inputTokens"] == expected["usage"]["inputTokens"]
    assert metadata["usage"]["outputTokens"] == expected["usage"]["outputTokens"]


def test_a_stop_sequence_is_never_streamed(runtime):
    prompt = "Count from 1 to 20, one number per line."
    stops = ["4", "5"]
    expected = converse(runtime, prompt, max_tokens=80, stopSequences=stops)
    assert expected["stopReason"] == "stop_sequence"
    events = stream(runtime, prompt, max_tokens=80, stopSequences=stops)
    text = streamed_text(events)
    assert text == expected["output"]["message"]["content"][0]["text"]
    assert text and not any(stop in text for stop in stops)
    assert [p["stopReason"] for name, p in events if name == "messageStop"] == ["stop_sequence"]


def test_a_stream_the_client_drops_is_aborted_in_the_engine(server, runtime):
    aborted_before = len(ABORTED.findall(log_of(server)))
    response = runtime.converse_stream(modelId=SMOLLM2, messages=[user("Write a very long story about dragons.")],
                                       inferenceConfig={"maxTokens": 2000, "temperature": 0})
    deltas = 0
    for event in response["stream"]:
        if "contentBlockDelta" in event:
            deltas += 1
            if deltas == 3:
                break
    response["stream"].close()  # the client goes away mid-stream: its connection closes
    found = wait_until(lambda: ABORTED.findall(log_of(server))[aborted_before:], 120, what="the abort in the log")
    (_, tokens, left), = found
    assert int(tokens) < 2000  # stopped where the client left, long before its maxTokens
    assert int(left) == 0  # nothing of it stays in the engine
    # the engine goes on serving
    assert "Paris" in converse(runtime, "What is the capital of France?")["output"]["message"]["content"][0]["text"]


def test_tool_use_fits_the_schema_streamed_and_not(runtime):
    messages = [user("What will the weather be in Paris for the next three days?")]
    answer = runtime.converse(modelId=SMOLLM2, messages=messages, toolConfig=TOOLS,
                              inferenceConfig={"maxTokens": 120, "temperature": 0})
    assert answer["stopReason"] == "tool_use"
    (call,) = [block["toolUse"] for block in answer["output"]["message"]["content"] if "toolUse" in block]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["input"], WEATHER)

    response = runtime.converse_stream(modelId=SMOLLM2, messages=messages, toolConfig=TOOLS,
                                       inferenceConfig={"maxTokens": 120, "temperature": 0})
    events = [next(iter(event.items())) for event in response["stream"]]
    (start,) = [p["start"]["toolUse"] for name, p in events if name == "contentBlockStart"]
    assert start["name"] == "get_weather" and start["toolUseId"].startswith("tooluse_")
    pieces = [p["delta"]["toolUse"]["input"] for name, p in events if name == "contentBlockDelta"]
    assert len(pieces) > 1
    streamed_input = json.loads("".join(pieces))
    jsonschema.validate(streamed_input, WEATHER)
    assert streamed_input == call["input"]  # greedy: the same call both ways
    assert [p["stopReason"] for name, p in events if name == "messageStop"] == ["tool_use"]


def test_count_tokens_gives_the_input_tokens_of_converse(runtime):
    for messages, extra in [([user("What is the capital of France?")], {}),
                            ([user("What will the weather be in Paris?")], {"toolConfig": TOOLS})]:
        counted = runtime.count_tokens(modelId=SMOLLM2, input={"converse": {"messages": messages, **extra}})
        answer = runtime.converse(modelId=SMOLLM2, messages=messages, inferenceConfig={"maxTokens": 5}, **extra)
        assert counted["inputTokens"] == answer["usage"]["inputTokens"]


def test_a_provisioned_throughput_gets_an_engine_of_its_own(server, bedrock, runtime):
    arn = bedrock.create_provisioned_model_throughput(provisionedModelName="vllm-pt", modelId=SMOLLM2,
                                                      modelUnits=1)["provisionedModelArn"]
    try:
        found = wait_until(lambda: (lambda pt: pt if pt["status"] != "Creating" else None)(
            bedrock.get_provisioned_model_throughput(provisionedModelId=arn)), LOAD_TIMEOUT, what="InService")
        assert found["status"] == "InService", found.get("failureMessage")
        # its slots (1 unit x 4) are its engine's sequences at once
        assert "started: float32, up to 4 sequences at once" in log_of(server)
        on_pt = converse(runtime, "What is the capital of France?", model_id=arn)
        on_demand = converse(runtime, "What is the capital of France?")
        assert on_pt["output"] == on_demand["output"]
    finally:
        bedrock.delete_provisioned_model_throughput(provisionedModelId=arn)
    wait_until(lambda: log_of(server).count("vLLM engine for huggingface.smollm2-135m-instruct-v1_0 stopped") >= 1,
               120, what="the throughput's engine stopped")


def test_two_deployments_of_one_model_share_one_engine(server, bedrock, runtime):
    folder = SHARED_CACHE / "foundation-models" / "huggingface.smollm2-135m-instruct-v1_0"
    uri = upload_folder(server, "models", "smollm2-copy/", folder)
    model = bedrock.create_custom_model(modelName="smollm2-copy",
                                        modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    wait_until(lambda: bedrock.get_custom_model(modelIdentifier=model)["modelStatus"] == "Active", 120,
               what="the custom model Active")
    deployments = [bedrock.create_custom_model_deployment(modelDeploymentName=f"vllm-dep-{i}",
                                                          modelArn=model)["customModelDeploymentArn"]
                   for i in range(2)]
    for arn in deployments:
        found = wait_until(lambda: (lambda d: d if d["status"] != "Creating" else None)(
            bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=arn)), LOAD_TIMEOUT, what="Active")
        assert found["status"] == "Active", found.get("failureMessage")
    log = log_of(server)
    model_id = model.rsplit("/", 1)[1]
    assert log.count(f"vLLM engine for {model_id} started") == 1  # one engine for both
    assert f"vLLM engine of {model_id} shared: 2 models on it" in log
    answers = [converse(runtime, "What is the capital of France?", model_id=arn)["output"] for arn in deployments]
    assert answers[0] == answers[1]
    # the first deployment goes; the engine stays for the second
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=deployments[0])
    wait_until(lambda: f"deployment {deployments[0]}: no longer served here" in log_of(server), 60,
               what="the first deployment unloaded")
    time.sleep(1)
    assert f"vLLM engine for {model_id} stopped" not in log_of(server)
    assert converse(runtime, "What is the capital of France?", model_id=deployments[1])["output"] == answers[1]
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=deployments[1])
    wait_until(lambda: f"vLLM engine for {model_id} stopped" in log_of(server), 120, what="the engine stopped")
