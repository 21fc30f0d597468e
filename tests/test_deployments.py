"""Custom model deployments through boto3 against a real server: Create (Creating -> Active once
the model is loaded on the serving node and answers, or Failed with the reason), Get by ARN and by
name, List with every filter, sort and page, Update (Updating -> UpdateCompleted, or UpdateFailed
with the old model still serving), Delete, DeleteCustomModel refusing a model in use, and the errors
of each."""

import datetime
import shutil
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import Server, upload_folder, wait_until

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def build_tiny_model(folder, seed: int):
    """A tiny random-weight Llama saved as an HF folder, with a chat template (the MiniLM tokenizer
    has none); `seed` makes models that answer differently."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bedrock_local.engine.catalog import find_foundation_model, packaged_weights

    tokenizer = AutoTokenizer.from_pretrained(
        packaged_weights(find_foundation_model("sentence-transformers.all-minilm-l6-v2-v1:0")))
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def import_model(server: Server, bedrock, folder, name: str) -> str:
    uri = upload_folder(server, "models", f"{name}/", folder)
    arn = bedrock.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    wait_until(lambda: bedrock.get_custom_model(modelIdentifier=arn)["modelStatus"] == "Active", 120,
               what=f"{name} Active")
    return arn


def damage_stored_model(server: Server, model_arn: str) -> None:
    """Overwrite a custom model's stored weights and drop the serving cache's copy (as on a machine
    that has not loaded it yet), so that loading it must fail."""
    from conftest import SHARED_CACHE

    model_id = model_arn[-12:]
    store = server.folder("bedrock-local-models") / "123456789012" / "us-east-1" / "custom-models" / model_id
    next(store.glob("*.safetensors")).write_bytes(b"not weights")
    shutil.rmtree(SHARED_CACHE / "models" / "123456789012" / "us-east-1" / model_id, ignore_errors=True)


def wait_status(bedrock, arn: str, status: str = "Active", timeout: float = 180):
    def done():
        found = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=arn)
        return found if found["status"] != "Creating" else None
    found = wait_until(done, timeout, what=f"deployment {status}")
    assert found["status"] == status, found
    return found


def error_of(call, **kwargs):
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return caught.value.response


@pytest.fixture(scope="module")
def models(server, bedrock, tmp_path_factory):
    """Two imported tiny models that answer differently."""
    root = tmp_path_factory.mktemp("deploy-models")
    return [import_model(server, bedrock, build_tiny_model(root / f"tiny{seed}", seed), f"tiny-{seed}")
            for seed in (1, 2)]


@pytest.fixture(scope="module")
def runtime(server):
    return server.client(service="bedrock-runtime")


def invoke(runtime, model_id: str, prompt: str = "hello there", max_gen_len: int = 8) -> dict:
    import json

    response = runtime.invoke_model(modelId=model_id, body=json.dumps(
        {"prompt": prompt, "max_gen_len": max_gen_len, "temperature": 0}))
    return json.loads(response["body"].read())


# ---- create, get, lifecycle ------------------------------------------------------------------

def test_create_goes_active_and_get_shows_every_field(bedrock, runtime, models):
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    arn = bedrock.create_custom_model_deployment(
        modelDeploymentName="dep-fields", modelArn=models[0], description="the first one",
        tags=[{"key": "team", "value": "nlp"}])["customModelDeploymentArn"]
    assert arn.startswith("arn:aws:bedrock:us-east-1:123456789012:custom-model-deployment/")
    assert len(arn.rsplit("/", 1)[1]) == 12
    first = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=arn)
    assert first["status"] in ("Creating", "Active")
    found = wait_status(bedrock, arn)
    assert found["customModelDeploymentArn"] == arn
    assert found["modelDeploymentName"] == "dep-fields"
    assert found["modelArn"] == models[0]
    assert found["description"] == "the first one"
    assert found["createdAt"] >= before
    assert found["lastUpdatedAt"] >= found["createdAt"]
    assert "failureMessage" not in found and "updateDetails" not in found
    by_name = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier="dep-fields")
    assert by_name["customModelDeploymentArn"] == arn
    assert bedrock.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "nlp"}]
    answer = invoke(runtime, arn)  # Active means it answers
    assert answer["generation_token_count"] >= 1 and answer["prompt_token_count"] >= 1


def test_idempotent_create_and_taken_name(bedrock, models):
    token = uuid.uuid4().hex
    first = bedrock.create_custom_model_deployment(modelDeploymentName="dep-idem", modelArn=models[0],
                                                   clientRequestToken=token)["customModelDeploymentArn"]
    again = bedrock.create_custom_model_deployment(modelDeploymentName="dep-idem", modelArn=models[0],
                                                   clientRequestToken=token)["customModelDeploymentArn"]
    assert again == first
    error = error_of(bedrock.create_custom_model_deployment, modelDeploymentName="dep-idem", modelArn=models[0])
    assert error["Error"]["Code"] == "ConflictException"
    assert "dep-idem" in error["Error"]["Message"]
    error = error_of(bedrock.create_custom_model_deployment, modelDeploymentName="dep-idem-2", modelArn=models[1],
                     clientRequestToken=token)
    assert error["Error"]["Code"] == "ConflictException"
    wait_status(bedrock, first)


def test_create_errors(server, bedrock, models):
    other_account = models[0].replace(":123456789012:", ":999999999999:")
    missing = models[0][:-12] + "zzzzzzzzzzzz"
    for model_arn in (missing, other_account):
        error = error_of(bedrock.create_custom_model_deployment, modelDeploymentName="dep-missing",
                         modelArn=model_arn)
        assert error["Error"]["Code"] == "ResourceNotFoundException", error
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    loose = server.client(validate=False)
    error = error_of(loose.create_custom_model_deployment, modelDeploymentName="bad name!", modelArn=models[0])
    assert error["Error"]["Code"] == "ValidationException"
    assert "modelDeploymentName" in error["Error"]["Message"]
    error = error_of(loose.create_custom_model_deployment, modelDeploymentName="dep-x",
                     modelArn="arn:aws:bedrock:us-east-1::foundation-model/huggingface.smollm2-135m-instruct-v1:0")
    assert error["Error"]["Code"] == "ValidationException"
    assert "modelArn" in error["Error"]["Message"]
    for call in (bedrock.get_custom_model_deployment, bedrock.delete_custom_model_deployment):
        error = error_of(call, customModelDeploymentIdentifier="no-such-deployment")
        assert error["Error"]["Code"] == "ResourceNotFoundException"


def test_a_model_that_cannot_load_fails_with_the_reason(server, bedrock, tmp_path):
    arn = import_model(server, bedrock, build_tiny_model(tmp_path / "broken", 3), "tiny-broken")
    assert bedrock.get_custom_model(modelIdentifier=arn)["modelStatus"] == "Active"
    damage_stored_model(server, arn)  # after the import: the deployment's load must fail, not hang
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="dep-broken",
                                                 modelArn=arn)["customModelDeploymentArn"]
    failed = wait_status(bedrock, dep, "Failed")
    assert "does not match the model's manifest" in failed["failureMessage"], failed
    assert arn[-12:] in failed["failureMessage"]  # it names the file
    listed = bedrock.list_custom_model_deployments(statusEquals="Failed")["modelDeploymentSummaries"]
    assert [s["customModelDeploymentArn"] for s in listed] == [dep]
    assert listed[0]["failureMessage"] == failed["failureMessage"]
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=dep)


# ---- delete --------------------------------------------------------------------------------

def test_delete_custom_model_refuses_a_model_in_use_and_delete_frees_it(server, bedrock, runtime, tmp_path):
    arn = import_model(server, bedrock, build_tiny_model(tmp_path / "in-use", 4), "tiny-in-use")
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="dep-in-use",
                                                 modelArn=arn)["customModelDeploymentArn"]
    wait_status(bedrock, dep)
    error = error_of(bedrock.delete_custom_model, modelIdentifier=arn)
    assert error["Error"]["Code"] == "ConflictException"
    assert dep in error["Error"]["Message"]
    assert bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier="dep-in-use")
    error = error_of(bedrock.get_custom_model_deployment, customModelDeploymentIdentifier=dep)
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    error = error_of(runtime.invoke_model, modelId=dep, body=b'{"prompt": "hi"}')
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    bedrock.delete_custom_model(modelIdentifier=arn)
    error = error_of(bedrock.get_custom_model, modelIdentifier=arn)
    assert error["Error"]["Code"] == "ResourceNotFoundException"


# ---- update --------------------------------------------------------------------------------

def test_update_switches_models_and_a_failed_update_keeps_the_old_one(server, bedrock, runtime, models, tmp_path):
    reference = bedrock.create_custom_model_deployment(modelDeploymentName="dep-ref",
                                                       modelArn=models[1])["customModelDeploymentArn"]
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="dep-update",
                                                 modelArn=models[0])["customModelDeploymentArn"]
    wait_status(bedrock, reference)
    wait_status(bedrock, dep)
    old_answer, new_answer = invoke(runtime, dep), invoke(runtime, reference)
    assert old_answer["generation"] != new_answer["generation"]  # the two models tell apart

    assert bedrock.update_custom_model_deployment(customModelDeploymentIdentifier=dep,
                                                  modelArn=models[1])["customModelDeploymentArn"] == dep
    updating = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=dep)
    assert updating["updateDetails"]["modelArn"] == models[1]
    assert updating["updateDetails"]["updateStatus"] in ("Updating", "UpdateCompleted")
    if updating["updateDetails"]["updateStatus"] == "Updating":
        error = error_of(bedrock.update_custom_model_deployment, customModelDeploymentIdentifier=dep,
                         modelArn=models[0])
        assert error["Error"]["Code"] == "ValidationException"
    done = wait_until(lambda: (lambda d: d if d["updateDetails"]["updateStatus"] != "Updating" else None)(
        bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=dep)), 120, what="update done")
    assert done["updateDetails"] == {"modelArn": models[1], "updateStatus": "UpdateCompleted"}
    assert done["modelArn"] == models[1] and done["status"] == "Active"
    assert invoke(runtime, dep) == new_answer
    listed = bedrock.list_custom_model_deployments(modelArnEquals=models[1])["modelDeploymentSummaries"]
    assert {s["customModelDeploymentArn"] for s in listed} >= {dep, reference}

    broken = import_model(server, bedrock, build_tiny_model(tmp_path / "broken-update", 5), "tiny-broken-update")
    damage_stored_model(server, broken)
    bedrock.update_custom_model_deployment(customModelDeploymentIdentifier=dep, modelArn=broken)
    failed = wait_until(lambda: (lambda d: d if d["updateDetails"]["updateStatus"] != "Updating" else None)(
        bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=dep)), 120, what="update failed")
    assert failed["updateDetails"] == {"modelArn": broken, "updateStatus": "UpdateFailed"}
    assert failed["status"] == "Active" and failed["modelArn"] == models[1]
    assert failed["failureMessage"]
    assert invoke(runtime, dep) == new_answer  # the old model still serves
    for name in ("dep-ref", "dep-update"):
        bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=name)


def test_update_errors(server, bedrock, models):
    error = error_of(bedrock.update_custom_model_deployment, customModelDeploymentIdentifier="nope",
                     modelArn=models[0])
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="dep-upd-err",
                                                 modelArn=models[0])["customModelDeploymentArn"]
    wait_status(bedrock, dep)
    error = error_of(bedrock.update_custom_model_deployment, customModelDeploymentIdentifier=dep,
                     modelArn=models[0][:-12] + "zzzzzzzzzzzz")
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    bedrock.delete_custom_model_deployment(customModelDeploymentIdentifier=dep)


# ---- list ----------------------------------------------------------------------------------

def test_list_filters_sort_and_pages(make_server, tmp_path):
    server = make_server("list-data", extra_args=("--serving-workers", "0"))  # nothing loads: every deployment stays Creating
    bedrock = server.client()
    model = import_model(server, bedrock, build_tiny_model(tmp_path / "list-model", 6), "tiny-list")
    other = import_model(server, bedrock, build_tiny_model(tmp_path / "list-model-2", 7), "tiny-list-2")
    arns = []
    for i in range(7):
        arns.append(bedrock.create_custom_model_deployment(
            modelDeploymentName=f"{'alpha' if i % 2 else 'beta'}-{i}",
            modelArn=model if i < 5 else other)["customModelDeploymentArn"])
        if i == 2:
            time.sleep(0.05)
            middle = datetime.datetime.now(datetime.timezone.utc)
            time.sleep(0.05)

    def listed(**kwargs):
        return [s["customModelDeploymentArn"] for s in
                bedrock.list_custom_model_deployments(**kwargs)["modelDeploymentSummaries"]]

    assert listed() == arns[::-1]  # newest first by default
    assert listed(sortBy="CreationTime", sortOrder="Ascending") == arns
    assert listed(nameContains="alpha") == [arns[5], arns[3], arns[1]]
    assert listed(modelArnEquals=other) == [arns[6], arns[5]]
    assert listed(createdAfter=middle, sortOrder="Ascending") == arns[3:]
    assert listed(createdBefore=middle, sortOrder="Ascending") == arns[:3]
    assert listed(statusEquals="Creating") == arns[::-1]
    assert listed(statusEquals="Active") == []
    summary = bedrock.list_custom_model_deployments(maxResults=1)["modelDeploymentSummaries"][0]
    assert set(summary) == {"customModelDeploymentArn", "customModelDeploymentName", "modelArn", "createdAt",
                            "status", "lastUpdatedAt"}
    assert summary["customModelDeploymentName"] == "alpha-6" or summary["customModelDeploymentName"] == "beta-6"

    pages, token = [], None
    while True:
        page = bedrock.list_custom_model_deployments(maxResults=3, sortOrder="Ascending",
                                                     **({"nextToken": token} if token else {}))
        pages.append([s["customModelDeploymentArn"] for s in page["modelDeploymentSummaries"]])
        token = page.get("nextToken")
        if not token:
            break
    assert pages == [arns[0:3], arns[3:6], arns[6:7]]
    paginator = bedrock.get_paginator("list_custom_model_deployments")
    walked = [s["customModelDeploymentArn"] for page in paginator.paginate(PaginationConfig={"PageSize": 2})
              for s in page["modelDeploymentSummaries"]]
    assert walked == arns[::-1]
    first = bedrock.list_custom_model_deployments(maxResults=2)
    error = error_of(bedrock.list_custom_model_deployments, maxResults=2, nameContains="alpha",
                     nextToken=first["nextToken"])
    assert error["Error"]["Code"] == "ValidationException"
    assert "nextToken" in error["Error"]["Message"]
    loose = server.client(validate=False)
    error = error_of(loose.list_custom_model_deployments, statusEquals="Running")
    assert error["Error"]["Code"] == "ValidationException"
    assert "statusEquals" in error["Error"]["Message"]
    # another region or account sees none of them
    assert server.client(region="us-west-2").list_custom_model_deployments()["modelDeploymentSummaries"] == []


# ---- restarts ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_deployment_is_served_again_after_a_restart(make_server, tmp_path, how):
    server = make_server(f"restart-{how}")
    bedrock, runtime = server.client(), server.client(service="bedrock-runtime")
    model = import_model(server, bedrock, build_tiny_model(tmp_path / "restart", 8), "tiny-restart")
    dep = bedrock.create_custom_model_deployment(modelDeploymentName="survives", modelArn=model)[
        "customModelDeploymentArn"]
    wait_status(bedrock, dep)
    before = invoke(runtime, dep)
    server.kill() if how == "kill" else server.stop()
    server.start()
    runtime = server.client(service="bedrock-runtime")

    def answered():
        try:
            return invoke(runtime, dep)
        except ClientError as error:  # the new serving node is still loading it
            assert error.response["Error"]["Code"] == "ModelNotReadyException", error.response
            return None
    assert wait_until(answered, 120, what="the deployment served again") == before
    found = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=dep)
    assert found["status"] == "Active" and found["modelArn"] == model
