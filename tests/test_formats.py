"""InvokeModel body formats per provider (engine/formats/): pure functions, no server, no model.

For every format: a documented example body parses to the expected request (defaults applied), a
rendered response has exactly the documented keys and types, every field's type and bounds are
checked with a message naming the field, a body of another provider names the format this model
takes, streamed chunks add up to the text and close as AWS closes them; and fit_dimensions keeps
sizes and the order of similarities."""

import itertools
import json
import math
import random
import re

import pytest

from bedrock_local.engine.formats import (
    EMBEDDING_FORMATS,
    END_TURN,
    FORMATS,
    MAX_TOKENS,
    STOP_SEQUENCE,
    TEXT_FORMATS,
    Converse,
    EmbeddingRequest,
    EmbeddingResult,
    FormatError,
    StreamRenderer,
    TextRequest,
    TextResult,
    fit_dimensions,
    invocation_metrics,
    parse_invoke,
    render_invoke,
)

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
JSON = "application/json"


def error(body_format, body, where="modelInput") -> str:
    with pytest.raises(FormatError) as info:
        parse_invoke(body_format, body, where)
    return str(info.value)


def result(text="Hello there", input_tokens=7, output_tokens=3, stop_reason=END_TURN, stop_sequence=None):
    return TextResult(text=text, input_tokens=input_tokens, output_tokens=output_tokens,
                      stop_reason=stop_reason, latency_ms=12, stop_sequence=stop_sequence)


def types_of(body: dict) -> dict:
    return {key: type(value) for key, value in body.items()}


# Minimal valid bodies, one per format.
MINIMAL = {
    "meta-llama": {"prompt": "Hi"},
    "anthropic-messages": {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                           "messages": [{"role": "user", "content": "Hi"}]},
    "titan-text": {"inputText": "Hi"},
    "mistral": {"prompt": "<s>[INST] Hi [/INST]"},
    "titan-embed": {"inputText": "Hi"},
    "titan-embed-v1": {"inputText": "Hi"},
    "titan-embed-v2": {"inputText": "Hi"},
    "cohere-embed": {"texts": ["Hi"], "input_type": "search_query"},
    # the catalog's other families (tests/test_nova_format.py and tests/test_catalog.py test them)
    "amazon-nova": {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]},
    "openai-chat": {"messages": [{"role": "user", "content": "Hi"}]},
    "deepseek": {"prompt": "Hi"},
    "cohere-command-r": {"message": "Hi"},
    "nova-embed": {"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {
        "embeddingPurpose": "GENERIC_INDEX", "text": {"truncationMode": "END", "value": "Hi"}}},
}


def test_every_format_has_a_spec_and_a_minimal_body():
    assert set(TEXT_FORMATS) | set(EMBEDDING_FORMATS) == set(FORMATS) == set(MINIMAL)
    for name, body in MINIMAL.items():
        request = parse_invoke(name, body)
        assert request.format == name
        assert (request.text is not None) == (name in TEXT_FORMATS)
        assert (request.embeddings is not None) == (name in EMBEDDING_FORMATS)


def test_unknown_format_and_non_object_body():
    with pytest.raises(ValueError):
        parse_invoke("cohere-command", {"prompt": "x"})
    for name in MINIMAL:
        assert error(name, ["x"]) == "modelInput must be a JSON object, got a list"
        assert error(name, "x", where="body") == "body must be a JSON object, got a string"


# --------------------------------------------------------------------------------------------
# Meta Llama


def test_llama_documented_example_and_defaults():
    request = parse_invoke("meta-llama", {"prompt": "What is the average lifespan of a Llama?", "max_gen_len": 128,
                                          "temperature": 0.1, "top_p": 0.9})
    assert request.text == TextRequest(messages=None, prompt="What is the average lifespan of a Llama?", system=None,
                                       max_tokens=128, temperature=0.1, top_p=0.9, stop_sequences=[])
    assert request.options == {}
    defaults = parse_invoke("meta-llama", {"prompt": "Hi"}).text
    assert (defaults.max_tokens, defaults.temperature, defaults.top_p) == (512, 0.5, 0.9)


def test_llama_response_keys_and_types():
    request = parse_invoke("meta-llama", {"prompt": "Hi"})
    body = render_invoke(request, result())
    assert body == {"generation": "Hello there", "prompt_token_count": 7, "generation_token_count": 3,
                    "stop_reason": "stop"}
    assert render_invoke(request, result(stop_reason=MAX_TOKENS))["stop_reason"] == "length"
    json.dumps(body)


@pytest.mark.parametrize("body,expected", [
    ({}, "modelInput.prompt is required"),
    ({"prompt": 5}, "modelInput.prompt must be a string, got a number"),
    ({"prompt": ""}, "modelInput.prompt must not be empty"),
    ({"prompt": "x", "max_gen_len": 0}, "modelInput.max_gen_len must be an integer between 1 and 2048, got 0"),
    ({"prompt": "x", "max_gen_len": 2049}, "modelInput.max_gen_len must be an integer between 1 and 2048, got 2049"),
    ({"prompt": "x", "temperature": 1.1}, "modelInput.temperature must be a number between 0 and 1, got 1.1"),
    ({"prompt": "x", "top_p": "high"}, "modelInput.top_p must be a number between 0 and 1, got 'high'"),
])
def test_llama_fields_checked(body, expected):
    assert error("meta-llama", body) == expected


# --------------------------------------------------------------------------------------------
# Anthropic Claude Messages


def test_anthropic_documented_example_and_defaults():
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 512,
        "temperature": 0.5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe 'hello world' in one line."}]}],
    }
    request = parse_invoke("anthropic-messages", body)
    assert request.text == TextRequest(
        messages=[{"role": "user", "content": "Describe 'hello world' in one line."}], prompt=None, system=None,
        max_tokens=512, temperature=0.5, top_p=0.999, stop_sequences=[])
    assert request.options == {}
    defaults = parse_invoke("anthropic-messages", MINIMAL["anthropic-messages"]).text
    assert (defaults.temperature, defaults.top_p, defaults.stop_sequences) == (1.0, 0.999, [])


