"""Who is calling: the region from the SigV4 credential scope (Authorization header or presigned
query), the account from the access key. With a credentials file every request's signature is
verified (api/auth.py) against the key's secret; without one the server is in open mode: nothing is
verified and every key is the default account. The file may also say which account owns which
bucket (`s3BucketOwner` and cross-account isolation of the object store)."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from bedrock_local.api import auth
from bedrock_local.storage.location import bucket_problem

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")
_ACCOUNT = re.compile(r"[0-9]{12}")
_ACCESS_KEY = re.compile(r"[\w]{1,128}")  # the AccessKeyId shape of IAM: \w+, at most 128 characters
_FORMAT = ('{"<access key id>": {"secretAccessKey": "...", "accountId": "<12 digits>", '
           '"sessionToken": "... (optional)", "buckets": ["<bucket the account owns>", ...] (optional)}}')


class CredentialsFileError(ValueError):
    """The credentials file cannot be used; the message names the file and the entry, never a secret."""


@dataclass(frozen=True)
class Caller:
    access_key: str | None
    account: str
    region: str


@dataclass(frozen=True)
class Key:
    account: str
    secret: str
    token: str | None = None

    def __repr__(self) -> str:  # never show a secret, even in a debugger or a traceback's locals
        return f"Key(account={self.account!r})"


def load_credentials(path: Path) -> tuple[dict[str, Key], dict[str, str]]:
    """The keys of a credentials file and the buckets its accounts own (bucket -> account)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CredentialsFileError(f"{path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:  # no excerpt of the file: it holds secrets
        raise CredentialsFileError(f"{path}: not valid JSON (line {getattr(exc, 'lineno', '?')}); "
                                   f"expected {_FORMAT}") from None
    if not isinstance(data, dict) or not data:
        raise CredentialsFileError(f"{path}: expected a non-empty object {_FORMAT}")
    keys: dict[str, Key] = {}
    owners: dict[str, str] = {}
    for key_id, entry in data.items():
        where = f"{path}: entry {key_id!r}"
        if not _ACCESS_KEY.fullmatch(key_id):
            raise CredentialsFileError(f"{path}: {key_id!r} is not an access key id (letters, digits, '_')")
        if not isinstance(entry, dict):
            raise CredentialsFileError(f"{where}: expected an object {_FORMAT}")
        unknown = set(entry) - {"secretAccessKey", "accountId", "sessionToken", "buckets"}
        if unknown:
            raise CredentialsFileError(f"{where}: unknown member(s) {sorted(unknown)}; expected {_FORMAT}")
        secret, account, token = entry.get("secretAccessKey"), entry.get("accountId"), entry.get("sessionToken")
        if not isinstance(secret, str) or not secret:
            raise CredentialsFileError(f"{where}: secretAccessKey must be a non-empty string")
        if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
            raise CredentialsFileError(f"{where}: accountId must be a string of 12 digits")
        if token is not None and (not isinstance(token, str) or not token):
            raise CredentialsFileError(f"{where}: sessionToken, when given, must be a non-empty string")
        buckets = entry.get("buckets", [])
        if not isinstance(buckets, list):
            raise CredentialsFileError(f"{where}: buckets must be a list of bucket names")
        for bucket in buckets:
            problem = bucket_problem(bucket)
            if problem:
                raise CredentialsFileError(f"{where}: {problem}")
            if owners.setdefault(bucket, account) != account:
                raise CredentialsFileError(f"{where}: bucket {bucket!r} is listed for accounts "
                                           f"{owners[bucket]} and {account}; a bucket has one owner")
        keys[key_id] = Key(account, secret, token)
    return keys, owners


class Accounts:
    """Access keys and their accounts, from an optional JSON credentials file:
    ``{"AKIA...": {"secretAccessKey": "...", "accountId": "111111111111"}}``."""

    def __init__(self, default_account: str, default_region: str, credentials_file: Path | None = None):
        self.default_account = default_account
        self.default_region = default_region
        self.keys: dict[str, Key] = {}
        self.bucket_owners: dict[str, str] = {}
        if credentials_file is not None:
            self.keys, self.bucket_owners = load_credentials(credentials_file)

    @property
    def open_mode(self) -> bool:
        return not self.keys

    @property
    def account_ids(self) -> set[str]:
        return {key.account for key in self.keys.values()}

    def authenticate(self, method: str, raw_path: str, query_string: str, headers: dict[str, str],
                     raw_headers: list[tuple[bytes, bytes]], body: bytes) -> Caller:
        """The verified caller of a request (in open mode: the caller it says it is)."""
        if self.open_mode:
            return self.caller(headers, query_string)
        signed = auth.read_signature(headers, query_string)
        key = self.keys.get(signed.access_key)
        if key is None or signed.token != key.token:
            raise auth.UnrecognizedClientException(auth.INVALID_TOKEN)
        auth.check_time(signed)
        auth.check_signature(signed, key.secret, method, raw_path, query_string, raw_headers, body)
        return Caller(signed.access_key, key.account, signed.region)

    def caller(self, headers: dict[str, str], query_string: str) -> Caller:
        """Open mode: the account of the access key the request names (the default account for any key
        the file does not know), unverified."""
        access_key, region = None, self.default_region
        found = _CREDENTIAL.search(headers.get("authorization", ""))
        if found:
            access_key, region = found.group(1), found.group(3)
        else:
            credential = parse_qs(query_string).get("X-Amz-Credential")
            if credential:
                parts = credential[0].split("/")
                if len(parts) == 5:
                    access_key, region = parts[0], parts[2]
        key = self.keys.get(access_key or "")
        return Caller(access_key, key.account if key else self.default_account, region)
