"""Service quotas: the one list of the quotas bedrock-local enforces, each under the name AWS gives
it in Service Quotas, with AWS's default and the key that `serve --quota KEY=VALUE` sets, and the
checks a job makes on its input while it validates it (sizes, record counts). Beside settings.py
because every layer reads it: the Create operations check the concurrency quotas
(service/quotas.py), the jobs check their input (jobs/handlers/batch_inference.py, jobs/handlers/customization.py).

Where AWS puts a quota, bedrock-local puts it:
- concurrency and resource counts are checked by the Create operation, which answers
  ServiceQuotaExceededException (HTTP 400 in the botocore model) naming the quota and its value;
- input sizes and record counts are only known once a job reads its input, so the job fails its
  validation with a message naming the quota (a batch job ends Failed, a customization job Failed).
"""

import re
from dataclasses import dataclass

from bedrock_local.settings import Settings

GB = 1_000_000_000


@dataclass(frozen=True)
class Quota:
    key: str                    # what `--quota KEY=VALUE` sets
    name: str                   # as AWS names it in Service Quotas (per-model ones end "for <model>" there)
    default: int                # AWS's default
    unit: str = ""              # "bytes" for sizes; otherwise a count of `unit` ("jobs", "records", ...)
    setting: str | None = None  # a Settings field that holds the value (older flags), instead of Settings.quotas
    minimum: bool = False       # a least number rather than a most ("unlimited" is 0)
    local_default: int | None = None  # where bedrock-local's default differs from AWS's (said in the README)


QUOTAS: dict[str, Quota] = {q.key: q for q in (
    # checked by the Create operations: ServiceQuotaExceededException
    Quota("batch-jobs-per-base-model", "Sum of in-progress and submitted batch inference jobs using a base model",
          20, "jobs"),
    Quota("batch-jobs-per-custom-model",
          "Sum of in-progress and submitted batch inference jobs using a custom model", 3, "jobs"),
    Quota("customization-jobs", "Scheduled customization jobs", 2, "jobs"),
    Quota("model-import-jobs", "Concurrent model import jobs", 1, "jobs"),
    Quota("custom-models", "Custom models per account", 100, "models"),
    Quota("imported-models", "Imported models per account", 3, "models"),
    Quota("in-progress-deployments", "In-progress custom model deployments", 2, "deployments"),
    Quota("deployments", "Total custom model deployments", 10, "deployments"),
    Quota("evaluation-jobs", "Number of concurrent automatic model evaluation jobs", 20, "jobs"),
    # model units held by the Provisioned Throughputs of an account (service/provisioned_throughput.py)
    Quota("provisioned-units-base-models", "Model units no-commitment Provisioned Throughputs across base models",
          2, "model units"),
    Quota("provisioned-units-custom-models",
          "Model units no-commitment Provisioned Throughputs across custom models", 2, "model units"),
    # checked while a job validates its input: the job fails
    Quota("batch-input-file-size", "Batch inference input file size (in GB)", 1 * GB, "bytes"),
    Quota("batch-job-size", "Batch inference job size (in GB)", 5 * GB, "bytes"),
    Quota("batch-records-per-job", "Records per batch inference job", 50_000, "records", "batch_max_records"),
    Quota("batch-records-per-file", "Records per input file per batch inference job", 50_000, "records",
          "batch_max_records_per_file"),
    Quota("batch-min-records", "Minimum number of records per batch inference job", 100, "records",
          "batch_min_records", minimum=True, local_default=1),
    Quota("fine-tuning-records", "Sum of training and validation records for a fine-tuning job", 10_000, "records"),
    Quota("continued-pre-training-records",
          "Sum of training and validation records for a continued pre-training job", 100_000, "records"),
)}

UNLIMITED = ("unlimited", "none", "off")
_SIZE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[kmgt]?i?b?)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class QuotaSettingError(ValueError):
    pass


