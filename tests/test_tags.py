"""TagResource, UntagResource and ListTagsForResource through boto3: tags at create time, add,
overwrite, remove, the 200-tag limit, identity (region and account) and the model's patterns."""

import json
import uuid

import pytest

from conftest import Server, wait_until

ACCOUNT_ONE, ACCOUNT_TWO = "111111111111", "222222222222"
KEYS = {"AKIAONE": {"secretAccessKey": "s1", "accountId": ACCOUNT_ONE},
        "AKIATWO": {"secretAccessKey": "s2", "accountId": ACCOUNT_TWO}}


@pytest.fixture(scope="module")
def tag_server(tmp_path_factory):
    """One server with two accounts; its worker runs every import (of an empty folder) to Failed."""
    folder = tmp_path_factory.mktemp("tags")
    credentials = folder / "credentials.json"
    credentials.write_text(json.dumps(KEYS))
    server = Server(folder / "data", workers=1, extra_args=("--credentials-file", str(credentials))).start()
    server.folder("tag-src").joinpath("empty").mkdir(parents=True, exist_ok=True)
    yield server
    server.stop()


def client(server, key="AKIAONE", region="us-east-1"):
    return server.client(region, key, validate=False, secret_key=KEYS[key]["secretAccessKey"], read_timeout=15)


@pytest.fixture(scope="module")
def one(tag_server):
    return client(tag_server)


def create_model(c, tags=None) -> str:
    kwargs = {"modelTags": tags} if tags is not None else {}
    return c.create_custom_model(modelName=f"t-{uuid.uuid4().hex[:10]}",
                                 modelSourceConfig={"s3DataSource": {"s3Uri": "s3://tag-src/empty/"}},
                                 **kwargs)["modelArn"]


def tags_of(c, arn) -> list[tuple[str, str]]:
    return [(t["key"], t["value"]) for t in c.list_tags_for_resource(resourceARN=arn)["tags"]]


def tag_list(pairs) -> list[dict]:
    return [{"key": k, "value": v} for k, v in pairs]


def message_of(excinfo) -> str:
    return excinfo.value.response["Error"]["Message"]


def test_tags_given_at_create_time(one):
    arn = create_model(one, tag_list([("team", "ml"), ("env", "dev"), ("cost-center", "4711")]))
    assert tags_of(one, arn) == [("team", "ml"), ("env", "dev"), ("cost-center", "4711")]
    assert tags_of(one, create_model(one)) == []


def test_tags_stay_when_the_import_fails(one):
    """The worker runs the import of an empty folder to Failed; the model and its tags remain."""
    arn = create_model(one, tag_list([("k", "v")]))
    model = wait_until(lambda: (lambda m: m if m["modelStatus"] == "Failed" else None)(
        one.get_custom_model(modelIdentifier=arn)), timeout=60, what="the import to fail")
    assert model["failureMessage"]
    assert tags_of(one, arn) == [("k", "v")]
    one.tag_resource(resourceARN=arn, tags=tag_list([("k2", "v2")]))
    assert tags_of(one, arn) == [("k", "v"), ("k2", "v2")]


def test_tag_resource_adds_and_overwrites(one):
    arn = create_model(one, tag_list([("a", "1"), ("b", "2")]))
    response = one.tag_resource(resourceARN=arn, tags=tag_list([("b", "two"), ("c", "3")]))
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert tags_of(one, arn) == [("a", "1"), ("b", "two"), ("c", "3")]
    one.tag_resource(resourceARN=arn, tags=tag_list([("a", "")]))  # an empty value is a value
    assert tags_of(one, arn) == [("a", ""), ("b", "two"), ("c", "3")]


def test_untag_resource_removes(one):
    arn = create_model(one, tag_list([("a", "1"), ("b", "2"), ("c", "3")]))
    one.untag_resource(resourceARN=arn, tagKeys=["b", "not-there"])
    assert tags_of(one, arn) == [("a", "1"), ("c", "3")]
    one.untag_resource(resourceARN=arn, tagKeys=["a", "c"])
    assert tags_of(one, arn) == []
    one.tag_resource(resourceARN=arn, tags=tag_list([("b", "back")]))
    assert tags_of(one, arn) == [("b", "back")]


def test_keys_are_case_sensitive(one):
    arn = create_model(one, tag_list([("Env", "A")]))
    one.tag_resource(resourceARN=arn, tags=tag_list([("env", "b")]))
    assert sorted(tags_of(one, arn)) == [("Env", "A"), ("env", "b")]


