"""Load benchmark: many concurrent boto3 clients against one `bedrock-local serve` (temporary data
dir, SQLite unless --database-url, one worker) while a batch job runs on it, then a check that every
resource the clients created is there exactly once.

- A batch inference job runs for the whole run: --background-records (1,000,000) records for the
  test model `bedrock-local.test-text-v1:0` (the server's record quotas are raised for it), so the
  worker reads input, writes output and records progress the whole time the clients run; it must
  still be InProgress when the load ends, and is stopped then (it must end Stopped).
- Each client thread has its own boto3 client (retries off: every error counts) and runs a weighted
  mix for --seconds: CreateModelInvocationJob (test model, a one-record input: cheap to create and
  to run, a real resource with a real job row), GetModelInvocationJob, ListModelInvocationJobs (up to
  3 pages of 20, following nextToken), TagResource, UntagResource and ListTagsForResource on jobs it
  created. CreateCustomModel and CreateModelCopyJob are left out: an import or a copy moves model
  files on the single worker, which would measure the disk, not the API.
- The same mix runs twice in one run: with 1 client (the baseline) and with --clients (64).
- Afterwards: ListModelInvocationJobs walks every page; each job a client created must be listed
  exactly once under its name, no listed job may be unknown, and the tags a client left on its jobs
  must be what ListTagsForResource answers (checked on up to --verify-tags jobs).

The server runs with `--quota batch-jobs-per-base-model=unlimited`: the AWS default of 20 unfinished
jobs per model would refuse most of the Creates (the quota itself is tests/test_quotas.py's); the
tiny jobs queue behind the big one on the single worker.
The exit status is 1 on any error or mismatch.

    python -m benchmarks.load                       # 64 clients, 60 s each phase, ~3 minutes
    python -m benchmarks.load --seconds 10 --clients 16
"""

import argparse
import collections
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3

from bedrock_local import testing
from benchmarks.common import cpu_seconds, percentile

MODEL = "bedrock-local.test-text-v1:0"
ROLE = "arn:aws:iam::123456789012:role/load"
IN, OUT = "load-in", "load-out"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
MIX = [("CreateModelInvocationJob", 10), ("GetModelInvocationJob", 25), ("ListModelInvocationJobs", 15),
       ("TagResource", 15), ("UntagResource", 10), ("ListTagsForResource", 25)]
OPERATIONS = [name for name, _ in MIX]


class Server(testing.Server):
    """`bedrock-local serve` with one worker and no serving process; record quotas raised for the
    background job (see the module docstring)."""

    start_timeout = 120.0

    def __init__(self, data_dir: Path, database_url: str | None):
        super().__init__(data_dir, workers=1, serving_workers=0, database_url=database_url, log_level="warning",
                         log=data_dir.parent / "server.log",
                         quotas=["batch-jobs-per-base-model=unlimited", "batch-records-per-job=unlimited",
                                 "batch-records-per-file=unlimited"])

    def client(self):
        session = boto3.session.Session()  # one per client: sessions are not thread-safe
        return super().client(access_key="AKIDLOAD", session=session, max_pool_connections=2, read_timeout=120,
                              connect_timeout=20)

    def put(self, bucket: str, key: str, text: str) -> str:
        path = self.data_dir / "s3" / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return f"s3://{bucket}/{key}"


