"""The automated model evaluation job behind CreateEvaluationJob (service/evaluation_jobs.py).

For each dataset of the job (JSON lines of prompt, referenceResponse, category; or with modelResponses
when the job names a precomputedInferenceSource): the model answers every prompt through the batch
engine (the RecordRunner of jobs/handlers/batch_inference.py, Converse bodies, with the job's
inferenceParams), and again each perturbed prompt for Builtin.Robustness; the metrics of
engine/evaluation.py score the answers; an evaluator model answers the judging prompt of each
model-as-judge metric. Work goes a chunk of records at a time: each chunk's scored lines are written
to a part object in the model bucket and the checkpoint records how far each dataset got, so a Stop
takes effect at the next chunk and a job taken over after a crash resumes there.

Once every dataset is scored, the lines land where AWS puts them:
`<output>/<job name>/<job id>/models/<model id>/taskTypes/<task type>/datasets/<dataset>/<uuid>_output.jsonl`
(one line per record: automatedEvaluationResult.scores, inputRecord, modelResponses), beside it
`<uuid>_summary.json`, the aggregate of each metric (mean over the records that got a response) and
per category, and the job's Get keeps that aggregate too (its private `results`).
"""

import io
import json
import logging
import uuid

from bedrock_local.engine.catalog import find_foundation_model
from bedrock_local.jobs.handlers.batch_inference import RecordRunner, model_cache
from bedrock_local.jobs.lifecycle import move
from bedrock_local.jobs.model_sources import ModelSource, foundation_source, load_engine
from bedrock_local.jobs.protocol import Handler, JobContext, JobStopped
from bedrock_local.storage import S3Location, StorageError
from bedrock_local.store.schema import Resource

log = logging.getLogger("bedrock_local.evaluation")

MAX_PROMPTS = 1000  # AWS: up to 1000 prompts in the datasets of one evaluation job
CHUNK_RECORDS = 16
DEFAULT_MAX_TOKENS = 256
SCORER_MODEL = "sentence-transformers.all-minilm-l6-v2-v1:0"  # the BERTScore encoder (docs/evaluation.md)
NAMESPACE = uuid.UUID("6f1c7c0e-6a59-4d1e-9a55-8d6f3c0b2a11")


class EvaluationFailed(Exception):
    pass


def model_path_id(identifier: str) -> str:
    """The model-id folder of the output layout: a model id as given, an ARN's last part."""
    return identifier.rsplit("/", 1)[-1] if identifier.startswith("arn:") else identifier


def response_text(output: dict) -> str:
    content = (output.get("output") or {}).get("message", {}).get("content") or []
    return "".join(block.get("text", "") for block in content)


