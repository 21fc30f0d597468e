"""`bedrock-local serve`, `worker` and `serving` processes, and Ray nodes, started for a test, a
benchmark or quickstart: their flags from attributes (a test may change one and restart), their
output in a log file, and a stop that reaches every process they started."""

from __future__ import annotations

import os
from pathlib import Path

from bedrock_local.testing.clients import ACCESS_KEY, REGION, client
from bedrock_local.testing.processes import Process, bedrock_local_command, free_port

# ports a Ray node opens besides the head's; each gets a free one so that several nodes share a machine
RAY_NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                       "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")


class Node:
    """One `bedrock-local <subcommand>` process on `data_dir`. The attributes become flags when it
    starts (None: the command's default); `quotas` are `--quota KEY=VALUE` flags; `extra_args` come
    last. `env` is added to this process's environment, and with `offline` HF_HUB_OFFLINE=1 (nothing is
    downloaded from the Hugging Face Hub)."""

    subcommand = "worker"
    start_timeout = 60.0  # seconds for start() to see it ready

    def __init__(self, data_dir: Path, *, database_url: str | None = None, s3_endpoint_url: str | None = None,
                 cache_dir: Path | None = None, lease_seconds: float | None = None, log_level: str | None = None,
                 quotas: tuple | list = (), extra_args: tuple | list = (), env: dict | None = None,
                 log: Path | None = None, cwd: Path | None = None, offline: bool = True):
        self.data_dir = Path(data_dir)
        self.database_url, self.s3_endpoint_url = database_url, s3_endpoint_url
        self.cache_dir, self.lease_seconds, self.log_level = cache_dir, lease_seconds, log_level
        self.quotas, self.extra_args = list(quotas), list(extra_args)
        self.env = {**({"HF_HUB_OFFLINE": "1"} if offline else {}), **(env or {})}
        self.log = Path(log) if log else self.data_dir.parent / f"{self.data_dir.name}-{self.subcommand}.log"
        self.cwd = cwd
        self.process: Process | None = None

    def own_flags(self) -> list:
        """The subcommand's own flags (a server's port and process counts)."""
        return []

    def command(self) -> list[str]:
        flags = [*self.own_flags(), "--data-dir", self.data_dir]
        for flag, value in (("--lease-seconds", self.lease_seconds), ("--cache-dir", self.cache_dir),
                            ("--database-url", self.database_url), ("--s3-endpoint-url", self.s3_endpoint_url),
                            ("--log-level", self.log_level)):
            if value is not None:
                flags += [flag, value]
        for quota in self.quotas:
            flags += ["--quota", quota]
        return bedrock_local_command(self.subcommand, *flags, *self.extra_args)

    def launch(self):
        """Start the process without waiting for it to be ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = Process(self.command(), self.log, env={**os.environ, **self.env},
                               cwd=self.cwd, name=f"bedrock-local {self.subcommand}")
        return self

    def wait_ready(self, timeout: float) -> None:
        """A worker is ready once started (it claims jobs when it is)."""

    def start(self, timeout: float | None = None):
        self.launch()
        self.wait_ready(self.start_timeout if timeout is None else timeout)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def stop(self, timeout: float = 30.0, linger: float = 5.0) -> int | None:
        """SIGTERM to it and every process it started, then SIGKILL after `timeout` s; its exit code."""
        return self.process.stop(timeout, linger=linger) if self.process else None

    def kill(self) -> None:
        """kill -9 of the process and every process it started."""
        if self.process:
            self.process.kill_group()

    def restart(self):
        self.stop()
        return self.start()


class Worker(Node):
    """`bedrock-local worker`: one job worker, no API."""


class ServingNode(Node):
    """`bedrock-local serving`: one serving node, no API."""

    subcommand = "serving"


class Server(Node):
    """`bedrock-local serve` on `port` (a free one by default); ready once it listens."""

    subcommand = "serve"

    def __init__(self, data_dir: Path, *, workers: int | None = None, serving_workers: int | None = None,
                 host: str = "127.0.0.1", port: int | None = None, log: Path | None = None, **options):
        data_dir = Path(data_dir)
        super().__init__(data_dir, log=log or data_dir.parent / f"{data_dir.name}-server.log", **options)
        self.workers, self.serving_workers = workers, serving_workers
        self.host, self.port = host, port or free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def own_flags(self) -> list:
        flags = ["--host", self.host] if self.host != "127.0.0.1" else []
        flags += ["--port", self.port]
        if self.workers is not None:
            flags += ["--workers", self.workers]
        if self.serving_workers is not None:
            flags += ["--serving-workers", self.serving_workers]
        return flags

    def wait_ready(self, timeout: float) -> None:
        self.process.wait_for_port(self.port, timeout, self.host)

    def client(self, region: str = REGION, access_key: str = ACCESS_KEY, service: str = "bedrock",
               validate: bool = True, **options):
        """A boto3 client of this server (see clients.client for the options)."""
        return client(service, self.url, region=region, access_key=access_key, validate=validate, **options)

    def folder(self, bucket: str) -> Path:
        """The embedded folder store's folder of a bucket (users may copy files in there)."""
        path = self.data_dir / "s3" / bucket
        path.mkdir(parents=True, exist_ok=True)
        return path


def start_ray_node(*args: str, log: Path, num_cpus: int = 1) -> Process:
    """`ray start ARGS --block` on 127.0.0.1, every port of the node a free one, in a session of its own:
    `kill_session()` ends every process of the node."""
    command = ["ray", "start", *args, "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1",
               "--disable-usage-stats", "--block"]
    for flag in RAY_NODE_PORT_FLAGS:
        command += [flag, str(free_port())]
    return Process(command, log, name="ray node")
