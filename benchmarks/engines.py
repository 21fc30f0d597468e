"""The engine benchmarks of issue 16: bedrock-local on vLLM against vLLM itself, on the same prompts and
machine, with the transformers backend as reference rows.

`batch`: the same chat-templated story prompts, greedy, `maxTokens` N (no forced length on either side:
the prompts ask for long stories, and every row counts the tokens it really generated):
- vLLM offline: `LLM.generate` in a child process (float32, eager, the same max_num_seqs and KV-cache
  size the server's engine gets); cold = `LLM(...)` + generate, warm = a second generate;
- the job: `bedrock-local serve --engine vllm`, CreateModelInvocationJob (Converse records) polled until
  Completed; cold (the worker loads the model inside the job) and warm (a second job);
- reference rows: the same job on `--engine transformers` (float32), and the transformers backend's
  `TextGenerator.generate` (padded batches of 32) in a child process in float32 and in bfloat16.
The ratio column is tokens/s over vLLM offline's, cold against cold and warm against warm.

`serving`: 1 and 32 concurrent streaming clients for `--seconds` each: boto3 ConverseStream against
`bedrock-local serve --engine vllm` (on-demand SmolLM2) and the OpenAI client's streaming chat
completions against `vllm serve` on the same folder (float32, eager, same max_num_seqs and KV cache).
Output tokens/s (the servers' own counts: Converse usage, the OpenAI stream's usage), median time to the
first token, and the CPU seconds the clients' own process used per second (on 2 cores the clients compete
with generation: boto3 signs every request and parses the event stream).

`multi-lora`: 8 LoRA adapters of SmolLM2 (PEFT, random non-zero weights, rank 8), requests spread
round-robin over them, against the base model alone, both through bedrock-local's vLLM serving engine
(engine/vllm_serving.py VllmServer, the class a serving node runs) in this process: output tokens/s and the
peak RSS of the engine's processes.

    python -m benchmarks.engines batch --records 256 --new-tokens 64
    python -m benchmarks.engines serving --seconds 30
    python -m benchmarks.engines multi-lora --requests 64
    python -m benchmarks.engines static-cache --batch 512 --new-tokens 64     # on a GPU: PYTHONPATH=. from the source tree

`static-cache`: the transformers backend's batch engine (TextGenerator) with the dynamic KV cache against
the static one (which transformers compiles on CUDA), on a random-weight model of SmolLM2-135M's shape.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from benchmarks.batch_inference import MODEL_ID, make_prompts, run_job
from benchmarks.batch_inference import Server as BatchServer
from benchmarks.common import loadavg, materialized_folder, percentile, work_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

DEFAULT_CACHE = Path(os.environ.get("BEDROCK_LOCAL_BENCH_CACHE", Path.home() / ".cache" / "bedrock-local-bench"))
MAX_SEQS = 32
KV_CACHE_GIB = 2.0


def chat_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tree_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) summed over a process and its descendants, in bytes."""
    from benchmarks.batch_inference import proc_memory, process_tree

    return sum(proc_memory(p).get("hwm") or 0 for p in process_tree(pid))


# --------------------------------------------------------------------------------------------
# batch: child processes


