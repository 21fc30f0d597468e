"""The web console's own routes, under /console on the API's port: the page and its static files
(plain HTML, JS and CSS shipped as package data), sign-in and sign-out (console/session.py), and
the two reads the Bedrock API has no operation for: a customization job's step-wise training and
validation metrics, read from the CSV files the job writes under its output URI, and an evaluation
job's aggregate scores.

Everything else the page shows it reads through the Bedrock API itself (the same restJson1 routes
boto3 calls), so there is one source of truth and one set of account and region rules. Every answer
here carries the security headers, and sign-ins are throttled (console/security.py)."""

import csv
import io
import json
import logging
import mimetypes
import traceback
from importlib import resources as package_files

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from bedrock_local.api.identity import Caller
from bedrock_local.console import security, session as sessions
from bedrock_local.service.common import read_in_scope
from bedrock_local.service.context import Context
from bedrock_local.service.errors import (AccessDeniedException, BedrockError, InternalServerException,
                                          ResourceNotFoundException, ThrottlingException, ValidationException)
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.storage.errors import NoSuchKey
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.console")

PREFIX = "/console"
# The regions the picker always offers (those where Amazon Bedrock runs batch inference and
# customization); regions where the account already has resources are added to them.
REGIONS = ("us-east-1", "us-east-2", "us-west-2", "ca-central-1", "sa-east-1", "eu-west-1", "eu-west-2",
           "eu-west-3", "eu-central-1", "eu-central-2", "eu-north-1", "eu-south-1", "ap-south-1",
           "ap-northeast-1", "ap-northeast-2", "ap-southeast-1", "ap-southeast-2", "us-gov-west-1")
CUSTOMIZATION_KIND = "model-customization-job"
EVALUATION_KIND = "evaluation-job"
MAX_LOGIN_BYTES = 16 * 1024


class NotSignedIn(BedrockError):
    """No valid console session (or it expired): the page shows the sign-in form."""

    code = "UnrecognizedClientException"
    http_status = 403


class SignInLocked(ThrottlingException):
    """Too many failed sign-ins of this client or this access key: refused, secret unchecked, until the
    lock ends (the Retry-After header says when)."""

    http_status = 429

    def __init__(self, message: str, seconds: float):
        super().__init__(message)
        self.headers = {"Retry-After": security.retry_after(seconds)}


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = package_files.files("bedrock_local.console") / "static"
    files = {}
    for entry in folder.iterdir():
        if entry.is_file():
            kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            files[entry.name] = (entry.read_bytes(), kind + ("; charset=utf-8" if kind.startswith("text/")
                                                              or kind.endswith("javascript") else ""))
    return files


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(data, default=str).encode(), status_code=status, headers=headers,
                    media_type="application/json")


