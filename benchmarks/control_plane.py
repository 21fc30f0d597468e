"""Control-plane benchmark: requests/s and p50/p99 latency through boto3 of GetCustomModel,
ListCustomModels and ListModelCopyJobs (page size 100) against a real `bedrock-local serve
--workers 0` process (an API-only node: jobs are accepted and queued, none runs).

Two stores are built and served side by side in the same run:

- baseline: 1,000 resources, all of them the measured scope's (account 111111111111, us-east-1)
  but the one source model (same account, us-west-2) its copy jobs were created from;
- large:    the same measured scope plus 9,000 resources in other accounts and regions
  (4 accounts x 3 regions), for 10,000 in all.

The bulk is seeded through the store layer (`store.resources.insert`, bodies shaped as the
services write them, creation times spread over 30 days and interleaved across scopes) before the
server starts; then a part of the measured scope is created through boto3 against the running
server (CreateCustomModel, and CreateModelCopyJob, which also makes its target model), so that
rows written by the API are in what is measured. Accounts come from a credentials file: each
access key maps to its own account; the region is the boto3 client's.

Every cell (operation x client threads) runs on both stores in alternating rounds (baseline, large,
large, baseline, baseline, ...) so that drift on a shared machine falls on both alike; the List
requests walk every page of the scope (first page and each nextToken) in turn. The table shows each
cell on both stores and the ratio of the large store to the baseline measured in the same run:
a List whose latency grew with resources outside the caller's scope would show a ratio well above 1.

A second suite (`--suite customization`; the default `--suite all` runs both) measures
GetModelCustomizationJob and ListModelCustomizationJobs (maxResults=100, every page in turn) over
10,000 jobs against four servers in the same run, each a process of its own: bedrock-local (`serve
--workers 0`, the jobs seeded through the store layer plus 100 through CreateModelCustomizationJob),
moto's server (`python -m moto.server`, seeded through boto3 within a time budget: the output says
how many jobs it got), and two floor servers answering fixed bytes (bedrock-local's own answer to a
Get and to a List page): a stdlib asyncio one (the floor: what boto3 itself costs for that
response) and a bare ASGI callable under uvicorn (what the HTTP server alone adds). The servers take
turns round by round; the table prints req/s, p50/p99, the ratio to the floor and to moto, and the
issue's goals (Get at 0.8x the floor or better, a List of 100 at 6x moto or better). `--profile`
records the bedrock-local process with py-spy during the 1-client List cell and prints its top
functions.

    python -m benchmarks.control_plane                      # SQLite in temporary data dirs, both suites
    python -m benchmarks.control_plane --database-url postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks.control_plane --suite customization --profile list-stacks.txt
"""

import argparse
import contextlib
import datetime
import functools
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore
import sqlalchemy
from sqlalchemy import event
from rich.console import Console
from rich.table import Table

from bedrock_local import testing
from bedrock_local.jobs.artifacts import model_location
from bedrock_local.settings import Settings
from bedrock_local.store import resources
from bedrock_local.store.database import open_database
from bedrock_local.store.resources import Scope
from benchmarks.common import cpu_seconds, percentile

ACCOUNTS = ["111111111111", "222222222222", "333333333333", "444444444444"]
REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]
MEASURED = (ACCOUNTS[0], REGIONS[0])
SOURCE_REGION = REGIONS[1]          # the copy jobs' source model lives here, in the measured account
CUSTOM_MODEL, COPY_JOB = "custom-model", "model-copy-job"
OPERATIONS = ("GetCustomModel", "ListCustomModels", "ListModelCopyJobs")
PAGE = 100
_ID_ALPHABET = string.ascii_lowercase + string.digits

console = Console(width=140)


def access_key(account: str) -> str:
    return f"AKIABENCH{account}"[:20]


def secret_key(account: str) -> str:
    return f"bench-secret-{account}"


# ---------------------------------------------------------------- seeding through the store layer

@dataclass
class Plan:
    """What one store holds, and what of it is created through the API once the server is up."""
    seeded_models: int            # measured scope, Active imported models written by the store layer
    seeded_jobs: int              # measured scope, Completed copy jobs written by the store layer
    api_models: int               # measured scope, CreateCustomModel through boto3
    api_jobs: int                 # measured scope, CreateModelCopyJob through boto3 (+1 target model each)
    elsewhere: int                # resources in other (account, region) scopes, besides the source model

    @property
    def scope_models(self) -> int:
        return self.seeded_models + self.api_models + self.api_jobs

    @property
    def scope_jobs(self) -> int:
        return self.seeded_jobs + self.api_jobs

    @property
    def total(self) -> int:
        return self.scope_models + self.scope_jobs + 1 + self.elsewhere


def make_plans(scope_size: int, total: int, api_share: float) -> tuple[Plan, Plan]:
    """Baseline: scope_size resources in all (measured scope + the one source model). Large: total."""
    in_scope = scope_size - 1
    jobs = in_scope // 2
    models = in_scope - jobs
    api_jobs = max(1, int(jobs * api_share))
    api_models = int(models * api_share)
    seeded_models = models - api_models - api_jobs
    if seeded_models < 0:
        raise SystemExit("--api-share too large for this --scope-size")
    common = dict(seeded_models=seeded_models, seeded_jobs=jobs - api_jobs, api_models=api_models, api_jobs=api_jobs)
    return Plan(**common, elsewhere=0), Plan(**common, elsewhere=total - scope_size)


class Seeder:
    def __init__(self, rng: random.Random, settings: Settings, now: datetime.datetime):
        self.rng = rng
        self.settings = settings
        self.now = now

    def new_id(self) -> str:
        return "".join(self.rng.choice(_ID_ALPHABET) for _ in range(12))

    def created_at(self) -> datetime.datetime:
        return self.now - datetime.timedelta(days=30) * self.rng.random()

    def model(self, session, account: str, region: str, name: str, status: str = "Active"):
        model_id = self.new_id()
        params = {"modelName": name, "modelSourceConfig": {"s3DataSource": {"s3Uri": f"s3://bench-imports/{name}/"}}}
        body = {"customizationType": "IMPORTED", "ownerAccountId": account, "_source": f"s3://bench-imports/{name}/",
                "_requestHash": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
                "_artifacts": model_location(self.settings, account, region, model_id).uri}
        return resources.insert(
            session, kind=CUSTOM_MODEL, account=account, region=region, resource_id=model_id,
            arn=f"arn:aws:bedrock:{region}:{account}:custom-model/imported/{model_id}", name=name, unique_name=name,
            status=status, created_at=self.created_at(), body=body)

    def copy_job(self, session, account: str, region: str, name: str):
        source_region = self.rng.choice([r for r in REGIONS if r != region])
        source_id, target_id, job_id = self.new_id(), self.new_id(), self.new_id()
        source_arn = f"arn:aws:bedrock:{source_region}:{account}:custom-model/imported/{source_id}"
        params = {"sourceModelArn": source_arn, "targetModelName": name}
        body = {"targetModelArn": f"arn:aws:bedrock:{region}:{account}:custom-model/imported/{target_id}",
                "targetModelName": name, "sourceAccountId": account, "sourceModelArn": source_arn,
                "sourceModelName": f"source-{source_id}", "targetModelTags": [],
                "_requestHash": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
                "_sourceArtifacts": model_location(self.settings, account, source_region, source_id).uri,
                "_targetArtifacts": model_location(self.settings, account, region, target_id).uri}
        return resources.insert(
            session, kind=COPY_JOB, account=account, region=region, resource_id=job_id,
            arn=f"arn:aws:bedrock:{region}:{account}:model-copy-job/{job_id}", name=name, status="Completed",
            ref_arn=source_arn, ref_account=account, created_at=self.created_at(), body=body)


