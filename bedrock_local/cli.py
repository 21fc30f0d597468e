"""The `bedrock-local` command: `serve` (API, worker and serving processes), `worker` (a job worker
only) and `serving` (a serving node only: keeps deployed models loaded for bedrock-runtime)."""

import argparse
import contextlib
import dataclasses
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from bedrock_local.settings import Settings

log = logging.getLogger("bedrock_local")


@dataclasses.dataclass(frozen=True)
class Flag:
    """A command-line flag. One that sets a Settings field (`field`) takes that field's default:
    settings.py is the one place for every default, and help texts that state one read it there."""

    name: str
    help: str | None = None
    field: str | None = None
    type: Callable | None = None
    options: dict = dataclasses.field(default_factory=dict)  # other add_argument options

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        options = {"default": getattr(Settings, self.field)} if self.field else {}
        parser.add_argument(self.name, type=self.type, help=self.help, **options, **self.options)


SHARED_FLAGS = (  # serve, worker and serving
    Flag("--data-dir", "where the SQLite file, the embedded object store (<data-dir>/s3/<bucket>/<key>) and caches live",
         "data_dir", Path),
    Flag("--database-url", "a SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite in the data dir)",
         "database_url"),
    Flag("--s3-endpoint-url", "an S3 endpoint for s3:// URIs and model artifacts (default: the embedded folder store)",
         "s3_endpoint_url"),
    Flag("--model-bucket", "the bucket that holds custom model artifacts", "model_bucket"),
    Flag("--lease-seconds", "how long a worker's claim on a job lasts without a heartbeat", "lease_seconds", float),
    Flag("--cache-dir", "where models are unpacked for loading (default: <data-dir>/cache); may be shared by servers",
         "cache_root", Path),
    Flag("--batch-min-records", "quota: fewest records a batch job may have", "batch_min_records", int),
    Flag("--batch-max-records", "quota: most records per batch job", "batch_max_records", int),
    Flag("--batch-max-records-per-file", "quota: most records per batch input file", "batch_max_records_per_file", int),
    Flag("--quota", "set a service quota, e.g. customization-jobs=4, batch-input-file-size=500MB, all=unlimited "
                    "(repeatable, later ones win; the README lists the quotas)",
         options={"action": "append", "default": [], "metavar": "KEY=VALUE"}),
    Flag("--batch-max-record-bytes", "quota: longest line (record) of a batch input file; a longer one becomes an "
                                     f"error line (default {Settings.batch_max_record_bytes}, InvokeModel's largest body)",
         "batch_max_record_bytes", int),
    Flag("--job-hour-seconds", "seconds that count as one hour for job timeouts and expiry "
                               f"(for tests; default {Settings.hour_seconds:g})", "hour_seconds", float),
    Flag("--model-aliases", "JSON file mapping AWS model ids to packaged models, added to the default map "
                            "(see the README, 'Model aliases')", "model_aliases", Path),
    Flag("--batch-shard-records", "records per shard of a batch inference job; a larger job is split into shards that "
                                  "every worker process on the same database may claim "
                                  f"(default {Settings.batch_shard_records})", "batch_shard_records", int),
    Flag("--ray-address", "run batch inference (model actors) and customization (Ray Train) on the Ray cluster at this "
                          "address, e.g. 10.0.0.5:6379; the workers stay the jobs' drivers (default: run them locally)",
         "ray_address"),
    Flag("--engine", "what generates text: vllm, transformers, or auto (vLLM where it is installed and supports the "
                     f"model, else transformers; default {Settings.engine})", "engine",
         options={"choices": ("auto", "vllm", "transformers")}),
    Flag("--vllm-kv-cache-gib", "KV cache of each vLLM engine on the CPU, in GiB "
                                f"(default {Settings.vllm_kv_cache_gib:g}; on a GPU vLLM sizes it itself)",
         "vllm_kv_cache_gib", float),
    Flag("--log-level", options={"default": "info"}),
)


