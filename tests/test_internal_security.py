"""The internal hop (API node -> serving node) and TLS, through real processes.

- Two serving nodes listen on 127.0.0.2 and 127.0.0.3 (two hosts, simulated on the loopback range)
  beside one API-only node on the same database; runtime calls are answered through both.
- A stranger on a node's port is refused, with one WARNING line in the node's log, when its request
  has no signature, one made with another secret, a stale timestamp, or replays a request already
  answered; the node goes on answering the API node.
- `serve` with a certificate and key the test makes speaks HTTPS: boto3 (`bedrock`, `bedrock-runtime`)
  and the AWS CLI work with that CA bundle, plain HTTP and an unverified client fail, and its serving
  node speaks TLS too (a `tls://` endpoint the API verifies with `--serving-tls-ca`)."""

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError, HTTPClientError, SSLError

from bedrock_local import node_protocol as protocol
from bedrock_local.store import nodes
from bedrock_local.store.database import open_database
from bedrock_local.testing import ServingNode
from conftest import Server, wait_until, with_test_defaults

TEXT_MODEL = "bedrock-local.test-text-v1:0"
EMBED_MODEL = "bedrock-local.test-embed-v1:0"
HOSTS = ("127.0.0.2", "127.0.0.3")
REFUSED = "refused a connection from"
NO_DEPLOYMENT = "arn:aws:bedrock:us-east-1:123456789012:custom-model-deployment/none"


def can_bind(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def database_of(server: Server):
    return open_database(f"sqlite:///{(server.data_dir / 'bedrock-local.db').resolve()}", migrate=False)


def live_endpoints(db) -> list[str]:
    with db.read_session() as session:
        return sorted(nodes.live_endpoints(session).values())


def runtime(url: str, **options):
    return boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="secret", config=Config(retries={"max_attempts": 1}), **options)


def converse(client, text: str = "one two three") -> str:
    answer = client.converse(modelId=TEXT_MODEL, messages=[{"role": "user", "content": [{"text": text}]}],
                             inferenceConfig={"maxTokens": 20})
    return answer["output"]["message"]["content"][0]["text"]


def embed(client, text: str = "hello") -> list:
    answer = client.invoke_model(modelId=EMBED_MODEL, body=json.dumps({"inputText": text}))
    return json.loads(answer["body"].read())["embedding"]


# ---- two hosts: nodes on 127.0.0.2 and 127.0.0.3 ---------------------------------------------------

@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """An API-only node and two serving nodes (127.0.0.2, 127.0.0.3) on one SQLite database."""
    if not all(can_bind(host) for host in HOSTS):
        pytest.skip(f"this machine cannot bind {' and '.join(HOSTS)} (the loopback range is not all local here)")
    root = tmp_path_factory.mktemp("two-hosts")
    api = Server(root / "data", workers=0, serving_workers=0).start()
    started = [api]
    try:
        db = database_of(api)
        node_list = []
        for host in HOSTS:
            node = ServingNode(root / "data", log=root / f"node-{host}.log", lease_seconds=3.0,
                               **with_test_defaults({"extra_args": ["--serving-host", host]}))
            started.append(node.launch())
            node_list.append(node)
        wait_until(lambda: len(live_endpoints(db)) == 2, 90, what="both serving nodes registered")
        yield api, node_list, db
        db.dispose()
    finally:
        for process in reversed(started):
            process.stop()


def endpoint_of(db, host: str) -> tuple[str, int]:
    for text in live_endpoints(db):
        node_host, port, tls = protocol.parse_endpoint(text)
        if node_host == host:
            assert not tls
            return node_host, port
    raise AssertionError(f"no node registered on {host}: {live_endpoints(db)}")


def test_nodes_register_their_own_addresses_and_both_answer(hosts):
    api, node_list, db = hosts
    assert sorted(protocol.parse_endpoint(e)[0] for e in live_endpoints(db)) == list(HOSTS)
    client = runtime(api.url)
    # the stub text model answers a Meta-style prompt with its words reversed (engine/stub_models.py);
    # the two stub models are placed on different nodes (service/runtime.py: by the model's hash)
    assert converse(client, "one two three")
    assert len(embed(client)) > 0
    logs = [node.log.read_text() for node in node_list]
    text_node = [i for i, log in enumerate(logs) if f"loaded on-demand model {TEXT_MODEL}" in log]
    embed_node = [i for i, log in enumerate(logs) if f"loaded on-demand model {EMBED_MODEL}" in log]
    assert len(text_node) == 1 and len(embed_node) == 1 and text_node != embed_node, logs


