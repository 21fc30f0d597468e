"""The supervisor of a server's child processes: it starts a fixed number of slots, each with its own
start function, starts a slot's process again when it dies (killed, out of memory, crashed: any exit
but a clean one), and stops them all. `serve` uses it for its worker processes (processes/worker.py);
it knows nothing of what the processes do."""

import logging
import multiprocessing
import threading
import time
from typing import Callable

log = logging.getLogger("bedrock_local.supervisor")

RESPAWN_DELAY_SECONDS = (0.5, 30.0)  # a process that died is started again after 0.5 s, doubling to 30 s while
# each one dies within a minute of its start
YOUNG_SECONDS = 60  # a process that dies sooner after its start counts as a death in a row


class Supervisor(threading.Thread):
    """Keeps a process in each slot of `processes`: `start_one(slot)` starts the slot's process, and a
    replacement goes into the same list slot, so `stop` stops the replacements too. Replacements that
    die within YOUNG_SECONDS of their start wait longer each time (RESPAWN_DELAY_SECONDS)."""

    def __init__(self, processes: list, start_one: Callable[[int], multiprocessing.Process], what: str = "process"):
        super().__init__(name=f"bedrock-local-{what}-supervisor", daemon=True)
        self.processes, self.start_one, self.what = processes, start_one, what
        self.slots = len(processes)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.young_deaths = [0] * self.slots  # deaths in a row within YOUNG_SECONDS of the start
        self.started = [time.monotonic()] * self.slots
        self.due: list[float | None] = [None] * self.slots

    @classmethod
    def start_slots(cls, count: int, start_one: Callable[[int], multiprocessing.Process], respawn: bool = True,
                    what: str = "process") -> list[multiprocessing.Process]:
        """Start `count` processes (`start_one(slot)` each); with `respawn`, one that dies is started
        again until `stop_processes` is called on the list answered."""
        processes = [start_one(slot) for slot in range(count)]
        if respawn and count:
            supervisor = cls(processes, start_one, what)
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
        if not process.exitcode:  # alive, or it stopped as asked (SIGTERM to the whole process group)
            return
        now = time.monotonic()
        if self.due[slot] is None:
            young = now - self.started[slot] < YOUNG_SECONDS
            self.young_deaths[slot] = self.young_deaths[slot] + 1 if young else 0
            delay = min(RESPAWN_DELAY_SECONDS[0] * 2 ** max(0, self.young_deaths[slot] - 1), RESPAWN_DELAY_SECONDS[1])
            self.due[slot] = now + delay
            log.warning("%s process %s (pid %s) ended with exit code %s; starting another in %.1f s",
                        self.what, process.name, process.pid, process.exitcode, delay)
            return
        if now >= self.due[slot]:
            self.processes[slot] = self.start_one(slot)
            self.started[slot], self.due[slot] = time.monotonic(), None

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()


_supervisors: list[Supervisor] = []


def stop_processes(processes: list[multiprocessing.Process], timeout: float = 10.0) -> None:
    """Stop the supervisor of `processes` (if any), then the processes: SIGTERM, and SIGKILL to those
    still alive after `timeout` seconds."""
    for supervisor in [s for s in _supervisors if s.processes is processes]:
        supervisor.stop()
        _supervisors.remove(supervisor)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