def _networks(text: str) -> tuple[str, ...]:
    """A --trusted-proxies value as networks; argparse names a bad entry and exits."""
    from bedrock_local.console.security import parse_networks

    try:
        return parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


SERVE_FLAGS = (
    Flag("--host", field="host"),
    Flag("--port", field="port", type=int),
    Flag("--workers", "worker processes to start (0: an API-only node)", "workers", int),
    Flag("--serving-workers", "serving processes to start: they load deployed models and answer bedrock-runtime "
                              "(default 1, or 0 with --workers 0: an API-only node)", type=int),
    Flag("--max-request-bytes", "largest request body the API reads; larger ones answer ValidationException "
                                f"(default {Settings.max_request_bytes}, InvokeModel's largest body)",
         "max_request_bytes", int),
    Flag("--credentials-file", 'JSON: {"<access key id>": {"secretAccessKey": "...", "accountId": "111111111111"}}',
         "credentials_file", Path),
    Flag("--trusted-proxies", "reverse proxies (comma-separated addresses or CIDR networks) whose X-Forwarded-For "
                              "and X-Forwarded-Proto the console believes (default: none, the direct peer counts)",
         "trusted_proxies", _networks, {"metavar": "CIDR,..."}),
    Flag("--console-login-backoff", "seconds of the first lock after too many failed console sign-ins of one client "
                                    "or access key, doubled per further failure "
                                    f"(default {Settings.console_login_backoff_seconds:g})",
         "console_login_backoff_seconds", float),
    Flag("--tls-cert", "speak HTTPS with this certificate (PEM, the chain included)", "tls_cert", Path),
    Flag("--tls-key", "the private key (PEM) of --tls-cert", "tls_key", Path),
    Flag("--serving-tls-ca", "CA bundle (PEM) that serving nodes' TLS certificates are verified against "
                             "(default: the system's trusted CAs)", "serving_tls_ca", Path),
)

NODE_FLAGS = (  # serve and serving: the serving nodes they run, and the secret that signs requests to nodes
    Flag("--serving-host", "the address serving nodes listen on, e.g. 0.0.0.0 to be reached from other hosts "
                           f"(default {Settings.serving_host}: this host only)", "serving_host"),
    Flag("--serving-advertise-host", "the host name or address a serving node registers for API nodes to connect "
                                     "to (default: --serving-host, or this host's name when that is 0.0.0.0)",
         "serving_advertise_host"),
    Flag("--serving-tls-cert", "serving nodes speak TLS with this certificate (PEM, the chain included)",
         "serving_tls_cert", Path),
    Flag("--serving-tls-key", "the private key (PEM) of --serving-tls-cert", "serving_tls_key", Path),
    Flag("--cluster-secret-file", "a file holding the secret that signs every API -> serving node request "
                                  "(default: $BEDROCK_LOCAL_CLUSTER_SECRET, else one kept in the database)",
         "cluster_secret_file", Path),
)

PROCESSES_FLAG = Flag(  # worker and serving
    "--processes", "how many to run: 1 runs one in this process; N > 1 starts N child processes and starts "
                   "each again when it dies, with back-off (default 1)", type=int, options={"default": 1})


def _settings(args: argparse.Namespace, **extra) -> Settings:
    """The Settings the flags of `args` give (SHARED_FLAGS, and SERVE_FLAGS where the command has them)."""
    from bedrock_local.quotas import QuotaSettingError, parse_quota_flags

    try:
        quotas, quota_fields = parse_quota_flags(args.quota)
    except QuotaSettingError as exc:
        sys.exit(f"bedrock-local: {exc}")
    fields = {flag.field: getattr(args, flag.dest) for flag in SHARED_FLAGS + SERVE_FLAGS + NODE_FLAGS
              if flag.field and hasattr(args, flag.dest)}
    fields.update(quota_fields)  # quotas kept in their own flags' fields (--batch-max-records, ...)
    fields["batch_shard_records"] = max(1, fields["batch_shard_records"])
    return Settings(**fields, quotas=quotas, **extra)


