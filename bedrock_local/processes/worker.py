"""Worker processes: each claims jobs from the queue, runs the handler of the job's kind with a
heartbeat thread renewing its lease, honours Stop, and ends the job (done, or failed with a
message a user can act on); a worker with no job to claim runs a shard of another worker's batch
job (jobs/shards.py). `bedrock-local serve` starts them, `bedrock-local worker` runs one on any host
that shares the database and object store; ML work runs only here."""

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
import uuid

from bedrock_local.jobs import lease
from bedrock_local.jobs.protocol import MAX_ATTEMPTS, Handler, JobContext, JobStopped, LeaseLost
from bedrock_local.jobs.lifecycle import is_final
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore, open_object_store
from bedrock_local.store.database import Database, open_database
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.worker")

RESPAWN_DELAY_SECONDS = (0.5, 30.0)  # a worker that died is started again after 0.5 s, doubling to 30 s while
# each one dies within a minute of its start


def handlers() -> dict[str, Handler]:
    from bedrock_local.jobs.handlers.batch_inference import BatchInferenceHandler
    from bedrock_local.jobs.handlers.customization import CustomizationHandler
    from bedrock_local.jobs.handlers.model_copy import ModelCopyHandler
    from bedrock_local.jobs.handlers.model_import import ModelImportHandler
    return {h.kind: h for h in (ModelImportHandler(), ModelCopyHandler(), BatchInferenceHandler(),
                                CustomizationHandler())}


class Worker:
    def __init__(self, settings: Settings, db: Database | None = None, objects: ObjectStore | None = None):
        self.settings = settings
        self.db = db or open_database(settings.resolved_database_url, migrate=False)
        self.objects = objects or open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handlers = handlers()
        self.stopping = threading.Event()

    def run_forever(self, parent_pid: int | None = None) -> None:
        """Claim and run jobs until stopped; a worker started by `serve` also stops when that server
        is gone (killed without a chance to stop it), instead of running on as an orphan."""
        log.info("worker %s started", self.worker_id)
        while not self.stopping.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("worker %s: its server (pid %s) is gone; stopping", self.worker_id, parent_pid)
                return
            if not self.run_once():
                self.stopping.wait(self.settings.poll_seconds)

    def run_once(self) -> bool:
        claim = lease.claim(self.db, self.worker_id, self.settings.lease_seconds, tuple(self.handlers))
        if claim is None:
            return self._run_shard()
        self._run(claim)
        return True

    def _run_shard(self) -> bool:
        """Run one shard of a running batch job held by another worker, if any is claimable."""
        from bedrock_local.jobs import shards

        try:
            claim = shards.claim(self.db, self.worker_id, self.settings.lease_seconds)
        except Exception:  # a passing database error: the next poll tries again
            log.warning("claiming a shard failed: %s", traceback.format_exc(limit=1))
            return False
        if claim is None:
            return False
        log.info("worker %s runs shard %s of job %s", self.worker_id, claim.number, claim.job_pk)
        try:
            self.handlers[claim.kind].run_shard(self.db, self.objects, self.settings, self.worker_id, claim)
        except Exception:  # the shard's lease runs out and another worker takes it over
            log.error("shard %s of job %s: %s", claim.number, claim.job_pk, traceback.format_exc())
        return True

    def _run(self, claim: lease.Claim) -> None:
        handler = self.handlers[claim.kind]
        checkpoint = dict(claim.checkpoint or {})
        progress_attempt = checkpoint.pop(lease.SAVED_IN_ATTEMPT, 0)
        ctx = JobContext(self.db, self.objects, self.settings, claim, self.worker_id, checkpoint)
        with self.db.read_session() as session:
            resource = session.get(Resource, claim.resource_pk)
        if resource is None or is_final(resource):
            if resource is not None:
                handler.ended(ctx, resource)
            self._end(ctx, None)
            return
        # Attempts after the one that saved the last checkpoint were all lost (their worker was killed
        # or crashed) before saving another: a job that keeps killing its worker at one point ends here,
        # while one that gets further between interruptions is resumed as often as it takes.
        interrupted = claim.attempts - 1 - progress_attempt
        if interrupted >= MAX_ATTEMPTS:
            since = "since its last checkpoint" if progress_attempt else "before its first checkpoint"
            self._end(ctx, lambda s, r: handler.fail(
                ctx, s, r, f"The job was interrupted {interrupted} times in a row {since} (its worker was lost: "
                           f"killed or crashed while running it) and was not retried again."))
            return
        beat = threading.Thread(target=self._heartbeat, args=(ctx,), daemon=True)
        beat.start()
        try:
            handler.run(ctx)
            self._end(ctx, lambda s, r: handler.fail(
                ctx, s, r, f"The job ended in status {r.status} without a result (an internal error)."))
        except LeaseLost:
            log.warning("job %s: lease lost, leaving it to its new owner", claim.job_pk)
        except JobStopped:
            self._end(ctx, lambda s, r: handler.stopped(ctx, s, r))
        except Exception as exc:  # the job fails; the worker goes on
            log.error("job %s failed: %s", claim.job_pk, traceback.format_exc())
            message = str(exc) or exc.__class__.__name__
            self._end(ctx, lambda s, r: handler.fail(ctx, s, r, message))
        finally:
            ctx._done.set()
            beat.join(timeout=5)

    def _end(self, ctx: JobContext, record) -> None:
        with self.db.session() as session, session.begin():
            if not lease.finish(session, ctx.claim.job_pk, self.worker_id):
                log.warning("job %s: lease lost before it ended, leaving it to its new owner", ctx.claim.job_pk)
                return
            resource = session.get(Resource, ctx.resource_pk)
            # the job row is done in the same transaction as the resource's last move: never one
            # without the other, so no resource is left in a running status with nothing to run it
            if record is not None and resource is not None and not is_final(resource):
                record(session, resource)

    def _heartbeat(self, ctx: JobContext) -> None:
        lease.keep_lease(ctx, self.settings.lease_seconds, lambda: lease.heartbeat(
            self.db, ctx.claim.job_pk, self.worker_id, self.settings.lease_seconds, ctx.progress), "heartbeat")