def test_anthropic_conversation_system_and_stops():
    request = parse_invoke("anthropic-messages", {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {}}],
        "messages": [
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi, I'm Claude."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": ""},  # an empty prefill
        ],
        "temperature": 0, "top_p": 1, "top_k": 250, "stop_sequences": ["\n\nHuman:", "END"],
    })
    text = request.text
    assert text.system == "Be brief.\nBe kind."
    assert text.messages == [{"role": "user", "content": "Hello there."},
                             {"role": "assistant", "content": "Hi, I'm Claude."},
                             {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": ""}]
    assert (text.temperature, text.top_p, text.stop_sequences) == (0.0, 1.0, ["\n\nHuman:", "END"])
    assert request.options == {"top_k": 250}  # greedy: top_k changes nothing, so it is accepted
    assert parse_invoke("anthropic-messages", {**MINIMAL["anthropic-messages"], "system": "S"}).text.system == "S"


def test_anthropic_response_keys_and_types():
    request = parse_invoke("anthropic-messages", {**MINIMAL["anthropic-messages"], "stop_sequences": ["END"]})
    body = render_invoke(request, result(), model_id=CLAUDE)
    assert list(body) == ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"]
    assert re.fullmatch(r"msg_bdrk_[0-9a-f]{24}", body["id"])
    assert body["id"] != render_invoke(request, result(), model_id=CLAUDE)["id"]
    assert {k: v for k, v in body.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": CLAUDE,
        "content": [{"type": "text", "text": "Hello there"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3}}
    assert render_invoke(request, result(stop_reason=MAX_TOKENS))["stop_reason"] == "max_tokens"
    stopped = render_invoke(request, result(stop_reason=STOP_SEQUENCE))
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "END")
    json.dumps(body)


def test_anthropic_stop_sequence_hit():
    two = parse_invoke("anthropic-messages", {**MINIMAL["anthropic-messages"], "stop_sequences": ["A", "B"]})
    # the generator says which one; else with several it cannot be known
    assert render_invoke(two, result(stop_reason=STOP_SEQUENCE, stop_sequence="B"))["stop_sequence"] == "B"
    assert render_invoke(two, result(stop_reason=STOP_SEQUENCE))["stop_sequence"] is None
    assert render_invoke(two, result(stop_sequence="B"))["stop_sequence"] is None  # not stopped by it


ALTERNATE = "messages must start with 'user' and alternate between 'user' and 'assistant'"


@pytest.mark.parametrize("change,expected", [
    ({"anthropic_version": "2023-13-01"},
     "modelInput.anthropic_version must be 'bedrock-2023-05-31' (or the dated API version Anthropic's SDK sends, "
     "such as '2023-06-01'), got '2023-13-01'"),
    ({"max_tokens": 0}, "modelInput.max_tokens must be an integer at least 1, got 0"),
    ({"max_tokens": "10"}, "modelInput.max_tokens must be an integer at least 1, got '10'"),
    ({"messages": []}, "modelInput.messages must hold at least one message"),
    ({"messages": {"role": "user"}}, "modelInput.messages must be a list, got an object"),
    ({"messages": [{"role": "assistant", "content": "x"}]},
     "modelInput.messages[0].role must be 'user', got 'assistant': " + ALTERNATE),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "modelInput.messages[1].role must be 'assistant', got 'user': " + ALTERNATE),
    ({"messages": [{"role": "system", "content": "x"}]},
     "modelInput.messages[0].role must be 'user' or 'assistant', got 'system'"),
    ({"messages": [{"content": "x"}]}, "modelInput.messages[0].role is required"),
    ({"messages": [{"role": "user"}]}, "modelInput.messages[0].content is required"),
    ({"messages": [{"role": "user", "content": ""}]}, "modelInput.messages[0].content must not be empty"),
    ({"messages": [{"role": "user", "content": []}]},
     "modelInput.messages[0].content must hold at least one content block"),
    ({"messages": [{"role": "user", "content": 3}]},
     "modelInput.messages[0].content must be a string or a list of content blocks, got a number"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
     "modelInput.messages[0].content[0].text must not be empty"),
    ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "modelInput.messages[0].content[0].type is required"),
    ({"system": 5}, "modelInput.system must be a string or a list of content blocks, got a number"),
    ({"temperature": 2}, "modelInput.temperature must be a number between 0 and 1, got 2"),
    ({"top_p": -1}, "modelInput.top_p must be a number between 0 and 1, got -1"),
    ({"top_k": 501, "temperature": 0}, "modelInput.top_k must be an integer between 0 and 500, got 501"),
    ({"stop_sequences": "END"}, "modelInput.stop_sequences must be a list of strings, got a string"),
    ({"stop_sequences": ["ok", ""]}, "modelInput.stop_sequences[1] must not be empty"),
    ({"stop_sequences": [3]}, "modelInput.stop_sequences[0] must be a string, got a number"),
])
def test_anthropic_fields_checked(change, expected):
    assert error("anthropic-messages", {**MINIMAL["anthropic-messages"], **change}) == expected


@pytest.mark.parametrize("missing", ["anthropic_version", "max_tokens", "messages"])
def test_anthropic_required_fields(missing):
    body = {k: v for k, v in MINIMAL["anthropic-messages"].items() if k != missing}
    assert error("anthropic-messages", body) == f"modelInput.{missing} is required"


