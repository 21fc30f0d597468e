"""SigV4 verification of incoming requests: the Authorization header form and the presigned-query
form, checked with botocore's own signer (the canonical request, string to sign and signature that
botocore's SigV4Auth computes, with the caller's stored secret and the request's own date), the
body hash, the five-minute clock-skew window and a presigned URL's X-Amz-Expires. Failures are the
errors AWS answers, with its HTTP status codes. Nothing here logs or answers a secret."""

import datetime
import email.utils
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.credentials import Credentials

from bedrock_local.service.errors import BedrockError

SIGNING_NAME = "bedrock"  # the signingName of both `bedrock` and `bedrock-runtime` in botocore's models
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = datetime.timedelta(minutes=5)
MAX_EXPIRES = 7 * 24 * 3600  # the longest a presigned URL may be valid (seconds)
_TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")


class AuthError(BedrockError):
    """An authentication failure; not an error shape of the service models, so it carries its status."""

    http_status = 403


class MissingAuthenticationTokenException(AuthError):
    code = "MissingAuthenticationTokenException"


class IncompleteSignatureException(AuthError):
    code = "IncompleteSignatureException"
    http_status = 400


class UnrecognizedClientException(AuthError):
    code = "UnrecognizedClientException"


class InvalidSignatureException(AuthError):
    code = "InvalidSignatureException"


MISSING_TOKEN = "Missing Authentication Token"
INVALID_TOKEN = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your "
                      "AWS Secret Access Key and signing method. Consult the service documentation for details.")


@dataclass(frozen=True)
class SignedRequest:
    """What a request says about its signature, before it is checked."""

    access_key: str
    date: str          # the credential scope's date, YYYYMMDD
    region: str
    service: str
    timestamp: str     # the request time, in SigV4's basic format (20240101T000000Z)
    signed_headers: tuple[str, ...]
    signature: str
    token: str | None
    expires: int | None  # presigned: seconds the URL is valid for
    presigned: bool


def read_signature(headers: dict[str, str], query_string: str) -> SignedRequest:
    """The signature parts of a request (Authorization header, else presigned query); raises the AWS
    error for a request with none or with an incomplete one."""
    authorization = headers.get("authorization")
    if authorization is not None:
        return _from_header(authorization, headers)
    query = dict(parse_qsl(query_string, keep_blank_values=True))
    if "X-Amz-Signature" in query or "X-Amz-Credential" in query or "X-Amz-Algorithm" in query:
        return _from_query(query)
    raise MissingAuthenticationTokenException(MISSING_TOKEN)


def _from_header(authorization: str, headers: dict[str, str]) -> SignedRequest:
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        # Bedrock API keys: bedrock-local knows access keys only
        raise UnrecognizedClientException(INVALID_TOKEN)
    if scheme != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported authorization type: '{scheme}'. Sign requests with {ALGORITHM} (SigV4).")
    parts = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise IncompleteSignatureException(
                f"'{item.strip()}' not a valid key=value pair (missing equal-sign) in Authorization header.")
        parts[key] = value
    missing = [f"Authorization header requires '{name}' parameter."
               for name in ("Credential", "Signature", "SignedHeaders") if not parts.get(name)]
    timestamp = headers.get("x-amz-date") or _from_http_date(headers.get("date"))
    if not timestamp:
        missing.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if missing:
        raise IncompleteSignatureException(" ".join(missing))
    return _signed(parts["Credential"], timestamp, parts["SignedHeaders"], parts["Signature"],
                   headers.get("x-amz-security-token"), None, presigned=False)


def _from_query(query: dict[str, str]) -> SignedRequest:
    missing = [name for name in _PRESIGN_PARAMS if not query.get(name)]
    if missing:
        raise IncompleteSignatureException(
            "A presigned request requires the query parameters " + ", ".join(_PRESIGN_PARAMS)
            + "; missing: " + ", ".join(missing) + ".")
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise IncompleteSignatureException(
            f"Unsupported X-Amz-Algorithm '{query['X-Amz-Algorithm']}': only {ALGORITHM} is supported.")
    expires = query.get("X-Amz-Expires", str(MAX_EXPIRES))
    if not expires.isdigit() or not 1 <= int(expires) <= MAX_EXPIRES:
        raise IncompleteSignatureException(
            f"X-Amz-Expires must be a whole number of seconds from 1 to {MAX_EXPIRES}, not '{expires}'.")
    return _signed(query["X-Amz-Credential"], query["X-Amz-Date"], query["X-Amz-SignedHeaders"],
                   query["X-Amz-Signature"], query.get("X-Amz-Security-Token"), int(expires), presigned=True)