def seed(database_url: str, settings: Settings, plan: Plan, seed_value: int) -> str:
    """Write the store's bulk; answers the ARN of the source model the API's copy jobs copy from."""
    db = open_database(database_url)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    scope_rng, other_rng = random.Random(seed_value), random.Random(seed_value + 1)
    work = []  # (sort key, account, region, kind, name): the scopes' rows interleaved, not grouped
    for i in range(plan.seeded_models):
        work.append((scope_rng.random(), *MEASURED, CUSTOM_MODEL, f"bench-model-{i:05d}"))
    for i in range(plan.seeded_jobs):
        work.append((scope_rng.random(), *MEASURED, COPY_JOB, f"bench-copy-{i:05d}"))
    others = [(a, r) for a in ACCOUNTS for r in REGIONS if (a, r) != MEASURED]
    for i in range(plan.elsewhere):
        account, region = others[i % len(others)]
        kind = CUSTOM_MODEL if (i // len(others)) % 2 == 0 else COPY_JOB
        work.append((other_rng.random(), account, region, kind, f"bench-{kind}-{i:05d}"))
    work.sort()
    seeder = Seeder(random.Random(seed_value + 2), settings, now)
    with db.session() as session, session.begin():
        source = seeder.model(session, MEASURED[0], SOURCE_REGION, "bench-copy-source")
        for _, account, region, kind, name in work:
            (seeder.model if kind == CUSTOM_MODEL else seeder.copy_job)(session, account, region, name)
    db.dispose()
    return source.arn


# ---------------------------------------------------------------- the server

@functools.cache
def _serve_help() -> str:
    return subprocess.run([sys.executable, "-m", "bedrock_local.cli", "serve", "--help"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout


def _serve_has_option(option: str) -> bool:
    """Whether this checkout's `serve` takes `option` (the benchmark also runs against older ones)."""
    return option in _serve_help()


def _serve_has_serving_workers() -> bool:
    return _serve_has_option("--serving-workers")


class Server(testing.Server):
    """An API-only `bedrock-local serve` (no worker, no serving node) with the benchmark's credentials."""

    start_timeout = 120.0

    def __init__(self, data_dir: Path, database_url: str | None, credentials: Path):
        # --quota: 100 jobs queued through the API, past AWS's 2 scheduled ones
        super().__init__(data_dir, workers=0, serving_workers=0 if _serve_has_serving_workers() else None,
                         database_url=database_url, log_level="warning",
                         quotas=["all=unlimited"] if _serve_has_option("--quota") else [],
                         extra_args=["--credentials-file", credentials])

    def client(self, account: str = MEASURED[0], region: str = MEASURED[1]):
        return bench_client(self.url, account, region, read_timeout=60)


def bench_client(url: str, account: str = MEASURED[0], region: str = MEASURED[1], read_timeout: float = 120):
    """A client of its own session (sessions are not thread-safe) signing as `account`."""
    return testing.client("bedrock", url, region=region, access_key=access_key(account),
                          secret_key=secret_key(account), session=boto3.session.Session(), max_pool_connections=4,
                          read_timeout=read_timeout, connect_timeout=10)


# ---------------------------------------------------------------- one store, ready to measure

@dataclass
class Target:
    name: str
    server: Server
    plan: Plan
    stored: int = 0
    model_arns: list[str] = field(default_factory=list)
    model_tokens: list[str | None] = field(default_factory=list)
    job_tokens: list[str | None] = field(default_factory=list)
    create_seconds: float = 0.0
    creates: int = 0


def create_through_api(target: Target, source_arn: str) -> None:
    client = target.server.client()
    started = time.perf_counter()
    for i in range(target.plan.api_models):
        client.create_custom_model(
            modelName=f"api-model-{i:05d}", clientRequestToken=f"bench-model-{i}",
            modelSourceConfig={"s3DataSource": {"s3Uri": f"s3://bench-imports/api-model-{i:05d}/"}},
            modelTags=[{"key": "bench", "value": "control-plane"}])
    for i in range(target.plan.api_jobs):
        client.create_model_copy_job(sourceModelArn=source_arn, targetModelName=f"api-copy-{i:05d}",
                                     clientRequestToken=f"bench-copy-{i}",
                                     targetModelTags=[{"key": "bench", "value": "control-plane"}])
    target.create_seconds = time.perf_counter() - started
    target.creates = target.plan.api_models + target.plan.api_jobs


def walk(client, operation: str, key: str) -> tuple[list[dict], list[str | None]]:
    """Every item of the measured scope, and the nextToken that starts each page (None: the first)."""
    call = getattr(client, botocore.xform_name(operation))
    items, tokens, token = [], [None], None
    while True:
        page = call(maxResults=PAGE, **({"nextToken": token} if token else {}))
        items += page[key]
        token = page.get("nextToken")
        if not token:
            return items, tokens
        tokens.append(token)


def prepare(target: Target) -> None:
    """Collect what the measurement cycles over, and check that the scope holds exactly its own rows."""
    client = target.server.client()
    models, target.model_tokens = walk(client, "ListCustomModels", "modelSummaries")
    jobs, target.job_tokens = walk(client, "ListModelCopyJobs", "modelCopyJobSummaries")
    target.model_arns = [m["modelArn"] for m in models]
    prefix = f"arn:aws:bedrock:{MEASURED[1]}:{MEASURED[0]}:"
    if len(models) != target.plan.scope_models or len(jobs) != target.plan.scope_jobs:
        raise SystemExit(f"{target.name}: the scope lists {len(models)} models and {len(jobs)} copy jobs, "
                         f"expected {target.plan.scope_models} and {target.plan.scope_jobs}")
    if not all(arn.startswith(prefix) for arn in target.model_arns + [j["jobArn"] for j in jobs]):
        raise SystemExit(f"{target.name}: a List answered a resource of another account or region")
    # one key of another account and another region see none of the measured scope's models
    for account, region in ((ACCOUNTS[1], MEASURED[1]), (MEASURED[0], REGIONS[2])):
        other = target.server.client(account, region)
        arns = [m["modelArn"] for m in other.list_custom_models(maxResults=PAGE)["modelSummaries"]]
        if any(arn.startswith(prefix) for arn in arns):
            raise SystemExit(f"{target.name}: {account}/{region} sees the measured scope's models")


def count_stored(database_url: str) -> int:
    engine = sqlalchemy.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        stored = connection.execute(sqlalchemy.text("SELECT count(*) FROM resources")).scalar_one()
    engine.dispose()
    return stored


# ---------------------------------------------------------------- measuring

def request_maker(target: Target, operation: str):
    """A function (client, i) -> None making the i-th request of an operation on this store."""
    if operation == "GetCustomModel":
        arns = target.model_arns
        return lambda client, i: client.get_custom_model(modelIdentifier=arns[i % len(arns)])
    tokens = target.model_tokens if operation == "ListCustomModels" else target.job_tokens
    method = "list_custom_models" if operation == "ListCustomModels" else "list_model_copy_jobs"

    def make(client, i):
        token = tokens[i % len(tokens)]
        getattr(client, method)(maxResults=PAGE, **({"nextToken": token} if token else {}))
    return make


def run_load(clients: list, make, requests: int, warmup: int, offset: int = 0) -> tuple[list[float], float]:
    """`requests` requests split over the client threads; answers per-request latencies and wall seconds."""
    threads = len(clients)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    share = [requests // threads + (1 if t < requests % threads else 0) for t in range(threads)]

    def worker(t: int):
        client, start, mine = clients[t], offset + t * 7919, latencies[t]
        try:
            for i in range(warmup):
                make(client, start + i)
        except BaseException as exc:  # noqa: BLE001 - reported after the barrier
            errors.append(exc)
        barrier.wait()
        try:
            for i in range(share[t]):
                begin = time.perf_counter()
                make(client, start + warmup + i)
                mine.append(time.perf_counter() - begin)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return [x for chunk in latencies for x in chunk], wall


@dataclass
class Cell:
    operation: str
    target: Target
    clients: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def measure(targets: list[Target], operation: str, clients: int, requests: int, warmup: int, rounds: int) -> list[Cell]:
    """`requests` requests on each store, in `rounds` runs that alternate the stores (A B B A A B ...):
    drift of a shared machine then falls on both stores alike."""
    cells = [Cell(operation, t, clients) for t in targets]
    pools = {t.name: [t.server.client() for _ in range(clients)] for t in targets}
    makers = {t.name: request_maker(t, operation) for t in targets}
    for t in targets:
        run_load(pools[t.name], makers[t.name], 0, warmup)
    for r in range(rounds):
        count = requests // rounds + (1 if r < requests % rounds else 0)
        for cell in (cells if r % 2 == 0 else cells[::-1]):
            latencies, wall = run_load(pools[cell.target.name], makers[cell.target.name], count, 0,
                                       offset=r * requests)
            cell.latencies += latencies
            cell.seconds += wall
    return cells


# ---------------------------------------------------------------- reporting

def list_query_plans(database_url: str) -> list[tuple[str, str]]:
    """The database's plan for the keyset-page query the List operations run (first page and a later
    one), captured from store.resources.page itself: the evidence, apart from timings, that a List
    reads only the caller's (account, region, kind) range of the index."""
    db = open_database(database_url, migrate=False)
    captured: list[tuple[str, object]] = []

    def grab(_conn, _cursor, statement, parameters, _context, _many):
        captured.append((statement, parameters))

    plans = []
    later = (datetime.datetime.now(datetime.timezone.utc), 2**62)
    for label, after in (("List plan, first page", None), ("List plan, nextToken page", later)):
        captured.clear()
        event.listen(db.engine, "before_cursor_execute", grab)
        try:
            with db.read_session() as session:
                resources.page(session, Scope(*MEASURED), COPY_JOB, [], descending=True, limit=PAGE + 1, after=after)
        finally:
            event.remove(db.engine, "before_cursor_execute", grab)
        statement, parameters = next(c for c in captured if "FROM resources" in c[0])
        with db.engine.connect().execution_options(readonly=True) as connection:
            if db.is_sqlite:
                rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                plan = "; ".join(row[-1] for row in rows)
            else:
                rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters).all()
                plan = " / ".join(row[0].strip() for row in rows)
        plans.append((label, plan))
    db.dispose()
    return plans


def environment(database_url: str | None, target: Target, load_before: tuple) -> list[tuple[str, str]]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    url = database_url or f"sqlite:///{target.server.data_dir / 'bedrock-local.db'}"
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        if url.startswith("sqlite"):
            backend = f"SQLite {connection.execute(sqlalchemy.text('select sqlite_version()')).scalar_one()} (WAL, embedded default)"
        else:
            backend = connection.execute(sqlalchemy.text("select version()")).scalar_one().split(",")[0]
    engine.dispose()
    import starlette
    import uvicorn
    return [
        ("CPUs", f"{os.cpu_count()} (usable by this process: {affinity}); server and boto3 clients share them"),
        ("machine", f"{platform.machine()} {platform.processor() or ''} {platform.platform()}".strip()),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("database", backend),
        ("versions", f"boto3 {boto3.__version__}, botocore {botocore.__version__}, SQLAlchemy {sqlalchemy.__version__}, "
                     f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}"),
        ("load average", f"{load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min; other work on the "
                         f"machine shows here and widens the noise of the ratios)"),
        ("server", "bedrock-local serve --workers 0 (one uvicorn process, API only)"),
        *list_query_plans(url),
    ]


def report(cells: list[Cell], targets: list[Target], env: list[tuple[str, str]], args, elapsed: float) -> None:
    info = Table(title="environment", show_header=False, box=None)
    for key, value in env:
        info.add_row(key, value)
    console.print(info)

    stores = Table(title=f"stores (measured scope: account {MEASURED[0]}, {MEASURED[1]})")
    for column in ("store", "stored resources", "scope models", "scope copy jobs", "elsewhere",
                   "created through boto3", "creates/s"):
        stores.add_column(column, justify="left" if column == "store" else "right")
    for t in targets:
        stores.add_row(t.name, f"{t.stored:,}", f"{t.plan.scope_models:,}", f"{t.plan.scope_jobs:,}",
                       f"{t.stored - t.plan.scope_models - t.plan.scope_jobs:,}",
                       f"{t.plan.api_models} CreateCustomModel + {t.plan.api_jobs} CreateModelCopyJob",
                       f"{t.creates / t.create_seconds:,.0f}" if t.create_seconds else "-")
    console.print(stores)

    table = Table(title=f"control plane through boto3 (List page size {PAGE}; ratio = large store / baseline "
                        f"measured in the same run)")
    for column in ("operation", "stored resources", "clients", "requests", "req/s", "p50 ms", "p99 ms",
                   "ratio p50", "ratio p99", "ratio req/s"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    baseline = {(c.operation, c.clients): c for c in cells if c.target is targets[0]}
    for cell in cells:
        base = baseline[(cell.operation, cell.clients)]
        is_base = cell is base
        table.add_row(cell.operation, f"{cell.target.stored:,}", str(cell.clients), str(cell.requests),
                      f"{cell.rate:,.0f}", f"{cell.p(0.50):.2f}", f"{cell.p(0.99):.2f}",
                      "baseline" if is_base else f"{cell.p(0.50) / base.p(0.50):.2f}",
                      "" if is_base else f"{cell.p(0.99) / base.p(0.99):.2f}",
                      "" if is_base else f"{cell.rate / base.rate:.2f}",
                      end_section=not is_base and cell.clients == max(args.clients))
    console.print(table)
    console.print(f"benchmark run time: {elapsed:.0f} s (seeding, creates and measurement)")


# ---------------------------------------------------------------- the customization suite
#
# GetModelCustomizationJob and ListModelCustomizationJobs (maxResults=100) over 10,000 jobs, through
# boto3, against four servers measured in the same run, each in a process of its own:
#
# - bedrock-local: `serve --workers 0` on a store of CZ_JOBS jobs in the measured scope (all but
#   --cz-api-jobs written through the store layer, those through CreateModelCustomizationJob);
# - moto: `python -m moto.server` (moto's own Werkzeug server), seeded through boto3
#   CreateModelCustomizationJob calls within a time budget (fewer jobs if the budget runs out: the
#   output says how many);
# - floor: a stdlib asyncio server that answers every request with fixed bytes, the very bytes
#   bedrock-local answered to a Get and to a List page of 100: boto3's own cost for the same response;
# - floor (uvicorn): the same fixed bytes from a bare ASGI callable under uvicorn with the settings
#   `serve` uses (what the HTTP server alone costs, before Starlette and the service).

CZ_KIND = "model-customization-job"
CZ_OPERATIONS = ("GetModelCustomizationJob", "ListModelCustomizationJobs")
CZ_BASE_MODEL = "huggingface.smollm2-135m-instruct-v1:0"
CZ_ROLE = f"arn:aws:iam::{MEASURED[0]}:role/bench-customization"
# the effective hyper-parameters CreateModelCustomizationJob stores for the request above (engine.training
# HYPERPARAMETERS defaults, epochCount 1): written out here so the benchmark process does not import torch
CZ_HYPERPARAMETERS = {"epochCount": "1", "batchSize": "8", "learningRate": "0.0001", "learningRateWarmupSteps": "0",
                      "loraRank": "0", "loraAlpha": "16", "loraDropout": "0.05", "maxSequenceLength": "512"}
FLOOR, FLOOR_UVICORN, OURS, MOTO = "floor", "floor (uvicorn)", "bedrock-local", "moto"


def customization_request(i: int, prefix: str) -> dict:
    """The CreateModelCustomizationJob parameters of job i (the same shape for bedrock-local and moto)."""
    return {"jobName": f"{prefix}-job-{i:05d}", "customModelName": f"{prefix}-model-{i:05d}", "roleArn": CZ_ROLE,
            "baseModelIdentifier": CZ_BASE_MODEL, "customizationType": "FINE_TUNING",
            "hyperParameters": {"epochCount": "1"},
            "trainingDataConfig": {"s3Uri": f"s3://bench-training/{prefix}-{i:05d}/train.jsonl"},
            "validationDataConfig": {"validators": [{"s3Uri": f"s3://bench-training/{prefix}-{i:05d}/valid.jsonl"}]},
            "outputDataConfig": {"s3Uri": f"s3://bench-output/{prefix}-{i:05d}/"},
            "clientRequestToken": f"{prefix}-token-{i:05d}"}


def seed_customization_jobs(database_url: str, count: int, seed_value: int) -> None:
    """`count` finished jobs of the measured scope, with the columns and body members
    CreateModelCustomizationJob and the training handler write (80% Completed with their metrics
    and output model, 10% Failed, 10% Stopped), creation times spread over 30 days."""
    from bedrock_local.engine.catalog import find_foundation_model
    from bedrock_local.jobs.model_sources import foundation_source

    account, region = MEASURED
    base_arn = f"arn:aws:bedrock:{region}::foundation-model/{CZ_BASE_MODEL}"
    source = foundation_source(find_foundation_model(CZ_BASE_MODEL)).to_json()
    rng = random.Random(seed_value + 3)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    db = open_database(database_url)
    with db.session() as session, session.begin():
        for i in range(count):
            params = customization_request(i, "bench")
            job_id = "".join(rng.choice(_ID_ALPHABET) for _ in range(12))
            created = (now - datetime.timedelta(days=30) * rng.random()).replace(microsecond=0)
            ended = created + datetime.timedelta(minutes=5 + 60 * rng.random())
            roll = rng.random()
            status = "Completed" if roll < 0.8 else "Failed" if roll < 0.9 else "Stopped"
            phase_status = {"Completed": ("Completed",) * 3, "Failed": ("Completed", "Completed", "Failed"),
                            "Stopped": ("Completed", "Completed", "Stopped")}[status]
            details = {phase: {"status": state, "creationTime": created.isoformat(), "lastModifiedTime": ended.isoformat()}
                       for phase, state in zip(("validationDetails", "dataProcessingDetails", "trainingDetails"), phase_status)}
            body = {"outputModelName": params["customModelName"], "roleArn": CZ_ROLE,
                    "clientRequestToken": params["clientRequestToken"], "baseModelArn": base_arn,
                    "hyperParameters": CZ_HYPERPARAMETERS, "trainingDataConfig": params["trainingDataConfig"],
                    "validationDataConfig": params["validationDataConfig"], "outputDataConfig": params["outputDataConfig"],
                    "customizationType": "FINE_TUNING", "statusDetails": details, "endTime": ended.isoformat(),
                    "_model": source, "_foundationModelId": CZ_BASE_MODEL, "_foundationModelArn": base_arn,
                    "_customModelTags": [],
                    "_requestHash": hashlib.sha256(json.dumps({k: v for k, v in params.items() if k != "clientRequestToken"},
                                                              sort_keys=True).encode()).hexdigest()}
            if status == "Completed":
                model_id = "".join(rng.choice(_ID_ALPHABET) for _ in range(12))
                loss = round(0.5 + 2 * rng.random(), 6)
                body.update(outputModelArn=f"arn:aws:bedrock:{region}:{account}:custom-model/{CZ_BASE_MODEL}/{model_id}",
                            trainingMetrics={"trainingLoss": loss},
                            validationMetrics=[{"validationLoss": round(loss * 1.1, 6)}])
            elif status == "Failed":
                body["failureMessage"] = (f"Line {rng.randint(1, 500)} of s3://bench-training/bench-{i:05d}/train.jsonl "
                                          f"is not valid JSON.")
            resources.insert(
                session, kind=CZ_KIND, account=account, region=region, resource_id=job_id,
                arn=f"arn:aws:bedrock:{region}:{account}:model-customization-job/{CZ_BASE_MODEL}/{job_id}",
                name=params["jobName"], unique_name=params["jobName"], status=status, ref_arn=base_arn,
                client_token=params["clientRequestToken"], created_at=created, body=body)
    db.dispose()


def start_process(name: str, command: list[str], port: int, log: Path) -> testing.Process:
    """A server process in a session of its own, once it listens on `port`."""
    process = testing.Process(command, log, cwd=Path(__file__).resolve().parent.parent, name=name)
    try:
        process.wait_for_port(port, 120)
    except testing.StartTimeout:
        process.stop()
        raise
    return process


def _floor_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: "
            b"00000000-0000-4000-8000-000000000000\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _is_list(path: bytes) -> bool:
    return path.split(b"?", 1)[0].rstrip(b"/") == b"/model-customization-jobs"


def serve_floor(kind: str, port: str, get_file: str, list_file: str) -> None:
    """The floor server (run in a child process): every request under /model-customization-jobs/
    answers the fixed Get body, /model-customization-jobs the fixed List body."""
    get_body, list_body = Path(get_file).read_bytes(), Path(list_file).read_bytes()
    if kind == "uvicorn":
        import uvicorn

        async def app(scope, receive, send):
            while True:  # drain the request body
                message = await receive()
                if not message.get("more_body"):
                    break
            body = list_body if _is_list(scope["raw_path"]) else get_body
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"x-amzn-requestid", b"00000000-0000-4000-8000-000000000000"),
                                    (b"content-length", str(len(body)).encode())]})  # not chunked
            await send({"type": "http.response.body", "body": body})

        from bedrock_local.cli import UVICORN_SETTINGS

        uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", lifespan="off", **UVICORN_SETTINGS)
        return

    import asyncio

    responses = {True: _floor_response(list_body), False: _floor_response(get_body)}

    class Floor(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""

        def data_received(self, data):
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].split(b"\r\n")
                length = 0
                for line in head[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length:]
                self.transport.write(responses[_is_list(head[0].split(b" ")[1])])

    async def main():
        server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", int(port))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