@pytest.mark.parametrize("block_type", ["image", "document", "tool_use", "thinking"])
def test_anthropic_other_block_types_named(block_type):
    body = {**MINIMAL["anthropic-messages"],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": block_type}]}]}
    here = " here" if block_type == "tool_use" else ""  # a user turn takes tool_result blocks, not tool_use
    assert error("anthropic-messages", body) == (
        f"modelInput.messages[0].content[1].type '{block_type}': this server's models take only 'text' content "
        f"blocks{here}")


def test_anthropic_unsupported_documented_fields_named():
    base = MINIMAL["anthropic-messages"]
    assert error("anthropic-messages", {**base, "tools": [{"name": "x"}]}) == (
        "modelInput.tools[0].input_schema is required")
    assert "extended thinking" in error("anthropic-messages", {**base, "thinking": {"type": "enabled"}})
    assert parse_invoke("anthropic-messages", {**base, "tools": []}).text is not None  # no tools at all
    message = error("anthropic-messages", {**base, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a", "citations": []}]}]})
    assert message.startswith("modelInput.messages[0].content[0] has unknown field(s) 'citations'")


def test_anthropic_top_k_with_sampling_is_refused_not_ignored():
    message = error("anthropic-messages", {**MINIMAL["anthropic-messages"], "top_k": 250})
    assert message.startswith("modelInput.top_k: this server's models sample with temperature and top_p only")
    assert "set temperature to 0" in message
    assert parse_invoke("anthropic-messages", {**MINIMAL["anthropic-messages"], "top_k": 5,
                                               "temperature": 0}).options == {"top_k": 5}


# --------------------------------------------------------------------------------------------
# Amazon Titan Text


def test_titan_text_documented_example_and_defaults():
    request = parse_invoke("titan-text", {
        "inputText": "User: Tell me a joke\nBot:",
        "textGenerationConfig": {"maxTokenCount": 4096, "stopSequences": ["User:"], "temperature": 0, "topP": 1},
    })
    assert request.text == TextRequest(messages=[{"role": "user", "content": "Tell me a joke"}], prompt=None, system=None,
                                       max_tokens=4096, temperature=0.0, top_p=1.0, stop_sequences=["User:"])
    defaults = parse_invoke("titan-text", {"inputText": "Hi"}).text
    assert (defaults.max_tokens, defaults.temperature, defaults.top_p, defaults.stop_sequences) == (512, 0.7, 0.9, [])
    assert parse_invoke("titan-text", {"inputText": "Hi", "textGenerationConfig": {}}).text == defaults


def test_titan_text_response_keys_and_types():
    request = parse_invoke("titan-text", {"inputText": "Hi"})
    body = render_invoke(request, result())
    assert body == {"inputTextTokenCount": 7,
                    "results": [{"tokenCount": 3, "outputText": "Hello there", "completionReason": "FINISH"}]}
    reasons = {reason: render_invoke(request, result(stop_reason=reason))["results"][0]["completionReason"]
               for reason in (END_TURN, MAX_TOKENS, STOP_SEQUENCE)}
    assert reasons == {END_TURN: "FINISH", MAX_TOKENS: "LENGTH", STOP_SEQUENCE: "STOP_CRITERIA_MET"}


@pytest.mark.parametrize("body,expected", [
    ({}, "modelInput.inputText is required"),
    ({"inputText": ""}, "modelInput.inputText must not be empty"),
    ({"inputText": ["x"]}, "modelInput.inputText must be a string, got a list"),
    ({"inputText": "x", "textGenerationConfig": []}, "modelInput.textGenerationConfig must be a JSON object, got a list"),
    ({"inputText": "x", "textGenerationConfig": {"maxTokenCount": 0}},
     "modelInput.textGenerationConfig.maxTokenCount must be an integer between 1 and 8192, got 0"),
    ({"inputText": "x", "textGenerationConfig": {"maxTokenCount": 8193}},
     "modelInput.textGenerationConfig.maxTokenCount must be an integer between 1 and 8192, got 8193"),
    ({"inputText": "x", "textGenerationConfig": {"temperature": 1.5}},
     "modelInput.textGenerationConfig.temperature must be a number between 0 and 1, got 1.5"),
    ({"inputText": "x", "textGenerationConfig": {"topP": True}},
     "modelInput.textGenerationConfig.topP must be a number between 0 and 1, got True"),
    ({"inputText": "x", "textGenerationConfig": {"stopSequences": "|"}},
     "modelInput.textGenerationConfig.stopSequences must be a list of strings, got a string"),
])
def test_titan_text_fields_checked(body, expected):
    assert error("titan-text", body) == expected


def test_titan_text_config_unknown_keys_named():
    message = error("titan-text", {"inputText": "x", "textGenerationConfig": {"max_tokens": 5}})
    assert message.startswith("modelInput.textGenerationConfig has unknown or unsupported field(s) 'max_tokens'")
    assert "allowed: temperature, topP, maxTokenCount, stopSequences" in message


# --------------------------------------------------------------------------------------------
# Mistral AI


def test_mistral_documented_example_and_defaults():
    prompt = "<s>[INST] What is your favourite condiment? [/INST]"
    request = parse_invoke("mistral", {"prompt": prompt, "max_tokens": 400, "stop": ["</s>"], "temperature": 0.7,
                                       "top_p": 0.7, "top_k": 50})
    assert request.text == TextRequest(messages=[{"role": "user", "content": "What is your favourite condiment?"}],
                                       prompt=None, system=None, max_tokens=400, temperature=0.7,
                                       top_p=0.7, stop_sequences=["</s>"])
    assert request.options == {"top_k": 50}  # the default: the same as leaving it out
    defaults = parse_invoke("mistral", {"prompt": prompt})
    assert (defaults.text.max_tokens, defaults.text.temperature, defaults.text.top_p) == (512, 0.5, 0.9)
    assert defaults.options == {}


def test_mistral_response_keys_and_types():
    request = parse_invoke("mistral", MINIMAL["mistral"])
    assert render_invoke(request, result()) == {"outputs": [{"text": "Hello there", "stop_reason": "stop"}]}
    assert render_invoke(request, result(stop_reason=MAX_TOKENS))["outputs"][0]["stop_reason"] == "length"
    assert render_invoke(request, result(stop_reason=STOP_SEQUENCE))["outputs"][0]["stop_reason"] == "stop"


@pytest.mark.parametrize("change,expected", [
    ({"prompt": None}, "modelInput.prompt must be a string, got null"),
    ({"max_tokens": 8193}, "modelInput.max_tokens must be an integer between 1 and 8192, got 8193"),
    ({"max_tokens": 2.5}, "modelInput.max_tokens must be an integer between 1 and 8192, got 2.5"),
    ({"temperature": -0.5}, "modelInput.temperature must be a number between 0 and 1, got -0.5"),
    ({"top_p": 1.01}, "modelInput.top_p must be a number between 0 and 1, got 1.01"),
    ({"top_k": 0}, "modelInput.top_k must be an integer between 1 and 200, got 0"),
    ({"top_k": 201}, "modelInput.top_k must be an integer between 1 and 200, got 201"),
    ({"stop": ["a"] * 11}, "modelInput.stop may hold at most 10 strings, got 11"),
    ({"stop": [None]}, "modelInput.stop[0] must be a string, got null"),
])
def test_mistral_fields_checked(change, expected):
    assert error("mistral", {**MINIMAL["mistral"], **change}) == expected


def test_mistral_top_k_other_than_default_refused_when_sampling():
    message = error("mistral", {**MINIMAL["mistral"], "top_k": 10})
    assert message.startswith("modelInput.top_k: this server's models sample with temperature and top_p only")
    assert "(or give the default, 50)" in message
    assert parse_invoke("mistral", {**MINIMAL["mistral"], "top_k": 10, "temperature": 0}).options == {"top_k": 10}


# --------------------------------------------------------------------------------------------
# Titan embeddings


def vector(size=384, seed=0):
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_titan_embed_v1_documented_example():
    request = parse_invoke("titan-embed-v1", {"inputText": "What are the different services that you offer?"})
    assert request.embeddings == [EmbeddingRequest(text="What are the different services that you offer?",
                                                    normalize=False, dimensions=1536)]
    body = render_invoke(request, [EmbeddingResult(vector=vector(), input_tokens=9)])
    assert types_of(body) == {"embedding": list, "inputTextTokenCount": int}
    assert len(body["embedding"]) == 1536 and all(type(x) is float for x in body["embedding"])
    assert body["inputTextTokenCount"] == 9
    assert "'normalize'" in error("titan-embed-v1", {"inputText": "x", "normalize": True})


def test_titan_embed_v2_documented_example_and_defaults():
    request = parse_invoke("titan-embed-v2", {"inputText": "Hello", "dimensions": 512, "normalize": True})
    assert request.embeddings == [EmbeddingRequest(text="Hello", normalize=True, dimensions=512)]
    assert request.options == {"dimensions": 512, "normalize": True, "embedding_types": ["float"]}
    defaults = parse_invoke("titan-embed-v2", {"inputText": "Hello"})
    assert defaults.embeddings == [EmbeddingRequest(text="Hello", normalize=True, dimensions=1024)]


@pytest.mark.parametrize("dimensions", [1024, 512, 256])
def test_titan_embed_v2_response_sizes_and_types(dimensions):
    request = parse_invoke("titan-embed-v2", {"inputText": "x", "dimensions": dimensions,
                                              "embeddingTypes": ["float", "binary"]})
    body = render_invoke(request, [EmbeddingResult(vector=vector(), input_tokens=3)])
    assert types_of(body) == {"embedding": list, "inputTextTokenCount": int, "embeddingsByType": dict}
    assert len(body["embedding"]) == dimensions
    assert math.isclose(math.sqrt(sum(x * x for x in body["embedding"])), 1.0, rel_tol=1e-9)
    assert set(body["embeddingsByType"]) == {"float", "binary"}
    assert body["embeddingsByType"]["float"] == body["embedding"]
    binary = body["embeddingsByType"]["binary"]
    assert binary == [1 if x > 0 else 0 for x in body["embedding"]]


def test_titan_embed_v2_by_type_always_there_and_float_stays_in_embedding():
    plain = parse_invoke("titan-embed-v2", {"inputText": "x"})
    body = render_invoke(plain, [EmbeddingResult(vector=vector(), input_tokens=3)])
    assert list(body["embeddingsByType"]) == ["float"]
    binary_only = parse_invoke("titan-embed-v2", {"inputText": "x", "embeddingTypes": ["binary"]})
    body = render_invoke(binary_only, [EmbeddingResult(vector=vector(), input_tokens=3)])
    assert list(body["embeddingsByType"]) == ["binary"] and all(type(x) is float for x in body["embedding"])


def test_titan_embed_v2_without_normalize_keeps_the_scale():
    request = parse_invoke("titan-embed-v2", {"inputText": "x", "normalize": False})
    raw = [3 * x for x in vector()]  # norm 3: growing is an isometry
    body = render_invoke(request, [EmbeddingResult(vector=raw, input_tokens=3)])
    assert math.isclose(math.sqrt(sum(x * x for x in body["embedding"])), 3.0, rel_tol=1e-9)


@pytest.mark.parametrize("change,expected", [
    ({"inputText": ""}, "modelInput.inputText must not be empty"),
    ({"dimensions": 300}, "modelInput.dimensions must be one of 1024, 512, 256, got 300"),
    ({"dimensions": "512"}, "modelInput.dimensions must be one of 1024, 512, 256, got '512'"),
    ({"dimensions": True}, "modelInput.dimensions must be one of 1024, 512, 256, got True"),
    ({"normalize": "yes"}, "modelInput.normalize must be true or false, got 'yes'"),
    ({"embeddingTypes": "float"}, "modelInput.embeddingTypes must be a list, got a string"),
    ({"embeddingTypes": []}, "modelInput.embeddingTypes must hold at least one of 'float', 'binary'"),
    ({"embeddingTypes": ["int8"]}, "modelInput.embeddingTypes[0] must be one of 'float', 'binary', got 'int8'"),
    ({"embeddingTypes": ["float", "float"]}, "modelInput.embeddingTypes names 'float' twice"),
])
def test_titan_embed_v2_fields_checked(change, expected):
    assert error("titan-embed-v2", {"inputText": "x", **change}) == expected


# --------------------------------------------------------------------------------------------
# Cohere Embed


def test_cohere_documented_example_and_options():
    texts = ["Can you please tell me how to use this?", "Tell me about bedrock."]
    request = parse_invoke("cohere-embed", {"texts": texts, "input_type": "search_document", "truncate": "END"})
    assert request.embeddings == [EmbeddingRequest(text=t, normalize=True, dimensions=1024) for t in texts]
    assert request.options == {"texts": texts, "input_type": "search_document", "truncate": "END",
                               "embedding_types": None, "dimensions": 1024}
    assert parse_invoke("cohere-embed", {"texts": texts, "input_type": "clustering"}).options["truncate"] == "NONE"


def test_cohere_floats_response():
    texts = ["a", "b", "c"]
    request = parse_invoke("cohere-embed", {"texts": texts, "input_type": "classification"})
    body = render_invoke(request, [EmbeddingResult(vector=vector(seed=i), input_tokens=3) for i in range(3)])
    assert list(body) == ["id", "response_type", "embeddings", "texts"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", body["id"])
    assert body["response_type"] == "embeddings_floats" and body["texts"] == texts
    assert len(body["embeddings"]) == 3 and all(len(v) == 1024 for v in body["embeddings"])
    assert all(type(x) is float for v in body["embeddings"] for x in v)


def test_cohere_by_type_response():
    request = parse_invoke("cohere-embed", {"texts": ["a", "b"], "input_type": "search_query",
                                            "embedding_types": ["float", "int8", "uint8", "binary", "ubinary"]})
    body = render_invoke(request, [EmbeddingResult(vector=vector(seed=i), input_tokens=3) for i in range(2)])
    assert body["response_type"] == "embeddings_by_type"
    embeddings = body["embeddings"]
    assert list(embeddings) == ["float", "int8", "uint8", "binary", "ubinary"]
    for kind, size, low, high in [("int8", 1024, -128, 127), ("uint8", 1024, 0, 255), ("binary", 128, -128, 127),
                                  ("ubinary", 128, 0, 255)]:
        assert len(embeddings[kind]) == 2
        for v in embeddings[kind]:
            assert len(v) == size and all(type(x) is int and low <= x <= high for x in v)
    floats = embeddings["float"][0]
    assert max(abs(x) for x in embeddings["int8"][0]) == 127
    assert embeddings["uint8"][0] == [x + 128 for x in embeddings["int8"][0]]
    assert embeddings["binary"][0] == [x - 128 for x in embeddings["ubinary"][0]]
    bits = "".join(format(byte, "08b") for byte in embeddings["ubinary"][0])
    assert bits == "".join("1" if x > 0 else "0" for x in floats)


def test_cohere_no_texts():
    request = parse_invoke("cohere-embed", {"texts": [], "input_type": "search_query"})
    assert request.embeddings == []
    assert render_invoke(request, [])["embeddings"] == []


@pytest.mark.parametrize("change,expected", [
    ({"texts": "a"}, "modelInput.texts must be a list of strings, got a string"),
    ({"texts": ["a"] * 97}, "modelInput.texts may hold at most 96 strings, got 97"),
    ({"texts": ["a", 1]}, "modelInput.texts[1] must be a string, got a number"),
    ({"texts": ["x" * 2049]}, "modelInput.texts[0] must be at most 2048 characters, got 2049"),
    ({"input_type": "query"}, "modelInput.input_type must be one of 'search_document', 'search_query', "
                              "'classification', 'clustering', got 'query'"),
    ({"input_type": "image"},
     "modelInput.input_type 'image': image embeddings are not supported by this server's models"),
    ({"truncate": "end"}, "modelInput.truncate must be one of 'NONE', 'START', 'END', got 'end'"),
    ({"truncate": "START"}, "modelInput.truncate 'START' is not supported: this server's embedding models cut long "
                            "texts at the end; use 'END' or 'NONE'"),
    ({"embedding_types": ["float", "int4"]}, "modelInput.embedding_types[1] must be one of 'float', 'int8', "
                                             "'uint8', 'binary', 'ubinary', got 'int4'"),
    ({"embedding_types": []}, "modelInput.embedding_types must hold at least one of 'float', 'int8', 'uint8', "
                              "'binary', 'ubinary'"),
    ({"images": ["data:image/png;base64,AAAA"]},
     "modelInput.images: this server's models do not support image embeddings"),
])
def test_cohere_fields_checked(change, expected):
    assert error("cohere-embed", {**MINIMAL["cohere-embed"], **change}) == expected


@pytest.mark.parametrize("missing", ["texts", "input_type"])
def test_cohere_required_fields(missing):
    body = {k: v for k, v in MINIMAL["cohere-embed"].items() if k != missing}
    assert error("cohere-embed", body) == f"modelInput.{missing} is required"


def test_text_characters_allowed_at_the_limit():
    assert parse_invoke("cohere-embed", {"texts": ["x" * 2048, ""], "input_type": "search_query"}).embeddings


# --------------------------------------------------------------------------------------------
# A body of another provider


@pytest.mark.parametrize("expected_format,body,title,main,looks_like", [
    ("anthropic-messages", {"prompt": "Hi", "max_gen_len": 20}, "Anthropic Claude Messages",
     "anthropic_version, max_tokens, messages", "Meta Llama"),
    ("meta-llama", {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "Hi"}]}, "Meta Llama", "prompt",
     "Anthropic Claude Messages"),
    ("meta-llama", {"prompt": "Hi", "max_tokens": 5}, "Meta Llama", "prompt",
     "Mistral AI text completion or DeepSeek text completion"),
    ("mistral", {"inputText": "Hi", "textGenerationConfig": {}}, "Mistral AI text completion", "prompt",
     "Amazon Titan Text"),
    ("titan-text", {"prompt": "Hi", "max_tokens": 5, "stop": []}, "Amazon Titan Text", "inputText",
     "Mistral AI text completion or DeepSeek text completion"),
    ("titan-embed-v2", {"texts": ["Hi"], "input_type": "search_query"}, "Amazon Titan Text Embeddings V2",
     "inputText", "Cohere Embed"),
    ("cohere-embed", {"inputText": "Hi", "dimensions": 256}, "Cohere Embed", "texts, input_type",
     "Amazon Titan Text Embeddings V2"),
    ("titan-embed-v1", {"inputText": "Hi", "dimensions": 256}, "Amazon Titan Embeddings G1 - Text", "inputText",
     "Amazon Titan Text Embeddings V2"),
])
def test_wrong_provider_body_names_the_expected_format(expected_format, body, title, main, looks_like):
    message = error(expected_format, body, where="body")
    assert message.startswith("body has unknown field(s) ")
    assert f"this model takes the {title} body ({main} required); allowed: " in message
    assert f"the body looks like the {looks_like} body" in message


def test_wrong_provider_message_in_full():
    assert error("anthropic-messages", {"prompt": "Hi"}) == (
        "modelInput has unknown field(s) 'prompt': this model takes the Anthropic Claude Messages body "
        "(anthropic_version, max_tokens, messages required); allowed: anthropic_version, max_tokens, messages, "
        "system, temperature, top_p, top_k, stop_sequences, tools, tool_choice; the body looks like the Meta Llama or "
        "Mistral AI text completion or DeepSeek text completion body, which this model does not take")
    assert error("titan-text", {"inputText": "x", "bogus": 1}) == (
        "modelInput has unknown field(s) 'bogus': this model takes the Amazon Titan Text body (inputText required); "
        "allowed: inputText, textGenerationConfig")


# --------------------------------------------------------------------------------------------
# Streaming


PIECES = ["Hel", "lo", " there", ""]
METRICS = invocation_metrics(7, 3, 120, 15)


def stream(body_format, body, final, **delta_counts):
    request = parse_invoke(body_format, body)
    renderer = StreamRenderer(request, model_id=CLAUDE)
    chunks = []
    for piece in PIECES:
        chunks += renderer.delta(piece, **delta_counts)
    closing = renderer.finish(final, METRICS)
    for chunk in chunks + closing:
        json.dumps(chunk)
    return chunks, closing


def test_invocation_metrics_shape():
    assert METRICS == {"inputTokenCount": 7, "outputTokenCount": 3, "invocationLatency": 120, "firstByteLatency": 15}


def test_stream_meta_llama():
    chunks, closing = stream("meta-llama", MINIMAL["meta-llama"], result(stop_reason=MAX_TOKENS))
    assert "".join(c["generation"] for c in chunks + closing) == "Hello there"
    assert all(list(c) == ["generation", "prompt_token_count", "generation_token_count", "stop_reason"]
               for c in chunks)
    assert all(c["stop_reason"] is None for c in chunks)
    assert closing == [{"generation": "", "prompt_token_count": 7, "generation_token_count": 3,
                        "stop_reason": "length", "amazon-bedrock-invocationMetrics": METRICS}]


def test_stream_meta_llama_counts_when_known():
    request = parse_invoke("meta-llama", MINIMAL["meta-llama"])
    renderer = StreamRenderer(request)
    first = renderer.delta("Hel", input_tokens=7, output_tokens=1)
    second = renderer.delta("lo", input_tokens=7, output_tokens=2)
    last = renderer.finish(result(text="Hello"), METRICS)
    assert (first[0]["prompt_token_count"], first[0]["generation_token_count"]) == (7, 1)
    assert (second[0]["prompt_token_count"], second[0]["generation_token_count"]) == (None, 2)
    assert last[0]["prompt_token_count"] is None  # sent once, in the first chunk


def test_stream_anthropic():
    body = {**MINIMAL["anthropic-messages"], "stop_sequences": ["END"]}
    chunks, closing = stream("anthropic-messages", body, result(stop_reason=STOP_SEQUENCE))
    events = chunks + closing
    assert [e["type"] for e in events] == ["message_start", "content_block_start"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop"]
    start = events[0]["message"]
    assert re.fullmatch(r"msg_bdrk_[0-9a-f]{24}", start["id"])
    assert {k: v for k, v in start.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": CLAUDE, "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "Hello there"
    assert all(e["delta"]["type"] == "text_delta" and e["index"] == 0 for e in events[2:5])
    assert closing == [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
         "usage": {"input_tokens": 7, "output_tokens": 3}},
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": METRICS},
    ]


def test_stream_anthropic_input_tokens_in_message_start_when_known():
    renderer = StreamRenderer(parse_invoke("anthropic-messages", MINIMAL["anthropic-messages"]), model_id=CLAUDE)
    events = renderer.delta("", input_tokens=7)
    assert [e["type"] for e in events] == ["message_start", "content_block_start"]
    assert events[0]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert renderer.delta("x", input_tokens=7)[0]["type"] == "content_block_delta"


def test_stream_anthropic_with_no_text_still_opens_and_closes():
    renderer = StreamRenderer(parse_invoke("anthropic-messages", MINIMAL["anthropic-messages"]))
    closing = renderer.finish(result(text="", output_tokens=0), METRICS)
    assert [e["type"] for e in closing] == ["message_start", "content_block_start", "content_block_stop",
                                            "message_delta", "message_stop"]
    assert closing[0]["message"]["usage"]["input_tokens"] == 7


def test_stream_titan_text():
    chunks, closing = stream("titan-text", {"inputText": "Hi"}, result())
    assert "".join(c["outputText"] for c in chunks + closing) == "Hello there"
    assert all(list(c) == ["outputText", "index", "totalOutputTextTokenCount", "completionReason",
                           "inputTextTokenCount"] for c in chunks)
    assert all(c["index"] == 0 and c["completionReason"] is None for c in chunks)
    assert closing == [{"outputText": "", "index": 0, "totalOutputTextTokenCount": 3, "completionReason": "FINISH",
                        "inputTextTokenCount": 7, "amazon-bedrock-invocationMetrics": METRICS}]


def test_stream_mistral():
    chunks, closing = stream("mistral", MINIMAL["mistral"], result(stop_reason=MAX_TOKENS))
    assert "".join(c["outputs"][0]["text"] for c in chunks + closing) == "Hello there"
    assert all(c == {"outputs": [{"text": c["outputs"][0]["text"], "stop_reason": None}]} for c in chunks)
    assert closing == [{"outputs": [{"text": "", "stop_reason": "length"}], "amazon-bedrock-invocationMetrics": METRICS}]


@pytest.mark.parametrize("body_format", EMBEDDING_FORMATS)
def test_embedding_formats_do_not_stream(body_format):
    with pytest.raises(FormatError, match="embedding models do not stream"):
        StreamRenderer(parse_invoke(body_format, MINIMAL[body_format]))


# --------------------------------------------------------------------------------------------
# fit_dimensions


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def related_vectors(count=8, size=384, seed=1):
    """A base vector and copies of it with more and more noise: similarity to the base falls."""
    rng = random.Random(seed)
    base = [rng.gauss(0, 1) for _ in range(size)]
    others = []
    for k in range(count):
        noise = 0.1 * 1.6 ** k
        others.append([b + noise * rng.gauss(0, 1) for b in base])
    return base, others


@pytest.mark.parametrize("size", [1536, 1024, 512, 256, 384])
def test_fit_dimensions_keeps_sizes_and_order_of_similarities(size):
    base, others = related_vectors()
    before = [cosine(base, v) for v in others]
    assert before == sorted(before, reverse=True)
    fitted_base = fit_dimensions(base, size)
    fitted = [fit_dimensions(v, size) for v in others]
    assert len(fitted_base) == size and all(len(v) == size for v in fitted)
    after = [cosine(fitted_base, v) for v in fitted]
    assert after == sorted(after, reverse=True)
    for b, a in zip(before, after):
        assert abs(a - b) < (1e-9 if size >= 384 else 0.1)  # growing is exact; shrinking close


def test_fit_dimensions_is_deterministic_and_keeps_norms_when_growing():
    base, _ = related_vectors()
    assert fit_dimensions(base, 1024) == fit_dimensions(list(base), 1024)
    assert fit_dimensions(base, 384) == base
    norm = math.sqrt(sum(x * x for x in base))
    assert math.isclose(math.sqrt(sum(x * x for x in fit_dimensions(base, 1536))), norm, rel_tol=1e-9)


def test_fit_dimensions_checks_its_arguments():
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            fit_dimensions([1.0, 2.0], size)
    with pytest.raises(ValueError):
        fit_dimensions([], 4)


def test_render_keeps_a_vector_that_already_has_the_size():
    request = parse_invoke("titan-embed-v2", {"inputText": "x", "dimensions": 256})
    own = vector(256)
    assert render_invoke(request, [EmbeddingResult(vector=own, input_tokens=1)])["embedding"] == own


def test_render_checks_the_result_kind():
    with pytest.raises(ValueError):
        render_invoke(parse_invoke("mistral", MINIMAL["mistral"]), [EmbeddingResult(vector=[1.0], input_tokens=1)])
    with pytest.raises(ValueError):
        render_invoke(parse_invoke("cohere-embed", {"texts": ["a", "b"], "input_type": "clustering"}),
                      [EmbeddingResult(vector=[1.0], input_tokens=1)])


def test_the_packaged_embedding_models_own_body_keeps_its_size():
    request = parse_invoke("titan-embed", {"inputText": "a lake", "normalize": False})
    assert request.embeddings[0].dimensions is None and request.embeddings[0].normalize is False
    body = render_invoke(request, [EmbeddingResult(vector=[0.5] * 384, input_tokens=4)])
    assert body == {"embedding": [0.5] * 384, "inputTextTokenCount": 4}
    message = error("titan-embed", {"inputText": "a lake", "dimensions": 256})
    assert "'dimensions'" in message and "allowed: inputText, normalize" in message


def test_provider_prompt_templates_become_chat_turns():
    """A provider's own prompt template is read as turns, so the local model answers through its own
    chat template; any other prompt stays raw text."""
    llama3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    text = parse_invoke("meta-llama", {"prompt": llama3}).text
    assert text.system == "Be brief." and text.prompt is None
    assert text.messages == [{"role": "user", "content": "What is the capital of France?"}]
    assert parse_invoke("meta-llama", {"prompt": "The capital of France is"}).text.prompt == "The capital of France is"
    assert parse_invoke("mistral", {"prompt": "Once upon a time"}).text.messages is None
    two_turns = "<s>[INST] Hi [/INST] Hello</s>[INST] And? [/INST]"
    assert parse_invoke("mistral", {"prompt": two_turns}).text.prompt == two_turns  # several turns: raw
    assert parse_invoke("titan-text", {"inputText": "Summarize this."}).text.messages == [
        {"role": "user", "content": "Summarize this."}]


# --------------------------------------------------------------------------------------------
# Converse: the runtime parses the request the api layer validated against the service model's shape,
# skipping what that shape checks; a batch record, unvalidated, is checked in full


def user(*texts):
    return {"role": "user", "content": [{"text": t} for t in texts]}


CONVERSE_MESSAGES = [
    None, [], "hi", [user("hi")], [user("a", "b"), {"role": "assistant", "content": [{"text": ""}]}, user("c")],
    [{"role": "assistant", "content": [{"text": "hi"}]}], [user("a"), user("b")], [{"role": "user", "content": []}],
    [{"role": "user", "content": [{}]}], [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "aGk="}}}]}],
    [{"role": "bot", "content": [{"text": "a"}]}], [{"role": "user", "content": [{"text": 5}]}], [{"role": "user"}],
]
CONVERSE_SYSTEMS = [None, [], [{"text": "Be brief."}, {"text": "Be kind."}], [{"cachePoint": {"type": "default"}}], "x"]
CONVERSE_CONFIGS = [
    None, {}, {"maxTokens": 5, "temperature": 0, "topP": 0.5, "stopSequences": ["a", "b", "c", "d"]},
    {"maxTokens": 0}, {"maxTokens": True}, {"temperature": 3.0}, {"temperature": float("nan")},
    {"topP": float("nan")}, {"stopSequences": ["a", "b", "c", "d", "e"]}, {"stopSequences": [""]},
    {"stopSequences": "a"}, {"temperature": 1},
]


