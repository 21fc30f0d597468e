"""Supervision through real processes: `serve` starts a serving process killed with kill -9 again,
and its deployments and on-demand models are answered again; `worker --processes N` and `serving
--processes N` do the same for their children; SIGTERM stops each without a restart (to the whole
process group, as systemd sends it, or to the command alone, which then stops its children). A deployment's
attempts are counted as a job's (jobs/protocol.py): one served again after every kill of its node
is never failed for them, while one whose nodes are lost in a row while loading it (its weights
file is a FIFO nobody writes, so loading blocks until the kill) ends Failed after MAX_ATTEMPTS.

The tests read the `jobs` and `serving_nodes` tables only for what the API does not show (which
process holds a deployment, how many claims it took)."""

import json
import os
import re
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from bedrock_local import testing
from bedrock_local.jobs.protocol import MAX_ATTEMPTS
from bedrock_local.settings import Settings
from bedrock_local.store.database import open_database
from bedrock_local.store.schema import Job, Resource, ServingNode
from bedrock_local.testing.processes import spawned_children
from conftest import SHARED_CACHE, Server, upload_folder, wait_until, with_test_defaults

LEASE = 1.5  # seconds: a killed node's deployments are taken over soon after
STUB = "bedrock-local.test-text-v1:0"
RESTART = r"\(pid {pid}\) ended with exit code -9; starting another in"
NOT_NOW = {"ModelNotReadyException", "ServiceUnavailableException"}  # a node is starting or was just lost
# one torch thread per process, and no torch import when a child starts (processes/supervisor.py
# threads_per_worker): on a small machine the children start in seconds rather than tens of seconds
ENV = {"OMP_NUM_THREADS": "1"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with a worker and a serving process, its lease short."""
    server = Server(tmp_path_factory.mktemp("supervised") / "data", workers=1, serving_workers=1,
                    lease_seconds=LEASE, env=ENV).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def db(server):
    database = open_database(Settings(data_dir=server.data_dir).resolved_database_url, migrate=False)
    yield database
    database.dispose()


# ---- reading processes and rows ----------------------------------------------------------------

def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies are dead)."""
    found = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.add(pid)
        except OSError:
            pass
    return found


def owner_pid(owner: str | None) -> int | None:
    """The pid in a serving node's id `serving:host:pid:nonce`."""
    return int(owner.split(":")[2]) if owner else None


def job(db, arn: str) -> Job:
    with db.read_session() as session:
        return session.execute(select(Job).join(Resource, Job.resource_pk == Resource.pk)
                               .where(Resource.arn == arn)).scalar_one()


def node_pids(db) -> set[int]:
    with db.read_session() as session:
        return {owner_pid(node_id) for node_id in session.scalars(select(ServingNode.node_id))}


def log_of(node) -> str:
    return node.log.read_text(errors="replace")


# ---- models and calls --------------------------------------------------------------------------

def import_model(server, bedrock, folder: Path, name: str) -> str:
    uri = upload_folder(server, "models", f"{name}/", folder)
    arn = bedrock.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}})["modelArn"]
    wait_until(lambda: bedrock.get_custom_model(modelIdentifier=arn)["modelStatus"] == "Active", 120,
               what=f"{name} Active")
    return arn


def block_loading(server, model_arn: str) -> Path:
    """Make the stored weights of a custom model a FIFO that nobody writes (and drop any cached copy):
    a node that loads it blocks there until it is killed."""
    model_id = model_arn[-12:]
    stored = server.folder("bedrock-local-models") / "123456789012" / "us-east-1" / "custom-models" / model_id
    weights = next(stored.glob("*.safetensors"))
    weights.unlink()
    os.mkfifo(weights)
    shutil.rmtree(SHARED_CACHE / "models" / "123456789012" / "us-east-1" / model_id, ignore_errors=True)
    return weights


def unblock(fifo: Path) -> None:
    """Let a node still blocked on the FIFO go on (it reads no weights and fails the load)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # nobody is reading it
        pass


def invoke(runtime, model_id: str) -> str:
    response = runtime.invoke_model(modelId=model_id, body=json.dumps(
        {"prompt": "hello there", "max_gen_len": 6, "temperature": 0}))
    return json.loads(response["body"].read())["generation"]


def converse(runtime, model_id: str = STUB) -> str:
    answer = runtime.converse(modelId=model_id,
                              messages=[{"role": "user", "content": [{"text": "Say hello to the world"}]}])
    return answer["output"]["message"]["content"][0]["text"]


def answered(call, *args):
    """`call(*args)`, or None while the model's node is starting or was just lost."""
    try:
        return call(*args)
    except ClientError as error:
        assert error.response["Error"]["Code"] in NOT_NOW, error.response
        return None


# ---- serve -------------------------------------------------------------------------------------

