"""bedrock-runtime through boto3 against a real server: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream on a deployment of the real SmolLM2 (imported as a custom model)
and on foundation models by id; streamed text equals the non-streamed text for greedy decoding;
concurrent requests; updating a deployment under load without a failed request; and the errors
(ModelNotReadyException, ValidationException naming the field, ResourceNotFoundException,
ServiceUnavailableException)."""

import json
import threading

import pytest
from botocore.config import Config

from conftest import SHARED_CACHE, upload_folder, wait_until
from test_deployments import build_tiny_model, error_of, import_model, wait_status

SMOLLM = "huggingface.smollm2-135m-instruct-v1:0"
MINILM = "sentence-transformers.all-minilm-l6-v2-v1:0"
QUESTION = [{"role": "user", "content": [{"text": "What is the capital of France?"}]}]
GREEDY = {"maxTokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime")


@pytest.fixture(scope="module")
def smollm_deployment(server, bedrock):
    """The real SmolLM2 imported as a custom model and deployed."""
    from bedrock_local.engine.catalog import find_foundation_model
    from bedrock_local.engine.loading import materialize_foundation_model

    folder = materialize_foundation_model(find_foundation_model(SMOLLM), SHARED_CACHE / "foundation-models")
    uri = upload_folder(server, "models", "smollm2/", folder)
    model = bedrock.create_custom_model(modelName="smollm2-imported",
                                        modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    wait_until(lambda: bedrock.get_custom_model(modelIdentifier=model)["modelStatus"] == "Active", 300,
               what="imported SmolLM2 Active")
    arn = bedrock.create_custom_model_deployment(modelDeploymentName="smollm2", modelArn=model)[
        "customModelDeploymentArn"]
    wait_status(bedrock, arn, timeout=300)
    return arn


def stream_events(response) -> list[tuple[str, dict]]:
    return [next(iter(event.items())) for event in response["stream"]]


def test_converse_with_a_deployed_imported_model(runtime, smollm_deployment):
    answer = runtime.converse(modelId=smollm_deployment, messages=QUESTION, inferenceConfig=GREEDY)
    text = answer["output"]["message"]["content"][0]["text"]
    assert answer["output"]["message"]["role"] == "assistant"
    assert "Paris" in text
    assert answer["stopReason"] in ("end_turn", "max_tokens")
    usage = answer["usage"]
    assert usage["inputTokens"] > 5 and 1 <= usage["outputTokens"] <= 12
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert answer["metrics"]["latencyMs"] >= 1


def test_converse_stream_sends_the_same_text_as_converse(runtime, smollm_deployment):
    config = {"maxTokens": 24, "temperature": 0}
    messages = [{"role": "user", "content": [{"text": "Name three colours."}]}]
    whole = runtime.converse(modelId=smollm_deployment, messages=messages, inferenceConfig=config)
    events = stream_events(runtime.converse_stream(modelId=smollm_deployment, messages=messages,
                                                   inferenceConfig=config))
    names = [name for name, _ in events]
    assert names[0] == "messageStart" and events[0][1] == {"role": "assistant"}
    assert names[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    deltas = [body["delta"]["text"] for name, body in events if name == "contentBlockDelta"]
    assert len(deltas) > 3  # sent piece by piece as it was generated, not as one block
    assert set(names[1:-3]) == {"contentBlockDelta"}
    assert "".join(deltas) == whole["output"]["message"]["content"][0]["text"]
    assert events[-2][1]["stopReason"] == whole["stopReason"]
    assert events[-1][1]["usage"] == whole["usage"]
    assert events[-1][1]["metrics"]["latencyMs"] >= 1


def test_invoke_model_and_its_stream_agree(runtime, smollm_deployment):
    body = {"prompt": "The capital of France is", "max_gen_len": 10, "temperature": 0}
    response = runtime.invoke_model(modelId=smollm_deployment, body=json.dumps(body))
    assert response["contentType"] == "application/json"
    answer = json.loads(response["body"].read())
    assert set(answer) == {"generation", "prompt_token_count", "generation_token_count", "stop_reason"}
    assert answer["generation_token_count"] <= 10 and answer["prompt_token_count"] >= 5
    streamed = runtime.invoke_model_with_response_stream(modelId=smollm_deployment, body=json.dumps(body))
    chunks = [json.loads(event["chunk"]["bytes"]) for event in streamed["body"]]
    assert len(chunks) > 1
    assert "".join(chunk["generation"] for chunk in chunks) == answer["generation"]
    last = chunks[-1]
    assert last["stop_reason"] == answer["stop_reason"]
    assert last["generation_token_count"] == answer["generation_token_count"]
    metrics = last["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == answer["prompt_token_count"]
    assert metrics["outputTokenCount"] == answer["generation_token_count"]
    assert metrics["invocationLatency"] >= metrics["firstByteLatency"] >= 0


def test_concurrent_requests_each_get_their_own_answer(runtime, smollm_deployment):
    prompts = [f"Count from {n} to {n + 3}:" for n in range(1, 7)]
    solo = {p: json.loads(runtime.invoke_model(modelId=smollm_deployment, body=json.dumps(
        {"prompt": p, "max_gen_len": 8, "temperature": 0}))["body"].read())["generation"] for p in prompts[:2]}
    answers, failures = {}, []

    def ask(prompt):
        try:
            body = json.dumps({"prompt": prompt, "max_gen_len": 8, "temperature": 0})
            answers[prompt] = json.loads(runtime.invoke_model(modelId=smollm_deployment, body=body)["body"].read())
        except Exception as exc:  # noqa: BLE001  (collected and asserted below)
            failures.append(exc)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert set(answers) == set(prompts)
    for prompt in prompts[:2]:  # the same greedy answer as when it ran alone
        assert answers[prompt]["generation"] == solo[prompt]


def test_foundation_models_by_id_and_arn(runtime):
    answer = runtime.converse(modelId=SMOLLM, messages=QUESTION, inferenceConfig=GREEDY)
    assert "Paris" in answer["output"]["message"]["content"][0]["text"]
    by_arn = runtime.converse(modelId=f"arn:aws:bedrock:us-east-1::foundation-model/{SMOLLM}", messages=QUESTION,
                              inferenceConfig=GREEDY)
    assert by_arn["output"] == answer["output"]
    embedded = json.loads(runtime.invoke_model(modelId=MINILM, body=json.dumps(
        {"inputText": "a quiet lake at dawn"}))["body"].read())
    assert len(embedded["embedding"]) == 384 and embedded["inputTextTokenCount"] >= 5
    norm = sum(x * x for x in embedded["embedding"]) ** 0.5
    assert abs(norm - 1.0) < 1e-3


def test_bad_bodies_name_the_field(server, runtime, smollm_deployment):
    cases = [
        (runtime.converse, dict(modelId=SMOLLM, messages=[{"role": "assistant", "content": [{"text": "hi"}]}]),
         "messages[0].role"),
        (runtime.converse, dict(modelId=SMOLLM, messages=QUESTION, inferenceConfig={"temperature": 3.0}),
         "temperature"),
        (runtime.invoke_model, dict(modelId=smollm_deployment, body=json.dumps({"max_gen_len": 5})), "body.prompt"),
        (runtime.invoke_model, dict(modelId=smollm_deployment, body=json.dumps({"prompt": "x", "max_gen_len": 0})),
         "body.max_gen_len"),
        (runtime.invoke_model, dict(modelId=smollm_deployment, body=b"{not json"), "not valid JSON"),
        (runtime.invoke_model, dict(modelId=MINILM, body=json.dumps({"prompt": "x"})), "prompt"),
        (runtime.invoke_model_with_response_stream, dict(modelId=MINILM, body=json.dumps({"inputText": "x"})),
         "embedding model"),
        (runtime.converse_stream, dict(modelId=MINILM, messages=QUESTION), "embedding model"),
    ]
    loose = server.client(service="bedrock-runtime", validate=False)
    cases.append((loose.converse, dict(modelId=SMOLLM, messages=QUESTION, inferenceConfig={"maxTokens": "many"}),
                  "maxTokens"))
    for call, kwargs, named in cases:
        error = error_of(call, **kwargs)
        assert error["Error"]["Code"] == "ValidationException", (kwargs, error)
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert named in error["Error"]["Message"], (named, error["Error"]["Message"])


def test_unknown_models_and_deployments_are_not_found(runtime, smollm_deployment):
    for model_id in ("acme.no-such-model-v1:0", smollm_deployment[:-12] + "zzzzzzzzzzzz"):
        error = error_of(runtime.converse, modelId=model_id, messages=QUESTION)
        assert error["Error"]["Code"] == "ResourceNotFoundException", error
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    other_region = runtime.meta.endpoint_url
    west = __import__("boto3").client("bedrock-runtime", endpoint_url=other_region, region_name="us-west-2",
                                      aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x",
                                      config=Config(retries={"max_attempts": 1}))
    error = error_of(west.converse, modelId=smollm_deployment, messages=QUESTION)
    assert error["Error"]["Code"] == "ResourceNotFoundException"


def test_a_custom_model_needs_a_deployment(server, bedrock, smollm_deployment):
    loose = server.client(service="bedrock-runtime", validate=False)
    # an imported model's ARN is not a runtime modelId at all (the model's pattern refuses it, as on AWS)
    model = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=smollm_deployment)["modelArn"]
    error = error_of(loose.converse, modelId=model, messages=QUESTION)
    assert error["Error"]["Code"] == "ValidationException"
    assert "modelId" in error["Error"]["Message"]
    # a custom model ARN of the runtime's form is told to go through a deployment
    error = error_of(loose.converse, modelId="arn:aws:bedrock:us-east-1:123456789012:custom-model/acme.model-v1/"
                     "abcdefghijkl", messages=QUESTION)
    assert error["Error"]["Code"] == "ValidationException"
    assert "CreateCustomModelDeployment" in error["Error"]["Message"]


def test_not_ready_while_creating_and_no_serving_node(make_server, tmp_path):
    server = make_server("no-serving", extra_args=("--serving-workers", "0"))
    bedrock, runtime = server.client(), server.client(service="bedrock-runtime")
    model = import_model(server, bedrock, build_tiny_model(tmp_path / "tiny", 1), "tiny-not-ready")
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="waiting", modelArn=model)[
        "customModelDeploymentArn"]
    for call, kwargs in ((runtime.converse, dict(messages=QUESTION)),
                         (runtime.invoke_model, dict(body=json.dumps({"prompt": "hi"}))),
                         (runtime.converse_stream, dict(messages=QUESTION))):
        error = error_of(call, modelId=dep, **kwargs)
        assert error["Error"]["Code"] == "ModelNotReadyException", error
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=dep)["status"] == "Creating"
    error = error_of(runtime.converse, modelId=SMOLLM, messages=QUESTION)
    assert error["Error"]["Code"] == "ServiceUnavailableException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "--serving-workers" in error["Error"]["Message"]


