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

    python -m benchmarks.control_plane                      # SQLite in temporary data dirs
    python -m benchmarks.control_plane --database-url postgresql://postgres@127.0.0.1:5432/test
"""

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
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
from botocore.config import Config
from rich.console import Console
from rich.table import Table

from bedrock_local.jobs.artifacts import model_location
from bedrock_local.settings import Settings
from bedrock_local.store import resources
from bedrock_local.store.database import open_database
from bedrock_local.store.resources import Scope

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

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, data_dir: Path, database_url: str | None, credentials: Path):
        self.name = name
        self.data_dir = data_dir
        self.database_url = database_url
        self.credentials = credentials
        self.port = free_port()
        self.log = data_dir.parent / f"{data_dir.name}-server.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        command = [sys.executable, "-m", "bedrock_local.cli", "serve", "--workers", "0", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), "--credentials-file", str(self.credentials),
                   "--log-level", "warning"]
        if self.database_url:
            command += ["--database-url", self.database_url]
        with open(self.log, "a") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.process.returncode}:\n"
                                   f"{self.log.read_text()[-4000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"server {self.name} did not listen in 120 s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def client(self, account: str = MEASURED[0], region: str = MEASURED[1]):
        session = boto3.session.Session()  # one session per client: sessions are not thread-safe
        return session.client("bedrock", endpoint_url=self.url, region_name=region,
                              aws_access_key_id=access_key(account), aws_secret_access_key=secret_key(account),
                              config=Config(retries={"max_attempts": 1}, max_pool_connections=4,
                                            read_timeout=60, connect_timeout=10))


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


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
            server = Server(name, data_dir, url, credentials).start()
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
    args = parser.parse_args(argv)
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a postgresql:// URL (the default is SQLite)")

    started = time.perf_counter()
    load_before = os.getloadavg()
    baseline_plan, large_plan = make_plans(args.scope_size, args.total, args.api_share)
    work = Path(tempfile.mkdtemp(prefix="bedrock-local-bench-"))
    credentials = work / "credentials.json"
    credentials.write_text(json.dumps({access_key(a): {"secretAccessKey": secret_key(a), "accountId": a}
                                       for a in ACCOUNTS}))
    names = ["baseline", "large"]
    try:
        cells, targets, env = run_benchmark(args, work, credentials, names, (baseline_plan, large_plan),
                                            started, load_before)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(cells, targets, env, args, time.perf_counter() - started)
    if args.keep:
        console.print(f"data kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
