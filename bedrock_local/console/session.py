"""Console sessions: who a browser is. A browser cannot SigV4-sign its requests without a library,
so the console signs in once (an access key pair checked against the credentials file, or nothing
in open mode) and gets an HttpOnly cookie holding a session signed by the server (HMAC-SHA256 with
the database's token secret: every API node of one database accepts it). A request that carries
that cookie, the console's region header and no SigV4 signature is the session's account, in the
region the header names.

The region header is also what keeps other web pages out: a page of another origin cannot add a
custom header to a request without a CORS preflight, which this server never grants, and the cookie
is SameSite=Strict (and Secure when the sign-in came over TLS)."""

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from bedrock_local.api.identity import Accounts, Caller
from bedrock_local.service.errors import ValidationException

COOKIE = "bedrock_local_console"
REGION_HEADER = "x-bedrock-local-region"
LIFETIME_SECONDS = 12 * 3600
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")  # us-east-1, ap-southeast-2, us-gov-west-1


@dataclass(frozen=True)
class Session:
    access_key: str | None  # None: open mode, signed in without a key
    account: str
    expires: int  # seconds since the epoch


def _sign(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, b"console-session." + payload, hashlib.sha256).hexdigest()


def issue(secret: bytes, access_key: str | None, account: str, now: float | None = None) -> str:
    """The cookie value of a new session."""
    expires = int((now if now is not None else time.time()) + LIFETIME_SECONDS)
    payload = json.dumps({"k": access_key, "a": account, "e": expires}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(secret, payload)


def read(secret: bytes, value: str, now: float | None = None) -> Session | None:
    """The session a cookie value holds, or None when it is not one this server signed or it expired."""
    try:
        encoded, signature = value.rsplit(".", 1)
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        if not hmac.compare_digest(signature, _sign(secret, payload)):
            return None
        data = json.loads(payload)
        session = Session(data["k"], data["a"], int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    if session.expires <= (now if now is not None else time.time()):
        return None
    return session


def cookie_value(headers: dict[str, str]) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def current(accounts: Accounts, secret: bytes, headers: dict[str, str]) -> Session | None:
    """The valid session of a request's cookie: signed here, not expired, and (with a credentials file)
    of a key the file still maps to the same account."""
    value = cookie_value(headers)
    session = read(secret, value) if value else None
    if session is None:
        return None
    if accounts.open_mode:
        return session if session.account == accounts.default_account else None
    key = accounts.keys.get(session.access_key or "")
    return session if key is not None and key.account == session.account else None


def region_of(headers: dict[str, str], default: str) -> str:
    region = headers.get(REGION_HEADER) or default
    if not REGION.fullmatch(region):
        raise ValidationException(f"The {REGION_HEADER} header '{region[:64]}' is not a region name "
                                  f"(for example us-east-1).")
    return region


def caller_from_cookie(accounts: Accounts, secret: bytes, headers: dict[str, str], query_string: str) -> Caller | None:
    """The caller of an API request the console makes: None unless the request has no SigV4 signature
    (header or presigned query), has the region header and carries a valid session cookie; then the
    normal (SigV4) path decides."""
    if "authorization" in headers or REGION_HEADER not in headers or "X-Amz-" in query_string:
        return None
    session = current(accounts, secret, headers)
    if session is None:
        return None
    return Caller(session.access_key, session.account, region_of(headers, accounts.default_region))


def set_cookie_header(value: str, secure: bool = False) -> str:
    """The cookie of a session: never readable by scripts, never sent by another site's page, and, for a
    request that came over TLS (`secure`: console/security.py says), never sent over plain HTTP."""
    return (f"{COOKIE}={value}; Path=/; Max-Age={LIFETIME_SECONDS}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def clear_cookie_header(secure: bool = False) -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
