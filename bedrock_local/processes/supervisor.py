"""The supervisor of a process's children: it starts a fixed number of slots, each with its own
start function, starts a slot's process again when it dies (killed, out of memory, crashed: any exit
but a clean one or one asked for with SIGTERM / SIGINT), with a back-off for processes that keep
dying young, and stops them all. `serve` uses it for its worker and serving processes, and the
`worker` and `serving` commands for theirs when they run several (`--processes N`: `run_command`);
it knows nothing of what the processes do."""

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable

from bedrock_local.settings import Settings
from bedrock_local.storage import open_object_store, sweep_leftovers

log = logging.getLogger("bedrock_local.supervisor")

RESPAWN_DELAY_SECONDS = (0.5, 30.0)  # a process that died is started again after 0.5 s, doubling to 30 s while
# each one dies within a minute of its start
YOUNG_SECONDS = 60  # a process that dies sooner after its start counts as a death in a row
# exit codes of a process that stopped as asked: 0 (its own SIGTERM handler), or killed by SIGTERM/SIGINT
# before it installed one (a stop of the whole process group while it was starting)
ASKED_TO_STOP = {0, -signal.SIGTERM, -signal.SIGINT}


class Supervisor(threading.Thread):
    """Keeps a process in each slot of `processes`: `start_one(slot)` starts the slot's process, and a
    replacement goes into the same list slot, so `stop` stops the replacements too. Replacements that
    die within YOUNG_SECONDS of their start wait longer each time (RESPAWN_DELAY_SECONDS)."""

    def __init__(self, processes: list, start_one: Callable[[int], multiprocessing.Process], what: str = "process",
                 after_death: Callable[[], None] | None = None):
        super().__init__(name=f"bedrock-local-{what}-supervisor", daemon=True)
        self.processes, self.start_one, self.what = processes, start_one, what
        self.after_death = after_death  # run once per death noticed, before the replacement is due
        self.slots = len(processes)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.young_deaths = [0] * self.slots  # deaths in a row within YOUNG_SECONDS of the start
        self.started = [time.monotonic()] * self.slots
        self.due: list[float | None] = [None] * self.slots

    @classmethod
    def start_slots(cls, count: int, start_one: Callable[[int], multiprocessing.Process], respawn: bool = True,
                    what: str = "process", after_death: Callable[[], None] | None = None) -> list[multiprocessing.Process]:
        """Start `count` processes (`start_one(slot)` each); with `respawn`, one that dies is started
        again until `stop_processes` is called on the list answered."""
        processes = [start_one(slot) for slot in range(count)]
        if respawn and count:
            supervisor = cls(processes, start_one, what, after_death)
            _supervisors.append(supervisor)
            supervisor.start()
        return processes

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            for slot in range(self.slots):
                with self.lock:
                    if self.stopping.is_set():
                        return
                    self._check(slot)

    def _check(self, slot: int) -> None:
        process = self.processes[slot]
        if process.exitcode is None or process.exitcode in ASKED_TO_STOP:
            return
        now = time.monotonic()
        if self.due[slot] is None:
            young = now - self.started[slot] < YOUNG_SECONDS
            self.young_deaths[slot] = self.young_deaths[slot] + 1 if young else 0
            delay = min(RESPAWN_DELAY_SECONDS[0] * 2 ** max(0, self.young_deaths[slot] - 1), RESPAWN_DELAY_SECONDS[1])
            self.due[slot] = now + delay
            log.warning("%s process %s (pid %s) ended with exit code %s; starting another in %.1f s",
                        self.what, process.name, process.pid, process.exitcode, delay)
            if self.after_death is not None:
                self.after_death()
            return
        if now >= self.due[slot]:
            self.processes[slot] = self.start_one(slot)
            self.started[slot], self.due[slot] = time.monotonic(), None
            log.info("%s process %s started again (pid %s)", self.what, self.processes[slot].name,
                     self.processes[slot].pid)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()


_supervisors: list[Supervisor] = []


def threads_per_worker(count: int) -> int | None:
    """The cores this process may use, split between `count` children; None leaves torch's own
    choice when the user set OMP_NUM_THREADS."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, len(os.sched_getaffinity(0)) // max(1, count))


def leftover_sweep(settings: Settings) -> Callable[[], None]:
    """What to run when a child dies: the sweep (in the background) of the temp files a kill may have
    left in the store and the cache, so they go now rather than at the command's next start."""

    def sweep() -> None:
        sweep_leftovers(open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options),
                        settings.cache_dir)

    return sweep


def start_children(target: Callable, args: tuple, count: int, what: str, respawn: bool = True,
                   after_death: Callable[[], None] | None = None) -> list[multiprocessing.Process]:
    """Start `count` processes that run `target(*args, parent_pid)` (spawned: no state of this process
    shared), named bedrock-local-<what>-<slot>; with `respawn`, supervised until `stop_processes`.
    `parent_pid` lets a child stop when this process is gone (killed without a chance to stop it)."""
    context = multiprocessing.get_context("spawn")
    parent = os.getpid()

    def start_one(slot: int) -> multiprocessing.Process:
        process = context.Process(target=target, args=(*args, parent), name=f"bedrock-local-{what}-{slot}",
                                  daemon=True)
        process.start()
        return process

    return Supervisor.start_slots(count, start_one, respawn, what, after_death)


def stop_processes(*groups: list[multiprocessing.Process], timeout: float = 10.0) -> None:
    """Stop the supervisors of each list of processes in `groups` (if any), then the processes: SIGTERM
    to all at once, and SIGKILL to those still alive after `timeout` seconds."""
    for processes in groups:
        for supervisor in [s for s in _supervisors if s.processes is processes]:
            supervisor.stop()
            _supervisors.remove(supervisor)
    every = [process for processes in groups for process in processes]
    for process in every:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in every:
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()


def run_command(main: Callable, settings: Settings, count: int, what: str, timeout: float = 10.0) -> None:
    """The body of the `worker` and `serving` commands: `main(settings)` in this process when `count`
    is 1; else `count` supervised children (start_children) and nothing else, kept, dead ones started
    again, until this process gets SIGTERM or SIGINT, then stopped (stop_processes)."""
    if count <= 1:
        main(settings)
        return
    asked = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: asked.set())
    processes = start_children(main, (settings, threads_per_worker(count)), count, what,
                               after_death=leftover_sweep(settings))
    log.info("supervising %d %s process(es): %s", count, what, ", ".join(str(p.pid) for p in processes))
    while not asked.wait(1.0):
        pass
    log.info("stopping %d %s process(es)", count, what)
    stop_processes(processes, timeout=timeout)
