"""Projects, as the bedrock-runtime endpoint has them on AWS: each account has one, its default
project (`default`, ARN arn:aws:bedrock:REGION:ACCOUNT:project/default), which every request belongs
to. A `projectIdentifier` member that names it (by id or by the caller's own ARN) is taken by every
operation that has one and changes nothing; any other project answers AWS's errors (a project that
does not exist: ResourceNotFoundException where the operation models it, else ValidationException). The Projects API
itself (CreateProject, GetProject, ...) is not served: bedrock-local has no other projects to make."""

from __future__ import annotations

import re

from bedrock_local.service.context import Context
from bedrock_local.service.errors import AccessDeniedException, ResourceNotFoundException, ValidationException

DEFAULT_PROJECT = "default"
MEMBER = "projectIdentifier"
_ARN = re.compile(r"arn:aws(?:-[^:]+)?:bedrock:(?P<region>[0-9a-z-]{1,20}):(?P<account>[0-9]{12}):project/(?P<id>.+)")


def default_project_arn(ctx: Context) -> str:
    return f"arn:aws:bedrock:{ctx.region}:{ctx.account}:project/{DEFAULT_PROJECT}"


def check_project(ctx: Context, identifier: str, *, not_found_modelled: bool = True) -> None:
    """Refuse `identifier` unless it names the caller's default project (the model's pattern is
    already checked). `not_found_modelled`: the operation lists ResourceNotFoundException."""
    project = identifier
    arn = _ARN.fullmatch(identifier)
    if arn:
        if arn["account"] != ctx.account:
            raise AccessDeniedException(f"The project {identifier} belongs to another account; "
                                        f"{MEMBER} must name a project of account {ctx.account}.")
        if arn["region"] != ctx.region:
            raise ValidationException(f"The project {identifier} is not in this Region ({ctx.region}); "
                                      f"{MEMBER} must name a project of this Region.")
        project = arn["id"]
    if project != DEFAULT_PROJECT:
        raise (ResourceNotFoundException if not_found_modelled else ValidationException)(
            f"The project {identifier} was not found. bedrock-local has one project per account, the default "
            f"one ({DEFAULT_PROJECT!r} or {default_project_arn(ctx)}).")
