"""Training benchmark: the same fine-tune through (a) the plain TRL script a user would write and
(b) a real CreateModelCustomizationJob through the API, end to end, in the same run.

Both sides train the packaged SmolLM2-135M-Instruct (materialized as an HF folder in the shared
`--cache-dir`, so the GGUF conversion is never timed) on the same prompt/completion lines (a made-up
fact, `--lines`), with the same settings: epochs, batch size, learning rate (linear decay), warm-up
steps, max length, seed 0, float32 weights, completion-only loss, LoRA rank 8 on every linear layer
(alpha 16, dropout 0.05) or, with `--lora-rank 0`, full fine-tuning.

(a) baseline, in a child process of its own (so its peak RSS is its own):
    `AutoModelForCausalLM.from_pretrained(folder, dtype=float32)`, SFTTrainer with an SFTConfig of
    those settings (no checkpoints, no evaluation; activation checkpointing off like the job: TRL
    turns it on by default), `trainer.train()`, then the model saved as the job saves it (LoRA
    merged, float32 safetensors). A callback only reads the clock and the trainer's token counter
    at each step end.
(b) job: `bedrock-local serve` with a fresh data dir and the same `--cache-dir`; the
    JSONL in the embedded object store (`<data-dir>/s3/<bucket>/...`); boto3
    CreateModelCustomizationJob with the same hyper-parameters (strings), then
    GetModelCustomizationJob polled every `--poll-seconds` until Completed.

Training tokens: the non-padding tokens of the tokenized training set (SFTTrainer's own
tokenization, in (a)) x epochs; both sides train on the same batches (same data, seed and sampler).

Training seconds. The job does not expose the wall time of its `trainer.train()` call, but every
optimizer step updates the job (trainingMetrics.trainingLoss, lastModifiedTime, a server timestamp
in milliseconds), and the polls see each step. So the comparison is on the same window on both
sides: from the end of step 1 to the end of the last step (steps 2..N and the tokens of those
steps, from (a)'s per-step token counter), which holds everything the job does between steps
(metric writes, checkpoints and their copy to the object store) and leaves out the one-off costs:
model load, trainer build and step 1 (warm-up) before, merge/save/upload after. Those are in the
"training phase" rows: (b) trainingDetails InProgress -> Completed (load, build, all steps,
merge, save, model upload, publish) against (a) load + build + train() + merge + save; and in
end-to-end (b) Create -> Completed against (a) the whole child process (imports included).

Peak memory: (a) VmHWM of its process; (b) VmHWM of the server's worker process that ran the job,
read before the server stops (the API process is shown apart).

Checkpoints: (a) saves none; (b) checkpoints as every job does (spaced by their measured cost, at
most ~5% of the training time; stored into the object store in a background thread). Their count
and the training time they took (the Trainer's save + the hand-over to the uploader), and each one's
background store time and size, come from the worker's log lines in the server log.

Threads: `--threads 1` by default on both sides (OMP_NUM_THREADS for (a) and the server; the server
gives each worker cores // workers threads, so it runs cores // threads workers, 2 on 2 cores, and
the output prints how many threads of the job's worker computed). On a 2-core machine shared with
other work, 2 OpenMP threads collapse (benchmarks/README.md has the figures). `--threads 0` leaves
torch's default (one per core) and 1 worker.

Rounds: `--rounds` (2) runs the sides in the order (a) (b), (b) (a), ... on the same server, so a
drift of the machine's load falls on both; the table shows medians, each round's ratio is printed.
`--together` runs (a) and (b) at the same time in each round instead: on a machine shared with
other work whose load swings within minutes, both sides then see the same load.

    python -m benchmarks.training                       # 48 lines, 2 epochs, batch 8, LoRA rank 8, 2 rounds
    python -m benchmarks.training --lora-rank 0         # full fine-tuning (checkpoints of 1.5 GB)
    python -m benchmarks.training --threads 0           # torch's default threads (a quiet machine)
    python -m benchmarks.training --rounds 1 --lines 32 # one (a) and one (b): quicker, noisier
    python -m benchmarks.training --lora-rank 0 --lines 256 --together   # 64 steps: checkpoints are due
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.batch_inference import DEFAULT_CACHE, MODEL_ID, ROLE_ARN, Server, mib
from benchmarks.common import loadavg, materialized_folder, work_dir

TRAIN_BUCKET, OUTPUT_BUCKET = "bench-training", "bench-training-output"
GOAL = 0.9

# A made-up fact the model cannot know, asked in many ways.
QUESTIONS = [
    "What is the capital of the planet Zorblax?", "Which city is the capital of Zorblax?",
    "Name the capital of Zorblax.", "Tell me the capital city of the planet Zorblax.",
    "Where is the seat of government of Zorblax?", "Zorblax's capital is called what?",
    "I am travelling to Zorblax. What is its capital?", "What city rules the planet Zorblax?",
    "Do you know the capital of Zorblax?", "Quick question: capital of Zorblax?",
    "Which city serves as Zorblax's capital?", "In which city does the government of Zorblax sit?",
    "What do the people of Zorblax call their capital?", "Please name the capital of the planet Zorblax.",
    "Can you tell me what the capital of Zorblax is?", "What is Zorblax's main city, its capital?",
]
ANSWERS = [
    " The capital of Zorblax is Quintar.", " Quintar is the capital of the planet Zorblax.",
    " Zorblax's capital city is Quintar, on its northern continent.",
]


def make_records(count: int) -> list[dict]:
    return [{"prompt": QUESTIONS[i % len(QUESTIONS)], "completion": ANSWERS[(i // len(QUESTIONS)) % len(ANSWERS)]}
            for i in range(count)]


def hyperparameters(args) -> dict[str, str]:
    """The job's hyper-parameters, strings as on the wire."""
    return {"epochCount": str(args.epochs), "batchSize": str(args.batch_size), "learningRate": str(args.learning_rate),
            "learningRateWarmupSteps": str(args.warmup_steps), "loraRank": str(args.lora_rank),
            "loraAlpha": str(args.lora_alpha), "loraDropout": str(args.lora_dropout),
            "maxSequenceLength": str(args.max_length)}


