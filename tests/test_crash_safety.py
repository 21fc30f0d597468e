"""Crash safety: `kill -9` of a server (with its workers) or of one worker, at seeded random-ish
moments, again and again, during batch inference, model copy and customization jobs. After each
restart on the same data dir every job resumes from its last checkpoint, and in the end:

- every job ended (Completed, or Failed with a message saying why); none is left running;
- batch: each input record is in the `.out` files exactly once, in input order, with its own answer,
  and the manifest and the job's counts agree with the lines;
- copy: the copied model's files are byte-identical to the source's;
- customization: each attempt resumed from the checkpoint the one before recorded (the trainer
  began there), the step metrics hold every step exactly once, and a model was produced; once
  Completed is seen no checkpoint object is left, and in the end no temp file nor local work folder;
- no accepted request was lost (a job created right before a kill runs after the restart; every ARN
  answered to concurrent Creates during a kill exists afterwards, with no duplicates);
- a job that kills its worker every time ends Failed after a bounded number of attempts, saying why;
- the database is consistent (check_store): job rows and resource statuses agree, no lease is left on
  a finished job, every model a job names exists with its artifacts whole.

Servers are real `bedrock-local serve` process groups (conftest.Server) on short leases; the test
reads the SQLite file with SQLAlchemy only to see what the API does not show (leases, checkpoints)."""

import concurrent.futures
import hashlib
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from bedrock_local.settings import Settings
from bedrock_local.store.database import open_database
from bedrock_local.store.schema import Job, Resource
from conftest import SHARED_CACHE, Server, upload_folder, wait_until

