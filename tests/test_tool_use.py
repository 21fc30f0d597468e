"""Tool use through boto3 against real servers: Converse and ConverseStream with toolConfig, the
Anthropic Messages body's tools through InvokeModel and its stream, AWS's errors for bad tool input,
on the stub text model (deterministic calls built from the schema); then, on the real SmolLM2, calls
made under constrained decoding that parse and validate. Every answer, each stream event included, is
checked against the service model's output shape."""

import json
import re

import jsonschema
import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from bedrock_local.engine.stub_models import TEST_TEXT_MODEL
from conftest import Server
from conftest import WEATHER  # a tool input schema (the vLLM tests use it too)

CLAUDE_ON_STUB = "anthropic.claude-tools-test-v1:0"
TITAN_ON_STUB = "amazon.titan-tools-test-v1:0"
AUTO_ONLY = "meta.auto-tools-test-v1:0"
SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
SONG = {"type": "object", "properties": {"sign": {"type": "string"}}, "required": ["sign"]}
TOOLS = [{"toolSpec": {"name": "get_weather", "description": "The weather in a city",
                       "inputSchema": {"json": WEATHER}}},
         {"toolSpec": {"name": "top_song", "description": "The most played song of a radio station",
                       "inputSchema": {"json": SONG}}}]
TOOL_ID = r"tooluse_[A-Za-z0-9_-]{22}"


def alias(model_id, body_format, **extra):
    return {"modelId": model_id, "runsOn": TEST_TEXT_MODEL, "bodyFormat": body_format, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tool-use")
    aliases = folder / "aliases.json"
    aliases.write_text(json.dumps({"aliases": [
        alias(CLAUDE_ON_STUB, "anthropic-messages", toolChoices=["auto", "any", "tool"]),
        alias(TITAN_ON_STUB, "titan-text", toolChoices=[]),
        alias(AUTO_ONLY, "meta-llama", toolChoices=["auto"]),
    ]}))
    server = Server(folder / "data", extra_args=("--model-aliases", str(aliases))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime", retries={"total_max_attempts": 1, "mode": "standard"})


def checked(client, operation: str, response: dict) -> dict:
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    shape = client.meta.service_model.operation_model(operation).output_shape
    problem = validation_message({k: v for k, v in body.items() if k != "stream"}, shape)
    assert problem is None, f"{operation} answered outside its output shape: {problem}"
    return body


def stream_events(client, response: dict) -> list[tuple[str, dict]]:
    """The ConverseStream events, each checked against its event shape."""
    shape = client.meta.service_model.operation_model("ConverseStream").output_shape.members["stream"]
    events = []
    for event in response["stream"]:
        (name, payload), = event.items()
        problem = validation_message(payload, shape.members[name])
        assert problem is None, f"{name} event outside its shape: {problem}"
        events.append((name, payload))
    return events


def error_of(call, **kwargs) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def user(text: str) -> dict:
    return {"role": "user", "content": [{"text": text}]}


def tool_uses(response: dict) -> list[dict]:
    return [block["toolUse"] for block in response["output"]["message"]["content"] if "toolUse" in block]


# ------------------------------------------------------------------------------------------
# the stub model


def test_a_converse_tool_loop_ends_in_text(runtime):
    messages = [user("What is the weather in Paris this week?")]
    config = {"tools": TOOLS, "toolChoice": {"tool": {"name": "get_weather"}}}
    first = checked(runtime, "Converse", runtime.converse(modelId=TEST_TEXT_MODEL, messages=messages,
                                                            toolConfig=config))
    assert first["stopReason"] == "tool_use"
    (call,) = tool_uses(first)
    assert call["name"] == "get_weather"
    assert re.fullmatch(TOOL_ID, call["toolUseId"])
    jsonschema.validate(call["input"], WEATHER)
    # the same inputs give the same call
    again = runtime.converse(modelId=TEST_TEXT_MODEL, messages=messages, toolConfig=config)
    assert tool_uses(again)[0]["input"] == call["input"]
    assert tool_uses(again)[0]["toolUseId"] != call["toolUseId"]

    messages += [first["output"]["message"],
                 {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"],
                                                               "content": [{"json": {"sky": "sunny"}}]}}]}]
    final = checked(runtime, "Converse", runtime.converse(modelId=TEST_TEXT_MODEL, messages=messages,
                                                            toolConfig={"tools": TOOLS}))
    assert final["stopReason"] == "end_turn"
    assert final["output"]["message"]["content"] == [{"text": '"sunny"} {"sky":'}]
    assert not tool_uses(final)


