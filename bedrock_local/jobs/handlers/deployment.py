"""The model deployment job: a serving node (processes/serving.py) claims it, loads the deployment's
model, checks that it answers and moves the deployment Creating -> Active (or Failed, with the
reason); it then serves the model for as long as it holds the job's lease. The same lease carries
updates (the new model is loaded beside the old one and recorded as UpdateCompleted, or
UpdateFailed while the old one keeps serving). Loading a served model (`load_served`) lives here
too: the node loads on-demand models the same way."""

from __future__ import annotations

import logging
import threading

from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import is_final, move, update_body
from bedrock_local.jobs.model_sources import KIND_EMBEDDING, ModelFilesUnavailable, ModelSource, load_engine
from bedrock_local.jobs.protocol import Handler, JobContext, LeaseLost, too_many_interruptions
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore
from bedrock_local.store.database import Database
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.serving")

DEPLOYMENT_JOB = "model-deployment"
UPDATING, UPDATE_COMPLETED, UPDATE_FAILED = "Updating", "UpdateCompleted", "UpdateFailed"
SMOKE_TIMEOUT = 600.0  # seconds the first answer of a freshly loaded model may take


class LoadFailed(Exception):
    """A model could not be loaded or did not answer; the message says why."""


class Served:
    """One loaded model: a text engine (a ContinuousBatcher on transformers, a VllmServer on vLLM, or
    an AdapterEngine on a shared VllmServer for a LoRA custom model) or an embedder for an embedding one.
    `shared`: the hold on a vLLM engine this node shares between the models it serves (`SHARED`), None
    for an engine of its own."""

    def __init__(self, source: ModelSource, kind: str):
        self.source = source
        self.kind = kind
        self.engine = None
        self.size = 0  # bytes of its weights (and a vLLM engine's KV cache); 0 for an engine without weights
        self.base = None  # the engine load_engine loaded (an adapter's base engine; else `engine` itself)
        self.shared: SharedHold | None = None

    @property
    def memory_key(self):
        """What its memory is counted under: one shared engine's memory is counted once for all its holders."""
        return self.shared.key if self.shared is not None else id(self)

    def close(self, drain: bool = True) -> None:
        if self.kind == KIND_EMBEDDING:
            return
        if self.shared is not None:
            if self.engine is not self.shared.engine:
                self.engine.close(drain=drain)  # an AdapterEngine: takes no more requests; its base stays
            self.shared.release(drain)  # the shared engine closes with its last holder
            return
        self.engine.close(drain=drain)
        if self.base is not None and self.base is not self.engine:
            self.base.close(drain=drain)  # an adapter's base engine of its own (a Provisioned Throughput's)


def load_served(source: ModelSource, settings: Settings, objects: ObjectStore, max_batch: int | None = None) -> Served:
    """Fetch the weights, load the model and check that it answers (blocking: run it in a thread).
    An engine without weights (engine/stub_models.py) is built by load_engine at once: nothing to
    fetch, load, check or measure. `max_batch`: the most requests its engine generates for at once
    (a Provisioned Throughput's slots: such a model gets an engine of its own); None: the device's
    default, and on vLLM the engine of the same folder other models of this node already use, if any
    (a LoRA custom model is served on its base's engine: load_engine hands `load` the base's folder)."""
    served = Served(source, KIND_EMBEDDING if source.kind == KIND_EMBEDDING else "text")

    def load(path, adapters: bool = False):
        from bedrock_local.engine.model_cache import model_bytes

        engine, served.shared = _load_weights(source, path, settings, max_batch, adapters)
        served.base = engine
        served.size = engine.memory_bytes() if hasattr(engine, "memory_bytes") else model_bytes(engine.model)
        return engine

    try:
        served.engine = load_engine(source, settings, objects, load)
    except ModelFilesUnavailable as exc:
        raise LoadFailed(f"The model's files could not be fetched: {exc}") from exc
    if served.kind != KIND_EMBEDDING and served.base is not None:  # weights were loaded: they must answer
        try:
            _check_answers(served.engine)
        except LoadFailed:
            served.close(drain=False)
            raise
    return served