def exchange(host: str, port: int, data: bytes, timeout: float = 20.0) -> bytes:
    """Send `data` as a stranger would and read until the node closes the connection."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def count_request(secret: bytes, *, now: float | None = None, nonce: str | None = None) -> bytes:
    """A signed CountTokens request for a deployment no node serves: a node that accepts it answers
    ModelNotReadyException and loads nothing."""
    line = protocol.encode({"target": {"deployment": NO_DEPLOYMENT}, "task": "count",
                            "request": {"messages": [{"role": "user", "content": "a b c"}], "prompt": None,
                                        "system": None, "max_tokens": 5, "temperature": 0.0, "top_p": 1.0}})
    return protocol.sign(secret, line, now=now, nonce=nonce) + line


def replies(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.split(b"\n") if line]


def test_strangers_are_refused_and_the_node_keeps_serving(hosts):
    api, node_list, db = hosts
    host, port = endpoint_of(db, HOSTS[0])
    node = node_list[0]
    secret = bytes.fromhex(db.meta_value(protocol.SECRET_META_KEY, lambda: pytest.fail("no cluster secret")))
    request = count_request(secret)
    line = request.split(b"\n", 1)[1]

    cases = {
        "missing signature": line,                                             # unsigned, as before this hop was signed
        "bad signature": count_request(b"not the cluster secret, a guess"),    # signed with another secret
        "stale timestamp": count_request(secret, now=time.time() - 3600),      # a request recorded an hour ago
        "malformed signature header": protocol.MAGIC + b"x" * (protocol.HEADER_LEN - len(protocol.MAGIC) - 1)
                                      + b"\n" + line,
    }
    for reason, data in cases.items():
        answer = replies(exchange(host, port, data))
        assert len(answer) == 1 and "error" in answer[0], (reason, answer)
        assert reason in answer[0]["error"]["message"], (reason, answer)

    # the same bytes twice: an eavesdropper's replay of a request the node answered
    first = replies(exchange(host, port, request))
    assert first == [protocol.error("ModelNotReadyException", first[0]["error"]["message"])], first
    assert "not being served" in first[0]["error"]["message"]
    again = replies(exchange(host, port, request))
    assert "replayed request" in again[0]["error"]["message"], again
    # a tampered request line under a valid header
    tampered = request.replace(b'"max_tokens":5', b'"max_tokens":6')
    assert "bad signature" in replies(exchange(host, port, tampered))[0]["error"]["message"]

    def refusals() -> list[str]:
        return [entry for entry in node.log.read_text().splitlines() if REFUSED in entry]

    wait_until(lambda: len(refusals()) >= 6, 10, what="the refusals logged")
    lines = refusals()
    assert len(lines) == 6, lines
    assert all(" WARNING " in entry and "127.0.0.1:" in entry for entry in lines), lines
    for reason in (*cases, "replayed request"):
        assert any(reason in entry for entry in lines), (reason, lines)
    # the nodes live on, and the API node's own signed requests are answered
    assert node.running and all(n.running for n in node_list)
    client = runtime(api.url)
    assert converse(client) and embed(client)


def test_replay_guard_memory_is_bounded():
    """Beyond its nonce limit the guard forgets the oldest and refuses what is not newer than it."""
    secret = b"s" * 32
    guard = protocol.ReplayGuard(secret, window=30, max_nonces=3)
    now = 1_700_000_000.0
    signed = []
    for i in range(5):
        request = count_request(secret, now=now + i)
        header, line = request[:protocol.HEADER_LEN], request[protocol.HEADER_LEN:]
        guard.check(header, line, now=now + 5)
        signed.append((header, line))
    assert len(guard.seen) == 3
    for header, line in signed:  # forgotten or remembered: none of them twice
        with pytest.raises(protocol.Refused, match="replayed"):
            guard.check(header, line, now=now + 5)
    later = count_request(secret, now=now + 40)  # the first ones' time is out of the window: forgotten
    guard.check(later[:protocol.HEADER_LEN], later[protocol.HEADER_LEN:], now=now + 40)
    assert len(guard.seen) <= 3


def test_secret_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from bedrock_local.settings import Settings

    monkeypatch.delenv(protocol.SECRET_ENV, raising=False)
    assert protocol.secret_override(Settings()) is None  # then the database's is used
    monkeypatch.setenv(protocol.SECRET_ENV, "from the environment, long enough")
    assert protocol.secret_override(Settings()) == b"from the environment, long enough"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from a file, long enough\n")
    assert protocol.secret_override(Settings(cluster_secret_file=secret_file)) == b"from a file, long enough"
    secret_file.write_text("short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        protocol.secret_override(Settings(cluster_secret_file=secret_file))
    with pytest.raises(ValueError, match="cannot read"):
        protocol.secret_override(Settings(cluster_secret_file=tmp_path / "missing"))


# ---- TLS: HTTPS API, TLS serving node ----------------------------------------------------------------

def make_pki(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate it signs, for 127.0.0.1-3 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bedrock-local test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names = [x509.DNSName("localhost")] + [x509.IPAddress(ipaddress.ip_address(f"127.0.0.{i}")) for i in (1, 2, 3)]
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """`serve` over HTTPS, its own serving node speaking TLS, verified with the test's CA."""
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root)
    server = Server(root / "data", workers=0, serving_workers=1, extra_args=[
        "--tls-cert", pki["cert"], "--tls-key", pki["key"],
        "--serving-tls-cert", pki["cert"], "--serving-tls-key", pki["key"], "--serving-tls-ca", pki["ca"]])
    server.start()
    try:
        yield server, pki, f"https://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_boto3_and_the_aws_cli_over_https(tls_server):
    server, pki, url = tls_server
    bedrock = boto3.client("bedrock", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                           aws_secret_access_key="secret", verify=str(pki["ca"]))
    models = bedrock.list_foundation_models()["modelSummaries"]
    assert any(m["modelId"] == TEXT_MODEL for m in models)
    # the runtime call crosses the TLS hop to the serving node (registered as tls://)
    assert converse(runtime(url, verify=str(pki["ca"])), "alpha beta gamma")
    db = database_of(server)
    try:
        registered = live_endpoints(db)
    finally:
        db.dispose()
    assert registered and all(e.startswith(protocol.TLS_SCHEME) for e in registered), registered

    cli = subprocess.run(["aws", "bedrock", "list-foundation-models", "--endpoint-url", url, "--ca-bundle",
                          str(pki["ca"]), "--region", "us-east-1", "--output", "json"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"})
    assert cli.returncode == 0, cli.stderr
    assert any(m["modelId"] == TEXT_MODEL for m in json.loads(cli.stdout)["modelSummaries"])


def test_plain_http_and_unverified_clients_fail(tls_server):
    server, pki, url = tls_server
    options = {"region_name": "us-east-1", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret",
               "config": Config(retries={"max_attempts": 0}, connect_timeout=5, read_timeout=5)}
    unverified = boto3.client("bedrock", endpoint_url=url, **options)  # the system's CAs do not know the test's
    with pytest.raises(SSLError):
        unverified.list_foundation_models()
    plain = boto3.client("bedrock", endpoint_url=f"http://127.0.0.1:{server.port}", **options)
    with pytest.raises((HTTPClientError, EndpointConnectionError)):  # the server closes a non-TLS connection
        plain.list_foundation_models()
    # a stranger without TLS on the node's port gets nothing, and the node goes on serving
    db = database_of(server)
    try:
        host, port, tls = protocol.parse_endpoint(live_endpoints(db)[0])
    finally:
        db.dispose()
    assert tls
    with pytest.raises((ConnectionError, OSError)):
        data = exchange(host, port, b'{"target": {}, "task": "count", "request": {}}\n', timeout=10)
        if not data:
            raise ConnectionError("closed without an answer")
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as s:  # TLS, but no signature
        s.sendall(b'{"target": {}, "task": "count", "request": {}}\n')
        answer = s.recv(65536)
    assert b"missing signature" in answer
    assert converse(runtime(url, verify=str(pki["ca"])))
