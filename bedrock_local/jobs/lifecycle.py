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
    "model-import-job": {
        "InProgress": {"Completed", "Failed"},
    },
    "provisioned-model-throughput": {
        "Creating": {"InService", "Failed"},
        "InService": {"Updating", "Failed"},  # Failed: its model cannot be loaded again after its node was lost
        "Updating": {"InService", "Failed"},
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
    "evaluation-job": {  # BatchDeleteEvaluationJob removes an ended job (answered Deleting): no move here
        "InProgress": {"Completed", "Failed", "Stopping", "Stopped"},
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


def update_body(resource: Resource, **body_changes) -> None:
    """Change members of the resource's body and leave its status as it is."""
    update(resource, status=resource.status, **body_changes)


def is_final(resource: Resource) -> bool:
    return not TRANSITIONS.get(resource.kind, {}).get(resource.status)


def unfinished_statuses(kind: str) -> tuple[str, ...]:
    """The statuses of `kind` that have a move left, in the order TRANSITIONS lists them."""
    return tuple(TRANSITIONS[kind])


def final_statuses(kind: str) -> frozenset[str]:
    """The statuses of `kind` that no move leaves: every status a move reaches that has none of its own."""
    reached = {status for targets in TRANSITIONS[kind].values() for status in targets}
    return frozenset(reached - set(TRANSITIONS[kind]))
