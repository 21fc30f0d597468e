"""AWS's model catalog (engine/supported_models.json) as this server serves it: every entry loads as a
default alias and fits the service model's shapes; ListFoundationModels and GetFoundationModel through
boto3 answer inside their output shapes for every id, with AWS's metadata and filters; every default id
answers InvokeModel (and its stream) in its provider's body, or, where AWS serves it only through an
inference profile, AWS's on-demand refusal; the README's table is the data file's."""

import importlib.util
import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore.exceptions import ClientError

from bedrock_local.api.validation import validation_message
from bedrock_local.engine.aliases import DEFAULT_ALIASES, load_aliases, supported_models
from bedrock_local.engine.catalog import GEOGRAPHY_REGIONS, TOOL_CHOICES
from bedrock_local.engine.formats import FORMATS, KIND_EMBEDDING
from conftest import Server

ROOT = Path(__file__).resolve().parents[1]
BEDROCK = botocore.session.get_session().get_service_model("bedrock")
MODEL_ID = re.compile(BEDROCK.shape_for("BedrockModelId").metadata["pattern"])
NAME_MAX = BEDROCK.shape_for("BrandedName").metadata["max"]
MODELS = supported_models()["models"]
BY_ID = {m["modelId"]: m for m in MODELS}
# the ids the issue names, one or more per family
EXPECTED = {
    "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-sonnet-20240229-v1:0",
    "anthropic.claude-3-opus-20240229-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-7-sonnet-20250219-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0",
    "anthropic.claude-opus-4-20250514-v1:0", "anthropic.claude-opus-4-1-20250805-v1:0",
    "anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-haiku-4-5-20251001-v1:0",
    "anthropic.claude-opus-4-5-20251101-v1:0",
    "amazon.nova-micro-v1:0", "amazon.nova-lite-v1:0", "amazon.nova-pro-v1:0", "amazon.nova-premier-v1:0",
    "amazon.nova-2-multimodal-embeddings-v1:0", "amazon.titan-text-express-v1", "amazon.titan-text-lite-v1",
    "amazon.titan-text-premier-v1:0", "amazon.titan-embed-text-v1", "amazon.titan-embed-text-v2:0",
    "meta.llama3-8b-instruct-v1:0", "meta.llama3-70b-instruct-v1:0", "meta.llama3-1-8b-instruct-v1:0",
    "meta.llama3-1-70b-instruct-v1:0", "meta.llama3-1-405b-instruct-v1:0", "meta.llama3-2-1b-instruct-v1:0",
    "meta.llama3-2-3b-instruct-v1:0", "meta.llama3-2-11b-instruct-v1:0", "meta.llama3-2-90b-instruct-v1:0",
    "meta.llama3-3-70b-instruct-v1:0", "meta.llama4-scout-17b-instruct-v1:0", "meta.llama4-maverick-17b-instruct-v1:0",
    "mistral.mistral-7b-instruct-v0:2", "mistral.mixtral-8x7b-instruct-v0:1", "mistral.mistral-large-2402-v1:0",
    "mistral.mistral-small-2402-v1:0", "mistral.pixtral-large-2502-v1:0",
    "cohere.command-r-v1:0", "cohere.command-r-plus-v1:0", "cohere.embed-english-v3", "cohere.embed-multilingual-v3",
    "cohere.embed-v4:0", "deepseek.r1-v1:0", "deepseek.v3-v1:0", "qwen.qwen3-32b-v1:0",
    "openai.gpt-oss-20b-1:0", "openai.gpt-oss-120b-1:0",
}
PROFILE_ONLY = {"anthropic.claude-3-7-sonnet-20250219-v1:0", "anthropic.claude-sonnet-4-20250514-v1:0",
                "anthropic.claude-opus-4-1-20250805-v1:0", "amazon.nova-premier-v1:0",
                "meta.llama3-2-1b-instruct-v1:0", "meta.llama3-3-70b-instruct-v1:0",
                "meta.llama4-scout-17b-instruct-v1:0", "deepseek.r1-v1:0"}


# --- the data file, without a server ----------------------------------------------------------------


def test_the_data_file_says_when_and_where_from():
    document = supported_models()
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", document["asOf"]) and "Supported foundation models" in document["source"]
    assert all(m["source"] in ("user-guide", "knowledge") for m in MODELS)
    assert len(BY_ID) == len(MODELS), "an id is listed twice"
    assert EXPECTED <= set(BY_ID), sorted(EXPECTED - set(BY_ID))