def worker_main(settings: Settings, threads: int | None = None, parent_pid: int | None = None) -> None:
    """Entry point of a worker process; `threads` splits the CPU cores between the workers of a host;
    `parent_pid` is the server that started it (None for a `bedrock-local worker` of its own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if threads:
        import torch
        torch.set_num_threads(threads)
    from bedrock_local.engine import aliases
    aliases.install(settings.model_aliases)  # checked by the command that started this process
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stopping.set())
    worker.run_forever(parent_pid)


def threads_per_worker(count: int) -> int | None:
    """The cores this process may use, split between `count` workers; None leaves torch's own
    choice when the user set OMP_NUM_THREADS."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, len(os.sched_getaffinity(0)) // max(1, count))


class _Respawner(threading.Thread):
    """Starts a worker process of `serve` again when it dies (killed, out of memory, crashed: any exit
    but a clean one), so a server keeps its --workers; the job it held is taken over by whichever
    worker claims it once its lease runs out. Replacements go into the same list slot, so
    stop_worker_processes stops them too. Replacements that die within a minute of their start wait
    longer each time (RESPAWN_DELAY_SECONDS)."""

    def __init__(self, processes: list, start_one):
        super().__init__(name="bedrock-local-worker-respawner", daemon=True)
        self.processes, self.start_one = processes, start_one
        self.slots = len(processes)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.young_deaths = [0] * self.slots  # deaths in a row within a minute of the start
        self.started = [time.monotonic()] * self.slots
        self.due: list[float | None] = [None] * self.slots

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for index in range(self.slots):
                with self.lock:
                    if self.stopping.is_set():
                        return
                    self._check(index)

    def _check(self, index: int) -> None:
        process = self.processes[index]
        if not process.exitcode:  # alive, or it stopped as asked (SIGTERM to the whole process group)
            return
        now = time.monotonic()
        if self.due[index] is None:
            young = now - self.started[index] < 60
            self.young_deaths[index] = self.young_deaths[index] + 1 if young else 0
            delay = min(RESPAWN_DELAY_SECONDS[0] * 2 ** max(0, self.young_deaths[index] - 1), RESPAWN_DELAY_SECONDS[1])
            self.due[index] = now + delay
            log.warning("worker process %s (pid %s) ended with exit code %s; starting another in %.1f s",
                        process.name, process.pid, process.exitcode, delay)
            return
        if now >= self.due[index]:
            self.processes[index] = self.start_one(index)
            self.started[index], self.due[index] = time.monotonic(), None

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()


_respawners: list[_Respawner] = []


def start_worker_processes(settings: Settings, count: int, respawn: bool = True) -> list[multiprocessing.Process]:
    """Start `count` worker processes of this server; with `respawn`, one that dies is started again
    until stop_worker_processes is called."""
    context = multiprocessing.get_context("spawn")

    def start_one(index: int) -> multiprocessing.Process:
        process = context.Process(target=worker_main, args=(settings, threads_per_worker(count), os.getpid()),
                                  name=f"bedrock-local-worker-{index}", daemon=True)
        process.start()
        return process

    processes = [start_one(index) for index in range(count)]
    if respawn and count:
        respawner = _Respawner(processes, start_one)
        _respawners.append(respawner)
        respawner.start()
    return processes


def stop_worker_processes(processes: list[multiprocessing.Process], timeout: float = 10.0) -> None:
    for respawner in [r for r in _respawners if r.processes is processes]:
        respawner.stop()
        _respawners.remove(respawner)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
