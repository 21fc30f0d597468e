"""Scale-out benchmark: one batch inference job split into shards (jobs/shards.py) across 1, 2 and 4
local `bedrock-local worker` processes.

For each worker count N: a fresh data dir; `bedrock-local serve --workers 0 --serving-workers 0` (an
API-only node) and N `bedrock-local worker` processes on the same database and object store: the
embedded defaults (a SQLite file and the folder store in the data dir) or, with `--database-url`, a
PostgreSQL schema of its own (dropped at the end) beside the folder store. The input is written
into the folder store as JSONL files (`--files` of them); boto3 CreateModelInvocationJob, then
GetModelInvocationJob polled until the job ends; timed from Create to the poll that sees Completed.
The outputs are checked (record count, every line without error).

Records: by default the fast deterministic test model (`bedrock-local.test-text-v1:0`,
engine/stub_models.py: microseconds a record, so the job machinery is what is measured: validation,
shard claims, part writes and checkpoints, the merge); `--smollm2` sends Converse records to the
packaged SmolLM2-135M-Instruct (`--new-tokens` each). Before the timed job, a warm-up job of N shards
runs on the same processes (`--no-warm` skips it) so that each worker has loaded its model (the
test model loads nothing); a worker that took no warm-up shard pays the load inside the timed job.

Columns: workers, records, seconds, records/s, scaling efficiency = records/s / (N x records/s of
1 worker), ratio = records/s / records/s of 1 worker (the baseline, measured in the same run), and the
phases of the job as the polls saw them: validate (Create to InProgress: pick-up and validation, one
worker), shards (to every record processed: every worker), merge (to Completed: one worker).

Then the same job through the Ray executor (`--ray-address`): one worker process drives it on a
one-node local Ray cluster of 1 (then 2: `--ray-actors`) CPUs, so a pool of as many model actors,
each with an equal share of the cores (OMP_NUM_THREADS), as local workers get. The warm-up job
starts the pool; the timed job runs on the same actors (they outlive windows and jobs).
`--ray-actors 1 --workers 1 --smollm2` is the like-for-like check: one actor against one local
worker on a real model; the line under the table gives its ratio.

    python -m benchmarks.scale                                   # 100,000 test-model records, 1/2/4 workers
    python -m benchmarks.scale --records 20000 --workers 1 2     # quick
    python -m benchmarks.scale --smollm2 --records 256 --shard-records 32 --new-tokens 16
    python -m benchmarks.scale --smollm2 --records 128 --shard-records 128 --workers 1 --ray-actors 1
    python -m benchmarks.scale --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bedrock_local import testing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEST_MODEL_ID = "bedrock-local.test-text-v1:0"
SMOLLM2_ID = "huggingface.smollm2-135m-instruct-v1:0"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchInference"
INPUT_BUCKET, OUTPUT_BUCKET = "scale-input", "scale-output"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
DEFAULT_CACHE = Path(os.environ.get("BEDROCK_LOCAL_BENCH_CACHE", Path.home() / ".cache" / "bedrock-local-bench"))


@dataclass
class Row:
    label: str
    workers: int
    records: int
    seconds: float
    phases: tuple[float, float, float] | None = None  # to InProgress, shards, merge and end

    @property
    def rate(self) -> float:
        return self.records / self.seconds


class Cluster:
    """An API-only node and N worker processes on one data dir (and database)."""

    def __init__(self, root: Path, workers: int, args: argparse.Namespace, database_url: str | None,
                 ray_address: str | None = None):
        self.root, self.count, self.args, self.database_url = root, workers, args, database_url
        self.data_dir = root / "data"
        self.ray_address = ray_address
        self.api: testing.Server | None = None
        self.workers: list[testing.Worker] = []

    def options(self) -> dict:
        """What the API node and the workers share."""
        extra = ["--batch-shard-records", str(self.args.shard_records), "--batch-max-records", "10000000",
                 "--batch-max-records-per-file", "10000000"]
        extra += ["--ray-address", self.ray_address] if self.ray_address else []
        return dict(cache_dir=self.args.cache_dir, lease_seconds=self.args.lease_seconds,
                    database_url=self.database_url, quotas=["all=unlimited"], extra_args=extra)

    def start(self) -> "Cluster":
        # each worker gets an equal share of the cores, as `serve --workers N` gives its own
        threads = str(max(1, (os.cpu_count() or 1) // self.count))
        self.api = testing.Server(self.data_dir, workers=0, serving_workers=0, log=self.root / "api.log",
                                  **self.options())
        self.api.start()
        self.workers = [testing.Worker(self.data_dir, log=self.root / f"worker-{index}.log",
                                       env={"OMP_NUM_THREADS": threads}, **self.options())
                        for index in range(self.count)]
        for worker in self.workers:
            worker.start()
        return self

    def stop(self) -> None:
        for node in [*reversed(self.workers), self.api]:
            if node is not None:
                node.stop()

    def client(self):
        return self.api.client()

    def bucket(self, name: str) -> Path:
        return self.api.folder(name)


def make_records(count: int, smollm2: bool, new_tokens: int, tag: str) -> list[dict]:
    if smollm2:
        return [{"recordId": f"{tag}{i:07d}", "modelInput": {
            "messages": [{"role": "user", "content": [{"text": f"Write a short story about the number {i}."}]}],
            "inferenceConfig": {"maxTokens": new_tokens, "temperature": 0}}} for i in range(count)]
    return [{"recordId": f"{tag}{i:07d}", "modelInput": {"prompt": f"record {i} of the scale benchmark says hello",
                                                         "max_gen_len": 16}} for i in range(count)]


def run_job(cluster: Cluster, bedrock, args: argparse.Namespace, count: int, name: str) -> tuple[float, tuple]:
    """Seconds from Create to Completed, and its phases as the polls saw them: until InProgress
    (queue pick-up and validation, one worker), until every record is processed (the shards, every
    worker), until Completed (the merge of the parts and the manifest, one worker)."""
    records = make_records(count, args.smollm2, args.new_tokens, name[:1])
    folder = cluster.bucket(INPUT_BUCKET) / name
    folder.mkdir(parents=True)
    files = max(1, min(args.files, count))
    for index in range(files):
        part = records[index * count // files:(index + 1) * count // files]
        (folder / f"part-{index:03d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    cluster.bucket(OUTPUT_BUCKET)
    started = time.perf_counter()
    arn = bedrock.create_model_invocation_job(
        jobName=name, modelId=SMOLLM2_ID if args.smollm2 else TEST_MODEL_ID, roleArn=ROLE_ARN,
        modelInvocationType="Converse" if args.smollm2 else "InvokeModel",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{INPUT_BUCKET}/{name}/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUTPUT_BUCKET}/"}})["jobArn"]
    in_progress = processed = None
    while True:
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
        now = time.perf_counter() - started
        if in_progress is None and job["status"] != "Submitted" and job["status"] not in ("Validating", "Scheduled"):
            in_progress = now
        if processed is None and job.get("processedRecordCount", 0) >= count:
            processed = now
        if job["status"] in FINAL:
            break
        time.sleep(args.poll)
    seconds = time.perf_counter() - started
    in_progress = in_progress if in_progress is not None else seconds
    processed = processed if processed is not None else seconds
    if job["status"] != "Completed":
        raise RuntimeError(f"job {name} ended {job['status']}: {job.get('message')}")
    out = cluster.bucket(OUTPUT_BUCKET) / arn.rsplit("/", 1)[1]
    lines = [json.loads(line) for path in sorted(out.glob("*.jsonl.out")) for line in path.read_bytes().splitlines()]
    if len(lines) != count or any("error" in line for line in lines):
        raise RuntimeError(f"job {name}: {len(lines)} output lines for {count} records, "
                           f"{sum('error' in line for line in lines)} errors")
    return seconds, (in_progress, processed - in_progress, seconds - processed)


def worker_rows(args: argparse.Namespace, work: Path, database_url: str | None) -> list[Row]:
    rows = []
    for count in args.workers:
        schema = None
        url = database_url
        if database_url:
            schema, url = make_schema(database_url)
        cluster = Cluster(work / f"workers-{count}", count, args, url)
        try:
            cluster.start()
            bedrock = cluster.client()
            if args.warm:
                run_job(cluster, bedrock, args, min(args.records, count * args.shard_records), f"warm-{count}")
            seconds, phases = run_job(cluster, bedrock, args, args.records, f"timed-{count}")
            rows.append(Row(f"{count} worker process{'es' if count > 1 else ''}", count, args.records, seconds,
                            phases))
            print(f"  {count} worker(s): {args.records} records in {seconds:.2f} s", flush=True)
        finally:
            cluster.stop()
            if schema:
                drop_schema(database_url, schema)
    return rows


def ray_rows(args: argparse.Namespace, work: Path, database_url: str | None) -> list[Row]:
    """The same job through the Ray executor (`--ray-address`, jobs/executors/ray_cluster.py): one worker process
    drives it, its records run in windows on a local one-node Ray cluster (`ray start --head`) of N CPUs
    for each N of `--ray-actors`, so a pool of N model actors that live across windows and jobs. Each
    actor gets an equal share of the cores, as N local workers do (Ray would give an actor of one CPU
    one thread)."""
    rows = []
    for actors in args.ray_actors:
        temp = Path(tempfile.mkdtemp(prefix="brl-ray-", dir="/tmp"))  # Ray's socket paths must stay short
        port = testing.free_port()
        threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // actors))  # for the node's actors
        try:
            head = testing.start_ray_node("--head", "--port", str(port), "--temp-dir", str(temp),
                                          "--include-dashboard=false", log=work / f"ray-{actors}.log", num_cpus=actors)
        finally:
            if threads is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = threads
        schema, url = make_schema(database_url) if database_url else (None, None)
        cluster = Cluster(work / f"ray-{actors}", 1, args, url, ray_address=f"127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 120
            while subprocess.run(["ray", "status", "--address", f"127.0.0.1:{port}"], capture_output=True).returncode:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not start:\n{(work / f'ray-{actors}.log').read_text()[-3000:]}")
                time.sleep(0.5)
            cluster.start()
            bedrock = cluster.client()
            if args.warm:
                run_job(cluster, bedrock, args, min(args.records, args.shard_records), f"warm-ray-{actors}")
            seconds, phases = run_job(cluster, bedrock, args, args.records, f"timed-ray-{actors}")
            rows.append(Row(f"Ray, {actors} actor{'s' if actors > 1 else ''}", actors, args.records, seconds, phases))
            print(f"  Ray, {actors} actor(s): {args.records} records in {seconds:.2f} s", flush=True)
        finally:
            cluster.stop()
            head.kill_session()  # every process of the Ray node
            shutil.rmtree(temp, ignore_errors=True)
            if schema:
                drop_schema(database_url, schema)
    return rows


def make_schema(base_url: str) -> tuple[str, str]:
    import sqlalchemy

    schema = "bench_" + uuid.uuid4().hex[:10]
    engine = sqlalchemy.create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return schema, f"{base_url}?options=-csearch_path%3D{schema}"


def drop_schema(base_url: str, schema: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def print_table(rows: list[Row]) -> None:
    base = next((row for row in rows if row.workers == 1 and row.label.endswith("process")), rows[0])
    header = (f"{'run':<24} {'workers':>7} {'records':>9} {'seconds':>8} {'records/s':>10} {'efficiency':>10} "
              f"{'ratio':>6}   {'validate':>8} {'shards':>8} {'merge':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        efficiency = row.rate / (row.workers * base.rate)
        rate = f"{row.rate:.0f}" if row.rate >= 100 else f"{row.rate:.2f}"
        phases = "".join(f" {seconds:>8.2f}" for seconds in row.phases) if row.phases else ""
        print(f"{row.label:<24} {row.workers:>7} {row.records:>9} {row.seconds:>8.2f} {rate:>10} "
              f"{efficiency:>10.2f} {row.rate / base.rate:>5.2f}x  {phases}")
    base_rate = f"{base.rate:.0f}" if base.rate >= 100 else f"{base.rate:.2f}"
    print(f"baseline: {base.label} ({base_rate} records/s); efficiency = records/s / (workers x baseline); "
          f"ratio = records/s / baseline")
    print("phases (seconds, as the 0.05 s polls saw them): validate = Create to InProgress (pick-up and validation "
          "by one worker); shards = to every record processed (all workers); merge = to Completed (one worker)")
    one_actor = next((row for row in rows if row.label == "Ray, 1 actor"), None)
    if one_actor is not None and base.workers == 1:
        print(f"Ray with 1 actor / 1 local worker: {one_actor.rate / base.rate:.2f}x the records/s (goal >= 0.8x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, help="records of the timed job (default 100000; 256 with --smollm2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (default 1 2 4)")
    parser.add_argument("--shard-records", type=int, help="--batch-shard-records (default 5000; 32 with --smollm2)")
    parser.add_argument("--files", type=int, default=4, help="input files the records are split into (default 4)")
    parser.add_argument("--ray-actors", type=int, nargs="*", default=[1, 2],
                        help="Ray runs, by model actors (default 1 2; none: no Ray run)")
    parser.add_argument("--smollm2", action="store_true", help="Converse records to the packaged SmolLM2-135M-Instruct")
    parser.add_argument("--new-tokens", type=int, default=16, help="maxTokens of each SmolLM2 record (default 16)")
    parser.add_argument("--database-url", help="a PostgreSQL URL; each run gets a schema of its own (default: SQLite)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="the servers' --cache-dir")
    parser.add_argument("--lease-seconds", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between GetModelInvocationJob polls")
    parser.add_argument("--no-warm", dest="warm", action="store_false", help="no warm-up job before the timed one")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and logs")
    args = parser.parse_args(argv)
    args.records = args.records or (256 if args.smollm2 else 100_000)
    args.shard_records = args.shard_records or (32 if args.smollm2 else 5_000)
    args.workers = sorted(set(args.workers) | {1})  # the 1-worker baseline is always measured
    work = Path(tempfile.mkdtemp(prefix="bedrock-local-scale-"))
    print(f"scale-out benchmark: {args.records} {'SmolLM2' if args.smollm2 else 'test-model'} records, "
          f"shards of {args.shard_records}, {args.files} input files, workers {args.workers}, "
          f"Ray actors {args.ray_actors}, "
          f"{'PostgreSQL' if args.database_url else 'SQLite'} + folder store")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    try:
        rows = worker_rows(args, work, args.database_url)
        rows += ray_rows(args, work, args.database_url)  # the Ray executor, --ray-actors
    finally:
        if args.keep:
            print(f"data dirs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