def test_tool_choice_any_calls_a_tool_and_auto_may_too(runtime):
    for choice in ({"any": {}}, {"auto": {}}):
        response = checked(runtime, "Converse", runtime.converse(
            modelId=TEST_TEXT_MODEL, messages=[user("Which song is top on WZPZ?")],
            toolConfig={"tools": TOOLS, "toolChoice": choice}))
        (call,) = tool_uses(response)
        schema = WEATHER if call["name"] == "get_weather" else SONG
        jsonschema.validate(call["input"], schema)
        assert response["stopReason"] == "tool_use"


def test_converse_stream_tool_deltas_reassemble_into_the_input(runtime):
    response = runtime.converse_stream(modelId=TEST_TEXT_MODEL, messages=[user("Weather in Rome for two days")],
                                       toolConfig={"tools": TOOLS, "toolChoice": {"tool": {"name": "get_weather"}}})
    events = stream_events(runtime, response)
    names = [name for name, _ in events]
    assert names[0] == "messageStart" and names[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    (start,) = [payload for name, payload in events if name == "contentBlockStart"]
    assert start["start"]["toolUse"]["name"] == "get_weather" and start["contentBlockIndex"] == 0
    pieces = [payload["delta"]["toolUse"]["input"] for name, payload in events if name == "contentBlockDelta"]
    assert len(pieces) >= 2
    jsonschema.validate(json.loads("".join(pieces)), WEATHER)
    assert dict(events)["messageStop"]["stopReason"] == "tool_use"


def test_the_anthropic_messages_body_with_tools(runtime):
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 200,
            "tools": [{"name": "top_song", "description": "Top song", "input_schema": SONG}],
            "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "Top song on WZPZ?"}]}
    answer = json.loads(runtime.invoke_model(modelId=CLAUDE_ON_STUB, body=json.dumps(body))["body"].read())
    assert answer["stop_reason"] == "tool_use"
    (block,) = answer["content"]
    assert block["type"] == "tool_use" and block["name"] == "top_song"
    jsonschema.validate(block["input"], SONG)

    body["messages"] += [{"role": "assistant", "content": answer["content"]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"],
                                                       "content": "Elemental Hotel"}]}]
    body["tool_choice"] = {"type": "auto"}
    final = json.loads(runtime.invoke_model(modelId=CLAUDE_ON_STUB, body=json.dumps(body))["body"].read())
    assert final["stop_reason"] == "end_turn" and final["content"] == [{"type": "text", "text": "Hotel Elemental"}]

    body["messages"], body["tool_choice"] = body["messages"][:1], {"type": "tool", "name": "top_song"}
    response = runtime.invoke_model_with_response_stream(modelId=CLAUDE_ON_STUB, body=json.dumps(body))
    chunks = [json.loads(event["chunk"]["bytes"]) for event in response["body"]]
    kinds = [chunk["type"] for chunk in chunks]
    assert kinds[0] == "message_start" and kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    (start,) = [c for c in chunks if c["type"] == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["name"] == "top_song"
    partial = "".join(c["delta"]["partial_json"] for c in chunks if c["type"] == "content_block_delta")
    jsonschema.validate(json.loads(partial), SONG)
    assert chunks[-2]["delta"]["stop_reason"] == "tool_use"


def test_the_anthropic_sdks_dated_version_is_accepted_and_garbage_is_not(runtime):
    body = {"max_tokens": 20, "messages": [{"role": "user", "content": "one two"}]}
    for version in ("bedrock-2023-05-31", "2023-06-01", "2026-10-21"):
        answer = json.loads(runtime.invoke_model(modelId=CLAUDE_ON_STUB, body=json.dumps(
            {**body, "anthropic_version": version}))["body"].read())
        assert answer["content"] == [{"type": "text", "text": "two one"}]
    for version in ("bedrock-2023-02-30", "latest", "2019-01-01", 20230531):
        code, status, message = error_of(runtime.invoke_model, modelId=CLAUDE_ON_STUB,
                                         body=json.dumps({**body, "anthropic_version": version}))
        assert (code, status) == ("ValidationException", 400) and "body.anthropic_version" in message


@pytest.mark.parametrize("config, messages, expected", [
    ({"tools": TOOLS, "toolChoice": {"tool": {"name": "nope"}}}, None,
     "The tool 'nope' named at toolConfig.toolChoice.tool.name is not one of the tools in the request."),
    ({"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": {"type": "object", "required": "x"}}}}]}, None,
     "toolConfig.tools.0.toolSpec.inputSchema.json.required is not a valid JSON schema"),
    ({"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": {"type": "string"}}}}]}, None,
     "The value at toolConfig.tools.0.toolSpec.inputSchema.json.type must be one of the following: object."),
    ({"tools": TOOLS}, [user("hi"), {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "tooluse_a", "name": "top_song", "input": {"sign": "X"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_b", "content": [{"text": "x"}]}}]}],
     "Expected toolResult blocks at messages.2.content for the following Ids: tooluse_a"),
    ({"tools": TOOLS}, [user("hi"), {"role": "assistant", "content": [{"text": "ok"}]},
                        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_b",
                                                                     "content": [{"text": "x"}]}}]}],
     "The number of toolResult blocks at messages.2.content exceeds the number of toolUse blocks of previous turn."),
    (None, [user("hi"), {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "tooluse_a", "name": "top_song", "input": {"sign": "X"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_a", "content": [{"text": "x"}]}}]}],
     "The toolConfig field must be defined when using toolUse and toolResult content blocks."),
])
def test_bad_tool_input_answers_aws_errors(runtime, config, messages, expected):
    kwargs = {"modelId": TEST_TEXT_MODEL, "messages": messages or [user("hi")]}
    if config is not None:
        kwargs["toolConfig"] = config
    code, status, message = error_of(runtime.converse, **kwargs)
    assert (code, status) == ("ValidationException", 400)
    assert expected in message


def test_models_without_tool_use_or_this_tool_choice_refuse_it(runtime):
    config = {"tools": TOOLS}
    for model_id in (TITAN_ON_STUB, "amazon.titan-text-express-v1"):  # AWS's Titan Text, from the catalog
        assert error_of(runtime.converse, modelId=model_id, messages=[user("hi")], toolConfig=config) == (
            "ValidationException", 400, "This model doesn't support tool use.")
    code, status, message = error_of(runtime.converse_stream, modelId=AUTO_ONLY, messages=[user("hi")],
                                     toolConfig={**config, "toolChoice": {"any": {}}})
    assert (code, status, message) == (
        "ValidationException", 400,
        "This model doesn't support the toolConfig.toolChoice.any field. Remove toolConfig.toolChoice.any and try again.")
    auto = runtime.converse(modelId=AUTO_ONLY, messages=[user("hi there")], toolConfig=config)
    assert auto["stopReason"] == "tool_use"


# ------------------------------------------------------------------------------------------
# the real SmolLM2-135M: calls under constrained decoding


@pytest.mark.real_weights
def test_smollm2_tool_loop_under_constrained_decoding(runtime):
    messages = [user("What is the weather in Paris for the next 3 days, in celsius?")]
    first = checked(runtime, "Converse", runtime.converse(
        modelId=SMOLLM2, messages=messages, toolConfig={"tools": TOOLS, "toolChoice": {"any": {}}},
        inferenceConfig={"maxTokens": 60, "temperature": 0}))
    assert first["stopReason"] == "tool_use"
    (call,) = tool_uses(first)
    jsonschema.validate(call["input"], WEATHER if call["name"] == "get_weather" else SONG)
    assert first["usage"]["inputTokens"] > 100  # the tools are in the prompt

    messages += [first["output"]["message"],
                 {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"],
                                                               "content": [{"json": {"forecast": "sunny, 24C"}}]}}]}]
    final = checked(runtime, "Converse", runtime.converse(
        modelId=SMOLLM2, messages=messages, toolConfig={"tools": TOOLS},
        inferenceConfig={"maxTokens": 60, "temperature": 0}))
    if final["stopReason"] == "tool_use":  # auto: another call, which validates, or text
        (call,) = tool_uses(final)
        jsonschema.validate(call["input"], WEATHER if call["name"] == "get_weather" else SONG)
    else:
        assert not tool_uses(final) and final["output"]["message"]["content"][0]["text"].strip()

    response = runtime.converse_stream(modelId=SMOLLM2, messages=messages[:1],
                                       toolConfig={"tools": TOOLS, "toolChoice": {"tool": {"name": "top_song"}}},
                                       inferenceConfig={"maxTokens": 60, "temperature": 0})
    events = stream_events(runtime, response)
    pieces = [p["delta"]["toolUse"]["input"] for name, p in events if name == "contentBlockDelta"]
    jsonschema.validate(json.loads("".join(pieces)), SONG)
    assert dict(events)["messageStop"]["stopReason"] == "tool_use"
