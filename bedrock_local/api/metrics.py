"""GET /metrics: what the API process exposes to Prometheus, in its text exposition format.

Two sources:
- this process's own requests, recorded by BedrockApi once the answer is sent: a counter by operation
  and HTTP status and a latency histogram by operation (time from the request's arrival to its
  response being ready; for a streamed response, to its first byte). They count what this process
  answered, from its start.
- the database, read when Prometheus scrapes: resources by type and status (batch, customization,
  distillation, copy, model import and evaluation jobs; custom and imported models, deployments,
  provisioned throughputs), and the work the job workers did (batch records by outcome,
  batch tokens, training steps). Workers are separate processes, often on other machines, and a
  process's counters die with it; the job rows are where every worker already writes its progress, so
  these figures are sums over the rows: the same on every API node of one database, and they survive
  restarts. Batch and customization jobs are never deleted, so the sums only grow (a job taken over
  after a crash resumes from its checkpoint, whose counts the row holds, so nothing is counted twice).
"""

from bisect import bisect_left

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select

from bedrock_local.store.database import Database
from bedrock_local.store.schema import Job, Resource

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# resource kinds (store/schema.py `kind`) and the names the metrics give them
JOB_TYPES = {"model-invocation-job": "batch", "model-customization-job": "customization", "model-copy-job": "copy",
             "model-import-job": "import", "evaluation-job": "evaluation"}
# a customization job of this customizationType is counted as its own type
CUSTOMIZATION_TYPES = {"DISTILLATION": "distillation"}
OTHER_KINDS = {"custom-model": "bedrock_local_custom_models", "custom-model-deployment": "bedrock_local_deployments",
               "imported-model": "bedrock_local_imported_models",
               "provisioned-model-throughput": "bedrock_local_provisioned_throughputs"}
STATUSLESS = {"imported-model"}  # AWS gives an imported model no status: counted without the label
BATCH_QUEUE_KIND = "batch-inference"  # jobs.kind of a batch job's queue row (its checkpoint holds the token counts)

# A Get answers in a fraction of a millisecond, an import or a stream takes seconds: buckets for both.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


class RequestMetrics:
    """This process's requests by operation and HTTP status (a count, a latency sum and latency buckets
    for each pair), and the /metrics page.

    `observe` runs on the event loop thread for every request, so it is a dict lookup and two
    additions (about half a microsecond); prometheus_client's Counter and Histogram take a lock per
    increment and bucket (about 6 microseconds per request, measured, three percent of a Get). The
    figures become metric families at scrape time instead."""

    def __init__(self, db: Database):
        self._series: dict[tuple[str, int], list] = {}  # (operation, status) -> [count, sum, bucket counts...]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.registry.register(StoreCollector(db))
        ProcessCollector(registry=self.registry)  # this process's CPU, memory and open files

    def observe(self, operation: str, status: int, seconds: float) -> None:
        """Count one answered request (from the event loop thread: no lock)."""
        series = self._series.get((operation, status))
        if series is None:
            series = self._series[(operation, status)] = [0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        series[0] += 1
        series[1] += seconds
        series[2 + bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds: its `le` bucket

    def collect(self):
        requests = CounterMetricFamily("bedrock_local_requests", "API requests answered by this process, by "
                                       "operation and HTTP status", labels=["operation", "status"])
        latency = HistogramMetricFamily("bedrock_local_request_duration_seconds", "Time from a request's arrival "
                                        "to its response being ready, by operation", labels=["operation"])
        by_operation: dict[str, list] = {}
        for (operation, status), series in sorted(self._series.items()):
            series = list(series)  # a copy: the event loop may count on while this thread reads
            requests.add_metric([operation, str(status)], series[0])
            total = by_operation.setdefault(operation, [0.0] * len(series))
            for index, value in enumerate(series):
                total[index] += value
        for operation, total in by_operation.items():
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), total[2:]):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([operation], buckets, total[1])
        yield requests
        yield latency

    def exposition(self) -> bytes:
        """The text page (reads the database: call it off the event loop)."""
        return generate_latest(self.registry)