def _signed(credential: str, timestamp: str, signed_headers: str, signature: str, token: str | None,
            expires: int | None, presigned: bool) -> SignedRequest:
    scope = credential.split("/")
    if len(scope) != 5 or not all(scope):
        raise IncompleteSignatureException(
            f"Credential must have the form <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request; "
            f"this one has {len(scope)} part(s).")
    if scope[4] != "aws4_request":
        raise InvalidSignatureException(
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{scope[4]}'.")
    if scope[3] != SIGNING_NAME:
        raise InvalidSignatureException(f"Credential should be scoped to correct service: '{SIGNING_NAME}'. ")
    if _parse_time(timestamp) is None:
        raise IncompleteSignatureException(
            f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'. See "
            "http://en.wikipedia.org/wiki/ISO_8601")
    return SignedRequest(scope[0], scope[1], scope[2], scope[3], timestamp,
                         tuple(name.strip().lower() for name in signed_headers.split(";")),
                         signature, token, expires, presigned)


def _parse_time(timestamp: str) -> datetime.datetime | None:
    """A SigV4 timestamp (20240101T000000Z) as a UTC datetime, or None; by hand, as strptime costs
    a tenth of a small request's server time, and remembered (a busy client sends the same second
    many times; the result is immutable). Only a value of the format's length can be one."""
    return _parse_time_remembered(timestamp) if len(timestamp) == 16 else None


@functools.lru_cache(maxsize=256)
def _parse_time_remembered(timestamp: str) -> datetime.datetime | None:
    if not _TIMESTAMP.fullmatch(timestamp):
        return None
    try:
        return datetime.datetime(int(timestamp[0:4]), int(timestamp[4:6]), int(timestamp[6:8]), int(timestamp[9:11]),
                                 int(timestamp[11:13]), int(timestamp[13:15]), tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def _from_http_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc).strftime(SIGV4_TIMESTAMP)


def check_time(signed: SignedRequest, now: datetime.datetime | None = None) -> None:
    """The request is inside AWS's window: five minutes either side of now for a signed header; for a
    presigned URL, from five minutes before its X-Amz-Date to X-Amz-Expires after it."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    when = _parse_time(signed.timestamp)
    fmt = lambda t: t.strftime(SIGV4_TIMESTAMP)  # noqa: E731
    if when - now > MAX_SKEW:
        raise InvalidSignatureException(f"Signature not yet current: {signed.timestamp} is still later than "
                                        f"{fmt(now + MAX_SKEW)} ({fmt(now)} + 5 min.)")
    if signed.presigned:
        ends = when + datetime.timedelta(seconds=signed.expires)
        if now > ends:
            raise InvalidSignatureException(f"Signature expired: {fmt(ends)} is now earlier than {fmt(now)} "
                                            f"({signed.timestamp} + {signed.expires} sec.)")
    elif now - when > MAX_SKEW:
        raise InvalidSignatureException(f"Signature expired: {signed.timestamp} is now earlier than "
                                        f"{fmt(now - MAX_SKEW)} ({fmt(now)} - 5 min.)")


class _Request:
    """The parts of a request botocore's SigV4Auth reads to sign it (method, url, params, headers,
    context), with the signed headers as a plain dict of lower-case name to values instead of
    AWSRequest's email.message-based HTTPHeaders (whose parsing and case folding were half the cost
    of a verification)."""

    __slots__ = ("method", "url", "params", "headers", "context")

    def __init__(self, method: str, url: str, headers: dict[str, list[str]], timestamp: str):
        self.method, self.url, self.params, self.headers = method, url, {}, headers
        self.context = {"timestamp": timestamp}


class _Signer(SigV4Auth):
    """botocore's SigV4 signer (its canonical request, string to sign and HMACs) over a `_Request`:
    given the body's hash (already computed from the bytes received) rather than preparing a request
    body to hash it again, and signing exactly the headers the request names in SignedHeaders (a
    client signs what it lists; botocore's own choice of headers is for requests it sends). Two of
    its steps are pure functions of few inputs and are remembered: the canonical form of a path (a
    client polling one job sends the same path again and again) and the signing key of a secret, day,
    region and service (derived by botocore's own four HMACs once a day per caller, as AWS's SDKs
    keep it, instead of per request)."""

    def __init__(self, credentials: Credentials, service: str, region: str, body_hash: str):
        super().__init__(credentials, service, region)
        self._body_hash = body_hash

    def payload(self, request) -> str:
        return self._body_hash

    def headers_to_sign(self, request: _Request) -> dict[str, list[str]]:
        return request.headers

    def canonical_headers(self, headers_to_sign: dict[str, list[str]]) -> str:
        # SigV4's canonical headers: sorted lower-case names, each value's runs of spaces made one,
        # repeated headers joined by commas (botocore's rule, on a plain dict)
        return "\n".join(f"{name}:{','.join(' '.join(value.split()) for value in values)}"
                         for name, values in sorted(headers_to_sign.items()))

    def _normalize_url_path(self, path: str) -> str:
        # remembered up to 1,024 characters: longer paths are never an operation's, and would fill the cache
        return _canonical_path(path) if len(path) <= 1024 else SigV4Auth._normalize_url_path(None, path)

    def signature(self, string_to_sign: str, request) -> str:
        day, region, service = request.context["timestamp"][0:8], self._region_name, self._service_name
        # a region or service name no AWS client sends (over 64 characters) is not remembered
        derive = _signing_key if len(region) <= 64 and len(service) <= 64 else _signing_key.__wrapped__
        key = derive(self.credentials.secret_key, day, region, service)
        # botocore's _sign(key, string_to_sign, hex=True), as OpenSSL's one-shot HMAC-SHA256
        return hmac.digest(key, string_to_sign.encode("utf-8"), "sha256").hex()


@functools.lru_cache(maxsize=4096)
def _canonical_path(path: str) -> str:
    return SigV4Auth._normalize_url_path(None, path)


@functools.lru_cache(maxsize=1024)
def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """botocore's key derivation (its `signature` minus the last HMAC), for one secret and scope."""
    sign = SigV4Auth._sign
    k_date = sign(None, f"AWS4{secret}".encode(), day)
    return sign(None, sign(None, sign(None, k_date, region), service), "aws4_request")


def check_signature(signed: SignedRequest, secret: str, method: str, raw_path: str, query_string: str,
                    raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Recompute the request's signature with botocore's SigV4 signer and the caller's secret; raise
    InvalidSignatureException unless it is the one the request carries."""
    if "host" not in signed.signed_headers:
        raise InvalidSignatureException("'Host' must be a signed header.")
    headers: dict[str, list[str]] = {name: [] for name in signed.signed_headers}
    for name, value in raw_headers:
        values = headers.get(name.decode("latin-1").lower())
        if values is not None:
            values.append(value.decode("latin-1"))
    body_hash = hashlib.sha256(body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared and declared[-1] != body_hash:
        raise InvalidSignatureException("The provided 'x-amz-content-sha256' header does not match what was computed.")
    if signed.presigned:  # the canonical query holds every parameter but the signature itself
        query_string = "&".join(pair for pair in query_string.split("&")
                                if unquote(pair.partition("=")[0]) != "X-Amz-Signature")
    url = "http://bedrock-local" + raw_path + ("?" + query_string if query_string else "")
    request = _Request(method, url, headers, signed.timestamp)
    signer = _Signer(Credentials(signed.access_key, secret), signed.service, signed.region, body_hash)
    # the scope's own date: a scope dated otherwise than X-Amz-Date signs differently, and fails below
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if signed.date != signed.timestamp[:8] or not hmac.compare_digest(expected, signed.signature):
        raise InvalidSignatureException(SIGNATURE_MISMATCH)