def _load_weights(source: ModelSource, path, settings: Settings, max_batch: int | None = None,
                  adapters: bool = False):
    """(engine, shared hold or None) for the weights at `path`: an Embedder (checked with one request),
    or a started text engine of the backend backends.choose picks under `--engine`: a VllmServer (shared
    through SHARED unless `max_batch` asks for one of its own) or a ContinuousBatcher."""
    from bedrock_local.engine import backends

    try:
        if source.kind == KIND_EMBEDDING:
            return _load_embedder(path), None
        backend = backends.choose(settings.engine, path)
    except Exception as exc:
        raise LoadFailed(f"The model could not be loaded: {exc}") from exc
    if backend == backends.VLLM:
        if max_batch is None:
            hold = SHARED.hold(path, settings.vllm_kv_cache_gib, adapters)
            return hold.engine, hold
        return _start_vllm(path, settings.vllm_kv_cache_gib, max_batch, adapters), None
    return _start_batcher(path, max_batch), None


def _load_embedder(path):
    from bedrock_local.engine.embeddings import Embedder
    from bedrock_local.engine.formats import EmbeddingRequest
    from bedrock_local.engine.generation import default_device
    from bedrock_local.engine.loading import load_embedding_model

    device = default_device()
    embedder = Embedder(load_embedding_model(path, device=device), device=device)
    embedder.embed([EmbeddingRequest(text="ping")])
    return embedder


def _start_batcher(path, max_batch: int | None):
    import torch

    from bedrock_local.engine.continuous import ContinuousBatcher
    from bedrock_local.engine.generation import default_device
    from bedrock_local.engine.loading import load_causal_lm

    device = default_device()
    try:
        model, tokenizer = load_causal_lm(path, dtype=torch.float32, device=device)
        batcher = ContinuousBatcher(model, tokenizer, device=device, max_batch=max_batch)
    except Exception as exc:
        raise LoadFailed(f"The model could not be loaded: {exc}") from exc
    batcher.start()
    return batcher


def _start_vllm(path, kv_cache_gib: float, max_batch: int | None, adapters: bool = False):
    from bedrock_local.engine.vllm_serving import VllmServer

    try:
        server = VllmServer(path, kv_cache_gib=kv_cache_gib, max_batch=max_batch, enable_lora=adapters)
        server.start()
    except Exception as exc:
        raise LoadFailed(f"The model could not be loaded on vLLM: {exc}") from exc
    return server


class SharedHold:
    """One holder's use of a shared vLLM engine; `release` it once (again does nothing)."""

    def __init__(self, registry: SharedEngines, key: tuple, engine):
        self.registry, self.key, self.engine = registry, key, engine
        self.released = False

    def release(self, drain: bool = True) -> None:
        if not self.released:
            self.released = True
            self.registry._release(self.key, drain)


class _SharedEntry:
    def __init__(self):
        self.building = threading.Lock()  # held while the engine starts: other holders of it wait
        self.engine = None
        self.holders = 0


