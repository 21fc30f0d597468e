"""A serving node: the process that keeps models loaded and answers bedrock-runtime requests on a
TCP port (node_protocol.py; `--serving-host`, TLS with `--serving-tls-cert`), registered in the
`serving_nodes` table with the address API nodes reach it at while it lives. It answers only requests
signed with the cluster secret, each once (node_protocol.ReplayGuard); any other connection is
logged and closed.

It serves deployments and Provisioned Throughputs, whose jobs it claims and runs through their handler
(jobs/handlers/deployment.py: load, check, Active; jobs/handlers/provisioned.py: the same on the
throughput's own copy with its model units' slots, InService) and keeps while it holds their lease, and
on-demand models (foundation models by id or ARN), loaded on first use and dropped least recently
used first when the memory budget is reached. How deployments move between nodes, update and
unload: docs/serving.md. `serve` and `serving --processes N` start nodes as supervised children
(processes/supervisor.py: a dead one is started again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from bedrock_local import node_protocol as protocol
from bedrock_local.engine.errors import ModelCallError
from bedrock_local.engine.formats import EmbeddingRequest, FormatError, TextRequest
from bedrock_local.jobs.handlers.deployment import DeploymentHandler, LoadFailed, Served, load_served
from bedrock_local.jobs.handlers.provisioned import ProvisionedThroughputHandler
from bedrock_local.jobs.model_sources import KIND_EMBEDDING, ModelSource
from bedrock_local.jobs.protocol import JobContext
from bedrock_local.processes.supervisor import leftover_sweep, start_children
from bedrock_local.settings import Settings
from bedrock_local.storage import open_object_store
from bedrock_local.store import nodes, resources
from bedrock_local.store.database import open_database

log = logging.getLogger("bedrock_local.serving")
AUTH_TIMEOUT = 30.0  # seconds a connection has to finish its TLS handshake, and then to send its signed request


@dataclass
class Deployment:
    ctx: JobContext  # its job, claimed by this node
    arn: str
    served: Served
    handler: DeploymentHandler  # of its job's kind: a deployment's or a Provisioned Throughput's
    updating_to: ModelSource | None = None  # the model being loaded for an update
    lost: bool = False


@dataclass
class _OnDemand:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    served: Served | None = None


class ServingNode:
    def __init__(self, settings: Settings, *, host: str | None = None):
        self.settings = settings
        self.host = host or settings.serving_host
        self.db = open_database(settings.resolved_database_url, migrate=False)
        self.guard = protocol.ReplayGuard(protocol.cluster_secret(settings, self.db))
        self.objects = open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
        self.node_id = f"serving:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.endpoint: str | None = None
        self.handler = DeploymentHandler()
        # the long-lived jobs a node claims, by job kind; one lease machinery for all of them
        self.handlers = {h.kind: h for h in (self.handler, ProvisionedThroughputHandler())}
        self.deployments: dict[str, Deployment] = {}  # by deployment ARN
        self.on_demand: OrderedDict[str, _OnDemand] = OrderedDict()  # by model reference
        self.stopping: asyncio.Event | None = None
        self.loading: dict[int, JobContext] = {}  # deployment jobs whose model is loading, by job
        self.background: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks

    def _start_task(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    # ---- life ------------------------------------------------------------------------------
    async def run(self, parent_pid: int | None = None) -> None:
        self.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        tls = protocol.server_tls(self.settings)
        server = await asyncio.start_server(self._serve_connection, self.host, 0, limit=protocol.MAX_LINE, ssl=tls,
                                            ssl_handshake_timeout=AUTH_TIMEOUT if tls else None)
        port = server.sockets[0].getsockname()[1]
        self.endpoint = protocol.endpoint(protocol.advertised_host(self.settings), port, tls is not None)
        await asyncio.to_thread(self._register)
        log.info("serving node %s listening on %s:%s%s, registered as %s", self.node_id, self.host, port,
                 " (TLS)" if tls else "", self.endpoint)
        loops = [self._start_task(self._claim_loop()), self._start_task(self._heartbeat_loop(parent_pid))]
        try:
            await self.stopping.wait()
        finally:
            for task in loops:
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
                deployment.handler.release(session, deployment.ctx)

    # ---- deployments -----------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while True:
            try:
                ctx = await asyncio.to_thread(self.handler.claim, self.db, self.objects, self.settings, self.node_id,
                                              tuple(self.handlers))
            except Exception:
                log.warning("claiming a deployment failed: %s", traceback.format_exc(limit=1))
                ctx = None
            if ctx is None:
                await asyncio.sleep(self.settings.poll_seconds)
                continue
            self._start_task(self._start_deployment(ctx))

    async def _start_deployment(self, ctx: JobContext) -> None:
        handler = self.handlers[ctx.claim.kind]
        held = next((d for d in self.deployments.values() if d.ctx.claim.job_pk == ctx.claim.job_pk), None)
        if held is not None and not await asyncio.to_thread(self._exists, held.arn):
            # the resource it served was deleted and the new job took its row number (SQLite reuses
            # the highest one) before a heartbeat noticed: the old copy goes, the new job loads
            self.deployments.pop(held.arn, None)
            log.info("deployment %s: no longer served here (deleted); unloading", held.arn)
            await asyncio.to_thread(held.served.close, True)
            held = None
        if held is not None or ctx.claim.job_pk in self.loading:
            # this node claimed again a job it holds (its lease ran out while a heavy load starved the
            # heartbeat): the copy it has or is loading serves it; a second concurrent load would
            # only race the first
            log.info("job %s is already held by this node; not loading it twice", ctx.claim.job_pk)
            return
        self.loading[ctx.claim.job_pk] = ctx
        try:
            started = await asyncio.to_thread(handler.run, ctx)
        finally:
            self.loading.pop(ctx.claim.job_pk, None)
        if started is not None:
            arn, served = started
            self.deployments[arn] = Deployment(ctx, arn, served, handler)

    def _exists(self, arn: str) -> bool:
        with self.db.read_session() as session:
            return resources.find_by_arn(session, arn) is not None

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
                    pending = await asyncio.to_thread(deployment.handler.pending_update, deployment.ctx)
                    if pending is not None:
                        deployment.updating_to = pending
                        self._start_task(self._update(deployment, pending))

    def _beat(self) -> None:
        with self.db.session() as session, session.begin():
            if not nodes.renew(session, self.node_id, self._ttl()):
                nodes.register(session, self.node_id, self.endpoint, self._ttl())
        for ctx in list(self.loading.values()):
            self.handler.renew(ctx)
        for deployment in list(self.deployments.values()):
            if not self.handler.renew(deployment.ctx):
                deployment.lost = True

    async def _update(self, deployment: Deployment, source: ModelSource) -> None:
        log.info("deployment %s: updating to %s", deployment.arn, source.reference)
        served = await asyncio.to_thread(deployment.handler.update, deployment.ctx, source)
        deployment.updating_to = None
        if served is None:
            return
        old, deployment.served = deployment.served, served  # new requests go to the new model from here
        log.info("deployment %s: now serving %s", deployment.arn, source.reference)
        await asyncio.to_thread(old.close, True)  # the old model finishes what it was doing

    # ---- on-demand models ------------------------------------------------------------------
    async def _on_demand(self, source: ModelSource) -> Served:
        entry = self.on_demand.get(source.reference)
        if entry is None:
            entry = self.on_demand[source.reference] = _OnDemand()
        self.on_demand.move_to_end(source.reference)
        async with entry.lock:
            if entry.served is None:
                served = await asyncio.to_thread(load_served, source, self.settings, self.objects)
                await asyncio.to_thread(self._make_room, served, source.reference)
                entry.served = served
                log.info("serving node %s: loaded on-demand model %s", self.node_id, source.reference)
            return entry.served

    def _make_room(self, new: Served, keep: str) -> None:
        """Unload on-demand models, least recently used first, until the models held (`new` among them)
        fit the memory budget. An engine several models share (deployment.SharedEngines: one vLLM
        engine for a base and its LoRA custom models) counts once, and is freed only with its last model."""
        from bedrock_local.engine.model_cache import default_memory_budget

        budget = default_memory_budget()
        loaded = [(ref, e) for ref, e in self.on_demand.items() if e.served is not None and ref != keep]
        for ref, entry in loaded:  # least recently used first
            if self._used_bytes(new) <= budget:
                break
            log.info("unloading on-demand model %s to make room", ref)
            served, entry.served = entry.served, None
            served.close(drain=True)

    def _used_bytes(self, new: Served) -> int:
        held = [d.served for d in self.deployments.values()]
        held += [e.served for e in self.on_demand.values() if e.served is not None]
        sizes = {served.memory_key: served.size for served in [*held, new]}
        return sum(sizes.values())

    # ---- requests --------------------------------------------------------------------------
    async def _read_signed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The request line of a connection, once its signature header checks out; None (after one
        WARNING line naming the peer and the reason, and an error line to it) for anything else."""
        peer = writer.get_extra_info("peername")
        header = b""
        try:
            header = await asyncio.wait_for(reader.readexactly(len(protocol.MAGIC)), AUTH_TIMEOUT)
            if header == protocol.MAGIC:
                header += await asyncio.wait_for(reader.readexactly(protocol.HEADER_LEN - len(protocol.MAGIC)),
                                                 AUTH_TIMEOUT)
                line = await asyncio.wait_for(reader.readline(), AUTH_TIMEOUT)
            else:
                line = b""
            self.guard.check(header, line)
            return line
        except protocol.Refused as exc:
            reason = str(exc)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not header:  # connected and closed: a port probe
                log.info("serving node %s: a connection from %s closed without a request", self.node_id, _peer(peer))
                return None
            reason = "the connection closed before a signed request was read"
        except asyncio.TimeoutError:
            reason = f"no signed request within {AUTH_TIMEOUT:g} s"
        except ValueError:  # a line longer than MAX_LINE
            reason = "request line too long"
        log.warning("serving node %s refused a connection from %s: %s", self.node_id, _peer(peer), reason)
        with contextlib.suppress(Exception):  # an API node with another secret learns why (docs/deploy.md)
            writer.write(protocol.encode(protocol.error(
                "InternalServerException", f"The serving node refused the request: {reason}.")))
            await writer.drain()
        return None

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await self._read_signed(reader, writer)
            if line is None:
                return
            message = protocol.decode(line)
            await self._answer(message, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
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
        elif message["task"] == "count":  # CountTokens (service/count_tokens.py)
            await self._answer_count(served, message["request"], writer)
        else:
            await self._answer_text(served, message, reader, writer)

    async def _answer_embedding(self, served: Served, request: dict, writer) -> None:
        if served.kind != KIND_EMBEDDING:
            reply = protocol.error("ValidationException", "This model generates text; it cannot embed.")
        else:
            items = [EmbeddingRequest(**item) for item in request["items"]]
            # a runtime call goes to the engine's `invoke` where it has one (an engine that counts its
            # calls apart from a batch job's records), else to `embed`
            call = getattr(served.engine, "invoke", None) or served.engine.embed
            try:
                if getattr(served.engine, "answers_inline", False):  # no weights: nothing to wait for
                    results = call(items)
                else:
                    results = await asyncio.to_thread(call, items)
            except (FormatError, ModelCallError) as exc:
                reply = _refused(exc)
            else:
                reply = {"done": {"results": [{"vector": r.vector, "input_tokens": r.input_tokens} for r in results]}}
        writer.write(protocol.encode(reply))
        await writer.drain()

    async def _answer_count(self, served: Served, request: dict, writer) -> None:
        """`{"done": {"input_tokens": n}}`: the prompt tokens generation would read for `request`
        (engine/token_count.py), counted on the event loop as `submit` renders its prompts."""
        from bedrock_local.engine.token_count import prompt_tokens

        if served.kind == KIND_EMBEDDING:
            reply = protocol.error("ValidationException", "The provided model doesn't support counting tokens.")
        else:
            try:
                reply = {"done": {"input_tokens": prompt_tokens(served.engine, TextRequest(**request))}}
            except FormatError as exc:
                reply = _refused(exc)
        writer.write(protocol.encode(reply))
        await writer.drain()

    async def _answer_text(self, served: Served, message: dict, reader, writer) -> None:
        from bedrock_local.engine.streaming import Failed, Finished, TextDelta, ToolInputDelta, ToolUseStart

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
            except (FormatError, ModelCallError) as exc:
                writer.write(protocol.encode(_refused(exc)))
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
                elif isinstance(event, ToolUseStart):  # a tool call begins; its input follows in pieces
                    writer.write(protocol.encode({"tool_use": {"toolUseId": event.tool_use_id,
                                                               "name": event.name}}))
                elif isinstance(event, ToolInputDelta):
                    writer.write(protocol.encode({"tool_input": event.text}))
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


def _peer(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


def _refused(exc: Exception) -> dict:
    """The error line of a request the model refused before answering: one its body format rules
    out (FormatError: ValidationException), or a ModelCallError as the exception it names."""
    if isinstance(exc, ModelCallError):
        return protocol.error(exc.code, exc.message)
    return protocol.error("ValidationException", str(exc))


def node_main(settings: Settings, threads: int | None = None, parent_pid: int | None = None) -> None:
    """Entry point of a serving process: one started by `serve` or by `serving --processes N` (which
    supervise it: `parent_pid` is theirs), or `serving` running one node in its own process."""
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
    """Start `count` serving processes of this server, each started again when it dies
    (processes/supervisor.py, the leftovers of its kill swept) until stop_processes is called on the
    list answered."""
    return start_children(node_main, (settings, threads), count, "serving", after_death=leftover_sweep(settings))
