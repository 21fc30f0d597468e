"""Nothing left behind by a kill -9: the folder store's temp files (`.bedrock-local-tmp-<host>.<pid>-*`)
of writers killed at several points of a write (data written but not synced, a half-copied upload, a
hard link made but not renamed, a download into the local cache) are removed at the next start of a
`bedrock-local` process on that data dir, while the temp file of a writer still running is kept; a job
killed again and again leaves none either; an S3 endpoint's incomplete multipart uploads under a
prefix are aborted by the prefix's owner (storage `sweep_temporary`).

Writers are real processes held at the chosen point (the call they would make next sleeps) and then
killed with SIGKILL, as a kill -9 of a worker would leave them."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from conftest import Server, wait_until

from bedrock_local.storage import FolderStore, S3Location, S3Store
from bedrock_local.storage.folder import (
    TMP_PREFIX,
    _process_alive,
    is_abandoned,
    sweep_temporary,
    temporary_prefix,
)
from bedrock_local.testing import Process
from bedrock_local.testing.processes import spawned_children

BUCKET = "leftovers"
TEST_MODEL = "bedrock-local.test-text-v1:0"
ROLE = "arn:aws:iam::123456789012:role/Leftovers"

# A writer held at `point`: it prints "held" where it would make its next call, and sleeps there.
WRITER = r"""
import os, shutil, sys, time
from pathlib import Path
from bedrock_local.storage import FolderStore, S3Location
from bedrock_local.storage import folder as folder_store

point, root, local, key, source = sys.argv[1:6]

def hold(*args, **kwargs):
    print("held", flush=True)
    time.sleep(3600)

store = FolderStore(Path(root))
loc = S3Location("leftovers", key)
if point == "put-unsynced":  # every byte written, not yet synced nor renamed
    os.fsync = hold
    store.put_bytes(loc, b"x" * 100_000)
elif point == "upload-half-copied":
    def half(src, dst, length=0):
        dst.write(src.read(50_000))
        dst.flush()
        hold()
    shutil.copyfileobj = half
    store.upload_file(loc, Path(source))
elif point == "link-not-renamed":  # a checkpoint file put by hard link (jobs/handlers/customization.py)
    from bedrock_local.jobs.handlers.customization import store_file
    os.replace = hold
    store_file(store, loc, Path(source))
elif point == "download-not-renamed":  # a model file fetched into the local cache
    os.replace = hold
    store.download_file(loc, Path(local) / "model.bin")