def parse_quota_flags(flags: list[str]) -> tuple[dict[str, int | None], dict[str, int]]:
    """`--quota KEY=VALUE` flags, in order (a later one wins), into (Settings.quotas, fields of Settings).
    VALUE is a whole number, a size for the byte quotas (`500MB`, `2GiB`), `unlimited`, or `default`
    (AWS's). KEY `all` sets every quota but the three batch record quotas, which also have flags of
    their own (--batch-max-records, ...)."""
    quotas: dict[str, int | None] = {}
    fields: dict[str, int] = {}
    for flag in flags:
        key, sep, raw = flag.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise QuotaSettingError(f"--quota {flag!r}: expected KEY=VALUE, e.g. --quota customization-jobs=4")
        if key == "all":
            targets = [q for q in QUOTAS.values() if not q.setting]  # the record quotas keep their own flags
        elif key in QUOTAS:
            targets = [QUOTAS[key]]
        else:
            raise QuotaSettingError(f"--quota {flag!r}: unknown quota '{key}'; known: all, {', '.join(QUOTAS)}")
        for quota in targets:
            value = _parse_value(quota, raw, flag)
            if quota.setting:
                fields[quota.setting] = value if value is not None else (0 if quota.minimum else 2**62)
            else:
                quotas[quota.key] = value
    return quotas, fields


def _parse_value(quota: Quota, raw: str, flag: str) -> int | None:
    lowered = raw.lower()
    if lowered in UNLIMITED:
        return None
    if lowered == "default":
        return quota.default if quota.local_default is None else quota.local_default
    found = _SIZE.fullmatch(raw)
    unit = (found.group("unit") or "").lower() if found else ""
    if found is None or (unit and quota.unit != "bytes") or unit not in _SIZE_UNITS:
        raise QuotaSettingError(f"--quota {flag!r}: '{raw}' is not a "
                                f"{'size (e.g. 500MB, 1GB)' if quota.unit == 'bytes' else 'whole number'}, "
                                f"'default' or 'unlimited'")
    value = float(found.group("number")) * _SIZE_UNITS[unit]
    if value != int(value) or value < 0:
        raise QuotaSettingError(f"--quota {flag!r}: '{raw}' is not a whole, non-negative number")
    return int(value)


def limit(settings: Settings, key: str) -> int | None:
    """The value in force (None: unlimited)."""
    quota = QUOTAS[key]
    if quota.setting:
        return getattr(settings, quota.setting)
    overrides = settings.quotas or {}
    return overrides[key] if key in overrides else quota.default


def amount(quota: Quota, value: int) -> str:
    if quota.unit != "bytes":
        return f"{value:,}"
    for size, unit in ((GB, "GB"), (10**6, "MB"), (10**3, "KB")):
        if value >= size and value % (size // 1000 or 1) == 0:
            return f"{value / size:g} {unit} ({value:,} bytes)"
    return f"{value:,} bytes"


def describe(key: str, value: int, model: str | None = None) -> str:
    """"'<AWS's name>[ for <model>]' of <value>": how every message names a quota."""
    quota = QUOTAS[key]
    return f"'{quota.name}{f' for {model}' if model else ''}' of {amount(quota, value)}"


# ---- sizes and records, while a job validates its input ------------------------------------------

class QuotaExceeded(Exception):
    """A job's input is past a quota; the job fails with this message."""


def check_input_sizes(settings: Settings, files: list[tuple[str, int]], per_file: str, total: str) -> None:
    """`files`: (URI, size in bytes) of each input file of a job."""
    largest = limit(settings, per_file)
    if largest is not None:
        for uri, size in files:
            if size > largest:
                raise QuotaExceeded(f"The input file {uri} is {size:,} bytes, past the quota "
                                    f"{describe(per_file, largest)}.")
    most = limit(settings, total)
    size = sum(size for _, size in files)
    if most is not None and size > most:
        raise QuotaExceeded(f"The input files of the job total {size:,} bytes, past the quota "
                            f"{describe(total, most)}.")


def check_records(settings: Settings, key: str, count: int, what: str) -> None:
    most = limit(settings, key)
    if most is not None and count > most:
        raise QuotaExceeded(f"{what} has {count:,} records, past the quota {describe(key, most)}.")
