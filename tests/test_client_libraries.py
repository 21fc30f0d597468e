"""The client libraries Bedrock code is written with, run unchanged against a real server, pointed at
it by endpoint only: LangChain's ChatBedrockConverse (invoke, stream, bind_tools), ChatBedrock and
BedrockEmbeddings, a Strands agent whose tool gets called, and Anthropic's AnthropicBedrock SDK (which
sends its own dated anthropic_version). The AWS model ids they name run on the deterministic stub
models (an alias file), since these tests are about the wire, not the weights; each test reads back
from the server's test endpoint (/_bedrock-local/calls) what the library really sent."""

import json

import boto3
import pytest

from bedrock_local.engine.stub_models import TEST_EMBEDDING_MODEL, TEST_TEXT_MODEL
from bedrock_local.testing.calls import Calls
from bedrock_local.testing.clients import ACCESS_KEY, REGION, SECRET_KEY
from conftest import Server

SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
SONNET_PROFILE = "us." + SONNET  # a system inference profile, as today's code names the model
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN_EMBED = "amazon.titan-embed-text-v2:0"
WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "description": "The city", "maxLength": 20}},
           "required": ["city"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-libraries")
    aliases = folder / "aliases.json"
    aliases.write_text(json.dumps({"aliases": [
        {"modelId": SONNET, "runsOn": TEST_TEXT_MODEL, "bodyFormat": "anthropic-messages"},
        {"modelId": HAIKU, "runsOn": TEST_TEXT_MODEL, "bodyFormat": "anthropic-messages"},
        {"modelId": TITAN_EMBED, "runsOn": TEST_EMBEDDING_MODEL, "bodyFormat": "titan-embed-v2"},
    ]}))
    server = Server(folder / "data", workers=0, serving_workers=1, extra_args=("--model-aliases", str(aliases))).start()
    yield server
    server.stop()


@pytest.fixture
def calls(server):
    calls = Calls(server.url)
    calls.clear()
    return calls


def langchain_options(server) -> dict:
    return {"region_name": REGION, "endpoint_url": server.url,
            "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}


def test_langchain_chat_bedrock_converse_invokes_streams_and_calls_a_tool(server, calls):
    from langchain_aws import ChatBedrockConverse
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool

    chat = ChatBedrockConverse(model=SONNET_PROFILE, max_tokens=24, temperature=0, **langchain_options(server))
    answer = chat.invoke("Name a colour.")
    assert isinstance(answer, AIMessage) and isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata["input_tokens"] > 0 and answer.usage_metadata["output_tokens"] > 0
    assert answer.response_metadata["stopReason"] in ("end_turn", "max_tokens")

    chunks = list(chat.stream("Name a colour."))
    streamed = "".join(chunk.content if isinstance(chunk.content, str)
                       else "".join(part.get("text", "") for part in chunk.content) for chunk in chunks)
    assert len(chunks) > 1 and streamed == answer.content  # the stub model answers a function of the input

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    with_tools = chat.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage("What is the weather in Paris?")
    first = with_tools.invoke([question])
    assert [call["name"] for call in first.tool_calls] == ["get_weather"]
    call = first.tool_calls[0]
    assert isinstance(call["args"]["city"], str) and call["id"].startswith("tooluse_")
    final = chat.bind_tools([get_weather]).invoke(
        [question, first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])])
    assert final.text and not final.tool_calls

    sent = calls.list(model_id=SONNET_PROFILE)
    assert [c["operation"] for c in sent] == ["Converse", "ConverseStream", "Converse", "Converse"]
    assert sent[2]["request"]["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert sent[2]["request"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    returned = sent[3]["request"]["messages"][-1]["content"][0]["toolResult"]
    assert returned["toolUseId"] == call["id"] and returned["content"][0]["text"] == f"Sunny in {call['args']['city']}"


def test_langchain_chat_bedrock_and_embeddings(server, calls):
    from langchain_aws import BedrockEmbeddings, ChatBedrock

    chat = ChatBedrock(model_id=HAIKU, model_kwargs={"max_tokens": 16, "temperature": 0}, **langchain_options(server))
    answer = chat.invoke("Name a colour.")
    assert isinstance(answer.content, str) and answer.content
    streamed = "".join(chunk.content for chunk in chat.stream("Name a colour."))
    assert streamed == answer.content

    embeddings = BedrockEmbeddings(model_id=TITAN_EMBED, **langchain_options(server))
    vectors = embeddings.embed_documents(["a red apple", "a green pear"])
    query = embeddings.embed_query("a red apple")
    assert len(vectors) == 2 and len(vectors[0]) == 1024 and all(isinstance(x, float) for x in vectors[0])
    assert vectors[0] != vectors[1] and query == pytest.approx(vectors[0])

    sent = [(c["operation"], c["modelId"]) for c in calls.list()]
    assert sent == [("InvokeModel", HAIKU), ("InvokeModelWithResponseStream", HAIKU)] + [("InvokeModel", TITAN_EMBED)] * 3
    body = calls.list(model_id=HAIKU)[0]["request"]
    assert body["anthropic_version"] == "bedrock-2023-05-31" and body["max_tokens"] == 16
    assert calls.list(model_id=TITAN_EMBED)[0]["request"]["inputText"] == "a red apple"


def test_a_strands_agent_calls_its_tool_and_answers(server, calls):
    from strands import Agent, tool
    from strands.models import BedrockModel

    asked = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: The city
        """
        asked.append(city)
        return f"Sunny in {city}"

    session = boto3.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION)
    model = BedrockModel(model_id=SONNET_PROFILE, boto_session=session, endpoint_url=server.url, max_tokens=64)
    agent = Agent(model=model, tools=[get_weather], callback_handler=None)
    result = agent("What is the weather in Paris?")

    assert len(asked) == 1 and isinstance(asked[0], str)
    assert result.stop_reason == "end_turn"
    sent = calls.list(model_id=SONNET_PROFILE)
    assert [c["operation"] for c in sent] == ["ConverseStream", "ConverseStream"]
    assert sent[0]["request"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"
    result_turn = sent[1]["request"]["messages"][-1]["content"][0]["toolResult"]
    assert result_turn["content"][0]["text"] == f"Sunny in {asked[0]}"


def test_anthropic_bedrock_sdk_with_its_own_anthropic_version(server, calls):
    from anthropic import AnthropicBedrock

    client = AnthropicBedrock(aws_access_key=ACCESS_KEY, aws_secret_key=SECRET_KEY, aws_region=REGION,
                              base_url=server.url, max_retries=0)
    message = client.messages.create(model=SONNET_PROFILE, max_tokens=24,
                                     messages=[{"role": "user", "content": "Name a colour."}])
    assert message.role == "assistant" and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens > 0

    with client.messages.stream(model=SONNET_PROFILE, max_tokens=24,
                                messages=[{"role": "user", "content": "Name a colour."}]) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed == message.content[0].text

    tools = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER}]
    called = client.messages.create(model=SONNET_PROFILE, max_tokens=64, tools=tools,
                                    tool_choice={"type": "tool", "name": "get_weather"},
                                    messages=[{"role": "user", "content": "Weather in Paris?"}])
    use = next(block for block in called.content if block.type == "tool_use")
    assert called.stop_reason == "tool_use" and use.name == "get_weather" and isinstance(use.input["city"], str)

    sent = calls.list(model_id=SONNET_PROFILE)
    assert [c["operation"] for c in sent] == ["InvokeModel", "InvokeModelWithResponseStream", "InvokeModel"]
    version = sent[0]["request"]["anthropic_version"]
    assert version != "bedrock-2023-05-31" and version.startswith("20")  # the SDK's own dated version
