"""TagResource, UntagResource and ListTagsForResource, for every taggable resource we create."""

from bedrock_local.service.common import check_tag_limit, parse_arn
from bedrock_local.service.context import Context
from bedrock_local.service.errors import ResourceNotFoundException
from bedrock_local.service.registry import operation
from bedrock_local.store import resources
from bedrock_local.store.schema import Resource

TAGGABLE = {"custom-model", "model-customization-job", "model-invocation-job", "custom-model-deployment",
            "application-inference-profile", "provisioned-model-throughput",
            "model-import-job", "imported-model", "evaluation-job"}


def _taggable(session, ctx: Context, arn: str) -> Resource:
    parts = parse_arn(arn)
    resource = resources.find_by_arn(session, arn) if parts else None
    if (resource is None or resource.kind not in TAGGABLE
            or (resource.account, resource.region) != (ctx.account, ctx.region)):
        raise ResourceNotFoundException(f"The resource '{arn}' does not exist.")
    return resource


@operation("TagResource")
def tag_resource(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        resource = _taggable(session, ctx, params["resourceARN"])
        check_tag_limit(resources.tag_count_after(session, resource, params["tags"]), resource.arn)
        resources.replace_tags(session, resource, params["tags"])
    return {}


@operation("UntagResource")
def untag_resource(ctx: Context, params: dict) -> dict:
    with ctx.db.session() as session, session.begin():
        resource = _taggable(session, ctx, params["resourceARN"])
        resources.remove_tags(session, resource, params["tagKeys"])
    return {}


@operation("ListTagsForResource")
def list_tags_for_resource(ctx: Context, params: dict) -> dict:
    with ctx.db.read_session() as session:
        resource = _taggable(session, ctx, params["resourceARN"])
        return {"tags": resources.get_tags(session, resource)}
