"""ListFoundationModels and GetFoundationModel over the packaged catalog (the packaged models and the
two test models, which are always there), through boto3."""

import json
import re

import botocore.session
import pytest

from conftest import Server

MODEL = botocore.session.get_session().get_service_model("bedrock")
FOUNDATION_MODEL_ARN = re.compile(MODEL.shape_for("FoundationModelArn").metadata["pattern"])
MODEL_ID = re.compile(r"[a-z0-9-]+\.[a-z0-9-]+-v\d+:\d+")  # Bedrock's provider.name-vN:M
TEXT_MODEL = "huggingface.smollm2-135m-instruct-v1:0"
EMBEDDING_MODEL = "sentence-transformers.all-minilm-l6-v2-v1:0"
TEST_TEXT, TEST_EMBEDDING = "bedrock-local.test-text-v1:0", "bedrock-local.test-embed-v1:0"  # engine/stub_models.py
ALL = {TEXT_MODEL, EMBEDDING_MODEL, TEST_TEXT, TEST_EMBEDDING}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose catalog is the packaged models alone (no aliases), so every filter's answer is
    exactly known; the aliases have tests of their own."""
    folder = tmp_path_factory.mktemp("catalog")
    aliases = folder / "no-aliases.json"
    aliases.write_text(json.dumps({"replaceDefaults": True, "aliases": []}))
    server = Server(folder / "data", extra_args=("--model-aliases", str(aliases))).start()
    yield server
    server.stop()


def ids(response) -> set[str]:
    return {m["modelId"] for m in response["modelSummaries"]}


@pytest.fixture(scope="module")
def loose(server):
    return server.client(validate=False)


@pytest.fixture(scope="module")
def summaries(bedrock):
    response = bedrock.list_foundation_models()
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    return {m["modelId"]: m for m in response["modelSummaries"]}


def test_the_packaged_models_are_listed(summaries):
    assert ALL <= set(summaries)
    for model_id, summary in summaries.items():
        assert MODEL_ID.fullmatch(model_id), model_id
        assert summary["modelName"] and summary["providerName"]


def test_text_model_is_described_truthfully(summaries):
    text = summaries[TEXT_MODEL]
    assert text["inputModalities"] == ["TEXT"]
    assert text["outputModalities"] == ["TEXT"]
    assert sorted(text["customizationsSupported"]) == ["CONTINUED_PRE_TRAINING", "FINE_TUNING"]
    assert text["inferenceTypesSupported"] == ["ON_DEMAND"]
    assert text["responseStreamingSupported"] is True
    assert text["modelLifecycle"]["status"] == "ACTIVE"


def test_embedding_model_is_described_truthfully(summaries):
    embedding = summaries[EMBEDDING_MODEL]
    assert embedding["inputModalities"] == ["TEXT"]
    assert embedding["outputModalities"] == ["EMBEDDING"]
    assert embedding.get("customizationsSupported", []) == []
    assert embedding["inferenceTypesSupported"] == ["ON_DEMAND"]
    assert embedding.get("responseStreamingSupported") is False


@pytest.mark.parametrize("filters,expected", [
    ({"byProvider": "huggingface"}, {TEXT_MODEL}),
    ({"byProvider": "Hugging Face"}, {TEXT_MODEL}),
    ({"byProvider": "sentence-transformers"}, {EMBEDDING_MODEL}),
    ({"byProvider": "Anthropic"}, set()),
    ({"byCustomizationType": "FINE_TUNING"}, {TEXT_MODEL}),
    ({"byCustomizationType": "CONTINUED_PRE_TRAINING"}, {TEXT_MODEL}),
    ({"byCustomizationType": "DISTILLATION"}, set()),
    ({"byOutputModality": "TEXT"}, {TEXT_MODEL, TEST_TEXT}),
    ({"byOutputModality": "EMBEDDING"}, {EMBEDDING_MODEL, TEST_EMBEDDING}),
    ({"byProvider": "bedrock-local"}, {TEST_TEXT, TEST_EMBEDDING}),
    ({"byOutputModality": "IMAGE"}, set()),
    ({"byInferenceType": "ON_DEMAND"}, ALL),
    ({"byInferenceType": "PROVISIONED"}, set()),
    ({"byProvider": "huggingface", "byOutputModality": "TEXT", "byCustomizationType": "FINE_TUNING",
      "byInferenceType": "ON_DEMAND"}, {TEXT_MODEL}),
    ({"byOutputModality": "EMBEDDING", "byCustomizationType": "FINE_TUNING"}, set()),
])
def test_filters(bedrock, filters, expected):
    # the catalog holds the packaged models only, so each filter's answer is exactly known
    assert ids(bedrock.list_foundation_models(**filters)) == expected


@pytest.mark.parametrize("filters,member", [
    ({"byOutputModality": "AUDIO"}, "byOutputModality"),
    ({"byCustomizationType": "LORA"}, "byCustomizationType"),
    ({"byInferenceType": "BATCH"}, "byInferenceType"),
    ({"byProvider": "bad_provider!"}, "byProvider"),
])
def test_bad_filter_values_are_validation_errors(loose, filters, member):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.list_foundation_models(**filters)
    message = excinfo.value.response["Error"]["Message"]
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert f"at '{member}' failed to satisfy constraint" in message


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1"])
def test_arns_carry_the_region_of_the_request(server, region):
    summaries = server.client(region).list_foundation_models()["modelSummaries"]
    assert ALL <= {m["modelId"] for m in summaries}
    for summary in summaries:
        arn = summary["modelArn"]
        assert arn == f"arn:aws:bedrock:{region}::foundation-model/{summary['modelId']}"
        assert FOUNDATION_MODEL_ARN.fullmatch(arn), arn


@pytest.mark.parametrize("model_id", sorted(ALL))
def test_get_by_id_and_by_arn(bedrock, summaries, model_id):
    by_id = bedrock.get_foundation_model(modelIdentifier=model_id)["modelDetails"]
    arn = f"arn:aws:bedrock:us-east-1::foundation-model/{model_id}"
    by_arn = bedrock.get_foundation_model(modelIdentifier=arn)["modelDetails"]
    assert by_id == by_arn
    assert by_id["modelId"] == model_id and by_id["modelArn"] == arn
    summary = summaries[model_id]
    for key in ("modelName", "providerName", "inputModalities", "outputModalities", "inferenceTypesSupported"):
        assert by_id[key] == summary[key], key
    assert by_id.get("customizationsSupported", []) == summary.get("customizationsSupported", [])


def test_get_in_another_region_answers_that_regions_arn(server):
    details = server.client("ap-southeast-2").get_foundation_model(modelIdentifier=TEXT_MODEL)["modelDetails"]
    assert details["modelArn"] == f"arn:aws:bedrock:ap-southeast-2::foundation-model/{TEXT_MODEL}"


@pytest.mark.parametrize("identifier", [
    "nobody.no-such-model-v1:0",
    "huggingface.smollm2-135m-instruct-v9:0",
    "arn:aws:bedrock:us-east-1::foundation-model/nobody.no-such-model-v1:0",
])
def test_unknown_model_is_not_found(bedrock, identifier):
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as excinfo:
        bedrock.get_foundation_model(modelIdentifier=identifier)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert identifier in excinfo.value.response["Error"]["Message"]


@pytest.mark.parametrize("identifier", [
    "NOT A MODEL",
    "smollm2",  # no provider part
    "huggingface.smollm2-135m-instruct-v1:0!",  # matches only partially
    "arn:aws:bedrock:us-east-1:123456789012:custom-model/imported/abcdefabcdef",  # not a foundation model ARN
])
def test_malformed_identifier_is_a_validation_error(loose, identifier):
    with pytest.raises(loose.exceptions.ValidationException) as excinfo:
        loose.get_foundation_model(modelIdentifier=identifier)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    message = excinfo.value.response["Error"]["Message"]
    assert f"Value '{identifier}' at 'modelIdentifier' failed to satisfy constraint: " \
           f"Member must satisfy regular expression pattern" in message


def test_every_answer_fits_the_output_shapes(bedrock):
    # the names the packaged models had before (e.g. "SmolLM2 135M Instruct", 21 characters) broke
    # BrandedName's 20-character limit
    from bedrock_local.api.validation import validation_message

    def problem(operation, response):
        body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
        return validation_message(body, MODEL.operation_model(operation).output_shape)

    assert problem("ListFoundationModels", bedrock.list_foundation_models()) is None
    for model_id in sorted(ALL):
        assert problem("GetFoundationModel", bedrock.get_foundation_model(modelIdentifier=model_id)) is None
