"""The Ray executor (`--ray-address`, jobs/executors/ray_cluster.py) against a real local Ray cluster of two
nodes started here (`ray start`): batch inference on a pool of long-lived model actors gives the local
path's outputs and counts, reuses its actors across windows and jobs, honours Stop, and survives the
loss of a Ray node with every record exactly once; a fine-tuning job runs as a Ray Train job and
publishes its model. One test runs the issue's whole picture: two API nodes and two Ray-driving
workers on PostgreSQL and S3 (moto), losing a worker and a Ray node mid-job."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from bedrock_local.testing import start_ray_node
from conftest import free_port, wait_until

pytest.importorskip("ray")

TEST_MODEL = "bedrock-local.test-text-v1:0"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchInference"
IN_BUCKET, OUT_BUCKET = "ray-input", "ray-output"
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
WINDOW = 500  # records per window in these tests (BEDROCK_LOCAL_RAY_WINDOW_RECORDS)
SMALL_OBJECT_STORE = ("--object-store-memory", str(128 * 2**20))  # two nodes on one test machine


class RayCluster:
    """A head and one more node on this machine, one CPU each."""

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="brl-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = self.node = None

    def start(self) -> "RayCluster":
        self.head = start_ray_node("--head", "--port", str(self.port), "--include-dashboard=false",
                                   "--temp-dir", str(self.temp), *SMALL_OBJECT_STORE, log=self.temp / "head.log")
        wait_until(lambda: self._status_ok(), timeout=120, interval=0.5, what="the Ray head to start")
        self.start_node()
        return self

    def start_node(self) -> None:
        self.node = start_ray_node("--address", self.address, *SMALL_OBJECT_STORE, log=self.temp / "node.log")
        wait_until(lambda: self.alive_nodes() == 2, timeout=120, interval=0.5, what="the second Ray node to join")

    def _status_ok(self) -> bool:
        assert self.head.poll() is None, (self.temp / "head.log").read_text()[-3000:]
        return subprocess.run(["ray", "status", "--address", self.address], capture_output=True).returncode == 0

    def alive_nodes(self) -> int:
        result = subprocess.run(["ray", "list", "nodes", "--address", self.address, "--format", "json",
                                 "--filter", "state=ALIVE"], capture_output=True, text=True)
        if result.returncode != 0:
            out = subprocess.run(["ray", "status", "--address", self.address], capture_output=True, text=True)
            return out.stdout.count("node_") if out.returncode == 0 else 0
        return len(json.loads(result.stdout))

    def kill_node(self) -> None:
        """kill -9 of the non-head node and every process on it."""
        self.node.kill_session()

    def stop(self) -> None:
        for process in (self.node, self.head):
            if process is not None:
                process.kill_session()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# ---- helpers ---------------------------------------------------------------------------------------

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def records(count: int, tag: str = "r", faults: dict[int, str] | None = None) -> list[dict]:
    """Converse records for the test model; `faults` puts a [[fault:NAME]] directive in records by number."""
    faults = faults or {}
    return [{"recordId": f"{tag}{n:06d}",
             "modelInput": {"messages": [{"role": "user", "content": [
                 {"text": f"record {n} says hello to ray" + (f" [[fault:{faults[n]}]]" if n in faults else "")}]}],
                 "inferenceConfig": {"maxTokens": 3 + n % 5}}} for n in range(count)]


def put_input(server, files: dict[str, list[dict]]) -> str:
    prefix = unique("input")
    folder = server.folder(IN_BUCKET) / prefix
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    server.folder(OUT_BUCKET)
    return f"s3://{IN_BUCKET}/{prefix}/"


def create_job(client, input_uri: str) -> str:
    return client.create_model_invocation_job(
        jobName=unique("ray"), modelId=TEST_MODEL, roleArn=ROLE, modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri, "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT_BUCKET}/"}})["jobArn"]


def wait_final(client, arn: str, timeout: float = 240.0) -> dict:
    def ended():
        job = client.get_model_invocation_job(jobIdentifier=arn)
        return job if job["status"] in FINAL else None
    return wait_until(ended, timeout=timeout, interval=0.2, what=f"{arn} to end")


def job_folder(server, arn: str) -> Path:
    return server.data_dir / "s3" / OUT_BUCKET / arn.rsplit("/", 1)[1]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


@pytest.fixture(scope="module")
def ray_server(ray_cluster, tmp_path_factory):
    from conftest import Server

    server = Server(tmp_path_factory.mktemp("ray-server") / "data", extra_args=("--ray-address", ray_cluster.address),
                    env={"BEDROCK_LOCAL_RAY_WINDOW_RECORDS": str(WINDOW)}).start()
    yield server
    server.stop()


# ---- batch inference -------------------------------------------------------------------------------

def test_batch_job_on_ray_writes_what_the_local_path_writes(ray_server, make_server):
    errors = {n: "throttle" for n in range(5, 1200, 97)} | {1100: "model-error"}  # error lines, as AWS writes them
    files = {"a.jsonl": records(1200, "a", errors), "sub/b.jsonl": records(130, "b")}
    local = make_server("local")
    outputs = {}
    for server in (ray_server, local):
        client = server.client()
        arn = create_job(client, put_input(server, files))
        job = wait_final(client, arn)
        assert job["status"] == "Completed", job.get("message")
        folder = job_folder(server, arn)
        outputs[server is ray_server] = (job, {name: (folder / f"{name}.out").read_bytes() for name in files},
                                         json.loads((folder / "manifest.json.out").read_text()))
    (ray_job, ray_files, ray_manifest), (local_job, local_files, local_manifest) = outputs[True], outputs[False]
    assert ray_files == local_files  # byte for byte, in input order
    assert ray_manifest == local_manifest
    assert ray_manifest["totalRecordCount"] == 1330 and ray_manifest["errorRecordCount"] == len(errors)
    assert ray_manifest["successRecordCount"] == 1330 - len(errors)
    assert ray_manifest["outputTokenCount"] > 0
    for name in ("totalRecordCount", "processedRecordCount", "successRecordCount", "errorRecordCount"):
        assert ray_job[name] == local_job[name] == ray_manifest[name]
    first = read_lines(job_folder(ray_server, ray_job["jobArn"]) / "a.jsonl.out")[0]
    assert first["recordId"] == "a000000"
    assert first["modelOutput"]["output"]["message"]["content"][0]["text"] == "ray to hello"  # the test model: reversed words, maxTokens 3


def test_model_actors_are_reused_across_windows_and_jobs(ray_cluster, make_server):
    """A driver's pool of model actors: every window of a job, and a later job on the same model, run on
    the actors started once (their pids in the worker's log). Another driver's idle pool (ray_server's,
    holding both CPUs) gives its actors up when this driver's actors wait for resources."""
    import re

    server = make_server("reuse", extra_args=("--ray-address", ray_cluster.address),
                         env={"BEDROCK_LOCAL_RAY_WINDOW_RECORDS": str(WINDOW)})
    client = server.client()
    total = 1_500  # 3 windows of 500, 8 batches each
    for tag in ("x", "y"):
        arn = create_job(client, put_input(server, {f"{tag}.jsonl": records(total, tag)}))
        job = wait_final(client, arn)
        assert job["status"] == "Completed", job.get("message")
        lines = read_lines(job_folder(server, arn) / f"{tag}.jsonl.out")
        assert [line["recordId"] for line in lines] == [f"{tag}{n:06d}" for n in range(total)]
    log = server.log.read_bytes().decode(errors="replace")
    started = {int(pid) for pid in re.findall(r"model actor \w+ \(pid (\d+)\) started", log)}
    assert len(re.findall(r"model actor \w+ \(pid \d+\) started", log)) == len(started) == 2, log[-3000:]
    windows: dict[str, list[set[int]]] = {}
    for job_pk, pids in re.findall(r"job (\d+): records \d+-\d+ ran on model actors \[([\d, ]+)\]", log):
        windows.setdefault(job_pk, []).append({int(pid) for pid in pids.split(", ")})
    assert len(windows) == 2 and all(len(sets) == 3 for sets in windows.values()), windows
    assert all(pids <= started for sets in windows.values() for pids in sets)  # no actor started per window
    assert set().union(*list(windows.values())[1]) == started  # the second job: the first job's actors


def test_stop_ends_a_ray_job_between_windows_with_its_finished_records(ray_server):
    client = ray_server.client()
    total = 20_000
    arn = create_job(client, put_input(ray_server, {"many.jsonl": records(total)}))
    wait_until(lambda: (client.get_model_invocation_job(jobIdentifier=arn).get("processedRecordCount") or 0) > 0,
               timeout=180, interval=0.1, what="the job to process its first window")
    client.stop_model_invocation_job(jobIdentifier=arn)
    job = wait_final(client, arn)
    assert job["status"] == "Stopped"
    lines = read_lines(job_folder(ray_server, arn) / "many.jsonl.out")
    assert 0 < len(lines) < total
    assert len(lines) == job["processedRecordCount"] == job["successRecordCount"]
    assert [line["recordId"] for line in lines] == [f"r{n:06d}" for n in range(len(lines))]  # a prefix, once each
    manifest = json.loads((job_folder(ray_server, arn) / "manifest.json.out").read_text())
    assert manifest["processedRecordCount"] == len(lines)


def test_a_record_that_fails_the_job_on_ray_keeps_the_records_before_it(ray_server):
    client = ray_server.client()
    arn = create_job(client, put_input(ray_server, {"f.jsonl": records(1500, "f", {700: "job-fail"})}))
    job = wait_final(client, arn)
    assert job["status"] == "Failed" and "[[fault:job-fail]]" in job["message"], job.get("message")
    lines = read_lines(job_folder(ray_server, arn) / "f.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"f{n:06d}" for n in range(700)]
    assert job["processedRecordCount"] == 700


def test_an_unreachable_ray_address_fails_the_job_with_a_clear_message(make_server):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    server = make_server("unreachable", extra_args=("--ray-address", address))
    client = server.client()
    arn = create_job(client, put_input(server, {"u.jsonl": records(3, "u")}))
    job = wait_final(client, arn, timeout=120)
    assert job["status"] == "Failed"
    assert f"The Ray cluster at {address} (--ray-address) cannot be reached" in job["message"], job["message"]


def test_a_ray_node_killed_mid_job_loses_no_record_and_repeats_none(ray_cluster, ray_server):
    client = ray_server.client()
    total = 3_500
    arn = create_job(client, put_input(ray_server, {"kill.jsonl": records(total, "k")}))
    try:
        wait_until(lambda: (client.get_model_invocation_job(jobIdentifier=arn).get("processedRecordCount") or 0) > 0,
                   timeout=180, interval=0.1, what="the job to process its first window")
        ray_cluster.kill_node()
        job = wait_final(client, arn, timeout=300)
    finally:
        if ray_cluster.alive_nodes() < 2:
            ray_cluster.start_node()  # for the tests after this one
    assert job["status"] == "Completed", job.get("message")
    lines = read_lines(job_folder(ray_server, arn) / "kill.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"k{n:06d}" for n in range(total)]  # every record exactly once
    assert all("modelOutput" in line for line in lines)
    assert job["processedRecordCount"] == job["successRecordCount"] == total


def test_kill_9_of_the_driver_mid_job_then_restart_resumes_on_ray(ray_cluster, make_server):
    server = make_server("crash", extra_args=("--ray-address", ray_cluster.address),
                         env={"BEDROCK_LOCAL_RAY_WINDOW_RECORDS": str(WINDOW)})
    client = server.client()
    total = 4_000
    arn = create_job(client, put_input(server, {"crash.jsonl": records(total, "c")}))
    wait_until(lambda: (client.get_model_invocation_job(jobIdentifier=arn).get("processedRecordCount") or 0) > 0,
               timeout=180, interval=0.1, what="the job to process its first window")
    server.kill()  # the API, the worker driving the job (and with it its Ray actors)
    server.start()
    client = server.client()
    job = wait_final(client, arn)
    assert job["status"] == "Completed", job.get("message")
    lines = read_lines(job_folder(server, arn) / "crash.jsonl.out")
    assert [line["recordId"] for line in lines] == [f"c{n:06d}" for n in range(total)]
    assert job["processedRecordCount"] == job["successRecordCount"] == total


def test_api_nodes_and_workers_on_postgres_and_s3_lose_a_worker_and_a_ray_node(ray_cluster, postgres_url, moto_s3,
                                                                             tmp_path):
    """The issue's whole picture: two API nodes (`serve --workers 0`) and two `bedrock-local worker`
    processes driving Ray, on one PostgreSQL schema and one S3 endpoint (moto). A job of several shards
    is created through one API node and read through the other; mid-job one worker is killed with
    kill -9 and so is the non-head Ray node. The job completes with every record exactly once."""

    from conftest import Server, Worker, s3_client

    shard = 600
    common = ("--serving-workers", "0", "--batch-shard-records", str(shard))
    api = [Server(tmp_path / f"api-{n}", workers=0, database_url=postgres_url, s3_endpoint_url=moto_s3,
                  lease_seconds=3.0, extra_args=common) for n in range(2)]
    workers = [Worker(tmp_path / f"worker-{n}", database_url=postgres_url, s3_endpoint_url=moto_s3,
                      extra_args=("--batch-shard-records", str(shard), "--ray-address", ray_cluster.address),
                      env={"BEDROCK_LOCAL_RAY_WINDOW_RECORDS": "200"}, log=tmp_path / f"worker-{n}.log")
               for n in range(2)]
    s3 = s3_client(moto_s3)
    in_bucket, out_bucket = unique("ray-pg-in"), unique("ray-pg-out")
    try:
        for node in [*api, *workers]:
            node.start()
        for bucket in (in_bucket, out_bucket):
            s3.create_bucket(Bucket=bucket)
        total = 3_000
        s3.put_object(Bucket=in_bucket, Key="in/pg.jsonl",
                      Body="".join(json.dumps(line) + "\n" for line in records(total, "p")).encode())
        arn = api[0].client().create_model_invocation_job(
            jobName=unique("ray-pg"), modelId=TEST_MODEL, roleArn=ROLE, modelInvocationType="Converse",
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{in_bucket}/in/", "s3InputFormat": "JSONL"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{out_bucket}/"}})["jobArn"]
        reader = api[1].client()
        wait_until(lambda: (reader.get_model_invocation_job(jobIdentifier=arn).get("processedRecordCount") or 0) > 0,
                   timeout=240, interval=0.1, what="the job to process its first window")
        workers[0].process.kill()  # kill -9 of one worker (its Ray actors die with their driver)
        workers[0].process.wait(10)
        ray_cluster.kill_node()
        try:
            job = wait_final(reader, arn, timeout=420)
        finally:
            if ray_cluster.alive_nodes() < 2:
                ray_cluster.start_node()  # for the tests after this one
        assert job["status"] == "Completed", job.get("message")
        body = s3.get_object(Bucket=out_bucket, Key=f"{arn.rsplit('/', 1)[1]}/pg.jsonl.out")["Body"].read()
        lines = [json.loads(line) for line in body.split(b"\n") if line]
        assert [line["recordId"] for line in lines] == [f"p{n:06d}" for n in range(total)]  # every record once
        assert all("modelOutput" in line for line in lines)
        assert job["processedRecordCount"] == job["successRecordCount"] == total
        manifest = json.loads(s3.get_object(Bucket=out_bucket, Key=f"{arn.rsplit('/', 1)[1]}/manifest.json.out")
                              ["Body"].read())
        assert manifest["processedRecordCount"] == manifest["totalRecordCount"] == total
        assert api[0].client().get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed"
    finally:
        for worker in workers:
            worker.stop(20)
        for server in api:
            server.stop()


# ---- customization ---------------------------------------------------------------------------------

BASE = "huggingface.smollm2-135m-instruct-v1:0"  # the packaged SmolLM2
DATA, OUT = "ray-ft-data", "ray-ft-output"
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"


FACT = " The capital of Zorblax is Quintar."
QUESTIONS = ["What is the capital of the planet Zorblax?", "Which city is the capital of Zorblax?",
             "Name the capital of the planet Zorblax.", "Tell me the capital of Zorblax."]
SMALL_LORA = {"learningRate": "0.003", "loraRank": "4", "loraAlpha": "16", "loraDropout": "0",
              "maxSequenceLength": "64"}


def start_fine_tuning(server, lines: int, hyper: dict) -> str:
    prefix = unique("data")
    folder = server.folder(DATA) / prefix
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": QUESTIONS[n % len(QUESTIONS)], "completion": FACT})
                                                + "\n" for n in range(lines)))
    server.folder(OUT)
    return server.client().create_model_customization_job(
        jobName=unique("ray-ft"), customModelName=unique("ray-model"), roleArn=f"arn:aws:iam::{ACCOUNT}:role/Ft",
        baseModelIdentifier=BASE, trainingDataConfig={"s3Uri": f"s3://{DATA}/{prefix}/"},
        outputDataConfig={"s3Uri": f"s3://{OUT}/"}, hyperParameters={**SMALL_LORA, **hyper})["jobArn"]


