"""`bedrock-local jobs`: batch inference, customization (distillation included), model copy, model
import and evaluation jobs in one table, through their List operations, with their filters."""

import re
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError
from rich.table import Table

from bedrock_local.console_cli.common import CliError, Clients, as_cli_error, console, print_json, when


@dataclass(frozen=True)
class JobType:
    name: str            # as the CLI calls it: batch, customization, copy
    list_operation: str  # boto3 method
    summaries: str       # the List output's member
    status_shape: str    # the status enum in the service model
    name_filter: str     # the List filter that matches --name
    name_member: str     # the summary member shown as the job's name
    created_member: str
    get_operation: str
    get_parameter: str


JOB_TYPES = {
    "batch": JobType("batch", "list_model_invocation_jobs", "invocationJobSummaries", "ModelInvocationJobStatus",
                     "nameContains", "jobName", "submitTime", "get_model_invocation_job", "jobIdentifier"),
    "customization": JobType("customization", "list_model_customization_jobs", "modelCustomizationJobSummaries",
                             "ModelCustomizationJobStatus", "nameContains", "jobName", "creationTime",
                             "get_model_customization_job", "jobIdentifier"),
    # a copy job has no name of its own: it is shown, and --name matches, by the name of the model it makes
    "copy": JobType("copy", "list_model_copy_jobs", "modelCopyJobSummaries", "ModelCopyJobStatus",
                    "targetModelNameContains", "targetModelName", "creationTime", "get_model_copy_job", "jobArn"),
    "import": JobType("import", "list_model_import_jobs", "modelImportJobSummaries", "ModelImportJobStatus",
                      "nameContains", "jobName", "creationTime", "get_model_import_job", "jobIdentifier"),
    "evaluation": JobType("evaluation", "list_evaluation_jobs", "jobSummaries", "EvaluationJobStatus",
                          "nameContains", "jobName", "creationTime", "get_evaluation_job", "jobIdentifier"),
}
PHASES = (("validationDetails", "validation"), ("dataProcessingDetails", "data processing"),
          ("trainingDetails", "training"))
MOST_DETAILED = 20  # customization jobs in progress (phase and loss) and evaluation jobs (scores) read one by one


def statuses(clients: Clients, job_type: JobType) -> list[str]:
    """The statuses a job type has, from the service model (the enum its List filter takes)."""
    return list(clients.bedrock.meta.service_model.shape_for(job_type.status_shape).enum)


def register(commands, add_client_flags) -> None:
    parser = commands.add_parser("jobs", help="list batch, customization, copy, import and evaluation jobs of a "
                                              "running server",
                                 description="List batch inference, customization (distillation included), model "
                                             "copy, model import and evaluation jobs (newest first) of a running "
                                             "bedrock-local server, in one table.")
    add_client_flags(parser)
    parser.add_argument("--type", action="append", choices=sorted(JOB_TYPES), dest="types",
                        help="only this kind of job (repeatable; default: all)")
    parser.add_argument("--status", help="only jobs in this status, e.g. InProgress, Completed, Failed (types that "
                                         "have no such status are left out)")
    parser.add_argument("--name", help="only jobs whose name contains this (copy jobs: their target model's name)")
    parser.add_argument("--limit", type=int, default=100, help="most jobs of each type to list, newest first (default 100)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.set_defaults(run=run)


def run(args) -> int:
    clients = Clients(args)
    rows = list_jobs(clients, args.types or list(JOB_TYPES), args.status, args.name, args.limit)
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"Jobs in {clients.region} at {clients.endpoint_url}")
    for column in ("type", "name", "status", "progress", "created (UTC)", "ended (UTC)"):
        table.add_column(column, no_wrap=column != "progress")
    table.add_column("ARN", overflow="fold")
    for row in rows:
        table.add_row(row["type"], row["name"], styled_status(row["status"]), row["progress"], when(row["created"]),
                      when(row["ended"]), row["arn"])
    out = console()
    if rows:
        out.print(table)
    else:
        out.print("No jobs match." if (args.status or args.name or args.types) else "No jobs yet.")
    return 0


def list_jobs(clients: Clients, types: list[str], status: str | None, name: str | None, limit: int) -> list[dict]:
    rows = []
    wanted = [JOB_TYPES[t] for t in dict.fromkeys(types)]
    matched_status = False
    for job_type in wanted:
        params = {}
        if status:
            known = {s.lower(): s for s in statuses(clients, job_type)}
            if status.lower() not in known:
                continue
            params["statusEquals"] = known[status.lower()]
            matched_status = True
        local_name = None
        if name and fits_filter(clients, job_type, name):
            params[job_type.name_filter] = name
        elif name:
            # e.g. "nightly-" is a fine part of a name but not a valid ListEvaluationJobs nameContains
            # (its pattern ends a name with a letter or digit): that type is filtered here instead
            local_name = name
        found = [summary_row(clients, job_type, summary) for summary in _list(clients, job_type, limit, params)]
        rows += [row for row in found if local_name is None or local_name in row["name"]]
    if status and not matched_status:
        every = sorted({s for t in wanted for s in statuses(clients, t)})
        raise CliError(f"No job type of {', '.join(t.name for t in wanted)} has the status '{status}'; "
                       f"statuses: {', '.join(every)}.")
    _add_phases(clients, rows)
    rows.sort(key=lambda row: row["created"], reverse=True)
    return rows