"""


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TMP_PREFIX}*"))


def held_writer(tmp_path: Path, point: str, root: Path, local: Path, key: str, source: Path) -> Process:
    log = tmp_path / f"writer-{point}-{key.replace('/', '_')}.log"
    writer = Process([sys.executable, "-c", WRITER, point, root, local, key, source], log, name=f"writer {point}")
    writer.wait_until(lambda: "held" in log.read_text(), timeout=60, what=f"reach {point}")
    return writer


def kill(writer: Process) -> None:
    writer.kill_group()


def test_temp_files_of_killed_writers_are_removed_at_the_next_start_and_a_live_ones_kept(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    root = data / "s3"
    store = FolderStore(root)
    store.ensure_bucket(BUCKET)
    cache.mkdir()
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(200_000))
    store.upload_file(S3Location(BUCKET, "models/m/model.bin"), source)

    killed = [held_writer(tmp_path, point, root, cache, key, source) for point, key in (
        ("put-unsynced", "out/part-1.jsonl.out"),
        ("upload-half-copied", "out/part-2.jsonl.out"),
        ("link-not-renamed", "checkpoint/checkpoint-2/optimizer.pt"),
        ("download-not-renamed", "models/m/model.bin"))]
    live = held_writer(tmp_path, "put-unsynced", root, cache, "out/part-3.jsonl.out", source)
    try:
        for writer in killed:
            kill(writer)
        dead = temps(root) + temps(cache)
        assert len(dead) == 5  # four killed writers and the live one, each with its temp file
        assert [loc.key for loc, _ in store.list_objects(S3Location(BUCKET, ""))] == ["models/m/model.bin"]
        assert all(f".{writer.pid}-" in " ".join(p.name for p in dead) for writer in [*killed, live])

        server = Server(data, workers=0, cache_dir=cache, extra_args=("--serving-workers", "0")).start()
        try:
            # the sweep runs beside the start, the store then the cache, with a log line after each
            wait_until(lambda: server.log.read_text().count("temp file(s) of writes cut short") == 2, timeout=60,
                       what="the sweep at the start")
            log = server.log.read_text()
            assert f"removed 3 temp file(s) of writes cut short (kill -9) under {root}" in log, log[-3000:]
            assert f"removed 1 temp file(s) of writes cut short (kill -9) under {cache}" in log, log[-3000:]
            assert not temps(cache)
            left = temps(root)
            assert [p.name for p in left] == [p.name for p in dead if f".{live.pid}-" in p.name]  # the live one
        finally:
            server.stop()
        assert store.get_bytes(S3Location(BUCKET, "models/m/model.bin")) == source.read_bytes()  # objects kept
        assert not (cache / "model.bin").exists()
    finally:
        kill(live)
    # the live writer, killed in its turn, is gone at the next start of any process (a worker here)
    worker_log = tmp_path / "worker.log"
    worker = Process([sys.executable, "-m", "bedrock_local.cli", "worker", "--data-dir", data, "--cache-dir", cache],
                     worker_log, name="bedrock-local worker")
    try:
        wait_until(lambda: not temps(root), timeout=60, what="the sweep at the worker's start")
    finally:
        worker.stop()


def test_which_temp_files_are_abandoned(tmp_path):
    """A writer of this host that runs keeps its file; one that is gone, or whose pid now belongs to a
    process started after the file last changed (pids are reused: a restarted container starts its
    processes with the same small pids), does not; another host's file goes by its age only."""
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = temporary_prefix()
        kept = tmp_path / (mine.replace(f".{os.getpid()}-", f".{running.pid}-") + "kept")
        kept.write_bytes(b"x")
        own = tmp_path / (mine + "own")
        own.write_bytes(b"x")
        other_host = tmp_path / f"{TMP_PREFIX}00000000.{running.pid}-x"
        other_host.write_bytes(b"x")
        no_owner = tmp_path / f"{TMP_PREFIX}x"  # named by an older version
        no_owner.write_bytes(b"x")
        assert not any(is_abandoned(p) for p in (kept, own, other_host, no_owner))
        assert _process_alive(running.pid, since=time.time())
        assert not _process_alive(running.pid, since=time.time() - 30)  # the file is older than the process
        assert is_abandoned(other_host, now=time.time() + 3601) and is_abandoned(no_owner, now=time.time() + 3601)
        assert sweep_temporary(tmp_path) == 0
    finally:
        running.kill()
        running.wait()
    assert is_abandoned(kept)  # its writer is gone
    assert sweep_temporary(tmp_path) == 1
    assert sorted(p.name for p in temps(tmp_path)) == sorted([own.name, other_host.name, no_owner.name])


