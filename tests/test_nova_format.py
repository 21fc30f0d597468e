"""Amazon Nova's InvokeModel bodies: the `messages-v1` body parsed and rendered (engine/formats/nova.py),
its streamed chunks, and both through boto3 against a real server whose alias file puts Nova ids on
the stub text and embedding models; a body Nova does not take is AWS's ValidationException naming
the field."""

import json

import pytest
from botocore.exceptions import ClientError

from bedrock_local.engine.formats import (FormatError, StreamRenderer, TextResult, invocation_metrics, parse_invoke,
                                          render_invoke)
from conftest import Server

NOVA = "amazon.nova-lite-v1:0"
NOVA_EMBED = "amazon.nova-2-multimodal-embeddings-v1:0"
HELLO = {"schemaVersion": "messages-v1", "system": [{"text": "Be brief."}],
         "messages": [{"role": "user", "content": [{"text": "say hello to nova"}]}],
         "inferenceConfig": {"maxTokens": 20, "temperature": 0.2, "topP": 0.8, "stopSequences": ["END"]}}
REVERSED = "nova to hello say"  # the stub text model answers the last user turn's words reversed


def test_the_body_parses_into_a_chat_request():
    request = parse_invoke("amazon-nova", HELLO).text
    assert request.messages == [{"role": "user", "content": "say hello to nova"}] and request.system == "Be brief."
    assert (request.max_tokens, request.temperature, request.top_p, request.stop_sequences) == (20, 0.2, 0.8, ["END"])
    # the guide's snake_case spellings are the same fields
    snake = parse_invoke("amazon-nova", {"messages": HELLO["messages"],
                                         "inferenceConfig": {"max_new_tokens": 7, "top_p": 0.5}}).text
    assert (snake.max_tokens, snake.top_p, snake.system) == (7, 0.5, None)


@pytest.mark.parametrize("body,where", [
    ({**HELLO, "schemaVersion": "messages-v2"}, "body.schemaVersion"),
    ({**HELLO, "inferenceConfig": {"maxTokens": 5, "max_new_tokens": 5}}, "both 'maxTokens' and 'max_new_tokens'"),
    ({**HELLO, "inferenceConfig": {"maxTokens": 0}}, "body.inferenceConfig.maxTokens"),
    ({**HELLO, "inferenceConfig": {"temperature": 0.5, "topK": 7}}, "top_k"),
    ({**HELLO, "inferenceConfig": {"max_tokens": 5}}, "'max_tokens'"),
    ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "body.messages[0].role"),
    ({"messages": [{"role": "user", "content": "plain text"}]}, "body.messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "AA=="}}}]}]},
     "body.messages[0].content[0].image"),
    ({"messages": [{"role": "user", "content": [{"text": ""}]}]}, "body.messages[0].content[0].text"),
    ({**HELLO, "toolConfig": {"tools": [{"toolSpec": {"name": "x"}}]}}, "body.toolConfig"),
    ({"prompt": "hi"}, "Amazon Nova"),
])
def test_bad_bodies_name_the_field(body, where):
    with pytest.raises(FormatError) as caught:
        parse_invoke("amazon-nova", body, where="body")
    assert where in str(caught.value), str(caught.value)


def test_response_and_stream_chunks():
    request = parse_invoke("amazon-nova", HELLO)
    result = TextResult(text="hello there", input_tokens=9, output_tokens=2, stop_reason="end_turn")
    answer = render_invoke(request, result, model_id=NOVA)
    assert answer["output"] == {"message": {"role": "assistant", "content": [{"text": "hello there"}]}}
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["inputTokens"] == 9 and answer["usage"]["outputTokens"] == 2
    assert answer["usage"]["totalTokens"] == 11

    stream = StreamRenderer(request, model_id=NOVA)
    chunks = stream.delta("hello", input_tokens=9) + stream.delta(" there") + stream.finish(
        result, invocation_metrics(9, 2, 30, 10))
    assert [next(iter(c)) for c in chunks] == ["messageStart", "contentBlockDelta", "contentBlockDelta",
                                               "contentBlockStop", "messageStop", "metadata"]
    assert chunks[0] == {"messageStart": {"role": "assistant"}}
    assert "".join(c["contentBlockDelta"]["delta"]["text"] for c in chunks if "contentBlockDelta" in c) == \
        "hello there"
    assert chunks[-2] == {"messageStop": {"stopReason": "end_turn"}}
    assert chunks[-1]["metadata"]["usage"]["outputTokens"] == 2
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == 9


