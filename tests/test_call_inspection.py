"""The test endpoint (docs/testing-endpoint.md) through a real server: the runtime calls it received
are listed with what was asked and answered, oldest first, and cleared; scripted replies (text, or a
tool call) answer Converse, ConverseStream, InvokeModel and its stream in each one's form without a
model; another account sees and scripts nothing of the first's; unsigned or badly signed requests
are refused. Each runtime answer is checked against the service model's output shape."""

import json

import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from bedrock_local.testing.calls import Calls, EndpointError
from conftest import Server

A_KEY, A_SECRET, A = "AKIAINSPECTAAAA", "secret-of-a", "111111111111"
B_KEY, B_SECRET, B = "AKIAINSPECTBBBB", "secret-of-b", "222222222222"
STUB = "bedrock-local.test-text-v1:0"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "description": "The weather in a city",
                                 "inputSchema": {"json": WEATHER}}}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspection")
    credentials = root / "credentials.json"
    credentials.write_text(json.dumps({A_KEY: {"secretAccessKey": A_SECRET, "accountId": A},
                                       B_KEY: {"secretAccessKey": B_SECRET, "accountId": B}}))
    server = Server(root / "data", workers=0, serving_workers=1,
                    extra_args=("--credentials-file", str(credentials))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(access_key=A_KEY, secret_key=A_SECRET, service="bedrock-runtime")


@pytest.fixture
def calls(server):
    """Account A's endpoint, emptied before each test."""
    calls = Calls(server.url, access_key=A_KEY, secret_key=A_SECRET)
    calls.clear()
    calls.clear_scripts()
    return calls


def checked(client, operation: str, response: dict) -> dict:
    body = {k: v for k, v in response.items() if k not in ("ResponseMetadata", "stream", "body")}
    problem = validation_message(body, client.meta.service_model.operation_model(operation).output_shape)
    assert problem is None, f"{operation} answered outside its output shape: {problem}"
    return response


def stream_events(client, response: dict) -> list[tuple[str, dict]]:
    shape = client.meta.service_model.operation_model("ConverseStream").output_shape.members["stream"]
    events = []
    for event in response["stream"]:
        (name, payload), = event.items()
        assert validation_message(payload, shape.members[name]) is None, (name, payload)
        events.append((name, payload))
    return events


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"text": text}]}]


def test_runtime_calls_are_listed_oldest_first_and_cleared(runtime, calls):
    first = checked(runtime, "Converse", runtime.converse(modelId=STUB, messages=user("one two three")))
    body = json.dumps({"prompt": "alpha beta", "max_gen_len": 5})
    invoked = runtime.invoke_model(modelId=STUB, body=body)
    answer = json.loads(invoked["body"].read())
    listed = calls.list()
    assert [c["operation"] for c in listed] == ["Converse", "InvokeModel"]
    converse, invoke = listed
    assert converse["requestId"] == first["ResponseMetadata"]["RequestId"]
    assert converse["modelId"] == STUB
    assert converse["request"]["messages"] == user("one two three")
    assert converse["response"]["output"] == first["output"]
    assert converse["usage"] == {"inputTokens": first["usage"]["inputTokens"],
                                 "outputTokens": first["usage"]["outputTokens"]}
    assert invoke["requestId"] == invoked["ResponseMetadata"]["RequestId"]
    assert invoke["request"] == {"prompt": "alpha beta", "max_gen_len": 5}
    assert invoke["response"] == answer
    assert calls.list(operation="InvokeModel") == [invoke]
    assert calls.clear() == 2
    assert calls.list() == []


def test_a_failed_call_is_listed_with_its_error(runtime, calls):
    with pytest.raises(ClientError):
        runtime.converse(modelId="amazon.no-such-model-v1:0", messages=user("hello"))
    (listed,) = calls.list()
    assert listed["error"]["code"] == "ResourceNotFoundException"
    assert "response" not in listed


def test_a_scripted_text_reply_answers_converse_and_its_stream(runtime, calls):
    script = calls.script(STUB, pattern=r"capital of \w+", text="Paris, of course.")
    answer = checked(runtime, "Converse", runtime.converse(modelId=STUB,
                                                           messages=user("What is the capital of France?")))
    assert answer["output"]["message"]["content"] == [{"text": "Paris, of course."}]
    assert answer["stopReason"] == "end_turn"
    assert answer["usage"]["outputTokens"] == 3
    events = stream_events(runtime, runtime.converse_stream(modelId=STUB, messages=user("the capital of Peru")))
    assert "".join(e["delta"]["text"] for name, e in events if name == "contentBlockDelta") == "Paris, of course."
    assert events[-2] == ("messageStop", {"stopReason": "end_turn"})
    # a prompt the pattern does not match goes to the model (the stub answers its words reversed)
    other = runtime.converse(modelId=STUB, messages=user("hello there"))
    assert other["output"]["message"]["content"] == [{"text": "there hello"}]
    listed = calls.list()
    assert [c.get("scriptId") for c in listed] == [script["scriptId"], script["scriptId"], None]
    assert listed[1]["response"][0] == {"messageStart": {"role": "assistant"}}  # a stream: its events
    assert calls.scripts()[0]["used"] == 2


