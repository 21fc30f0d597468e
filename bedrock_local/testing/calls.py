"""A client of a server's test endpoint (docs/testing-endpoint.md): list and clear the runtime calls
the server received for the caller's account, and register scripted replies. Requests are signed
with SigV4 (botocore's signer) like any AWS request, so the server knows the account. Uses only
the standard library and botocore, imported when a client is made."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from bedrock_local.testing.clients import ACCESS_KEY, REGION, SECRET_KEY

PREFIX = "/_bedrock-local"


class EndpointError(Exception):
    """The endpoint refused a request: its HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Calls:
    """The test endpoint of the server at `endpoint_url`, as the account of `access_key`."""

    def __init__(self, endpoint_url: str, *, region: str = REGION, access_key: str = ACCESS_KEY,
                 secret_key: str = SECRET_KEY, session_token: str | None = None, timeout: float = 30.0):
        self.endpoint_url = endpoint_url.rstrip("/")
        self.region, self.timeout = region, timeout
        self.credentials = (access_key, secret_key, session_token)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One signed request; its JSON answer, or EndpointError."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        data = json.dumps(body).encode() if body is not None else b""
        request = AWSRequest(method, self.endpoint_url + PREFIX + path, data=data,
                             headers={"Content-Type": "application/json"} if body is not None else {})
        SigV4Auth(Credentials(*self.credentials), "bedrock", self.region).add_auth(request)
        prepared = urllib.request.Request(request.url, data=data or None, method=method,
                                          headers=dict(request.headers.items()))
        try:
            with urllib.request.urlopen(prepared, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read() or b"{}")
            except ValueError:
                answer = {}
            raise EndpointError(exc.code, answer.get("__type", ""), answer.get("message", "")) from None

    # ---- the calls -------------------------------------------------------------------------

    def list(self, operation: str | None = None, model_id: str | None = None) -> list[dict]:
        """The runtime calls of this account, oldest first; only those of `operation` / `model_id` if given."""
        calls = self.request("GET", "/calls")["calls"]
        return [c for c in calls if (operation is None or c["operation"] == operation)
                and (model_id is None or c["modelId"] == model_id)]

    def clear(self) -> int:
        return self.request("DELETE", "/calls")["cleared"]

    # ---- the scripts -----------------------------------------------------------------------

    def script(self, model_id: str, *, pattern: str | None = None, text: str | None = None,
               tool_use: dict | None = None, times: int | None = None) -> dict:
        """Register a reply for calls of `model_id` whose last user turn matches `pattern` (a regex,
        searched; None: every call): `text`, or `tool_use` {"name", "input"}. `times`: how many calls
        it answers (None: all). Answers the script as registered (its scriptId)."""
        spec: dict = {"modelId": model_id}
        if pattern is not None:
            spec["pattern"] = pattern
        if text is not None:
            spec["text"] = text
        if tool_use is not None:
            spec["toolUse"] = tool_use
        if times is not None:
            spec["times"] = times
        return self.request("POST", "/scripts", spec)

    def scripts(self) -> list[dict]:
        return self.request("GET", "/scripts")["scripts"]

    def remove_script(self, script_id: str) -> None:
        self.request("DELETE", f"/scripts/{script_id}")

    def clear_scripts(self) -> int:
        return self.request("DELETE", "/scripts")["deleted"]
