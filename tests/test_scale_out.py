"""Scale-out: API nodes (`serve --workers 0`) and `bedrock-local worker` processes that share one
PostgreSQL database and one S3 endpoint (moto), with no node special. A batch job created through
one API node is split into shards that every worker runs; it is read through the other API node; a
worker killed with kill -9 mid-job loses its leases, and the other worker takes the job and the
shard over from their checkpoints. A Stop ends every shard; a fault in one shard ends the job; a job
of one shard runs as before (no shard rows).

Outputs are checked against the test model's documented function (engine/stub_models.py: a Meta
Llama prompt is answered with its words in reverse order). The test reads the `batch_shards` table
only to see what the API does not show (which worker ran which shard)."""

import concurrent.futures
import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from bedrock_local.store.database import open_database
from bedrock_local.store.schema import BatchShard, Job, Resource
from conftest import Server, Worker, postgres_schema, s3_client, wait_until

TEST_MODEL = "bedrock-local.test-text-v1:0"
ROLE = "arn:aws:iam::123456789012:role/ScaleOut"
SHARD = 1000  # records per shard (--batch-shard-records)
LEASE = "3"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
COUNTS = ("totalRecordCount", "processedRecordCount", "successRecordCount", "errorRecordCount")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Cluster:
    """Two API-only nodes and two worker processes on one PostgreSQL schema and one S3 endpoint."""

    def __init__(self, root: Path, database_url: str, s3_url: str):
        self.root, self.database_url, self.s3_url = root, database_url, s3_url
        common = ("--serving-workers", "0", "--batch-shard-records", str(SHARD))
        self.api = [Server(root / f"api-{i}", workers=0, database_url=database_url, s3_endpoint_url=s3_url,
                           lease_seconds=float(LEASE), extra_args=common) for i in range(2)]
        self.logs = [root / f"worker-{i}.log" for i in range(2)]
        self.workers = [Worker(root / f"worker-{i}", database_url=database_url, s3_endpoint_url=s3_url,
                               lease_seconds=float(LEASE), log=self.logs[i],
                               extra_args=("--batch-shard-records", str(SHARD), "--batch-max-records", "1000000"))
                        for i in range(2)]
        self.db = None
        self.s3 = s3_client(s3_url)

    def start(self) -> "Cluster":
        for server in self.api:
            server.start()
        self.db = open_database(self.database_url, migrate=False)
        for index in range(2):
            self.start_worker(index)
        return self

    def start_worker(self, index: int) -> Worker:
        return self.workers[index].start()

    def signal_worker(self, index: int, sig: int) -> None:
        """`sig` to the worker process alone."""
        if self.workers[index].running:
            self.workers[index].process.send_signal(sig)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(20)  # SIGCONT too: a test may have left one stopped
        for server in self.api:
            server.stop()
        if self.db is not None:
            self.db.dispose()

    # -- reading the shared state ------------------------------------------------------------

    def job_row(self, arn: str) -> Job:
        with self.db.read_session() as session:
            return session.execute(select(Job).join(Resource, Resource.pk == Job.resource_pk)
                                   .where(Resource.arn == arn)).scalar_one()

    def shards(self, arn: str) -> list[BatchShard]:
        with self.db.read_session() as session:
            return list(session.scalars(select(BatchShard).join(Job, Job.pk == BatchShard.job_pk)
                                        .join(Resource, Resource.pk == Job.resource_pk)
                                        .where(Resource.arn == arn).order_by(BatchShard.number)).all())

    def read_out(self, bucket: str, key: str) -> list[dict]:
        data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in data.split(b"\n") if line]

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="module")
def postgres_module_url():
    """A PostgreSQL schema for this module's cluster (conftest's postgres_url is per test)."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_module_url, moto_s3):
    cluster = Cluster(tmp_path_factory.mktemp("scale-out"), postgres_module_url, moto_s3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def buckets(cluster):
    names = unique("scale-in"), unique("scale-out")
    for name in names:
        cluster.s3.create_bucket(Bucket=name)
    return names


def records(prefix: str, count: int, start: int = 0) -> list[dict]:
    return [{"recordId": f"{prefix}{i:06d}", "modelInput": {"prompt": f"record {prefix} {i} says hello",
                                                            "max_gen_len": 16}} for i in range(start, start + count)]


def reversed_words(record: dict) -> dict:
    """The test model's Meta Llama answer: the prompt's words in reverse order."""
    words = record["modelInput"]["prompt"].split()
    return {"generation": " ".join(reversed(words)), "prompt_token_count": len(words),
            "generation_token_count": len(words), "stop_reason": "stop"}


def put_input(cluster: Cluster, bucket: str, files: dict[str, list[dict]]) -> str:
    prefix = unique("input")
    for name, rows in files.items():
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        cluster.s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)
    return f"s3://{bucket}/{prefix}/"


def create_job(client, uri: str, out_bucket: str) -> str:
    return client.create_model_invocation_job(
        jobName=unique("scale"), modelId=TEST_MODEL, roleArn=ROLE,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{out_bucket}/"}})["jobArn"]


def wait_final(client, arn: str, timeout: float = 90.0) -> dict:
    def ended():
        job = client.get_model_invocation_job(jobIdentifier=arn)
        return job if job["status"] in FINAL else None
    return wait_until(ended, timeout=timeout, interval=0.1, what=f"{arn} to end")


def outputs(cluster: Cluster, bucket: str, arn: str, names: list[str]) -> tuple[dict[str, list[dict]], dict]:
    job_id = arn.rsplit("/", 1)[1]
    return ({name: cluster.read_out(bucket, f"{job_id}/{name}.out") for name in names},
            json.loads(cluster.s3.get_object(Bucket=bucket, Key=f"{job_id}/manifest.json.out")["Body"].read()))


def pid_of(owner: str | None) -> int | None:
    return int(owner.split(":")[1]) if owner else None


def assert_counts_agree(job: dict, manifest: dict, lines: list[dict], total: int) -> None:
    errors = sum("error" in line for line in lines)
    assert manifest["totalRecordCount"] == job["totalRecordCount"] == total
    assert manifest["processedRecordCount"] == job["processedRecordCount"] == len(lines)
    assert manifest["errorRecordCount"] == job["errorRecordCount"] == errors
    assert manifest["successRecordCount"] == job["successRecordCount"] == len(lines) - errors


# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_job_is_split_across_workers_and_survives_kill_9_of_its_coordinator(cluster, buckets):
    in_bucket, out_bucket = buckets
    # 30,500 records in three files: 31 shards, one of them spanning two files, the last a short one
    files = {"a.jsonl": records("a", 12_500), "nested/b.jsonl": records("b", 9_000), "c.jsonl": records("c", 9_000)}
    total = sum(len(rows) for rows in files.values())
    creator, reader = cluster.api[0].client(), cluster.api[1].client()
    arn = create_job(creator, put_input(cluster, in_bucket, files), out_bucket)

    # the coordinator (the job's lease owner) finishes a shard; then it is frozen while it holds a shard
    # it has not finished, and killed
    pids = [worker.pid for worker in cluster.workers]
    seen: list[int] = []

    def coordinator_did_one():
        job = reader.get_model_invocation_job(jobIdentifier=arn)
        seen.append(job.get("processedRecordCount", 0))
        owner = pid_of(cluster.job_row(arn).lease_owner)
        return owner in {pid_of(row.done_by) for row in cluster.shards(arn) if row.state == "done"}
    wait_until(coordinator_did_one, timeout=90, interval=0.01, what="the coordinator to finish a shard")
    victim_pid = held = None
    for _ in range(200):
        owner = pid_of(cluster.job_row(arn).lease_owner)
        victim = pids.index(owner)
        cluster.signal_worker(victim, signal.SIGSTOP)
        held = [row for row in cluster.shards(arn) if row.state == "running" and pid_of(row.lease_owner) == owner]
        if held and cluster.job_row(arn).state == "running":
            victim_pid = owner
            break
        cluster.signal_worker(victim, signal.SIGCONT)  # between two shards: try again
        time.sleep(0.01)
    assert victim_pid is not None, "the coordinator was never caught holding a shard"
    at_kill = held[0]
    done_before = {row.number: row.done_by for row in cluster.shards(arn) if row.state == "done"}
    cluster.signal_worker(victim, signal.SIGKILL)
    cluster.workers[victim].process.wait(10)
    assert len(done_before) < len(cluster.shards(arn))  # killed mid-job

    job = wait_final(reader, arn, timeout=120)
    assert job["status"] == "Completed", job
    seen.append(job["processedRecordCount"])
    assert seen == sorted(seen), "processedRecordCount never goes back"
    assert any(0 < count < total for count in seen), "no intermediate count was seen"

    # every record exactly once, in input order, with the test model's answer
    out, manifest = outputs(cluster, out_bucket, arn, list(files))
    for name, rows in files.items():
        assert [line["recordId"] for line in out[name]] == [r["recordId"] for r in rows], name
        for line, record in zip(out[name], rows):
            assert line["modelInput"] == record["modelInput"] and line["modelOutput"] == reversed_words(record)
    every = [line for name in files for line in out[name]]
    assert_counts_agree(job, manifest, every, total)
    assert manifest["inputTokenCount"] == manifest["outputTokenCount"] == sum(
        len(r["modelInput"]["prompt"].split()) for rows in files.values() for r in rows)
    job_id = arn.rsplit("/", 1)[1]
    assert cluster.keys(out_bucket, job_id + "/") == sorted(
        [f"{job_id}/{name}.out" for name in files] + [f"{job_id}/manifest.json.out"])

    # the surviving worker took the job over, and the killed shard from its checkpoint; no shard that
    # was done before the kill ran again
    survivor_pid = pids[1 - victim]
    row = cluster.job_row(arn)
    assert (row.state, row.attempts) == ("done", 2)
    rows = cluster.shards(arn)
    assert len(rows) == 31 and [r.first for r in rows] == list(range(0, total, SHARD))
    assert all(r.state == "done" for r in rows)
    assert {n: r.done_by for n, r in enumerate(rows) if n in done_before} == done_before
    taken_over = rows[at_kill.number]
    assert pid_of(taken_over.done_by) == survivor_pid and taken_over.attempts == at_kill.attempts + 1
    resumed_at = (at_kill.checkpoint or {}).get("done", 0)
    log = cluster.logs[1 - victim].read_text()
    assert f"shard {at_kill.number} of job {row.pk}: resuming at record {resumed_at} of {at_kill.count}" in log
    by = {pid_of(r.done_by) for r in rows}
    assert by == {victim_pid, survivor_pid}
    assert cluster.keys("bedrock-local-models", f"batch-shards/123456789012/{job_id}/") == []  # parts removed

    cluster.start_worker(victim)  # the next tests have two workers again


@pytest.mark.timeout(300)
def test_stop_ends_every_shard_and_keeps_their_finished_lines(cluster, buckets):
    in_bucket, out_bucket = buckets
    files = {f"part-{i}.jsonl": records(f"p{i}-", 30_000) for i in range(3)}
    total = 90_000
    creator, reader = cluster.api[1].client(), cluster.api[0].client()
    arn = create_job(creator, put_input(cluster, in_bucket, files), out_bucket)
    wait_until(lambda: len({r.lease_owner for r in cluster.shards(arn) if r.state == "running"}) == 2
               or reader.get_model_invocation_job(jobIdentifier=arn)["status"] in FINAL,
               timeout=90, interval=0.01, what="both workers to run a shard")
    # the workers are frozen so that the Stop lands mid-job whatever the machine's speed; it is sent from a
    # thread, as a worker frozen inside a transaction may hold the job's row lock until it runs again
    for index in range(2):
        cluster.signal_worker(index, signal.SIGSTOP)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            running = reader.get_model_invocation_job(jobIdentifier=arn)
            assert running["status"] == "InProgress" and running.get("processedRecordCount", 0) < total, running
            stop = pool.submit(creator.stop_model_invocation_job, jobIdentifier=arn)
            time.sleep(0.5)
        finally:
            for index in range(2):
                cluster.signal_worker(index, signal.SIGCONT)
        stop.result(timeout=60)
    job = wait_final(reader, arn)
    assert job["status"] == "Stopped", job
    assert 0 < job["processedRecordCount"] < total
    job_id = arn.rsplit("/", 1)[1]
    written = [key[len(job_id) + 1:-len(".out")] for key in cluster.keys(out_bucket, job_id + "/")]
    out, manifest = outputs(cluster, out_bucket, arn, [name for name in written if name in files])
    order = {r["recordId"]: i for i, rows in enumerate(files.values()) for r in rows}
    index = {r["recordId"]: i for i, r in enumerate(r for rows in files.values() for r in rows)}
    every = [line for name in out for line in out[name]]
    ids = [index[line["recordId"]] for line in every]
    assert ids == sorted(set(ids)), "each finished record once, in input order"
    assert all(order[line["recordId"]] == list(files).index(name) for name in out for line in out[name])
    assert_counts_agree(job, manifest, every, total)
    rows = cluster.shards(arn)
    assert not any(r.state == "running" for r in rows) and all(r.halt for r in rows)
    assert sum((r.checkpoint or {}).get("done", 0) for r in rows) == len(every)


@pytest.mark.timeout(300)
def test_a_fault_in_one_shard_ends_the_job(cluster, buckets):
    in_bucket, out_bucket = buckets
    rows = records("f", 5_000)
    rows[2_500]["modelInput"]["prompt"] = "the end [[fault:job-fail]]"  # the middle of shard 2
    arn = create_job(cluster.api[0].client(), put_input(cluster, in_bucket, {"in.jsonl": rows}), out_bucket)
    job = wait_final(cluster.api[1].client(), arn)
    assert job["status"] == "Failed" and "'f002500'" in job["message"] and "[[fault:job-fail]]" in job["message"]
    lines = cluster.read_out(out_bucket, f"{arn.rsplit('/', 1)[1]}/in.jsonl.out")  # a Failed job has no manifest
    ids = [int(line["recordId"][1:]) for line in lines]
    assert ids == sorted(set(ids)) and 2_500 not in ids
    assert set(range(2_000, 2_500)) <= set(ids)  # the faulty shard's records before the fault are kept
    assert all(line["modelOutput"] == reversed_words(rows[i]) for i, line in zip(ids, lines))
    assert sum((r.checkpoint or {}).get("done", 0) for r in cluster.shards(arn)) == len(ids)


@pytest.mark.timeout(120)
def test_a_job_of_one_shard_runs_as_before(cluster, buckets):
    in_bucket, out_bucket = buckets
    files = {"small.jsonl": records("s", SHARD)}  # exactly one shard
    arn = create_job(cluster.api[0].client(), put_input(cluster, in_bucket, files), out_bucket)
    job = wait_final(cluster.api[1].client(), arn)
    assert job["status"] == "Completed", job
    out, manifest = outputs(cluster, out_bucket, arn, list(files))
    assert [line["modelOutput"] for line in out["small.jsonl"]] == [reversed_words(r) for r in files["small.jsonl"]]
    assert_counts_agree(job, manifest, out["small.jsonl"], SHARD)
    assert cluster.shards(arn) == []  # no shard rows: the worker that holds the job runs it alone
    assert "sharded" not in (cluster.job_row(arn).checkpoint or {})