def process_cpu(server: Server) -> dict[str, float]:
    """CPU seconds so far of the API process, of its child processes (the worker), and of this one."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    kids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    mine = os.times()
    return {"api": cpu_seconds(server.process.pid), "worker": sum(cpu_seconds(pid) for pid in kids),
            "clients": mine.user + mine.system}


def records(count: int) -> str:
    return "".join(f'{{"recordId": "r{i:07d}", "modelInput": {{"prompt": "hello load {i}", "max_gen_len": 2}}}}\n'
                   for i in range(count))


def create_job(client, name: str, input_uri: str) -> str:
    return client.create_model_invocation_job(
        jobName=name, modelId=MODEL, roleArn=ROLE, inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT}/"}})["jobArn"]


class Background:
    """The big batch job that runs while the clients do; follows its progress."""

    def __init__(self, server: Server, input_uri: str):
        self.client = server.client()
        self.arn = create_job(self.client, f"background-{uuid.uuid4().hex[:6]}", input_uri)
        self.status, self.records = "Submitted", 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def processed(self) -> int:
        return self.records

    def _follow(self) -> None:
        while True:
            job = self.client.get_model_invocation_job(jobIdentifier=self.arn)
            self.status, self.records = job["status"], job.get("processedRecordCount") or 0
            if self.status in FINAL or self.stopping.wait(0.5):
                return

    def wait_running(self, timeout: float = 300) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.processed() == 0:
            time.sleep(0.2)
        if self.processed() == 0:
            raise RuntimeError(f"the background batch job processed no record in {timeout:.0f} s ({self.status})")

    def stop(self) -> str:
        """Stop it; answers its final status."""
        self.stopping.set()
        self.thread.join(30)
        self.client.stop_model_invocation_job(jobIdentifier=self.arn)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = self.client.get_model_invocation_job(jobIdentifier=self.arn)
            if job["status"] in FINAL:
                return job["status"]
            time.sleep(0.5)
        return job["status"]


class ClientState:
    """What one client created and the tags it left."""

    def __init__(self, index: int, phase: str):
        self.prefix = f"{phase}-c{index:02d}"
        self.created: dict[str, str] = {}          # ARN -> name
        self.tags: dict[str, dict[str, str]] = {}  # ARN -> the tags it should have
        self.counter = 0


class Phase:
    def __init__(self, name: str, clients: int):
        self.name, self.clients = name, clients
        self.latencies = {op: [] for op in OPERATIONS}
        self.errors = {op: 0 for op in OPERATIONS}
        self.error_samples: list[str] = []
        self.seconds = 0.0
        self.background_records = 0
        self.background_status = ""
        self.cpu: dict[str, float] = {}
        self.states: list[ClientState] = []


def run_phase(server: Server, phase: Phase, seconds: float, tiny_uri: str, seed: int) -> None:
    clients = [server.client() for _ in range(phase.clients)]
    phase.states = [ClientState(i, phase.name) for i in range(phase.clients)]
    lock = threading.Lock()
    barrier = threading.Barrier(phase.clients + 1)
    stop_at = [0.0]

    def one(client, state: ClientState, rng: random.Random, op: str) -> None:
        arns = list(state.created)
        if op != "CreateModelInvocationJob" and op != "ListModelInvocationJobs" and not arns:
            op = "CreateModelInvocationJob"  # nothing of its own yet
        begin = time.perf_counter()
        try:
            if op == "CreateModelInvocationJob":
                state.counter += 1
                name = f"{state.prefix}-{state.counter:05d}"
                arn = create_job(client, name, tiny_uri)
                state.created[arn] = name
                state.tags[arn] = {}
            elif op == "GetModelInvocationJob":
                arn = rng.choice(arns)
                job = client.get_model_invocation_job(jobIdentifier=arn)
                assert job["jobArn"] == arn and job["jobName"] == state.created[arn], job
            elif op == "ListModelInvocationJobs":
                token, pages = None, 0
                while pages < 3:
                    page = client.list_model_invocation_jobs(maxResults=20, **({"nextToken": token} if token else {}))
                    pages += 1
                    token = page.get("nextToken")
                    if not token:
                        break
            elif op == "TagResource":
                arn = rng.choice(arns)
                key = f"k{rng.randrange(6)}"
                value = f"v{rng.randrange(1000)}"
                client.tag_resource(resourceARN=arn, tags=[{"key": key, "value": value}])
                state.tags[arn][key] = value
            elif op == "UntagResource":
                arn = rng.choice(arns)
                key = f"k{rng.randrange(6)}"
                client.untag_resource(resourceARN=arn, tagKeys=[key])
                state.tags[arn].pop(key, None)
            else:
                arn = rng.choice(arns)
                tags = {t["key"]: t["value"] for t in client.list_tags_for_resource(resourceARN=arn)["tags"]}
                assert tags == state.tags[arn], (arn, tags, state.tags[arn])
            elapsed = time.perf_counter() - begin
            with lock:
                phase.latencies[op].append(elapsed)
        except Exception as exc:  # noqa: BLE001 - every error is counted and shown
            with lock:
                phase.errors[op] += 1
                if len(phase.error_samples) < 10:
                    phase.error_samples.append(f"{op}: {type(exc).__name__}: {str(exc)[:300]}")

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client, state = clients[index], phase.states[index]
        ops = [name for name, weight in MIX for _ in range(weight)]
        barrier.wait()
        while time.perf_counter() < stop_at[0]:
            one(client, state, rng, rng.choice(ops))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(phase.clients)]
    for thread in threads:
        thread.start()
    records_before = background.processed()
    cpu_before = process_cpu(server)
    begin = time.perf_counter()
    stop_at[0] = begin + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - begin
    phase.background_records = background.processed() - records_before
    phase.background_status = background.status
    phase.cpu = {name: spent - cpu_before[name] for name, spent in process_cpu(server).items()}


def table(phases: list[Phase]) -> list[str]:
    lines = ["| phase | operation | count | req/s | p50 ms | p99 ms | errors |", "|---|---|---:|---:|---:|---:|---:|"]
    for phase in phases:
        everything = [x for op in OPERATIONS for x in phase.latencies[op]]
        for op in OPERATIONS + ["total"]:
            values = everything if op == "total" else phase.latencies[op]
            errors = sum(phase.errors.values()) if op == "total" else phase.errors[op]
            label = "**total**" if op == "total" else op
            lines.append(f"| {phase.clients} client{'s' if phase.clients > 1 else ''} | {label} | {len(values)} | "
                         f"{len(values) / phase.seconds:.1f} | {percentile(values, 0.5) * 1000:.1f} | "
                         f"{percentile(values, 0.99) * 1000:.1f} | {errors} |")
    return lines


def verify(server: Server, phases: list[Phase], background_jobs: list[str], verify_tags: int) -> list[str]:
    """Problems found (empty: every created job listed exactly once under its name, tags as left)."""
    client = server.client()
    listed: list[dict] = []
    token = None
    while True:
        page = client.list_model_invocation_jobs(maxResults=100, **({"nextToken": token} if token else {}))
        listed += page["invocationJobSummaries"]
        token = page.get("nextToken")
        if not token:
            break
    problems = []
    expected = {arn: name for phase in phases for state in phase.states for arn, name in state.created.items()}
    expected.update({arn: client.get_model_invocation_job(jobIdentifier=arn)["jobName"] for arn in background_jobs})
    by_arn = collections.Counter(job["jobArn"] for job in listed)
    by_name = collections.Counter(job["jobName"] for job in listed)
    for arn, name in expected.items():
        if by_arn[arn] != 1:
            problems.append(f"{arn} ({name}) is listed {by_arn[arn]} times")
        if by_name[name] != 1:
            problems.append(f"the name {name} is listed {by_name[name]} times")
    unknown = [job["jobArn"] for job in listed if job["jobArn"] not in expected]
    if unknown:
        problems.append(f"{len(unknown)} listed jobs no client created, e.g. {unknown[:3]}")
    names = {job["jobArn"]: job["jobName"] for job in listed}
    problems += [f"{arn} is listed as {names[arn]}, created as {name}" for arn, name in expected.items()
                 if arn in names and names[arn] != name]
    tagged = [(arn, tags) for phase in phases for state in phase.states for arn, tags in state.tags.items()]
    random.Random(7).shuffle(tagged)
    for arn, tags in tagged[:verify_tags]:
        found = {t["key"]: t["value"] for t in client.list_tags_for_resource(resourceARN=arn)["tags"]}
        if found != tags:
            problems.append(f"{arn} has tags {found}, its client left {tags}")
    mine = len(expected) - len(background_jobs)
    print(f"\ncheck: {len(listed)} jobs listed over {len(listed) // 100 + 1} pages; {mine} created by the "
          f"clients, and the background job; tags of {min(verify_tags, len(tagged))} jobs compared; "
          f"{'OK' if not problems else f'{len(problems)} problems'}")
    return problems


def log_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    return [line for line in text.splitlines()
            if re.search(r"Traceback|database is locked|ERROR|Exception in ASGI", line)][:20]


background: Background  # the one of this run (read by run_phase)


def main(argv: list[str] | None = None) -> int:
    global background
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--clients", type=int, default=64, help="client threads of the load phase (default 64)")
    parser.add_argument("--baseline-seconds", type=float, help="length of the 1-client phase (default: --seconds)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in the temporary data dir)")
    parser.add_argument("--background-records", type=int, default=1_000_000,
                        help="records of the batch job that runs meanwhile (default 1,000,000; it must outlast the "
                             "run)")
    parser.add_argument("--verify-tags", type=int, default=2000, help="jobs whose tags are checked at the end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and the server log")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bedrock-load-"))
    server = Server(work / "data", args.database_url).start()
    try:
        big = server.put(IN, "big/records.jsonl", records(args.background_records))
        tiny = server.put(IN, "tiny/one.jsonl", records(1))
        (server.data_dir / "s3" / OUT).mkdir(parents=True, exist_ok=True)
        print(f"bedrock-local serve --workers 1 on {server.url} ({'PostgreSQL' if args.database_url else 'SQLite'}), "
              f"data in {work}")
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
              f"at start")
        background = Background(server, big)
        background.wait_running()
        print(f"background batch job running ({args.background_records:,} records of {MODEL})")

        phases = [Phase("baseline", 1), Phase("load", args.clients)]
        for index, phase in enumerate(phases):
            seconds = args.baseline_seconds or args.seconds if phase.clients == 1 else args.seconds
            run_phase(server, phase, seconds, tiny, seed=index)
            print(f"{phase.clients} client(s): {sum(len(v) for v in phase.latencies.values())} requests in "
                  f"{phase.seconds:.1f} s; background job {phase.background_status}, records processed meanwhile: "
                  f"{phase.background_records:,}; CPU seconds: API process {phase.cpu['api']:.1f}, worker "
                  f"{phase.cpu['worker']:.1f}, the clients (this process) {phase.cpu['clients']:.1f}; "
                  f"load average {os.getloadavg()[0]:.2f}")
        final = background.stop()

        print()
        print("\n".join(table(phases)))
        base, load = phases
        rate = lambda p: sum(len(v) for v in p.latencies.values()) / p.seconds  # noqa: E731
        every = lambda p: [x for v in p.latencies.values() for x in v]  # noqa: E731
        print(f"\nratio {load.clients} clients / 1 client: {rate(load) / rate(base):.2f}x requests/s; "
              f"p50 {percentile(every(load), 0.5) / percentile(every(base), 0.5):.1f}x, "
              f"p99 {percentile(every(load), 0.99) / percentile(every(base), 0.99):.1f}x; background records/s "
              f"{base.background_records / base.seconds:.0f} -> {load.background_records / load.seconds:.0f}")
        errors = sum(sum(p.errors.values()) for p in phases)
        for sample in [s for p in phases for s in p.error_samples]:
            print(f"  error: {sample}")
        problems = verify(server, phases, [background.arn], args.verify_tags)
        for problem in problems[:20]:
            print(f"  mismatch: {problem}")
        logged = log_problems(server.log)
        for line in logged:
            print(f"  server log: {line}")
        running = all(p.background_status == "InProgress" and p.background_records > 0 for p in phases)
        print(f"background job: InProgress and processing through both phases: {'yes' if running else 'NO'}; "
              f"{final} when stopped after them (Stopped expected)")
        failed = errors or problems or logged or not running or final != "Stopped"
        print(f"result: {'FAIL' if failed else 'OK'} ({errors} request errors, {len(problems)} mismatches, "
              f"{len(logged)} server log errors)")
        return 1 if failed else 0
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