def vllm_offline_child(spec: dict) -> dict:
    from transformers import AutoTokenizer

    if spec.get("same_environment"):  # the environment bedrock-local's engines start in
        from bedrock_local.engine.vllm_engine import prepare_environment

        prepare_environment()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    prompts = [TokensPrompt(prompt_token_ids=chat_ids(tokenizer, p)) for p in spec["prompts"]]
    params = SamplingParams(max_tokens=spec["new_tokens"], temperature=0.0)
    started = time.perf_counter()
    llm = LLM(model=spec["model_dir"], dtype="float32", enforce_eager=True, max_num_seqs=MAX_SEQS,
              kv_cache_memory_bytes=int(KV_CACHE_GIB * 1024 ** 3), seed=0)
    start_s = time.perf_counter() - started
    rows = {}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0 + (start_s if name == "cold" else 0.0)
        rows[name] = {"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}
    rows["start_s"] = start_s
    rows["peak_rss"] = tree_hwm(os.getpid())
    return rows


def transformers_child(spec: dict) -> dict:
    import torch

    from bedrock_local.engine.formats import TextRequest
    from bedrock_local.engine.generation import TextGenerator
    from bedrock_local.engine.loading import load_causal_lm

    dtype = getattr(torch, spec["dtype"])
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(Path(spec["model_dir"]), dtype=torch.float32)
    generator = TextGenerator(model, tokenizer, dtype=dtype)
    load_s = time.perf_counter() - started
    requests = [TextRequest(messages=[{"role": "user", "content": p}], prompt=None, system=None,
                            max_tokens=spec["new_tokens"], temperature=0.0, top_p=1.0) for p in spec["prompts"]]
    t0 = time.perf_counter()
    results = generator.generate(requests)
    seconds = time.perf_counter() - t0
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed: {bad[0]}")
    return {"seconds": seconds, "tokens": sum(r.output_tokens for r in results), "load_s": load_s,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_child(kind: str, spec: dict, work: Path) -> dict:
    spec_file = work / f"{kind}-{uuid.uuid4().hex[:6]}.json"
    spec_file.write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "benchmarks.engines", "child", kind, str(spec_file)], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    return json.loads(spec_file.with_suffix(".result.json").read_text())


def job_rows(engine: str, prompts: list[str], new_tokens: int, cache_dir: Path, work: Path, say) -> dict:
    server = BatchServer(work / f"data-{engine}", cache_dir, workers=1)
    server.extra_args = ["--engine", engine, "--vllm-kv-cache-gib", str(KV_CACHE_GIB)]
    server.start()
    rows = {}
    try:
        bedrock = server.client()
        for name in ("cold", "warm"):
            say(f"  job on --engine {engine}, {name} (load average {loadavg()}) ...")
            job = run_job(server, bedrock, MODEL_ID, prompts, new_tokens, f"bench-{engine}-{name}-"
                          f"{uuid.uuid4().hex[:6]}", 0.5)
            rows[name] = {"seconds": job["seconds"], "tokens": job["manifest"]["outputTokenCount"],
                          "peak_rss": tree_hwm(job["memory"]["worker_pid"]),
                          "records": job["manifest"]["processedRecordCount"],
                          "errors": job["manifest"].get("errorRecordCount", 0)}
    finally:
        server.stop()
    return rows


def main_batch(args, console) -> int:
    from rich.table import Table

    model_dir, _ = materialized_folder(args.cache_dir)
    prompts = make_prompts(args.records)
    spec = {"model_dir": str(model_dir), "prompts": prompts, "new_tokens": args.new_tokens}
    with work_dir("bedrock-local-bench-engines-", args.keep, console.print) as work:
        console.print(f"vLLM offline LLM.generate, vLLM's default environment (load average {loadavg()}) ...")
        default = run_child("vllm", spec, work)
        console.print(f"vLLM offline LLM.generate, bedrock-local's vLLM environment (load average {loadavg()}) ...")
        offline = run_child("vllm", {**spec, "same_environment": True}, work)
        job_vllm = job_rows("vllm", prompts, args.new_tokens, args.cache_dir, work, console.print)
        rows = [("vLLM offline LLM.generate (float32, eager)", offline["cold"], offline["warm"], offline["peak_rss"]),
                ("  the same, vLLM's default environment", default["cold"], default["warm"], default["peak_rss"]),
                ("job through the API, --engine vllm", job_vllm["cold"], job_vllm["warm"],
                 max(job_vllm["cold"]["peak_rss"], job_vllm["warm"]["peak_rss"]))]
        if not args.no_reference:
            job_tf = job_rows("transformers", prompts, args.new_tokens, args.cache_dir, work, console.print)
            rows.append(("job through the API, --engine transformers (float32)", job_tf["cold"], job_tf["warm"],
                         max(job_tf["cold"]["peak_rss"], job_tf["warm"]["peak_rss"])))
            for dtype in ("float32", "bfloat16"):
                console.print(f"transformers TextGenerator.generate, {dtype} (load average {loadavg()}) ...")
                tf = run_child("transformers", {**spec, "dtype": dtype}, work)
                cold = {"seconds": tf["seconds"] + tf["load_s"], "tokens": tf["tokens"]}
                rows.append((f"transformers TextGenerator.generate, padded batches of 32 ({dtype})", cold,
                             {"seconds": tf["seconds"], "tokens": tf["tokens"]}, tf["peak_rss"]))
    table = Table(title=f"Batch generation, SmolLM2-135M-Instruct, {args.records} records x up to "
                        f"{args.new_tokens} new tokens, greedy; max_num_seqs {MAX_SEQS}, KV cache {KV_CACHE_GIB:g} GiB",
                  title_justify="left")
    for column in ("path", "output tokens", "cold s", "cold tok/s", "cold vs vLLM", "warm s", "warm tok/s",
                   "warm vs vLLM", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "path" else "right")
    base_cold = offline["cold"]["tokens"] / offline["cold"]["seconds"]
    base_warm = offline["warm"]["tokens"] / offline["warm"]["seconds"]
    for label, cold, warm, rss in rows:
        cold_tps, warm_tps = cold["tokens"] / cold["seconds"], warm["tokens"] / warm["seconds"]
        table.add_row(label, f"{warm['tokens']:,}", f"{cold['seconds']:.1f}", f"{cold_tps:.1f}",
                      f"{cold_tps / base_cold:.2f}x", f"{warm['seconds']:.1f}", f"{warm_tps:.1f}",
                      f"{warm_tps / base_warm:.2f}x", f"{rss / 2 ** 20:,.0f}")
    console.print(table)
    from bedrock_local.engine.vllm_engine import SMALL_MACHINE_CORES

    console.print(f"vLLM offline start-up (LLM()): {offline['start_s']:.1f} s; load average now {loadavg()}; "
                  f"cpus {os.cpu_count()}. bedrock-local's vLLM environment: up to {SMALL_MACHINE_CORES} cores, "
                  f"VLLM_CPU_NUM_OF_RESERVED_CPU=0 (vLLM's default keeps one core for its scheduler); the vLLM "
                  f"offline row runs in it, the row below it in vLLM's default")
    return 0


# --------------------------------------------------------------------------------------------
# serving


class ServingServer(BatchServer):
    """`bedrock-local serve --engine vllm` with one serving node; clients of any service."""

    def client(self, **options):
        from bedrock_local import testing
        from benchmarks.common import BENCH_ACCESS_KEY, BENCH_SECRET_KEY

        return testing.Server.client(self, access_key=BENCH_ACCESS_KEY, secret_key=BENCH_SECRET_KEY,
                                     retries={"max_attempts": 3}, **options)


def converse_stream_client(client, prompt: str, max_tokens: int) -> tuple[float | None, int]:
    started = time.perf_counter()
    first, tokens = None, 0
    response = client.converse_stream(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": prompt}]}],
                                      inferenceConfig={"maxTokens": max_tokens, "temperature": 0.0})
    for event in response["stream"]:
        if "contentBlockDelta" in event and first is None:
            first = time.perf_counter() - started
        if "metadata" in event:
            tokens = event["metadata"]["usage"]["outputTokens"]
    return first, tokens


def openai_stream_client(client, model: str, prompt: str, max_tokens: int) -> tuple[float | None, int]:
    started = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0.0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first, tokens


def run_cell(make_client, call, prompts: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads calling `call(client, prompt)` back to back for `seconds`."""
    results: list[tuple[float | None, int]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        client = make_client()
        n = index
        while time.monotonic() < deadline:
            outcome = call(client, prompts[n % len(prompts)])
            with lock:
                results.append(outcome)
            n += clients

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    firsts = [f for f, _ in results if f is not None]
    return {"requests": len(results), "tokens": sum(t for _, t in results), "wall": wall,
            "ttft_p50": percentile(firsts, 0.5) if firsts else float("nan"), "client_cpu": cpu / wall}


def start_vllm_serve(model_dir: Path, port: int, log: Path):
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager",
               "--max-num-seqs", str(MAX_SEQS), "--kv-cache-memory-bytes", str(int(KV_CACHE_GIB * 1024 ** 3)),
               "--host", "127.0.0.1", "--port", str(port), "--seed", "0"]
    handle = open(log, "wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vllm serve exited {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vllm serve did not start; see {log}")


def stop_process_group(process) -> None:
    with _suppress():
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with _suppress():
            os.killpg(process.pid, signal.SIGKILL)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))


def main_serving(args, console) -> int:
    from rich.table import Table

    from bedrock_local.testing import free_port

    model_dir, _ = materialized_folder(args.cache_dir)
    prompts = make_prompts(64)
    cells: dict[tuple[str, int], dict] = {}
    with work_dir("bedrock-local-bench-engines-serving-", args.keep, console.print) as work:
        server = ServingServer(work / "data", args.cache_dir, workers=0)
        server.extra_args = ["--serving-workers", "1", "--engine", "vllm", "--vllm-kv-cache-gib", str(KV_CACHE_GIB)]
        server.start()
        try:
            import boto3

            def boto_client():  # a session per thread: boto3 sessions are not thread-safe
                return server.client(service="bedrock-runtime", session=boto3.Session(), read_timeout=600)

            console.print("warming bedrock-local's serving node (the first call loads the model) ...")
            converse_stream_client(boto_client(), prompts[0], 8)
            for clients in args.clients:
                console.print(f"  bedrock-local ConverseStream, {clients} clients (load average {loadavg()}) ...")
                cells[("bedrock-local", clients)] = run_cell(
                    boto_client, lambda c, p: converse_stream_client(c, p, args.max_tokens), prompts, clients,
                    args.seconds)
        finally:
            server.stop()
        port = free_port()
        console.print("starting vllm serve ...")
        process = start_vllm_serve(model_dir, port, work / "vllm-serve.log")
        try:
            from openai import OpenAI

            def openai_client():
                return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)

            openai_stream_client(openai_client(), "smollm2", prompts[0], 8)
            for clients in args.clients:
                console.print(f"  vllm serve streaming chat completions, {clients} clients "
                              f"(load average {loadavg()}) ...")
                cells[("vllm serve", clients)] = run_cell(
                    openai_client, lambda c, p: openai_stream_client(c, "smollm2", p, args.max_tokens), prompts,
                    clients, args.seconds)
        finally:
            stop_process_group(process)
    table = Table(title=f"Streaming serving, SmolLM2-135M-Instruct float32 eager, up to {args.max_tokens} new tokens "
                        f"per request, greedy, {args.seconds:g} s per cell", title_justify="left")
    for column in ("server", "clients", "requests", "output tok/s", "vs vllm serve", "TTFT p50 ms",
                   "TTFT vs vllm serve", "client CPU s/s"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for clients in args.clients:
        ref = cells[("vllm serve", clients)]
        for name in ("bedrock-local", "vllm serve"):
            cell = cells[(name, clients)]
            tps = cell["tokens"] / cell["wall"]
            table.add_row(name, str(clients), str(cell["requests"]), f"{tps:.1f}",
                          f"{tps / (ref['tokens'] / ref['wall']):.2f}x", f"{cell['ttft_p50'] * 1000:.0f}",
                          f"{cell['ttft_p50'] / ref['ttft_p50']:.2f}x", f"{cell['client_cpu']:.2f}")
    console.print(table)
    return 0


# --------------------------------------------------------------------------------------------
# multi-LoRA


def make_adapters(model_dir: Path, folder: Path, count: int) -> list[Path]:
    """`count` PEFT LoRA adapters (rank 8, q/v projections) of the model, with random non-zero weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for index in range(count):
        path = folder / f"adapter-{index}"
        if not (path / "adapter_config.json").exists():
            torch.manual_seed(index)
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0, 0.01)
            model.save_pretrained(path)
        paths.append(path)
    return paths


def lora_child(spec: dict) -> dict:
    from bedrock_local.engine.continuous import Failed, Finished
    from bedrock_local.engine.formats import TextRequest
    from bedrock_local.engine.vllm_serving import VllmServer

    server = VllmServer(Path(spec["model_dir"]), kv_cache_gib=KV_CACHE_GIB, max_batch=MAX_SEQS,
                        enable_lora=spec["enable_lora"])
    server.start()
    adapters = [None] if not spec["adapters"] else spec["adapters"]
    done = threading.Semaphore(0)
    tokens = []

    def on_event(event):
        if isinstance(event, Finished):
            tokens.append(event.result.output_tokens)
            done.release()
        elif isinstance(event, Failed):
            tokens.append(0)
            done.release()

    def request(prompt: str) -> TextRequest:
        return TextRequest(messages=[{"role": "user", "content": prompt}], prompt=None, system=None,
                           max_tokens=spec["new_tokens"], temperature=0.0, top_p=1.0)

    # warm every adapter once (vLLM loads an adapter on its first request)
    for adapter in adapters:
        server.submit(request("Hello"), on_event, adapter=adapter)
    for _ in adapters:
        done.acquire()
    tokens.clear()
    started = time.perf_counter()
    for index, prompt in enumerate(spec["prompts"]):
        server.submit(request(prompt), on_event, adapter=adapters[index % len(adapters)])
    for _ in spec["prompts"]:
        done.acquire()
    seconds = time.perf_counter() - started
    peak = tree_hwm(os.getpid())
    server.close(drain=False)
    return {"seconds": seconds, "tokens": sum(tokens), "peak_rss": peak}


def main_multi_lora(args, console) -> int:
    from rich.table import Table

    model_dir, _ = materialized_folder(args.cache_dir)
    adapters = make_adapters(model_dir, args.cache_dir / "bench-lora-adapters", args.adapters)
    prompts = make_prompts(args.requests)
    spec = {"model_dir": str(model_dir), "prompts": prompts, "new_tokens": args.new_tokens}
    with work_dir("bedrock-local-bench-engines-lora-", args.keep, console.print) as work:
        console.print("base model alone, on an engine without LoRA (a plain model's engine) ...")
        alone = run_child("lora", {**spec, "adapters": [], "enable_lora": False}, work)
        console.print("base model alone, on an engine with LoRA enabled (an adapters' engine) ...")
        alone_lora = run_child("lora", {**spec, "adapters": [], "enable_lora": True}, work)
        console.print(f"{len(adapters)} adapters ...")
        many = run_child("lora", {**spec, "adapters": [str(a) for a in adapters], "enable_lora": True}, work)
    table = Table(title=f"Multi-LoRA on one vLLM engine (VllmServer), SmolLM2-135M, {args.requests} requests x up to "
                        f"{args.new_tokens} tokens, greedy", title_justify="left")
    for column in ("models", "output tokens", "seconds", "output tok/s", "vs base alone", "peak RSS MiB",
                   "memory vs base alone"):
        table.add_column(column, justify="left" if column == "models" else "right")
    for label, row in (("base model alone (engine without LoRA)", alone),
                       ("base model alone (engine with LoRA enabled)", alone_lora),
                       (f"{len(adapters)} LoRA adapters of it, round-robin (engine with LoRA)", many)):
        tps = row["tokens"] / row["seconds"]
        table.add_row(label, f"{row['tokens']:,}", f"{row['seconds']:.1f}", f"{tps:.1f}",
                      f"{tps / (alone['tokens'] / alone['seconds']):.2f}x", f"{row['peak_rss'] / 2 ** 20:,.0f}",
                      f"{row['peak_rss'] / alone['peak_rss']:.2f}x")
    console.print(table)
    return 0


# --------------------------------------------------------------------------------------------
# the transformers backend's GPU path


def main_static_cache(args, console) -> int:
    """TextGenerator.generate (the job path's engine code) on a random-weight model of SmolLM2-135M's shape:
    the dynamic KV cache against the static cache (compiled forward on CUDA), --batch prompts per call."""
    import torch
    from rich.table import Table
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bedrock_local.engine.formats import TextRequest
    from bedrock_local.engine.generation import TextGenerator
    from benchmarks.batch_inference import SMOLLM2_SHAPE

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir or materialized_folder(args.cache_dir)[0])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE, bos_token_id=1, eos_token_id=2)).to(getattr(torch, args.dtype))
    prompts = make_prompts(args.batch)
    requests = [TextRequest(messages=[{"role": "user", "content": p}], prompt=None, system=None,
                            max_tokens=args.new_tokens, temperature=0.0, top_p=1.0) for p in prompts]
    table = Table(title=f"TextGenerator on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
                        f"SmolLM2 shape, random weights, {args.dtype}, {args.batch} x {args.new_tokens} forced tokens",
                  title_justify="left")
    for column in ("KV cache", "first call s", "steady s", "output tok/s (steady)", "vs dynamic"):
        table.add_column(column, justify="left" if column == "KV cache" else "right")
    base = None
    for static in (False, True):
        generator = TextGenerator(model, tokenizer, device=device, static_cache=static)
        timings = []
        for _ in range(args.rounds + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results = generator.generate(requests, max_batch_size=args.batch, min_new_tokens=args.new_tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - t0)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(results)} requests failed: {failed[0]}")
        tokens = sum(r.output_tokens for r in results)
        steady = min(timings[1:])
        tps = tokens / steady
        base = base or tps
        table.add_row("static (compiled on CUDA)" if static else "dynamic", f"{timings[0]:.2f}", f"{steady:.2f}",
                      f"{tps:,.0f}", f"{tps / base:.2f}x")
    console.print(table)
    return 0