def test_serve_restarts_a_killed_serving_process_and_counts_deployment_attempts_in_a_row(server, db, tiny_model_dir):
    """kill -9 of the serving process, MAX_ATTEMPTS times, each time while it serves one deployment
    (progress) and is loading another (none): serve starts it again, the served deployment and the
    on-demand model answer again and it stays Active; the other ends Failed at its next claim."""
    bedrock, runtime = server.client(), server.client(service="bedrock-runtime")
    served_model = import_model(server, bedrock, tiny_model_dir, unique("served"))
    stuck_model = import_model(server, bedrock, tiny_model_dir, unique("stuck"))
    fifo = block_loading(server, stuck_model)
    served = bedrock.create_custom_model_deployment(modelDeploymentName=unique("served"), modelArn=served_model)[
        "customModelDeploymentArn"]
    stuck = bedrock.create_custom_model_deployment(modelDeploymentName=unique("stuck"), modelArn=stuck_model)[
        "customModelDeploymentArn"]
    expected = wait_until(lambda: answered(invoke, runtime, served), 120, what="the deployment answers")
    assert converse(runtime) == "world the to hello Say"

    killed: list[int] = []
    try:
        for _ in range(MAX_ATTEMPTS):
            def holds_both():
                held_by = {owner_pid(job(db, arn).lease_owner) for arn in (served, stuck)}
                return len(held_by) == 1 and next(iter(held_by)) not in (None, *killed) and held_by
            pid = wait_until(holds_both, 120, what="one serving process holding both deployments").pop()
            assert pid in spawned_children(server.pid)
            assert wait_until(lambda: answered(invoke, runtime, served), 120, what="served again") == expected
            assert bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=stuck)["status"] == "Creating"
            os.kill(pid, 9)
            killed.append(pid)
            wait_until(lambda: re.search(RESTART.format(pid=pid), log_of(server)), 30, what=f"restart after {pid}")

        def failed():
            found = bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=stuck)
            return found if found["status"] != "Creating" else None
        found = wait_until(failed, 120, what="the never-served deployment ended")
    finally:
        unblock(fifo)
    assert found["status"] == "Failed", found
    assert f"lost {MAX_ATTEMPTS} times in a row before it served the model" in found["failureMessage"], found
    assert job(db, stuck).attempts == MAX_ATTEMPTS + 1

    # the served one was taken over after every kill and is served by the process started last
    assert wait_until(lambda: answered(invoke, runtime, served), 120, what="served after the kills") == expected
    assert bedrock.get_custom_model_deployment(customModelDeploymentIdentifier=served)["status"] == "Active"
    row = job(db, served)
    assert row.attempts == MAX_ATTEMPTS + 1 and owner_pid(row.lease_owner) not in killed
    assert owner_pid(row.lease_owner) in spawned_children(server.pid)
    assert wait_until(lambda: answered(converse, runtime), 60, what="on-demand answered") == "world the to hello Say"


# ---- standalone worker and serving commands -----------------------------------------------------

@pytest.mark.parametrize("command", ["worker", "serving"])
def test_a_standalone_command_restarts_its_killed_child_and_stops_without_restarts(server, db, tmp_path, command):
    kind = testing.Worker if command == "worker" else testing.ServingNode
    node = kind(server.data_dir, **with_test_defaults({"lease_seconds": LEASE, "extra_args": ("--processes", "2"),
                                                         "log": tmp_path / f"{command}.log", "env": ENV})).start()
    try:
        def ready(children: set[int]) -> bool:
            """Each child is up: a worker logged its start, a serving node registered (so API nodes
            send it requests)."""
            if command == "serving":
                return children <= node_pids(db)
            started = {int(pid) for pid in re.findall(r"worker [^:\s]+:(\d+):\w+ started", log_of(node))}
            return children <= started

        def two_ready(without: int | None = None) -> set[int] | None:
            children = spawned_children(node.pid)
            return children if len(children) == 2 and without not in children and ready(children) else None
        children = wait_until(two_ready, 90, what=f"2 {command} children")
        victim = min(children)
        os.kill(victim, 9)
        renewed = wait_until(lambda: two_ready(victim), 90, what=f"the killed {command} child replaced")
        assert len(renewed - children) == 1 and node.running
        assert re.search(RESTART.format(pid=victim), log_of(node))
        node.process.send_signal(signal.SIGTERM)  # to the command alone: it stops its children itself
        code = node.process.wait(60)
    finally:
        node.stop()
    assert code == 0, log_of(node)[-3000:]
    log = log_of(node)
    assert len(re.findall(r"starting another in", log)) == 1, log[-3000:]  # the kill's only
    assert "stopping 2 " in log and not alive(children | renewed)
    if command == "serving":  # stopped nodes leave the table
        assert not renewed & node_pids(db)


def test_serve_stops_without_restarting_anything(server):
    """Last: SIGTERM to serve and its children ends them all, none started again."""
    restarts = len(re.findall(r"starting another in", log_of(server)))
    children = spawned_children(server.pid)
    assert len(children) == 2  # its worker and serving processes
    assert server.stop() == 0
    log = log_of(server)
    assert len(re.findall(r"starting another in", log)) == restarts, log[-3000:]
    assert not alive(children)
