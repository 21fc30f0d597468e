"""The process harness shared by the tests, the benchmarks and `bedrock-local quickstart`: starting
and stopping `bedrock-local serve` / `worker` / `serving` processes and Ray nodes (each in a session
of its own: SIGTERM to its process group, a wait, then SIGKILL), free ports, waiting for a port, and
boto3 clients pointed at a server. Nothing here imports torch, pytest or boto3 at import time;
pytest fixtures built on it live in tests/conftest.py."""

from bedrock_local.testing.clients import ACCESS_KEY, REGION, RETRIES, SECRET_KEY, client, s3_client
from bedrock_local.testing.nodes import RAY_NODE_PORT_FLAGS, Node, Server, ServingNode, Worker, start_ray_node
from bedrock_local.testing.processes import (
    Process,
    ProcessExited,
    StartTimeout,
    bedrock_local_command,
    free_port,
    group_members,
    listens,
    session_members,
)

__all__ = [
    "ACCESS_KEY",
    "RAY_NODE_PORT_FLAGS",
    "REGION",
    "RETRIES",
    "SECRET_KEY",
    "Node",
    "Process",
    "ProcessExited",
    "Server",
    "ServingNode",
    "StartTimeout",
    "Worker",
    "bedrock_local_command",
    "client",
    "free_port",
    "group_members",
    "listens",
    "s3_client",
    "session_members",
    "start_ray_node",
]
