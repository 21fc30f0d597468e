"""The client commands of `bedrock-local` through their real entry point (`python -m bedrock_local.cli`
in a subprocess) against real servers: `jobs` and its filters, `models`, `watch` on a batch job that
completes, one that fails, one that is stopped while it is watched, and `quickstart` on a fresh data
dir with the packaged SmolLM2."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import SHARED_CACHE, Server, batch_job_of_prompts, free_port, wait_until

TEST_MODEL = "bedrock-local.test-text-v1:0"
INPUT_BUCKET = "cli-input"
OUTPUT_BUCKET = "cli-output"
ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
ENV.pop("AWS_ENDPOINT_URL_BEDROCK", None)
ENV.pop("COLUMNS", None)


def cli(server: Server, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bedrock_local.cli", *args, "--endpoint-url", server.url],
                          capture_output=True, text=True, timeout=timeout, env=ENV)


def batch_job(server: Server, name: str, prompts: list[str]) -> str:
    """A batch job on the test model over these prompts (one record each); answers its ARN."""
    return batch_job_of_prompts(server, name, prompts, (INPUT_BUCKET, OUTPUT_BUCKET), max_gen_len=8)


def status_of(server: Server, arn: str) -> str:
    return server.client().get_model_invocation_job(jobIdentifier=arn)["status"]


@pytest.fixture(scope="module")
def api_only(tmp_path_factory):
    """A server without workers: its jobs stay queued (Submitted) until stopped."""
    server = Server(tmp_path_factory.mktemp("api-only") / "data", workers=0).start()
    yield server
    server.stop()


def test_watch_a_job_that_completes_exits_0_and_says_where_the_outputs_are(server):
    arn = batch_job(server, "cli-watch-ok", [f"one two three {n}" for n in range(30)])
    result = cli(server, "watch", "cli-watch-ok", "--interval", "0.2")  # by name
    assert result.returncode == 0, result.stderr
    job_id = arn.rsplit("/", 1)[-1]
    assert f"Watching batch job cli-watch-ok ({arn})" in result.stdout
    assert "Batch job Completed" in result.stdout
    assert "30/30 records" in result.stdout
    assert "Records: 30 processed of 30 (30 succeeded, 0 errors)" in result.stdout
    assert f"s3://{OUTPUT_BUCKET}/out/{job_id}/manifest.json.out" in result.stdout
    manifest = json.loads((server.folder(OUTPUT_BUCKET) / "out" / job_id / "manifest.json.out").read_text())
    assert manifest["processedRecordCount"] == 30
    by_id = cli(server, "watch", job_id)  # an ended job, by its id: the outcome at once
    assert by_id.returncode == 0 and "Batch job Completed" in by_id.stdout


def test_watch_a_job_that_fails_exits_1_with_its_message(server):
    prompts = ["alpha beta", "gamma delta", "epsilon [[fault:job-fail]]", "never processed"]
    arn = batch_job(server, "cli-watch-fail", prompts)
    result = cli(server, "watch", arn, "--interval", "0.2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Batch job Failed" in result.stdout
    assert "injected fault" in result.stdout  # the job's own message
    assert "Records: 2 processed of 4" in result.stdout


def test_watch_a_job_stopped_while_watched_exits_2(api_only):
    arn = batch_job(api_only, "cli-watch-stop", ["one two", "three four"])
    watcher = subprocess.Popen([sys.executable, "-m", "bedrock_local.cli", "watch", arn, "--interval", "0.2",
                                "--endpoint-url", api_only.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ENV)
    try:
        first = watcher.stdout.readline()  # printed after its first Get: it is watching now
        assert first.startswith("Watching batch job cli-watch-stop"), first + watcher.stderr.read()
        assert status_of(api_only, arn) == "Submitted"
        api_only.client().stop_model_invocation_job(jobIdentifier=arn)
        rest, errors = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 2, rest + errors
    assert "Batch job Stopped" in rest
    assert "The job was stopped before it started." in rest


def test_watch_an_unknown_job_exits_3_and_says_so(server):
    result = cli(server, "watch", "no-such-job-anywhere")
    assert result.returncode == 3
    assert "No batch inference, customization, copy, import or evaluation job has the id or name 'no-such-job-anywhere'" in result.stderr
    unreachable = subprocess.run([sys.executable, "-m", "bedrock_local.cli", "watch", "x", "--endpoint-url",
                                  f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=ENV,
                                 timeout=120)
    assert unreachable.returncode == 3 and "Cannot reach bedrock-local" in unreachable.stderr


def test_jobs_lists_created_jobs_with_type_status_and_name_filters(server):
    alpha = batch_job(server, "cli-list-alpha", ["a b c"])
    beta = batch_job(server, "cli-list-beta", ["d e f", "g h"])
    wait_until(lambda: status_of(server, alpha) == "Completed" and status_of(server, beta) == "Completed",
               what="both jobs Completed")

    table = cli(server, "jobs")
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[2].strip(): line for line in table.stdout.splitlines() if "cli-list-" in line}
    assert set(rows) == {"cli-list-alpha", "cli-list-beta"}
    assert "Completed" in rows["cli-list-beta"] and "2/2 records" in rows["cli-list-beta"] and beta in rows["cli-list-beta"]

    named = json.loads(cli(server, "jobs", "--json", "--name", "list-alpha").stdout)
    assert [(r["type"], r["name"], r["status"], r["arn"], r["progress"]) for r in named] == [
        ("batch", "cli-list-alpha", "Completed", alpha, "1/1 records")]
    completed = json.loads(cli(server, "jobs", "--json", "--type", "batch", "--status", "completed").stdout)
    assert {alpha, beta} <= {r["arn"] for r in completed} and {r["status"] for r in completed} == {"Completed"}
    assert json.loads(cli(server, "jobs", "--json", "--name", "list-", "--status", "Failed").stdout) == []
    assert json.loads(cli(server, "jobs", "--json", "--type", "copy", "--type", "customization").stdout) == []
    newest_first = [r["name"] for r in json.loads(cli(server, "jobs", "--json", "--name", "cli-list-").stdout)]
    assert newest_first == ["cli-list-beta", "cli-list-alpha"]

    wrong = cli(server, "jobs", "--type", "copy", "--status", "Submitted")
    assert wrong.returncode == 1
    assert "No job type of copy has the status 'Submitted'; statuses: Completed, Failed, InProgress" in wrong.stderr


def test_models_lists_foundation_and_custom_models(server):
    result = cli(server, "models")
    assert result.returncode == 0, result.stderr
    assert "Foundation models (us-east-1)" in result.stdout
    smollm = next(line for line in result.stdout.splitlines() if "huggingface.smollm2-135m-instruct-v1:0" in line)
    assert "SmolLM2 135M" in smollm and "FINE_TUNING" in smollm
    assert TEST_MODEL in result.stdout
    assert "No custom models." in result.stdout and "No deployments." in result.stdout
    listed = json.loads(cli(server, "models", "--json", "--only", "foundation").stdout)
    assert set(listed) == {"foundation"}
    assert {"huggingface.smollm2-135m-instruct-v1:0", TEST_MODEL} <= {m["modelId"] for m in listed["foundation"]}


@pytest.mark.real_weights
def test_quickstart_on_a_fresh_data_dir_starts_a_server_and_runs_smollm2(tmp_path):
    port = free_port()
    data_dir = tmp_path / "fresh"
    result = subprocess.run([sys.executable, "-m", "bedrock_local.cli", "quickstart", "--endpoint-url",
                             f"http://127.0.0.1:{port}", "--data-dir", str(data_dir), "--cache-dir", str(SHARED_CACHE),
                             "--max-tokens", "12", "--interval", "0.5"],
                            capture_output=True, text=True, env=ENV, timeout=900)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"No server answered at http://127.0.0.1:{port}: started `bedrock-local serve --data-dir {data_dir}" in out
    assert "Uploaded 3 prompts to s3://bedrock-local-quickstart/" in out
    assert "on huggingface.smollm2-135m-instruct-v1:0" in out and "Batch job Completed" in out
    answers = [line for line in out.splitlines() if line.startswith("  → ")]
    assert len(answers) == 3 and all(len(a) > len("  → ") for a in answers)
    assert "prompt-01 What is the capital of France?" in out
    start = out.index("{", out.index("Manifest ("))
    manifest = json.loads(out[start:out.index("\n}", start) + 2])
    assert manifest["totalRecordCount"] == 3 and manifest["processedRecordCount"] == 3
    assert manifest["successRecordCount"] == 3 and manifest["outputTokenCount"] > 0
    assert "Stopped the server this command started" in out
    with pytest.raises(OSError):  # and it is gone
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert list((data_dir / "s3" / "bedrock-local-quickstart" / "quickstart").glob("*/output/*/prompts.jsonl.out"))