@dataclass
class Endpoint:
    name: str
    url: str
    process: testing.Process | None = None
    account: str = MEASURED[0]
    get_ids: list[str] = field(default_factory=list)        # what GetModelCustomizationJob cycles over
    list_tokens: list[str | None] = field(default_factory=list)  # the start of every page (None: the first)
    jobs: int = 0                                            # jobs the List walk found
    seeding: str = ""                                        # how they got there

    def client(self):
        return bench_client(self.url, self.account)

    def maker(self, operation: str):
        if operation == "GetModelCustomizationJob":
            ids = self.get_ids
            return lambda client, i: client.get_model_customization_job(jobIdentifier=ids[i % len(ids)])
        tokens = self.list_tokens

        def make(client, i):
            token = tokens[i % len(tokens)]
            client.list_model_customization_jobs(maxResults=PAGE, **({"nextToken": token} if token else {}))
        return make


@dataclass
class CzCell:
    operation: str
    endpoint: Endpoint
    clients: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0   # CPU seconds of the server process (all its threads) over the timed requests
    client_cpu: float = 0.0   # CPU seconds of this process (boto3 and its client threads) over them

    requests = Cell.requests
    rate = Cell.rate
    p = Cell.p

    def per_request(self, seconds: float) -> float:
        return seconds / self.requests * 1000 if self.requests else float("nan")


