"""The configuration of one bedrock-local process, from command-line flags. The defaults below are
the flags' defaults too (cli.py reads them here): each is written once."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".bedrock-local")
    host: str = "127.0.0.1"
    port: int = 8700
    database_url: str | None = None        # default: sqlite file in the data dir
    s3_endpoint_url: str | None = None     # default: the embedded folder store
    workers: int = 1
    serving_workers: int = 0               # serving processes `serve` started beside this API
    credentials_file: Path | None = None
    model_bucket: str = "bedrock-local-models"
    lease_seconds: float = 30.0
    poll_seconds: float = 0.5
    default_account: str = "123456789012"
    default_region: str = "us-east-1"
    s3_options: dict = field(default_factory=dict)
    cache_root: Path | None = None         # default: <data-dir>/cache
    model_aliases: Path | None = None      # JSON file of AWS model ids -> packaged models (engine/aliases.py)
    # batch inference quotas (AWS: 50,000 records per job and per file; AWS also asks for at least 100)
    batch_min_records: int = 1
    batch_max_records: int = 50_000
    batch_max_records_per_file: int = 50_000
    # the largest request body the API reads: the model's largest request member, InvokeModel's body
    # (bedrock-runtime `Body`, max 25,000,000 bytes); larger requests answer ValidationException
    max_request_bytes: int = 25_000_000
    # the largest line of a batch inference input file (one record, an InvokeModel body and its recordId);
    # a longer line becomes an error line in the output
    batch_max_record_bytes: int = 25_000_000
    # the service quotas changed by `--quota KEY=VALUE` (key -> value, None: unlimited); the list of
    # quotas, AWS's names and defaults are in bedrock_local/quotas.py
    quotas: dict = field(default_factory=dict)
    # how many seconds count as one hour for job timeouts and expiry (tests shorten it)
    hour_seconds: float = 3600.0
    # a Ray cluster (`--ray-address`) that runs the compute of batch inference and customization jobs;
    # the workers stay their drivers (jobs/executors/ray_cluster.py); None: the workers run it themselves
    ray_address: str | None = None
    # records per shard of a batch inference job: a job with more is split into shards that every worker
    # process (of any host on the same database) may claim (jobs/shards.py)
    batch_shard_records: int = 10_000
    # what generates text (engine/backends.py): "vllm", "transformers", or "auto" (vLLM where it imports and
    # supports the model, else transformers); chosen per model load
    engine: str = "auto"
    # the KV cache of each vLLM engine on the CPU, in GiB (on CUDA vLLM sizes it from the GPU's free memory)
    vllm_kv_cache_gib: float = 2.0
    # proxies (CIDR networks) whose X-Forwarded-For / X-Forwarded-Proto the console believes: the client a
    # sign-in is counted against, and whether the session cookie is Secure (console/security.py)
    trusted_proxies: tuple[str, ...] = ()
    # the first lock of a client or access key after too many failed console sign-ins; doubled per further
    # failure (console/security.py)
    console_login_backoff_seconds: float = 1.0
    # the API's own TLS (`serve --tls-cert/--tls-key`): HTTPS instead of HTTP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # serving nodes (node_protocol.py): where one listens, the host it registers for API nodes to reach it
    # (None: the listen address, or this host's name when that is 0.0.0.0), its TLS certificate and key, and
    # the CA bundle API nodes verify nodes' certificates with (None: the system's trusted CAs)
    serving_host: str = "127.0.0.1"
    serving_advertise_host: str | None = None
    serving_tls_cert: Path | None = None
    serving_tls_key: Path | None = None
    serving_tls_ca: Path | None = None
    # a file holding the secret that signs API -> serving node requests (None: BEDROCK_LOCAL_CLUSTER_SECRET,
    # else the one kept in the database)
    cluster_secret_file: Path | None = None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'bedrock-local.db').resolve()}"

    @property
    def cache_dir(self) -> Path:
        return self.cache_root or self.data_dir / "cache"
