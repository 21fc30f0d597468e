"""Who is calling: the region from the SigV4 credential scope (Authorization header or presigned
query), the account from the access key (a credentials file maps keys to accounts; without one,
every key is the default account)."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request")


@dataclass(frozen=True)
class Caller:
    access_key: str | None
    account: str
    region: str


class Accounts:
    """Access keys and their accounts, from an optional JSON credentials file:
    ``{"AKIA...": {"secretAccessKey": "...", "accountId": "111111111111"}}``."""

    def __init__(self, default_account: str, default_region: str, credentials_file: Path | None = None):
        self.default_account = default_account
        self.default_region = default_region
        self.keys: dict[str, dict] = {}
        if credentials_file is not None:
            self.keys = json.loads(Path(credentials_file).read_text())

    @property
    def open_mode(self) -> bool:
        return not self.keys

    def caller(self, headers: dict[str, str], query_string: str) -> Caller:
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
        account = self.keys.get(access_key or "", {}).get("accountId", self.default_account)
        return Caller(access_key, account, region)