def _check_security(settings: Settings) -> None:
    """Exit with a clear message for a TLS flag without its pair, a certificate or key that does not
    load, or a cluster secret file that cannot be read, rather than fail in a child process later."""
    from bedrock_local import node_protocol

    for cert, key, what in ((settings.tls_cert, settings.tls_key, "--tls-cert and --tls-key"),
                            (settings.serving_tls_cert, settings.serving_tls_key,
                             "--serving-tls-cert and --serving-tls-key")):
        if (cert is None) != (key is None):
            sys.exit(f"bedrock-local: {what} go together")
        if cert is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                sys.exit(f"bedrock-local: {what}: {exc}")
    try:
        node_protocol.secret_override(settings)
        if settings.serving_tls_ca is not None:
            node_protocol.client_tls(settings)
    except ValueError as exc:
        sys.exit(f"bedrock-local: {exc}")
    except (OSError, ssl.SSLError) as exc:
        sys.exit(f"bedrock-local: --serving-tls-ca: {exc}")


def _open_stores(settings: Settings):
    from bedrock_local.engine import aliases
    from bedrock_local.storage import open_object_store, sweep_leftovers
    from bedrock_local.store.database import open_database

    try:
        aliases.install(settings.model_aliases)
    except aliases.AliasError as exc:
        sys.exit(f"bedrock-local: --model-aliases: {exc}")

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.resolved_database_url)
    objects = open_object_store(settings.data_dir, settings.s3_endpoint_url, **settings.s3_options)
    objects.ensure_bucket(settings.model_bucket)
    sweep_leftovers(objects, settings.cache_dir)  # temp files of writers killed before this start
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
    from bedrock_local.processes.serving import start_serving_processes
    from bedrock_local.processes.supervisor import stop_processes, threads_per_worker
    from bedrock_local.processes.worker import start_worker_processes

    if args.serving_workers is None:
        args.serving_workers = 1 if args.workers > 0 else 0
    settings = _settings(args, serving_workers=args.serving_workers)
    _check_security(settings)
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
    serving = start_serving_processes(settings, args.serving_workers, threads_per_worker(args.serving_workers))
    log.info("bedrock-local on %s://%s:%s, data in %s, %d worker(s), %d serving node(s)",
             "https" if settings.tls_cert else "http", settings.host, settings.port, settings.data_dir.resolve(),
             settings.workers, args.serving_workers)
    tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)} if settings.tls_cert else {}
    server = _api_server_class()(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                                       **UVICORN_SETTINGS, **tls))
    try:
        server.run()
    finally:
        stop_processes(workers, serving)
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
    from bedrock_local.processes.supervisor import run_command

    settings = _settings(args)
    _open_stores(settings)
    run_command(worker_main, settings, args.processes, "worker")
    return 0


def serving(args: argparse.Namespace) -> int:
    from bedrock_local.processes.serving import node_main
    from bedrock_local.processes.supervisor import run_command

    settings = _settings(args)
    _check_security(settings)
    _open_stores(settings)
    run_command(node_main, settings, args.processes, "serving")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bedrock-local", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run, help, flags in (
            ("serve", serve, "run the API server and its worker processes", SHARED_FLAGS + SERVE_FLAGS + NODE_FLAGS),
            ("worker", worker, "run job workers (no API) against a shared database", SHARED_FLAGS + (PROCESSES_FLAG,)),
            ("serving", serving, "run serving nodes (no API) against a shared database",
             SHARED_FLAGS + NODE_FLAGS + (PROCESSES_FLAG,))):
        command = commands.add_parser(name, help=help)
        for flag in flags:
            flag.add_to(command)
        command.set_defaults(run=run)
    from bedrock_local.console_cli import register as register_client_commands

    register_client_commands(commands)  # jobs, watch, models, quickstart: clients of a running server
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
