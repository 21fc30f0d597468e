"""Load benchmark: many concurrent boto3 clients against one `bedrock-local serve` (temporary data
dir, SQLite unless --database-url, one worker) while batch jobs run on it, then a check that every
resource the clients created is there exactly once.

- Batch work runs beside the clients for the whole run: a chain of batch inference jobs of
  --background-records (1,000,000) records each for the test model `bedrock-local.test-text-v1:0`
  (the server's record quotas are raised for them), so the worker reads input, writes output and
  records progress the whole time the clients run. The first job's rate, measured before the
  clients start, sizes the chain (jobs for twice the run's length, queued behind it); whenever the
  chain runs short, one more is created. Each phase reports the records processed, the share of its
  time a background job was InProgress and the jobs that ended. At the end every unfinished one is
  stopped (one that Completed meanwhile answers ConflictException: expected).
- Each client thread has its own boto3 client (retries off: every error counts) and runs a weighted
  mix for --seconds: CreateModelInvocationJob (test model, a one-record input: cheap to create and
  to run, a real resource with a real job row), GetModelInvocationJob, ListModelInvocationJobs (up to
  3 pages of 20, following nextToken), TagResource, UntagResource and ListTagsForResource on jobs it
  created. CreateCustomModel and CreateModelCopyJob are left out: an import or a copy moves model
  files on the single worker, which would measure the disk, not the API.
- The same mix runs twice in one run: with 1 client (the baseline) and with --clients (64).
- Afterwards: ListModelInvocationJobs walks every page; each job a client created must be listed
  exactly once under its name, no listed job may be unknown, and the tags a client left on its jobs
  must be what ListTagsForResource answers (checked on up to --verify-tags jobs); and each
  background job must have ended Completed or Stopped with every record it processed in its output
  exactly once (all of its input when Completed).

The server runs with `--quota batch-jobs-per-base-model=unlimited`: the AWS default of 20 unfinished
jobs per model would refuse most of the Creates (the quota itself is tests/test_quotas.py's); the
tiny jobs queue behind the background chain on the single worker (one job at a time, oldest first).
Whatever fails on the way (a phase, a Stop, a check), the table, the checks and the verdict are
printed; the exit status is 1 on any error or mismatch, or a phase without background records.

    python -m benchmarks.load                       # 64 clients, 60 s each phase, ~3 minutes
    python -m benchmarks.load --seconds 10 --clients 16
    python -m benchmarks.load --seconds 20 --clients 8 --background-records 20000   # jobs end mid-run
"""

import argparse
import collections
import math
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

