"""The console's hardening, through real servers over a real port (httpx): the security headers on
every kind of console answer (page, static files, JSON, errors, refusals), sign-in lock-out with
growing back-off and Retry-After, counted per client address and per access key, X-Forwarded-For
ignored from an untrusted peer and believed from a trusted proxy (so one client cannot lock out
another), and the session cookie's attributes (Secure when the sign-in came over TLS through the
trusted proxy). Two servers with a credentials file serve the module: one with no trusted proxy, one
that trusts 127.0.0.1 (where the test's requests come from) as its reverse proxy."""

import ipaddress
import json
import re
import time
from importlib import resources

import httpx
import pytest
from conftest import Server

from bedrock_local.console import security

BACKOFF = 0.75  # the first lock; the second is 1.5 s, so Retry-After goes 1, then 2
FREE = security.FREE_FAILURES
KEYS = {f"AKIAHARDEN{n:02d}": {"secretAccessKey": f"secret-{n}", "accountId": f"{n:012d}"} for n in range(1, 13)}
KEY_IDS = list(KEYS)
PROXY_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def start(tmp_path_factory, name: str, *flags: str) -> Server:
    folder = tmp_path_factory.mktemp(name)
    credentials = folder / "credentials.json"
    credentials.write_text(json.dumps(KEYS))
    return Server(folder / "data", workers=0, extra_args=("--credentials-file", str(credentials),
                                                          "--console-login-backoff", str(BACKOFF), *flags)).start()


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """A server that trusts no proxy: the peer's own address is the client."""
    server = start(tmp_path_factory, "direct")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """A server behind a (simulated) reverse proxy on 127.0.0.1: the requests below carry the headers the
    proxy would write."""
    server = start(tmp_path_factory, "proxied", "--trusted-proxies", "127.0.0.1/32")
    yield server
    server.stop()


def login(server: Server, key: str, secret: str | None = None, forwarded: str | None = None,
          proto: str | None = None) -> httpx.Response:
    """POST /console/api/login with `key` and its right secret (or `secret`), as if from `forwarded`."""
    headers = {}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    if proto is not None:
        headers["X-Forwarded-Proto"] = proto
    right = KEYS[key]["secretAccessKey"] if key in KEYS else "no-such-secret"
    return httpx.post(f"{server.url}/console/api/login", json={"accessKeyId": key, "secretAccessKey": secret or right},
                      headers=headers, timeout=30)


def refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] == "AccessDeniedException"


def locked(response: httpx.Response) -> int:
    """Check a lock-out answer; answers its Retry-After."""
    assert response.status_code == 429, response.text
    assert response.headers["x-amzn-ErrorType"] == "ThrottlingException"
    assert "set-cookie" not in response.headers
    assert "Too many failed sign-ins" in response.json()["message"]
    assert re.fullmatch(r"[1-9][0-9]*", response.headers["retry-after"]), response.headers["retry-after"]
    return int(response.headers["retry-after"])


def signed_in(response: httpx.Response, key: str) -> str:
    """Check a successful sign-in; answers its Set-Cookie header."""
    assert response.status_code == 200, response.text
    assert response.json()["accessKeyId"] == key
    return response.headers["set-cookie"]


def fail_until_locked(server: Server, key_of, forwarded_of) -> None:
    """FREE failed sign-ins go unlocked; the next one locks (`key_of(n)` and `forwarded_of(n)` say
    which key and client address the n-th tries)."""
    for n in range(FREE + 1):
        refused(login(server, key_of(n), "wrong", forwarded_of(n)))


def cookie_attributes(header: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}


# ------------------------------------------------------------------------------------------
# security headers

def assert_protected(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name, response.headers.get(name))
    policy = {d.split()[0]: d.split()[1:] for d in response.headers["content-security-policy"].split("; ")}
    assert policy["default-src"] == ["'none'"] and policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"] and policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert "unsafe-eval" not in response.headers["content-security-policy"]
    assert "camera=()" in response.headers["permissions-policy"]