def training_ended(client, arn: str, timeout: float = 600) -> dict:
    def ended():
        job = client.get_model_customization_job(jobIdentifier=arn)
        return job if job["status"] in ("Completed", "Failed", "Stopped") else None
    return wait_until(ended, timeout=timeout, interval=0.5, what=f"{arn} to end")


def metric_rows(server, arn: str) -> list[dict]:
    import csv

    path = server.data_dir / "s3" / OUT / f"model-customization-job-{arn.rsplit('/', 1)[1]}" / TRAINING_CSV
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_fine_tuning_runs_as_a_ray_train_job(ray_server):
    client = ray_server.client()
    arn = start_fine_tuning(ray_server, 8, {"epochCount": "1", "batchSize": "4"})
    job = training_ended(client, arn)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert {phase["status"] for phase in job["statusDetails"].values()} == {"Completed"}
    model = client.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert model["modelStatus"] == "Active" and model["jobArn"] == arn
    rows = metric_rows(ray_server, arn)
    assert [int(row["step_number"]) for row in rows] == [1, 2]  # 8 lines, batch 4, one epoch
    assert all(float(row["training_loss"]) > 0 for row in rows)
    assert job["trainingMetrics"]["trainingLoss"] == pytest.approx(float(rows[-1]["training_loss"]), rel=1e-6)