class SharedEngines:
    """The vLLM engines of this process (a serving node), one per model folder, KV-cache size and LoRA
    setting, each with the count of the models served on it: deployments and on-demand calls of one
    model share one engine, and every LoRA custom model of a base shares one engine with LoRA enabled
    (LoRA slows every request of an engine, so the base's own deployments keep an engine without it).
    The engine closes when its last holder releases it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[tuple, _SharedEntry] = {}

    def hold(self, path, kv_cache_gib: float, adapters: bool = False) -> SharedHold:
        """A hold on the started engine of `path` (started now if none runs; LoadFailed if it cannot)."""
        from pathlib import Path

        key = (str(Path(path).resolve()), float(kv_cache_gib), bool(adapters))
        with self._lock:
            entry = self._entries.setdefault(key, _SharedEntry())
            entry.holders += 1
        try:
            with entry.building:
                if entry.engine is None:
                    entry.engine = _start_vllm(path, kv_cache_gib, None, adapters)
                    log.info("vLLM engine of %s started for this node's models", Path(path).name)
                else:
                    log.info("vLLM engine of %s shared: %d models on it", Path(path).name, entry.holders)
        except BaseException:
            self._release(key, drain=False, entry=entry)
            raise
        return SharedHold(self, key, entry.engine)

    def _release(self, key: tuple, drain: bool, entry: _SharedEntry | None = None) -> None:
        with self._lock:
            entry = entry or self._entries.get(key)
            if entry is None:
                return
            entry.holders -= 1
            last = entry.holders <= 0
            if last and self._entries.get(key) is entry:
                del self._entries[key]  # a later hold starts a new engine
        if last and entry.engine is not None:
            log.info("vLLM engine of %s: its last model was unloaded; stopping it", key[0].rsplit("/", 1)[-1])
            entry.engine.close(drain=drain)


SHARED = SharedEngines()  # this process's; a serving node is one process


def _check_answers(engine) -> None:
    """A freshly loaded text model must answer one request (else LoadFailed; the caller closes it)."""
    from bedrock_local.engine.streaming import Failed, Finished
    from bedrock_local.engine.formats import TextRequest

    answered = threading.Event()
    outcome: list = []

    def on_event(event):
        if isinstance(event, (Finished, Failed)):
            outcome.append(event)
            answered.set()

    try:
        engine.submit(TextRequest(messages=None, prompt="Hello", system=None, max_tokens=1, temperature=0.0,
                                  top_p=1.0), on_event)
    except Exception as exc:
        raise LoadFailed(f"The model loaded but cannot take a request: {exc}") from exc
    if not answered.wait(SMOKE_TIMEOUT) or not isinstance(outcome[0], Finished):
        why = outcome[0].message if outcome else f"no answer within {SMOKE_TIMEOUT:.0f} s"
        raise LoadFailed(f"The model loaded but did not answer a test request: {why}")


class DeploymentHandler(Handler):
    """The deployment job's steps, each blocking (a serving node runs them in threads). Unlike a
    worker's job, `run` ends with the model loaded and the deployment Active, not with the job done:
    the node serves the model it returns while `renew` says the lease is still its own."""

    kind = DEPLOYMENT_JOB
    ready_status = "Active"  # the resource's status once its model answers

    def claim(self, db: Database, objects: ObjectStore, settings: Settings, node_id: str,
              kinds: tuple[str, ...] | None = None) -> JobContext | None:
        """The next job of `kinds` (default: this handler's) for node `node_id`, claimed with a lease;
        None when none waits."""
        claim = lease.claim(db, node_id, settings.lease_seconds, kinds or (self.kind,))
        if claim is None:
            return None
        return JobContext(db=db, objects=objects, settings=settings, claim=claim, worker_id=node_id)

    def run(self, ctx: JobContext) -> tuple[str, Served] | None:
        """Load the deployment's model, check that it answers and move the deployment Active: its
        ARN and the model to serve, or None when there is none (the deployment was deleted or has
        failed, it failed now, or the lease was lost while the model loaded)."""
        with ctx.db.read_session() as session:
            resource = ctx.resource(session)
            ended = resource is None or is_final(resource)
            arn, body = (None, {}) if resource is None else (resource.arn, dict(resource.body))
        if ended:
            with ctx.db.session() as session, session.begin():
                lease.finish(session, ctx.claim.job_pk, ctx.worker_id)
            return None
        # the job rule (jobs/protocol.py): a claim that got the model served recorded progress
        # (_activate), so only the serving nodes lost in a row while loading it count; too many end it
        # rather than take down another
        lost = too_many_interruptions(ctx.claim)
        if lost:
            self._end_failed(ctx, f"The serving node loading this model was lost {lost} times in a row before "
                                  "it served the model (crashed or killed, perhaps out of memory); it was not "
                                  "tried again.")
            return None
        source = ModelSource.from_json(body["_source"])
        log.info("deployment %s: loading %s", arn, source.reference)
        try:
            served = self.load(ctx, source)
        except LoadFailed as exc:
            log.warning("deployment %s failed: %s", arn, exc)
            self._end_failed(ctx, str(exc))
            return None
        if not self._activate(ctx):
            served.close(drain=False)  # deleted, or taken over, while it loaded
            return None
        log.info("deployment %s: %s", arn, self.ready_status)
        return arn, served

    def load(self, ctx: JobContext, source: ModelSource) -> Served:
        """Load `source` for this job's resource (LoadFailed with the reason)."""
        return load_served(source, ctx.settings, ctx.objects)

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessage=message[:2048])

    def renew(self, ctx: JobContext) -> bool:
        """Renew the lease; whether it is still this node's (else the deployment was deleted or
        another node took it over, and this node unloads it)."""
        ours, _ = lease.heartbeat(ctx.db, ctx.claim.job_pk, ctx.worker_id, ctx.settings.lease_seconds)
        return ours

    def release(self, session, ctx: JobContext) -> None:
        """Give the deployment up (the node is stopping), so another node takes it over at once."""
        lease.release(session, ctx.claim.job_pk, ctx.worker_id)

    def pending_update(self, ctx: JobContext) -> ModelSource | None:
        """The model an UpdateCustomModelDeployment asked for, while that update is Updating."""
        with ctx.db.read_session() as session:
            resource = ctx.resource(session)
            body = {} if resource is None else resource.body
            if (body.get("updateDetails") or {}).get("updateStatus") == UPDATING and body.get("_pendingSource"):
                return ModelSource.from_json(body["_pendingSource"])
        return None

    def update(self, ctx: JobContext, source: ModelSource) -> Served | None:
        """Load `source` for the pending update and record how the update ended: the new model to
        switch to, or None (it failed to load, which is recorded with the reason, or the lease was lost)."""
        try:
            served = self.load(ctx, source)
        except LoadFailed as exc:
            log.warning("deployment update to %s failed: %s", source.reference, exc)
            self._record_update(ctx, source, str(exc))
            return None
        if not self._record_update(ctx, source, None):
            served.close(drain=False)
            return None
        return served

    # ---- writes, each only while this node still holds the lease ------------------------------
    @staticmethod
    def _while_owned(ctx: JobContext, change) -> bool:
        """`change(session, resource)` in one transaction that holds only while this node still owns
        the job; False (nothing written) when it does not, or the deployment is gone."""
        try:
            with ctx.session() as session:
                resource = ctx.resource(session)
                if resource is None:
                    return False
                change(session, resource)
                return True
        except LeaseLost:
            return False

    def _activate(self, ctx: JobContext) -> bool:
        def activate(session, resource: Resource) -> None:
            if resource.status == "Creating":
                move(resource, self.ready_status)
            # loaded and answering: progress, so only nodes lost in a row before serving it count
            ctx.record_progress(session)

        return self._while_owned(ctx, activate)

    def _end_failed(self, ctx: JobContext, message: str) -> None:
        """The deployment Failed and its job done, in one transaction."""
        def end(session, resource: Resource) -> None:
            self.fail(ctx, session, resource, message)
            lease.finish(session, ctx.claim.job_pk, ctx.worker_id)

        self._while_owned(ctx, end)

    def _record_update(self, ctx: JobContext, source: ModelSource, failure: str | None) -> bool:
        def record(session, resource: Resource) -> None:
            if failure is not None:
                update_body(resource, updateDetails={"modelArn": source.reference, "updateStatus": UPDATE_FAILED},
                            failureMessage=failure[:2048], _pendingSource=None)
                return
            resource.ref_arn = source.reference
            update_body(resource, updateDetails={"modelArn": source.reference, "updateStatus": UPDATE_COMPLETED},
                        _source=source.to_json(), _pendingSource=None, failureMessage=None)

        return self._while_owned(ctx, record)