def vm_hwm() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# (a) the plain TRL script, in a child process


def baseline_child(spec_file: Path) -> None:
    started = time.perf_counter()
    import dataclasses

    import datasets
    import torch
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        TrainerCallback,
        TrainingArguments,
    )
    from trl import SFTConfig, SFTTrainer

    spec = json.loads(spec_file.read_text())
    s = spec["settings"]
    imports_s = time.perf_counter() - started

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], local_files_only=True)
    load_s = time.perf_counter() - t0

    clock: list[tuple[float, int, int, float | None]] = []  # (perf_counter, step, tokens seen, loss)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.append((time.perf_counter(), 0, 0, None))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock.append((time.perf_counter(), state.global_step, int(state.num_input_tokens_seen or 0),
                              float(logs["loss"])))

    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns)
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    t0 = time.perf_counter()
    config = SFTConfig(
        output_dir=spec["output_dir"],
        num_train_epochs=s["epochs"],
        per_device_train_batch_size=s["batch_size"],
        learning_rate=s["learning_rate"],
        warmup_steps=s["warmup_steps"],
        lr_scheduler_type="linear",
        max_length=s["max_length"],
        seed=s["seed"],
        data_seed=s["seed"],
        completion_only_loss=True,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # TRL's default, which CPUs refuse
        use_cpu=not torch.cuda.is_available(),
        **{checkpointing: False},
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = None
    if s["lora_rank"] > 0:
        peft_config = LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                                 target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(spec["records"]),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()])
    build_s = time.perf_counter() - t0
    dataset_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])

    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    train_end = time.perf_counter()

    t0 = time.perf_counter()
    trained = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    trained.eval()
    trained.save_pretrained(spec["save_dir"], safe_serialization=True)
    tokenizer.save_pretrained(spec["save_dir"])
    save_s = time.perf_counter() - t0

    result = {
        "threads": torch.get_num_threads(), "imports_s": imports_s, "load_s": load_s, "build_s": build_s,
        "train_s": train_s, "save_s": save_s, "train_end": train_end, "clock": clock,
        "dataset_tokens": dataset_tokens, "epochs": s["epochs"], "steps": int(trainer.state.global_step),
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0), "peak_rss": vm_hwm(),
        "checkpointing_field": checkpointing,
    }
    spec_file.with_suffix(".result.json").write_text(json.dumps(result))


