"""Legal status moves of each resource kind, as the AWS user guide documents them.
Every status change made by a job goes through `move`, so an illegal move cannot be stored."""

from bedrock_local.store.resources import update
from bedrock_local.store.schema import Resource

TRANSITIONS: dict[str, dict[str, set[str]]] = {
    "custom-model": {
        "Creating": {"Active", "Failed"},
    },
    "custom-model-deployment": {
        "Creating": {"Active", "Failed"},
        "Active": {"Failed"},  # its model cannot be loaded again after the node serving it was lost
    },
    "model-copy-job": {
        "InProgress": {"Completed", "Failed"},
    },
    "model-customization-job": {
        "InProgress": {"Completed", "Failed", "Stopping", "Stopped"},
        "Stopping": {"Stopped", "Failed"},
    },
    "model-invocation-job": {
        "Submitted": {"Validating", "Stopping", "Stopped", "Failed", "Expired"},
        "Validating": {"Scheduled", "Stopping", "Stopped", "Failed"},
        "Scheduled": {"InProgress", "Stopping", "Stopped", "Failed", "Expired"},
        "InProgress": {"Completed", "PartiallyCompleted", "Stopping", "Failed"},
        "Stopping": {"Stopped", "Failed"},
    },
}


class IllegalTransition(Exception):
    pass


def move(resource: Resource, status: str, **body_changes) -> None:
    allowed = TRANSITIONS.get(resource.kind, {}).get(resource.status, set())
    if status != resource.status and status not in allowed:
        raise IllegalTransition(f"{resource.kind} {resource.arn}: {resource.status} -> {status} is not a legal move")
    update(resource, status=status, **body_changes)


def is_final(resource: Resource) -> bool:
    return not TRANSITIONS.get(resource.kind, {}).get(resource.status)
