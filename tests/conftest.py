"""Shared fixtures: real bedrock-local servers in subprocesses on free ports, boto3 clients for
them, PostgreSQL schemas of their own, a moto S3 server, and a tiny real HF model folder."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POSTGRES_BASE = os.environ.get("BEDROCK_LOCAL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_KEY = "AKIDEXAMPLE"
# one model cache for every server of the run, so the packaged GGUF is converted once, not per server
SHARED_CACHE = Path(os.environ.get("BEDROCK_LOCAL_TEST_CACHE", Path(__file__).parent.parent / ".test-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} in {timeout}s:\n{log.read_text()[-4000:]}")


class Server:
    """One `bedrock-local serve` process. Restart it on the same data dir with `restart()`."""

    def __init__(self, data_dir: Path, *, workers: int = 1, database_url: str | None = None,
                 s3_endpoint_url: str | None = None, lease_seconds: float = 3.0, extra_args: tuple = (),
                 env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.database_url = database_url
        self.s3_endpoint_url = s3_endpoint_url
        self.lease_seconds = lease_seconds
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "bedrock_local.cli", "serve", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--workers", str(self.workers),
                "--lease-seconds", str(self.lease_seconds), "--cache-dir", str(SHARED_CACHE)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        if self.s3_endpoint_url:
            args += ["--s3-endpoint-url", self.s3_endpoint_url]
        # no service quota unless a test sets one: tests/test_quotas.py checks them (AWS's defaults in serve)
        return args + ["--quota", "all=unlimited"] + self.extra_args

    def start(self) -> "Server":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", **self.env}
        handle = open(self.log, "a")
        self.process = subprocess.Popen(self.command(), stdout=handle, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        wait_for_port(self.port, self.process, self.log)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def kill(self) -> None:
        """kill -9 of the server and every worker it started."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> "Server":
        self.stop()
        return self.start()

    def client(self, region: str = "us-east-1", access_key: str = DEFAULT_KEY, service: str = "bedrock",
               validate: bool = True):
        return boto3.client(service, endpoint_url=self.url, region_name=region,
                            aws_access_key_id=access_key, aws_secret_access_key="secret",
                            config=Config(parameter_validation=validate, retries={"max_attempts": 1}))

    def folder(self, bucket: str) -> Path:
        """The embedded folder store's folder of a bucket (users may copy files in there)."""
        path = self.data_dir / "s3" / bucket
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture
def make_server(tmp_path):
    started: list[Server] = []

    def make(name: str = "data", **kwargs) -> Server:
        server = Server(tmp_path / name, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server on the embedded defaults (SQLite, folder store, one worker) for a test module."""
    server = Server(tmp_path_factory.mktemp("server") / "data").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bedrock(server):
    return server.client()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@contextlib.contextmanager
def postgres_schema():
    """A PostgreSQL URL whose tables live in a schema of their own, dropped when the block ends."""
    import sqlalchemy

    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(POSTGRES_BASE.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def postgres_url():
    """A PostgreSQL URL whose tables live in a schema of this test's own (dropped afterwards)."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def moto_s3():
    """An S3-compatible test server (moto) on a free port; answers its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    yield f"http://127.0.0.1:{port}"
    moto.stop()


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Llama model saved as a real HF folder (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bedrock_local.engine.catalog import find_foundation_model, packaged_weights

    folder = tmp_path_factory.mktemp("tiny-model")
    embedding = packaged_weights(find_foundation_model("sentence-transformers.all-minilm-l6-v2-v1:0"))
    tokenizer = AutoTokenizer.from_pretrained(embedding)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def upload_folder(server: Server, bucket: str, prefix: str, folder: Path) -> str:
    """Copy a local folder into the server's embedded folder store; answers its s3:// URI."""
    target = server.folder(bucket) / prefix
    shutil.copytree(folder, target, dirs_exist_ok=True)
    return f"s3://{bucket}/{prefix.rstrip('/')}/"