class EvaluationHandler(Handler):
    kind = "evaluation"

    def run(self, ctx: JobContext) -> None:
        from bedrock_local.engine import evaluation as metrics

        with ctx.db.read_session() as session:
            job = ctx.resource(session)
            body, job_name, job_id = dict(job.body), job.name, job.resource_id
        work = _Work(ctx, body, job_id, metrics)
        configs = body["evaluationConfig"]["automated"]["datasetMetricConfigs"]
        datasets = [work.read_dataset(index, config) for index, config in enumerate(configs)]
        total = sum(len(records) for records in datasets)
        if total > MAX_PROMPTS:
            raise EvaluationFailed(f"The datasets of the job hold {total} prompts; an evaluation job takes at most "
                                   f"{MAX_PROMPTS}.")
        done: dict[str, int] = dict(ctx.checkpoint.get("done", {}))
        for index, (config, records) in enumerate(zip(configs, datasets)):
            for start in range(done.get(str(index), 0), len(records), CHUNK_RECORDS):
                ctx.check()
                lines = work.score(config, records[start:start + CHUNK_RECORDS], index, start)
                ctx.objects.put_bytes(work.part(index, start), "".join(json.dumps(line) + "\n" for line in lines)
                                      .encode())
                done[str(index)] = start + len(lines)
                ctx.progress = {"recordsEvaluated": sum(done.values()), "recordsTotal": total}
                ctx.save_checkpoint({"done": done})
        ctx.check()
        output = S3Location.parse(body["outputDataConfig"]["s3Uri"].rstrip("/") + "/")
        model_id = work.model_identifier
        every_line = [work.read_parts(index) for index in range(len(configs))]
        if total and not any(line["modelResponses"] for lines in every_line for line in lines):
            # nothing to score: the model failed on every prompt, which a user must hear as a failure
            raise EvaluationFailed(f"The model {model_id} answered none of the {total} prompts"
                                   + (f": {work.first_error}" if work.first_error else "."))
        results = []
        for index, (config, lines) in enumerate(zip(configs, every_line)):
            folder = output.join(job_name, job_id, "models", model_path_id(model_id), "taskTypes", config["taskType"],
                                 "datasets", config["dataset"]["name"])
            name = str(uuid.uuid5(NAMESPACE, f"{job_id}/{index}"))
            ctx.objects.put_bytes(folder.join(f"{name}_output.jsonl"),
                                  "".join(json.dumps(line) + "\n" for line in lines).encode())
            summary = aggregate(config, lines, metrics)
            summary.update(modelIdentifier=model_id, outputUri=folder.join(f"{name}_output.jsonl").uri)
            ctx.objects.put_bytes(folder.join(f"{name}_summary.json"), json.dumps(summary, indent=1).encode())
            results.append(summary)
        with ctx.session() as session:
            move(ctx.resource(session), "Completed", results=results)
        ctx.objects.delete_prefix(work.parts)

    def fail(self, ctx: JobContext, session, resource: Resource, message: str) -> None:
        move(resource, "Failed", failureMessages=[message[:2000]])
        self._clean(ctx, resource)

    def stopped(self, ctx: JobContext, session, resource: Resource) -> None:
        move(resource, "Stopped")
        self._clean(ctx, resource)

    def ended(self, ctx: JobContext, resource: Resource) -> None:
        self._clean(ctx, resource)

    @staticmethod
    def _clean(ctx: JobContext, resource: Resource) -> None:
        try:
            ctx.objects.delete_prefix(parts_prefix(ctx, resource.account, resource.region, resource.resource_id))
        except StorageError:
            log.warning("could not remove the parts of evaluation job %s", resource.arn)


def parts_prefix(ctx: JobContext, account: str, region: str, job_id: str) -> S3Location:
    return S3Location(ctx.settings.model_bucket, f"evaluation-parts/{account}/{region}/{job_id}/")


def aggregate(config: dict, lines: list[dict], metrics) -> dict:
    """The mean of each metric over the records that have it, overall and per category."""
    def means(chosen: list[dict]) -> list[dict]:
        values: dict[str, list[float]] = {}
        for line in chosen:
            for score in line["automatedEvaluationResult"]["scores"]:
                if score.get("result") is not None:
                    values.setdefault(score["metricName"], []).append(score["result"])
        return [{"metricName": name, "result": metrics.mean(found), "recordCount": len(found)}
                for name, found in values.items()]
    categories = sorted({line["inputRecord"].get("category") for line in lines
                         if isinstance(line["inputRecord"].get("category"), str)})
    answered = sum(1 for line in lines if line["modelResponses"])
    return {"taskType": config["taskType"], "dataset": config["dataset"]["name"], "promptCount": len(lines),
            "responseCount": answered, "scores": means(lines),
            "categories": [{"category": category,
                            "scores": means([line for line in lines if line["inputRecord"].get("category") == category])}
                           for category in categories]}


