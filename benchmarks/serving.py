"""Serving benchmark: concurrent bedrock-runtime clients on one custom model deployment of the real
SmolLM2-135M-Instruct, against the same requests served one at a time.

The server: `bedrock-local serve --workers 0 --serving-workers 1` as a real subprocess on a free
port (a fresh data dir, `--cache-dir` shared with the tests so the packaged GGUF is converted once):
one API process and one serving process (processes/serving.py) that holds the model and batches
concurrent requests with a ContinuousBatcher (engine/continuous.py). The model is imported with
CreateCustomModel from an HF folder copied into the embedded object store
(`<data-dir>/s3/<bucket>/<key>`); the import is a job, so a first server on the same data dir
(`--workers 1 --serving-workers 0`) runs it and stops. The measured server then deploys it with
CreateCustomModelDeployment; requests name the deployment's ARN. None of that is timed.

The cells: for each concurrency (`--concurrency 1,8,32`), that many client threads, each with its
own boto3 bedrock-runtime client, send Converse requests back to back (greedy, `maxTokens` =
`--max-tokens`, short prompts that differ from request to request). Each client's first request is
warm-up and asks for a share of maxTokens (client i of N: (i + 1) / N of it), so that the clients'
requests end, and their next ones join the batch, at decoding steps spread over a request's length,
as independent users' do; N clients that all start together would otherwise stay in lock-step
rounds (static batching). The measured window opens once `--warmup` seconds have passed and every
first request is done, and lasts `--duration` seconds; requests under way at its end run to their
end. The first requests are streamed (whatever the cell) and all arrive at once: a request sent
before the last of them got its first token waited behind that one-off prefill, so the percentiles
leave it out. Output tokens are the real ones, `usage.outputTokens`; each request's are spread evenly over its
life (call to answer) and the part inside the window counts, so that a window holding a handful of
64-token requests is not rounded to whole requests; latency percentiles are over the requests that
finish inside the window. Then a ConverseStream cell per concurrency
(`--stream-duration`, 0 = none), the same way: the time to first token (from the call to the first
contentBlockDelta event) and the stream's end-to-end latency.

The baseline, measured in the same run: the 1-client Converse cell (the same requests served one at
a time); every cell's output tok/s is divided by it, and the goal line says whether 32 clients
(the largest concurrency) reach 6x. A second reference: the per-request `model.generate` loop a user
would write (same model folder, float32, same prompts, greedy, max_new_tokens = `--max-tokens`),
one request at a time in a child process of its own, for `--reference-duration` seconds, so the
server's per-request overhead shows.

CPU: the seconds of CPU (user + system, /proc) of the serving process, the API process and this
benchmark process (the boto3 clients) during each window, as cores busy. `--profile DIR` records the
serving and API processes with py-spy during an extra cell at the largest concurrency (after the
measured ones, not in the table) and prints where their time goes.

    python -m benchmarks.serving                                  # 1, 8, 32 clients x 60 s, ~15-20 minutes
    python -m benchmarks.serving --duration 20 --warmup 5 --stream-duration 10 --reference-duration 20
    python -m benchmarks.serving --profile /tmp/serving-profile   # + where the time goes
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bedrock_local import testing
from benchmarks.common import (
    BENCH_ACCESS_KEY,
    BENCH_SECRET_KEY,
    CLK_TCK,
    cpu_seconds,
    loadavg,
    materialized_folder,
    work_dir,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".test-cache"  # the tests' shared cache: the GGUF is converted there once
ACCOUNT, REGION = "123456789012", "us-east-1"  # the server's open mode: every key is this account
MODEL_BUCKET = "bench-models"
GOAL = 6.0  # output tok/s at the largest concurrency over the 1-client cell, on CPU

TOPICS = [
    "the moon", "coffee", "a rainy day", "bicycles", "the ocean", "autumn leaves", "a small cat", "volcanoes",
    "the city at night", "honey bees", "chess", "a mountain lake", "trains", "bread", "the desert", "owls",
    "a lighthouse", "snow", "music", "gardens", "the stars", "an old library", "rivers", "the wind", "robots",
    "tea", "a forest path", "whales", "the sun", "friendship", "maps", "clocks",
]
TEMPLATES = [
    "Write a short poem about {}.",
    "Tell me three facts about {}.",
    "Describe {} in a few sentences.",
    "Write a short story about {}.",
    "Explain {} to a child.",
]


def make_prompts() -> list[str]:
    """Short prompts, all different: topic-major so that consecutive requests differ in both."""
    return [template.format(topic) for topic in TOPICS for template in TEMPLATES]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------------------------
# Processes


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU ticks of each thread of a process."""
    ticks = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def environ_of(pid: int) -> dict[str, str]:
    with contextlib.suppress(OSError):
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
    return {}