class StoreCollector:
    """Figures read from the database at each scrape: a few GROUP BY / SUM queries over `resources`
    and `jobs` (one scan of the job rows: cheap next to a scrape interval, even with many thousands)."""

    def __init__(self, db: Database):
        self.db = db

    def collect(self):
        kinds = list(JOB_TYPES) + list(OTHER_KINDS)
        with self.db.read_session() as session:
            customization = Resource.body["customizationType"].as_string()
            by_status = session.execute(select(Resource.kind, Resource.status, customization, func.count())
                                        .where(Resource.kind.in_(kinds))
                                        .group_by(Resource.kind, Resource.status, customization)).all()
            records = session.execute(select(*[func.coalesce(func.sum(Resource.body[name].as_integer()), 0)
                                               for name in ("processedRecordCount", "successRecordCount",
                                                            "errorRecordCount")])
                                      .where(Resource.kind == "model-invocation-job")).one()
            tokens = session.execute(select(*[func.coalesce(func.sum(Job.checkpoint[("counts", name)].as_integer()), 0)
                                              for name in ("inputTokenCount", "outputTokenCount")])
                                     .where(Job.kind == BATCH_QUEUE_KIND)).one()
            steps = session.execute(select(func.coalesce(func.sum(Resource.body[("_progress", "step")].as_integer()), 0))
                                    .where(Resource.kind == "model-customization-job")).scalar_one()

        jobs = GaugeMetricFamily("bedrock_local_jobs", "Jobs in the database by type (batch, customization, "
                                 "distillation, copy, import, evaluation) and status", labels=["type", "status"])
        others = {kind: GaugeMetricFamily(name, f"{kind.replace('-', ' ').capitalize()}s in the database"
                                          + ("" if kind in STATUSLESS else " by status"),
                                          labels=[] if kind in STATUSLESS else ["status"])
                  for kind, name in OTHER_KINDS.items()}
        counts: dict[tuple[str, str, str], int] = {}
        for kind, status, customization_type, count in by_status:
            if kind in JOB_TYPES:
                job_type = JOB_TYPES[kind]
                if kind == "model-customization-job":
                    job_type = CUSTOMIZATION_TYPES.get(customization_type or "", job_type)
                key = ("job", job_type, status or "")
            else:
                key = (kind, "", status or "")
            counts[key] = counts.get(key, 0) + count  # rows of other customization types share one series
        for (kind, job_type, status), count in sorted(counts.items()):
            if kind == "job":
                jobs.add_metric([job_type, status], count)
            else:
                others[kind].add_metric([] if kind in STATUSLESS else [status], count)
        yield jobs
        yield from others.values()

        processed = CounterMetricFamily("bedrock_local_batch_records_processed", "Records batch inference jobs "
                                        "have processed (the sum of their processedRecordCount)")
        processed.add_metric([], int(records[0]))
        yield processed
        outcomes = CounterMetricFamily("bedrock_local_batch_records", "Records batch inference jobs have "
                                       "processed, by outcome (a model output or an error line)", labels=["outcome"])
        outcomes.add_metric(["success"], int(records[1]))
        outcomes.add_metric(["error"], int(records[2]))
        yield outcomes
        token_counts = CounterMetricFamily("bedrock_local_batch_tokens", "Tokens of the records batch inference "
                                           "jobs have processed, as their manifests count them", labels=["direction"])
        token_counts.add_metric(["input"], int(tokens[0]))
        token_counts.add_metric(["output"], int(tokens[1]))
        yield token_counts
        training = CounterMetricFamily("bedrock_local_training_steps", "Optimizer steps customization jobs have "
                                       "trained (the last step each job reported)")
        training.add_metric([], int(steps))
        yield training