SEED = 20261130
ACCOUNT, REGION, WEST = "123456789012", "us-east-1", "us-west-2"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/CrashSafety"
TEST_MODEL = "bedrock-local.test-text-v1:0"
SMOLLM2 = "huggingface.smollm2-135m-instruct-v1:0"
IN, OUT, SRC, FT_DATA, FT_OUT = "crash-in", "crash-out", "crash-src", "crash-ft-data", "crash-ft-out"
MODEL_BUCKET = "bedrock-local-models"
MAX_ATTEMPTS = 3  # jobs/protocol.py: interruptions in a row without a new checkpoint before Failed
FINAL = {
    "model-invocation-job": {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"},
    "model-copy-job": {"Completed", "Failed"},
    "model-customization-job": {"Completed", "Failed", "Stopped"},
    "custom-model": {"Active", "Failed"},
}
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
KILLS: dict[str, int] = {}  # job type -> kills it survived (printed at the end of the module)


# ------------------------------------------------------------------------------------------
# helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def job_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def make(tmp_path: Path, name: str, workers: int = 1, env: dict | None = None) -> Server:
    """A server on the embedded defaults with a 2 s lease, no serving process (no runtime here) and room
    for a batch job of 120,000 records (AWS's quota is 50,000)."""
    return Server(tmp_path / name, workers=workers, lease_seconds=2, env=env,
                  extra_args=("--serving-workers", "0", "--batch-max-records", "200000")).start()


@pytest.fixture(scope="module", autouse=True)
def report_kills():
    """Prints how many kills each job type survived in this module (run with -s to see it)."""
    yield
    print("\nkills survived:", json.dumps(KILLS, indent=1))


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def database(server: Server):
    return open_database(Settings(data_dir=server.data_dir).resolved_database_url, migrate=False)


def job_rows(server: Server) -> dict[str, tuple[Resource, Job | None]]:
    db = database(server)
    try:
        with db.read_session() as session:
            rows = session.execute(select(Resource, Job).outerjoin(Job, Job.resource_pk == Resource.pk)).all()
            return {resource.arn: (resource, job) for resource, job in rows}
    finally:
        db.dispose()


def job_row(server: Server, arn: str) -> Job | None:
    return job_rows(server)[arn][1]


def kill(server: Server, kind: str) -> None:
    """kill -9 of the server's whole process group (the server and every worker it started)."""
    server.kill()
    KILLS[kind] = KILLS.get(kind, 0) + 1


def worker_pid(owner: str) -> int:
    """The pid in a lease owner `host:pid:nonce`."""
    return int(owner.split(":")[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".bedrock-local-tmp-")}


def wait_settled(server: Server, timeout: float = 120.0) -> None:
    """Until every resource in the store is in a final status (no job left to run)."""
    def settled():
        pending = {arn: resource.status for arn, (resource, _) in job_rows(server).items()
                   if resource.kind in FINAL and resource.status not in FINAL[resource.kind]}
        return not pending or None
    wait_until(settled, timeout=timeout, interval=0.3, what="every resource to reach a final status")


def check_store(server: Server) -> None:
    """The database is consistent once the jobs have ended: every resource final, its job row done
    with no lease, every model a job names present with whole artifacts, no duplicate names."""
    rows = job_rows(server)
    names = {}
    for arn, (resource, job) in rows.items():
        assert resource.status in FINAL[resource.kind], (arn, resource.status)
        if job is not None:
            assert (job.state, job.lease_owner, job.lease_expires_at) == ("done", None, None), (arn, job.state)
        for key in ("targetModelArn", "outputModelArn"):
            if key in resource.body and resource.status == "Completed":
                model, _ = rows[resource.body[key]]
                assert model.kind == "custom-model" and model.status == "Active", (arn, model.status)
        if resource.kind == "custom-model" and resource.status == "Active":
            folder = server.data_dir / "s3" / resource.body["_artifacts"][len("s3://"):]
            manifest = json.loads((folder / "bedrock-local-manifest.json").read_text())["files"]
            for name, info in manifest.items():
                assert sha256(folder / name) == info["sha256"] and (folder / name).stat().st_size == info["size"]
        key = (resource.kind, resource.account, resource.region, resource.name)
        assert key not in names, f"two resources named {key}: {names.get(key)} and {arn}"
        names[key] = arn


def wait_batch(client, arn: str, timeout: float = 120.0) -> dict:
    def ended():
        job = client.get_model_invocation_job(jobIdentifier=arn)
        return job if job["status"] in FINAL["model-invocation-job"] else None
    return wait_until(ended, timeout=timeout, interval=0.2, what=f"{arn} to end")


def put_input(server: Server, files: dict[str, list[dict]]) -> str:
    prefix = unique("input")
    folder = server.folder(IN) / prefix
    folder.mkdir(parents=True)
    for name, records in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return f"s3://{IN}/{prefix}/"


def create_batch(client, model: str, uri: str, invocation_type: str = "InvokeModel", **extra) -> str:
    return client.create_model_invocation_job(
        jobName=extra.pop("jobName", unique("batch")), modelId=model, roleArn=ROLE,
        modelInvocationType=invocation_type,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUT}/"}}, **extra)["jobArn"]


def llama_records(prefix: str, count: int) -> list[dict]:
    return [{"recordId": f"{prefix}{i:05d}", "modelInput": {"prompt": f"record {prefix} number {i} says hello",
                                                            "max_gen_len": 16}} for i in range(count)]


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


def check_batch_output(server: Server, job: dict, files: dict[str, list[dict]], answer=None) -> list[dict]:
    """Every input record exactly once, in input order, per file; the manifest and the job's counts
    match the lines. `answer(record)` is the expected modelOutput of a record, when known."""
    folder = server.data_dir / "s3" / OUT / job_id(job["jobArn"])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".")) == sorted(
        [name + ".out" for name in files] + ["manifest.json.out"])
    every = []
    for name, records in files.items():
        lines = read_out(folder / (name + ".out"))
        assert [line["recordId"] for line in lines] == [r["recordId"] for r in records], name
        for line, record in zip(lines, records):
            assert line["modelInput"] == record["modelInput"] and "error" not in line, line
            if answer is not None:
                assert line["modelOutput"] == answer(record), line
        every += lines
    total = sum(len(records) for records in files.values())
    manifest = json.loads((folder / "manifest.json.out").read_text())
    assert manifest["totalRecordCount"] == manifest["processedRecordCount"] == manifest["successRecordCount"] == total
    assert manifest["errorRecordCount"] == 0
    assert (job["totalRecordCount"], job["processedRecordCount"], job["successRecordCount"],
            job["errorRecordCount"]) == (total, total, total, 0)
    return every


