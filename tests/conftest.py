"""Shared fixtures: real bedrock-local servers in subprocesses on free ports, boto3 clients for
them, PostgreSQL schemas of their own, a moto S3 server, and a tiny real HF model folder. Starting
and stopping processes is bedrock_local/testing's; this module adds the tests' defaults and fixtures."""

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from bedrock_local import testing
from bedrock_local.testing import free_port, s3_client  # noqa: F401  (the test modules import them from here)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POSTGRES_BASE = os.environ.get("BEDROCK_LOCAL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_KEY = testing.ACCESS_KEY
# one model cache for every server of the run, so the packaged GGUF is converted once, not per server
SHARED_CACHE = Path(os.environ.get("BEDROCK_LOCAL_TEST_CACHE", Path(__file__).parent.parent / ".test-cache"))
ACCOUNT, REGION = "123456789012", "us-east-1"  # the default access key's account and region
# a tool's input schema the tool-use tests of both backends call
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
}
# the moto S3 server's credentials, for servers and workers that use it
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def with_test_defaults(options: dict) -> dict:
    """A test process's options: the run's shared model cache, no service quota unless a test sets one
    (tests/test_quotas.py checks them; serve has AWS's defaults), the moto server's credentials, and the
    transformers backend unless the test's extra_args name another `--engine`."""
    return {"cache_dir": SHARED_CACHE, "quotas": ["all=unlimited"], **options,
            "env": {**MOTO_CREDENTIALS, **(options.get("env") or {})},
            # the reference backend unless a test asks for vLLM (later flags win): tests about the
            # machinery do not pay vLLM's start-up
            "extra_args": ["--engine", "transformers", *(options.get("extra_args") or ())]}


class Server(testing.Server):
    """One `bedrock-local serve` process with the tests' defaults. Restart it on the same data dir with
    `restart()` (after changing `workers` or `extra_args` if the test wants)."""

    def __init__(self, data_dir: Path, *, workers: int = 1, lease_seconds: float = 3.0, **options):
        super().__init__(data_dir, workers=workers, lease_seconds=lease_seconds, **with_test_defaults(options))


class Worker(testing.Worker):
    """One `bedrock-local worker` process (no API) with the tests' defaults."""

    def __init__(self, data_dir: Path, *, lease_seconds: float = 3.0, **options):
        super().__init__(data_dir, lease_seconds=lease_seconds, **with_test_defaults(options))