def test_a_scripted_reply_answers_invoke_model_in_the_models_body_format(runtime, calls):
    calls.script(STUB, pattern="^weather", text="Sunny all week.", times=2)
    body = json.dumps({"prompt": "weather in Oslo?", "max_gen_len": 50})
    first = json.loads(runtime.invoke_model(modelId=STUB, body=body)["body"].read())
    assert first["generation"] == "Sunny all week." and first["stop_reason"] == "stop"
    streamed = runtime.invoke_model_with_response_stream(modelId=STUB, body=body)
    chunks = [json.loads(event["chunk"]["bytes"]) for event in streamed["body"]]
    assert "".join(c.get("generation", "") for c in chunks) == "Sunny all week."
    # `times` used up: the script is gone and the model answers again
    third = json.loads(runtime.invoke_model(modelId=STUB, body=body)["body"].read())
    assert third["generation"] != "Sunny all week."
    assert calls.scripts() == []


def test_a_scripted_tool_call_answers_converse_and_its_stream(runtime, calls):
    calls.script(STUB, pattern="Oslo", tool_use={"name": "get_weather", "input": {"city": "Oslo"}})
    answer = checked(runtime, "Converse", runtime.converse(modelId=STUB, messages=user("Weather in Oslo?"),
                                                           toolConfig=TOOLS))
    assert answer["stopReason"] == "tool_use"
    (block,) = answer["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "get_weather" and block["toolUse"]["input"] == {"city": "Oslo"}
    events = stream_events(runtime, runtime.converse_stream(modelId=STUB, messages=user("Oslo today"),
                                                            toolConfig=TOOLS))
    starts = [e["start"]["toolUse"] for name, e in events if name == "contentBlockStart"]
    assert [s["name"] for s in starts] == ["get_weather"]
    pieces = "".join(e["delta"]["toolUse"]["input"] for name, e in events if name == "contentBlockDelta")
    assert json.loads(pieces) == {"city": "Oslo"}
    assert events[-2] == ("messageStop", {"stopReason": "tool_use"})
    # a request that offers no tools is not answered by a tool-call script
    plain = runtime.converse(modelId=STUB, messages=user("Weather in Oslo?"))
    assert plain["stopReason"] != "tool_use"


def test_bad_scripts_are_refused(calls):
    for spec, words in ((dict(text="hi", tool_use={"name": "x", "input": {}}), "exactly one"),
                        (dict(pattern="(", text="hi"), "regular expression"),
                        (dict(text="hi", times=0), "times")):
        with pytest.raises(EndpointError) as raised:
            calls.script(STUB, **spec)
        assert raised.value.status == 400 and raised.value.code == "ValidationException"
        assert words in raised.value.message


def test_another_account_sees_and_scripts_nothing_of_the_first(server, runtime, calls):
    calls.script(STUB, text="scripted for A")
    runtime.converse(modelId=STUB, messages=user("anything at all"))
    other = Calls(server.url, access_key=B_KEY, secret_key=B_SECRET)
    assert other.list() == [] and other.scripts() == []
    b_runtime = server.client(access_key=B_KEY, secret_key=B_SECRET, service="bedrock-runtime")
    answer = b_runtime.converse(modelId=STUB, messages=user("anything at all"))
    assert answer["output"]["message"]["content"] == [{"text": "all at anything"}]  # the model, not A's script
    assert other.clear_scripts() == 0 and len(calls.scripts()) == 1
    assert [c["operation"] for c in other.list()] == ["Converse"] and len(calls.list()) == 1


def test_unsigned_and_badly_signed_requests_are_refused(server):
    with pytest.raises(EndpointError) as raised:
        Calls(server.url, access_key=A_KEY, secret_key="wrong").list()
    assert raised.value.status == 403 and raised.value.code == "InvalidSignatureException"
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(server.url + "/_bedrock-local/calls", timeout=10)
    assert unsigned.value.code in (400, 403)