def outcome(parse, *args, **kwargs):
    try:
        return parse(*args, **kwargs)
    except FormatError as error:
        return str(error)


def test_validated_converse_requests_parse_as_batch_records_do():
    import botocore.session

    from bedrock_local.api.codec import RestJsonCodec
    from bedrock_local.api.validation import validation_message

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    operation, codec = model.operation_model("Converse"), RestJsonCodec(model)
    seen = set()
    for messages, system, config in itertools.product(CONVERSE_MESSAGES, CONVERSE_SYSTEMS, CONVERSE_CONFIGS):
        body = {key: value for key, value in (("messages", messages), ("system", system),
                                              ("inferenceConfig", config)) if value is not None}
        wire = json.dumps({"modelId": "m", **body}).encode()
        params = codec.parse_request(operation, {"modelId": "m"}, "", {"content-type": JSON}, wire)
        if validation_message(params, operation.input_shape) is not None:
            continue
        validated = outcome(Converse.parse, params, "request", validated=True)
        assert validated == outcome(Converse.parse, body, "request"), body
        seen.add(validated if isinstance(validated, str) else "ok")
    assert "ok" in seen
    for problem in ("request.messages is required", "at least one message", "messages[1].role must be 'assistant'",
                    "content must hold at least one content block", "content block 'image' is not supported",
                    "system[0]: content block 'cachePoint'", "stopSequences may hold at most 4 strings",
                    "temperature must be a number between 0 and 1, got nan", "topP must be a number"):
        assert any(problem in message for message in seen if message != "ok"), problem


SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def test_anthropic_tools_and_tool_turns_parse_into_the_text_request():
    body = {**MINIMAL["anthropic-messages"], "tools": [{"name": "search", "input_schema": SCHEMA}],
            "tool_choice": {"type": "tool", "name": "search"},
            "messages": [{"role": "user", "content": "find cats"},
                         {"role": "assistant", "content": [{"type": "text", "text": "Looking."},
                                                           {"type": "tool_use", "id": "toolu_1", "name": "search",
                                                            "input": {"q": "cats"}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                                       "content": [{"type": "text", "text": "3 cats"}],
                                                       "is_error": True}]}]}
    text = parse_invoke("anthropic-messages", body).text
    assert (text.tools, text.tool_choice, text.tool_name) == (
        [{"name": "search", "description": "", "input_schema": SCHEMA}], "tool", "search")
    assert text.messages[1:] == [
        {"role": "assistant", "content": "Looking.",
         "tool_calls": [{"id": "toolu_1", "name": "search", "arguments": {"q": "cats"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "name": "search", "content": "3 cats", "status": "error"}]
    none = parse_invoke("anthropic-messages", {**body, "tool_choice": {"type": "none"}}).text
    assert none.tools is None and none.messages == text.messages  # tools offered, none to be called


@pytest.mark.parametrize("change,expected", [
    ({"tool_choice": {"type": "tool", "name": "other"}},
     "The tool 'other' named at modelInput.tool_choice.name is not one of the tools in the request."),
    ({"tool_choice": {"type": "sometimes"}},
     "modelInput.tool_choice.type must be one of 'auto', 'any', 'tool', 'none', got 'sometimes'"),
    ({"tools": [{"name": "a b", "input_schema": SCHEMA}]},
     "The value at modelInput.tools[0].name must match the pattern [a-zA-Z0-9_-]{1,64}."),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]},
     "modelInput.tools[0].type 'bash_20250124': this server's models take only custom tools (name, description, "
     "input_schema)"),
    ({"tools": [{"name": "s", "input_schema": {"type": "object", "properties": 3}}]},
     "The value at modelInput.tools[0].input_schema.properties is not a valid JSON schema: 3 is not of type "
     "'object'"),
])
def test_anthropic_bad_tools_named(change, expected):
    body = {**MINIMAL["anthropic-messages"], "tools": [{"name": "search", "input_schema": SCHEMA}], **change}
    assert error("anthropic-messages", body) == expected


def test_converse_renders_tool_calls_and_text():
    call = {"toolUseId": "tooluse_abc", "name": "search", "input": {"q": "x"}}
    only_call = Converse.render(TextResult(text="", input_tokens=3, output_tokens=4, stop_reason="tool_use",
                                           tool_calls=[call]))
    assert only_call["output"]["message"]["content"] == [{"toolUse": call}]
    assert only_call["stopReason"] == "tool_use"
    both = Converse.render(TextResult(text="Let me look.", input_tokens=3, output_tokens=4, stop_reason="tool_use",
                                      tool_calls=[call]))
    assert both["output"]["message"]["content"] == [{"text": "Let me look."}, {"toolUse": call}]
