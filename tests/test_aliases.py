"""AWS model ids (aliases) through boto3 against a real server, answered by the packaged models:
code written for AWS Bedrock — an Anthropic Messages body through InvokeModel, Converse with a
Claude id, Titan embeddings in a batch job — runs unchanged; ListFoundationModels and
GetFoundationModel describe the aliases as AWS does; each provider's body is checked (a wrong
provider's body is a ValidationException naming the format the model takes); an alias file adds
ids and a bad one stops the server with the entry named."""

import json
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from conftest import wait_until
from test_batch_inference import ROLE, put_input, read_out, job_folder, wait_final

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN_V2 = "amazon.titan-embed-text-v2:0"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime")


def test_aliases_are_listed_with_aws_metadata(bedrock):
    summaries = {m["modelId"]: m for m in bedrock.list_foundation_models()["modelSummaries"]}
    haiku = summaries[HAIKU]
    assert haiku["modelName"] == "Claude 3 Haiku" and haiku["providerName"] == "Anthropic"
    assert haiku["inputModalities"] == ["TEXT", "IMAGE"] and haiku["outputModalities"] == ["TEXT"]
    assert haiku["responseStreamingSupported"] is True
    assert haiku["modelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"
    titan = summaries[TITAN_V2]
    assert titan["outputModalities"] == ["EMBEDDING"] and titan["providerName"] == "Amazon"
    anthropic = {m["modelId"] for m in bedrock.list_foundation_models(byProvider="Anthropic")["modelSummaries"]}
    assert HAIKU in anthropic and all(m.startswith("anthropic.") for m in anthropic)
    embeddings = {m["modelId"] for m in bedrock.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]}
    assert {TITAN_V2, "amazon.titan-embed-text-v1", "cohere.embed-english-v3"} <= embeddings
    details = bedrock.get_foundation_model(modelIdentifier=HAIKU)["modelDetails"]
    assert details["modelId"] == HAIKU and details["customizationsSupported"] == ["FINE_TUNING"]


def test_anthropic_messages_through_invoke_model_unchanged(runtime):
    # what a script written for AWS sends, byte for byte
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16, "temperature": 0,
                       "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]})
    response = runtime.invoke_model(modelId=HAIKU, body=body, contentType="application/json",
                                    accept="application/json")
    answer = json.loads(response["body"].read())
    assert answer["type"] == "message" and answer["role"] == "assistant" and answer["model"] == HAIKU
    assert answer["id"].startswith("msg_")
    assert "Paris" in answer["content"][0]["text"] and answer["content"][0]["type"] == "text"
    assert answer["stop_reason"] in ("end_turn", "max_tokens")
    assert answer["usage"]["input_tokens"] > 5 and 1 <= answer["usage"]["output_tokens"] <= 16

    events = [json.loads(e["chunk"]["bytes"]) for e in
              runtime.invoke_model_with_response_stream(modelId=HAIKU, body=body)["body"]]
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == answer["content"][0]["text"]
    assert events[-2]["delta"]["stop_reason"] == answer["stop_reason"]
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == answer["usage"]["output_tokens"]
    assert metrics["inputTokenCount"] == answer["usage"]["input_tokens"]


def test_converse_with_a_claude_id(runtime):
    answer = runtime.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": QUESTION}]}],
                              inferenceConfig={"maxTokens": 12, "temperature": 0})
    assert "Paris" in answer["output"]["message"]["content"][0]["text"]