def reversed_words(record: dict) -> dict:
    """The test model's exact Meta Llama answer: the prompt's words in reverse order."""
    words = record["modelInput"]["prompt"].split()
    return {"generation": " ".join(reversed(words)), "prompt_token_count": len(words),
            "generation_token_count": len(words), "stop_reason": "stop"}


def processed(server: Server, arn: str) -> int:
    """Records the job has flushed and checkpointed (the counts the API answers come from the same place)."""
    job = job_row(server, arn)
    return (job.checkpoint or {}).get("counts", {}).get("processedRecordCount", 0) if job else 0


# ------------------------------------------------------------------------------------------
# batch inference


@pytest.mark.timeout(600)
def test_batch_on_the_test_model_survives_repeated_kill_9(tmp_path, servers):
    rng = random.Random(SEED)
    server = make(tmp_path, "batch-test")
    servers.append(server)
    client = server.client()
    server.folder(OUT)
    # many files: the end of each is a checkpoint, so the job advances in small steps between kills
    # 120,000 records: on a quiet machine the test model runs ~10,000 a second, so even the last kill
    # (after three shares of 10-25% of what was left) still has seconds of work in front of it
    files = {f"part-{i:02d}.jsonl": llama_records(f"p{i:02d}-", 2500) for i in range(47)}
    files["nested/last.jsonl"] = llama_records("last-", 2500)
    total = sum(len(r) for r in files.values())
    arn = create_batch(client, TEST_MODEL, put_input(server, files))
    # the first kill at a random moment right after a worker took the job (while it validates or
    # starts), the others once a random share more of the records is done
    wait_until(lambda: job_row(server, arn).state == "running", timeout=120, interval=0.02, what="a worker")
    time.sleep(rng.uniform(0.0, 0.5))
    kill(server, "batch (test model)")
    assert processed(server, arn) < total
    kills, seen = 1, []
    for _ in range(3):
        server.start()
        done = processed(server, arn)
        target = done + int((total - done) * rng.uniform(0.1, 0.25))
        wait_until(lambda: processed(server, arn) >= target, timeout=120, interval=0.02,
                   what=f"{target} records processed")
        time.sleep(rng.uniform(0.0, 0.1))
        at_kill = job_row(server, arn)
        kill(server, "batch (test model)")
        kills += 1
        seen.append(processed(server, arn))
        assert at_kill.state == "running" and processed(server, arn) < total, seen
    server.start()
    job = wait_batch(client, arn)
    assert job["status"] == "Completed", job
    check_batch_output(server, job, files, answer=reversed_words)
    assert job_row(server, arn).attempts >= kills  # it was taken back after the kills that found it running
    wait_settled(server)
    check_store(server)


@pytest.mark.timeout(900)
def test_batch_on_smollm2_survives_kill_9_between_its_files(tmp_path, servers):
    """The real packaged model: a chunk of records is generated at once, so the finished files are
    where a resumed job starts; the lines written before each kill are kept as they were."""
    rng = random.Random(SEED + 1)
    server = make(tmp_path, "batch-smollm2")
    servers.append(server)
    client = server.client()
    server.folder(OUT)
    files = {f"part-{i}.jsonl": [{"recordId": f"p{i}-{j}", "modelInput": {
        "messages": [{"role": "user", "content": [{"text": f"Count to {j + i}."}]}],
        "inferenceConfig": {"maxTokens": 4, "temperature": 0}}} for j in range(6)] for i in range(4)}
    arn = create_batch(client, SMOLLM2, put_input(server, files), invocation_type="Converse")
    folder = server.data_dir / "s3" / OUT / job_id(arn)
    kept: dict[str, list[dict]] = {}
    for target in sorted(rng.sample([6, 12, 18], 2)):  # after one of the four files, then a later one
        wait_until(lambda: processed(server, arn) >= target, timeout=300, interval=0.02,
                   what=f"{target} records processed")
        time.sleep(rng.uniform(0.0, 0.05))
        kill(server, "batch (SmolLM2)")
        assert processed(server, arn) < 24
        kept = {p.name: read_out(p) for p in folder.glob("*.out")}
        server.start()
    job = wait_batch(client, arn, timeout=300)
    assert job["status"] == "Completed", job
    check_batch_output(server, job, files)
    for name, lines in kept.items():  # what was written before the last kill was not written again
        assert read_out(folder / name)[:len(lines)] == lines, name
    wait_settled(server)
    check_store(server)


