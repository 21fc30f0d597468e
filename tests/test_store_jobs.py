"""The store and the job engine, on both backends (SQLite in the data dir, and PostgreSQL in a schema
of the test's own): persistence across restarts, concurrent migrations, API processes sharing one
database, exactly-once job claims, crash recovery with leases, legal status moves, the API/worker
split, and the retry limit of jobs that keep killing their worker.

Servers are real `bedrock-local serve` subprocesses driven through boto3. Where a test must see
what boto3 cannot (job attempts, lease owners) it reads the database with SQLAlchemy; a few tests
also write a jobs row to stage a dead worker's lease, as a crash would leave it."""

from __future__ import annotations

import collections
import datetime
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import inspect, select, text, update

from bedrock_local import testing
from bedrock_local.jobs import lease
from bedrock_local.jobs.lifecycle import TRANSITIONS, IllegalTransition, is_final, move
from bedrock_local.jobs.protocol import MAX_ATTEMPTS
from bedrock_local.processes.worker import Worker
from bedrock_local.settings import Settings
from bedrock_local.store import resources
from bedrock_local.store.database import open_database
from bedrock_local.store.schema import Job, Meta, Resource
from conftest import upload_folder, wait_until

ACCOUNT = "123456789012"
REGION = "us-east-1"
DEAD_WORKER = "deadhost:999999:deadbeef"
TABLES = {"alembic_version", "batch_shards", "jobs", "meta", "resources", "serving_nodes", "tags"}


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """None: the default SQLite file in the server's data dir; else a PostgreSQL URL (own schema).
    Request it before make_server so that servers stop before the schema is dropped."""
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def open_db():
    """Opens a store Database (for a Server, a URL, or None+data dir) and disposes of it after the test."""
    opened = []

    def open_(target, migrate: bool = False):
        url = target if isinstance(target, str) else settings_for(target).resolved_database_url
        db = open_database(url, migrate=migrate)
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.dispose()


def settings_for(server, **extra) -> Settings:
    return Settings(data_dir=server.data_dir, database_url=server.database_url,
                    lease_seconds=server.lease_seconds, **extra)


def schema_of(url: str) -> str:
    return re.search(r"search_path%3D(\w+)", url).group(1)


def utc(seconds: float = 0.0) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)


