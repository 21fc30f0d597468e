"""The wire between the API process and a serving node: one TCP connection per request, JSON
lines both ways.

The API sends one line:
  {"target": {"deployment": "<arn>"} | {"source": <ModelSource json>},
   "task": "text" | "embedding" | "count", "request": <TextRequest fields> | {"items": [<EmbeddingRequest fields>, ...]}}
The node answers, for a text request, zero or more `{"delta": "<text>"}` lines as tokens come out
(for a tool call, `{"tool_use": {"toolUseId", "name"}}` and then `{"tool_input": "<json piece>"}` lines)
and then exactly one final line: `{"done": <TextResult fields>}` (`{"done": {"results": [<EmbeddingResult fields>, ...]}}` for
embeddings, `{"done": {"input_tokens": n}}` for a count) or
`{"error": {"code": "<modelled exception name>", "message": "..."}}`. Closing the connection
early cancels the request.

Before its request line the API sends one header line, an HMAC-SHA256 of the request with the
cluster secret (`sign`, checked by a node's `ReplayGuard`); the secret (`cluster_secret`), where a node
listens and what it registers (`endpoint`, `advertised_host`) and the TLS contexts of both ends
(`server_tls`, `client_tls`) are here too. docs/deploy.md tells operators how to set them.
"""

import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import time
from collections import OrderedDict
from pathlib import Path

MAX_LINE = 64 * 1024 * 1024  # a request line holds the whole prompt


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    return json.loads(line)


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# ---- authentication ---------------------------------------------------------------------------
# Every request starts with one header line signed with the cluster secret:
#   b"BLN1 <ms since the epoch, 13 digits> <nonce, 32 hex> <HMAC-SHA256, 64 hex>\n"
# where the HMAC covers b"BLN1 <ms> <nonce>\n" followed by the request line itself. A node refuses a
# header that is missing or malformed, a MAC that does not match, a timestamp more than
# REPLAY_WINDOW seconds from its own clock, and a nonce it has seen (ReplayGuard).

MAGIC = b"BLN1 "
HEADER_LEN = len(MAGIC) + 13 + 1 + 32 + 1 + 64 + 1
REPLAY_WINDOW = 30.0   # seconds a signed request stays valid either side of the node's clock
MAX_NONCES = 100_000   # nonces a node remembers at most (about 10 MB); see ReplayGuard
SECRET_ENV = "BEDROCK_LOCAL_CLUSTER_SECRET"
SECRET_META_KEY = "cluster_secret"
MIN_SECRET_BYTES = 16


class Refused(Exception):
    """A request the node does not answer; the message says why, for the node's log."""


def _mac(secret: bytes, signed_part: bytes, line: bytes) -> bytes:
    digest = hmac.new(secret, signed_part, hashlib.sha256)
    digest.update(line)
    return digest.hexdigest().encode()


def sign(secret: bytes, line: bytes, now: float | None = None, nonce: str | None = None) -> bytes:
    """The header line that goes before `line` (an encoded request)."""
    millis = int((time.time() if now is None else now) * 1000)
    signed_part = MAGIC + f"{millis:013d} {nonce or secrets.token_hex(16)}\n".encode()
    return signed_part[:-1] + b" " + _mac(secret, signed_part, line) + b"\n"


def parse_header(header: bytes) -> tuple[bytes, int, str, bytes]:
    """(the signed part, timestamp in ms, nonce, MAC) of a header; Refused when it is not one."""
    if len(header) != HEADER_LEN or not header.startswith(MAGIC) or not header.endswith(b"\n"):
        raise Refused("missing signature (the request does not start with a signed header)")
    fields = header[len(MAGIC):-1].split(b" ")
    try:
        millis_text, nonce, mac = fields
        millis = int(millis_text)
        int(nonce, 16)
        int(mac, 16)
    except ValueError:
        raise Refused("malformed signature header")
    if len(millis_text) != 13 or len(nonce) != 32 or len(mac) != 64:
        raise Refused("malformed signature header")
    return MAGIC + millis_text + b" " + nonce + b"\n", millis, nonce.decode(), mac


