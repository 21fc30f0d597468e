"""The Provisioned Throughput job: the deployment job's machinery (jobs/handlers/deployment.py: a
serving node claims it, loads the model, checks that it answers and serves it while it holds the
lease, loading an update beside the old model) with a Provisioned Throughput's rules. The node loads
the throughput's own copy of its model, whose batcher generates for at most `modelUnits *
SLOTS_PER_MODEL_UNIT` requests at once: those slots are the throughput's alone, so its calls never
wait behind on-demand traffic or another throughput. Creating -> InService once it answers (or Failed
with the reason); an update to another model is Updating until the new copy answers (then InService
on the new model) or fails to load (then InService on the old one, with the reason in failureMessage).
A delete removes the job; the node loses the lease at its next heartbeat and unloads the copy."""

from __future__ import annotations

import logging

from bedrock_local.jobs.handlers.deployment import DeploymentHandler, Served, load_served
from bedrock_local.jobs.lifecycle import move, update_body
from bedrock_local.jobs.model_sources import ModelSource
from bedrock_local.jobs.protocol import JobContext
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.serving")

PROVISIONED_JOB = "provisioned-throughput"
SLOTS_PER_MODEL_UNIT = 4  # concurrent generation rows one model unit reserves on the node that serves it
IN_SERVICE, UPDATING = "InService", "Updating"


def slots(model_units: int) -> int:
    return max(1, int(model_units)) * SLOTS_PER_MODEL_UNIT


class ProvisionedThroughputHandler(DeploymentHandler):
    kind = PROVISIONED_JOB
    ready_status = IN_SERVICE

    def load(self, ctx: JobContext, source: ModelSource) -> Served:
        with ctx.db.read_session() as session:
            resource = ctx.resource(session)
            units = (resource.body.get("modelUnits") if resource is not None else None) or 1
        return load_served(source, ctx.settings, ctx.objects, max_batch=slots(units))

    def pending_update(self, ctx: JobContext) -> ModelSource | None:
        """The model an UpdateProvisionedModelThroughput asked for, while the throughput is Updating."""
        with ctx.db.read_session() as session:
            resource = ctx.resource(session)
            if resource is not None and resource.status == UPDATING and resource.body.get("_pendingSource"):
                return ModelSource.from_json(resource.body["_pendingSource"])
        return None

    def _record_update(self, ctx: JobContext, source: ModelSource, failure: str | None) -> bool:
        def record(session, resource: Resource) -> None:
            if resource.status != UPDATING:
                return
            if failure is not None:  # the old model keeps serving: the throughput is InService on it
                move(resource, IN_SERVICE, desiredModelArn=resource.ref_arn, _pendingSource=None,
                     failureMessage=f"The update to {source.reference} failed: {failure}"[:2048])
                return
            resource.ref_arn = resource.body["desiredModelArn"]  # an ARN (a foundation source's reference is its id)
            move(resource, IN_SERVICE, _source=source.to_json(), _pendingSource=None, failureMessage=None)

        return self._while_owned(ctx, record)

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessage=message[:2048], _pendingSource=None)
        update_body(resource, desiredModelArn=resource.ref_arn)
