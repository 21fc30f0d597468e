"""Batch inference benchmark: the same records through (a) the per-record `model.generate` loop a
user would write and (b) a real model invocation job through the API, end to end.

(a) baseline: SmolLM2-135M-Instruct loaded with transformers (`AutoModelForCausalLM.from_pretrained`
    of the packaged model's materialized HF folder, float32, as the server loads it) and, record by
    record, `model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)` on the
    chat-templated prompt. It runs in a child process of its own, so that its peak RSS is its own.
    With `--baseline-records K` it runs on K of the records (spread evenly over them) and the
    per-record figures are extrapolated to all of them: records do not interact in this loop, so
    seconds and tokens scale linearly.
(b) job: `bedrock-local serve --workers 1` on a free port with a fresh data dir and the same
    `--cache-dir` (the GGUF -> HF conversion happens once, before anything is timed); the records
    are one JSONL file in the embedded object store (`<data-dir>/s3/<bucket>/...`); boto3
    CreateModelInvocationJob (Converse bodies, inferenceConfig.maxTokens = N, temperature 0), then
    GetModelInvocationJob polled until the job ends. Timed from the Create call to the poll that
    sees Completed. Output tokens are the real ones, `outputTokenCount` of manifest.json.out: the
    API has no min_new_tokens, so the prompts ask for long stories and the table shows how many
    records ran to maxTokens. A second job on the same server (`--no-warm-job` skips it) shows the
    job with the model already loaded in the worker.

The model load is a one-off cost both sides pay: timed on its own in the baseline process and shown
apart; the cold job pays it inside Create -> Completed.

`--random-weights`: a random-weight model of SmolLM2-135M's shape (for machines without the GGUF,
e.g. the GPU machine), saved as an HF folder; the baseline loads that folder, the server imports it
with CreateCustomModel (timed apart) and the job runs it by ARN.

`--test-model`: the job machinery alone. The records go to `bedrock-local.test-text-v1:0`
(engine/stub_models.py: no weights, microseconds a record) and (a) becomes the same records through
the test model's `generate()` in this process (and, apart, the in-process parse + generate + render +
JSON line that a RecordRunner does without the job around it), best of 3; (b) is the job end to end
(a cold one, then a warm one on the same server). The ratio (b)/(a) and the job's seconds per record
beyond the model's are the cost of the job machinery (queue pick-up, validation, reading, checkpoints,
output flushes, status moves).

    python -m benchmarks.batch_inference                          # 256 records x 64 tokens; baseline on 32
    python -m benchmarks.batch_inference --records 32 --baseline-records 8 --new-tokens 16   # quick
    python -m benchmarks.batch_inference --random-weights --records 512 --tokenizer-dir DIR   # GPU
    python -m benchmarks.batch_inference --test-model --records 10000                          # the job machinery
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bedrock_local import testing
from benchmarks.common import BENCH_ACCESS_KEY, BENCH_SECRET_KEY, SMOLLM2_ID, loadavg, materialized_folder, work_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_ID = SMOLLM2_ID
TEST_MODEL_ID = "bedrock-local.test-text-v1:0"
ACCOUNT, REGION = "123456789012", "us-east-1"  # the server's open mode: every key is this account
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchInference"
INPUT_BUCKET, OUTPUT_BUCKET, MODEL_SOURCE_BUCKET = "bench-input", "bench-output", "bench-model-source"
DEFAULT_CACHE = Path(os.environ.get("BEDROCK_LOCAL_BENCH_CACHE", Path.home() / ".cache" / "bedrock-local-bench"))
FINAL = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}
# SmolLM2-135M's shape (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                     max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, hidden_act="silu")
RANDOM_FORMAT = 1

TOPICS = [
    "a lighthouse keeper", "a lost dragon", "a robot who learns to paint", "two rival bakers", "a haunted library",
    "a girl who talks to birds", "a city under the sea", "a time-travelling cat", "the last tree on Mars",
    "a detective in Venice", "a shy giant", "a pirate who fears water", "a village without music",
    "an old violin", "a moon colony", "a fox and a crow", "a clockmaker's apprentice", "a desert caravan",
    "a forgotten king", "a snow leopard", "a space station cook", "a magic paintbrush", "a runaway train",
    "a small brave mouse", "an island of machines", "a gardener on a starship", "a knight without armour",
    "a dream thief", "a mountain rescue dog", "a secret garden", "a wizard's broken staff", "a storm chaser",
    "a river spirit", "an inventor's flying bicycle", "a postman in the Arctic", "a circus elephant",
    "a ghost who cannot scare", "a map to nowhere", "a chess champion robot", "a city of bridges",
    "a whale who sings", "a lonely astronaut", "a market of wishes", "a bee colony", "a stolen crown",
    "a boy and his kite", "an underground kingdom", "a painter who lost colour", "a talking compass",
    "a queen of glass", "a family of otters", "a treasure in the attic", "a deep sea diver",
    "a festival of lanterns", "an ancient mask", "a musician in Paris", "a tiny dragon in a teacup",
    "a lighthouse on the moon", "a wolf pack leader", "a school for spies", "a forest that moves",
    "a sailor's last voyage", "a mysterious letter", "a baker's enchanted bread",
]
TEMPLATES = [
    "Write a long story about {}.",
    "Tell me a long, detailed story about {}.",
    "Write a long tale about {}, with many details.",
    "Write a long adventure story about {}.",
]


def make_prompts(count: int) -> list[str]:
    pairs = [(t, topic) for t in TEMPLATES for topic in TOPICS]
    return [pairs[i % len(pairs)][0].format(pairs[i % len(pairs)][1]) for i in range(count)]


def subset_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total)."""
    if count >= total:
        return list(range(total))
    return [i * total // count for i in range(count)]


# --------------------------------------------------------------------------------------------
# Models


def random_weight_folder(cache_dir: Path, tokenizer_dir: Path | None) -> tuple[Path, float]:
    """A random-weight model of SmolLM2-135M's shape saved as an HF folder (built once, seed 0),
    with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    if tokenizer_dir is None:
        tokenizer_dir, _ = materialized_folder(cache_dir)
    folder = cache_dir / "random-weights" / "smollm2-135m-shape"
    marker = folder / ".bench-random.json"
    stamp = {"format": RANDOM_FORMAT, "shape": SMOLLM2_SHAPE, "tokenizer": str(Path(tokenizer_dir).resolve())}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == stamp:
            return folder, 0.0
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 2
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 1
    config = LlamaConfig(**SMOLLM2_SHAPE, bos_token_id=bos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker.write_text(json.dumps(stamp))
    return folder, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# (a) the baseline, in a child process


def baseline_child(spec_file: Path) -> None:
    """Load the model, run the per-record loop, write the result next to the spec."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(spec_file.read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], local_files_only=True)
    model.to(device).eval()
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    new_tokens = spec["new_tokens"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens, per_record = 0, []
    started = time.perf_counter()
    for prompt in spec["prompts"]:
        t0 = time.perf_counter()
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=pad)
        tokens += output.shape[1] - inputs["input_ids"].shape[1]
        per_record.append(time.perf_counter() - t0)
    if device == "cuda":
        torch.cuda.synchronize()
    generate_s = time.perf_counter() - started
    result = {
        "device": device, "threads": torch.get_num_threads(), "load_s": load_s, "generate_s": generate_s,
        "records": len(spec["prompts"]), "output_tokens": int(tokens), "per_record_s": per_record,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss_after_load": rss_after_load,
        "cuda_peak": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }
    spec_file.with_suffix(".result.json").write_text(json.dumps(result))


def run_baseline(model_dir: Path, prompts: list[str], new_tokens: int, work: Path) -> dict:
    spec = work / "baseline-spec.json"
    spec.write_text(json.dumps({"model_dir": str(model_dir), "prompts": prompts, "new_tokens": new_tokens}))
    subprocess.run([sys.executable, "-m", "benchmarks.batch_inference", "--baseline-child", str(spec)], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    return json.loads(spec.with_suffix(".result.json").read_text())


# --------------------------------------------------------------------------------------------
# (b) the server and the job


def process_tree(root: int) -> list[int]:
    """root and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def proc_memory(pid: int) -> dict:
    """VmHWM (peak RSS) and VmRSS in bytes and the command line of a process."""
    info = {"pid": pid, "hwm": 0, "rss": 0, "cmd": "", "cpu_ticks": 0}
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        info["cpu_ticks"] = int(fields[11]) + int(fields[12])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                info["hwm"] = int(line.split()[1]) * 1024
            elif line.startswith("VmRSS:"):
                info["rss"] = int(line.split()[1]) * 1024
        info["cmd"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80]
    return info


def busy_threads(pid: int) -> int:
    """Threads of a process that did real CPU work (at least a fifth of the busiest one's CPU time):
    the torch intra-op threads of a worker that has generated (its main thread and OpenMP's pool)."""
    times = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            times.append(int(fields[11]) + int(fields[12]))  # utime + stime
    top = max(times, default=0)
    return sum(1 for t in times if top and t >= top / 5)


class Server(testing.Server):
    """`bedrock-local serve --workers N` on the benchmark's model cache; ready once it listens and every
    worker process is up and idle."""

    start_timeout = 120.0

    def __init__(self, data_dir: Path, cache_dir: Path, workers: int = 1):
        super().__init__(data_dir, workers=workers, cache_dir=cache_dir, log_level="warning",
                         log=data_dir.parent / "server.log")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        super().wait_ready(timeout)
        self._wait_for_idle_workers(deadline)

    def _wait_for_idle_workers(self, deadline: float) -> None:
        """Until every worker process is up and idle (imports done, polling the queue)."""
        last = None
        while time.monotonic() < deadline:
            workers = self.memory()["workers"]
            ticks = sorted((p["pid"], p["cpu_ticks"]) for p in workers)
            if len(workers) >= self.workers and ticks == last:
                return
            last = ticks
            time.sleep(1.0)

    def client(self):
        return super().client(access_key=BENCH_ACCESS_KEY, secret_key=BENCH_SECRET_KEY, retries={"max_attempts": 3})

    def memory(self) -> dict:
        """The API process and its workers (the process tree under it): peak and current RSS."""
        tree = [proc_memory(pid) for pid in process_tree(self.process.pid)]
        api = next(p for p in tree if p["pid"] == self.process.pid)
        workers = [p for p in tree if p["pid"] != self.process.pid and "resource_tracker" not in p["cmd"]]
        for p in workers:
            p["busy_threads"] = busy_threads(p["pid"])
        return {"api": api, "workers": workers}


def import_custom_model(server: Server, bedrock, folder: Path, name: str, poll: float) -> tuple[str, float]:
    """Copy the HF folder into the embedded S3 store, CreateCustomModel, wait for Active."""
    source = server.folder(MODEL_SOURCE_BUCKET) / "smollm2-135m-random"
    shutil.copytree(folder, source, ignore=shutil.ignore_patterns(".*"))
    started = time.perf_counter()
    arn = bedrock.create_custom_model(
        modelName=name, roleArn=ROLE_ARN,
        modelSourceConfig={"s3DataSource": {"s3Uri": f"s3://{MODEL_SOURCE_BUCKET}/smollm2-135m-random/"}})["modelArn"]
    while True:
        model = bedrock.get_custom_model(modelIdentifier=arn)
        if model["modelStatus"] == "Active":
            return arn, time.perf_counter() - started
        if model["modelStatus"] == "Failed":
            raise RuntimeError(f"the import failed: {model.get('failureMessage')}")
        time.sleep(poll)


def run_job(server: Server, bedrock, model_id: str, prompts: list[str], new_tokens: int, name: str,
            poll: float) -> dict:
    records = converse_records(prompts, new_tokens)
    input_dir = server.folder(INPUT_BUCKET) / name
    input_dir.mkdir(parents=True, exist_ok=True)
    (input_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server.folder(OUTPUT_BUCKET)

    timeline: list[tuple[float, str, int]] = []  # (seconds since Create, status, processedRecordCount)
    before = {p["pid"]: p["cpu_ticks"] for p in server.memory()["workers"]}
    started = time.perf_counter()
    arn = bedrock.create_model_invocation_job(
        jobName=name, roleArn=ROLE_ARN, modelId=model_id, modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{INPUT_BUCKET}/{name}/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{OUTPUT_BUCKET}/{name}/"}})["jobArn"]
    while True:
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
        now = time.perf_counter() - started
        state = (job["status"], job.get("processedRecordCount", 0))
        if not timeline or timeline[-1][1:] != state:
            timeline.append((now, *state))
        if job["status"] in FINAL:
            break
        time.sleep(poll)
    seconds = time.perf_counter() - started
    memory = server.memory()
    # the worker that ran the job: the one whose CPU time grew most
    ran = max(memory["workers"], key=lambda p: p["cpu_ticks"] - before.get(p["pid"], 0))
    memory.update(worker_pid=ran["pid"], worker_hwm=ran["hwm"], worker_threads=ran["busy_threads"])
    if job["status"] != "Completed":
        raise RuntimeError(f"job {name} ended {job['status']}: {job.get('message')}\n"
                           f"server log: {server.log}")
    job_id = arn.rsplit("/", 1)[-1]
    out_dir = server.data_dir / "s3" / OUTPUT_BUCKET / name / job_id
    manifest = json.loads((out_dir / "manifest.json.out").read_text())
    stop_reasons: dict[str, int] = {}
    for line in (out_dir / "records.jsonl.out").read_text().splitlines():
        out = json.loads(line)
        reason = out["modelOutput"]["stopReason"] if "modelOutput" in out else "error"
        stop_reasons[reason] = stop_reasons.get(reason, 0) + 1
    return {"seconds": seconds, "manifest": manifest, "timeline": timeline, "memory": memory,
            "stop_reasons": stop_reasons, "job_id": job_id}


def describe_timeline(timeline: list[tuple[float, str, int]], records: int) -> list[str]:
    """Where the job's time went, from the polls: queue and validation, start to the first flushed
    chunk (the model load of a cold worker is in there), each chunk, the end."""
    lines = []
    first = {status: t for t, status, _ in reversed(timeline)}
    in_progress = first.get("InProgress")
    end = timeline[-1][0]
    if in_progress is not None:
        lines.append(f"Create -> InProgress {in_progress:6.1f} s (queue pick-up, validation; polled, so +- the poll "
                     f"interval)")
    chunks = [(t, n) for t, status, n in timeline if status == "InProgress" and n > 0]
    previous_t, previous_n = in_progress, 0
    for t, n in chunks:
        if previous_t is not None:
            lines.append(f"  records {previous_n:>5} -> {n:<5} {t - previous_t:6.1f} s "
                         f"({(n - previous_n) / max(t - previous_t, 1e-9):.2f} records/s)")
        previous_t, previous_n = t, n
    if previous_t is not None:
        lines.append(f"last flush -> {timeline[-1][1]} {end - previous_t:6.1f} s")
    return lines


# --------------------------------------------------------------------------------------------


def converse_records(prompts: list[str], new_tokens: int) -> list[dict]:
    """The records `run_job` writes (Converse bodies, greedy, maxTokens = new_tokens)."""
    return [{"recordId": f"r{i:06d}",
             "modelInput": {"messages": [{"role": "user", "content": [{"text": prompt}]}],
                            "inferenceConfig": {"maxTokens": new_tokens, "temperature": 0}}}
            for i, prompt in enumerate(prompts)]


def test_model_baseline(prompts: list[str], new_tokens: int, rounds: int = 3) -> dict:
    """(a) for --test-model: the same records through StubTextModel.generate() in this process (best of
    `rounds`), and apart the whole in-process path of a record without the job around it: its JSON
    line parsed, its Converse body parsed, generate, the response rendered and its output line dumped."""
    from bedrock_local.engine import formats
    from bedrock_local.engine.stub_models import StubTextModel

    raw = [json.dumps(record) for record in converse_records(prompts, new_tokens)]
    model = StubTextModel()
    generate_s, pipeline_s, output_tokens = [], [], 0
    for _ in range(rounds):
        records = [json.loads(line) for line in raw]
        requests = [formats.parse_converse_body(record["modelInput"]) for record in records]
        started = time.perf_counter()
        results = model.generate(requests, seed=0)
        generate_s.append(time.perf_counter() - started)
        output_tokens = sum(result.output_tokens for result in results)

        started = time.perf_counter()
        records = [json.loads(line) for line in raw]
        requests = [formats.parse_converse_body(record["modelInput"]) for record in records]
        lines = [json.dumps({"recordId": record["recordId"], "modelInput": record["modelInput"],
                             "modelOutput": formats.render_converse_response(result)}, ensure_ascii=False) + "\n"
                 for record, result in zip(records, model.generate(requests, seed=0))]
        pipeline_s.append(time.perf_counter() - started)
        assert len(lines) == len(raw)
    return {"generate_s": min(generate_s), "pipeline_s": min(pipeline_s), "output_tokens": output_tokens,
            "records": len(raw), "rounds": rounds}


def main_test_model(args, console) -> int:
    """--test-model: the job machinery alone (see the module docstring)."""
    from rich.table import Table

    run_started = time.perf_counter()
    prompts = make_prompts(args.records)
    console.print(f"(a) {args.records} records through {TEST_MODEL_ID} generate() in this process, best of 3 "
                  f"[load average {loadavg()}] ...")
    baseline = test_model_baseline(prompts, args.new_tokens)
    console.print(f"    generate {baseline['generate_s'] * 1000:.1f} ms; parse + generate + render + dump "
                  f"{baseline['pipeline_s'] * 1000:.1f} ms")
    jobs: list[dict] = []
    with work_dir("bedrock-local-bench-batch-", args.keep, console.print) as work:
        server = Server(work / "data", args.cache_dir, args.workers).start()
        try:
            bedrock = server.client()
            for name in ["cold"] + ([] if args.no_warm_job else ["warm"]):
                console.print(f"(b) invocation job '{name}', {args.records} records [load average {loadavg()}] ...")
                job = run_job(server, bedrock, TEST_MODEL_ID, prompts, args.new_tokens,
                              f"bench-{name}-{uuid.uuid4().hex[:6]}", args.poll_seconds)
                job["name"], job["load_avg"] = name, loadavg()
                console.print(f"    {job['seconds']:.2f} s")
                jobs.append(job)
        finally:
            server.stop()

        records = args.records
        table = Table(title=f"Batch inference on the test model {TEST_MODEL_ID}: {records} Converse records, "
                            f"maxTokens {args.new_tokens}", title_justify="left")
        for column in ("mode", "records", "output tokens", "seconds", "records/s", "us/record", "vs (a)"):
            table.add_column(column, justify="left" if column == "mode" else "right")
        base = baseline["generate_s"]
        rows = [("(a) StubTextModel.generate(), in-process", baseline["generate_s"], baseline["output_tokens"]),
                ("(a') parse + generate + render + JSON line, in-process", baseline["pipeline_s"],
                 baseline["output_tokens"])]
        for job in jobs:
            label = ("(b) job, Create -> Completed, first job on the server" if job["name"] == "cold"
                     else "(b) same job again")
            rows.append((label, job["seconds"], job["manifest"]["outputTokenCount"]))
        for label, seconds, tokens in rows:
            table.add_row(label, f"{records:,}", f"{tokens:,}", f"{seconds:.3f}", f"{records / seconds:,.0f}",
                          f"{seconds / records * 1e6:,.1f}", f"{seconds / base:.1f}x")
        console.print()
        console.print(table)
        for job in jobs:
            m = job["manifest"]
            console.print(f"(b) {job['name']}: manifest {json.dumps(m)}; stop reasons {job['stop_reasons']}; "
                          f"load average after {job['load_avg']}")
            for line in describe_timeline(job["timeline"], records):
                console.print(f"    {line}")
            timeline = job["timeline"]
            in_progress = next((t for t, status, _ in timeline if status == "InProgress"), None)
            if in_progress is not None:
                running = timeline[-1][0] - in_progress
                console.print(f"    InProgress -> {timeline[-1][1]}: {running:.2f} s, {running / records * 1e6:,.1f} us "
                              f"a record, of which the model's generate() {base / records * 1e6:.1f} us "
                              f"(polled every {args.poll_seconds} s)")
        if jobs:
            best = min(job["seconds"] for job in jobs)
            console.print(f"job machinery: {(best - base) / records * 1e6:,.1f} us a record beyond the model "
                          f"(best job {best:.2f} s - generate {base:.3f} s, over {records} records); ratio "
                          f"(b) best job / (a) generate = {best / base:.1f}x, / (a') in-process path = "
                          f"{best / baseline['pipeline_s']:.1f}x")
        console.print(f"environment: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} "
                      f"CPUs, server --workers {args.workers}; whole run {time.perf_counter() - run_started:.0f} s")
    return 0


def mib(value: int | None) -> str:
    return "-" if not value else f"{value / 2 ** 20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, help="records in the job (default 256; 10000 with --test-model)")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per record (default 64)")
    parser.add_argument("--baseline-records", type=int, default=32,
                        help="run the baseline on this many of the records (spread evenly) and extrapolate "
                             "per record to all of them; 0 = all (default 32)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"model cache shared by the baseline and the server's --cache-dir (default {DEFAULT_CACHE})")
    parser.add_argument("--random-weights", action="store_true",
                        help="a random-weight model of SmolLM2-135M's shape, imported with CreateCustomModel")
    parser.add_argument("--tokenizer-dir", type=Path,
                        help="with --random-weights: a folder with the SmolLM2 tokenizer "
                             "(default: the materialized packaged model)")
    parser.add_argument("--no-warm-job", action="store_true",
                        help="skip the second job (same records, model already loaded in the worker)")
    parser.add_argument("--skip-baseline", action="store_true", help="only the job (no ratio)")
    parser.add_argument("--poll-seconds", type=float,
                        help="GetModelInvocationJob interval (default 0.5; 0.05 with --test-model)")
    parser.add_argument("--workers", type=int, default=1,
                        help="the server's --workers (default 1); the server gives each worker cores // workers "
                             "torch threads, so on a busy 2-core machine --workers 2 runs the job on 1 thread")
    parser.add_argument("--threads", type=int,
                        help="torch/OpenMP threads: OMP_NUM_THREADS for the baseline process and the server; "
                             "a server that sets its workers' threads itself (cores // workers) overrides it "
                             "there, which the output notes; default: torch's own choice (one per core)")
    parser.add_argument("--keep", action="store_true", help="keep the server's data dir (outputs, log)")
    parser.add_argument("--test-model", action="store_true",
                        help=f"the job machinery alone: the records go to {TEST_MODEL_ID} (no weights, microseconds "
                             f"a record); the baseline is its generate() in-process")
    parser.add_argument("--baseline-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.records is None:
        args.records = 10_000 if args.test_model else 256
    if args.poll_seconds is None:
        args.poll_seconds = 0.05 if args.test_model else 0.5
    if args.baseline_child:
        baseline_child(args.baseline_child)
        return 0

    # a SIGTERM runs the cleanup below too: the server is in a session of its own and would outlive us
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.threads:  # inherited by the baseline process and by the server and its workers
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    if args.test_model:
        return main_test_model(args, console)
    run_started = time.perf_counter()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    prompts = make_prompts(args.records)
    notes: list[str] = []

    # The model, outside every timing.
    if args.random_weights:
        model_dir, prepare_s = random_weight_folder(args.cache_dir, args.tokenizer_dir)
        what = "random-weight model of SmolLM2-135M's shape"
        if prepare_s:
            notes.append(f"built the random-weight model folder in {prepare_s:.1f} s (not timed)")
    else:
        model_dir, prepare_s = materialized_folder(args.cache_dir)
        what = "SmolLM2-135M-Instruct (packaged GGUF, materialized as an HF folder)"
        if prepare_s > 1:
            notes.append(f"converted the packaged GGUF to an HF folder in {prepare_s:.1f} s (once; not timed; "
                         f"the server finds it in the shared --cache-dir)")
    console.print(f"model: {what}: {model_dir}")

    baseline = None
    with work_dir("bedrock-local-bench-batch-", args.keep, console.print) as work:
        # (a)
        if not args.skip_baseline:
            count = args.baseline_records or args.records
            picked = subset_indices(args.records, min(count, args.records))
            console.print(f"(a) per-record model.generate on {len(picked)} of {args.records} records "
                          f"[load average {loadavg()}] ...")
            baseline = run_baseline(model_dir, [prompts[i] for i in picked], args.new_tokens, work)
            baseline["load_avg"] = loadavg()  # after (a)
            console.print(f"    {baseline['generate_s']:.1f} s, load {baseline['load_s']:.1f} s")

        # (b)
        server = Server(work / "data", args.cache_dir, args.workers).start()
        jobs: list[dict] = []
        model_ref, model_arn = MODEL_ID, None
        try:
            bedrock = server.client()
            if args.random_weights:
                console.print("importing the model with CreateCustomModel ...")
                model_name = f"bench-random-{uuid.uuid4().hex[:8]}"
                model_ref, import_s = import_custom_model(server, bedrock, model_dir, model_name, args.poll_seconds)
                model_arn = model_ref
                notes.append(f"CreateCustomModel -> Active took {import_s:.1f} s (copy, checksums, load check; "
                             f"not in the job's time)")
            names = ["cold"] + ([] if args.no_warm_job else ["warm"])
            for name in names:
                console.print(f"(b) invocation job '{name}', {args.records} records [load average {loadavg()}] ...")
                try:
                    job = run_job(server, bedrock, model_ref, prompts, args.new_tokens,
                                  f"bench-{name}-{uuid.uuid4().hex[:6]}", args.poll_seconds)
                except bedrock.exceptions.ValidationException as exc:
                    if not (args.random_weights and model_ref == model_arn and "modelId" in str(exc)):
                        raise
                    # AWS's modelId pattern for CreateModelInvocationJob has no form for an imported
                    # model's ARN (custom-model/imported/<id>); the model's name is accepted.
                    notes.append(f"CreateModelInvocationJob refused the imported model's ARN {model_arn} (modelId "
                                 f"pattern); the jobs name the model by its name {model_name} instead")
                    model_ref = model_name
                    job = run_job(server, bedrock, model_ref, prompts, args.new_tokens,
                                  f"bench-{name}-{uuid.uuid4().hex[:6]}", args.poll_seconds)
                job["name"], job["load_avg"] = name, loadavg()
                console.print(f"    {job['seconds']:.1f} s")
                jobs.append(job)
        finally:
            server.stop()
            if model_arn:  # the server's unpacked copy of the imported model: run-specific, 270 MB
                shutil.rmtree(args.cache_dir / "models" / ACCOUNT / REGION / model_arn.rsplit("/", 1)[-1],
                              ignore_errors=True)

        # The table.
        table = Table(title=f"Batch inference, {what}; {args.records} records x {args.new_tokens} new tokens, "
                            f"greedy", title_justify="left")
        for column in ("mode", "records", "output tokens", "seconds", "records/s", "output tok/s", "peak RSS",
                       "tok/s vs (a)"):
            table.add_column(column, justify="left" if column == "mode" else "right")
        base_tps = None
        if baseline:
            scale = args.records / baseline["records"]
            tokens = baseline["output_tokens"] * scale
            seconds = baseline["generate_s"] * scale
            base_tps = tokens / seconds
            extrapolated = scale != 1
            label = "(a) per-record model.generate loop"
            if extrapolated:
                label += f" [ran {baseline['records']} of {args.records}, extrapolated]"
            table.add_row(label, str(args.records), f"{tokens:,.0f}", f"{seconds:.1f}",
                          f"{args.records / seconds:.2f}", f"{base_tps:.1f}", mib(baseline["peak_rss"]), "1.00x")
            with_load = seconds + baseline["load_s"]
            table.add_row("(a) + its model load", str(args.records), f"{tokens:,.0f}", f"{with_load:.1f}",
                          f"{args.records / with_load:.2f}", f"{tokens / with_load:.1f}", mib(baseline["peak_rss"]),
                          f"{tokens / with_load / base_tps:.2f}x")
        for job in jobs:
            out = job["manifest"]["outputTokenCount"]
            tps = out / job["seconds"]
            if job["name"] == "cold":
                label = "(b) job, Create -> Completed, cold worker (incl. load)"
            elif job["memory"]["worker_pid"] == jobs[0]["memory"]["worker_pid"]:
                label = "(b) same job again, model loaded in the worker"
            else:
                label = "(b) same job again, on another (cold) worker"
            table.add_row(label, str(job["manifest"]["processedRecordCount"]), f"{out:,}", f"{job['seconds']:.1f}",
                          f"{job['manifest']['processedRecordCount'] / job['seconds']:.2f}", f"{tps:.1f}",
                          mib(job["memory"]["worker_hwm"]), f"{tps / base_tps:.2f}x" if base_tps else "-")
        console.print()
        console.print(table)

        # What the table means.
        if baseline:
            console.print(f"model load, the one-off cost both sides pay (from_pretrained of the HF folder + tokenizer, "
                          f"float32, {baseline['device']}): {baseline['load_s']:.1f} s in the baseline process; "
                          f"the baseline's generation rows exclude it, the cold job's Create -> Completed includes "
                          f"its own")
            per = sorted(baseline["per_record_s"])
            console.print(f"(a) per record: median {per[len(per) // 2]:.2f} s, min {per[0]:.2f} s, max {per[-1]:.2f} s; "
                          f"{baseline['output_tokens'] / baseline['records']:.1f} tokens/record; torch threads "
                          f"{baseline['threads']}; RSS after load {mib(baseline['rss_after_load'])}"
                          + (f"; CUDA peak {mib(baseline['cuda_peak'])}" if baseline["cuda_peak"] else ""))
            if baseline["records"] != args.records:
                console.print(f"(a) ran on {baseline['records']} of the {args.records} records (every "
                              f"{args.records // baseline['records']}th); its seconds, tokens and records/s are scaled "
                              f"by {args.records / baseline['records']:.1f}: records are independent in this loop")
        for job in jobs:
            m = job["manifest"]
            console.print(f"(b) {job['name']}: manifest {json.dumps(m)}; stop reasons {job['stop_reasons']}; "
                          f"ran on worker pid {job['memory']['worker_pid']}, its VmHWM {mib(job['memory']['worker_hwm'])}, "
                          f"its threads that computed "
                          f"{job['memory']['worker_threads']}, API process VmHWM "
                          f"{mib(job['memory']['api']['hwm'])}; load average after {job['load_avg']}")
            for line in describe_timeline(job["timeline"], args.records):
                console.print(f"    {line}")
        if len(jobs) == 2 and jobs[0]["memory"]["worker_pid"] == jobs[1]["memory"]["worker_pid"]:
            console.print(f"cold - warm = {jobs[0]['seconds'] - jobs[1]['seconds']:.1f} s: the worker's model load "
                          f"and first-call warm-up, which only the cold job pays (run-to-run noise on a busy machine "
                          f"can be larger)")
        if baseline and jobs:
            cold = jobs[0]["manifest"]["outputTokenCount"] / jobs[0]["seconds"]
            tokens = baseline["output_tokens"] * args.records / baseline["records"]
            with_load = tokens / (baseline["generate_s"] * args.records / baseline["records"] + baseline["load_s"])
            console.print(f"ratio (b) cold job end to end / (a) loop: {cold / base_tps:.2f}x output tok/s "
                          f"({cold / with_load:.2f}x against (a) with its model load); goal >= 6x on CPU")
        if jobs and baseline and jobs[0]["memory"]["worker_threads"] != baseline["threads"]:
            console.print(f"[bold]note[/bold]: the baseline ran with {baseline['threads']} torch thread(s) but the "
                          f"worker computed on {jobs[0]['memory']['worker_threads']}: the server sets its workers' "
                          f"threads itself (cores // workers), whatever OMP_NUM_THREADS says, so --threads reaches "
                          f"the baseline only")
        for note in notes:
            console.print(note)
        console.print(f"environment: {platform.platform()}, python {platform.python_version()}, "
                      f"{os.cpu_count()} CPUs, --threads {args.threads or 'not set'}, load average after (a) {baseline['load_avg'] if baseline else '-'}; "
                      f"whole run {time.perf_counter() - run_started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