def test_too_many_tags(one):
    arn = create_model(one, tag_list((f"k{i}", "v") for i in range(150)))
    with pytest.raises(one.exceptions.TooManyTagsException) as excinfo:
        one.tag_resource(resourceARN=arn, tags=tag_list((f"n{i}", "v") for i in range(60)))
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "200" in message_of(excinfo)
    assert len(tags_of(one, arn)) == 150  # nothing of the refused request was applied
    # overwriting existing keys does not count against the limit; reaching exactly 200 is fine
    one.tag_resource(resourceARN=arn, tags=tag_list([(f"k{i}", "w") for i in range(100)]
                                                    + [(f"n{i}", "v") for i in range(50)]))
    tags = tags_of(one, arn)
    assert len(tags) == 200 and tags[0] == ("k0", "w") and tags[-1] == ("n49", "v")
    with pytest.raises(one.exceptions.TooManyTagsException):
        one.tag_resource(resourceARN=arn, tags=tag_list([("one-more", "v")]))
    one.untag_resource(resourceARN=arn, tagKeys=["k0"])
    one.tag_resource(resourceARN=arn, tags=tag_list([("one-more", "v")]))
    assert len(tags_of(one, arn)) == 200


def test_more_than_200_tags_in_one_request_is_a_validation_error(one):
    with pytest.raises(one.exceptions.ValidationException) as excinfo:
        create_model(one, tag_list((f"k{i}", "v") for i in range(201)))
    assert "at 'modelTags' failed to satisfy constraint: Member must have length less than or equal to 200" \
        in message_of(excinfo)


UNKNOWN = "arn:aws:bedrock:us-east-1:111111111111:custom-model/imported/abcdefabcdef"


@pytest.mark.parametrize("call", [
    lambda c: c.list_tags_for_resource(resourceARN=UNKNOWN),
    lambda c: c.tag_resource(resourceARN=UNKNOWN, tags=[{"key": "a", "value": "b"}]),
    lambda c: c.untag_resource(resourceARN=UNKNOWN, tagKeys=["a"]),
], ids=["list", "tag", "untag"])
def test_unknown_arn_is_not_found(one, call):
    with pytest.raises(one.exceptions.ResourceNotFoundException) as excinfo:
        call(one)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_arn_of_another_region_is_not_found(tag_server, one):
    arn = create_model(one, tag_list([("a", "1")]))
    west = client(tag_server, region="us-west-2")
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.list_tags_for_resource(resourceARN=arn)
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.tag_resource(resourceARN=arn, tags=tag_list([("b", "2")]))
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.untag_resource(resourceARN=arn, tagKeys=["a"])
    assert tags_of(one, arn) == [("a", "1")]


def test_arn_of_another_account_is_not_found(tag_server, one):
    arn = create_model(one, tag_list([("a", "1")]))
    assert f":{ACCOUNT_ONE}:" in arn
    two = client(tag_server, key="AKIATWO")
    with pytest.raises(two.exceptions.ResourceNotFoundException):
        two.list_tags_for_resource(resourceARN=arn)
    with pytest.raises(two.exceptions.ResourceNotFoundException):
        two.tag_resource(resourceARN=arn, tags=tag_list([("b", "2")]))
    with pytest.raises(two.exceptions.ResourceNotFoundException):
        two.untag_resource(resourceARN=arn, tagKeys=["a"])
    assert tags_of(one, arn) == [("a", "1")]
    # an ARN that names the other account for a resource of this one is not found either
    with pytest.raises(one.exceptions.ResourceNotFoundException):
        one.list_tags_for_resource(resourceARN=arn.replace(ACCOUNT_ONE, ACCOUNT_TWO))


@pytest.mark.parametrize("tag,where", [
    ({"key": "bad*key", "value": "v"}, "key"),
    ({"key": "k", "value": "bad$value"}, "value"),
    ({"key": "", "value": "v"}, "key"),
    ({"key": "k" * 129, "value": "v"}, "key"),
    ({"key": "k", "value": "v" * 257}, "value"),
])
def test_tag_patterns_and_lengths(one, tag, where):
    arn = create_model(one)
    with pytest.raises(one.exceptions.ValidationException) as excinfo:
        one.tag_resource(resourceARN=arn, tags=[{"key": "fine", "value": "ok"}, tag])
    message = message_of(excinfo)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert f"at 'tags.2.member.{where}' failed to satisfy constraint" in message  # AWS's name for the 2nd tag
    assert tags_of(one, arn) == []
    with pytest.raises(one.exceptions.ValidationException):
        create_model(one, tags=[tag])


def test_untag_key_pattern(one):
    arn = create_model(one)
    with pytest.raises(one.exceptions.ValidationException) as excinfo:
        one.untag_resource(resourceARN=arn, tagKeys=["bad*key"])
    assert "tagKeys" in message_of(excinfo)


@pytest.mark.parametrize("arn", [
    "arn:aws:bedrock:us-east-1:111111111111:model-copy-job/abcdefabcdef",
    "arn:aws:bedrock:us-east-1::foundation-model/huggingface.smollm2-135m-instruct-v1:0",
    "not an arn at all, with spaces",
])
def test_untaggable_arns_are_validation_errors(one, arn):
    for call in (lambda: one.list_tags_for_resource(resourceARN=arn),
                 lambda: one.tag_resource(resourceARN=arn, tags=[{"key": "a", "value": "b"}]),
                 lambda: one.untag_resource(resourceARN=arn, tagKeys=["a"])):
        with pytest.raises(one.exceptions.ValidationException) as excinfo:
            call()
        assert "at 'resourceARN' failed to satisfy constraint: Member must satisfy regular expression pattern" \
            in message_of(excinfo)
