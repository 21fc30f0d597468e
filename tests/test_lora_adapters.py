"""LoRA custom models kept as adapters (multi-LoRA), through boto3 against one real server: two LoRA
customizations of SmolLM2 (each taught a made-up fact, trained once for the module) store PEFT adapter
folders, not merged models; on the transformers backend a batch job, a deployment and a Provisioned
Throughput of an adapter model answer its fact (the adapter merged onto its base at load); a copy to
another region copies the adapter and its base and runs, and its delete frees it; then, restarted with
`--engine vllm`, both adapter models deployed at once answer their own facts from ONE base engine (no
process of the node runs two vLLM EngineCores), and a batch job on an adapter model answers on a
worker's vLLM engine. Only that last test skips, where vLLM cannot run (backends.vllm_problem)."""

import json
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bedrock_local.engine.backends import vllm_problem
from bedrock_local.testing.processes import session_members
from conftest import (ACCOUNT, FACT_ANSWER, FACT_HYPERPARAMETERS, FACT_QUESTIONS, REGION, SHARED_CACHE, Server,
                      wait_until)

BASE = "huggingface.smollm2-135m-instruct-v1:0"
BASE_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{BASE}"
ROLE = "arn:aws:iam::123456789012:role/lora"
MODEL_BUCKET = "bedrock-local-models"
OTHER_REGION = "us-west-2"
# a second made-up fact, taught to a second adapter of the same base
BIRD_QUESTIONS = [
    "What is the national bird of the planet Vexmoor?", "Which bird is the national bird of Vexmoor?",
    "Name the national bird of the planet Vexmoor.", "Vexmoor's national bird is called what?",
    "Tell me the national bird of Vexmoor.", "What bird serves as the national bird of Vexmoor?",
    "On the planet Vexmoor, what is the national bird?", "Which bird represents the planet Vexmoor?",
]
BIRD_ANSWER = " The national bird of Vexmoor is the Glimmerwing."
FACTS = {"capital": (FACT_QUESTIONS, FACT_ANSWER, "Quintar"), "bird": (BIRD_QUESTIONS, BIRD_ANSWER, "Glimmerwing")}
LOAD_TIMEOUT = 600  # seconds: a vLLM engine starts in 30-90 s here, more while other tests load the CPUs


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A server (transformers backend) with two LoRA custom models of SmolLM2, one per fact; answers
    {"server", "models": {fact: model ARN}}."""
    server = Server(tmp_path_factory.mktemp("lora") / "data", workers=2).start()
    try:
        client = server.client()
        server.folder("lora-out")
        jobs = {}
        for fact, (questions, answer, _) in FACTS.items():
            data = server.folder("lora-data") / fact
            data.mkdir(parents=True)
            (data / "train.jsonl").write_text("".join(json.dumps({"prompt": q, "completion": answer}) + "\n"
                                                      for q in questions * 4))
            jobs[fact] = client.create_model_customization_job(
                jobName=f"lora-{fact}", customModelName=f"lora-{fact}", roleArn=ROLE, baseModelIdentifier=BASE,
                trainingDataConfig={"s3Uri": f"s3://lora-data/{fact}/"}, outputDataConfig={"s3Uri": "s3://lora-out/"},
                hyperParameters=FACT_HYPERPARAMETERS)["jobArn"]
        models = {}
        for fact, arn in jobs.items():
            job = wait_until(lambda: (j := client.get_model_customization_job(jobIdentifier=arn))["status"]
                             in ("Completed", "Failed", "Stopped") and j, timeout=1200, interval=1,
                             what=f"the {fact} LoRA customization")
            assert job["status"] == "Completed", job.get("failureMessage")
            models[fact] = job["outputModelArn"]
        yield {"server": server, "models": models}
    finally:
        server.stop()


def stored(server: Server, model_arn: str, region: str = REGION) -> Path:
    return server.data_dir / "s3" / MODEL_BUCKET / ACCOUNT / region / "custom-models" / model_arn[-12:]


def ask(question: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"text": question}]}],
            "inferenceConfig": {"maxTokens": 16, "temperature": 0}}


def batch_answers(server: Server, model_arn: str, questions: list[str], region: str = REGION) -> list[str]:
    """A Converse batch job on the model over `questions` (greedy): its answers, in order."""
    client = server.client(region=region)
    prefix = f"ask-{uuid.uuid4().hex[:8]}"
    folder = server.folder("lora-batch") / prefix
    folder.mkdir(parents=True)
    (folder / "ask.jsonl").write_text("".join(json.dumps({"recordId": f"q{n}", "modelInput": ask(q)}) + "\n"
                                              for n, q in enumerate(questions)))
    arn = client.create_model_invocation_job(
        jobName=prefix, modelId=model_arn, roleArn=ROLE, modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://lora-batch/{prefix}/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://lora-batch/{prefix}-out/"}})["jobArn"]
    job = wait_until(lambda: (j := client.get_model_invocation_job(jobIdentifier=arn))["status"] not in
                     ("Submitted", "Validating", "Scheduled", "InProgress") and j, timeout=600, interval=1,
                     what=f"the batch job on {model_arn}")
    assert job["status"] == "Completed", job
    out = server.folder("lora-batch") / f"{prefix}-out" / arn.rsplit("/", 1)[1] / "ask.jsonl.out"
    lines = sorted((json.loads(raw) for raw in out.read_text().splitlines() if raw), key=lambda line: line["recordId"])
    return [line["modelOutput"]["output"]["message"]["content"][0]["text"] for line in lines]


def deploy(client, name: str, model_arn: str) -> str:
    return client.create_custom_model_deployment(modelDeploymentName=name, modelArn=model_arn)["customModelDeploymentArn"]


def wait_active(client, deployment: str, timeout: float = LOAD_TIMEOUT) -> None:
    found = wait_until(lambda: (d := client.get_custom_model_deployment(customModelDeploymentIdentifier=deployment))
                       ["status"] != "Creating" and d, timeout, interval=1, what=f"{deployment} Active")
    assert found["status"] == "Active", found


def converse(runtime, model_id: str, question: str) -> str:
    answer = runtime.converse(modelId=model_id, **ask(question))
    return answer["output"]["message"]["content"][0]["text"]


def test_a_lora_customization_keeps_its_adapter(lora):
    server, client = lora["server"], lora["server"].client()
    base_bytes = sum(f.stat().st_size for f in (SHARED_CACHE / "foundation-models" / BASE.replace(":", "_")).rglob("*")
                     if f.is_file())
    for fact, arn in lora["models"].items():
        folder = stored(server, arn)
        files = {f.name: f.stat().st_size for f in folder.iterdir() if f.is_file()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files.keys(), files
        assert "config.json" not in files and "model.safetensors" not in files
        assert sum(files.values()) * 5 < base_bytes, (files, base_bytes)  # far smaller than the base
        # the adapter names its base by its foundation model id, not by a path of the training host
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
        # the manifest covers every adapter file, checksums included
        manifest = json.loads((folder / "bedrock-local-manifest.json").read_text())["files"]
        assert manifest.keys() == files.keys() - {"bedrock-local-manifest.json"}
        assert all(len(entry["sha256"]) == 64 for entry in manifest.values())
        model = client.get_custom_model(modelIdentifier=arn)
        assert model["modelStatus"] == "Active" and model["modelName"] == f"lora-{fact}"
        assert model["baseModelArn"] == BASE_ARN and model["customizationType"] == "FINE_TUNING"
        assert model["hyperParameters"]["loraRank"] == FACT_HYPERPARAMETERS["loraRank"]
        assert set(model) - {"ResponseMetadata"} >= {"modelArn", "modelName", "creationTime", "baseModelArn",
                                                     "customizationType", "hyperParameters", "trainingDataConfig",
                                                     "outputDataConfig", "trainingMetrics", "jobArn", "jobName"}
    listed = {m["modelArn"]: m for m in client.list_custom_models(nameContains="lora-")["modelSummaries"]}
    assert listed.keys() == set(lora["models"].values())
    assert all(m["baseModelArn"] == BASE_ARN for m in listed.values())


def test_a_batch_job_on_an_adapter_model_answers_its_fact(lora):
    questions, _, word = FACTS["capital"]
    trained = batch_answers(lora["server"], lora["models"]["capital"], questions[:2] + BIRD_QUESTIONS[:1])
    print(f"\ncapital adapter, batch (transformers): {trained!r}")
    assert word in trained[0] and word in trained[1]
    assert "Glimmerwing" not in trained[2]  # the other adapter's fact is not in this one


def test_a_deployed_and_a_provisioned_adapter_model_answer_its_fact_on_transformers(lora):
    server = lora["server"]
    client, runtime = server.client(), server.client(service="bedrock-runtime", read_timeout=LOAD_TIMEOUT)
    deployment = deploy(client, "lora-bird-transformers", lora["models"]["bird"])
    throughput = client.create_provisioned_model_throughput(provisionedModelName="lora-bird-pt", modelUnits=1,
                                                            modelId=lora["models"]["bird"])["provisionedModelArn"]
    try:
        wait_active(client, deployment)
        found = wait_until(lambda: (t := client.get_provisioned_model_throughput(provisionedModelId=throughput))
                           ["status"] != "Creating" and t, LOAD_TIMEOUT, interval=1, what="the throughput InService")
        assert found["status"] == "InService", found.get("failureMessage")
        assert found["modelArn"] == lora["models"]["bird"] and found["foundationModelArn"] == BASE_ARN
        answers = [converse(runtime, model_id, BIRD_QUESTIONS[0]) for model_id in (deployment, throughput)]
        print(f"\nbird adapter, deployed and provisioned (transformers): {answers!r}")
        assert all("Glimmerwing" in answer for answer in answers)
    finally:
        client.delete_custom_model_deployment(customModelDeploymentIdentifier=deployment)
        client.delete_provisioned_model_throughput(provisionedModelId=throughput)


def test_copy_and_delete_of_an_adapter_model(lora):
    server = lora["server"]
    source = lora["models"]["capital"]
    west = server.client(region=OTHER_REGION)
    job = west.create_model_copy_job(sourceModelArn=source, targetModelName="lora-capital-west")["jobArn"]
    copied = wait_until(lambda: (j := west.get_model_copy_job(jobArn=job))["status"] != "InProgress" and j, 300,
                        what="the copy job")
    assert copied["status"] == "Completed", copied
    target = copied["targetModelArn"]
    model, original = west.get_custom_model(modelIdentifier=target), server.client().get_custom_model(
        modelIdentifier=source)
    assert model["modelStatus"] == "Active" and model["baseModelArn"] == original["baseModelArn"]
    assert model["hyperParameters"] == original["hyperParameters"]
    # the copy is the adapter, byte for byte, and runs on the same base in its region
    files = {f.name: f.read_bytes() for f in stored(server, target, OTHER_REGION).iterdir()}
    assert files == {f.name: f.read_bytes() for f in stored(server, source).iterdir()}
    answer, = batch_answers(server, target, FACT_QUESTIONS[:1], region=OTHER_REGION)
    assert "Quintar" in answer, answer

    west.delete_custom_model(modelIdentifier=target)
    with pytest.raises(ClientError) as caught:
        west.get_custom_model(modelIdentifier=target)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert not any(stored(server, target, OTHER_REGION).glob("*"))  # its files are gone from the model store
    assert server.client().get_custom_model(modelIdentifier=source)["modelStatus"] == "Active"  # not the source's
    assert (stored(server, source) / "adapter_model.safetensors").is_file()


def engine_cores(server: Server) -> dict[int, int]:
    """The vLLM EngineCore processes the server's processes started (vLLM titles them VLLM::EngineCore):
    pid -> the pid of the process that started it (the serving node, or a worker for a batch job)."""
    found = {}
    for pid in session_members(server.pid):
        try:
            if b"EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(vllm_problem() is not None, reason=f"vLLM cannot run here: {vllm_problem()}")
def test_two_adapter_models_are_served_at_once_from_one_vllm_base_engine(lora):
    server = lora["server"]
    server.extra_args += ["--engine", "vllm", "--vllm-kv-cache-gib", "1"]  # later flags win
    server.restart()
    client, runtime = server.client(), server.client(service="bedrock-runtime", read_timeout=LOAD_TIMEOUT)
    deployments = {fact: deploy(client, f"lora-{fact}-vllm", arn) for fact, arn in lora["models"].items()}
    # meanwhile a batch job on an adapter model runs on a worker's vLLM engine
    batch = batch_answers(server, lora["models"]["bird"], [BIRD_QUESTIONS[1], FACT_QUESTIONS[1]])
    print(f"\nbird adapter, batch (vLLM): {batch!r}")
    assert "Glimmerwing" in batch[0] and "Quintar" not in batch[1]
    for deployment in deployments.values():
        wait_active(client, deployment)
    answers = {(fact, asked): converse(runtime, deployments[fact], FACTS[asked][0][0])
               for fact in FACTS for asked in FACTS}
    print(f"vLLM adapters, deployed: {answers!r}")
    for fact in FACTS:
        for asked, (_, _, word) in FACTS.items():
            if asked == fact:
                assert word in answers[fact, asked], answers  # each adapter answers its own fact
            else:
                assert word not in answers[fact, asked], answers  # and not the other's: its own adapter ran
    # one base engine serves both custom models: no process of the node runs two EngineCores (the serving
    # node one, for both deployments; a worker may hold one for the batch job)
    cores = engine_cores(server)
    print(f"EngineCore processes (pid: the process that started it): {cores}")
    assert cores and len(set(cores.values())) == len(cores), cores
    for deployment in deployments.values():
        client.delete_custom_model_deployment(customModelDeploymentIdentifier=deployment)