def test_a_batch_job_killed_again_and_again_leaves_no_temp_file(tmp_path):
    rng = random.Random(20261206)
    data = tmp_path / "batch"
    server = Server(data, workers=1, lease_seconds=2, extra_args=("--serving-workers", "0"))
    server.start()
    try:
        client = server.client()
        server.folder("leftover-out")
        records = [{"recordId": f"r{i:05d}", "modelInput": {"prompt": f"record {i} says hello", "max_gen_len": 8}}
                   for i in range(2000)]
        folder = server.folder("leftover-in") / "input"
        folder.mkdir()
        for part in range(20):
            (folder / f"part-{part:02d}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in records[part * 100:(part + 1) * 100]))
        arn = client.create_model_invocation_job(
            jobName="leftovers", modelId=TEST_MODEL, roleArn=ROLE,
            inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://leftover-in/input/"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://leftover-out/"}})["jobArn"]
        out = data / "s3" / "leftover-out" / arn.rsplit("/", 1)[1]
        def outputs() -> int:
            return len(list(out.glob("*.out"))) if out.is_dir() else 0

        for _ in range(3):  # killed while it writes its output files, at three moments
            written = outputs()
            wait_until(lambda: outputs() > written  # noqa: B023 - read before the next round changes it
                       or client.get_model_invocation_job(jobIdentifier=arn)["status"] == "Completed",
                       timeout=120, interval=0.01, what="more output")
            time.sleep(rng.uniform(0.0, 0.05))
            server.kill()
            server.start()
        job = wait_until(lambda: (j := client.get_model_invocation_job(jobIdentifier=arn))["status"]
                         in ("Completed", "Failed") and j, timeout=180, what="the job to end")
        assert job["status"] == "Completed", job
        assert job["successRecordCount"] == len(records)
        server.restart()  # whatever the last kill cut short, this start removes
        wait_until(lambda: not temps(data / "s3"), timeout=60, what="no temp file in the store")
    finally:
        server.stop()


@pytest.fixture
def s3(moto_s3):
    store = S3Store(moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    store.ensure_bucket("multipart-leftovers")
    return store


def test_incomplete_multipart_uploads_under_a_prefix_are_aborted_by_its_owner(s3, moto_s3):
    raw = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    for key in ("jobs/a/checkpoint-2/optimizer.pt", "jobs/a/model/model.safetensors", "jobs/b/model.safetensors"):
        raw.create_multipart_upload(Bucket="multipart-leftovers", Key=key)
    assert s3.sweep_temporary(S3Location("multipart-leftovers", "jobs/a/")) == 2
    left = raw.list_multipart_uploads(Bucket="multipart-leftovers").get("Uploads", [])
    assert [u["Key"] for u in left] == ["jobs/b/model.safetensors"]  # another owner's upload is not touched
    assert s3.sweep_temporary() == 0  # no prefix: an endpoint-wide sweep is the bucket's lifecycle rule


# A foundation model converted into a fresh cache folder, held where the finished folder would be
# renamed into place: the whole model is written in a temp folder by then.
BUILDER = r"""
import os, sys, time
from pathlib import Path
from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.engine.loading import materialize_foundation_model

def hold(*args, **kwargs):
    print("held", flush=True)
    time.sleep(3600)

os.replace = hold
materialize_foundation_model(find_foundation_model("huggingface.smollm2-135m-instruct-v1:0"), Path(sys.argv[1]))
"""


def test_a_model_conversion_killed_midway_leaves_no_folder_after_the_next_sweep(tmp_path):
    from bedrock_local.storage import sweep_leftovers

    cache = tmp_path / "cache"
    log = tmp_path / "builder.log"
    builder = Process([sys.executable, "-c", BUILDER, cache], log, name="model builder")
    builder.wait_until(lambda: "held" in log.read_text(), timeout=240, what="convert the model")
    building = [path for path in cache.iterdir() if path.name.startswith(TMP_PREFIX)]
    assert len(building) == 1 and building[0].is_dir() and any(building[0].glob("*.safetensors"))
    store = FolderStore(tmp_path / "store")
    sweep_leftovers(store, cache, background=False)
    assert building[0].is_dir()  # its builder still runs: kept
    kill(builder)
    sweep_leftovers(store, cache, background=False)  # what serve, worker and serving run at their start
    assert not building[0].exists() and list(cache.iterdir()) == []


def test_a_worker_started_again_after_a_kill_sweeps_what_it_left(tmp_path):
    """serve's own sweep runs once, at its start; its supervisor sweeps again each time it finds a
    worker process dead (kill -9), so what the killed one left goes without waiting for a restart."""
    server = Server(tmp_path / "data", workers=1, extra_args=("--serving-workers", "0")).start()
    try:
        bucket = server.folder(BUCKET)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # a pid of this host that no longer runs: the writer of the file below
        left = bucket / (temporary_prefix().replace(f".{os.getpid()}-", f".{gone.pid}-") + "part")
        left.write_bytes(b"x" * 1000)  # serve's own sweep of this near-empty store ended before its port opened
        workers = spawned_children(server.pid)
        assert len(workers) == 1
        os.kill(workers.pop(), 9)
        wait_until(lambda: not left.exists(), 60, what="the replacement worker's sweep")
        assert "worker process bedrock-local-worker-0" in server.log.read_text()  # the supervisor's restart line
    finally:
        server.stop()
