"""Worker processes: each claims jobs from the queue, runs the handler of the job's kind (with the
executor its settings pick) while a heartbeat thread renews its lease, honours Stop, and ends the job
(done, or failed with a message a user can act on); a worker with no job to claim runs a shard of
another worker's batch job (jobs/shards.py). `bedrock-local serve` starts them (through
processes/supervisor.py, which starts a dead one again), `bedrock-local worker` runs one (or, with
`--processes N`, supervises N) on any host that shares the database and object store; ML work runs
only here."""

import logging
import multiprocessing
import os
import signal
import socket
import threading
import traceback
import uuid

from bedrock_local.jobs import executors, lease
from bedrock_local.jobs.handlers import handlers
from bedrock_local.jobs.lifecycle import is_final
from bedrock_local.jobs.protocol import JobContext, JobStopped, LeaseLost, ShardContext, too_many_interruptions
from bedrock_local.processes.supervisor import leftover_sweep, start_children, threads_per_worker
from bedrock_local.settings import Settings
from bedrock_local.storage import ObjectStore, open_object_store
from bedrock_local.store.database import Database, open_database
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.worker")


class Worker:
    def __init__(self, settings: Settings, db: Database | None = None, objects: ObjectStore | None = None):
        self.settings = settings
        self.db = db or open_database(settings.resolved_database_url, migrate=False)
        self.objects = objects or open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handlers = handlers()
        self.executor = executors.for_settings(settings)
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

    def _context(self, context, claim, **more):
        return context(db=self.db, objects=self.objects, settings=self.settings, claim=claim,
                       worker_id=self.worker_id, executor=self.executor, **more)

    def _run_shard(self) -> bool:
        """Run one shard of a running batch job held by another worker, if any is claimable."""
        try:
            claim = lease.claim_shard(self.db, self.worker_id, self.settings.lease_seconds)
        except Exception:  # a passing database error: the next poll tries again
            log.warning("claiming a shard failed: %s", traceback.format_exc(limit=1))
            return False
        if claim is None:
            return False
        log.info("worker %s runs shard %s of job %s", self.worker_id, claim.number, claim.job_pk)
        try:
            self.handlers[claim.kind].run_shard(self._context(ShardContext, claim))
        except Exception:  # the shard's lease runs out and another worker takes it over
            log.error("shard %s of job %s: %s", claim.number, claim.job_pk, traceback.format_exc())
        return True

    def _run(self, claim: lease.Claim) -> None:
        handler = self.handlers[claim.kind]
        checkpoint = dict(claim.checkpoint or {})
        saved_in = checkpoint.pop(lease.SAVED_IN_ATTEMPT, 0)
        ctx = self._context(JobContext, claim, checkpoint=checkpoint)
        with self.db.read_session() as session:
            resource = session.get(Resource, claim.resource_pk)
        if resource is None or is_final(resource):
            if resource is not None:
                handler.ended(ctx, resource)
            self._end(ctx, None)
            return
        interrupted = too_many_interruptions(claim)
        if interrupted:
            since = "since its last checkpoint" if saved_in else "before its first checkpoint"
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
            ctx.finish()
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


def start_worker_processes(settings: Settings, count: int, respawn: bool = True) -> list[multiprocessing.Process]:
    """Start `count` worker processes of this server; with `respawn`, one that dies is started again
    (processes/supervisor.py, the leftovers of its kill swept) until stop_processes is called."""
    return start_children(worker_main, (settings, threads_per_worker(count)), count, "worker", respawn,
                          after_death=leftover_sweep(settings))