def test_every_kind_of_console_answer_carries_the_security_headers(direct):
    with httpx.Client(base_url=direct.url, timeout=30) as http:
        answers = {
            "page": http.get("/console"),
            "page (index.html)": http.get("/console/index.html"),
            "script": http.get("/console/static/console.js"),
            "style sheet": http.get("/console/static/console.css"),
            "missing file": http.get("/console/static/nothing.js"),
            "session": http.get("/console/api/session"),
            "unknown route": http.post("/console/api/nothing"),
            "bad sign-in body": http.post("/console/api/login", content=b"x", headers={"content-type": "text/plain"}),
            "not signed in": http.get("/console/api/training-metrics", params={"job": "x"},
                                      headers={"x-bedrock-local-region": "us-east-1"}),
            "sign-out": http.post("/console/api/logout"),
            "head": http.head("/console"),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {"page": 200, "page (index.html)": 200, "script": 200, "style sheet": 200, "missing file": 404,
                        "session": 200, "unknown route": 404, "bad sign-in body": 400, "not signed in": 403,
                        "sign-out": 200, "head": 200}
    for answer in answers.values():
        assert_protected(answer)
    assert "javascript" in answers["script"].headers["content-type"]
    assert answers["style sheet"].headers["content-type"].startswith("text/css")


def test_the_console_files_need_nothing_the_policy_refuses():
    """No inline script, inline style, style attribute or inline event handler (the policy allows only
    the console's own files), and the script sets styles through the CSSOM."""
    folder = resources.files("bedrock_local.console") / "static"
    page = (folder / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), "an inline <script>"
    assert not re.search(r"<style\b|\sstyle\s*=|\son[a-z]+\s*=|javascript:", page, re.I)
    loads = [url for url in re.findall(r'(?:src|href)="([^"]+)"', page) if not url.startswith("#")]
    assert loads == ["data:,", "/console/static/console.css", "/console/static/console.js"]
    script = (folder / "console.js").read_text()
    assert "eval(" not in script and "new Function" not in script and "innerHTML" not in script
    assert not re.search(r"setAttribute\(\s*[\"']style", script)
    assert "url(" not in (folder / "console.css").read_text()  # nothing loaded from elsewhere


# ------------------------------------------------------------------------------------------
# lock-out and back-off

def test_failed_sign_ins_lock_out_with_growing_back_off_and_a_success_resets(proxied):
    key, client = KEY_IDS[0], "203.0.113.10"
    fail_until_locked(proxied, lambda n: key, lambda n: client)
    first = locked(login(proxied, key, forwarded=client))  # even the right secret: refused unchecked
    assert_protected(login(proxied, key, forwarded=client))
    time.sleep(BACKOFF + 0.1)
    refused(login(proxied, key, "wrong", client))  # the lock is over; one more failure locks twice as long
    second = locked(login(proxied, key, forwarded=client))
    assert (first, second) == (1, 2)
    time.sleep(2 * BACKOFF + 0.1)
    signed_in(login(proxied, key, forwarded=client), key)
    # the success cleared both counters: FREE more failures go unlocked again
    for _ in range(FREE):
        refused(login(proxied, key, "wrong", client))
    signed_in(login(proxied, key, forwarded=client), key)


def test_failures_are_counted_per_access_key_across_clients(proxied):
    key, other = KEY_IDS[1], KEY_IDS[2]
    fail_until_locked(proxied, lambda n: key, lambda n: f"198.51.100.{n + 1}")  # one failure per address
    locked(login(proxied, key, forwarded="198.51.100.99"))  # a new address: the key itself is locked
    signed_in(login(proxied, other, forwarded="198.51.100.1"), other)  # the addresses are not


def test_failures_are_counted_per_client_across_access_keys(proxied):
    client = "203.0.113.20"
    fail_until_locked(proxied, lambda n: f"AKIAMADEUP{n:02d}", lambda n: client)  # one failure per key
    key = KEY_IDS[3]
    locked(login(proxied, key, forwarded=client))  # a key never tried: the client is locked
    signed_in(login(proxied, key, forwarded="203.0.113.21"), key)  # another client is not


# ------------------------------------------------------------------------------------------
# whose forwarded address counts

def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(direct):
    """Without --trusted-proxies a client cannot escape the count by writing a new X-Forwarded-For each
    time: every try is its own address's."""
    fail_until_locked(direct, lambda n: f"AKIASPRAY{n:02d}", lambda n: f"192.0.2.{n + 1}")
    key = KEY_IDS[4]
    locked(login(direct, key, forwarded="192.0.2.200"))
    time.sleep(BACKOFF + 0.1)
    signed_in(login(direct, key), key)  # and clear this server's one client for the other tests


def test_a_trusted_proxy_is_believed_and_a_client_cannot_lock_out_another(proxied):
    """Through the trusted proxy, the right-most address it did not add counts: an attacker who writes a
    victim's address into X-Forwarded-For locks out only itself, and trusted hops are skipped."""
    attacker, victim = "203.0.113.66", "198.51.100.200"
    fail_until_locked(proxied, lambda n: f"AKIAGUESS{n:02d}", lambda n: f"{victim}, {attacker}")
    locked(login(proxied, KEY_IDS[5], forwarded=attacker))
    locked(login(proxied, KEY_IDS[5], forwarded=f"{attacker}, 127.0.0.1"))  # a second trusted hop skipped
    locked(login(proxied, KEY_IDS[5], forwarded=f"{victim}, {attacker}, 127.0.0.1"))
    signed_in(login(proxied, KEY_IDS[5], forwarded=victim), KEY_IDS[5])
    signed_in(login(proxied, KEY_IDS[6], forwarded=f"{attacker}, {victim}"), KEY_IDS[6])  # the victim's own try


# ------------------------------------------------------------------------------------------
# the session cookie

def test_the_session_cookie_is_http_only_strict_and_secure_under_tls(direct, proxied):
    plain = signed_in(login(proxied, KEY_IDS[7], forwarded="198.51.100.70"), KEY_IDS[7])
    assert cookie_attributes(plain) >= {"httponly", "samesite", "path", "max-age"}
    assert "SameSite=Strict" in plain and "secure" not in cookie_attributes(plain)

    tls = signed_in(login(proxied, KEY_IDS[7], forwarded="198.51.100.70", proto="https"), KEY_IDS[7])
    assert cookie_attributes(tls) >= {"httponly", "samesite", "secure"} and "SameSite=Strict" in tls
    cleared = httpx.post(f"{proxied.url}/console/api/logout", headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert cookie_attributes(cleared.headers["set-cookie"]) >= {"httponly", "samesite", "secure"}
    assert "Max-Age=0" in cleared.headers["set-cookie"]

    # a peer that is no trusted proxy cannot claim TLS for itself
    spoofed = signed_in(login(direct, KEY_IDS[8], proto="https"), KEY_IDS[8])
    assert "secure" not in cookie_attributes(spoofed) and "SameSite=Strict" in spoofed
    # the cookie works: a console read with it
    value = tls.split(";", 1)[0].split("=", 1)[1]
    with httpx.Client(base_url=proxied.url, cookies={"bedrock_local_console": value}, timeout=30) as http:
        session = http.get("/console/api/session").json()
    assert session["signedIn"] and session["accessKeyId"] == KEY_IDS[7]


# ------------------------------------------------------------------------------------------
# the parts, without a server

def test_the_back_off_doubles_up_to_its_cap_and_memory_stays_bounded():
    now = [1000.0]
    throttle = security.LoginThrottle(1.0, free_failures=2, max_seconds=8.0, capacity=50, clock=lambda: now[0])
    locks = [throttle.failed("10.0.0.1", "AKIAONE") for _ in range(8)]
    assert locks == [0, 0, 1, 2, 4, 8, 8, 8]
    assert throttle.wait_seconds("10.0.0.1", "AKIAOTHER") == 8  # the client is locked, whatever the key
    assert throttle.wait_seconds("10.0.0.2", "AKIAONE") == 8  # and the key, whoever tries it
    assert throttle.wait_seconds("10.0.0.2", "AKIAOTHER") == 0
    now[0] += 8
    assert throttle.wait_seconds("10.0.0.1", "AKIAONE") == 0
    throttle.succeeded("10.0.0.1", "AKIAONE")
    assert len(throttle) == 0
    for n in range(1000):  # a flood of made-up keys from many addresses
        throttle.failed(f"10.1.{n // 250}.{n % 250}", f"AKIAFLOOD{n}")
    assert len(throttle) <= 50
    now[0] += security.FORGET_SECONDS
    throttle.failed("10.0.0.9", None)
    assert len(throttle) == 1  # counters without a failure for an hour are forgotten


def test_whose_address_counts():
    def scope(peer: str, *headers: tuple[str, str], scheme: str = "http"):
        return {"client": (peer, 5000), "scheme": scheme,
                "headers": [(name.lower().encode(), value.encode()) for name, value in headers]}

    none, proxies = security.Peers(), security.Peers(security.parse_networks("10.0.0.0/8, ::1"))
    forwarded = ("X-Forwarded-For", "192.0.2.1, 198.51.100.7")
    assert none.client(scope("10.0.0.5", forwarded)) == "10.0.0.5"
    assert proxies.client(scope("10.0.0.5", forwarded)) == "198.51.100.7"
    assert proxies.client(scope("10.0.0.5", ("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", "10.0.0.7"))) \
        == "192.0.2.1"  # two headers: one list, trusted hops skipped
    assert proxies.client(scope("10.0.0.5", ("X-Forwarded-For", "junk, 10.0.0.7"))) == "10.0.0.7"
    assert proxies.client(scope("10.0.0.5")) == "10.0.0.5"
    assert proxies.client(scope("::ffff:10.0.0.5", forwarded)) == "198.51.100.7"  # IPv4-mapped peer
    assert proxies.client(scope("203.0.113.9", forwarded)) == "203.0.113.9"
    assert proxies.is_tls(scope("::1", ("X-Forwarded-Proto", "https")))
    assert not none.is_tls(scope("::1", ("X-Forwarded-Proto", "https")))
    assert none.is_tls(scope("203.0.113.9", scheme="https"))
    assert security.client_bucket("2001:db8:1:2:3:4:5:6") == security.client_bucket("2001:db8:1:2::99") \
        == str(ipaddress.ip_network("2001:db8:1:2::/64"))
    with pytest.raises(ValueError, match="not an IP address"):
        security.parse_networks("10.0.0.0/8, proxy.internal")