class _Work:
    """One run of a job: its models (loaded on first use), its datasets, its parts."""

    def __init__(self, ctx: JobContext, body: dict, job_id: str, metrics):
        self.ctx, self.body, self.job_id, self.metrics = ctx, body, job_id, metrics
        self.first_error: str | None = None  # the first model error of this run, for a job no record succeeded in
        model = body["inferenceConfig"]["models"][0]
        self.precomputed = (model.get("precomputedInferenceSource") or {}).get("inferenceSourceIdentifier")
        self.model_identifier = self.precomputed or model["bedrockModel"]["modelIdentifier"]
        self.generation = {"maxTokens": DEFAULT_MAX_TOKENS, "temperature": 0.0, **(body.get("_generation") or {})}
        self.custom = {m["customMetricDefinition"]["name"]: m["customMetricDefinition"]
                       for m in (body["evaluationConfig"]["automated"].get("customMetricConfig") or {})
                       .get("customMetrics", [])}
        self.parts = parts_prefix(ctx, *ctx_scope(ctx, body), job_id)
        self._runners: dict[str, RecordRunner] = {}
        self._encoder = None

    # ---- models ---------------------------------------------------------------------------
    def runner(self, which: str) -> RecordRunner:
        if which not in self._runners:
            source = ModelSource.from_json(self.body[which])
            self._runners[which] = self.ctx.executor.record_runner(self.ctx, RecordRunner, source, "Converse")
        return self._runners[which]

    def encoder(self):
        if self._encoder is None:
            source = foundation_source(find_foundation_model(SCORER_MODEL))
            self._encoder = load_engine(source, self.ctx.settings, self.ctx.objects,
                                        lambda path: model_cache().embedder(path)).model
        return self._encoder

    def generate(self, which: str, prompts: list[str], inference: dict, start: int) -> list[str | None]:
        """The answer of model `which` (_model, _evaluator, _customEvaluator) to each prompt; None
        where the model failed on it (its error is logged, the record scores nothing)."""
        records = [{"recordId": f"r{start + n}",
                    "modelInput": {"messages": [{"role": "user", "content": [{"text": prompt}]}],
                                   "inferenceConfig": inference}} for n, prompt in enumerate(prompts)]
        runner = self.runner(which)
        seed = int(uuid.uuid5(NAMESPACE, self.job_id).int % 2**31)
        answers: list[str | None] = []
        for first in range(0, len(records), runner.chunk_size()):
            lines, ending = runner.run(records[first:first + runner.chunk_size()], seed, start + first)
            if ending is not None:
                if ending.action == "stop":
                    raise JobStopped()
                raise EvaluationFailed(f"The model ended the job: {ending.message}")
            for line, _, _ in lines:
                if "modelOutput" in line:
                    answers.append(response_text(line["modelOutput"]))
                else:
                    log.info("evaluation %s: record %s: %s", self.job_id, line.get("recordId"), line.get("error"))
                    error = line.get("error") or {}
                    self.first_error = self.first_error or error.get("errorMessage")
                    answers.append(None)
        return answers

    # ---- datasets -------------------------------------------------------------------------
    def read_dataset(self, index: int, config: dict) -> list[dict]:
        uri = config["dataset"]["datasetLocation"]["s3Uri"]
        loc = S3Location.parse(uri)
        try:
            objects = ([loc] if not loc.is_prefix and self.ctx.objects.exists(loc) else
                       sorted((found for found, _ in self.ctx.objects.list_objects(
                           S3Location(loc.bucket, loc.key.rstrip("/") + "/" if loc.key else ""))
                               if found.key.endswith(".jsonl")), key=lambda found: found.key))
        except StorageError as exc:
            raise EvaluationFailed(f"The dataset {uri} cannot be read: {exc}")
        if not objects:
            raise EvaluationFailed(f"The dataset '{config['dataset']['name']}' at {uri} does not exist (no such "
                                   f"object, and no .jsonl object under that prefix).")
        needs_reference = bool({"Builtin.Accuracy", "Builtin.Robustness"} & set(config["metricNames"])) and not (
            config["taskType"] in ("Generation", "Custom") and "Builtin.Accuracy" not in config["metricNames"])
        records = []
        for obj in objects:
            try:
                text = self.ctx.objects.get_bytes(obj).decode("utf-8")
            except (StorageError, UnicodeDecodeError) as exc:
                raise EvaluationFailed(f"The dataset file {obj.uri} cannot be read as UTF-8 text: {exc}")
            for number, raw in enumerate(io.StringIO(text), 1):
                if not raw.strip():
                    continue
                where = f"{obj.uri} line {number}"
                try:
                    record = json.loads(raw)
                except ValueError as exc:
                    raise EvaluationFailed(f"{where} is not valid JSON: {exc}")
                if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
                    raise EvaluationFailed(f"{where} has no 'prompt' (a non-empty string).")
                if needs_reference and not isinstance(record.get("referenceResponse"), str):
                    raise EvaluationFailed(f"{where} has no 'referenceResponse' (a string), which "
                                           f"{', '.join(config['metricNames'])} need.")
                if self.precomputed is not None:
                    record["_response"] = self._precomputed(record, where)
                records.append(record)
        return records

    def _precomputed(self, record: dict, where: str) -> str:
        for response in record.get("modelResponses") or []:
            if isinstance(response, dict) and response.get("modelIdentifier") == self.precomputed:
                if not isinstance(response.get("response"), str):
                    raise EvaluationFailed(f"{where}: the response of '{self.precomputed}' is not a string.")
                return response["response"]
        raise EvaluationFailed(f"{where} has no modelResponses entry with modelIdentifier '{self.precomputed}' "
                               f"(the job's precomputedInferenceSource).")

    def part(self, index: int, start: int) -> S3Location:
        return self.parts.join(f"{index:02d}", f"{start:06d}.jsonl")

    def read_parts(self, index: int) -> list[dict]:
        found = sorted((loc for loc, _ in self.ctx.objects.list_objects(self.parts.join(f"{index:02d}/"))),
                       key=lambda loc: loc.key)
        return [json.loads(line) for loc in found for line in self.ctx.objects.get_bytes(loc).decode().splitlines()
                if line.strip()]

    # ---- scoring --------------------------------------------------------------------------
    def score(self, config: dict, records: list[dict], index: int, start: int) -> list[dict]:
        """The output lines of a chunk of records of dataset `index` (`start`: the first one's position)."""
        m, task, names = self.metrics, config["taskType"], config["metricNames"]
        prompts = [record["prompt"] for record in records]
        if self.precomputed is not None:
            responses = [record["_response"] for record in records]
        else:
            responses = self.generate("_model", prompts, self.generation, start)
        scores: list[list[dict]] = [[] for _ in records]
        answered = [n for n, response in enumerate(responses) if response is not None]
        references = [record.get("referenceResponse") or "" for record in records]
        if "Builtin.Accuracy" in names and answered:
            values = m.accuracy_scores(task, [responses[n] for n in answered], [references[n] for n in answered],
                                       self.encoder() if task == "Summarization" else None)
            for n, value in zip(answered, values):
                scores[n].append({"metricName": "Accuracy", "result": value})
        if "Builtin.Robustness" in names and answered:
            seeds = [f"{self.job_id}/{index}/{start + n}" for n in answered]
            perturbed = [m.perturbations(prompts[n], seed) for n, seed in zip(answered, seeds)]
            flat = self.generate("_model", [p for group in perturbed for p in group], self.generation, start)
            width = len(m.PERTURBATIONS)
            for position, n in enumerate(answered):
                others = [o for o in flat[position * width:(position + 1) * width] if o is not None]
                value = (m.robustness_score(task, responses[n], others, references[n],
                                            self.encoder() if task == "Summarization" else None) if others else None)
                scores[n].append({"metricName": "Robustness", "result": value})
        judged = [name for name in names if name in m.JUDGE_METRICS or name in self.custom]
        for name in judged:
            self._judge(name, records, responses, answered, references, scores, start)
        lines = []
        for n, record in enumerate(records):
            input_record = {k: v for k, v in record.items() if not k.startswith("_")}
            lines.append({"automatedEvaluationResult": {"scores": scores[n]}, "inputRecord": input_record,
                          "modelResponses": [] if responses[n] is None else
                          [{"response": responses[n], "modelIdentifier": self.model_identifier}]})
        return lines

    def _judge(self, name: str, records, responses, answered, references, scores, start: int) -> None:
        m = self.metrics
        if name in self.custom:
            definition = self.custom[name]
            scale = definition.get("ratingScale") or []
            prompts = [m.custom_judge_prompt(definition["instructions"], scale, records[n]["prompt"], responses[n],
                                             references[n]) for n in answered]
            which, parse = "_customEvaluator", (lambda answer: m.parse_custom_rating(scale, answer))
        else:
            metric = m.JUDGE_METRICS[name]
            prompts = [m.judge_prompt(metric, records[n]["prompt"], responses[n], references[n]) for n in answered]
            which, parse = "_evaluator", (lambda answer: m.parse_rating(metric, answer))
        evaluator = self.body[which]
        identifier = (self.body["customMetricsEvaluatorModelIdentifiers"] if which == "_customEvaluator"
                      else self.body["evaluatorModelIdentifiers"])[0]
        if evaluator is None or not prompts:
            return
        answers = self.generate(which, prompts, {"maxTokens": 100, "temperature": 0.0}, start)
        for n, answer in zip(answered, answers):
            scores[n].append({"metricName": name, "result": None if answer is None else parse(answer),
                              "evaluatorDetails": [{"modelIdentifier": identifier, "explanation": answer or ""}]})


def ctx_scope(ctx: JobContext, body: dict) -> tuple[str, str]:
    """The job's account and region (read once from its resource)."""
    with ctx.db.read_session() as session:
        resource = ctx.resource(session)
        return resource.account, resource.region