def test_every_entry_loads_as_a_default_alias_within_the_shapes():
    loaded = {m.model_id: m for m in load_aliases(None)}
    assert set(loaded) == set(BY_ID)
    for model_id, model in loaded.items():
        entry = BY_ID[model_id]
        assert MODEL_ID.fullmatch(model_id), model_id
        assert 1 <= len(model.model_name) <= NAME_MAX and 1 <= len(model.provider_name) <= NAME_MAX, model_id
        assert model.display_name == entry["name"] and model.model_name == entry["shortName"]
        family = FORMATS[model.body_format]
        assert (family.kind == KIND_EMBEDDING) == ("EMBEDDING" in model.output_modalities), model_id
        assert (model.kind == KIND_EMBEDDING) == (family.kind == KIND_EMBEDDING)
        assert set(model.geographies) <= set(GEOGRAPHY_REGIONS) and set(model.tool_choices) <= set(TOOL_CHOICES)
        # AWS's INFERENCE_PROFILE is outside the enum: a profile-only model lists no on-demand inference
        assert ("ON_DEMAND" in model.inference_types_supported) != model.profile_only, model_id
        assert not model.profile_only or model.geographies, f"{model_id} is profile-only without a profile"
        assert not model.count_tokens or model_id.startswith("anthropic."), model_id  # Claude only, as on AWS
        assert model.lifecycle in BEDROCK.shape_for("FoundationModelLifecycleStatus").enum
    assert {m for m, model in loaded.items() if model.profile_only} >= PROFILE_ONLY
    assert loaded["amazon.titan-text-express-v1"].tool_choices == ()  # AWS: no tool use on Titan text
    assert loaded["mistral.mistral-large-2402-v1:0"].tool_choices == ("auto", "any")
    assert loaded["amazon.nova-pro-v1:0"].tool_choices == TOOL_CHOICES and loaded["amazon.nova-pro-v1:0"].body_format \
        == "amazon-nova"
    assert loaded["anthropic.claude-3-5-haiku-20241022-v1:0"].count_tokens
    assert not loaded["anthropic.claude-3-haiku-20240307-v1:0"].count_tokens


