"""CountTokens through boto3 against a real server: for `converse` and `invokeModel` inputs the count
equals the inputTokens the model reports for the same input (Converse's usage, the Meta Llama body's
prompt_token_count), on the stub text model (tools included) and on the real SmolLM2 (its tokenizer and
chat template); models that do not count answer AWS's ValidationException; every answer is checked
against the output shape."""

import json

import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from conftest import Server

STUB = "bedrock-local.test-text-v1:0"
SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
MINILM = "sentence-transformers.all-minilm-l6-v2-v1:0"
UNSUPPORTED = "The provided model doesn't support counting tokens."
MESSAGES = [{"role": "user", "content": [{"text": "What is the capital of France?"}]},
            {"role": "assistant", "content": [{"text": "Paris."}]},
            {"role": "user", "content": [{"text": "And of Italy, in one word?"}]}]
SYSTEM = [{"text": "You answer in one word."}]
COUNTRY = {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]}
TOOLS = {"tools": [{"toolSpec": {"name": "capital", "description": "The capital of a country",
                                 "inputSchema": {"json": COUNTRY}}}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("count-tokens") / "data", workers=0, serving_workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime", read_timeout=300)


def count(runtime, model_id: str, **given) -> int:
    response = runtime.count_tokens(modelId=model_id, input=given)
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    shape = runtime.meta.service_model.operation_model("CountTokens").output_shape
    assert validation_message(body, shape) is None, body
    return body["inputTokens"]


def error_of(call, **kwargs) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def converse_input_tokens(runtime, model_id: str, **request) -> int:
    return runtime.converse(modelId=model_id, inferenceConfig={"maxTokens": 1}, **request)["usage"]["inputTokens"]


@pytest.mark.parametrize("request_", [{"messages": MESSAGES}, {"messages": MESSAGES, "system": SYSTEM},
                                      {"messages": MESSAGES[:1], "toolConfig": TOOLS}],
                         ids=["plain", "system", "tools"])
def test_converse_input_counts_as_converse_reports_on_the_stub_model(runtime, request_):
    counted = count(runtime, STUB, converse=request_)
    assert counted > 0
    assert counted == converse_input_tokens(runtime, STUB, **request_)


def test_invoke_model_input_counts_as_the_body_reports_on_the_stub_model(runtime):
    body = {"prompt": "one two three four five", "max_gen_len": 3}
    counted = count(runtime, STUB, invokeModel={"body": json.dumps(body).encode()})
    answer = json.loads(runtime.invoke_model(modelId=STUB, body=json.dumps(body))["body"].read())
    assert counted == answer["prompt_token_count"] == 5


def test_smollm2_counts_with_its_tokenizer_and_chat_template(runtime):
    """The real model: the same input counted and answered (the template adds a system prompt and
    role markers, so the count is more than the words)."""
    counted = count(runtime, SMOLLM2, converse={"messages": MESSAGES, "system": SYSTEM})
    assert counted == converse_input_tokens(runtime, SMOLLM2, messages=MESSAGES, system=SYSTEM)
    assert counted > 20
    body = {"prompt": "The capital of France is", "max_gen_len": 1}
    raw = count(runtime, SMOLLM2, invokeModel={"body": json.dumps(body).encode()})
    answer = json.loads(runtime.invoke_model(modelId=SMOLLM2, body=json.dumps(body))["body"].read())
    assert raw == answer["prompt_token_count"]


def test_models_that_do_not_count_answer_aws_error(runtime):
    assert error_of(runtime.count_tokens, modelId=MINILM,
                    input={"converse": {"messages": MESSAGES}}) == ("ValidationException", 400, UNSUPPORTED)


def test_bad_input_answers_validation_errors(runtime):
    code, status, message = error_of(runtime.count_tokens, modelId=STUB, input={"invokeModel": {"body": b"{not json"}})
    assert (code, status) == ("ValidationException", 400) and "input.invokeModel.body" in message
    code, status, message = error_of(runtime.count_tokens, modelId=STUB,
                                     input={"invokeModel": {"body": json.dumps({"max_gen_len": 3}).encode()}})
    assert (code, status) == ("ValidationException", 400) and "prompt" in message
    code, status, _ = error_of(runtime.count_tokens, modelId="amazon.no-such-model-v1:0",
                               input={"converse": {"messages": MESSAGES}})
    assert (code, status) == ("ResourceNotFoundException", 404)