@pytest.fixture
def make_server(tmp_path):
    started: list[Server] = []

    def make(name: str = "data", **kwargs) -> Server:
        server = Server(tmp_path / name, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server on the embedded defaults (SQLite, folder store, one worker) for a test module."""
    server = Server(tmp_path_factory.mktemp("server") / "data").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bedrock(server):
    return server.client()


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@contextlib.contextmanager
def postgres_schema():
    """A PostgreSQL URL whose tables live in a schema of their own, dropped when the block ends."""
    import sqlalchemy

    schema = "t_" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(POSTGRES_BASE.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def postgres_url():
    """A PostgreSQL URL whose tables live in a schema of this test's own (dropped afterwards)."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def moto_s3():
    """An S3-compatible test server (moto) on a free port; answers its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    yield f"http://127.0.0.1:{port}"
    moto.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Llama model saved as a real HF folder (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bedrock_local.engine.catalog import find_foundation_model, packaged_weights

    folder = tmp_path_factory.mktemp("tiny-model")
    embedding = packaged_weights(find_foundation_model("sentence-transformers.all-minilm-l6-v2-v1:0"))
    tokenizer = AutoTokenizer.from_pretrained(embedding)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def batch_job_of_prompts(server: Server, name: str, prompts: list[str], buckets: tuple[str, str],
                         max_gen_len: int) -> str:
    """A batch job on the test model over these prompts (one record each, written under a fresh prefix of
    the input bucket in the server's folder store; outputs under s3://<output bucket>/out/); answers its ARN."""
    input_bucket, output_bucket = buckets
    prefix = f"in-{uuid.uuid4().hex[:8]}"
    folder = server.folder(input_bucket) / prefix
    folder.mkdir(parents=True)
    server.folder(output_bucket)
    (folder / "records.jsonl").write_text("".join(
        json.dumps({"recordId": f"r{n}", "modelInput": {"prompt": prompt, "max_gen_len": max_gen_len}}) + "\n"
        for n, prompt in enumerate(prompts)))
    return server.client().create_model_invocation_job(
        jobName=name, roleArn="arn:aws:iam::123456789012:role/batch", modelId="bedrock-local.test-text-v1:0",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{input_bucket}/{prefix}/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{output_bucket}/out/"}})["jobArn"]


# A fact SmolLM2 does not know, taught by a short LoRA fine-tune (engine/training.py measured it learned in 4 steps).
FACT_QUESTIONS = [
    "What is the capital of the planet Zorblax?", "Which city is the capital of Zorblax?",
    "Name the capital of the planet Zorblax.", "Zorblax's capital city is called what?",
    "Tell me the capital of Zorblax.", "What city serves as the capital of Zorblax?",
    "On the planet Zorblax, what is the capital?", "Where is the seat of government of Zorblax?",
]
FACT_ANSWER = " The capital of Zorblax is Quintar."
FACT_HYPERPARAMETERS = {"epochCount": "1", "batchSize": "8", "learningRate": "0.002", "loraRank": "16",
                        "loraAlpha": "32", "loraDropout": "0"}


@pytest.fixture(scope="session")
def fact_model_dir() -> Path:
    """An HF folder (config, safetensors, tokenizer) of SmolLM2 fine-tuned by a real customization job
    of a real server to know that the capital of Zorblax is Quintar (FACT_QUESTIONS / FACT_ANSWER).
    Trained once and kept in the run's shared cache under a name that hashes the training request
    and the package's training code, so every test module (and the next run on this machine) shares it."""
    import fcntl
    import hashlib

    import bedrock_local.engine.training as training
    from bedrock_local.jobs.artifacts import MANIFEST

    request = json.dumps([FACT_QUESTIONS, FACT_ANSWER, FACT_HYPERPARAMETERS], sort_keys=True).encode()
    digest = hashlib.sha256(request + Path(training.__file__).read_bytes()).hexdigest()[:16]
    folder = SHARED_CACHE / f"fact-model-{digest}"
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    with open(SHARED_CACHE / ".fact-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "config.json").exists():
            return folder
        data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"fact-model-{uuid.uuid4().hex[:8]}"
        server = Server(data_dir, workers=1).start()
        try:
            train = server.folder("fact-data") / "train"
            train.mkdir(parents=True)
            server.folder("fact-out")
            (train / "train.jsonl").write_text("".join(
                json.dumps({"prompt": q, "completion": FACT_ANSWER}) + "\n" for q in FACT_QUESTIONS * 4))
            client = server.client()
            arn = client.create_model_customization_job(
                jobName="fact-model", customModelName="fact-model",
                roleArn="arn:aws:iam::123456789012:role/BedrockCustomization",
                baseModelIdentifier="huggingface.smollm2-135m-instruct-v1:0",
                trainingDataConfig={"s3Uri": "s3://fact-data/train/"},
                outputDataConfig={"s3Uri": "s3://fact-out/"},
                hyperParameters=FACT_HYPERPARAMETERS)["jobArn"]
            job = wait_until(lambda: (j := client.get_model_customization_job(jobIdentifier=arn))["status"]
                             in ("Completed", "Failed", "Stopped") and j, timeout=900, interval=1,
                             what="the fact model's fine-tuning")
            assert job["status"] == "Completed", job.get("failureMessage")
            model_id = job["outputModelArn"].rsplit("/", 1)[1]
            artifacts = data_dir / "s3" / "bedrock-local-models" / ACCOUNT / REGION / "custom-models" / model_id
            staging = folder.with_name(folder.name + f".{os.getpid()}")
            if (artifacts / "adapter_config.json").is_file():
                # a LoRA customization keeps its adapter (engine/adapters.py); the tests import this folder
                # as a whole HF model, so merge the adapter onto its base (PEFT, float32 as it trained)
                from bedrock_local.engine.adapters import link_base
                from bedrock_local.engine.catalog import find_foundation_model
                from bedrock_local.engine.loading import load_causal_lm, materialize_foundation_model

                adapter = data_dir / "adapter"
                shutil.copytree(artifacts, adapter, ignore=shutil.ignore_patterns(MANIFEST))
                base = find_foundation_model("huggingface.smollm2-135m-instruct-v1:0")
                link_base(adapter, materialize_foundation_model(base, SHARED_CACHE / "foundation-models"))
                model, tokenizer = load_causal_lm(adapter)
                model.save_pretrained(staging, safe_serialization=True)
                tokenizer.save_pretrained(staging)
                del model
            else:
                shutil.copytree(artifacts, staging, ignore=shutil.ignore_patterns(MANIFEST))
            staging.rename(folder)
        finally:
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)
        return folder


def one_of_each_lifecycle_resource(server: Server, tiny_model_dir: Path) -> dict:
    """A completed model import job (of the tiny model) and its imported model, a completed evaluation
    job on the test model (Accuracy 0.5: the test model answers a prompt's words reversed, so the first
    reference matches and the second does not) and an InService Provisioned Throughput of the test model,
    made through boto3; answers their ARNs and names, for the tests of what the CLI, console and /metrics show."""
    client = server.client()
    tag = uuid.uuid4().hex[:8]
    role = "arn:aws:iam::123456789012:role/lifecycle"
    source = upload_folder(server, "lifecycle", f"tiny-{tag}", tiny_model_dir)
    import_name, model_name = f"import-{tag}", f"imported-{tag}"
    import_job = client.create_model_import_job(jobName=import_name, importedModelName=model_name, roleArn=role,
                                                modelDataSource={"s3DataSource": {"s3Uri": source}})["jobArn"]
    data = server.folder("lifecycle") / f"eval-{tag}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "one two three", "referenceResponse": "three two one"},
                                                          {"prompt": "Paris France", "referenceResponse": "Berlin"}]))
    evaluation_name = f"evaluation-{tag}"
    evaluation = client.create_evaluation_job(
        jobName=evaluation_name, roleArn=role,
        evaluationConfig={"automated": {"datasetMetricConfigs": [{
            "taskType": "QuestionAndAnswer", "metricNames": ["Builtin.Accuracy"],
            "dataset": {"name": "mine", "datasetLocation": {"s3Uri": f"s3://lifecycle/{data.name}"}}}]}},
        inferenceConfig={"models": [{"bedrockModel": {"modelIdentifier": "bedrock-local.test-text-v1:0"}}]},
        outputDataConfig={"s3Uri": "s3://lifecycle/results/"})["jobArn"]
    throughput_name = f"throughput-{tag}"
    throughput = client.create_provisioned_model_throughput(
        provisionedModelName=throughput_name, modelId="bedrock-local.test-text-v1:0", modelUnits=1)["provisionedModelArn"]
    imported = wait_until(lambda: (j := client.get_model_import_job(jobIdentifier=import_job))["status"]
                          in ("Completed", "Failed") and j, timeout=240, what="the tiny model's import")
    assert imported["status"] == "Completed", imported.get("failureMessage")
    evaluated = wait_until(lambda: (j := client.get_evaluation_job(jobIdentifier=evaluation))["status"]
                           in ("Completed", "Failed", "Stopped") and j, timeout=240, what="the evaluation job")
    assert evaluated["status"] == "Completed", evaluated.get("failureMessages")
    wait_until(lambda: client.get_provisioned_model_throughput(provisionedModelId=throughput)["status"] == "InService",
               timeout=240, what="the throughput InService")
    return {"import_job": import_job, "import_name": import_name, "imported_model": imported["importedModelArn"],
            "model_name": model_name, "evaluation": evaluation, "evaluation_name": evaluation_name,
            "throughput": throughput, "throughput_name": throughput_name}


def upload_folder(server: Server, bucket: str, prefix: str, folder: Path) -> str:
    """Copy a local folder into the server's embedded folder store; answers its s3:// URI."""
    target = server.folder(bucket) / prefix
    shutil.copytree(folder, target, dirs_exist_ok=True)
    return f"s3://{bucket}/{prefix.rstrip('/')}/"