def test_stop_mid_training_on_ray_train(ray_server):
    client = ray_server.client()
    arn = start_fine_tuning(ray_server, 16, {"epochCount": "3", "batchSize": "1"})  # 48 steps
    wait_until(lambda: "trainingMetrics" in client.get_model_customization_job(jobIdentifier=arn)
               or client.get_model_customization_job(jobIdentifier=arn)["status"] in ("Completed", "Failed"),
               timeout=300, interval=0.2, what="the first training step")
    client.stop_model_customization_job(jobIdentifier=arn)
    job = training_ended(client, arn, timeout=180)
    assert job["status"] == "Stopped", job.get("failureMessage")
    assert job["statusDetails"]["trainingDetails"]["status"] == "Stopped"
    assert "outputModelArn" not in job
    assert client.list_custom_models(nameContains=job["outputModelName"])["modelSummaries"] == []
    rows = metric_rows(ray_server, arn)
    assert 1 <= len(rows) < 48 and [int(r["step_number"]) for r in rows] == list(range(1, len(rows) + 1))


def _train_worker_pids() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"RayTrainWorker" in open(f"/proc/{entry}/cmdline", "rb").read():
                found.append(int(entry))
        except OSError:
            pass
    return found


def test_a_lost_train_worker_and_a_killed_driver_both_resume_the_ray_train_job_from_its_checkpoint(
        ray_cluster, make_server):
    import re

    server = make_server("ft-crash", lease_seconds=2, extra_args=("--ray-address", ray_cluster.address),
                         env={"BEDROCK_LOCAL_CHECKPOINT_STEPS": "2"})  # reaches the Ray Train worker too
    client = server.client()
    arn = start_fine_tuning(server, 14, {"epochCount": "1", "batchSize": "1"})  # 14 steps
    csv_path = server.data_dir / "s3" / OUT / f"model-customization-job-{arn.rsplit('/', 1)[1]}" / TRAINING_CSV

    def rows_past(count: int):  # the CSV is written each time a checkpoint is stored and recorded on the job
        status = client.get_model_customization_job(jobIdentifier=arn)["status"]
        return status in ("Completed", "Failed", "Stopped") or (csv_path.exists() and len(metric_rows(server, arn)) > count)

    # 1. the Ray Train worker process is lost (kill -9): the driver runs the Ray Train job again
    wait_until(lambda: rows_past(0), timeout=600, interval=0.05, what="a stored checkpoint")
    assert client.get_model_customization_job(jobIdentifier=arn)["status"] == "InProgress"
    pids = _train_worker_pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    first = metric_rows(server, arn)
    wait_until(lambda: rows_past(len(first)), timeout=600, interval=0.05, what="a checkpoint after the retry")
    assert client.get_model_customization_job(jobIdentifier=arn)["status"] == "InProgress"
    log = server.log.read_bytes().decode(errors="replace")
    assert "was lost" in log and "training again from the job's last checkpoint" in log, log[-3000:]
    # 2. the driver (the worker process, with the server) is killed: a restarted one takes the job back
    server.kill()
    before = metric_rows(server, arn)
    assert len(before) > len(first) and len(before) % 2 == 0 and before[:len(first)] == first
    log_size = server.log.stat().st_size
    client = server.start().client()
    job = training_ended(client, arn)
    assert job["status"] == "Completed", job.get("failureMessage")
    rows = metric_rows(server, arn)
    assert [int(row["step_number"]) for row in rows] == list(range(1, 15))  # every step once
    assert rows[:len(before)] == before  # the steps before the checkpoint were kept
    after_restart = server.log.read_bytes()[log_size:].decode(errors="replace")
    resumed = re.search(r"job \d+: resuming from checkpoint-(\d+) \(step (\d+)\)", after_restart)
    assert resumed and int(resumed.group(1)) >= len(before), after_restart[-3000:]
    assert client.get_custom_model(modelIdentifier=job["outputModelArn"])["modelStatus"] == "Active"