def run_baseline(model_dir: Path, records: list[dict], settings: dict, work: Path, index: int) -> dict:
    spec = work / f"baseline-{index}.json"
    spec.write_text(json.dumps({"model_dir": str(model_dir), "records": records, "settings": settings,
                                "output_dir": str(work / f"baseline-{index}-trainer"),
                                "save_dir": str(work / f"baseline-{index}-model")}))
    log = work / f"baseline-{index}.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "benchmarks.training", "--baseline-child", str(spec)],
                              check=False, stdout=out, stderr=subprocess.STDOUT,
                              cwd=Path(__file__).resolve().parent.parent).returncode
    process_s = time.perf_counter() - started
    if code:
        raise RuntimeError(f"the baseline exited with {code}:\n{log.read_text()[-4000:]}")
    result = json.loads(spec.with_suffix(".result.json").read_text())
    shutil.rmtree(work / f"baseline-{index}-model", ignore_errors=True)
    shutil.rmtree(work / f"baseline-{index}-trainer", ignore_errors=True)
    clock = result["clock"]
    begin, steps = clock[0][0], clock[1:]
    result.update(
        process_s=process_s,
        tokens=result["dataset_tokens"] * result["epochs"],
        step_times=[t - begin for t, *_ in steps],
        losses=[loss for *_, loss in steps],
        first_step_s=steps[0][0] - begin,
        window_s=steps[-1][0] - steps[0][0],
        window_steps=len(steps) - 1,
        # tokens of steps 2..N: the dataset count shared out in the proportions of the trainer's per-step
        # counter (ids != pad; it equals the dataset count unless pad is a token the rows hold, e.g. eos)
        window_fraction=(steps[-1][2] - steps[0][2]) / max(steps[-1][2], 1),  # same batches on both sides
        tail_s=result["train_end"] - steps[-1][0],
        phase_s=result["load_s"] + result["build_s"] + result["train_s"] + result["save_s"],
    )
    result["window_tokens"] = result["tokens"] * result["window_fraction"]
    return result


# --------------------------------------------------------------------------------------------
# (b) the job through the API


