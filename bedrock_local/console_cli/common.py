"""What the client commands share: the boto3 client for a running server (endpoint, region and
credentials from flags or the usual AWS environment), the rich console, and small formatters."""

import datetime
import json
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, ProfileNotFound
from rich.console import Console

DEFAULT_ENDPOINT = "http://127.0.0.1:8700"
DEFAULT_REGION = "us-east-1"
# open mode (no --credentials-file) accepts any key: used only when the environment has none
PLACEHOLDER_KEY = "bedrock-local"


class CliError(Exception):
    """A problem to print as one line and exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def add_client_flags(parser) -> None:
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL_BEDROCK") or DEFAULT_ENDPOINT,
                        help=f"the bedrock-local server (default: $AWS_ENDPOINT_URL_BEDROCK or {DEFAULT_ENDPOINT})")
    parser.add_argument("--region", help=f"region to call (default: the AWS environment or config, else {DEFAULT_REGION})")
    parser.add_argument("--profile", help="AWS profile for credentials and region (default: the AWS environment)")


def console() -> Console:
    """stdout; a wide line when it is not a terminal, so that tables piped or captured keep one row a line."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console(highlight=False)
    return Console(width=240, highlight=False)


class Clients:
    """boto3 clients for one server, made on first use, one per (service, region)."""

    def __init__(self, args):
        self.endpoint_url = args.endpoint_url
        try:
            self.session = boto3.Session(profile_name=args.profile)
        except ProfileNotFound as exc:
            raise CliError(str(exc))
        self.region = args.region or self.session.region_name or DEFAULT_REGION
        self.credentials = {}
        if self.session.get_credentials() is None:
            self.credentials = {"aws_access_key_id": PLACEHOLDER_KEY, "aws_secret_access_key": PLACEHOLDER_KEY}
        self._clients = {}

    def client(self, service: str = "bedrock", region: str | None = None):
        key = (service, region or self.region)
        if key not in self._clients:
            self._clients[key] = self.session.client(
                service, endpoint_url=self.endpoint_url, region_name=key[1], **self.credentials,
                config=Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=60))
        return self._clients[key]

    @property
    def bedrock(self):
        return self.client("bedrock")

    def signed_get(self, path: str, query: dict[str, str], region: str | None = None) -> dict:
        """GET one of the server's own JSON routes (the console's reads, e.g. an evaluation job's
        scores, which no Bedrock operation answers), signed with SigV4 as the clients sign, in `region`
        (default: the client's)."""
        import urllib.error
        import urllib.parse
        import urllib.request

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        if self.credentials:
            credentials = Credentials(self.credentials["aws_access_key_id"], self.credentials["aws_secret_access_key"])
        else:
            credentials = self.session.get_credentials().get_frozen_credentials()
        url = f"{self.endpoint_url.rstrip('/')}{path}?{urllib.parse.urlencode(query)}"
        request = AWSRequest(method="GET", url=url)
        SigV4Auth(credentials, "bedrock", region or self.region).add_auth(request)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=dict(request.headers.items())),
                                        timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
            raise CliError(f"GET {path}: {exc.headers.get('x-amzn-ErrorType', exc.code)}: "
                           f"{answer.get('message') or answer.get('Message')}")
        except (urllib.error.URLError, OSError) as exc:
            raise CliError(f"Cannot reach bedrock-local at {self.endpoint_url}: {exc}", 3)


def call(description: str, function, **params):
    """One API call; connection problems and API errors become a CliError that says what failed."""
    try:
        return function(**params)
    except (ClientError, BotoCoreError) as exc:
        raise as_cli_error(description, exc)


def paged(client, operation: str, key: str, **params) -> list[dict]:
    """Every item of a List operation, through its boto3 paginator."""
    items = []
    try:
        for page in client.get_paginator(operation).paginate(**params):
            items.extend(page.get(key, []))
    except (ClientError, BotoCoreError) as exc:
        raise as_cli_error(operation, exc)
    return items


def as_cli_error(description: str, exc: Exception) -> CliError:
    if isinstance(exc, EndpointConnectionError):
        return CliError(f"Cannot reach bedrock-local at {exc.kwargs.get('endpoint_url', 'the endpoint')}: is "
                        f"`bedrock-local serve` running there? (--endpoint-url)", 3)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return CliError(f"{description}: {error.get('Code')}: {error.get('Message')}")
    return CliError(f"{description}: {exc}", 3)


def when(value) -> str:
    """A timestamp as UTC to the second, or '' for none."""
    if not value:
        return ""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))