class ReplayGuard:
    """Checks signed requests for one node: the MAC, the timestamp window and that no nonce is used
    twice. It remembers the nonces of valid requests while their timestamp is inside the window;
    beyond MAX_NONCES it forgets the oldest and refuses every request not newer than what it forgot,
    so memory stays bounded and a forgotten nonce still cannot be replayed."""

    def __init__(self, secret: bytes, window: float = REPLAY_WINDOW, max_nonces: int = MAX_NONCES):
        self.secret, self.window, self.max_nonces = secret, window, max_nonces
        self.seen: OrderedDict[str, int] = OrderedDict()  # nonce -> its timestamp (ms), oldest first
        self.floor = 0  # ms: requests at or before it are refused (their nonces may be forgotten)

    def check(self, header: bytes, line: bytes, now: float | None = None) -> None:
        signed_part, millis, nonce, mac = parse_header(header)
        if not hmac.compare_digest(mac, _mac(self.secret, signed_part, line)):
            raise Refused("bad signature (not made with this cluster's secret)")
        now_ms = int((time.time() if now is None else now) * 1000)
        window_ms = int(self.window * 1000)
        if abs(now_ms - millis) > window_ms:
            raise Refused(f"stale timestamp ({(now_ms - millis) / 1000:+.1f} s from this node's clock; "
                          f"at most {self.window:g} s accepted)")
        if nonce in self.seen or millis <= self.floor:
            raise Refused("replayed request (its nonce was used already)")
        self._forget(now_ms - window_ms)
        self.seen[nonce] = millis
        if len(self.seen) > self.max_nonces:
            _, oldest = self.seen.popitem(last=False)
            self.floor = max(self.floor, oldest)

    def _forget(self, before_ms: int) -> None:
        """Drop nonces whose timestamp is out of the window: such a request is refused as stale anyway."""
        while self.seen:
            nonce, millis = next(iter(self.seen.items()))
            if millis >= before_ms:
                break
            del self.seen[nonce]


def secret_override(settings) -> bytes | None:
    """The cluster secret given by `--cluster-secret-file` or BEDROCK_LOCAL_CLUSTER_SECRET, if any;
    ValueError (with what is wrong) for an unreadable or short one."""
    if settings.cluster_secret_file is not None:
        try:
            secret = Path(settings.cluster_secret_file).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"--cluster-secret-file: cannot read it: {exc}")
        where = "--cluster-secret-file"
    elif os.environ.get(SECRET_ENV):
        secret, where = os.environ[SECRET_ENV].strip().encode(), SECRET_ENV
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{where}: the cluster secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secret


def cluster_secret(settings, db) -> bytes:
    """The secret that signs API -> serving node requests: the flag's or environment's, else the one
    kept in the database (`meta` table), made at first use, so that every process on one database
    shares it without configuration (blocking: a database write the first time)."""
    return secret_override(settings) or bytes.fromhex(db.meta_value(SECRET_META_KEY, lambda: secrets.token_hex(32)))


# ---- addresses and TLS ------------------------------------------------------------------------
TLS_SCHEME = "tls://"  # a registered endpoint that starts with it speaks TLS


def endpoint(host: str, port: int, tls: bool) -> str:
    """The endpoint a node registers: `[tls://]host:port`."""
    host = f"[{host}]" if ":" in host else host
    return f"{TLS_SCHEME if tls else ''}{host}:{port}"


def parse_endpoint(text: str) -> tuple[str, int, bool]:
    """(host, port, speaks TLS) of a registered endpoint."""
    tls = text.startswith(TLS_SCHEME)
    host, port = text[len(TLS_SCHEME) if tls else 0:].rsplit(":", 1)
    return host.strip("[]"), int(port), tls


def advertised_host(settings) -> str:
    """The host a node registers: `--serving-advertise-host`, else its listen address, else (listening
    on every address) this host's name."""
    if settings.serving_advertise_host:
        return settings.serving_advertise_host
    if settings.serving_host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return settings.serving_host


def server_tls(settings) -> ssl.SSLContext | None:
    """The node's TLS context (`--serving-tls-cert` / `--serving-tls-key`), or None: plain TCP."""
    if settings.serving_tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.serving_tls_cert, settings.serving_tls_key)
    return context


def client_tls(settings) -> ssl.SSLContext:
    """The API side's context for nodes that speak TLS: their certificate verified against
    `--serving-tls-ca` (default: the system's trusted CAs), the host name included."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if settings.serving_tls_ca is not None:
        context.load_verify_locations(cafile=str(settings.serving_tls_ca))
    return context