def test_the_readme_table_is_the_data_files():
    spec = importlib.util.spec_from_file_location("model_table", ROOT / "tools" / "model_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.table()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Model ids and what runs them" in readme
    assert table in readme, "README.md's model table is stale: paste the output of python tools/model_table.py"
    assert all(f"`{model_id}`" in table for model_id in BY_ID)


# --- the catalog through boto3 ------------------------------------------------------------------------


def checked(client, operation: str, response: dict) -> dict:
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    problem = validation_message(body, client.meta.service_model.operation_model(operation).output_shape)
    assert problem is None, f"{operation} answered outside its output shape: {problem}"
    return body


def test_list_and_get_answer_inside_their_output_shapes(bedrock):
    summaries = checked(bedrock, "ListFoundationModels", bedrock.list_foundation_models())["modelSummaries"]
    by_id = {s["modelId"]: s for s in summaries}
    assert set(BY_ID) <= set(by_id)
    for model_id, summary in by_id.items():
        details = checked(bedrock, "GetFoundationModel", bedrock.get_foundation_model(modelIdentifier=model_id))
        assert details["modelDetails"] == summary
    sonnet_4 = by_id["anthropic.claude-sonnet-4-20250514-v1:0"]
    assert sonnet_4["modelName"] == "Claude Sonnet 4" and sonnet_4["inferenceTypesSupported"] == []
    assert sonnet_4["inputModalities"] == ["TEXT", "IMAGE"] and sonnet_4["responseStreamingSupported"] is True
    assert by_id["amazon.titan-text-express-v1"]["modelName"] == "Titan Text Express"  # AWS's is 23 characters
    assert by_id["anthropic.claude-3-sonnet-20240229-v1:0"]["modelLifecycle"] == {"status": "LEGACY"}
    assert by_id["amazon.nova-micro-v1:0"]["customizationsSupported"] == ["FINE_TUNING", "DISTILLATION"]


@pytest.mark.parametrize("filters,wanted,unwanted", [
    ({"byInferenceType": "ON_DEMAND"}, {"amazon.nova-pro-v1:0", "openai.gpt-oss-20b-1:0"}, PROFILE_ONLY),
    ({"byProvider": "Mistral AI"}, {"mistral.pixtral-large-2502-v1:0"}, {"meta.llama3-8b-instruct-v1:0"}),
    ({"byProvider": "deepseek"}, {"deepseek.r1-v1:0", "deepseek.v3-v1:0"}, {"qwen.qwen3-32b-v1:0"}),
    ({"byOutputModality": "EMBEDDING"}, {"amazon.nova-2-multimodal-embeddings-v1:0", "cohere.embed-v4:0"},
     {"amazon.nova-micro-v1:0"}),
    ({"byCustomizationType": "FINE_TUNING", "byProvider": "Amazon"}, {"amazon.nova-lite-v1:0"},
     {"amazon.nova-premier-v1:0"}),
])
def test_filters_over_the_catalog(bedrock, filters, wanted, unwanted):
    found = {s["modelId"] for s in bedrock.list_foundation_models(**filters)["modelSummaries"]}
    assert wanted <= found and not (unwanted & found), (wanted - found, unwanted & found)


# --- every default id on the wire, on the stub models --------------------------------------------------

PROMPT = "say hello world"
ANSWER = "world hello say"  # the stub text model reverses the words
TEXT_BODIES = {
    "meta-llama": ({"prompt": PROMPT, "max_gen_len": 10}, lambda a: a["generation"]),
    "anthropic-messages": ({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                            "messages": [{"role": "user", "content": PROMPT}]}, lambda a: a["content"][0]["text"]),
    "titan-text": ({"inputText": PROMPT}, lambda a: a["results"][0]["outputText"]),
    "mistral": ({"prompt": f"<s>[INST] {PROMPT} [/INST]", "max_tokens": 10}, lambda a: a["outputs"][0]["text"]),
    "amazon-nova": ({"messages": [{"role": "user", "content": [{"text": PROMPT}]}]},
                    lambda a: a["output"]["message"]["content"][0]["text"]),
    "openai-chat": ({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
                     "max_completion_tokens": 10}, lambda a: a["choices"][0]["message"]["content"]),
    "deepseek": ({"prompt": f"<｜begin▁of▁sentence｜><｜User｜>{PROMPT}<｜Assistant｜><think>\n", "max_tokens": 10},
                 lambda a: a["choices"][0]["text"]),
    "cohere-command-r": ({"message": PROMPT, "chat_history": [{"role": "USER", "message": "hi"},
                                                              {"role": "CHATBOT", "message": "hello"}]},
                         lambda a: a["text"]),
}
EMBEDDING_BODIES = {
    "titan-embed-v1": ({"inputText": PROMPT}, lambda a: a["embedding"]),
    "titan-embed-v2": ({"inputText": PROMPT, "dimensions": 256}, lambda a: a["embedding"]),
    "cohere-embed": ({"texts": [PROMPT], "input_type": "search_document"}, lambda a: a["embeddings"][0]),
    "nova-embed": ({"taskType": "SINGLE_EMBEDDING", "singleEmbeddingParams": {
        "embeddingPurpose": "GENERIC_INDEX", "embeddingDimension": 384,
        "text": {"truncationMode": "END", "value": PROMPT}}}, lambda a: a["embeddings"][0]["embedding"]),
}


@pytest.fixture(scope="module")
def stubbed(tmp_path_factory):
    """A server whose default ids all run on the stub models (the same metadata, answered at once)."""
    folder = tmp_path_factory.mktemp("catalog-stub")
    entries = [{**entry, "customizationsSupported": [],
                "runsOn": "bedrock-local.test-embed-v1:0" if "EMBEDDING" in entry["outputModalities"]
                else "bedrock-local.test-text-v1:0"} for entry in DEFAULT_ALIASES]
    aliases = folder / "aliases.json"
    aliases.write_text(json.dumps({"replaceDefaults": True, "aliases": entries}))
    server = Server(folder / "data", extra_args=("--model-aliases", str(aliases))).start()
    yield server.client(service="bedrock-runtime")
    server.stop()


def test_every_text_and_embedding_format_has_a_sample():
    assert set(TEXT_BODIES) | set(EMBEDDING_BODIES) >= {m["bodyFormat"] for m in MODELS}


@pytest.mark.parametrize("model_id", sorted(BY_ID))
def test_every_default_id_answers_in_its_providers_body(stubbed, model_id):
    entry = BY_ID[model_id]
    body, read = {**TEXT_BODIES, **EMBEDDING_BODIES}[entry["bodyFormat"]]
    if entry["profileOnly"]:  # AWS refuses the bare id on demand
        with pytest.raises(ClientError) as caught:
            stubbed.invoke_model(modelId=model_id, body=json.dumps(body))
        error = caught.value.response["Error"]
        assert error["Code"] == "ValidationException" and "inference profile" in error["Message"], error
        return
    answer = json.loads(stubbed.invoke_model(modelId=model_id, body=json.dumps(body))["body"].read())
    if entry["bodyFormat"] in EMBEDDING_BODIES:
        assert len(read(answer)) > 0 and all(isinstance(x, float) for x in read(answer))
        return
    assert read(answer).strip() == ANSWER, answer
    events = [json.loads(e["chunk"]["bytes"]) for e in
              stubbed.invoke_model_with_response_stream(modelId=model_id, body=json.dumps(body))["body"]]
    assert events and events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3, events[-1]