def walk_jobs(endpoint: Endpoint) -> list[dict]:
    client = endpoint.client()
    summaries, endpoint.list_tokens, token = [], [None], None
    while True:
        page = client.list_model_customization_jobs(maxResults=PAGE, **({"nextToken": token} if token else {}))
        summaries += page["modelCustomizationJobSummaries"]
        token = page.get("nextToken")
        if not token:
            endpoint.jobs = len(summaries)
            return summaries
        endpoint.list_tokens.append(token)


def seed_moto(endpoint: Endpoint, count: int, budget: float, threads: int = 4) -> None:
    """CreateModelCustomizationJob through boto3 until `count` jobs or `budget` seconds, `threads` at a time."""
    created = [0] * threads
    deadline = time.monotonic() + budget
    started = time.perf_counter()

    def worker(t: int):
        client = endpoint.client()
        for i in range(t, count, threads):
            if time.monotonic() > deadline:
                return
            client.create_model_customization_job(**customization_request(i, "bench"))
            created[t] += 1

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - started
    done = sum(created)
    endpoint.seeding = (f"{done:,} CreateModelCustomizationJob through boto3 ({threads} threads) in {seconds:.0f} s, "
                        f"{done / seconds:,.0f}/s")
    if done < count:
        endpoint.seeding += f"; STOPPED at the {budget:.0f} s budget: {count - done:,} fewer jobs than asked"


