"""`bedrock-local watch`: follow one job until it ends, with a progress bar, and exit with a code
that says how it ended.

The job is named by its ARN (its kind and region are read from it), or by its id or name, which
are tried as a batch job, a customization job, a copy job, a model import job and an evaluation
job in the client's region. Progress is what the job's Get answers: a batch job's
processedRecordCount of totalRecordCount; a customization job's phases (statusDetails: validation,
data processing, training; a distillation's data processing is its teacher answering) and its
latest trainingLoss (the API exposes no step count); copy, import and evaluation jobs have no
measure (an indeterminate bar).

Exit codes: 0 Completed; 1 Failed; 2 Stopped, Expired or PartiallyCompleted (ended before all of
its work was done, without failing); 3 the job could not be watched (not found, server unreachable);
130 interrupted (Ctrl-C stops the watching, not the job).
"""

import argparse
import re
import time

from botocore.exceptions import BotoCoreError, ClientError
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from bedrock_local.console_cli.common import CliError, Clients, as_cli_error, console, when
from bedrock_local.console_cli.jobs import (JOB_TYPES, PHASES, customization_progress, evaluation_scores,
                                            fits_filter, styled_status)

EXIT_CODES = {"Completed": 0, "Failed": 1, "Stopped": 2, "Expired": 2, "PartiallyCompleted": 2}
CANNOT_WATCH = 3
_ARN = re.compile(r"arn:aws[^:]*:bedrock:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                  r"(?P<kind>model-invocation-job|model-customization-job|model-copy-job|model-import-job|"
                  r"evaluation-job)/.+")
_KIND_TYPES = {"model-invocation-job": "batch", "model-customization-job": "customization", "model-copy-job": "copy",
               "model-import-job": "import", "evaluation-job": "evaluation"}
_JOB_ID = re.compile(r"[a-z0-9]{12}")


def register(commands, add_client_flags) -> None:
    parser = commands.add_parser(
        "watch", help="follow a job until it ends (exit 0 Completed, 1 Failed, 2 Stopped/Expired/PartiallyCompleted)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_flags(parser)
    parser.add_argument("job", help="the job's ARN, or its id or name (looked up in --region)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two Gets (default 1)")
    parser.set_defaults(run=run)


def run(args) -> int:
    clients = Clients(args)
    try:
        job_type, region, arn = resolve(clients, args.job)
    except CliError as exc:
        exc.exit_code = CANNOT_WATCH
        raise
    return follow(clients, job_type, region, arn, args.interval, console())[0]


def follow(clients: Clients, kind: str, region: str, arn: str, interval: float, out) -> tuple[int, dict]:
    """Poll the job's Get until it ends, showing its progress; answers the exit code and the last Get."""
    client = clients.client("bedrock", region)
    job_type = JOB_TYPES[kind]

    def get() -> dict:
        try:
            return getattr(client, job_type.get_operation)(**{job_type.get_parameter: arn})
        except (ClientError, BotoCoreError) as exc:
            error = as_cli_error(f"{job_type.get_operation} {arn}", exc)
            error.exit_code = CANNOT_WATCH
            raise error

    job = get()
    name = job.get(job_type.name_member) or arn.rsplit("/", 1)[-1]
    out.print(f"Watching {kind} job [bold]{name}[/] ({arn})")
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if kind == "batch":
        columns += [MofNCompleteColumn(), TextColumn("records"), TaskProgressColumn(), RateColumn("records"),
                    TimeRemainingColumn(), TimeElapsedColumn()]
    elif kind == "customization":
        columns += [MofNCompleteColumn(), TextColumn("phases"), TimeElapsedColumn()]
    else:
        columns += [TimeElapsedColumn()]
    try:
        with Progress(*columns, console=out) as progress:
            task = progress.add_task(name, total=None)
            while True:
                _show(progress, task, kind, job)
                if job["status"] in EXIT_CODES:
                    break
                time.sleep(interval)
                job = get()
    except KeyboardInterrupt:
        out.print(f"Stopped watching; the job goes on ({job.get('status')}). "
                  f"`bedrock-local watch {arn}` follows it again.")
        return 130, job
    _print_outcome(out, kind, job)
    if kind == "evaluation" and job["status"] == "Completed":
        out.print(f"Scores: {evaluation_scores(clients, arn, region)}")
    return EXIT_CODES[job["status"]], job


class RateColumn(ProgressColumn):
    """Units per second, from rich's own estimate over the last updates."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


def _show(progress: Progress, task, kind: str, job: dict) -> None:
    status = job["status"]
    if kind == "batch":
        total = job.get("totalRecordCount")
        progress.update(task, total=total, completed=job.get("processedRecordCount") or 0,
                        description=f"{status:<12}")
    elif kind == "customization":
        details = job.get("statusDetails") or {}
        done = sum(1 for key, _ in PHASES if (details.get(key) or {}).get("status") == "Completed")
        text = customization_progress(job)
        progress.update(task, total=len(PHASES), completed=done,
                        description=f"{status:<12} {text}" if text else status)
    else:
        progress.update(task, total=1 if status in EXIT_CODES else None, completed=1 if status in EXIT_CODES else 0,
                        description=status)


def _print_outcome(out, kind: str, job: dict) -> None:
    status = job["status"]
    out.print(f"{kind.capitalize()} job {styled_status(status)}"
              + (f" at {when(job.get('endTime'))} UTC" if job.get("endTime") else "") + ".")
    message = job.get("message") or job.get("failureMessage")
    if message:
        out.print(f"Message: {message}")
    if kind == "batch":
        processed = job.get("processedRecordCount") or 0
        out.print(f"Records: {processed} processed of {job.get('totalRecordCount') or 0} "
                  f"({job.get('successRecordCount') or 0} succeeded, {job.get('errorRecordCount') or 0} errors)")
        if job.get("endTime") and job.get("submitTime"):
            seconds = (job["endTime"] - job["submitTime"]).total_seconds()
            rate = processed / seconds if seconds > 0 else 0
            rate = f", {rate:.1f} records/s" if rate >= 1 else f", {rate * 60:.1f} records/min" if processed else ""
            out.print(f"Took {seconds:.1f} s from submission{rate}")
        uri = job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"].rstrip("/")
        folder = f"{uri}/{job['jobArn'].rsplit('/', 1)[-1]}/"
        out.print(f"Outputs: {folder}<input file>.out, manifest {folder}manifest.json.out")
    elif kind == "customization":
        loss = (job.get("trainingMetrics") or {}).get("trainingLoss")
        if loss is not None:
            out.print(f"Training loss: {loss:.4g}")
        if job.get("outputModelArn"):
            out.print(f"Custom model: {job['outputModelArn']}")
        out.print(f"Outputs: {job['outputDataConfig']['s3Uri']}")
    elif kind == "copy":
        if status == "Completed":
            out.print(f"Custom model: {job['targetModelArn']}")
    elif kind == "import":
        if status == "Completed":
            out.print(f"Imported model: {job['importedModelArn']}")
    elif kind == "evaluation":
        for message in job.get("failureMessages") or []:
            out.print(f"Message: {message}")
        out.print(f"Results: {job['outputDataConfig']['s3Uri']}")


def resolve(clients: Clients, identifier: str) -> tuple[str, str, str]:
    """(job type, region, ARN) of the job an ARN, id or name names."""
    match = _ARN.fullmatch(identifier)
    if match:
        return _KIND_TYPES[match["kind"]], match["region"], identifier
    if identifier.startswith("arn:"):
        raise CliError(f"'{identifier}' is not the ARN of a batch inference, customization, model copy, model import "
                       f"or evaluation job.")
    client = clients.bedrock
    found = []
    if _JOB_ID.fullmatch(identifier):  # an id: a batch job takes it as is
        try:
            found.append(("batch", client.get_model_invocation_job(jobIdentifier=identifier)["jobArn"]))
        except ClientError as exc:
            _unless_not_found(exc)
        except BotoCoreError as exc:
            raise as_cli_error("GetModelInvocationJob", exc)
    try:  # a customization job takes an id or a name
        found.append(("customization", client.get_model_customization_job(jobIdentifier=identifier)["jobArn"]))
    except ClientError as exc:
        _unless_not_found(exc)
    except BotoCoreError as exc:
        raise as_cli_error("GetModelCustomizationJob", exc)
    for summary in _all(client, "list_model_invocation_jobs", "invocationJobSummaries", nameContains=identifier):
        if summary["jobName"] == identifier:
            found.append(("batch", summary["jobArn"]))
            break  # the newest of that name (names of ended jobs may be used again)
    if _JOB_ID.fullmatch(identifier):  # a copy job has only its ARN: find the one with this id
        for summary in _all(client, "list_model_copy_jobs", "modelCopyJobSummaries"):
            if summary["jobArn"].endswith("/" + identifier):
                found.append(("copy", summary["jobArn"]))
    for kind, operation, key in (("import", "list_model_import_jobs", "modelImportJobSummaries"),
                                 ("evaluation", "list_evaluation_jobs", "jobSummaries")):
        if _JOB_ID.fullmatch(identifier):  # an id is not a name: every job is read to find the one it ends
            params = {}
        elif fits_filter(clients, JOB_TYPES[kind], identifier):
            params = {"nameContains": identifier}
        else:
            continue  # not a name this type's jobs can have
        for summary in _all(client, operation, key, **params):
            if summary["jobName"] == identifier or summary["jobArn"].endswith("/" + identifier):
                found.append((kind, summary["jobArn"]))
                break
    found = list(dict.fromkeys(found))
    if not found:
        raise CliError(f"No batch inference, customization, copy, import or evaluation job has the id or name "
                       f"'{identifier}' in {clients.region}.")
    if len(found) > 1:
        raise CliError(f"'{identifier}' names several jobs: {', '.join(arn for _, arn in found)}; pass an ARN.")
    return found[0][0], clients.region, found[0][1]


def _all(client, operation: str, key: str, **params) -> list[dict]:
    try:
        return [item for page in client.get_paginator(operation).paginate(**params) for item in page.get(key, [])]
    except (ClientError, BotoCoreError) as exc:
        raise as_cli_error(operation, exc)


def _unless_not_found(exc: ClientError) -> None:
    if exc.response.get("Error", {}).get("Code") not in ("ResourceNotFoundException", "ValidationException"):
        raise as_cli_error("Get", exc)
