"""The console's defences: the security headers of every console response (a Content-Security-Policy
that lets the page load and run nothing but the console's own files), who a request's client is and
whether it came over TLS (X-Forwarded-For and X-Forwarded-Proto are believed only from the trusted
proxies the operator names, `--trusted-proxies`), and the back-off of failed sign-ins, counted per
client address and per access key (`--console-login-backoff`)."""

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

# The page is index.html, console.js and console.css from /console/static/ and requests to its own
# origin; the charts are SVG made by the script (the CSSOM, not style attributes); the favicon is a
# `data:` URL. Nothing inline, no eval, no frames, no plugins.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "connect-src 'self'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"))
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",  # the hash of a page holds resource ARNs
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}

# failed sign-ins allowed before the back-off starts, and its longest lock
FREE_FAILURES = 5
MAX_LOCK_SECONDS = 900.0
# a counter with no failure for this long is forgotten; at most CAPACITY counters are kept (the
# least recently failed go first), so a flood of made-up keys or addresses cannot grow memory
FORGET_SECONDS = 3600.0
CAPACITY = 20_000
MAX_KEY_CHARS = 128

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def apply_headers(headers) -> None:
    """Add the security headers to a response's (mutable) headers."""
    for name, value in HEADERS.items():
        headers[name] = value


def parse_networks(text: str) -> tuple[str, ...]:
    """'10.0.0.0/8, 192.168.1.5' -> ('10.0.0.0/8', '192.168.1.5/32'); a ValueError names an entry that is
    neither an address nor a network."""
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ValueError(f"'{part[:100]}' is not an IP address or CIDR network (for example 10.0.0.0/8)")
    return tuple(networks)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 of a dual-stack socket is 10.0.0.1
    return mapped or address


def _header_values(scope, name: bytes) -> list[str]:
    """The comma-separated items of every `name` header, in the order they came."""
    items = []
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            items += [item.strip() for item in value.decode("latin-1").split(",")]
    return items


class Peers:
    """Who sent a request, as far as the trusted proxies tell: the direct peer, unless it is one of them;
    then the right-most X-Forwarded-For address that is not one of them (what the proxy nearest the
    client saw), so an address a client writes into the header itself is never the one counted."""

    def __init__(self, trusted: Iterable[str] = ()):
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)

    def trusted(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def _peer(self, scope) -> tuple[str, Address | None]:
        client = scope.get("client")
        host = str(client[0]) if client else "unknown"  # a Unix socket has no address
        return host, _address(host)

    def client(self, scope) -> str:
        host, address = self._peer(scope)
        if not self.trusted(address):
            return str(address) if address is not None else host
        current = address
        for item in reversed(_header_values(scope, b"x-forwarded-for")):
            hop = _address(item)
            if hop is None:  # not written by a proxy that is trusted: stop at the last hop that was
                break
            current = hop
            if not self.trusted(hop):
                break
        return str(current)

    def is_tls(self, scope) -> bool:
        """The request reached us over TLS, or reached the trusted proxy next to us over TLS."""
        if scope.get("scheme") in ("https", "wss"):
            return True
        if not self.trusted(self._peer(scope)[1]):
            return False
        proto = [item for item in _header_values(scope, b"x-forwarded-proto") if item]
        return bool(proto) and proto[-1].lower() == "https"


def client_bucket(client: str) -> str:
    """The counter of a client address: an IPv6 client is counted per /64 (one host usually holds a
    whole /64, and would otherwise try from a new address each time)."""
    address = _address(client)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return client


class _Count:
    __slots__ = ("failures", "locked_until", "last_failure")

    def __init__(self):
        self.failures, self.locked_until, self.last_failure = 0, 0.0, 0.0


class LoginThrottle:
    """Failed sign-ins of one API process, counted per client address and per access key id. After
    FREE_FAILURES failures a counter is locked, first for `base_seconds`, then twice as long after each
    further failure (up to MAX_LOCK_SECONDS); a sign-in while its client or its key is locked is
    refused before its secret is checked. A successful sign-in clears its client's and its key's
    counters. Per key, a guesser spread over many addresses is held back; per client, one address
    trying many keys is."""

    def __init__(self, base_seconds: float, free_failures: int = FREE_FAILURES,
                 max_seconds: float = MAX_LOCK_SECONDS, capacity: int = CAPACITY, clock=time.monotonic):
        self.base, self.free, self.max = base_seconds, free_failures, max_seconds
        self.capacity, self.clock = capacity, clock
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()  # least recently failed first
        self._lock = threading.Lock()

    @staticmethod
    def _names(client: str, key: str | None) -> list[tuple[str, str]]:
        names = [("client", client_bucket(client))]
        if key:
            names.append(("key", key[:MAX_KEY_CHARS]))
        return names

    def wait_seconds(self, client: str, key: str | None) -> float:
        """How long until this client may try this key again (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [count.locked_until - now for name in self._names(client, key)
                     if (count := self._counts.get(name)) is not None]
        return max([0.0, *waits])

    def failed(self, client: str, key: str | None) -> float:
        """Count a failed sign-in; answers how long the client or key is now locked (0: not)."""
        now = self.clock()
        lock = 0.0
        with self._lock:
            self._forget(now)
            for name in self._names(client, key):
                count = self._counts.pop(name, None) or _Count()
                self._counts[name] = count  # now the most recently failed
                count.failures += 1
                count.last_failure = now
                if count.failures > self.free:
                    seconds = min(self.max, self.base * 2 ** min(count.failures - self.free - 1, 64))
                    count.locked_until = max(count.locked_until, now + seconds)
                lock = max(lock, count.locked_until - now)
            while len(self._counts) > self.capacity:
                self._counts.popitem(last=False)
        return lock

    def succeeded(self, client: str, key: str | None) -> None:
        with self._lock:
            for name in self._names(client, key):
                self._counts.pop(name, None)

    def _forget(self, now: float) -> None:
        while self._counts:
            oldest = next(iter(self._counts.values()))
            if now - oldest.last_failure < FORGET_SECONDS or oldest.locked_until > now:
                break
            self._counts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._counts)


def retry_after(seconds: float) -> str:
    """The Retry-After header of a lock of this many seconds (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))
