"""What the benchmarks share besides the process harness (bedrock_local/testing): the packaged
SmolLM2 as a plain HF folder, the machine's load, a process's CPU seconds, an interpolated
percentile and a temporary work dir."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

SMOLLM2_ID = "huggingface.smollm2-135m-instruct-v1:0"
# the server's open mode takes any key (every key is its default account)
BENCH_ACCESS_KEY, BENCH_SECRET_KEY = "AKIDBENCH", "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc; 0 without one."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def percentile(values: list[float], q: float) -> float:
    """Linearly interpolated percentile, q in 0..1; nan when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool, say=print):
    """A fresh temporary folder for the run, removed at the end unless `keep` (then `say` where it is)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def materialized_folder(cache_dir: Path, model_id: str = SMOLLM2_ID) -> tuple[Path, float]:
    """A packaged model (SmolLM2 by default) as a plain HF folder in `<cache-dir>/foundation-models` (the
    server's cache, under its lock), and the seconds spent converting (about 0 when it was there)."""
    from bedrock_local.engine.catalog import find_foundation_model
    from bedrock_local.engine.loading import materialize_foundation_model

    cache = cache_dir / "foundation-models"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = materialize_foundation_model(find_foundation_model(model_id), cache)
    return folder, time.perf_counter() - started