def fits_filter(clients: Clients, job_type: JobType, name: str) -> bool:
    """Whether `name` is a value the List's name filter takes (its length and pattern in the service model)."""
    operation = clients.bedrock.meta.service_model.operation_model(
        "".join(part.capitalize() for part in job_type.list_operation.split("_")))
    rules = operation.input_shape.members[job_type.name_filter].metadata
    return (rules.get("min", 0) <= len(name) <= rules.get("max", len(name))
            and ("pattern" not in rules or re.fullmatch(rules["pattern"], name) is not None))


def _list(clients: Clients, job_type: JobType, limit: int, params: dict) -> list[dict]:
    client = clients.bedrock
    items = []
    try:
        pages = client.get_paginator(job_type.list_operation).paginate(
            sortBy="CreationTime", sortOrder="Descending", PaginationConfig={"MaxItems": limit, "PageSize": min(limit, 100)},
            **params)
        for page in pages:
            items.extend(page.get(job_type.summaries, []))
    except (ClientError, BotoCoreError) as exc:
        raise as_cli_error(job_type.list_operation, exc)
    return items[:limit]


def summary_row(clients: Clients, job_type: JobType, summary: dict) -> dict:
    # a distillation is a customization job of its own type: shown by that name
    shown = "distillation" if summary.get("customizationType") == "DISTILLATION" else job_type.name
    return {"type": shown, "name": summary.get(job_type.name_member) or "", "status": summary.get("status"),
            "progress": batch_progress(summary) if job_type.name == "batch" else "",
            "created": summary.get(job_type.created_member), "ended": summary.get("endTime"),
            "arn": summary["jobArn"]}


def batch_progress(job: dict) -> str:
    total, done = job.get("totalRecordCount"), job.get("processedRecordCount")
    if total is None:
        return ""
    text = f"{done or 0}/{total} records"
    if job.get("errorRecordCount"):
        text += f", {job['errorRecordCount']} errors"
    return text


def customization_progress(job: dict) -> str:
    """The phase a customization job is in (statusDetails) and its latest training loss."""
    details = job.get("statusDetails") or {}
    current = next((label for key, label in PHASES if (details.get(key) or {}).get("status") == "InProgress"), None)
    done = sum(1 for key, _ in PHASES if (details.get(key) or {}).get("status") == "Completed")
    text = current or (f"{done}/{len(PHASES)} phases" if details else "")
    loss = (job.get("trainingMetrics") or {}).get("trainingLoss")
    if loss is not None:
        text += f"{', ' if text else ''}loss {loss:.4g}"
    return text


def evaluation_scores(clients: Clients, arn: str, region: str | None = None) -> str:
    """A completed evaluation job's aggregate scores ("Accuracy 0.962, Robustness 0.041"), read from the
    server's console route (the Bedrock API keeps them only in the output files)."""
    answer = clients.signed_get("/console/api/evaluation-scores", {"job": arn}, region)
    return ", ".join(f"{m['metricName']} {m['value']:.3g}" if m.get("value") is not None else f"{m['metricName']} -"
                     for m in answer.get("metrics", [])) or answer.get("error", "")


def _add_phases(clients: Clients, rows: list[dict]) -> None:
    """List summaries of customization jobs carry no phases (a Get for each job still running), and
    those of evaluation jobs no scores (read for each completed one)."""
    running = [row for row in rows if row["type"] in ("customization", "distillation")
               and row["status"] in ("InProgress", "Stopping")]
    for row in running[:MOST_DETAILED]:
        try:
            row["progress"] = customization_progress(clients.bedrock.get_model_customization_job(jobIdentifier=row["arn"]))
        except (ClientError, BotoCoreError):
            pass  # it may be gone or unreachable since the List; the row keeps its status
    completed = [row for row in rows if row["type"] == "evaluation" and row["status"] == "Completed"]
    for row in completed[:MOST_DETAILED]:
        try:
            row["progress"] = evaluation_scores(clients, row["arn"])
        except CliError as exc:
            row["progress"] = str(exc)


def styled_status(status: str | None) -> str:
    style = {"Completed": "green", "Failed": "red", "Stopped": "yellow", "Stopping": "yellow", "Expired": "yellow",
             "PartiallyCompleted": "yellow", "InProgress": "cyan"}.get(status or "")
    return f"[{style}]{status}[/]" if style else (status or "")