class Console:
    """The /console routes of one API process; `api` is the BedrockApi whose state it shares."""

    def __init__(self, api):
        self.api = api
        self.accounts = api.accounts
        self._static: dict[str, tuple[bytes, str]] | None = None
        self.peers = security.Peers(api.settings.trusted_proxies)
        self.throttle = security.LoginThrottle(api.settings.console_login_backoff_seconds)

    # ---- the hook the API calls for every request ----------------------------------------------
    def caller(self, headers: dict[str, str], query_string: str) -> Caller | None:
        """The console session's caller of an API request, or None (the SigV4 path decides)."""
        if "authorization" in headers or sessions.REGION_HEADER not in headers:
            return None
        return sessions.caller_from_cookie(self.accounts, self.api.db.token_secret(), headers, query_string)

    # ---- the console's own routes --------------------------------------------------------------
    async def handle(self, request: Request, request_id: str) -> Response:
        try:
            response = await self._route(request, request_id)
        except Exception as error:
            if not isinstance(error, BedrockError):
                log.error("console request %s failed:\n%s", request_id, traceback.format_exc())
                error = InternalServerException(f"The request could not be completed (request id {request_id}).")
            # the AWS envelope, with the status of errors no model has
            status, headers, payload = self.api.codec.serialize_error(error, request_id)
            headers.update(getattr(error, "headers", {}))
            response = Response(payload, status_code=getattr(error, "http_status", status), headers=headers)
        security.apply_headers(response.headers)
        return response

    async def _route(self, request: Request, request_id: str) -> Response:
        path, method = request.url.path, request.method
        if path in (PREFIX, PREFIX + "/", PREFIX + "/index.html") and method in ("GET", "HEAD"):
            return self._file("index.html")
        if path.startswith(PREFIX + "/static/") and method in ("GET", "HEAD"):
            return self._file(path[len(PREFIX + "/static/"):])
        if path == PREFIX + "/api/session" and method == "GET":
            return await self._session(request)
        if path == PREFIX + "/api/login" and method == "POST":
            return await self._login(request)
        if path == PREFIX + "/api/logout" and method == "POST":
            return _json({"signedIn": False}, headers={
                "Set-Cookie": sessions.clear_cookie_header(self.peers.is_tls(request.scope)),
                "Cache-Control": "no-store"})
        if path == PREFIX + "/api/training-metrics" and method == "GET":
            return await self._training_metrics(request, request_id)
        if path == PREFIX + "/api/evaluation-scores" and method == "GET":
            return await self._evaluation_scores(request, request_id)
        raise ResourceNotFoundException(f"The console has no {method} {path}.")

    def _file(self, name: str) -> Response:
        if self._static is None:
            self._static = _static_files()
        found = self._static.get(name)  # only the packaged files: no path is ever joined
        if found is None:
            raise ResourceNotFoundException(f"The console has no file '{name[:100]}'.")
        body, kind = found
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})

    def _headers(self, request: Request) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}

    async def _session(self, request: Request) -> Response:
        """Who the browser is signed in as; in open mode a session of the default account is opened
        on the spot (there is nothing to check)."""
        headers = self._headers(request)
        secret = self.api.db.token_secret()
        session = sessions.current(self.accounts, secret, headers)
        extra = {"Cache-Control": "no-store"}
        if session is None and self.accounts.open_mode:
            value = sessions.issue(secret, None, self.accounts.default_account)
            session = sessions.read(secret, value)
            extra["Set-Cookie"] = sessions.set_cookie_header(value, self.peers.is_tls(request.scope))
        answer = {"signedIn": session is not None, "openMode": self.accounts.open_mode,
                  "defaultRegion": self.accounts.default_region, "regionHeader": sessions.REGION_HEADER}
        if session is not None:
            used = await run_in_threadpool(self._regions_of, session.account)
            answer.update(account=session.account, accessKeyId=session.access_key, expires=session.expires,
                          regions=sorted(set(REGIONS) | used | {self.accounts.default_region}))
        return _json(answer, headers=extra)

    def _regions_of(self, account: str) -> set[str]:
        with self.api.db.read_session() as db_session:
            return set(db_session.scalars(select(Resource.region).where(Resource.account == account).distinct()))

    async def _login(self, request: Request) -> Response:
        """POST {"accessKeyId", "secretAccessKey", "sessionToken"?} as JSON (a form of another site
        cannot send that content type without a preflight)."""
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise ValidationException("Sign in with a JSON body (Content-Type: application/json): "
                                      '{"accessKeyId": "...", "secretAccessKey": "..."}.')
        raw = await request.body()
        if len(raw) > MAX_LOGIN_BYTES:
            raise ValidationException(f"The sign-in body is larger than {MAX_LOGIN_BYTES} bytes.")
        try:
            form = json.loads(raw or b"{}")
        except ValueError:
            raise ValidationException("The sign-in body is not valid JSON.")
        if not isinstance(form, dict):
            raise ValidationException('The sign-in body must be a JSON object {"accessKeyId", "secretAccessKey"}.')
        key_id, secret_key, token = (form.get(name) for name in ("accessKeyId", "secretAccessKey", "sessionToken"))
        for name, value in (("accessKeyId", key_id), ("secretAccessKey", secret_key), ("sessionToken", token)):
            if value is not None and not isinstance(value, str):
                raise ValidationException(f"{name} must be a string.")
        if self.accounts.open_mode:
            account, key_id = self.accounts.default_account, key_id or None
        else:
            client = self.peers.client(request.scope)
            wait = self.throttle.wait_seconds(client, key_id)
            if wait > 0:
                raise SignInLocked("Too many failed sign-ins from this address or for this access key: try again "
                                   f"in {security.retry_after(wait)} s.", wait)
            key = self.accounts.keys.get(key_id or "")
            if (key is None or not secret_key or not _same(secret_key, key.secret)
                    or (key.token is not None and not _same(token or "", key.token))):
                locked = self.throttle.failed(client, key_id)
                if locked > 0:
                    log.warning("console sign-in failed for access key %r from %s: locked for %.1f s",
                                (key_id or "")[:32], client, locked)
                raise AccessDeniedException("The access key id, secret access key (or session token) is not "
                                            "valid for this server.")
            self.throttle.succeeded(client, key_id)
            account = key.account
        secret = self.api.db.token_secret()
        value = sessions.issue(secret, key_id, account)
        session = sessions.read(secret, value)
        return _json({"signedIn": True, "account": account, "accessKeyId": key_id, "expires": session.expires},
                     headers={"Set-Cookie": sessions.set_cookie_header(value, self.peers.is_tls(request.scope)),
                              "Cache-Control": "no-store"})

    def _caller(self, request: Request) -> Caller:
        headers = self._headers(request)
        if "authorization" in headers:
            # a SigV4-signed client (`bedrock-local jobs` reading scores) is verified as the API verifies it
            scope = request.scope
            path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
            return self.accounts.authenticate(request.method, path.split("?", 1)[0],
                                              scope.get("query_string", b"").decode("latin-1"), headers,
                                              scope["headers"], b"")
        session = sessions.current(self.accounts, self.api.db.token_secret(), headers)
        if session is None:
            raise NotSignedIn("Sign in to the console: no valid console session.")
        return Caller(session.access_key, session.account, sessions.region_of(headers, self.accounts.default_region))

    async def _training_metrics(self, request: Request, request_id: str) -> Response:
        """GET ?job=<ARN or name>[&points=0]: the job's live step (while it trains), its epoch count
        and, unless points=0, the rows of its training and validation metrics files."""
        with_points = request.query_params.get("points", "1") != "0"
        return await self._about_job(request, request_id, "a model customization job", training_metrics, with_points)

    async def _evaluation_scores(self, request: Request, request_id: str) -> Response:
        """GET ?job=<ARN or name>: the aggregate scores of an evaluation job (once it completed), for the
        page or a SigV4-signed client."""
        return await self._about_job(request, request_id, "an evaluation job", evaluation_scores)

    async def _about_job(self, request: Request, request_id: str, what: str, answer, *args) -> Response:
        """What `answer(ctx, job, *args)` says about the job the query's `job` names, for the signed-in
        caller (a job of another account or region is not found)."""
        caller = self._caller(request)
        job = request.query_params.get("job")
        if not job:
            raise ValidationException(f"The query parameter 'job' ({what} ARN or name) is required.")
        api = self.api
        ctx = Context(caller.account, caller.region, api.db, api.objects, api.settings, request_id)
        return _json(await run_in_threadpool(answer, ctx, job, *args), headers={"Cache-Control": "no-store"})