def test_update_under_load_fails_no_request(server, bedrock, runtime, tmp_path):
    first = import_model(server, bedrock, build_tiny_model(tmp_path / "load-a", 11), "tiny-load-a")
    second = import_model(server, bedrock, build_tiny_model(tmp_path / "load-b", 12), "tiny-load-b")
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="under-load", modelArn=first)[
        "customModelDeploymentArn"]
    wait_status(bedrock, dep)
    body = json.dumps({"prompt": "hello world", "max_gen_len": 6, "temperature": 0})
    before = json.loads(runtime.invoke_model(modelId=dep, body=body)["body"].read())["generation"]
    results, failures, stop = [], [], threading.Event()

    def client_loop():
        while not stop.is_set():
            try:
                results.append(json.loads(runtime.invoke_model(modelId=dep, body=body)["body"].read())["generation"])
            except Exception as exc:  # noqa: BLE001  (collected and asserted below)
                failures.append(exc)

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(results) >= 8, 60, what="requests before the update")
        bedrock.update_custom_model_deployment(customModelDeploymentIdentifier=dep, modelArn=second)
        wait_until(lambda: bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=dep)[
            "updateDetails"]["updateStatus"] == "UpdateCompleted", 120, what="update completed")
        count = len(results)
        wait_until(lambda: len(results) >= count + 8, 60, what="requests after the update")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    after = results[-1]
    assert before != after  # the second model answers now
    assert set(results) == {before, after}  # every answer came whole from one model or the other
    assert results[0] == before