def vm_hwm(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Server(testing.Server):
    """`bedrock-local serve --workers W --serving-workers S` in a session of its own."""

    start_timeout = 120.0

    def __init__(self, data_dir: Path, cache_dir: Path, log: Path, env: dict, workers: int = 0,
                 serving_workers: int = 1):
        super().__init__(data_dir, workers=workers, serving_workers=serving_workers, cache_dir=cache_dir,
                         log_level="warning", log=log, env=env, cwd=REPO)

    def serving_pid(self) -> int:
        """The serving process: the API process's multiprocessing (spawn) child."""
        found = [pid for pid in children_of(self.process.pid)
                 if "spawn_main" in cmdline(pid) and "resource_tracker" not in cmdline(pid)]
        if len(found) != 1:
            raise RuntimeError(f"expected one serving process under {self.process.pid}, found {found}")
        return found[0]

    def client(self, service: str = "bedrock", session=None):
        return super().client(service=service, access_key=BENCH_ACCESS_KEY, secret_key=BENCH_SECRET_KEY,
                              session=session, read_timeout=900, connect_timeout=10, max_pool_connections=2)


def wait_for(what: str, read, field: str, timeout: float = 600) -> tuple[dict, float]:
    """Poll `read()` until its `field` is Active (raise on Failed or after `timeout`)."""
    started = time.perf_counter()
    while (found := read())[field] != "Active":
        if found[field] == "Failed" or time.perf_counter() - started > timeout:
            raise RuntimeError(f"{what}: {found[field]} after {time.perf_counter() - started:.0f} s: "
                               f"{found.get('failureMessage')}")
        time.sleep(0.5)
    return found, time.perf_counter() - started


def import_model(server: Server, folder: Path) -> tuple[str, float]:
    """CreateCustomModel from a copy of the HF folder in the embedded object store (a job: the
    server needs a worker); answers (model ARN, seconds to Active)."""
    bedrock = server.client()
    name = f"bench-smollm2-{uuid.uuid4().hex[:6]}"
    shutil.copytree(folder, server.data_dir / "s3" / MODEL_BUCKET / name, ignore=shutil.ignore_patterns(".*"))
    model = bedrock.create_custom_model(
        modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": f"s3://{MODEL_BUCKET}/{name}/"}})["modelArn"]
    _, seconds = wait_for("CreateCustomModel", lambda: bedrock.get_custom_model(modelIdentifier=model), "modelStatus")
    return model, seconds


def deploy(server: Server, model: str) -> tuple[str, float]:
    """CreateCustomModelDeployment; answers (deployment ARN, seconds to Active)."""
    bedrock = server.client()
    arn = bedrock.create_custom_model_deployment(modelDeploymentName=f"bench-{uuid.uuid4().hex[:6]}", modelArn=model)[
        "customModelDeploymentArn"]
    _, seconds = wait_for("CreateCustomModelDeployment",
                          lambda: bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=arn), "status")
    return arn, seconds


# --------------------------------------------------------------------------------------------
# The clients


@dataclass
class Request:
    index: int
    start: float
    end: float
    output_tokens: int = 0
    input_tokens: int = 0
    stop_reason: str = ""
    ttft: float | None = None  # streams: seconds from the call to the first contentBlockDelta
    error: str | None = None
    ramp: bool = False  # a client's first request (warm-up, a share of maxTokens)


@dataclass
class Cell:
    api: str  # "Converse" | "ConverseStream"
    clients: int
    window: tuple[float, float]
    requests: list[Request]
    cpu: dict[str, float]  # CPU seconds in the window: serving, api, clients
    threads: dict[int, int]  # the serving process's threads: CPU ticks in the window
    load: str = ""
    drain_s: float = 0.0
    warmup_s: float = 0.0  # from the start to the window: --warmup, or longer until every ramp request was done

    @property
    def settled(self) -> float:
        """When the last first (ramp) request got its first token: the clients' first requests all
        arrive at once and are prefilled together, and a request sent before that prefill was over
        waited behind it, a one-off of the warm-up."""
        firsts = [r.start + r.ttft if r.ttft is not None else r.end for r in self.requests if r.ramp]
        return max(firsts, default=self.window[0])

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def counted(self) -> list[Request]:
        """Answered requests that finished inside the measured window, sent after the warm-up's
        first prefill (see `settled`): the ones the latency and TTFT percentiles are over."""
        return [r for r in self.requests if r.error is None and not r.ramp and r.start >= self.settled
                and self.window[0] <= r.end <= self.window[1]]

    @property
    def behind_warmup(self) -> int:
        """Requests that finished inside the window but were sent before the warm-up's first prefill
        was over (left out of the percentiles; their tokens count)."""
        return sum(1 for r in self.requests if r.error is None and not r.ramp and r.start < self.settled
                   and self.window[0] <= r.end <= self.window[1])

    @property
    def errors(self) -> list[Request]:
        return [r for r in self.requests if r.error is not None and r.end >= self.window[0]]

    def share(self, request: Request) -> float:
        """The part of a request's life (from the call to the answer's end) inside the window."""
        inside = min(request.end, self.window[1]) - max(request.start, self.window[0])
        return max(0.0, inside) / max(request.end - request.start, 1e-9)

    @property
    def tokens(self) -> float:
        """Output tokens generated inside the window: each answered request's usage.outputTokens
        spread evenly over its life, the part inside the window (requests that straddle an end of
        the window count in part, so a window holding few requests is not rounded to whole ones)."""
        return sum(r.output_tokens * self.share(r) for r in self.requests if r.error is None)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds

    @property
    def rps(self) -> float:
        return sum(self.share(r) for r in self.requests if r.error is None) / self.seconds

    def cores(self, part: str) -> float:
        return self.cpu[part] / self.seconds


def converse_once(client, model: str, prompt: str, max_tokens: int, stream: bool, index: int) -> Request:
    messages = [{"role": "user", "content": [{"text": prompt}]}]
    config = {"maxTokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    try:
        if stream:
            response = client.converse_stream(modelId=model, messages=messages, inferenceConfig=config)
            ttft, usage, reason = None, None, ""
            for event in response["stream"]:
                if "contentBlockDelta" in event:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                elif "messageStop" in event:
                    reason = event["messageStop"]["stopReason"]
                elif "metadata" in event:
                    usage = event["metadata"]["usage"]
            if usage is None:
                raise RuntimeError("the stream ended without a metadata event")
            return Request(index, start, time.perf_counter(), usage["outputTokens"], usage["inputTokens"], reason,
                           ttft)
        answer = client.converse(modelId=model, messages=messages, inferenceConfig=config)
        return Request(index, start, time.perf_counter(), answer["usage"]["outputTokens"],
                       answer["usage"]["inputTokens"], answer["stopReason"])
    except Exception as exc:  # noqa: BLE001  (counted and shown as errors)
        return Request(index, start, time.perf_counter(), error=f"{type(exc).__name__}: {exc}"[:300])


def ramp_tokens(client: int, clients: int, max_tokens: int) -> int:
    """maxTokens of a client's first request: client i of N asks for (i + 1) / N of maxTokens, so that
    the clients' requests end, and the next ones join the batch, at decoding steps spread evenly
    over a request's length, as independent users' do (all N starting together would keep them in
    lock-step rounds: static batching)."""
    return max(1, round(max_tokens * (client + 1) / clients))


def run_cell(server: Server, serving_pid: int, model: str, prompts: list[str], clients: int, warmup: float,
             duration: float, max_tokens: int, stream: bool, first_index: int = 0) -> Cell:
    """`clients` threads, each with its own boto3 client, sending requests back to back. The
    measured window starts once `warmup` seconds have passed and every client's first (ramp)
    request is done, and lasts `duration` seconds; requests started before its end run to their
    end. The CPU of the serving process, the API process and this process is read at both ends."""
    import boto3

    boto_clients = [server.client("bedrock-runtime", session=boto3.session.Session()) for _ in range(clients)]
    counter = itertools.count(first_index)
    requests: list[Request] = []
    barrier = threading.Barrier(clients + 1)
    ramped = threading.Semaphore(0)
    stop_at = [float("inf")]

    def loop(number: int, client) -> None:
        barrier.wait()
        ramp = True
        while ramp or time.perf_counter() < stop_at[0]:
            index = next(counter)
            tokens = ramp_tokens(number, clients, max_tokens) if ramp else max_tokens
            # the first request is streamed whatever the cell: its first token tells when it was admitted
            done = converse_once(client, model, prompts[index % len(prompts)], tokens, stream or ramp, index)
            done.ramp = ramp
            requests.append(done)
            if ramp:
                ramp = False
                ramped.release()
            if done.error is not None:
                time.sleep(0.2)  # a failing server: do not spin

    threads = [threading.Thread(target=loop, args=(i, c), daemon=True) for i, c in enumerate(boto_clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for _ in range(clients):
        ramped.acquire()
    time.sleep(max(0.0, started + warmup - time.perf_counter()))
    before = (cpu_seconds(serving_pid), cpu_seconds(server.process.pid), time.process_time(),
              thread_ticks(serving_pid))
    window_start = time.perf_counter()
    stop_at[0] = window_start + duration
    time.sleep(duration)
    after = (cpu_seconds(serving_pid), cpu_seconds(server.process.pid), time.process_time(),
             thread_ticks(serving_pid))
    window_end = time.perf_counter()
    load = loadavg()
    for thread in threads:
        thread.join()
    drain = time.perf_counter() - window_end
    cpu = {"serving": after[0] - before[0], "api": after[1] - before[1], "clients": after[2] - before[2]}
    ticks = {tid: after[3][tid] - before[3].get(tid, 0) for tid in after[3]}
    return Cell("ConverseStream" if stream else "Converse", clients, (window_start, window_end), requests, cpu,
                ticks, load, drain, window_start - started)


# --------------------------------------------------------------------------------------------
# The model.generate reference, in a child process


def reference_child(spec_file: Path) -> None:
    """Load the model as the server does (float32) and run the prompts one at a time with
    `model.generate` for the given seconds (after one warm-up request)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = json.loads(spec_file.read_text())
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], local_files_only=True)
    model.eval()
    load_s = time.perf_counter() - started
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def one(prompt: str) -> tuple[int, int]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=spec["max_tokens"], do_sample=False, pad_token_id=pad)
        new = output[0, inputs["input_ids"].shape[1]:].tolist()
        count = next((i for i, token in enumerate(new) if token in eos), len(new))  # EOS is not an output token
        return count, inputs["input_ids"].shape[1]

    prompts = spec["prompts"]
    one(prompts[-1])  # warm-up
    latencies, tokens, inputs = [], 0, 0
    started, cpu = time.perf_counter(), time.process_time()
    for index in itertools.count():
        if time.perf_counter() - started >= spec["seconds"]:
            break
        t0 = time.perf_counter()
        count, prompt_tokens = one(prompts[index % len(prompts)])
        latencies.append(time.perf_counter() - t0)
        tokens += count
        inputs += prompt_tokens
    spec_file.with_suffix(".result.json").write_text(json.dumps({
        "seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "latencies": latencies, "tokens": tokens, "input_tokens": inputs,
        "threads": torch.get_num_threads(), "load_s": load_s, "torch": torch.__version__,
    }))


def run_reference(model_dir: Path, prompts: list[str], max_tokens: int, seconds: float, work: Path,
                  env: dict) -> dict:
    spec = work / "reference-spec.json"
    spec.write_text(json.dumps({"model_dir": str(model_dir), "prompts": prompts, "max_tokens": max_tokens,
                                "seconds": seconds}))
    subprocess.run([sys.executable, "-m", "benchmarks.serving", "--reference-child", str(spec)], check=True,
                   env=env, cwd=REPO)
    return json.loads(spec.with_suffix(".result.json").read_text())


# --------------------------------------------------------------------------------------------
# py-spy


_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
PROFILE_RATE = 100  # samples per second


@contextlib.contextmanager
def py_spy(pids: dict[str, int], folder: Path | None):
    """py-spy record (raw collapsed stacks, every thread, idle ones left out) of each process while
    the block runs; yields {name: file}."""
    if folder is None or shutil.which("py-spy") is None:
        yield {}
        return
    folder.mkdir(parents=True, exist_ok=True)
    running, files = [], {}
    for name, pid in pids.items():
        files[name] = folder / f"{name}.txt"
        running.append(subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads", "--nonblocking",
             "--rate", str(PROFILE_RATE), "--duration", "3600", "--output", str(files[name])],
            stdout=subprocess.DEVNULL, stderr=open(folder / f"{name}.py-spy.log", "w")))
    started = time.perf_counter()
    try:
        yield files
    finally:
        files["seconds"] = time.perf_counter() - started
        for process in running:
            process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read_stacks(collapsed: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    """(thread name, frames root first as (function, file), samples) per line of py-spy's raw output
    (with --threads its first frame is `thread (tid): name`)."""
    stacks = []
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).split(": ", 1)[-1]
        names = []
        for frame in frames:
            found = _FRAME.match(frame)
            names.append((found["name"], "/".join(found["file"].split("/")[-2:])) if found else (frame, ""))
        stacks.append((thread, names, int(count)))
    return stacks


def thread_role(name: str) -> str:
    if name.startswith("asyncio_"):
        return "asyncio to_thread pool"
    if name.startswith("ThreadPoolExecutor"):
        return "thread pool"
    return name


def summarize_profile(collapsed: Path, seconds: float, limit: int = 12) -> dict:
    """Per thread: the share of the wall time it was busy (non-idle samples); for the whole process:
    the functions with the most self samples and the bedrock_local functions by inclusive samples."""
    stacks = read_stacks(collapsed)
    per_thread: dict[str, int] = {}
    own: dict[tuple[str, str], int] = {}
    inclusive: dict[tuple[str, str], int] = {}
    for thread, names, n in stacks:
        per_thread[thread] = per_thread.get(thread, 0) + n
        if names:
            own[names[-1]] = own.get(names[-1], 0) + n
        for key in set(names):
            inclusive[key] = inclusive.get(key, 0) + n
    total = sum(per_thread.values())
    wall_samples = seconds * PROFILE_RATE
    roles: dict[str, float] = {}
    for thread, n in per_thread.items():
        role = thread_role(thread)
        roles[role] = roles.get(role, 0.0) + n / wall_samples
    ours = sorted((k for k in inclusive if k[1].startswith(("engine/", "runtime/", "api/", "service/", "store/",
                                                              "jobs/"))),
                  key=lambda k: -inclusive[k])[:limit]
    label = lambda k: f"{k[0]} ({k[1]})" if k[1] else k[0]  # noqa: E731
    return {"samples": total, "roles": roles,
            "self": [(label(k), own[k] / total) for k in sorted(own, key=lambda k: -own[k])[:limit]] if total else [],
            "ours": [(label(k), inclusive[k] / total) for k in ours] if total else []}


# --------------------------------------------------------------------------------------------


def versions() -> str:
    import boto3
    import torch
    import transformers
    from importlib.metadata import version

    try:
        ours = version("bedrock-local")
    except Exception:  # noqa: BLE001
        ours = "?"
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"boto3 {boto3.__version__}, bedrock-local {ours}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,8,32",
                        help="client threads per cell, comma-separated (default 1,8,32); 1 is always run: it is "
                             "the baseline")
    parser.add_argument("--duration", type=float, default=60, help="measured seconds per Converse cell (default 60)")
    parser.add_argument("--warmup", type=float, default=15,
                        help="seconds each cell runs before its measured window (default 15)")
    parser.add_argument("--stream-duration", type=float, default=30,
                        help="measured seconds per ConverseStream (time to first token) cell; 0 = no stream cells "
                             "(default 30)")
    parser.add_argument("--max-tokens", type=int, default=64, help="inferenceConfig.maxTokens (default 64)")
    parser.add_argument("--reference-duration", type=float, default=60,
                        help="seconds of the one-at-a-time model.generate loop in a child process; 0 = skip "
                             "(default 60)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS / MKL_NUM_THREADS for the server and the reference (serve then leaves "
                             "the serving process's torch thread count to it); 0 = not set: serve gives the serving "
                             "process one thread per core (default 1: a busy 2-core machine)")
    parser.add_argument("--data-dir", type=Path,
                        help="the server's data dir (default: a fresh temporary one, removed at the end)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"the server's --cache-dir, where the packaged GGUF is materialized once "
                             f"(default {DEFAULT_CACHE}, the tests' cache)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after the measured cells, an extra cell at the largest concurrency recorded with py-spy "
                             "(serving and API processes; collapsed stacks kept in DIR); prints where the time goes")
    parser.add_argument("--profile-seconds", type=float, default=30, help="length of the profiled cell (default 30)")
    parser.add_argument("--dump", type=Path, metavar="FILE",
                        help="write every request (cell, start and end relative to the window, TTFT, tokens) as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and the server log")
    parser.add_argument("--reference-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_child:
        reference_child(args.reference_child)
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup below runs: the server has its own session
    concurrency = sorted({1, *(int(c) for c in args.concurrency.split(",") if c.strip())})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(args.threads)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    run_started = time.perf_counter()

    def say(text: str) -> None:
        console.print(f"[{time.perf_counter() - run_started:6.1f}s] {text} [load {loadavg()}]")

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    prompts = make_prompts()
    notes: list[str] = []
    model_dir, convert_s = materialized_folder(args.cache_dir)
    if convert_s > 1:
        notes.append(f"converted the packaged GGUF to an HF folder in {convert_s:.1f} s (once, into --cache-dir; "
                     f"not timed)")
    load_at_start = loadavg()
    reference = None
    cells: list[Cell] = []
    profile: dict[str, dict] = {}
    model_arn = None
    with work_dir("bedrock-local-bench-serving-", args.keep, console.print) as work:
        data_dir = args.data_dir or work / "data"
        if args.reference_duration > 0:
            say(f"reference: model.generate one request at a time, {args.reference_duration:.0f} s, child process ...")
            reference = run_reference(model_dir, prompts, args.max_tokens, args.reference_duration, work, env)
            reference["load"] = loadavg()

        # The import is a job: a server with one job worker and no serving process does it; the measured
        # server (no job worker, one serving process) then serves the same data dir.
        log = work / "server.log"
        importer = Server(data_dir, args.cache_dir, log, env, workers=1, serving_workers=0).start()
        try:
            say(f"import server on {importer.url} (--workers 1 --serving-workers 0): CreateCustomModel from "
                f"{model_dir} ...")
            model_arn, import_s = import_model(importer, model_dir)
        finally:
            importer.stop()
        server = Server(data_dir, args.cache_dir, log, env, workers=0, serving_workers=1).start()
        try:
            say(f"custom model Active in {import_s:.1f} s; server on {server.url} (--workers 0 --serving-workers 1, "
                f"pid {server.process.pid}): CreateCustomModelDeployment ...")
            deployment, deploy_s = deploy(server, model_arn)
            serving_pid = server.serving_pid()
            serving_env = environ_of(serving_pid)
            say(f"deployment Active in {deploy_s:.1f} s: {deployment}; serving process pid {serving_pid}")
            notes.append(f"CreateCustomModel -> Active {import_s:.1f} s (on a --workers 1 --serving-workers 0 server), "
                         f"CreateCustomModelDeployment -> Active {deploy_s:.1f} s (model load and a test request in the "
                         f"serving process); not timed")
            first = 0
            plan = [(c, False, args.duration) for c in concurrency]
            if args.stream_duration > 0:
                plan += [(c, True, args.stream_duration) for c in concurrency]
            for clients, stream, duration in plan:
                api = "ConverseStream" if stream else "Converse"
                say(f"{api}: {clients} client(s), {args.warmup:.0f} s warm-up + {duration:.0f} s ...")
                cell = run_cell(server, serving_pid, deployment, prompts, clients, args.warmup, duration,
                                args.max_tokens, stream, first)
                first += len(cell.requests)
                cells.append(cell)
                say(f"    warm-up {cell.warmup_s:.1f} s; {len(cell.counted)} requests, {cell.tps:.1f} output tok/s, "
                    f"{len(cell.errors)} errors, drained in {cell.drain_s:.1f} s")
            if args.profile:
                clients = max(concurrency)
                say(f"profile: Converse, {clients} clients, {args.profile_seconds:.0f} s under py-spy ...")
                with py_spy({"serving": serving_pid, "api": server.process.pid}, args.profile) as files:
                    profiled = run_cell(server, serving_pid, deployment, prompts, clients, 0, args.profile_seconds,
                                        args.max_tokens, False, first)
                for name, file in files.items():
                    if name != "seconds" and file.exists():
                        profile[name] = summarize_profile(file, files["seconds"])
                profile["cell"] = {"tps": profiled.tps, "requests": len(profiled.counted), "cpu": profiled.cpu,
                                   "seconds": profiled.seconds, "recorded": files.get("seconds", 0.0)}
            serving_hwm, api_hwm = vm_hwm(serving_pid), vm_hwm(server.process.pid)
        finally:
            server.stop()
            if model_arn:  # the server's unpacked copy of the imported model: run-specific, ~540 MB
                shutil.rmtree(args.cache_dir / "models" / ACCOUNT / REGION / model_arn.rsplit("/", 1)[-1],
                              ignore_errors=True)

        if args.dump:
            args.dump.write_text(json.dumps([
                {"api": c.api, "clients": c.clients, "window_s": c.seconds, "warmup_s": c.warmup_s,
                 "settled": c.settled - c.window[0],
                 "requests": [{"index": r.index, "start": r.start - c.window[0], "end": r.end - c.window[0],
                               "ttft": r.ttft, "output_tokens": r.output_tokens, "input_tokens": r.input_tokens,
                               "stop_reason": r.stop_reason, "ramp": r.ramp, "error": r.error} for r in c.requests]}
                for c in cells], indent=1))

        # ---- the table ------------------------------------------------------------------------
        base = {api: next((c for c in cells if c.api == api and c.clients == 1), None)
                for api in ("Converse", "ConverseStream")}
        table = Table(title=f"Serving SmolLM2-135M-Instruct (custom model deployment), greedy, maxTokens "
                            f"{args.max_tokens}; Converse cells {args.duration:.0f} s, ConverseStream cells "
                            f"{args.stream_duration:.0f} s, after {args.warmup:.0f} s warm-up each",
                      title_justify="left")
        for column in ("cell", "requests", "errors", "req/s", "output tok/s", "tok/req", "p50 s", "p99 s",
                       "TTFT p50 s", "TTFT p99 s", "server CPU ms/tok", "cores serving/API/clients", "load avg",
                       "tok/s vs 1 client"):
            table.add_column(column, justify="left" if column == "cell" else "right")
        if reference:
            lat = reference["latencies"]
            ref_tps = reference["tokens"] / reference["seconds"]
            conv = base["Converse"]
            table.add_row("model.generate loop, 1 at a time", str(len(lat)), "-",
                          f"{len(lat) / reference['seconds']:.2f}", f"{ref_tps:.1f}",
                          f"{reference['tokens'] / max(1, len(lat)):.1f}", f"{percentile(lat, 50):.2f}",
                          f"{percentile(lat, 99):.2f}", "-", "-",
                          f"{reference['cpu'] / max(1, reference['tokens']) * 1000:.1f}",
                          f"{reference['cpu'] / reference['seconds']:.2f} (its process)", reference["load"],
                          f"{ref_tps / conv.tps:.2f}x" if conv and conv.tps else "-")
        for cell in cells:
            counted = cell.counted
            lat = [r.end - r.start for r in counted]
            ttft = [r.ttft for r in counted if r.ttft is not None]
            reference_cell = base[cell.api]
            ratio = f"{cell.tps / reference_cell.tps:.2f}x" if reference_cell and reference_cell.tps else "-"
            if cell.clients > 1 and cell.api == "Converse":
                ratio = f"[bold]{ratio}[/bold]"
            server_cpu = (cell.cpu["serving"] + cell.cpu["api"]) / max(1, cell.tokens) * 1000
            table.add_row(f"{'Stream' if cell.api == 'ConverseStream' else cell.api} x{cell.clients}",
                          str(len(counted)), str(len(cell.errors)), f"{cell.rps:.2f}",
                          f"{cell.tps:.1f}", f"{sum(r.output_tokens for r in counted) / max(1, len(counted)):.1f}",
                          f"{percentile(lat, 50):.2f}",
                          f"{percentile(lat, 99):.2f}",
                          f"{percentile(ttft, 50):.2f}" if ttft else "-", f"{percentile(ttft, 99):.2f}" if ttft else "-",
                          f"{server_cpu:.1f}",
                          f"{cell.cores('serving'):.2f}/{cell.cores('api'):.2f}/{cell.cores('clients'):.2f}",
                          cell.load, ratio)
        console.print()
        console.print(table)
        console.print("Converse xN: N client threads sending Converse; Stream xN: the same with ConverseStream (TTFT: "
                      "from the call to the first contentBlockDelta). requests: those that finished inside the "
                      "measured window, sent after the warm-up's first prefill (the latency and TTFT percentiles are theirs); req/s and output tok/s: every "
                      "request's usage.outputTokens spread over its life, the part inside the window. tok/s vs 1 client: output "
                      "tok/s over the 1-client cell of the same API (the same requests served one at a time, "
                      "measured in this run); the model.generate row (one at a time in a child process, no server) is "
                      "over the 1-client Converse cell. server CPU ms/tok: CPU seconds of the serving and API processes "
                      "in the window per output token (the model.generate row: its own process). cores: CPU seconds "
                      "per wall second of the serving process, the API process and this benchmark's client threads.")

        # ---- the goal ----------------------------------------------------------------------------
        conv = base["Converse"]
        top = max((c for c in cells if c.api == "Converse"), key=lambda c: c.clients)
        if conv and conv.tps and top.clients > 1:
            ratio = top.tps / conv.tps
            verdict = "met" if ratio >= GOAL else f"NOT met: {ratio / GOAL:.0%} of the goal, {GOAL - ratio:.2f}x short"
            console.print(f"[bold]goal[/bold]: output tok/s at {top.clients} clients >= {GOAL:.0f}x the 1-client cell "
                          f"on CPU: {top.tps:.1f} / {conv.tps:.1f} = {ratio:.2f}x -> {verdict}")
            per_cpu = [(c.cpu["serving"] + c.cpu["api"]) / max(c.tokens, 1e-9) for c in (conv, top)]
            console.print(f"the same per CPU second of the server (serving + API processes; the load from other work "
                          f"changes how much CPU the serving process gets, this does not): {per_cpu[0] * 1000:.1f} / "
                          f"{per_cpu[1] * 1000:.1f} ms a token = {per_cpu[0] / per_cpu[1]:.2f}x; the serving process "
                          f"got {conv.cores('serving'):.2f} and {top.cores('serving'):.2f} of a core")
        for cell in cells:
            if cell.errors:
                console.print(f"{cell.api} x{cell.clients}: {len(cell.errors)} errors, e.g. {cell.errors[0].error}")
            reasons: dict[str, int] = {}
            for r in cell.counted:
                reasons[r.stop_reason] = reasons.get(r.stop_reason, 0) + 1
            busy = sorted((t for t in cell.threads.values() if t / CLK_TCK / cell.seconds >= 0.05), reverse=True)
            console.print(f"{cell.api} x{cell.clients}: stop reasons {reasons}; mean input tokens "
                          f"{sum(r.input_tokens for r in cell.counted) / max(1, len(cell.counted)):.0f}; serving "
                          f"process threads busy >= 5% of a core: {len(busy)} "
                          f"({', '.join(f'{t / CLK_TCK / cell.seconds:.0%}' for t in busy)}); drained "
                          f"{cell.drain_s:.1f} s after the window; warm-up {cell.warmup_s:.1f} s; "
                          f"{cell.behind_warmup} request(s) that finished in the window were sent before the warm-up's "
                          f"first prefill was over: not in the percentiles")
        if reference and conv and conv.counted:
            lat = reference["latencies"]
            n = len(conv.counted)
            per_token = reference["seconds"] / max(1, reference["tokens"])
            cpu_per_token = reference["cpu"] / max(1, reference["tokens"])
            served = sum(r.end - r.start for r in conv.counted) / n
            tokens = sum(r.output_tokens for r in conv.counted) / n
            served_cpu = (conv.cpu["serving"] + conv.cpu["api"]) / max(conv.tokens, 1e-9) * tokens
            console.print(f"server overhead, 1 client: a Converse request took {served:.3f} s and "
                          f"{served_cpu * 1000:.0f} ms of server CPU (serving + API processes) on average for "
                          f"{tokens:.1f} output tokens; the model.generate loop takes {per_token * 1000:.1f} ms and "
                          f"{cpu_per_token * 1000:.1f} ms of CPU a token, so ~{(served - per_token * tokens) * 1000:.0f} "
                          f"ms of wall time and ~{(served_cpu - cpu_per_token * tokens) * 1000:.0f} ms of CPU a request "
                          f"are the server's (HTTP, the API process, the hop to the serving process, the batcher's "
                          f"bookkeeping; negative: none measurable against the loop's own overhead and the noise of a "
                          f"shared machine); reference: "
                          f"{len(lat)} requests, model load {reference['load_s']:.1f} s, torch threads "
                          f"{reference['threads']}")

        # ---- where the time goes -----------------------------------------------------------------
        if profile:
            cell = profile["cell"]
            console.print()
            console.print(f"[bold]profile[/bold] (py-spy, {PROFILE_RATE} Hz, every non-idle thread; an extra Converse "
                          f"cell of {max(concurrency)} clients, {cell['seconds']:.0f} s, {cell['requests']} requests, "
                          f"{cell['tps']:.1f} tok/s while profiled (py-spy ran {cell['recorded']:.0f} s, from "
                          f"the clients' start to their drain), CPU cores serving / API / clients "
                          f"{cell['cpu']['serving'] / cell['seconds']:.2f} / {cell['cpu']['api'] / cell['seconds']:.2f}"
                          f" / {cell['cpu']['clients'] / cell['seconds']:.2f}); stacks in {args.profile}")
            for name in ("serving", "api"):
                if name not in profile:
                    console.print(f"{name}: no py-spy output (see {args.profile}/{name}.py-spy.log)")
                    continue
                found = profile[name]
                roles = ", ".join(f"{role} {share:.0%}" for role, share in sorted(found["roles"].items(),
                                                                                    key=lambda kv: -kv[1]))
                console.print(f"{name} process: threads busy (non-idle samples over py-spy's wall time): {roles}")
                for title, rows in (("self", found["self"]), ("bedrock_local, inclusive", found["ours"])):
                    top_table = Table(title=f"{name} process, top functions by {title} samples ({found['samples']:,})",
                                      title_justify="left")
                    top_table.add_column("function")
                    top_table.add_column("share", justify="right")
                    for label, share in rows:
                        top_table.add_row(label, f"{share:.1%}")
                    console.print(top_table)

        # ---- environment -------------------------------------------------------------------------
        for note in notes:
            console.print(note)
        threads_note = (f"OMP_NUM_THREADS={serving_env.get('OMP_NUM_THREADS')} in its environment (serve then leaves "
                        f"torch's thread count to it)" if serving_env.get("OMP_NUM_THREADS") else
                        "OMP_NUM_THREADS not set: serve gives it cores // serving workers torch threads")
        console.print(f"environment: {platform.platform()}, {os.cpu_count()} CPUs "
                      f"(affinity {len(os.sched_getaffinity(0))}), load average at start {load_at_start}, at the end "
                      f"{loadavg()}; {versions()}; serving process: {threads_note}, VmHWM {serving_hwm / 2**20:,.0f} "
                      f"MiB; API process VmHWM {api_hwm / 2**20:,.0f} MiB; the clients are threads of this process, "
                      f"on the same cores; whole run {time.perf_counter() - run_started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