import boto3
import botocore.exceptions

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
    """Batch work beside the clients for the whole run: a chain of jobs of --background-records each,
    over one input file. The first job's rate sizes the chain before the clients start: enough jobs
    for twice the run's length at that rate are queued behind it, so the worker (one job at a time,
    oldest first) starts the next as soon as one Completes, before any job the clients create. Should
    the chain still run out, the next job is created when the last one is left running; it then waits
    behind the clients' tiny jobs, and the phases' InProgress share shows that gap."""

    most_queued = 20  # a cap on the jobs queued up front (each is a row and, once run, an output)

    def __init__(self, server: Server, input_uri: str, records_per_job: int):
        self.client = server.client()
        self.input_uri, self.per_job = input_uri, records_per_job
        self.lock = threading.Lock()
        self.jobs: list[dict] = []  # in creation order: arn, name, status, processed, late (created during the load)
        self.current = 0  # the first job not seen in a final status: the one the worker runs or will run
        self.inprogress_seconds = 0.0  # time the follower saw the current job InProgress
        self.errors: list[str] = []  # the follower's failed requests (it goes on after each)
        self.stopping = threading.Event()
        self.load_started = False  # jobs added once it is set were not lined up before the clients started
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.add()

    def add(self) -> None:
        late = self.load_started
        name = f"background-{len(self.jobs) + 1:03d}-{uuid.uuid4().hex[:6]}"
        arn = create_job(self.client, name, self.input_uri)
        with self.lock:
            self.jobs.append({"arn": arn, "name": name, "status": "Submitted", "processed": 0, "late": late})

    def processed(self) -> int:
        with self.lock:
            return sum(job["processed"] for job in self.jobs)

    @property
    def status(self) -> str:
        with self.lock:
            return self.jobs[min(self.current, len(self.jobs) - 1)]["status"]

    def ended(self) -> int:
        """How many of its jobs reached a final status so far."""
        with self.lock:
            return sum(job["status"] in FINAL for job in self.jobs)

    def _follow(self) -> None:
        last = time.monotonic()
        while not self.stopping.wait(0.5):
            try:
                self._poll()
            except Exception as exc:  # noqa: BLE001 - counted and shown; the chain must go on
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            now = time.monotonic()
            with self.lock:
                if self.jobs[self.current]["status"] == "InProgress":
                    self.inprogress_seconds += now - last
            last = now

    def _poll(self) -> None:
        """Follow the current job; once it is final, the next one in line (created when none is left)."""
        while True:
            job = self.jobs[self.current]
            got = self.client.get_model_invocation_job(jobIdentifier=job["arn"])
            with self.lock:
                job["status"], job["processed"] = got["status"], got.get("processedRecordCount") or 0
                if job["status"] not in FINAL or self.stopping.is_set():
                    return
                self.current += 1
                waiting = len(self.jobs) - self.current
            # one running and one waiting behind it, always
            for _ in range(2 - min(waiting, 2)):
                self.add()

    def start(self, run_seconds: float, timeout: float = 300) -> float:
        """Follow the first job until it processes records, measure its rate, and queue the jobs that
        rate asks for; answers the rate (records/s)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.status != "InProgress" and self.ended() == 0:
            time.sleep(0.1)
        began = time.monotonic()
        # progress moves a shard (--batch-shard-records) at a time: the rate is taken from the job's
        # start to the last move seen, over 5 s at least or until the job ends
        seen, moved = 0, began
        while time.monotonic() < deadline and self.ended() == 0 and (seen == 0 or time.monotonic() - began < 5):
            if self.processed() != seen:
                seen, moved = self.processed(), time.monotonic()
            time.sleep(0.1)
        if self.ended():
            seen, moved = self.processed(), time.monotonic()
        if seen == 0:
            raise RuntimeError(f"the background batch job processed no record in {timeout:.0f} s ({self.status})")
        rate = seen / max(moved - began, 0.1)
        wanted = max(1, math.ceil(rate * run_seconds * 2 / self.per_job))
        while len(self.jobs) - self.current < min(wanted, self.most_queued) + 1:
            self.add()
        return rate

    def stop(self) -> list[str]:
        """Stop every job not yet final (the waiting ones first, so that the worker picks none of them up
        when the running one ends), wait for each to be final; answers the problems (empty: all final)."""
        self.stopping.set()
        if self.thread.ident is not None:
            self.thread.join(30)
        problems = []
        for job in reversed(self.jobs):
            if job["status"] in FINAL:
                continue
            try:
                self.client.stop_model_invocation_job(jobIdentifier=job["arn"])
            except botocore.exceptions.ClientError as exc:
                # a job that ended between the last poll and the Stop answers ConflictException: expected
                if exc.response["Error"]["Code"] != "ConflictException":
                    problems.append(f"StopModelInvocationJob {job['arn']}: {exc}")
        deadline = time.monotonic() + 300
        for job in self.jobs:
            while True:
                try:
                    got = self.client.get_model_invocation_job(jobIdentifier=job["arn"])
                    job["status"], job["processed"] = got["status"], got.get("processedRecordCount") or 0
                except Exception as exc:  # noqa: BLE001 - a problem of the verdict, not a traceback
                    problems.append(f"GetModelInvocationJob {job['arn']}: {type(exc).__name__}: {exc}")
                    break
                if job["status"] in FINAL or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if job["status"] not in FINAL:
                problems.append(f"{job['arn']} is still {job['status']} after its Stop")
        return problems


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
        self.background_status = ""   # of the chain's current job when the phase ended
        self.background_ended = 0     # background jobs that reached a final status during the phase
        self.background_share = 0.0   # of the phase's time, a background job was seen InProgress
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
    records_before, ended_before, busy_before = background.processed(), background.ended(), background.inprogress_seconds
    cpu_before = process_cpu(server)
    begin = time.perf_counter()
    stop_at[0] = begin + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - begin
    phase.background_records = background.processed() - records_before
    phase.background_status = background.status
    phase.background_ended = background.ended() - ended_before
    phase.background_share = min(1.0, (background.inprogress_seconds - busy_before) / phase.seconds)
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


def verify(server: Server, phases: list[Phase], background_jobs: dict[str, str], verify_tags: int) -> list[str]:
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
    expected.update(background_jobs)
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
          f"clients, and the {len(background_jobs)} background jobs; tags of {min(verify_tags, len(tagged))} jobs compared; "
          f"{'OK' if not problems else f'{len(problems)} problems'}")
    return problems


def log_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    return [line for line in text.splitlines()
            if re.search(r"Traceback|database is locked|ERROR|Exception in ASGI", line)][:20]


def check_outputs(server: Server, jobs: list[dict], per_job: int) -> list[str]:
    """Problems of the background jobs' outputs (empty: each job ended Completed or Stopped, and its
    `.out` objects hold each record it processed exactly once: no record twice, none missing from its
    processedRecordCount, none foreign to the input; a Completed job every record of the input)."""
    problems, lines_seen = [], 0
    record_id = re.compile(rb'"recordId":\s*"r(\d{7})"')
    for job in jobs:
        if job["status"] not in ("Completed", "Stopped"):
            problems.append(f"background job {job['name']} ended {job['status']} (Completed or Stopped expected)")
        folder = server.data_dir / "s3" / OUT / job["arn"].rsplit("/", 1)[1]
        lines = [line for path in sorted(folder.rglob("*.out")) if path.name != "manifest.json.out"
                 for line in path.read_bytes().splitlines() if line.strip()]
        lines_seen += len(lines)
        found = [record_id.search(line) for line in lines]
        ids = collections.Counter(int(match.group(1)) for match in found if match)
        twice = [n for n, count in ids.items() if count > 1]
        foreign = [n for n in ids if n >= per_job]
        wanted = per_job if job["status"] == "Completed" else job["processed"]
        label = f"background job {job['name']} ({job['status']}, {job['processed']:,} processed)"
        if len(found) != len(ids) + sum(count - 1 for count in ids.values()):
            problems.append(f"{label}: {len(found) - sum(ids.values())} output lines without a recordId")
        if twice:
            problems.append(f"{label}: {len(twice)} records written more than once, e.g. r{twice[0]:07d}")
        if foreign:
            problems.append(f"{label}: {len(foreign)} records not in its input, e.g. r{foreign[0]:07d}")
        if len(ids) != wanted or job["processed"] != len(lines):
            problems.append(f"{label}: {len(lines):,} output lines, {len(ids):,} distinct records, {wanted:,} expected")
    ended = collections.Counter(job["status"] for job in jobs)
    print(f"background output: {len(jobs)} jobs ({', '.join(f'{n} {s}' for s, n in sorted(ended.items()))}), "
          f"{lines_seen:,} output lines, each processed record exactly once: "
          f"{'OK' if not problems else f'{len(problems)} problems'}")
    return problems


background: Background  # the one of this run (read by run_phase)


def main(argv: list[str] | None = None) -> int:
    global background
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--clients", type=int, default=64, help="client threads of the load phase (default 64)")
    parser.add_argument("--baseline-seconds", type=float, help="length of the 1-client phase (default: --seconds)")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in the temporary data dir)")
    parser.add_argument("--background-records", type=int, default=1_000_000,
                        help="records of each background batch job (default 1,000,000); as many jobs as the first "
                             "one's rate asks for run one after another")
    parser.add_argument("--verify-tags", type=int, default=2000, help="jobs whose tags are checked at the end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and the server log")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bedrock-load-"))
    server = Server(work / "data", args.database_url).start()
    phases: list[Phase] = []
    problems: list[str] = []  # besides request errors: whatever went wrong, reported in the verdict

    def attempt(what: str, step):
        """Run one step of the run; a failure is a problem of the verdict (with its traceback), not the end."""
        try:
            return step()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            problems.append(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
            return None

    try:
        big = server.put(IN, "big/records.jsonl", records(args.background_records))
        tiny = server.put(IN, "tiny/one.jsonl", records(1))
        (server.data_dir / "s3" / OUT).mkdir(parents=True, exist_ok=True)
        print(f"bedrock-local serve --workers 1 on {server.url} ({'PostgreSQL' if args.database_url else 'SQLite'}), "
              f"data in {work}")
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
              f"at start")
        background = Background(server, big, args.background_records)
        run_seconds = (args.baseline_seconds or args.seconds) + args.seconds
        rate = background.start(run_seconds)
        print(f"background batch work: jobs of {args.background_records:,} records of {MODEL}; the first ran at "
              f"{rate:,.0f} records/s, so {len(background.jobs) - background.current} are lined up for the "
              f"{run_seconds:.0f} s of load (up to {Background.most_queued} queued)")

        def phase_steps():
            for index, phase in enumerate([Phase("baseline", 1), Phase("load", args.clients)]):
                seconds = args.baseline_seconds or args.seconds if phase.clients == 1 else args.seconds
                run_phase(server, phase, seconds, tiny, seed=index)
                phases.append(phase)
                print(f"{phase.clients} client(s): {sum(len(v) for v in phase.latencies.values())} requests in "
                      f"{phase.seconds:.1f} s; background records processed meanwhile: "
                      f"{phase.background_records:,}, jobs ended: {phase.background_ended}; CPU seconds: API process "
                      f"{phase.cpu['api']:.1f}, worker {phase.cpu['worker']:.1f}, the clients (this process) "
                      f"{phase.cpu['clients']:.1f}; load average {os.getloadavg()[0]:.2f}")

        background.load_started = True
        attempt("the load phases", phase_steps)
        problems.extend(attempt("stopping the background jobs", background.stop) or [])

        print()
        print("\n".join(table(phases)))
        if len(phases) == 2:
            base, load = phases
            rate_of = lambda p: sum(len(v) for v in p.latencies.values()) / p.seconds
            every = lambda p: [x for v in p.latencies.values() for x in v]
            print(f"\nratio {load.clients} clients / 1 client: {rate_of(load) / rate_of(base):.2f}x requests/s; "
                  f"p50 {percentile(every(load), 0.5) / percentile(every(base), 0.5):.1f}x, "
                  f"p99 {percentile(every(load), 0.99) / percentile(every(base), 0.99):.1f}x; background records/s "
                  f"{base.background_records / base.seconds:.0f} -> {load.background_records / load.seconds:.0f}")
        print("\n| phase | background records | records/s | InProgress | jobs ended | current job at the end |\n"
              "|---|---:|---:|---:|---:|---|")
        for phase in phases:
            print(f"| {phase.clients} client{'s' if phase.clients > 1 else ''} | {phase.background_records:,} | "
                  f"{phase.background_records / phase.seconds:.0f} | {phase.background_share:.0%} | "
                  f"{phase.background_ended} | {phase.background_status} |")
            if phase.background_records == 0:
                problems.append(f"no background record was processed during the {phase.clients}-client phase")
        late = sum(job["late"] for job in background.jobs)
        print(f"background jobs: {len(background.jobs)} ({late} created during the load, when the chain ran out)")
        for error in background.errors[:10]:
            print(f"  background follower error: {error}")
        if background.errors:
            problems.append(f"{len(background.errors)} failed requests of the background follower")

        errors = sum(sum(p.errors.values()) for p in phases)
        for sample in [s for p in phases for s in p.error_samples]:
            print(f"  error: {sample}")
        problems.extend(attempt("the listing check", lambda: verify(
            server, phases, {job["arn"]: job["name"] for job in background.jobs}, args.verify_tags)) or [])
        problems.extend(attempt("the output check", lambda: check_outputs(
            server, background.jobs, args.background_records)) or [])
        for problem in problems[:20]:
            print(f"  problem: {problem}")
        logged = log_problems(server.log)
        for line in logged:
            print(f"  server log: {line}")
        failed = errors or problems or logged or len(phases) < 2
        print(f"result: {'FAIL' if failed else 'OK'} ({errors} request errors, {len(problems)} problems, "
              f"{len(logged)} server log errors)")
        return 1 if failed else 0
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