def capture_bodies(endpoint: Endpoint, work: Path) -> tuple[Path, Path]:
    """The raw bytes bedrock-local answers to one Get and to one List page from the middle of the walk
    (a typical page: the first holds the jobs created through the API, not yet started), for the floors."""
    captured: dict[str, bytes] = {}
    client = endpoint.client()
    client.meta.events.register("after-call.bedrock",
                                lambda http_response, model, **_: captured.__setitem__(model.name, http_response.content))
    client.get_model_customization_job(jobIdentifier=endpoint.get_ids[len(endpoint.get_ids) // 2])
    token = endpoint.list_tokens[len(endpoint.list_tokens) // 2]
    client.list_model_customization_jobs(maxResults=PAGE, **({"nextToken": token} if token else {}))
    files = work / "floor-get.json", work / "floor-list.json"
    files[0].write_bytes(captured["GetModelCustomizationJob"])
    files[1].write_bytes(captured["ListModelCustomizationJobs"])
    return files


def start_floor(name: str, kind: str, bodies: tuple[Path, Path], work: Path, like: Endpoint) -> Endpoint:
    port = testing.free_port()
    code = "import sys; from benchmarks.control_plane import serve_floor; serve_floor(*sys.argv[1:])"
    command = [sys.executable, "-c", code, kind, str(port), str(bodies[0]), str(bodies[1])]
    process = start_process(name, command, port, work / f"floor-{kind}.log")
    # the same requests as bedrock-local's (the answer does not depend on them)
    return Endpoint(name, f"http://127.0.0.1:{port}", process, get_ids=like.get_ids, list_tokens=like.list_tokens,
                    jobs=len(json.loads(bodies[1].read_bytes())["modelCustomizationJobSummaries"]),
                    seeding=f"fixed bodies: bedrock-local's answer to one Get ({bodies[0].stat().st_size:,} bytes) and "
                            f"to a List page from the middle ({bodies[1].stat().st_size:,} bytes)")


def measure_endpoints(endpoints: list[Endpoint], operation: str, clients: int, requests: int, warmup: int,
                      rounds: int) -> list[CzCell]:
    """`requests` requests on each endpoint in `rounds` runs; each round takes the endpoints in
    another order (every permutation in turn) so that drift of a shared machine falls on all alike."""
    cells = [CzCell(operation, e, clients) for e in endpoints]
    pools = [[e.client() for _ in range(clients)] for e in endpoints]
    makers = [e.maker(operation) for e in endpoints]
    for pool, make in zip(pools, makers):
        run_load(pool, make, 0, warmup)
    orders = list(itertools.permutations(range(len(endpoints))))
    for r in range(rounds):
        count = requests // rounds + (1 if r < requests % rounds else 0)
        for index in orders[(r * 5) % len(orders)]:
            pid = endpoints[index].process.pid
            server_before, client_before = cpu_seconds(pid), time.process_time()
            latencies, wall = run_load(pools[index], makers[index], count, 0, offset=r * requests)
            cells[index].client_cpu += time.process_time() - client_before
            cells[index].server_cpu += cpu_seconds(pid) - server_before
            cells[index].latencies += latencies
            cells[index].seconds += wall
    return cells


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, seconds: float):
    """py-spy record (raw collapsed stacks) of the server while the block runs; None when not asked."""
    if out is None or shutil.which("py-spy") is None:
        yield None
        return
    process = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--gil",
                                "--rate", str(PROFILE_RATE),
                                "--duration", str(int(seconds)), "--nonblocking", "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield out
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
PROFILE_RATE = 250  # py-spy samples per second


@dataclass
class Profile:
    samples: int                                   # GIL-holding samples of the server process
    requests: int                                  # bedrock-local requests while it was recorded
    own: list[tuple[str, float]]                   # functions by self share (on top of the stack)
    ours: list[tuple[str, float]]                  # bedrock_local functions by inclusive share

    @property
    def ms_per_request(self) -> float:
        return self.samples / PROFILE_RATE / self.requests * 1000 if self.requests else float("nan")


def top_functions(collapsed: Path, requests: int, limit: int = 12) -> Profile:
    """From py-spy's collapsed stacks (--gil: only the thread holding the GIL is sampled, so the
    samples are the process's Python CPU time): the functions with the most self samples, and the
    bedrock_local functions with the most inclusive samples (line numbers merged)."""
    total, inclusive, own = 0, {}, {}
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        names = []
        for frame in stack.split(";"):
            found = _FRAME.match(frame)
            names.append((found["name"], "/".join(found["file"].split("/")[-2:])) if found else (frame, ""))
        total += n
        for name in set(names):
            inclusive[name] = inclusive.get(name, 0) + n
        own[names[-1]] = own.get(names[-1], 0) + n

    def label(key):
        return f"{key[0]} ({key[1]})" if key[1] else key[0]

    if not total:
        return Profile(0, requests, [], [])
    by_self = sorted(own, key=lambda k: -own[k])[:limit]
    roots = {"<module>", "main", "serve"}
    ours = sorted((k for k in inclusive if "bedrock_local/" in k[1] or k[1].startswith(("api/", "service/", "store/"))
                   if k[0] not in roots), key=lambda k: -inclusive[k])[:limit]
    return Profile(total, requests, [(label(k), own[k] / total) for k in by_self],
                   [(label(k), inclusive[k] / total) for k in ours])


def run_customization(args, work: Path, credentials: Path, started: float):
    """Seed, serve and measure the customization suite; answers (cells, endpoints, notes, profile)."""
    def say(text: str):
        console.print(f"[{time.perf_counter() - started:5.1f}s] {text}")

    with contextlib.ExitStack() as stack:
        url = (stack.enter_context(postgres_schemas(args.database_url, ["customization"], args.keep))[0]
               if args.database_url else None)
        data_dir = work / "customization"
        data_dir.mkdir()
        settings = Settings(data_dir=data_dir, database_url=url)
        seeded = args.cz_jobs - args.cz_api_jobs
        say(f"customization: seeding {seeded:,} jobs through the store layer")
        t0 = time.perf_counter()
        seed_customization_jobs(settings.resolved_database_url, seeded, args.seed)
        seed_seconds = time.perf_counter() - t0
        server = Server(data_dir, url, credentials).start()
        stack.callback(server.stop)
        ours = Endpoint(OURS, server.url, server.process)
        say(f"customization: bedrock-local on {server.url}; {args.cz_api_jobs} CreateModelCustomizationJob through boto3")
        client = ours.client()
        t0 = time.perf_counter()
        for i in range(args.cz_api_jobs):
            client.create_model_customization_job(**customization_request(i, "api"))
        api_seconds = time.perf_counter() - t0
        summaries = walk_jobs(ours)
        ours.get_ids = [s["jobArn"] for s in summaries]
        prefix = f"arn:aws:bedrock:{MEASURED[1]}:{MEASURED[0]}:model-customization-job/{CZ_BASE_MODEL}/"
        if ours.jobs != args.cz_jobs or not all(a.startswith(prefix) and len(a) == len(prefix) + 12 for a in ours.get_ids):
            raise SystemExit(f"bedrock-local lists {ours.jobs} jobs (expected {args.cz_jobs}) or an ARN off the pattern")
        ours.seeding = (f"{seeded:,} through the store layer in {seed_seconds:.1f} s + {args.cz_api_jobs} "
                        f"CreateModelCustomizationJob through boto3 in {api_seconds:.1f} s")
        endpoints = [ours]

        if args.cz_moto_jobs:
            port = testing.free_port()
            process = start_process("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    port, work / "moto.log")
            stack.callback(process.stop)
            moto = Endpoint(MOTO, f"http://127.0.0.1:{port}", process)
            say(f"customization: moto on {moto.url}; seeding up to {args.cz_moto_jobs:,} jobs through boto3 "
                f"(budget {args.cz_moto_budget:.0f} s)")
            seed_moto(moto, args.cz_moto_jobs, args.cz_moto_budget)
            say(f"customization: moto: {moto.seeding}")
            moto.get_ids = [s["jobName"] for s in walk_jobs(moto)]  # moto finds a job by its name only
            endpoints.append(moto)

        bodies = capture_bodies(ours, work)
        floors = [start_floor(name, kind, bodies, work, ours)
                  for name, kind in ((FLOOR, "asyncio"), (FLOOR_UVICORN, "uvicorn"))]
        for floor in floors:
            stack.callback(floor.process.stop)
        endpoints = floors + endpoints

        say("customization: measuring " + ", ".join(e.name for e in endpoints))
        cells: list[CzCell] = []
        profile = None
        for operation in CZ_OPERATIONS:
            requests = args.cz_get_requests if operation == "GetModelCustomizationJob" else args.cz_list_requests
            for clients in args.clients:
                profiling = args.profile if operation == "ListModelCustomizationJobs" and clients == 1 else None
                out = work / "list-profile.txt" if profiling else None
                with py_spy(server.process.pid, out, 600) as recorded:
                    batch = measure_endpoints(endpoints, operation, clients, requests, args.warmup, args.rounds)
                if recorded is not None and recorded.exists():
                    profile = top_functions(recorded, requests + args.warmup * clients)
                    if args.profile != "-":
                        shutil.copy(recorded, args.profile)
                cells += batch
                say(f"  {operation:<26} {clients} client(s): " + ", ".join(
                    f"{c.endpoint.name} {c.rate:,.0f} req/s" for c in batch))
        moto_note = (f"moto {importlib.metadata.version('moto')} (`python -m moto.server`, Werkzeug, threaded; it "
                     f"answers `Connection: close`, so each request opens a connection)" if args.cz_moto_jobs
                     else "not run (--cz-moto-jobs 0)")
        from bedrock_local.cli import UVICORN_SETTINGS

        uvicorn_settings = ", ".join(f"{k}={v}" for k, v in UVICORN_SETTINGS.items())
        notes = [("moto", moto_note),
                 ("floor", (f"stdlib asyncio Protocol answering fixed bytes (keep-alive); floor (uvicorn): a bare "
                            f"ASGI callable, uvicorn {importlib.metadata.version('uvicorn')} with serve's settings "
                            f"({uvicorn_settings})")),
                 ("CPU columns", ("server: user+system CPU of the server process over the timed requests (/proc); "
                                  "boto3: of this process (all client threads); per request"))]
    return cells, endpoints, notes, profile


def report_customization(cells: list[CzCell], endpoints: list[Endpoint], notes: list[tuple[str, str]], profile,
                         args, load_before: tuple, elapsed: float) -> None:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info = Table(title="customization suite: environment", show_header=False, box=None)
    for key, value in [
        ("CPUs", f"{os.cpu_count()} (usable: {affinity}); servers and boto3 clients share them"),
        ("python", (f"{platform.python_implementation()} {platform.python_version()}, boto3 {boto3.__version__}, "
                    f"botocore {botocore.__version__}")),
        ("database", "PostgreSQL (--database-url)" if args.database_url else "SQLite (embedded default)"),
        ("bedrock-local", "bedrock-local serve --workers 0 (one uvicorn process, API only)"),
        *notes,
        ("load average", f"{load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)"),
    ]:
        info.add_row(key, value)
    console.print(info)

    stores = Table(title="customization suite: what each server holds")
    for column in ("server", "jobs listed", "List pages", "how"):
        stores.add_column(column, justify="left" if column in ("server", "how") else "right")
    for e in endpoints:
        stores.add_row(e.name, f"{e.jobs:,}", f"{len(e.list_tokens):,}", e.seeding)
    console.print(stores)

    table = Table(title=f"Get = GetModelCustomizationJob, List = ListModelCustomizationJobs maxResults={PAGE} (every "
                        f"page in turn), through boto3; ratios of req/s measured in the same run; goals: Get >= 0.80 x "
                        f"floor, List >= 6 x moto")
    for column in ("server", "op", "clients", "requests", "req/s", "p50 ms", "p99 ms", "server CPU ms/req",
                   "boto3 CPU ms/req", "/ floor", "/ moto", "goal"):
        table.add_column(column, justify="left" if column in ("server", "op", "goal") else "right")
    by_key = {(c.endpoint.name, c.operation, c.clients): c for c in cells}
    for cell in cells:
        floor = by_key.get((FLOOR, cell.operation, cell.clients))
        moto = by_key.get((MOTO, cell.operation, cell.clients))
        goal = ""
        if cell.endpoint.name == OURS and cell.operation == "GetModelCustomizationJob" and floor:
            goal = "met" if cell.rate >= 0.8 * floor.rate else "NOT MET"
        elif cell.endpoint.name == OURS and moto:
            goal = "met" if cell.rate >= 6 * moto.rate else "NOT MET"
        table.add_row(cell.endpoint.name, "Get" if cell.operation == "GetModelCustomizationJob" else "List",
                      str(cell.clients), str(cell.requests), f"{cell.rate:,.0f}", f"{cell.p(0.50):.2f}",
                      f"{cell.p(0.99):.2f}", f"{cell.per_request(cell.server_cpu):.2f}",
                      f"{cell.per_request(cell.client_cpu):.2f}", f"{cell.rate / floor.rate:.2f}" if floor else "",
                      f"{cell.rate / moto.rate:.2f}" if moto else "", goal, end_section=cell.endpoint is endpoints[-1])
    console.print(table)
    for clients in sorted({c.clients for c in cells}):
        ours_get, floor_get = by_key.get((OURS, CZ_OPERATIONS[0], clients)), by_key.get((FLOOR, CZ_OPERATIONS[0], clients))
        if ours_get and floor_get:
            ratio = ours_get.rate / floor_get.rate
            console.print(f"{clients} client(s), Get: bedrock-local at {ratio:.2f} x the floor (goal 0.80): "
                          f"{'met' if ratio >= 0.8 else 'NOT MET'}")
        ours_list, moto_list = by_key.get((OURS, CZ_OPERATIONS[1], clients)), by_key.get((MOTO, CZ_OPERATIONS[1], clients))
        floor_list = by_key.get((FLOOR, CZ_OPERATIONS[1], clients))
        if ours_list and moto_list:
            ratio = ours_list.rate / moto_list.rate
            line = (f"{clients} client(s), List of {PAGE}: bedrock-local at {ratio:.2f} x moto (goal 6): "
                    f"{'met' if ratio >= 6 else 'NOT MET'}")
            if floor_list and floor_list.rate < 6 * moto_list.rate:
                line += (f"; the floor itself (no server work, boto3 parsing bedrock-local's page: "
                         f"{floor_list.per_request(floor_list.client_cpu):.0f} ms of client CPU against "
                         f"{moto_list.per_request(moto_list.client_cpu):.0f} ms for moto's smaller summaries) is at "
                         f"{floor_list.rate / moto_list.rate:.2f} x moto, so 6 x is out of reach through boto3 with this "
                         f"response")
            console.print(line)
    if profile is not None:
        top = Table(title=f"bedrock-local server during the 1-client List cell (py-spy --gil: {profile.samples:,} samples "
                          f"at {PROFILE_RATE}/s = {profile.ms_per_request:.1f} ms of Python CPU per List request)")
        for column in ("most self time", "self", "bedrock_local functions", "inclusive"):
            top.add_column(column, justify="right" if column in ("self", "inclusive") else "left")
        for i in range(max(len(profile.own), len(profile.ours))):
            own = profile.own[i] if i < len(profile.own) else ("", None)
            ours = profile.ours[i] if i < len(profile.ours) else ("", None)
            top.add_row(own[0], "" if own[1] is None else f"{own[1]:.0%}",
                        ours[0], "" if ours[1] is None else f"{ours[1]:.0%}")
        console.print(top)
    console.print(f"customization suite run time: {elapsed:.0f} s (seeding, creates and measurement)")


# ---------------------------------------------------------------- main

@contextlib.contextmanager
def postgres_schemas(base_url: str, names: list[str], keep: bool):
    """One schema per store in the given PostgreSQL database; answers a URL for each."""
    engine = sqlalchemy.create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    schemas = [f"bench_{uuid.uuid4().hex[:8]}_{name}" for name in names]
    with engine.begin() as connection:
        for schema in schemas:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    joiner = "&" if "?" in base_url else "?"
    try:
        yield [f"{base_url}{joiner}options=-csearch_path%3D{schema}" for schema in schemas]
    finally:
        if not keep:
            with engine.begin() as connection:
                for schema in schemas:
                    connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def run_benchmark(args, work: Path, credentials: Path, names: list[str], plans: tuple[Plan, Plan],
                  started: float, load_before: tuple):
    """Seed both stores, serve them, create through the API, measure; answers (cells, targets, env)."""
    with contextlib.ExitStack() as stack:
        urls = (stack.enter_context(postgres_schemas(args.database_url, names, args.keep))
                if args.database_url else [None, None])
        targets: list[Target] = []
        for name, plan, url in zip(names, plans, urls):
            data_dir = work / name
            data_dir.mkdir()
            settings = Settings(data_dir=data_dir, database_url=url)
            db_url = settings.resolved_database_url
            console.print(f"[{time.perf_counter() - started:5.1f}s] {name}: seeding {plan.total - plan.api_models - 2 * plan.api_jobs:,} "
                          f"resources through the store layer")
            source_arn = seed(db_url, settings, plan, args.seed)
            server = Server(data_dir, url, credentials).start()
            stack.callback(server.stop)
            target = Target(name, server, plan)
            console.print(f"[{time.perf_counter() - started:5.1f}s] {name}: server on {server.url}; creating "
                          f"{plan.api_models + plan.api_jobs:,} resources through boto3")
            create_through_api(target, source_arn)
            prepare(target)
            target.stored = count_stored(db_url)
            targets.append(target)
        console.print(f"[{time.perf_counter() - started:5.1f}s] measuring")
        cells: list[Cell] = []
        for operation in OPERATIONS:
            for clients in args.clients:
                cells += measure(targets, operation, clients, args.requests, args.warmup, args.rounds)
                base, large = cells[-2], cells[-1]
                console.print(f"[{time.perf_counter() - started:5.1f}s]   {operation:<18} {clients} client(s): "
                              f"p50 {base.p(0.5):.2f} / {large.p(0.5):.2f} ms, "
                              f"{base.rate:,.0f} / {large.rate:,.0f} req/s")
        env = environment(args.database_url and urls[1], targets[1], load_before)
        for target in targets:
            target.server.stop()
    return cells, targets, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a PostgreSQL URL: each store gets a schema of its own there "
                                               "(default: SQLite files in temporary data dirs)")
    parser.add_argument("--total", type=int, default=10_000, help="resources in the large store (default 10,000)")
    parser.add_argument("--scope-size", type=int, default=1_000,
                        help="resources in the baseline store: the measured scope and its copy source (default 1,000)")
    parser.add_argument("--api-share", type=float, default=0.2,
                        help="share of the measured scope's models and copy jobs created through boto3 (default 0.2)")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                        help="client thread counts, comma-separated (default 1,8)")
    parser.add_argument("--requests", type=int, default=600, help="requests per cell and store (default 600)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per client thread before each cell")
    parser.add_argument("--rounds", type=int, default=8,
                        help="runs per cell and store, alternating the stores (default 8)")
    parser.add_argument("--seed", type=int, default=20230420)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs / PostgreSQL schemas afterwards")
    parser.add_argument("--suite", choices=("all", "resources", "customization"), default="all",
                        help="resources: GetCustomModel, ListCustomModels, ListModelCopyJobs on two stores; "
                             "customization: Get/ListModelCustomizationJobs against bedrock-local, moto and the "
                             "fixed-body floor servers; all (default): both")
    group = parser.add_argument_group("customization suite")
    group.add_argument("--cz-jobs", type=int, default=10_000, help="jobs in bedrock-local's store (default 10,000)")
    group.add_argument("--cz-api-jobs", type=int, default=100,
                       help="of those, created through boto3 CreateModelCustomizationJob (default 100)")
    group.add_argument("--cz-moto-jobs", type=int, default=10_000,
                       help="jobs to create in moto through boto3 (default 10,000; 0: no moto)")
    group.add_argument("--cz-moto-budget", type=float, default=120.0,
                       help="seconds allowed for seeding moto; fewer jobs if it runs out, and the output says so")
    group.add_argument("--cz-get-requests", type=int, default=800, help="Get requests per cell and server (default 800)")
    group.add_argument("--cz-list-requests", type=int, default=240,
                       help="List requests per cell and server (default 240)")
    group.add_argument("--profile", nargs="?", const="-", metavar="FILE",
                       help="py-spy record the bedrock-local server during the 1-client List cell and print its top "
                            "functions; FILE keeps the collapsed stacks")
    args = parser.parse_args(argv)
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a postgresql:// URL (the default is SQLite)")
    if not 0 <= args.cz_api_jobs <= args.cz_jobs:
        parser.error("--cz-api-jobs must be between 0 and --cz-jobs")

    started = time.perf_counter()
    load_before = os.getloadavg()
    baseline_plan, large_plan = make_plans(args.scope_size, args.total, args.api_share)
    work = Path(tempfile.mkdtemp(prefix="bedrock-local-bench-"))
    credentials = work / "credentials.json"
    credentials.write_text(json.dumps({access_key(a): {"secretAccessKey": secret_key(a), "accountId": a}
                                       for a in ACCOUNTS}))
    names = ["baseline", "large"]
    resources_result = customization_result = None
    try:
        if args.suite in ("all", "resources"):
            resources_result = run_benchmark(args, work, credentials, names, (baseline_plan, large_plan),
                                             started, load_before)
            resources_done = time.perf_counter()
        if args.suite in ("all", "customization"):
            cz_started, cz_load = time.perf_counter(), os.getloadavg()
            customization_result = run_customization(args, work, credentials, started)
            cz_elapsed = time.perf_counter() - cz_started
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if resources_result is not None:
        report(*resources_result, args, resources_done - started)
    if customization_result is not None:
        report_customization(*customization_result, args, cz_load, cz_elapsed)
    console.print(f"whole run: {time.perf_counter() - started:.0f} s")
    if args.keep:
        console.print(f"data kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
