"""A serving node: the process that keeps models loaded and answers bedrock-runtime requests.

`bedrock-local serve` starts one (or `--serving-workers N`); the API process never loads a model.
A node listens on a local TCP port (node_protocol.py), registers that endpoint in the
`serving_nodes` table and renews it while it lives. It serves two kinds of model:

- deployments: it claims `model-deployment` jobs (jobs/lease.py) and holds each one's lease for as
  long as it serves it. Claiming loads the custom model, checks it answers one request, and moves
  the deployment Creating -> Active (or Failed, with the reason). Each heartbeat renews the lease and
  reads the deployment: an update (`updateDetails.updateStatus` Updating) loads the new model beside
  the old one and switches over only once the new one answers, so no request fails; the old one
  finishes its running requests first. A deleted deployment (its job is gone) is unloaded. If the
  node dies, the lease runs out and another node takes the deployment over.
- on-demand models (foundation models, imported models invoked by ARN): loaded on first use and
  kept, least recently used dropped first when the memory budget is reached.

Text models are served by a ContinuousBatcher (engine/continuous.py): concurrent requests share
decoding steps. Embedding models answer each request as it comes, in a thread. The test models
(engine/stub_models.py) load nothing and answer on the node's event loop; the faults they inject
(InjectedFault: throttling, model errors, ...) go back as error lines naming their exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from bedrock_local.engine.stub_models import InjectedFault, is_test_engine
from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import move
from bedrock_local.jobs.protocol import MAX_ATTEMPTS
from bedrock_local.jobs.model_sources import KIND_EMBEDDING, ModelFilesUnavailable, ModelSource, load_engine
from bedrock_local import node_protocol as protocol
from bedrock_local.settings import Settings
from bedrock_local.storage import open_object_store
from bedrock_local.store import nodes
from bedrock_local.store.database import open_database
from bedrock_local.store.resources import update as update_resource
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.serving")

DEPLOYMENT_JOB = "model-deployment"
UPDATING, UPDATE_COMPLETED, UPDATE_FAILED = "Updating", "UpdateCompleted", "UpdateFailed"
SMOKE_TIMEOUT = 600.0  # seconds the first answer of a freshly loaded model may take


class LoadFailed(Exception):
    """A model could not be loaded or did not answer; the message says why."""


class Served:
    """One loaded model: a continuous batcher for a text model, an embedder for an embedding one."""

    def __init__(self, source: ModelSource, engine, kind: str):
        self.source = source
        self.engine = engine
        self.kind = kind
        self.size = 0

    def close(self, drain: bool = True) -> None:
        if self.kind != KIND_EMBEDDING:
            self.engine.close(drain=drain)


def load_served(source: ModelSource, settings: Settings, objects) -> Served:
    """Fetch the weights, load the model and check that it answers (blocking: run it in a thread).
    A test model (engine/stub_models.py) is built at once: nothing to fetch, load or check."""
    try:
        engine = load_engine(source, settings, objects, lambda path: _load_weights(source, path))
    except ModelFilesUnavailable as exc:
        raise LoadFailed(f"The model's files could not be fetched: {exc}") from exc
    served = Served(source, engine, KIND_EMBEDDING if source.kind == KIND_EMBEDDING else "text")
    if is_test_engine(engine):
        return served
    from bedrock_local.engine.model_cache import model_bytes

    if source.kind == KIND_EMBEDDING:
        served.size = model_bytes(engine.model)
        return served
    _check_answers(engine)
    served.size = model_bytes(engine.model)
    return served


def _load_weights(source: ModelSource, path):
    """An Embedder (checked with one request) or a started ContinuousBatcher for the weights at `path`."""
    import torch

    from bedrock_local.engine.formats import EmbeddingRequest
    from bedrock_local.engine.generation import default_device

    device = default_device()
    try:
        if source.kind == KIND_EMBEDDING:
            from bedrock_local.engine.embeddings import Embedder
            from bedrock_local.engine.loading import load_embedding_model

            embedder = Embedder(load_embedding_model(path, device=device), device=device)
            embedder.embed([EmbeddingRequest(text="ping")])
            return embedder
        from bedrock_local.engine.continuous import ContinuousBatcher
        from bedrock_local.engine.loading import load_causal_lm

        model, tokenizer = load_causal_lm(path, dtype=torch.float32, device=device)
        batcher = ContinuousBatcher(model, tokenizer, device=device)
        batcher.start()
        return batcher
    except Exception as exc:
        raise LoadFailed(f"The model could not be loaded: {exc}") from exc


def _check_answers(batcher) -> None:
    """A freshly loaded text model must answer one request (else it is closed and LoadFailed)."""
    from bedrock_local.engine.continuous import Failed, Finished
    from bedrock_local.engine.formats import TextRequest

    answered = threading.Event()
    outcome: list = []

    def on_event(event):
        if isinstance(event, (Finished, Failed)):
            outcome.append(event)
            answered.set()

    try:
        batcher.submit(TextRequest(messages=None, prompt="Hello", system=None, max_tokens=1, temperature=0.0,
                                   top_p=1.0), on_event)
    except Exception as exc:
        batcher.close(drain=False)
        raise LoadFailed(f"The model loaded but cannot take a request: {exc}") from exc
    if not answered.wait(SMOKE_TIMEOUT) or not isinstance(outcome[0], Finished):
        batcher.close(drain=False)
        why = outcome[0].message if outcome else f"no answer within {SMOKE_TIMEOUT:.0f} s"
        raise LoadFailed(f"The model loaded but did not answer a test request: {why}")


@dataclass
class Deployment:
    job_pk: int
    resource_pk: int
    arn: str
    served: Served
    updating_to: dict | None = None  # the source being loaded for an update
    lost: bool = False


@dataclass
class _OnDemand:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    served: Served | None = None


class ServingNode:
    def __init__(self, settings: Settings, *, host: str = "127.0.0.1"):
        self.settings = settings
        self.host = host
        self.db = open_database(settings.resolved_database_url, migrate=False)
        self.objects = open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
        self.node_id = f"serving:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.endpoint: str | None = None
        self.deployments: dict[str, Deployment] = {}  # by deployment ARN
        self.on_demand: OrderedDict[str, _OnDemand] = OrderedDict()  # by model reference
        self.stopping: asyncio.Event | None = None
        self.loading_jobs: set[int] = set()

    # ---- life ------------------------------------------------------------------------------
    async def run(self, parent_pid: int | None = None) -> None:
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        server = await asyncio.start_server(self._serve_connection, self.host, 0, limit=protocol.MAX_LINE)
        port = server.sockets[0].getsockname()[1]
        self.endpoint = f"{self.host}:{port}"
        await asyncio.to_thread(self._register)
        log.info("serving node %s listening on %s", self.node_id, self.endpoint)
        tasks = [asyncio.create_task(self._claim_loop()), asyncio.create_task(self._heartbeat_loop(parent_pid))]
        try:
            await self.stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            server.close()
            await asyncio.to_thread(self._unregister)
            for deployment in list(self.deployments.values()):
                deployment.served.close(drain=False)
            for entry in self.on_demand.values():
                if entry.served is not None:
                    entry.served.close(drain=False)
            log.info("serving node %s stopped", self.node_id)

    def _ttl(self) -> float:
        return self.settings.lease_seconds

    def _register(self) -> None:
        with self.db.session() as session, session.begin():
            nodes.register(session, self.node_id, self.endpoint, self._ttl())

    def _unregister(self) -> None:
        """Leave the table and give every deployment up, so another node takes them over at once."""
        with contextlib.suppress(Exception), self.db.session() as session, session.begin():
            nodes.remove(session, self.node_id)
            for deployment in self.deployments.values():
                lease.release(session, deployment.job_pk, self.node_id)

    # ---- deployments -----------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            try:
                claim = await asyncio.to_thread(lease.claim, self.db, self.node_id, self.settings.lease_seconds,
                                                (DEPLOYMENT_JOB,))
            except Exception:
                log.warning("claiming a deployment failed: %s", traceback.format_exc(limit=1))
                claim = None
            if claim is None:
                await asyncio.sleep(self.settings.poll_seconds)
                continue
            asyncio.create_task(self._start_deployment(claim))

    def _read_deployment(self, resource_pk: int) -> tuple[str, str, dict] | None:
        with self.db.read_session() as session:
            resource = session.get(Resource, resource_pk)
            if resource is None:
                return None
            return resource.arn, resource.status, dict(resource.body)

    async def _start_deployment(self, claim: lease.Claim) -> None:
        self.loading_jobs.add(claim.job_pk)
        try:
            found = await asyncio.to_thread(self._read_deployment, claim.resource_pk)
            if found is None or found[1] == "Failed":
                await asyncio.to_thread(self._finish_job, claim.job_pk)
                return
            arn, status, body = found
            if claim.attempts > MAX_ATTEMPTS:
                await asyncio.to_thread(self._fail_deployment, claim, (
                    f"The serving node loading this model was lost {claim.attempts - 1} times (crashed or killed, "
                    "perhaps out of memory); it was not tried again."))
                return
            source = ModelSource.from_json(body["_source"])
            log.info("deployment %s: loading %s", arn, source.reference)
            try:
                served = await asyncio.to_thread(load_served, source, self.settings, self.objects)
            except LoadFailed as exc:
                log.warning("deployment %s failed: %s", arn, exc)
                await asyncio.to_thread(self._fail_deployment, claim, str(exc))
                return
            if not await asyncio.to_thread(self._activate, claim):
                served.close(drain=False)  # deleted, or taken over, while it loaded
                return
            self.deployments[arn] = Deployment(claim.job_pk, claim.resource_pk, arn, served)
            log.info("deployment %s: Active", arn)
        finally:
            self.loading_jobs.discard(claim.job_pk)

    def _owned_resource(self, session, job_pk: int, resource_pk: int) -> Resource | None:
        if not lease.still_owned(session, job_pk, self.node_id):
            return None
        return session.get(Resource, resource_pk)

    def _activate(self, claim: lease.Claim) -> bool:
        with self.db.session() as session, session.begin():
            resource = self._owned_resource(session, claim.job_pk, claim.resource_pk)
            if resource is None:
                return False
            if resource.status == "Creating":
                move(resource, "Active")
            return True

    def _fail_deployment(self, claim: lease.Claim, message: str) -> None:
        with self.db.session() as session, session.begin():
            resource = self._owned_resource(session, claim.job_pk, claim.resource_pk)
            if resource is None:
                return
            move(resource, "Failed", failureMessage=message[:2048])
            lease.finish(session, claim.job_pk, self.node_id)

    def _finish_job(self, job_pk: int) -> None:
        with self.db.session() as session, session.begin():
            lease.finish(session, job_pk, self.node_id)

    async def _heartbeat_loop(self, parent_pid: int | None) -> None:
        interval = max(0.2, self.settings.lease_seconds / 5)
        while True:
            await asyncio.sleep(interval)
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("serving node %s: its server (pid %s) is gone; stopping", self.node_id, parent_pid)
                self.stopping.set()
                return
            try:
                await asyncio.to_thread(self._beat)
            except Exception:
                log.warning("serving heartbeat failed: %s", traceback.format_exc(limit=1))
            for deployment in list(self.deployments.values()):
                if deployment.lost:
                    self.deployments.pop(deployment.arn, None)
                    log.info("deployment %s: no longer served here (deleted or taken over); unloading",
                             deployment.arn)
                    await asyncio.to_thread(deployment.served.close, True)
                elif deployment.updating_to is None:
                    pending = await asyncio.to_thread(self._pending_update, deployment)
                    if pending is not None:
                        deployment.updating_to = pending
                        asyncio.create_task(self._update(deployment, ModelSource.from_json(pending)))

    def _beat(self) -> None:
        with self.db.session() as session, session.begin():
            if not nodes.renew(session, self.node_id, self._ttl()):
                nodes.register(session, self.node_id, self.endpoint, self._ttl())
        for job_pk in list(self.loading_jobs):
            lease.heartbeat(self.db, job_pk, self.node_id, self.settings.lease_seconds)
        for deployment in list(self.deployments.values()):
            ours, _ = lease.heartbeat(self.db, deployment.job_pk, self.node_id, self.settings.lease_seconds)
            if not ours:
                deployment.lost = True

    def _pending_update(self, deployment: Deployment) -> dict | None:
        found = self._read_deployment(deployment.resource_pk)
        if found is None:
            return None
        body = found[2]
        if (body.get("updateDetails") or {}).get("updateStatus") == UPDATING and body.get("_pendingSource"):
            return body["_pendingSource"]
        return None

    async def _update(self, deployment: Deployment, source: ModelSource) -> None:
        log.info("deployment %s: updating to %s", deployment.arn, source.reference)
        try:
            served = await asyncio.to_thread(load_served, source, self.settings, self.objects)
        except LoadFailed as exc:
            log.warning("deployment %s: update failed: %s", deployment.arn, exc)
            await asyncio.to_thread(self._record_update, deployment, source, str(exc))
            deployment.updating_to = None
            return
        if not await asyncio.to_thread(self._record_update, deployment, source, None):
            served.close(drain=False)
            deployment.updating_to = None
            return
        old, deployment.served = deployment.served, served  # new requests go to the new model from here
        deployment.updating_to = None
        log.info("deployment %s: now serving %s", deployment.arn, source.reference)
        await asyncio.to_thread(old.close, True)  # the old model finishes what it was doing

    def _record_update(self, deployment: Deployment, source: ModelSource, failure: str | None) -> bool:
        with self.db.session() as session, session.begin():
            resource = self._owned_resource(session, deployment.job_pk, deployment.resource_pk)
            if resource is None:
                return False
            if failure is not None:
                update_resource(resource, updateDetails={"modelArn": source.reference, "updateStatus": UPDATE_FAILED},
                                failureMessage=failure[:2048], _pendingSource=None)
                return True
            resource.ref_arn = source.reference
            update_resource(resource, updateDetails={"modelArn": source.reference, "updateStatus": UPDATE_COMPLETED},
                            _source=source.to_json(), _pendingSource=None, failureMessage=None)
            return True

    # ---- on-demand models ------------------------------------------------------------------
    async def _on_demand(self, source: ModelSource) -> Served:
        entry = self.on_demand.get(source.reference)
        if entry is None:
            entry = self.on_demand[source.reference] = _OnDemand()
        self.on_demand.move_to_end(source.reference)
        async with entry.lock:
            if entry.served is None:
                served = await asyncio.to_thread(load_served, source, self.settings, self.objects)
                await asyncio.to_thread(self._make_room, served.size, source.reference)
                entry.served = served
            return entry.served

    def _make_room(self, size: int, keep: str) -> None:
        from bedrock_local.engine.model_cache import default_memory_budget

        budget = default_memory_budget()
        used = sum(d.served.size for d in self.deployments.values())
        loaded = [(ref, e) for ref, e in self.on_demand.items() if e.served is not None and ref != keep]
        used += sum(e.served.size for _, e in loaded)
        for ref, entry in loaded:  # least recently used first
            if used + size <= budget:
                break
            log.info("unloading on-demand model %s to make room", ref)
            served, entry.served = entry.served, None
            used -= served.size
            served.close(drain=True)

    # ---- requests --------------------------------------------------------------------------
    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            message = protocol.decode(line)
            await self._answer(message, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:
            log.error("serving request failed: %s", traceback.format_exc())
            with contextlib.suppress(Exception):
                writer.write(protocol.encode(protocol.error("InternalServerException", f"The model failed: {exc}")))
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _served_for(self, target: dict) -> Served | dict:
        if "deployment" in target:
            deployment = self.deployments.get(target["deployment"])
            if deployment is None:
                return protocol.error("ModelNotReadyException",
                                      "The deployment is not being served at the moment (it is starting or moving "
                                      "to another serving node); retry shortly.")
            return deployment.served
        try:
            return await self._on_demand(ModelSource.from_json(target["source"]))
        except LoadFailed as exc:
            return protocol.error("ModelErrorException", str(exc))

    async def _answer(self, message: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = await self._served_for(message["target"])
        if isinstance(served, dict):
            writer.write(protocol.encode(served))
            await writer.drain()
            return
        if message["task"] == "embedding":
            await self._answer_embedding(served, message["request"], writer)
        else:
            await self._answer_text(served, message, reader, writer)

    async def _answer_embedding(self, served: Served, request: dict, writer) -> None:
        from bedrock_local.engine.formats import EmbeddingRequest

        if served.kind != KIND_EMBEDDING:
            reply = protocol.error("ValidationException", "This model generates text; it cannot embed.")
        elif is_test_engine(served.engine):  # microseconds: answered here, its faults as their exceptions
            reply = self._test_embedding(served.engine, [EmbeddingRequest(**item) for item in request["items"]])
        else:
            items = [EmbeddingRequest(**item) for item in request["items"]]
            results = await asyncio.to_thread(served.engine.embed, items)
            reply = {"done": {"results": [{"vector": r.vector, "input_tokens": r.input_tokens} for r in results]}}
        writer.write(protocol.encode(reply))
        await writer.drain()

    @staticmethod
    def _test_embedding(engine, items) -> dict:
        from bedrock_local.engine.formats import FormatError

        try:
            results = engine.invoke(items)
        except InjectedFault as fault:
            return protocol.error(fault.code, fault.message)
        except FormatError as exc:
            return protocol.error("ValidationException", str(exc))
        return {"done": {"results": [{"vector": r.vector, "input_tokens": r.input_tokens} for r in results]}}

    async def _answer_text(self, served: Served, message: dict, reader, writer) -> None:
        from bedrock_local.engine.continuous import Failed, Finished, TextDelta
        from bedrock_local.engine.formats import FormatError, TextRequest

        if served.kind == KIND_EMBEDDING:
            writer.write(protocol.encode(protocol.error("ValidationException",
                                                        "This is an embedding model; it cannot generate text.")))
            await writer.drain()
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        submission = None
        for _ in range(3):
            try:
                submission = served.engine.submit(TextRequest(**message["request"]),
                                                  lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
                break
            except FormatError as exc:
                writer.write(protocol.encode(protocol.error("ValidationException", str(exc))))
                await writer.drain()
                return
            except InjectedFault as fault:  # a test model's fault: the exception it names
                writer.write(protocol.encode(protocol.error(fault.code, fault.message)))
                await writer.drain()
                return
            except RuntimeError:  # this batcher is closing: an update has just switched to another model
                served = await self._served_for(message["target"])
                if isinstance(served, dict):
                    break
        if submission is None:
            writer.write(protocol.encode(protocol.error("ModelNotReadyException",
                                                        "The model is being replaced; retry shortly.")))
            await writer.drain()
            return
        gone = asyncio.create_task(reader.read(1))  # the API closed the connection: the client went away
        try:
            while True:
                getter = asyncio.create_task(events.get())
                done, _ = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    submission.cancel()
                    return
                event = getter.result()
                if isinstance(event, TextDelta):
                    writer.write(protocol.encode({"delta": event.text}))
                elif isinstance(event, Finished):
                    writer.write(protocol.encode({"done": event.result.__dict__}))
                    await writer.drain()
                    return
                elif isinstance(event, Failed):
                    writer.write(protocol.encode(protocol.error("ModelErrorException", event.message)))
                    await writer.drain()
                    return
                await writer.drain()
        finally:
            gone.cancel()


def node_main(settings: Settings, threads: int | None = None, parent_pid: int | None = None) -> None:
    """Entry point of a serving process started by `serve` (or on its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threads:
        import torch
        torch.set_num_threads(threads)
    from bedrock_local.engine import aliases
    aliases.install(settings.model_aliases)  # checked by the command that started this process
    node = ServingNode(settings)
    started = time.monotonic()
    try:
        asyncio.run(node.run(parent_pid))
    finally:
        log.info("serving node ran %.0f s", time.monotonic() - started)


def start_serving_processes(settings: Settings, count: int, threads: int | None) -> list:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(count):
        process = context.Process(target=node_main, args=(settings, threads, os.getpid()),
                                  name=f"bedrock-local-serving-{index}", daemon=True)
        process.start()
        processes.append(process)
    return processes