# --------------------------------------------------------------------------------------------


CHILDREN = {"vllm": vllm_offline_child, "transformers": transformers_child, "lora": lora_child}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--keep", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    batch = commands.add_parser("batch")
    batch.add_argument("--records", type=int, default=256)
    batch.add_argument("--new-tokens", type=int, default=64)
    batch.add_argument("--no-reference", action="store_true", help="only vLLM offline and the job on vLLM")
    serving = commands.add_parser("serving")
    serving.add_argument("--seconds", type=float, default=30.0)
    serving.add_argument("--max-tokens", type=int, default=64)
    serving.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    lora = commands.add_parser("multi-lora")
    lora.add_argument("--adapters", type=int, default=8)
    lora.add_argument("--requests", type=int, default=64)
    lora.add_argument("--new-tokens", type=int, default=64)
    static = commands.add_parser("static-cache", help="the transformers backend's GPU path (runs on the CPU too)")
    static.add_argument("--batch", type=int, default=512)
    static.add_argument("--new-tokens", type=int, default=64)
    static.add_argument("--rounds", type=int, default=2)
    static.add_argument("--dtype", default="bfloat16")
    static.add_argument("--tokenizer-dir", type=Path)
    child = commands.add_parser("child")
    child.add_argument("kind", choices=sorted(CHILDREN))
    child.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    if args.command == "child":
        result = CHILDREN[args.kind](json.loads(args.spec.read_text()))
        args.spec.with_suffix(".result.json").write_text(json.dumps(result))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from rich.console import Console

    console = Console(width=160)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    return {"batch": main_batch, "serving": main_serving, "multi-lora": main_multi_lora,
            "static-cache": main_static_cache}[args.command](args, console)


if __name__ == "__main__":
    sys.exit(main())
