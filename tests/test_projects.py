"""projectIdentifier through boto3 on every served operation whose input has one (the service model
says which): the account's default project, by id or by the caller's own ARN, is taken and changes
nothing; another project, another account's or another Region's answers AWS's errors. The Projects
API itself is not served."""

import json

import pytest
from botocore.exceptions import ClientError

from bedrock_local.engine.stub_models import TEST_TEXT_MODEL
from bedrock_local.service import load_operations
from conftest import Server

PROFILE = "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
MESSAGES = [{"role": "user", "content": [{"text": "one two"}]}]
# each served operation that takes a projectIdentifier, with the least request it answers
CALLS = {
    ("bedrock", "GetFoundationModel"): lambda c, **p: c.get_foundation_model(modelIdentifier=TEST_TEXT_MODEL, **p),
    ("bedrock", "ListFoundationModels"): lambda c, **p: c.list_foundation_models(**p),
    ("bedrock", "GetInferenceProfile"): lambda c, **p: c.get_inference_profile(inferenceProfileIdentifier=PROFILE, **p),
    ("bedrock", "ListInferenceProfiles"): lambda c, **p: c.list_inference_profiles(**p),
    ("bedrock-runtime", "Converse"): lambda c, **p: c.converse(modelId=TEST_TEXT_MODEL, messages=MESSAGES, **p),
    ("bedrock-runtime", "ConverseStream"): lambda c, **p: list(
        c.converse_stream(modelId=TEST_TEXT_MODEL, messages=MESSAGES, **p)["stream"]),
    ("bedrock-runtime", "InvokeModel"): lambda c, **p: c.invoke_model(
        modelId=TEST_TEXT_MODEL, body=json.dumps({"prompt": "one two"}), **p)["body"].read(),
    ("bedrock-runtime", "InvokeModelWithResponseStream"): lambda c, **p: [
        json.loads(event["chunk"]["bytes"]) for event in c.invoke_model_with_response_stream(
            modelId=TEST_TEXT_MODEL, body=json.dumps({"prompt": "one two"}), **p)["body"]],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("projects") / "data", workers=0, serving_workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def account(server):
    arn = server.client().get_inference_profile(inferenceProfileIdentifier=PROFILE)["inferenceProfileArn"]
    return arn.split(":")[4]


def test_every_served_operation_with_a_project_member_is_covered(server):
    served = set(load_operations())
    taking = set()
    for service in ("bedrock", "bedrock-runtime"):
        model = server.client(service=service).meta.service_model
        for name in model.operation_names:
            members = model.operation_model(name).input_shape.members if model.operation_model(name).input_shape else {}
            if "projectIdentifier" in members and name in served:
                taking.add((service, name))
    assert taking == set(CALLS)


@pytest.mark.parametrize("service, operation", sorted(CALLS))
def test_the_default_project_is_taken_by_id_and_by_arn(server, account, service, operation):
    client = server.client(service=service, retries={"total_max_attempts": 1, "mode": "standard"})
    call = CALLS[(service, operation)]
    plain = comparable(call(client))
    assert comparable(call(client, projectIdentifier="default")) == plain
    assert comparable(call(client, projectIdentifier=f"arn:aws:bedrock:us-east-1:{account}:project/default")) == plain


def comparable(answer):
    """An answer without what differs between two equal calls: the request's metadata, the latency."""
    if isinstance(answer, dict):
        return {k: comparable(v) for k, v in answer.items() if k not in ("ResponseMetadata", "metrics", "amazon-bedrock-invocationMetrics")}
    if isinstance(answer, list):
        return [comparable(v) for v in answer]
    return answer


@pytest.mark.parametrize("service, operation", sorted(CALLS))
def test_another_project_answers_aws_errors(server, account, service, operation):
    client = server.client(service=service, retries={"total_max_attempts": 1, "mode": "standard"})
    call = CALLS[(service, operation)]
    # a List operation models no ResourceNotFoundException: there, an unknown project is a bad filter
    not_found = ("ValidationException", 400) if operation.startswith("List") else ("ResourceNotFoundException", 404)
    for project, code, status, says in (
            ("proj_abcdefghijklmnopqrst", *not_found, "was not found"),
            (f"arn:aws:bedrock:us-east-1:{account}:project/proj_abcdefghijklmnopqrst", *not_found, "was not found"),
            ("arn:aws:bedrock:us-east-1:999999999999:project/default", "AccessDeniedException", 403,
             "belongs to another account"),
            (f"arn:aws:bedrock:eu-west-1:{account}:project/default", "ValidationException", 400, "not in this Region"),
            ("not a project!", "ValidationException", 400, "projectIdentifier")):
        with pytest.raises(ClientError) as raised:
            call(client, projectIdentifier=project)
        error = raised.value.response
        assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == (code, status), project
        assert says in error["Error"]["Message"] and project in error["Error"]["Message"]


def test_the_projects_api_is_refused_clearly(server):
    with pytest.raises(ClientError) as raised:
        server.client().create_project(name="team")
    error = raised.value.response["Error"]
    assert error["Code"] == "ValidationException" and "CreateProject is not supported" in error["Message"]