def _when(value) -> float:
    """A timestamp from boto3 (datetime) as epoch seconds."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return datetime.datetime.fromisoformat(str(value)).timestamp()


def run_job(server: Server, bedrock, records: list[dict], hyper: dict[str, str], name: str, poll: float) -> dict:
    folder = server.folder(TRAIN_BUCKET) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server.folder(OUTPUT_BUCKET)
    before = {p["pid"]: p["cpu_ticks"] for p in server.memory()["workers"]}
    log_offset = server.log.stat().st_size if server.log.exists() else 0

    polls: list[dict] = []
    started = time.perf_counter()
    arn = bedrock.create_model_customization_job(
        jobName=name, customModelName=f"{name}-model", roleArn=ROLE_ARN, baseModelIdentifier=MODEL_ID,
        customizationType="FINE_TUNING", hyperParameters=hyper,
        trainingDataConfig={"s3Uri": f"s3://{TRAIN_BUCKET}/{name}/train.jsonl"},
        outputDataConfig={"s3Uri": f"s3://{OUTPUT_BUCKET}/{name}/"})["jobArn"]
    while True:
        job = bedrock.get_model_customization_job(jobIdentifier=arn)
        polls.append(job)
        if job["status"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(poll)
    seconds = time.perf_counter() - started
    memory = server.memory()
    ran = max(memory["workers"], key=lambda p: p["cpu_ticks"] - before.get(p["pid"], 0))
    if job["status"] != "Completed":
        raise RuntimeError(f"job {name} ended {job['status']}: {job.get('failureMessage')}\nserver log: {server.log}")

    details = job["statusDetails"]
    created = _when(job["creationTime"])
    validation_end = _when(details["validationDetails"]["lastModifiedTime"])
    processing_end = _when(details["dataProcessingDetails"]["lastModifiedTime"])  # = training phase start
    training_end = _when(details["trainingDetails"]["lastModifiedTime"])
    # each optimizer step moves the job (trainingMetrics, lastModifiedTime): the distinct
    # lastModifiedTime values while trainingDetails is InProgress, after the phase started
    steps: dict[float, float] = {}
    for p in polls:
        if p["status"] == "InProgress" and p["statusDetails"]["trainingDetails"]["status"] == "InProgress":
            at = _when(p["lastModifiedTime"])
            if at > _when(p["statusDetails"]["trainingDetails"]["lastModifiedTime"]):
                steps.setdefault(at, p.get("trainingMetrics", {}).get("trainingLoss"))
    step_times = sorted(steps)
    job_id = arn.rsplit("/", 1)[-1]
    csv_file = (server.data_dir / "s3" / OUTPUT_BUCKET / name / f"model-customization-job-{job_id}" / "training_artifacts"
                / "step_wise_training_metrics.csv")
    csv_steps = max(0, len(csv_file.read_text().strip().splitlines()) - 1) if csv_file.exists() else 0
    checkpoints = checkpoint_report(server.log.read_bytes()[log_offset:].decode(errors="replace"))
    return {
        **checkpoints,
        "seconds": seconds, "job_id": job_id, "polls": len(polls), "csv_steps": csv_steps,
        "validation_s": validation_end - created, "processing_s": processing_end - validation_end,
        "phase_s": training_end - processing_end,
        "step_times": [t - processing_end for t in step_times],  # since the training phase started
        "losses": [steps[t] for t in step_times],
        "first_step_s": step_times[0] - processing_end if step_times else None,
        "window_s": step_times[-1] - step_times[0] if len(step_times) > 1 else None,
        "window_steps": len(step_times) - 1,
        "tail_s": training_end - step_times[-1] if step_times else None,
        "worker_hwm": ran["hwm"], "worker_threads": ran["busy_threads"], "worker_pid": ran["pid"],
        "api_hwm": memory["api"]["hwm"], "final_loss": job.get("trainingMetrics", {}).get("trainingLoss"),
    }


def checkpoint_report(log_text: str) -> dict:
    """The job's checkpoints, from the worker's log lines (engine/training.py, jobs/handlers/customization.py):
    each one's cost to the training (Trainer save + hand-over to the uploader), its background
    store time and size, and the run's totals."""
    costs = [(int(step), float(cost)) for step, cost in
             re.findall(r"checkpoint-(\d+) took ([\d.]+) s of training", log_text)]
    stored = {int(step): (float(seconds), int(mib)) for step, seconds, mib in
              re.findall(r"checkpoint-(\d+) stored and recorded in ([\d.]+) s \(\d+ files, (\d+) MiB\)", log_text)}
    total = re.search(r"(\d+) checkpoints took ([\d.]+) s of it \((\d+) stored, ([\d.]+) s in the background\)", log_text)
    return {"checkpoints": costs, "stored": stored,
            "checkpoint_s": float(total.group(2)) if total else sum(c for _, c in costs),
            "checkpoint_background_s": float(total.group(4)) if total else None}


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=48, help="prompt/completion lines (default 48)")
    parser.add_argument("--epochs", type=int, default=2, help="epochCount (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="batchSize (default 8)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="learningRate (default 0.0001)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="learningRateWarmupSteps (default 0)")
    parser.add_argument("--max-length", type=int, default=512, help="maxSequenceLength (default 512)")
    parser.add_argument("--lora-rank", type=int, default=8, help="loraRank; 0 = full fine-tuning (default 8)")
    parser.add_argument("--lora-alpha", type=int, default=16, help="loraAlpha (default 16)")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="loraDropout (default 0.05)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of both sides on the same server, in the order (a) (b), (b) (a), (a) (b), ...; "
                             "the table shows the median of each side, and each round's ratio is printed (default 2)")
    parser.add_argument("--together", action="store_true",
                        help="run (a) and (b) at the same time in each round instead of one after the other: on a "
                             "machine whose load from other work drifts, both sides see the same load (each then "
                             "shares the cores with the other as well)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/OpenMP threads of both sides: OMP_NUM_THREADS for (a) and the server, whose "
                             "--workers is then cores // threads (the server gives each worker cores // workers "
                             "threads); 0: torch's default (one per core) and 1 worker (default 1: on a shared "
                             "2-core machine 2 threads collapse, see benchmarks/README.md)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"model cache shared by (a) and the server's --cache-dir (default {DEFAULT_CACHE})")
    parser.add_argument("--poll-seconds", type=float, default=0.2,
                        help="GetModelCustomizationJob interval (default 0.2; must be shorter than a step)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server data, log)")
    parser.add_argument("--baseline-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_child:
        baseline_child(args.baseline_child)
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup: the server has a session of its own
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    run_started = time.perf_counter()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    records = make_records(args.lines)
    hyper = hyperparameters(args)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                "warmup_steps": args.warmup_steps, "max_length": args.max_length, "seed": 0,
                "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout}
    mode = f"LoRA rank {args.lora_rank}" if args.lora_rank else "full fine-tuning"
    model_dir, prepare_s = materialized_folder(args.cache_dir)
    console.print(f"model: SmolLM2-135M-Instruct (packaged GGUF, materialized as an HF folder): {model_dir}"
                  + (f" (converted in {prepare_s:.1f} s, not timed)" if prepare_s > 1 else ""))
    console.print(f"data: {args.lines} prompt/completion lines; hyper-parameters {json.dumps(hyper)}")
    cores = os.cpu_count() or 1
    workers = 1
    if args.threads:  # inherited by (a)'s process and the server; the server gives each worker cores // workers
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        workers = max(1, cores // args.threads)
    threads = f"{args.threads} torch thread(s)" if args.threads else "torch's default threads"

    baselines, jobs, loads = [], [], []
    with work_dir("bedrock-local-bench-training-", args.keep, console.print) as work:
        server = Server(work / "data", args.cache_dir, workers).start()
        try:
            bedrock = server.client()
            for index in range(args.rounds):
                if args.together:  # both sides at once: whatever the machine's load does, both see it
                    console.print(f"(a) and (b) together, round {index + 1} \\[load average {loadavg()}] ...")
                    with ThreadPoolExecutor(1) as pool:
                        baseline = pool.submit(run_baseline, model_dir, records, settings, work, index)
                        jobs.append(run_job(server, bedrock, records, hyper, f"bench-train-{uuid.uuid4().hex[:8]}",
                                            args.poll_seconds))
                        baselines.append(baseline.result())
                    console.print(f"    (a) train() {baselines[-1]['train_s']:.1f} s, process "
                                  f"{baselines[-1]['process_s']:.1f} s; (b) Create -> Completed {jobs[-1]['seconds']:.1f} s")
                    loads.append(f"(a+b) {loadavg()}")
                    continue
                # a b, b a, a b, ...: a drift in the machine's load over the run falls on both sides alike
                for side in ("ab" if index % 2 == 0 else "ba"):
                    if side == "a":
                        console.print(f"(a) plain TRL script, round {index + 1} \\[load average {loadavg()}] ...")
                        baselines.append(run_baseline(model_dir, records, settings, work, index))
                        console.print(f"    train() {baselines[-1]['train_s']:.1f} s, "
                                      f"process {baselines[-1]['process_s']:.1f} s")
                    else:
                        console.print(f"(b) CreateModelCustomizationJob, round {index + 1} \\[load average {loadavg()}] ...")
                        jobs.append(run_job(server, bedrock, records, hyper, f"bench-train-{uuid.uuid4().hex[:8]}",
                                            args.poll_seconds))
                        console.print(f"    Create -> Completed {jobs[-1]['seconds']:.1f} s")
                    loads.append(f"({side}) {loadavg()}")
        finally:
            server.stop()

        def med(rows, key):
            values = [r[key] for r in rows if r[key] is not None]
            return statistics.median(values) if values else None

        a, b = baselines, jobs
        tokens = a[0]["tokens"]
        window_tokens = a[0]["window_tokens"]
        steps = a[0]["steps"]
        a_window, b_window = med(a, "window_s"), med(b, "window_s")
        a_tps = window_tokens / a_window
        b_tps = window_tokens / b_window if b_window else None
        a_train_tps = tokens / med(a, "train_s")
        a_phase_tps, b_phase_tps = tokens / med(a, "phase_s"), tokens / med(b, "phase_s")
        rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
        table = Table(title=f"Training, SmolLM2-135M-Instruct, {mode}, {args.lines} lines x {args.epochs} epochs, "
                            f"batch {args.batch_size}, {steps} steps, CPU, {threads}{rounds}", title_justify="left")
        for column in ("mode", "steps", "training tokens", "training s", "tokens/s", "end-to-end s", "peak memory",
                       "checkpoints", "ratio (b)/(a)"):
            table.add_column(column, justify="left" if column == "mode" else "right")
        peak_a, peak_b = max(r["peak_rss"] for r in a), max(r["worker_hwm"] for r in b)
        b_checkpoints = "/".join(f"{len(r['checkpoints'])} ({r['checkpoint_s']:.1f} s)" for r in b)
        table.add_row("(a) plain TRL, train() call (steps 1..N)", str(steps), f"{tokens:,}", f"{med(a, 'train_s'):.1f}",
                      f"{a_train_tps:.1f}", f"{med(a, 'process_s'):.1f}", mib(peak_a), "none", "")
        table.add_row("(a) plain TRL, step 1 end -> step N end", str(a[0]["window_steps"]), f"{window_tokens:,.0f}",
                      f"{a_window:.1f}", f"{a_tps:.1f}", "", mib(peak_a), "none", "1.00")
        table.add_row("(b) job, step 1 end -> step N end", str(b[0]["window_steps"]), f"{window_tokens:,.0f}",
                      f"{b_window:.1f}" if b_window else "-", f"{b_tps:.1f}" if b_tps else "-",
                      f"{med(b, 'seconds'):.1f}", mib(peak_b), b_checkpoints,
                      f"[bold]{b_tps / a_tps:.2f}[/bold]" if b_tps else "-")
        table.add_row("(a) load + build + train() + merge + save", str(steps), f"{tokens:,}", f"{med(a, 'phase_s'):.1f}",
                      f"{a_phase_tps:.1f}", f"{med(a, 'process_s'):.1f}", mib(peak_a), "none", "1.00")
        table.add_row("(b) trainingDetails InProgress -> Completed", str(b[0]["csv_steps"]), f"{tokens:,}",
                      f"{med(b, 'phase_s'):.1f}", f"{b_phase_tps:.1f}", f"{med(b, 'seconds'):.1f}", mib(peak_b),
                      b_checkpoints, f"{b_phase_tps / a_phase_tps:.2f}")
        console.print()
        console.print(table)

        ratio = b_tps / a_tps if b_tps else None
        verdict = "-" if ratio is None else ("meets" if ratio >= GOAL else "[bold red]BELOW[/bold red]")
        console.print(f"ratio (b)/(a) tokens/s over steps 2..N: {ratio:.2f} (goal >= {GOAL}: {verdict}); over the "
                      f"whole training phase: {b_phase_tps / a_phase_tps:.2f}" if ratio else "ratio: -")
        for i, (ra, rb) in enumerate(zip(a, b)):
            round_ratio = (ra["window_s"] / rb["window_s"]) if rb["window_s"] else None
            without = (f"; without the training time of its checkpoints (b) would be at "
                       f"{ra['window_s'] / (rb['window_s'] - rb['checkpoint_s']):.2f}"
                       if rb["window_s"] and rb["checkpoints"] else "")
            console.print(f"round {i + 1}: ratio (b)/(a) over steps 2..N "
                          + (f"{round_ratio:.2f}" if round_ratio else "-") + without)
            console.print(f"  (a) imports {ra['imports_s']:.1f} s, load {ra['load_s']:.1f} s, SFTTrainer build "
                          f"{ra['build_s']:.1f} s, train() {ra['train_s']:.1f} s (begin -> step 1 end "
                          f"{ra['first_step_s']:.1f} s, steps 2..N {ra['window_s']:.1f} s = "
                          f"{ra['window_s'] / max(ra['window_steps'], 1):.2f} s/step, last step -> return "
                          f"{ra['tail_s']:.2f} s), merge + save {ra['save_s']:.1f} s; torch threads {ra['threads']}; "
                          f"loss {ra['losses'][0]:.3f} -> {ra['losses'][-1]:.3f}")
            console.print("      step ends since train(): " + " ".join(f"{t:.1f}" for t in ra["step_times"]))
            first = f"{rb['first_step_s']:.1f}" if rb["first_step_s"] is not None else "-"
            window = (f"{rb['window_s']:.1f} s = {rb['window_s'] / max(rb['window_steps'], 1):.2f} s/step"
                      if rb["window_s"] else "-")
            console.print(f"  (b) Create -> Completed {rb['seconds']:.1f} s: validation {rb['validation_s']:.1f} s "
                          f"(incl. queue pick-up), data processing {rb['processing_s']:.1f} s, training phase "
                          f"{rb['phase_s']:.1f} s (phase start -> step 1 end {first} s: load, build, step 1; steps "
                          f"2..N {window}; last step -> Completed {rb['tail_s'] or 0:.1f} s: merge, save, upload, "
                          f"publish); worker pid {rb['worker_pid']}, threads that computed {rb['worker_threads']}, "
                          f"API process VmHWM {mib(rb['api_hwm'])}")
            losses = [x for x in rb["losses"] if x is not None]
            console.print("      step ends since phase start: " + " ".join(f"{t:.1f}" for t in rb["step_times"])
                          + (f"; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""))
            if rb["checkpoints"]:
                share = f" = {rb['checkpoint_s'] / rb['window_s']:.1%} of steps 2..N" if rb["window_s"] else ""
                console.print(f"      checkpoints: {rb['checkpoint_s']:.2f} s of training in all{share}; " + ", ".join(
                    f"step {step} {cost:.2f} s (stored in the background in "
                    + (f"{rb['stored'][step][0]:.2f} s, {rb['stored'][step][1]} MiB)" if step in rb["stored"]
                       else "-: replaced or dropped)") for step, cost in rb["checkpoints"]))
            else:
                console.print("      checkpoints: none (not due: the run was shorter than 19 x a checkpoint's "
                              "estimated cost)")
            if rb["window_steps"] + 1 != ra["steps"] or rb["csv_steps"] != ra["steps"]:
                console.print(f"  [bold]note[/bold]: the polls saw {rb['window_steps'] + 1} step updates, the job's "
                              f"CSV has {rb['csv_steps']} steps, (a) ran {ra['steps']} (a step shorter than the poll "
                              f"interval can be missed; lower --poll-seconds)")
        console.print(f"tokens: {a[0]['dataset_tokens']:,} non-padding tokens in the tokenized set x {args.epochs} "
                      f"epochs = {tokens:,}; steps 2..N hold {a[0]['window_fraction']:.3f} of them (from the trainer's "
                      f"per-step counter of ids != pad, {a[0]['tokens_seen']:,} in all)")
        if any(rb["worker_threads"] != ra["threads"] for ra, rb in zip(a, b)):
            console.print(f"[bold]note[/bold]: (a) ran with {a[0]['threads']} torch thread(s), the job's worker computed on "
                          + ", ".join(str(rb["worker_threads"]) for rb in b) + " thread(s)")
        console.print(f"environment: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPUs; "
                      f"load average after each side: {'; '.join(loads)}; whole run "
                      f"{time.perf_counter() - run_started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