def test_the_embeddings_body():
    body = {"schemaVersion": "nova-multimodal-embed-v1", "taskType": "SINGLE_EMBEDDING",
            "singleEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 256,
                                      "text": {"truncationMode": "END", "value": "a quiet lake"}}}
    request = parse_invoke("nova-embed", body)
    assert request.embeddings[0].text == "a quiet lake" and request.embeddings[0].dimensions == 256
    for bad, where in [({**body, "taskType": "SEGMENTED_EMBEDDING"}, "asynchronous"),
                       ({**body, "singleEmbeddingParams": {**body["singleEmbeddingParams"], "embeddingDimension": 300}},
                        "embeddingDimension"),
                       ({**body, "singleEmbeddingParams": {"embeddingPurpose": "GENERIC_INDEX", "image": {}}},
                        "singleEmbeddingParams.image")]:
        with pytest.raises(FormatError) as caught:
            parse_invoke("nova-embed", bad)
        assert where in str(caught.value)


# --- through boto3 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nova")
    aliases = folder / "aliases.json"
    aliases.write_text(json.dumps({"aliases": [
        # AWS's metadata for the ids comes from the catalog; only what runs them changes
        {"modelId": NOVA, "runsOn": "bedrock-local.test-text-v1:0", "bodyFormat": "amazon-nova"},
        {"modelId": NOVA_EMBED, "runsOn": "bedrock-local.test-embed-v1:0", "bodyFormat": "nova-embed"}]}))
    server = Server(folder / "data", extra_args=("--model-aliases", str(aliases))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime")


def test_invoke_model_and_its_stream(runtime):
    answer = json.loads(runtime.invoke_model(modelId=NOVA, body=json.dumps(HELLO))["body"].read())
    assert answer["output"]["message"]["content"][0]["text"] == REVERSED
    assert answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    assert usage["outputTokens"] == 4 and usage["totalTokens"] == usage["inputTokens"] + 4

    events = [json.loads(e["chunk"]["bytes"]) for e in
              runtime.invoke_model_with_response_stream(modelId=NOVA, body=json.dumps(HELLO))["body"]]
    kinds = [next(k for k in e if k != "amazon-bedrock-invocationMetrics") for e in events]
    assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert set(kinds[1:-3]) == {"contentBlockDelta"}
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events[1:-3]) == REVERSED
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 4
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == 4 and metrics["inputTokenCount"] == events[-1]["metadata"]["usage"][
        "inputTokens"]


def test_max_tokens_stops_the_answer(runtime):
    body = {**HELLO, "inferenceConfig": {"max_new_tokens": 2}}
    answer = json.loads(runtime.invoke_model(modelId=NOVA, body=json.dumps(body))["body"].read())
    assert answer["output"]["message"]["content"][0]["text"] == "nova to"
    assert answer["stopReason"] == "max_tokens" and answer["usage"]["outputTokens"] == 2


def test_a_bad_body_is_a_validation_exception(runtime):
    body = {**HELLO, "inferenceConfig": {"maxTokens": 20, "temperature": 3}}
    with pytest.raises(ClientError) as caught:
        runtime.invoke_model(modelId=NOVA, body=json.dumps(body))
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationException" and error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "inferenceConfig.temperature" in error["Error"]["Message"]
    with pytest.raises(ClientError) as caught:  # another provider's body names Nova's
        runtime.invoke_model(modelId=NOVA, body=json.dumps({"prompt": "hi", "max_gen_len": 5}))
    assert "Amazon Nova" in caught.value.response["Error"]["Message"]


def test_nova_embeddings(runtime):
    def embed(text, size):
        body = {"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {
            "embeddingPurpose": "GENERIC_RETRIEVAL", "embeddingDimension": size,
            "text": {"truncationMode": "END", "value": text}}}
        answer = json.loads(runtime.invoke_model(modelId=NOVA_EMBED, body=json.dumps(body))["body"].read())
        assert [e["embeddingType"] for e in answer["embeddings"]] == ["TEXT"]
        return answer["embeddings"][0]["embedding"]
    assert len(embed("a quiet lake", 3072)) == 3072
    vector = embed("a quiet lake", 384)
    assert len(vector) == 384 and abs(sum(x * x for x in vector) - 1) < 1e-6
    assert embed("a quiet lake", 384) == vector  # the same text, the same vector