def _same(given: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode(), expected.encode())


def training_metrics(ctx: Context, identifier: str, with_points: bool = True) -> dict:
    """A customization job of the caller's account and region (the lookup GetModelCustomizationJob
    makes: another account's job is not found) and its step-wise metrics."""
    from bedrock_local.jobs.artifacts import TRAINING_CSV, VALIDATION_CSV

    row = read_in_scope(ctx, CUSTOMIZATION_KIND, "model customization job", identifier)
    body = row.body
    out = S3Location.parse(body["outputDataConfig"]["s3Uri"])
    root = (out if out.is_prefix else S3Location(out.bucket, out.key + "/")).join(
        f"model-customization-job-{row.resource_id}/")
    training_at, validation_at = root.join(*TRAINING_CSV.split("/")), root.join(*VALIDATION_CSV.split("/"))
    epochs = body.get("hyperParameters", {}).get("epochCount")
    answer = {"jobArn": row.arn, "status": row.status, "progress": body.get("_progress"),
              "epochCount": float(epochs) if epochs else None, "outputUri": root.uri,
              "trainingMetricsUri": training_at.uri, "validationMetricsUri": validation_at.uri}
    if with_points:
        answer["training"], answer["trainingError"] = _metric_rows(ctx, training_at, "training_loss")
        answer["validation"], answer["validationError"] = _metric_rows(ctx, validation_at, "validation_loss")
    return answer


def evaluation_scores(ctx: Context, identifier: str) -> dict:
    """An evaluation job of the caller's account and region and the aggregate scores its worker kept
    (the means written to each dataset's `<uuid>_summary.json` in the output, jobs/handlers/evaluation.py),
    one row per task type, dataset and metric."""
    row = read_in_scope(ctx, EVALUATION_KIND, "evaluation job", identifier)
    results = row.body.get("results") or []
    metrics = [{"taskType": result.get("taskType"), "datasetName": result.get("dataset"),
                "modelIdentifier": result.get("modelIdentifier"), "metricName": score["metricName"],
                "value": score.get("result"), "recordCount": score.get("recordCount")}
               for result in results for score in result.get("scores", [])]
    answer = {"jobArn": row.arn, "status": row.status, "metrics": metrics,
              "resultsUri": results[0].get("outputUri") if results else None}
    if row.status == "Completed" and not metrics:
        answer["error"] = "The job completed without a score: no record got a response to score."
    return answer


def _metric_rows(ctx: Context, at: S3Location, loss_column: str) -> tuple[list[dict], str | None]:
    """The rows of a metrics CSV as numbers ([] while the job has not written it); a file that cannot
    be read or parsed gives no rows and the reason."""
    try:
        text = ctx.objects.get_bytes(at).decode("utf-8")
    except NoSuchKey:
        return [], None
    except StorageError as exc:
        return [], f"{at.uri} cannot be read: {exc}"
    rows = []
    try:
        for line in csv.DictReader(io.StringIO(text)):
            rows.append({"step": int(line["step_number"]), "epoch": float(line["epoch_number"]),
                         "loss": float(line[loss_column]), "perplexity": float(line["perplexity"])})
    except (KeyError, TypeError, ValueError) as exc:
        return rows, f"{at.uri} is not a metrics file this console reads: {exc!r}"
    return rows, None