@pytest.mark.parametrize("model_id,body,check", [
    ("amazon.titan-text-express-v1",
     {"inputText": QUESTION, "textGenerationConfig": {"maxTokenCount": 12, "temperature": 0}},
     lambda a: a["results"][0]["completionReason"] in ("FINISH", "LENGTH") and "Paris" in a["results"][0]["outputText"]
     and a["inputTextTokenCount"] > 0),
    ("mistral.mistral-7b-instruct-v0:2", {"prompt": f"<s>[INST] {QUESTION} [/INST]", "max_tokens": 12,
                                          "temperature": 0},
     lambda a: a["outputs"][0]["stop_reason"] in ("stop", "length") and "Paris" in a["outputs"][0]["text"]),
    ("meta.llama3-8b-instruct-v1:0",  # the Llama 3 prompt template AWS's examples send
     {"prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + QUESTION +
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "max_gen_len": 12, "temperature": 0},
     lambda a: "Paris" in a["generation"] and a["generation_token_count"] <= 12),
    ("amazon.titan-embed-text-v1", {"inputText": "a quiet lake"},
     lambda a: len(a["embedding"]) == 1536 and a["inputTextTokenCount"] > 0),
    (TITAN_V2, {"inputText": "a quiet lake", "dimensions": 256, "normalize": True},
     lambda a: len(a["embedding"]) == 256 and abs(sum(x * x for x in a["embedding"]) - 1) < 1e-3),
    ("cohere.embed-english-v3", {"texts": ["a quiet lake", "a calm pond"], "input_type": "search_document"},
     lambda a: len(a["embeddings"]) == 2 and len(a["embeddings"][0]) == 1024
     and a["texts"] == ["a quiet lake", "a calm pond"]),
])
def test_each_providers_body_round_trips(runtime, model_id, body, check):
    answer = json.loads(runtime.invoke_model(modelId=model_id, body=json.dumps(body))["body"].read())
    assert check(answer), answer


def test_a_body_of_the_wrong_provider_names_the_expected_format(runtime):
    with pytest.raises(ClientError) as caught:
        runtime.invoke_model(modelId=HAIKU, body=json.dumps({"prompt": QUESTION, "max_gen_len": 10}))
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert "Anthropic Claude Messages" in error["Message"] and "'prompt'" in error["Message"]
    with pytest.raises(ClientError) as caught:
        runtime.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps({"inputText": "x"}))
    assert "Cohere Embed" in caught.value.response["Error"]["Message"]


def test_titan_embeddings_in_a_batch_job_unchanged(server, bedrock):
    texts = ["a quiet lake at dawn", "a calm pond in the morning", "a loud rock concert"]
    records = [{"recordId": f"r{i}", "modelInput": {"inputText": t}} for i, t in enumerate(texts)]
    records.append({"recordId": "bad", "modelInput": {"inputText": "x", "dimensions": 300}})
    uri = put_input(server, {"embed.jsonl": records})
    server.folder("batch-output")  # the output bucket exists
    arn = bedrock.create_model_invocation_job(
        jobName="titan-embed-batch", roleArn=ROLE, modelId=TITAN_V2,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://batch-output/"}})["jobArn"]
    job = wait_final(bedrock, arn)
    assert job["status"] == "Completed", job
    lines = {line["recordId"]: line for line in read_out(job_folder(server, arn) / "embed.jsonl.out")}
    vectors = [lines[f"r{i}"]["modelOutput"]["embedding"] for i in range(3)]
    assert all(len(v) == 1024 for v in vectors)  # Titan V2's default size

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])  # meaning survives the resize
    assert lines["bad"]["error"]["errorCode"] == 400 and "dimensions" in lines["bad"]["error"]["errorMessage"]


def test_an_alias_base_model_follows_its_customization_support(bedrock):
    common = dict(roleArn="arn:aws:iam::123456789012:role/ft", trainingDataConfig={"s3Uri": "s3://nope/train.jsonl"},
                  outputDataConfig={"s3Uri": "s3://nope/out/"}, hyperParameters={"epochCount": "1"})
    # Claude 3 Haiku: fine-tuning only, as on AWS; the job fails saying so (before reading any data)
    arn = bedrock.create_model_customization_job(jobName="cpt-haiku", customModelName="cpt-haiku",
                                                 baseModelIdentifier=HAIKU, customizationType="CONTINUED_PRE_TRAINING",
                                                 **common)["jobArn"]
    assert f"model-customization-job/{HAIKU}/" in arn
    job = wait_until(lambda: (lambda j: j if j["status"] == "Failed" else None)(
        bedrock.get_model_customization_job(jobIdentifier=arn)), 120, what="the job Failed")
    assert "CONTINUED_PRE_TRAINING" in job["failureMessage"] and HAIKU in job["failureMessage"]


