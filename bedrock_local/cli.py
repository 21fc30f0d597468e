"""The `bedrock-local` command: `serve` (API, worker and serving processes), `worker` (a job worker
only) and `serving` (a serving node only: keeps deployed models loaded for bedrock-runtime)."""

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from bedrock_local.settings import Settings

log = logging.getLogger("bedrock_local")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(".bedrock-local"),
                        help="where the SQLite file, the embedded object store (<data-dir>/s3/<bucket>/<key>) and caches live")
    parser.add_argument("--database-url", help="a SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite in the data dir)")
    parser.add_argument("--s3-endpoint-url", help="an S3 endpoint for s3:// URIs and model artifacts (default: the embedded folder store)")
    parser.add_argument("--model-bucket", default="bedrock-local-models", help="the bucket that holds custom model artifacts")
    parser.add_argument("--lease-seconds", type=float, default=30.0, help="how long a worker's claim on a job lasts without a heartbeat")
    parser.add_argument("--cache-dir", type=Path,
                        help="where models are unpacked for loading (default: <data-dir>/cache); may be shared by servers")
    parser.add_argument("--batch-min-records", type=int, default=1, help="quota: fewest records a batch job may have")
    parser.add_argument("--batch-max-records", type=int, default=50_000, help="quota: most records per batch job")
    parser.add_argument("--batch-max-records-per-file", type=int, default=50_000,
                        help="quota: most records per batch input file")
    parser.add_argument("--quota", action="append", default=[], metavar="KEY=VALUE",
                        help="set a service quota, e.g. customization-jobs=4, batch-input-file-size=500MB, "
                             "all=unlimited (repeatable, later ones win; the README lists the quotas)")
    parser.add_argument("--batch-max-record-bytes", type=int, default=25_000_000,
                        help="quota: longest line (record) of a batch input file; a longer one becomes an error line "
                             "(default 25000000, InvokeModel's largest body)")
    parser.add_argument("--job-hour-seconds", type=float, default=3600.0,
                        help="seconds that count as one hour for job timeouts and expiry (for tests; default 3600)")
    parser.add_argument("--model-aliases", type=Path,
                        help="JSON file mapping AWS model ids to packaged models, added to the default map "
                             "(see the README, 'Model aliases')")
    parser.add_argument("--batch-shard-records", type=int, default=10_000,
                        help="records per shard of a batch inference job; a larger job is split into shards that "
                             "every worker process on the same database may claim (default 10000)")
    parser.add_argument("--ray-address",
                        help="run batch inference (Ray Data) and customization (Ray Train) on the Ray cluster at this "
                             "address, e.g. 10.0.0.5:6379; the workers stay the jobs' drivers (default: run them locally)")
    parser.add_argument("--log-level", default="info")


def _settings(args: argparse.Namespace, **extra) -> Settings:
    from bedrock_local.quotas import QuotaSettingError, parse_quota_flags

    try:
        quotas, quota_fields = parse_quota_flags(args.quota)
    except QuotaSettingError as exc:
        sys.exit(f"bedrock-local: {exc}")
    for name, value in quota_fields.items():  # quotas kept in their own flags' fields (--batch-max-records, ...)
        setattr(args, name, value)
    extra["quotas"] = quotas
    extra.setdefault("ray_address", getattr(args, "ray_address", None))
    return Settings(data_dir=args.data_dir, database_url=args.database_url, s3_endpoint_url=args.s3_endpoint_url,
                    model_bucket=args.model_bucket, lease_seconds=args.lease_seconds, cache_root=args.cache_dir,
                    batch_min_records=args.batch_min_records, batch_max_records=args.batch_max_records,
                    batch_max_records_per_file=args.batch_max_records_per_file, hour_seconds=args.job_hour_seconds,
                    model_aliases=args.model_aliases, batch_max_record_bytes=args.batch_max_record_bytes,
                    batch_shard_records=max(1, args.batch_shard_records), **extra)


def _open_stores(settings: Settings):
    from bedrock_local.engine import aliases
    from bedrock_local.storage import open_object_store
    from bedrock_local.store.database import open_database

    try:
        aliases.install(settings.model_aliases)
    except aliases.AliasError as exc:
        sys.exit(f"bedrock-local: --model-aliases: {exc}")

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.resolved_database_url)
    objects = open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
    objects.ensure_bucket(settings.model_bucket)
    return db, objects