def strip(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def create_import(client, name: str, uri: str, **extra) -> str:
    return client.create_custom_model(modelName=name, modelSourceConfig={"s3DataSource": {"s3Uri": uri}},
                                      **extra)["modelArn"]


def model_status(client, arn: str) -> str:
    return client.get_custom_model(modelIdentifier=arn)["modelStatus"]


def wait_final(client, arns: list[str], timeout: float = 90.0) -> dict[str, dict]:
    """Waits until no model of `arns` is Creating; answers their Get responses."""
    def done():
        got = {arn: client.get_custom_model(modelIdentifier=arn) for arn in arns}
        return got if all(g["modelStatus"] != "Creating" for g in got.values()) else None
    return wait_until(done, timeout=timeout, interval=0.3, what=f"{len(arns)} imports to end")


def jobs_by_arn(db) -> dict[str, Job]:
    with db.read_session() as session:
        rows = session.execute(select(Job, Resource.arn).join(Resource, Resource.pk == Job.resource_pk)).all()
        return {arn: job for job, arn in rows}


def set_job(db, arn: str, **values) -> None:
    """Stage a jobs row as a crashed (or live) worker would have left it."""
    with db.session() as session, session.begin():
        pk = session.scalar(select(Resource.pk).where(Resource.arn == arn))
        session.execute(update(Job).where(Job.resource_pk == pk).values(**values))


def insert_resource(db, kind: str, status: str, job_kind: str | None = None, body: dict | None = None) -> Resource:
    """A resource row (and a queued job for it) made through the store layer."""
    rid = uuid.uuid4().hex[:12]
    with db.session() as session, session.begin():
        resource = resources.insert(
            session, kind=kind, account=ACCOUNT, region=REGION, resource_id=rid,
            arn=f"arn:aws:bedrock:{REGION}:{ACCOUNT}:{kind}/{rid}", name=f"n-{rid}", unique_name=f"n-{rid}",
            status=status, body=body if body is not None else {"_source": f"s3://nowhere/{rid}/"})
        if job_kind:
            lease.enqueue(session, resource, job_kind)
        return resource


# -- 1. persistence, migrations, shared databases ---------------------------------------------


def test_resources_survive_restart(database_url, make_server, open_db, tiny_model_dir):
    server = make_server("data", workers=1, database_url=database_url)
    west, east = server.client("us-west-2"), server.client("us-east-1")
    uri = upload_folder(server, "src", "tiny", tiny_model_dir)
    source = create_import(west, "source-model", uri, modelTags=[{"key": "team", "value": "ml"}],
                           clientRequestToken="token-1")
    assert wait_final(west, [source])[source]["modelStatus"] == "Active"
    job_arn = east.create_model_copy_job(sourceModelArn=source, targetModelName="copied-model",
                                         targetModelTags=[{"key": "copy", "value": "yes"}])["jobArn"]
    wait_until(lambda: east.get_model_copy_job(jobArn=job_arn)["status"] != "InProgress", 60, what="copy job")
    pending = create_import(west, "never-runs", "s3://src/missing/")  # stays or ends Failed: compare after

    def snapshot():
        job = strip(east.get_model_copy_job(jobArn=job_arn))
        return {
            "source": strip(west.get_custom_model(modelIdentifier=source)),
            "job": job,
            "target": strip(east.get_custom_model(modelIdentifier=job["targetModelArn"])),
            "west": strip(west.list_custom_models(sortOrder="Ascending")),
            "east": strip(east.list_custom_models()),
            "jobs": strip(east.list_model_copy_jobs()),
            "source_tags": strip(west.list_tags_for_resource(resourceARN=source)),
            "target_tags": strip(east.list_tags_for_resource(resourceARN=job["targetModelArn"])),
        }

    wait_final(west, [pending])
    before = snapshot()
    assert before["job"]["status"] == "Completed"
    assert before["job"]["sourceModelArn"] == source and before["job"]["targetModelName"] == "copied-model"
    assert before["target"]["modelStatus"] == "Active"
    assert [m["modelName"] for m in before["west"]["modelSummaries"]] == ["source-model", "never-runs"]
    assert before["source_tags"]["tags"] == [{"key": "team", "value": "ml"}]
    assert before["target_tags"]["tags"] == [{"key": "copy", "value": "yes"}]

    server.restart()
    assert snapshot() == before
    # the idempotency token and the unique name were persisted too
    assert create_import(west, "source-model", uri, modelTags=[{"key": "team", "value": "ml"}],
                         clientRequestToken="token-1") == source
    with pytest.raises(ClientError) as caught:
        create_import(west, "source-model", uri)
    assert caught.value.response["Error"]["Code"] == "ConflictException"


def test_concurrent_migrations_make_one_schema(database_url, make_server, open_db):
    """Two servers started at the same moment on one fresh database both come up, on one schema."""
    barrier = threading.Barrier(2)
    started, errors = [], []

    def start():
        barrier.wait()
        try:
            started.append(make_server("data", workers=0, database_url=database_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    a, b = started
    arn = create_import(a.client(), "made-on-a", "s3://src/x/")
    assert b.client().get_custom_model(modelIdentifier=arn)["modelName"] == "made-on-a"

    url = database_url or settings_for(a).resolved_database_url
    db = open_db(url)

    def schema_state():
        with db.engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            if database_url:  # every table lives in the test's schema, once
                in_schema = connection.execute(text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": schema_of(database_url)}).scalars().all()
                assert sorted(in_schema) == sorted(TABLES)
        return names, versions

    names, versions = schema_state()
    assert TABLES <= names
    assert versions == ["0003"]
    # migrating again, twice and from two threads at once, is a no-op that keeps the data
    threads = [threading.Thread(target=lambda: open_database(url).dispose()) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    open_db(url, migrate=True)
    assert schema_state() == (names, versions)
    assert b.client().get_custom_model(modelIdentifier=arn)["modelArn"] == arn


def test_two_api_processes_share_one_database(database_url, make_server, open_db):
    a = make_server("data", workers=0, database_url=database_url)
    b = make_server("data", workers=0, database_url=database_url)
    ca, cb = a.client(), b.client()
    arns = [create_import(ca, f"shared-{i}", f"s3://src/m{i}/", modelTags=[{"key": "i", "value": str(i)}])
            for i in range(3)]
    for arn in arns:
        assert strip(cb.get_custom_model(modelIdentifier=arn)) == strip(ca.get_custom_model(modelIdentifier=arn))
    assert [m["modelArn"] for m in cb.list_custom_models(sortOrder="Ascending")["modelSummaries"]] == arns
    # a name taken through A is a conflict through B, in both directions
    with pytest.raises(ClientError) as caught:
        create_import(cb, "shared-0", "s3://src/other/")
    assert caught.value.response["Error"]["Code"] == "ConflictException"
    created_on_b = create_import(cb, "made-on-b", "s3://src/b/")
    with pytest.raises(ClientError) as caught:
        create_import(ca, "made-on-b", "s3://src/other/")
    assert caught.value.response["Error"]["Code"] == "ConflictException"
    assert ca.get_custom_model(modelIdentifier="made-on-b")["modelArn"] == created_on_b
    # tags written through B are read through A
    cb.tag_resource(resourceARN=arns[0], tags=[{"key": "via", "value": "b"}])
    assert ca.list_tags_for_resource(resourceARN=arns[0])["tags"] == [{"key": "i", "value": "0"},
                                                                    {"key": "via", "value": "b"}]
    # a page token made by A is good on B: the processes share the token secret
    first = ca.list_custom_models(sortOrder="Ascending", maxResults=2)
    second = cb.list_custom_models(sortOrder="Ascending", maxResults=2, nextToken=first["nextToken"])
    assert [m["modelArn"] for m in first["modelSummaries"] + second["modelSummaries"]] == arns + [created_on_b]
    assert "nextToken" not in second


def test_shared_value_made_once_under_concurrency(database_url, tmp_path, open_db):
    """meta_value (the page-token secret) is made once even when processes ask for it at the same moment."""
    url = database_url or f"sqlite:///{tmp_path / 'meta.db'}"
    first = open_db(url, migrate=True)
    dbs = [first] + [open_db(url) for _ in range(3)]
    for round_ in range(10):
        key = f"k{round_}"
        barrier = threading.Barrier(8)
        answers, errors = [], []

        def ask(db, i):
            barrier.wait()
            try:
                answers.append(db.meta_value(key, lambda: f"value-{i}"))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=ask, args=(dbs[i % len(dbs)], i)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert len(set(answers)) == 1 and len(answers) == 8
        with first.read_session() as session:
            assert session.get(Meta, key).value == answers[0]


# -- 2. exactly-once claims ----------------------------------------------------------------------


def test_two_servers_never_run_the_same_job(database_url, make_server, open_db, tiny_model_dir):
    a = make_server("data", workers=1, database_url=database_url, lease_seconds=30)
    b = make_server("data", workers=1, database_url=database_url, lease_seconds=30)
    uri = upload_folder(a, "src", "tiny", tiny_model_dir)
    ca, cb = a.client(), b.client()
    arns = [create_import(ca if i % 2 else cb, f"model-{i}", uri) for i in range(12)]
    final = wait_final(ca, arns, timeout=120)
    assert {arn: got["modelStatus"] for arn, got in final.items()} == {arn: "Active" for arn in arns}
    jobs = jobs_by_arn(open_db(a))
    assert set(jobs) == set(arns)
    for arn, job in jobs.items():
        assert (job.state, job.attempts, job.lease_owner, job.kind) == ("done", 1, None, "model-import"), arn
        assert sorted(job.checkpoint["files"]) == sorted(
            str(p.relative_to(tiny_model_dir)) for p in tiny_model_dir.rglob("*") if p.is_file())


def test_claim_from_many_threads_takes_each_job_once(database_url, tmp_path, open_db):
    url = database_url or f"sqlite:///{tmp_path / 'claims.db'}"
    db = open_db(url, migrate=True)
    pks = set()
    for _ in range(20):
        resource = insert_resource(db, "custom-model", "Creating", "model-import")
        with db.read_session() as session:
            pks.add(lease.job_for(session, resource).pk)

    def claim_all(round_: int) -> list[tuple[str, lease.Claim]]:
        claims, errors = [], []
        barrier = threading.Barrier(8)

        def claimer(worker_id: str):
            barrier.wait()
            try:
                while (claim := lease.claim(db, worker_id, 30, ("model-import",))) is not None:
                    claims.append((worker_id, claim))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=claimer, args=(f"w{round_}-{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        while (claim := lease.claim(db, "drain", 30)) is not None:  # none left unless a claimer gave up early
            claims.append(("drain", claim))
        return claims

    def check(claims, attempts: int):
        counts = collections.Counter(claim.job_pk for _, claim in claims)
        assert set(counts) == pks and set(counts.values()) == {1}, counts
        assert {claim.attempts for _, claim in claims} == {attempts}
        owners = {claim.job_pk: worker for worker, claim in claims}
        with db.read_session() as session:
            rows = session.scalars(select(Job).where(Job.pk.in_(pks))).all()
        assert {(r.state, r.attempts) for r in rows} == {("running", attempts)}
        assert {r.pk: r.lease_owner for r in rows} == owners
        assert all(r.lease_expires_at > utc(20) for r in rows)

    check(claim_all(1), attempts=1)
    assert lease.claim(db, "late", 30) is None  # live leases are not claimable
    # every lease runs out (all workers died): each job is taken over exactly once again
    with db.session() as session, session.begin():
        session.execute(update(Job).values(lease_expires_at=utc(-5)))
    check(claim_all(2), attempts=2)


# -- 3. crash recovery and lease takeover ------------------------------------------------------


def test_kill_9_while_jobs_run_then_restart_ends_every_job(database_url, make_server, open_db, tiny_model_dir):
    server = make_server("data", workers=1, database_url=database_url, lease_seconds=2)
    uri = upload_folder(server, "src", "tiny", tiny_model_dir)
    client = server.client()
    arns = [create_import(client, f"crash-{i}", uri) for i in range(4)]
    arns.append(create_import(client, "crash-broken", "s3://src/nothing-here/"))
    db = open_db(server)
    wait_until(lambda: any(j.state == "running" for j in jobs_by_arn(db).values()), 30, 0.05, "a running job")
    server.kill()
    at_kill = jobs_by_arn(db)
    running = [arn for arn, job in at_kill.items() if job.state == "running"]
    queued = [arn for arn, job in at_kill.items() if job.state == "queued"]
    assert running and queued, {arn: j.state for arn, j in at_kill.items()}
    assert all(at_kill[arn].lease_owner for arn in running)

    server.start()
    final = wait_final(client, arns, timeout=90)
    for arn, got in final.items():
        if arn == arns[-1]:
            assert got["modelStatus"] == "Failed"
            assert "No files were found under s3://src/nothing-here/" in got["failureMessage"]
        else:
            assert got["modelStatus"] == "Active", got
    after = jobs_by_arn(db)
    assert {job.state for job in after.values()} == {"done"}
    assert {job.lease_owner for job in after.values()} == {None}
    for arn in running:  # taken over after the dead worker's lease ran out
        assert after[arn].attempts == 2
    for arn in queued:
        assert after[arn].attempts == 1


def test_expired_lease_is_taken_over_and_live_lease_is_not(database_url, make_server, open_db, tiny_model_dir):
    server = make_server("data", workers=0, database_url=database_url, lease_seconds=2)
    uri = upload_folder(server, "src", "tiny", tiny_model_dir)
    client = server.client()
    alive, dead = create_import(client, "alive-lease", uri), create_import(client, "dead-lease", uri)
    db = open_db(server)
    set_job(db, alive, state="running", lease_owner="otherhost:1:alive", lease_expires_at=utc(600), attempts=1)
    set_job(db, dead, state="running", lease_owner=DEAD_WORKER, lease_expires_at=utc(-60), attempts=1)
    worker = Worker(settings_for(server), db=db)  # a live worker (in this process; the server has none)
    assert worker.run_once() is True
    assert worker.run_once() is False  # the live lease is left alone
    assert model_status(client, dead) == "Active"
    assert model_status(client, alive) == "Creating"
    jobs = jobs_by_arn(db)
    assert (jobs[dead].state, jobs[dead].attempts, jobs[dead].lease_owner) == ("done", 2, None)
    assert (jobs[alive].state, jobs[alive].attempts, jobs[alive].lease_owner) == ("running", 1, "otherhost:1:alive")
    set_job(db, alive, lease_expires_at=utc(-1))  # its worker died after all
    assert worker.run_once() is True
    assert model_status(client, alive) == "Active"
    job = jobs_by_arn(db)[alive]
    assert (job.state, job.attempts, job.lease_owner) == ("done", 2, None)


# -- 4. legal status moves -------------------------------------------------------------------


def _resource(kind: str, status: str) -> Resource:
    return Resource(kind=kind, status=status, arn=f"arn:aws:bedrock:{REGION}:{ACCOUNT}:{kind}/x", body={"a": 1})


@pytest.mark.parametrize("kind,status,target", [
    ("custom-model", "Active", "Creating"),
    ("custom-model", "Failed", "Active"),
    ("custom-model", "Active", "Failed"),
    ("model-copy-job", "Completed", "InProgress"),
    ("model-copy-job", "Failed", "Completed"),
    ("model-copy-job", "Completed", "Failed"),
    ("model-copy-job", "InProgress", "Active"),
    ("unknown-kind", "Creating", "Active"),
])
def test_illegal_moves_are_refused(kind, status, target):
    resource = _resource(kind, status)
    with pytest.raises(IllegalTransition, match=f"{status} -> {target}"):
        move(resource, target, failureMessage="x")
    assert resource.status == status and resource.body == {"a": 1}


@pytest.mark.parametrize("kind,status,target", [
    ("custom-model", "Creating", "Active"),
    ("custom-model", "Creating", "Failed"),
    ("model-copy-job", "InProgress", "Completed"),
    ("model-copy-job", "InProgress", "Failed"),
])
def test_legal_moves_are_made(kind, status, target):
    resource = _resource(kind, status)
    assert not is_final(resource)
    move(resource, target, failureMessage="why")
    assert resource.status == target and resource.body == {"a": 1, "failureMessage": "why"}
    assert resource.updated_at is not None
    assert is_final(resource) and TRANSITIONS[kind].get(target) is None


@pytest.mark.parametrize("kind,status,job_kind", [
    ("custom-model", "Active", "model-import"),
    ("custom-model", "Failed", "model-import"),
    ("model-copy-job", "Completed", "model-copy"),
    ("model-copy-job", "Failed", "model-copy"),
])
def test_job_of_a_final_resource_is_finished_without_touching_it(kind, status, job_kind, tmp_path, open_db):
    db = open_db(f"sqlite:///{tmp_path / 'final.db'}", migrate=True)
    body = {"_source": "s3://nowhere/x/", "_artifacts": "s3://bedrock-local-models/x/",
            "sourceModelArn": "arn:aws:bedrock:us-west-2:123456789012:custom-model/imported/abcdefabcdef",
            "targetModelArn": "arn:aws:bedrock:us-east-1:123456789012:custom-model/imported/fedcbafedcba",
            "_sourceArtifacts": "s3://bedrock-local-models/a/", "_targetArtifacts": "s3://bedrock-local-models/b/"}
    resource = insert_resource(db, kind, status, job_kind, body=body)
    with db.read_session() as session:
        before = session.get(Resource, resource.pk)
    worker = Worker(Settings(data_dir=tmp_path / "data", database_url=db.url, lease_seconds=30), db=db)
    assert worker.run_once() is True
    assert worker.run_once() is False
    with db.read_session() as session:
        after = session.get(Resource, resource.pk)
        job = lease.job_for(session, after)
    assert (after.status, after.body, after.updated_at) == (before.status, before.body, before.updated_at)
    assert (job.state, job.attempts, job.lease_owner) == ("done", 1, None)


# -- 5. ML work never runs in the API process --------------------------------------------------


def test_api_only_node_queues_and_a_worker_process_runs(database_url, make_server, open_db, tiny_model_dir):
    server = make_server("data", workers=0, database_url=database_url, lease_seconds=5)
    uri = upload_folder(server, "src", "tiny", tiny_model_dir)
    client = server.client()
    arn = create_import(client, "queued-model", uri)
    db = open_db(server)
    time.sleep(1.5)  # an API-only node has no worker: nothing may pick the job up
    assert model_status(client, arn) == "Creating"
    job = jobs_by_arn(db)[arn]
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)
    import psutil
    assert psutil.Process(server.process.pid).children(recursive=True) == []

    # the server's data dir and database, but not the tests' shared cache and quotas
    worker = testing.Worker(server.data_dir, database_url=database_url, lease_seconds=5,
                            log=server.data_dir.parent / "worker.log").start()
    try:
        owner = wait_until(lambda: jobs_by_arn(db)[arn].lease_owner, 60, 0.05, "the worker to claim the job")
        assert owner.split(":")[1] == str(worker.pid)  # host:pid:nonce of the worker, not the API
        assert wait_final(client, [arn])[arn]["modelStatus"] == "Active"
        job = jobs_by_arn(db)[arn]
        assert (job.state, job.attempts) == ("done", 1)
    finally:
        worker.stop(20)
    assert worker.process.returncode == 0


# -- 6. a job that keeps killing its worker ends ---------------------------------------------


def test_job_past_max_attempts_ends_failed(database_url, make_server, open_db):
    server = make_server("data", workers=0, database_url=database_url, lease_seconds=2)
    client = server.client()
    crashing = create_import(client, "keeps-crashing", "s3://src/missing/")
    last_try = create_import(client, "one-more-try", "s3://src/missing/")
    db = open_db(server)
    set_job(db, crashing, state="running", lease_owner=DEAD_WORKER, lease_expires_at=utc(-10),
            attempts=MAX_ATTEMPTS)
    set_job(db, last_try, state="running", lease_owner=DEAD_WORKER, lease_expires_at=utc(-10),
            attempts=MAX_ATTEMPTS - 1)
    worker = Worker(settings_for(server), db=db)
    assert worker.run_once() and worker.run_once() and not worker.run_once()

    got = client.get_custom_model(modelIdentifier=crashing)
    assert got["modelStatus"] == "Failed"
    assert "interrupted" in got["failureMessage"] and f"{MAX_ATTEMPTS} times" in got["failureMessage"]
    # one attempt below the limit, the job really runs again (and fails for its own reason)
    got = client.get_custom_model(modelIdentifier=last_try)
    assert got["modelStatus"] == "Failed"
    assert "interrupted" not in got["failureMessage"]
    assert "Cannot read the model source s3://src/missing/" in got["failureMessage"]
    jobs = jobs_by_arn(db)
    assert (jobs[crashing].state, jobs[crashing].attempts, jobs[crashing].lease_owner) == ("done", MAX_ATTEMPTS + 1, None)
    assert (jobs[last_try].state, jobs[last_try].attempts) == ("done", MAX_ATTEMPTS)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_stop_when_their_server_is_killed(make_server):
    """kill -9 of the server process alone: its workers and its serving process notice and exit instead
    of running on as orphans."""
    server = make_server("orphans", workers=2)
    workers = wait_until(lambda: len(_children(server.process.pid)) == 3 and _children(server.process.pid),
                         timeout=60, what="two worker processes and a serving process")
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    # a child may still be importing torch when the server dies: it looks at its parent once it is up
    wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=180, what="the orphaned workers to exit")


def test_sigterm_to_the_server_stops_its_workers(make_server):
    """SIGTERM to the server process alone: it shuts down, stops its workers and its serving process,
    and exits 0."""
    server = make_server("sigterm", workers=2)
    workers = wait_until(lambda: len(_children(server.process.pid)) == 3 and _children(server.process.pid),
                         timeout=60, what="two worker processes and a serving process")
    os.kill(server.process.pid, signal.SIGTERM)
    assert server.process.wait(30) == 0
    wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=15, what="the workers to stop")