# ------------------------------------------------------------------------------------------
# model copy


@pytest.mark.timeout(600)
def test_model_copy_survives_repeated_kill_9_and_is_byte_identical(tmp_path, servers, tiny_model_dir):
    rng = random.Random(SEED + 2)
    server = make(tmp_path, "copy")
    servers.append(server)
    east, west = server.client(REGION), server.client(WEST)
    # a real (tiny) HF model plus many extra files, so the copy takes long enough to be killed in
    source_dir = tmp_path / "source-model"
    source_dir.mkdir()
    for file in tiny_model_dir.iterdir():
        (source_dir / file.name).write_bytes(file.read_bytes())
    blobs = random.Random(SEED).randbytes
    for i in range(300):
        (source_dir / "extra" / f"blob-{i:03d}.bin").parent.mkdir(exist_ok=True)
        (source_dir / "extra" / f"blob-{i:03d}.bin").write_bytes(blobs(16 * 1024 + i))
    uri = upload_folder(server, SRC, "model", source_dir)
    source = east.create_custom_model(modelName=unique("source"),
                                      modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    wait_until(lambda: east.get_custom_model(modelIdentifier=source)["modelStatus"] != "Creating", timeout=180,
               what="the source import")
    assert east.get_custom_model(modelIdentifier=source)["modelStatus"] == "Active"

    copy = west.create_model_copy_job(sourceModelArn=source, targetModelName=unique("copied"))["jobArn"]
    total = len(files_of(source_dir))

    def copied() -> int:
        job = job_row(server, copy)
        return len((job.checkpoint or {}).get("files", {})) if job else 0

    for _ in range(3):
        target = copied() + int(total * rng.uniform(0.05, 0.12))
        wait_until(lambda: copied() >= target, timeout=120, interval=0.01, what=f"{target} files copied")
        time.sleep(rng.uniform(0.0, 0.05))
        kill(server, "model copy")
        assert job_row(server, copy).state == "running" and copied() < total
        server.start()
    job = wait_until(lambda: (j := west.get_model_copy_job(jobArn=copy))["status"] != "InProgress" and j,
                     timeout=180, what="the copy to end")
    assert job["status"] == "Completed", job
    target = west.get_custom_model(modelIdentifier=job["targetModelArn"])
    assert target["modelStatus"] == "Active"
    rows = job_rows(server)
    copied_dir = server.data_dir / "s3" / rows[job["targetModelArn"]][0].body["_artifacts"][len("s3://"):]
    got = files_of(copied_dir)
    manifest = json.loads(got.pop("bedrock-local-manifest.json"))["files"]
    assert got == files_of(source_dir)  # every file, byte for byte, and nothing else
    assert set(manifest) == set(got)
    assert rows[copy][1].attempts == 4  # taken back after each kill
    wait_settled(server)
    check_store(server)


# ------------------------------------------------------------------------------------------
# customization

CHECKPOINT_EVERY = {"BEDROCK_LOCAL_CHECKPOINT_STEPS": "2"}  # jobs/handlers/customization.py: a fixed spacing
FT_HYPER = {"epochCount": "2", "batchSize": "1", "learningRate": "0.003", "loraRank": "4", "loraAlpha": "16",
            "loraDropout": "0", "maxSequenceLength": "32"}


def put_training_data(server: Server, count: int) -> str:
    folder = server.folder(FT_DATA) / unique("data")
    folder.mkdir(parents=True)
    lines = [{"prompt": f"What is code {i}?", "completion": f" Code {i} is Zorblax {i * 7}."} for i in range(count)]
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return f"s3://{FT_DATA}/{folder.name}/"


def create_customization(client, uri: str) -> str:
    return client.create_model_customization_job(
        jobName=unique("ft"), customModelName=unique("ft-model"), roleArn=ROLE, baseModelIdentifier=SMOLLM2,
        hyperParameters=FT_HYPER, trainingDataConfig={"s3Uri": uri},
        outputDataConfig={"s3Uri": f"s3://{FT_OUT}/"})["jobArn"]


def recorded_step(server: Server, arn: str) -> int:
    job = job_row(server, arn)
    return (job.checkpoint or {}).get("step", 0) if job else 0


@pytest.mark.timeout(1500)
def test_customization_resumes_from_its_checkpoint_after_each_kill_9(tmp_path, servers):
    rng = random.Random(SEED + 3)
    server = make(tmp_path, "ft", env=CHECKPOINT_EVERY)
    servers.append(server)
    client = server.client()
    server.folder(FT_OUT)
    steps = 2 * 4  # 4 lines, batch 1, 2 epochs; a checkpoint every 2 steps
    arn = create_customization(client, put_training_data(server, 4))
    recorded = []
    for _ in range(3):
        # a kill at a random moment after the job recorded a checkpoint newer than the last one
        last = recorded[-1] if recorded else 0
        wait_until(lambda: recorded_step(server, arn) > last
                   or client.get_model_customization_job(jobIdentifier=arn)["status"] != "InProgress",
                   timeout=600, interval=0.05, what=f"a checkpoint after step {last}")
        time.sleep(rng.uniform(0.0, 0.3))
        kill(server, "customization")
        step = recorded_step(server, arn)
        assert 0 < step < steps and job_rows(server)[arn][0].status == "InProgress", step
        recorded.append(step)
        server.start()
    # one more kill as soon as the training is over: while the model is being published, or (on a fast
    # machine) right after; either way the restarted worker finishes what the lost one had begun
    trained = re.compile(r"job \d+: trained after")
    log_size = server.log.stat().st_size
    wait_until(lambda: trained.search(server.log.read_bytes()[log_size:].decode(errors="replace")), timeout=600,
               interval=0.02, what="the training's end")
    kill(server, "customization")
    publishing = job_rows(server)[arn][0].status == "InProgress"
    # the model stored whole and recorded on the job in place of the checkpoint: the next worker
    # registers it without resuming; before that record it resumes from the checkpoint
    published = "published" in (job_row(server, arn).checkpoint or {})
    if publishing and not published:
        recorded.append(recorded_step(server, arn))
    moment = "after the job ended" if not publishing else "after the model was stored" if published else \
        "while publishing"
    print(f"\ncustomization: the last kill came {moment}")
    server.start()
    job = wait_until(lambda: (j := client.get_model_customization_job(jobIdentifier=arn))["status"] not in
                     ("InProgress", "Stopping") and j, timeout=900, interval=0.3, what="the training to end")
    assert job["status"] == "Completed", job.get("failureMessage")
    # each restarted worker resumed from the checkpoint recorded before the kill, and the trainer began there
    log = server.log.read_text(errors="replace")
    resumed = [int(step) for step in re.findall(r"job \d+: resuming from checkpoint-(\d+) \(step \d+\)", log)]
    assert resumed == recorded, (resumed, recorded)
    assert re.search(rf"trained after {steps} steps in [\d.]+ s, resumed from checkpoint-{recorded[-1]};", log)
    # every step's metrics row exactly once: none lost, none done twice
    csv_path = server.data_dir / "s3" / FT_OUT / f"model-customization-job-{job_id(arn)}" / TRAINING_CSV
    rows = csv_path.read_text().splitlines()
    assert [int(row.split(",")[0]) for row in rows[1:]] == list(range(1, steps + 1)), rows
    model = client.get_custom_model(modelIdentifier=job["outputModelArn"])
    assert model["modelStatus"] == "Active" and model["jobArn"] == arn
    # one model, stored once: no copy left behind by an interrupted attempt
    models = server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / REGION / "custom-models"
    assert [p.name for p in models.iterdir()] == [job["outputModelArn"].rsplit("/", 1)[1]]
    checkpoints = server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / REGION / "customization-jobs" / job_id(arn)
    # the ended job left no checkpoint, at the moment Completed is seen (they are deleted before it)
    assert not [p for p in checkpoints.rglob("*") if p.is_file()]
    # nor anything half-written by the killed attempts, once its worker is done with it
    wait_until(lambda: job_row(server, arn).state == "done", timeout=60, what="the job row to be done")
    wait_settled(server)
    check_store(server)
    assert not list((server.data_dir / "s3").rglob(".bedrock-local-tmp-*"))
    assert not (SHARED_CACHE / "customization" / job_id(arn)).exists()


# ------------------------------------------------------------------------------------------
# a worker alone


@pytest.mark.timeout(600)
def test_a_killed_worker_is_replaced_and_its_job_taken_over(tmp_path, servers):
    """kill -9 of the worker process only: the server lives on, starts another worker, and that one
    takes the job over once the dead worker's lease runs out."""
    server = make(tmp_path, "worker-kill")
    servers.append(server)
    client = server.client()
    server.folder(OUT)
    total = 120_000  # ~12 s of the test model's work on a quiet machine: the kill lands well before the end
    files = {f"w{i}.jsonl": llama_records(f"w{i}-", total // 6) for i in range(6)}  # 20,000 a file: AWS's per-file quota is 50,000
    arn = create_batch(client, TEST_MODEL, put_input(server, files))
    wait_until(lambda: processed(server, arn) >= 3000, timeout=120, interval=0.02, what="3000 records processed")
    owner = job_row(server, arn).lease_owner
    os.kill(worker_pid(owner), signal.SIGKILL)
    KILLS["batch (worker only)"] = KILLS.get("batch (worker only)", 0) + 1
    assert processed(server, arn) < total
    job = wait_batch(client, arn)
    assert job["status"] == "Completed", job
    check_batch_output(server, job, files, answer=reversed_words)
    row = job_row(server, arn)
    assert row.attempts == 2
    assert server.process.poll() is None  # the server itself was never down
    log = server.log.read_text(errors="replace")
    assert re.search(rf"\(pid {worker_pid(owner)}\) ended with exit code -9; starting another in", log), log[-2000:]
    new_owner = re.findall(r"worker (\S+) started", log)[-1]
    assert worker_pid(new_owner) != worker_pid(owner)
    wait_settled(server)
    check_store(server)


# ------------------------------------------------------------------------------------------
# accepted requests


@pytest.mark.timeout(600)
def test_accepted_creates_survive_kill_9(tmp_path, servers):
    """A job created right before a kill runs after the restart; of Creates racing a kill, every one
    that was answered exists afterwards, and one retried with its client token is not made twice."""
    rng = random.Random(SEED + 4)
    server = make(tmp_path, "accepted")
    servers.append(server)
    client = server.client()
    server.folder(OUT)
    small = {"s.jsonl": llama_records("s", 40)}
    uri = put_input(server, small)
    first = create_batch(client, TEST_MODEL, uri)
    kill(server, "accepted requests")  # right after the 200
    server.start()

    answered: dict[str, str] = {}  # client token -> ARN
    lost: list[str] = []  # tokens whose Create got no answer (the kill cut it)
    stop = threading.Event()

    def creator(index: int) -> None:
        own = server.client()
        for n in range(30):
            token = f"token-{index}-{n}"
            while not stop.is_set():
                try:
                    answered[token] = create_batch(own, TEST_MODEL, uri, jobName=f"race-{index}-{n}",
                                                   clientRequestToken=token)
                    break
                except ClientError as exc:  # only the quota of unfinished jobs may refuse it: wait, retry
                    assert exc.response["Error"]["Code"] == "ServiceQuotaExceededException", (token, exc)
                    time.sleep(0.2)
                except Exception:  # noqa: BLE001 - the connection was cut by the kill
                    lost.append(token)
                    return
            if stop.is_set():
                return

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(creator, i) for i in range(3)]
        wait_until(lambda: len(answered) >= 3, timeout=60, interval=0.01, what="a few Creates")
        time.sleep(rng.uniform(0.0, 0.2))
        kill(server, "accepted requests")
        stop.set()
        for future in futures:
            future.result()
    server.start()
    for token, arn in answered.items():  # every answered Create is there
        assert client.get_model_invocation_job(jobIdentifier=arn)["jobArn"] == arn
    for token in lost:  # a Create cut by the kill either happened or did not: retried, it happens once
        index, n = token.split("-")[1:]
        answered[token] = wait_until(lambda: retry_create(client, uri, f"race-{index}-{n}", token), timeout=120,
                                     what=f"the retry of {token}")
    arns = [first, *answered.values()]
    print(f"\naccepted requests: {len(answered) - len(lost)} Creates answered before the kill, {len(lost)} cut "
          f"by it and retried")
    for arn in arns:
        job = wait_batch(client, arn)
        assert job["status"] == "Completed", job
        check_batch_output(server, job, small, answer=reversed_words)
    listed = [j["jobArn"] for page in client.get_paginator("list_model_invocation_jobs").paginate()
              for j in page["invocationJobSummaries"]]
    assert sorted(listed) == sorted(set(arns))  # every one once, and nothing else
    wait_settled(server)
    check_store(server)


def retry_create(client, uri: str, name: str, token: str) -> str | None:
    """The retried Create's ARN, or None while the quota of unfinished jobs refuses it."""
    try:
        return create_batch(client, TEST_MODEL, uri, jobName=name, clientRequestToken=token)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "ServiceQuotaExceededException", exc
        return None


# ------------------------------------------------------------------------------------------
# a job that keeps killing its worker


@pytest.mark.timeout(600)
def test_a_job_that_kills_its_worker_every_time_ends_failed(tmp_path, servers):
    """The worker holding the job dies each time before the job records a checkpoint (as if the work
    itself crashed it): after MAX_ATTEMPTS of those in a row the job ends Failed, saying why, and the
    server goes on running other jobs."""
    server = make(tmp_path, "crash-loop")
    servers.append(server)
    client = server.client()
    server.folder(FT_OUT)
    server.folder(OUT)
    arn = create_customization(client, put_training_data(server, 3))
    killed = set()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        row = wait_until(lambda: (j := job_row(server, arn)).state == "running" and j.attempts == attempt and j,
                         timeout=120, interval=0.01, what=f"attempt {attempt}")
        os.kill(worker_pid(row.lease_owner), signal.SIGKILL)
        killed.add(worker_pid(row.lease_owner))
        KILLS["customization (crash loop, worker)"] = KILLS.get("customization (crash loop, worker)", 0) + 1
    job = wait_until(lambda: (j := client.get_model_customization_job(jobIdentifier=arn))["status"] != "InProgress"
                     and j, timeout=120, what="the job to end")
    assert job["status"] == "Failed", job
    assert f"interrupted {MAX_ATTEMPTS} times in a row before its first checkpoint" in job["failureMessage"]
    assert "killed or crashed" in job["failureMessage"]
    assert "outputModelArn" not in job and "InProgress" not in {d["status"] for d in job["statusDetails"].values()}
    row = job_row(server, arn)
    assert (row.state, row.attempts, row.lease_owner) == ("done", MAX_ATTEMPTS + 1, None)
    assert len(killed) == MAX_ATTEMPTS
    # the server still runs jobs
    other = create_batch(client, TEST_MODEL, put_input(server, {"after.jsonl": llama_records("x", 5)}))
    assert wait_batch(client, other)["status"] == "Completed"
    wait_settled(server)
    check_store(server)