def test_an_alias_file_adds_ids_and_a_bad_one_stops_the_server(tmp_path, make_server):
    good = tmp_path / "aliases.json"
    good.write_text(json.dumps({"aliases": [{
        "modelId": "acme.house-model-v1:0", "runsOn": "huggingface.smollm2-135m-instruct-v1:0",
        "bodyFormat": "anthropic-messages", "modelName": "House Model", "providerName": "Acme"}]}))
    server = make_server("aliased", extra_args=("--model-aliases", str(good)))
    details = server.client().get_foundation_model(modelIdentifier="acme.house-model-v1:0")["modelDetails"]
    assert details["modelName"] == "House Model" and details["providerName"] == "Acme"
    assert server.client().get_foundation_model(modelIdentifier=HAIKU)  # the defaults are kept

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"aliases": [{"modelId": "acme.broken-v1:0", "runsOn": "no.such-model-v1:0",
                                            "bodyFormat": "meta-llama"}]}))
    done = subprocess.run([sys.executable, "-m", "bedrock_local.cli", "serve", "--port", "0", "--data-dir",
                           str(tmp_path / "bad-data"), "--model-aliases", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "aliases[0]" in done.stderr and "runsOn" in done.stderr and "no.such-model-v1:0" in done.stderr


def test_nova_body_on_the_packaged_model(runtime):
    body = {"schemaVersion": "messages-v1", "messages": [{"role": "user", "content": [{"text": QUESTION}]}],
            "inferenceConfig": {"maxTokens": 12, "temperature": 0}}
    answer = json.loads(runtime.invoke_model(modelId="amazon.nova-micro-v1:0", body=json.dumps(body))["body"].read())
    assert "Paris" in answer["output"]["message"]["content"][0]["text"]
    assert answer["stopReason"] in ("end_turn", "max_tokens") and 1 <= answer["usage"]["outputTokens"] <= 12


@pytest.mark.parametrize("entry,problem", [
    ({"modelName": "A name longer than twenty"}, "at most 20"),
    ({"providerName": "A provider with a long name"}, "at most 20"),
    ({"profileOnly": True, "inferenceTypesSupported": ["ON_DEMAND"]}, "profileOnly"),
    ({"geographies": ["mars"]}, "geographies"),
    ({"toolChoices": ["sometimes"]}, "toolChoices"),
    ({"countTokens": "yes"}, "countTokens"),
    ({"lifecycle": "RETIRED"}, "lifecycle"),
])
def test_alias_entries_are_checked(entry, problem):
    from bedrock_local.engine.aliases import AliasError, alias_model
    with pytest.raises(AliasError) as caught:
        alias_model({"modelId": "acme.house-model-v1:0", "runsOn": "bedrock-local.test-text-v1:0",
                     "bodyFormat": "meta-llama", **entry}, "aliases[0]")
    assert problem in str(caught.value) and "aliases[0]" in str(caught.value)


def test_an_aws_id_in_an_alias_file_keeps_what_aws_says_about_it():
    from bedrock_local.engine.aliases import alias_model
    sonnet = alias_model({"modelId": "anthropic.claude-sonnet-4-20250514-v1:0", "runsOn": "bedrock-local.test-text-v1:0",
                          "bodyFormat": "anthropic-messages"}, "aliases[0]")
    assert (sonnet.model_name, sonnet.provider_name, sonnet.profile_only) == ("Claude Sonnet 4", "Anthropic", True)
    assert "global" in sonnet.geographies and sonnet.inference_types_supported == () and sonnet.count_tokens
    on_demand = alias_model({"modelId": "anthropic.claude-sonnet-4-20250514-v1:0", "profileOnly": False,
                             "runsOn": "bedrock-local.test-text-v1:0", "bodyFormat": "anthropic-messages"}, "a")
    assert on_demand.inference_types_supported == ("ON_DEMAND",)
    house = alias_model({"modelId": "bedrock-local.a-rather-long-house-model-v1:0",
                         "runsOn": "bedrock-local.test-text-v1:0", "bodyFormat": "meta-llama"}, "aliases[0]")
    assert house.model_name == "a-rather-long-house-" and house.geographies == () and not house.profile_only