# httptools (with a response's head and body sent together: api/http.py) and uvloop rather than h11 and
# asyncio's loop (measured on a busy 2-core machine: 0.40-0.43 -> 0.29-0.35 ms of server CPU per
# GetModelCustomizationJob); no `server: uvicorn` header (AWS sends none); no X-Forwarded-* rewriting of
# the client's address (uvicorn's proxy-headers middleware, a layer around every request: nothing here
# reads the address, and no access log is written)
UVICORN_SETTINGS = {"http": "bedrock_local.api.http:OneSendHttpToolsProtocol", "loop": "uvloop",
                    "access_log": False, "server_header": False, "proxy_headers": False}


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bedrock_local.api.app import create_app
    from bedrock_local.processes.worker import start_worker_processes, stop_worker_processes, threads_per_worker
    from bedrock_local.processes.serving import start_serving_processes

    if args.serving_workers is None:
        args.serving_workers = 1 if args.workers > 0 else 0
    settings = _settings(args, host=args.host, port=args.port, workers=args.workers,
                         serving_workers=args.serving_workers, credentials_file=args.credentials_file,
                         max_request_bytes=args.max_request_bytes)
    db, objects = _open_stores(settings)
    from bedrock_local.api.identity import CredentialsFileError

    try:
        app = create_app(settings, db, objects)
    except CredentialsFileError as exc:
        sys.exit(f"bedrock-local: --credentials-file: {exc}")
    if app.accounts.open_mode:
        log.warning("no --credentials-file: open mode, requests are not authenticated and every access key "
                    "is account %s", settings.default_account)
    else:
        log.info("authentication on: every request's SigV4 signature is verified (%d access key(s), %d account(s))",
                 len(app.accounts.keys), len(app.accounts.account_ids))
    workers = start_worker_processes(settings, settings.workers)
    workers += start_serving_processes(settings, args.serving_workers, threads_per_worker(args.serving_workers))
    log.info("bedrock-local on http://%s:%s, data in %s, %d worker(s), %d serving node(s)", settings.host,
             settings.port, settings.data_dir.resolve(), settings.workers, args.serving_workers)
    server = _api_server_class()(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                                       **UVICORN_SETTINGS))
    try:
        server.run()
    finally:
        stop_worker_processes(workers)
    return 0


def _api_server_class():
    import uvicorn

    class ApiServer(uvicorn.Server):
        """uvicorn's server, but SIGINT/SIGTERM only ask it to exit: uvicorn re-raises the signal after
        shutting down, which would kill `serve` before it stops its worker processes."""

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return ApiServer


def worker(args: argparse.Namespace) -> int:
    from bedrock_local.processes.worker import worker_main

    settings = _settings(args)
    _open_stores(settings)
    worker_main(settings)
    return 0


def serving(args: argparse.Namespace) -> int:
    from bedrock_local.processes.serving import node_main

    settings = _settings(args)
    _open_stores(settings)
    node_main(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedrock-local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the API server and its worker processes")
    _common(serve_parser)
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8700)
    serve_parser.add_argument("--workers", type=int, default=1, help="worker processes to start (0: an API-only node)")
    serve_parser.add_argument("--serving-workers", type=int,
                              help="serving processes to start: they load deployed models and answer bedrock-runtime "
                                   "(default 1, or 0 with --workers 0: an API-only node)")
    serve_parser.add_argument("--max-request-bytes", type=int, default=25_000_000,
                              help="largest request body the API reads; larger ones answer ValidationException "
                                   "(default 25000000, InvokeModel's largest body)")
    serve_parser.add_argument("--credentials-file", type=Path,
                              help='JSON: {"<access key id>": {"secretAccessKey": "...", "accountId": "111111111111"}}')
    serve_parser.set_defaults(run=serve)
    worker_parser = commands.add_parser("worker", help="run one worker process (no API) against a shared database")
    _common(worker_parser)
    worker_parser.set_defaults(run=worker)
    serving_parser = commands.add_parser("serving", help="run one serving node (no API) against a shared database")
    _common(serving_parser)
    serving_parser.set_defaults(run=serving)
    from bedrock_local.console_cli import register as register_client_commands

    register_client_commands(commands)  # jobs, watch, models, quickstart: clients of a running server
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
