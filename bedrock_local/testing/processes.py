"""Child processes that can always be stopped: each runs in a session of its own (so that a signal to
its process group, or a sweep of its session, reaches every process it started), its output appended
to a log file; stopping is SIGTERM to the group, a wait, then SIGKILL. Also free ports and waiting
for a process to listen. Standard library only: quickstart imports this at start-up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOG_TAIL = 4000  # characters of a log quoted in an error


class ProcessExited(RuntimeError):
    """The process ended while it was waited on to get ready."""

    def __init__(self, process: Process):
        self.returncode = process.returncode
        super().__init__(f"{process.name} exited with {process.returncode}:\n{process.log_tail()}")


class StartTimeout(RuntimeError):
    """The process did not get ready in time (it is left running: the caller stops it)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def bedrock_local_command(subcommand: str, *args) -> list[str]:
    """`bedrock-local <subcommand> ARGS` run by this interpreter (no console script needed)."""
    return [sys.executable, "-m", "bedrock_local.cli", subcommand, *(str(arg) for arg in args)]


def _proc_members(field: int) -> Callable[[int], list[int]]:
    """Live (not zombie) processes whose /proc stat field `field` (2: process group, 3: session, counted
    after the command name) equals a value; zombies are left out, they are dead already."""

    def members(value: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[field]) == value:
                found.append(int(entry.name))
        return found

    return members


children_of = _proc_members(1)
group_members = _proc_members(2)
session_members = _proc_members(3)


def spawned_children(pid: int) -> set[int]:
    """The live processes that `pid` started through multiprocessing's spawn (its worker and serving
    processes; not its resource tracker)."""
    found = set()
    for child in children_of(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            continue
    return found


def _group_alive(group: int) -> bool:
    if Path("/proc/self/stat").exists():
        return bool(group_members(group))
    try:  # no /proc (macOS): zombies count as alive here
        os.killpg(group, 0)
        return True
    except OSError:
        return False


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Process(subprocess.Popen):
    """A child process in a session of its own, stdout and stderr appended to `log` (None: discarded).
    `kill()`, `send_signal()` and `wait()` are Popen's and reach this process alone; `stop()`,
    `kill_group()` and `kill_session()` reach every process it started."""

    def __init__(self, command: list, log: Path | None = None, *, env: dict | None = None, cwd: Path | None = None,
                 name: str | None = None):
        self.log = Path(log) if log is not None else None
        self.name = name or Path(str(command[0])).name
        command = [str(part) for part in command]
        if self.log is None:
            super().__init__(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
                             start_new_session=True)
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as handle:
            super().__init__(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)

    @property
    def running(self) -> bool:
        return self.poll() is None

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
        """Until `ready()` is true; ProcessExited if the process ends first, StartTimeout after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            if self.poll() is not None:
                raise ProcessExited(self)
            if ready():
                return
            if time.monotonic() > deadline:
                raise StartTimeout(f"{self.name} did not {what} in {timeout:g} s:\n{self.log_tail()}")
            time.sleep(interval)

    def wait_for_port(self, port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
        self.wait_until(lambda: listens(port, host), timeout, f"listen on {port}")

    def stop(self, timeout: float = 30.0, *, first_signal: int = signal.SIGTERM, linger: float = 5.0) -> int | None:
        """`first_signal` (with SIGCONT, for a stopped process) to the process group, up to `timeout` s for
        the process to end, then SIGKILL to the group. Processes of the group that outlive it (workers
        that finish a step before they stop) get `linger` s more, then SIGKILL. Answers the exit code."""
        group = self.pid  # its own session: the group id is its pid
        if self.poll() is None:
            _signal_group(group, first_signal)
            _signal_group(group, signal.SIGCONT)
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(group, signal.SIGKILL)
                self.wait(10)
        deadline = time.monotonic() + linger
        while _group_alive(group):
            if time.monotonic() > deadline:
                _signal_group(group, signal.SIGKILL)
                break
            time.sleep(0.05)
        return self.returncode

    def kill_group(self) -> None:
        """kill -9 of the process and every process of its group."""
        if self.poll() is None:
            _signal_group(self.pid, signal.SIGKILL)
            self.wait(10)

    def kill_session(self, rounds: int = 3) -> None:
        """kill -9 of every process of its session, found in /proc: for programs whose children start
        process groups of their own (a Ray node: raylet, its workers, agents)."""
        for _ in range(rounds):
            found = session_members(self.pid)
            if not found:
                break
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
        try:
            self.wait(10)
        except subprocess.TimeoutExpired:
            pass
