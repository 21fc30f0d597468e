"""`bedrock-local quickstart`: real work in one command after install. It finds the server at
--endpoint-url, or starts one on --data-dir when none answers there; uploads a small sample of
prompts; runs a batch inference job (CreateModelInvocationJob, Converse bodies) on the packaged
SmolLM2 model; follows it with a progress bar; prints three outputs and the job's manifest; and
stops the server it started (unless --keep-server)."""

import datetime
import json
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bedrock_local import testing
from bedrock_local.console_cli.common import CliError, Clients, as_cli_error, call, console
from bedrock_local.console_cli.watch import follow

DEFAULT_MODEL = "huggingface.smollm2-135m-instruct-v1:0"
SAMPLE = [
    "What is the capital of France? Answer in one sentence.",
    "Write a haiku about the sea.",
    "Explain in one sentence what a batch inference job is.",
]
INPUT_FILE = "prompts.jsonl"
SERVER_START_SECONDS = 180  # a first start on a fresh data dir creates its database


def register(commands, add_client_flags) -> None:
    parser = commands.add_parser("quickstart", help="run a small batch job on the packaged SmolLM2 and show its outputs",
                                 description=__doc__)
    add_client_flags(parser)
    parser.add_argument("--data-dir", type=Path, default=Path(".bedrock-local"),
                        help="data dir of the server: where the sample is written (<data-dir>/s3/<bucket>/...) and "
                             "where a server is started when none answers (default ./.bedrock-local)")
    parser.add_argument("--s3-endpoint-url", help="upload the sample to this S3 endpoint through boto3 instead (the "
                                                  "server must use the same one)")
    parser.add_argument("--cache-dir", type=Path, help="--cache-dir of a server this command starts")
    parser.add_argument("--bucket", default="bedrock-local-quickstart", help="bucket for the sample and the outputs")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model of the batch job (default {DEFAULT_MODEL})")
    parser.add_argument("--max-tokens", type=int, default=48, help="most tokens in each answer (default 48)")
    parser.add_argument("--keep-server", action="store_true", help="leave a server this command started running")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two Gets of the job")
    parser.set_defaults(run=run)


def run(args) -> int:
    out = console()
    clients = Clients(args)
    server = None
    if not _answers(clients):
        server = _start_server(args, clients, out)
    else:
        out.print(f"Using the bedrock-local server at {clients.endpoint_url}.")
    try:
        return _quickstart(args, clients, out)
    finally:
        if server is not None:
            if args.keep_server:
                out.print(f"The server goes on (pid {server.pid}); stop it with `kill {server.pid}`.")
            else:
                _stop(server)
                out.print("Stopped the server this command started; `bedrock-local serve --data-dir "
                          f"{args.data_dir}` runs it again, with this job and its outputs.")


def _quickstart(args, clients: Clients, out) -> int:
    bedrock = clients.bedrock
    models = {m["modelId"] for m in call("ListFoundationModels", bedrock.list_foundation_models)["modelSummaries"]}
    if args.model not in models:
        raise CliError(f"The server has no foundation model '{args.model}' (ListFoundationModels lists "
                       f"{', '.join(sorted(models))}).")
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    input_uri = f"s3://{args.bucket}/quickstart/{run_id}/input/"
    output_uri = f"s3://{args.bucket}/quickstart/{run_id}/output/"
    records = [{"recordId": f"prompt-{n:02d}", "modelInput": {
        "messages": [{"role": "user", "content": [{"text": prompt}]}],
        "inferenceConfig": {"maxTokens": args.max_tokens, "temperature": 0.0}}} for n, prompt in enumerate(SAMPLE, 1)]
    store = _ObjectStore(args)
    store.put(input_uri + INPUT_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())
    store.ensure_bucket(args.bucket)
    out.print(f"Uploaded {len(records)} prompts to {input_uri}{INPUT_FILE} ({store.describe()}).")
    arn = call("CreateModelInvocationJob", bedrock.create_model_invocation_job,
               jobName=f"quickstart-{run_id}", roleArn="arn:aws:iam::123456789012:role/bedrock-local-quickstart",
               modelId=args.model, modelInvocationType="Converse",
               inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
               outputDataConfig={"s3OutputDataConfig": {"s3Uri": output_uri}})["jobArn"]
    out.print(f"Created batch inference job quickstart-{run_id} on {args.model}.")
    code, job = follow(clients, "batch", clients.region, arn, args.interval, out)
    if code != 0:
        return code
    folder = f"{output_uri}{arn.rsplit('/', 1)[-1]}/"
    lines = [json.loads(line) for line in store.get(folder + INPUT_FILE + ".out").decode().splitlines() if line]
    out.rule("Three outputs")
    for line in lines[:3]:
        prompt = line["modelInput"]["messages"][0]["content"][0]["text"]
        if "modelOutput" in line:
            answer = " ".join(block.get("text", "") for block in line["modelOutput"]["output"]["message"]["content"])
        else:
            answer = f"(error {line['error']})"
        out.print(f"[bold]{line['recordId']}[/] {prompt}")
        out.print("  → " + answer.strip().replace("\n", "\n    "), markup=False)
    out.rule(f"Manifest ({folder}manifest.json.out)")
    out.print_json(store.get(folder + "manifest.json.out").decode())
    out.print(f"Next: `bedrock-local jobs`, `bedrock-local models`, and the README's boto3 examples against "
              f"{clients.endpoint_url}.")
    return 0


def _answers(clients: Clients) -> bool:
    probe = testing.client("bedrock", clients.endpoint_url, region=clients.region, access_key="probe",
                           secret_key="probe", connect_timeout=2, read_timeout=10)
    try:
        probe.list_foundation_models()
        return True
    except ClientError:
        return True  # something answers in the AWS envelope (an authenticating server refusing the probe's key)
    except BotoCoreError:
        return False


def _start_server(args, clients: Clients, out) -> testing.Server:
    url = urlparse(clients.endpoint_url)
    if url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        raise CliError(f"No bedrock-local server answers at {clients.endpoint_url}, and it is not a local address "
                       f"with a port this command could start one on.", 3)
    log = args.data_dir / "quickstart-server.log"
    server = testing.Server(args.data_dir, host=url.hostname, port=url.port, cache_dir=args.cache_dir,
                            s3_endpoint_url=args.s3_endpoint_url, log=log, offline=False).launch()
    out.print(f"No server answered at {clients.endpoint_url}: started `bedrock-local serve --data-dir {args.data_dir} "
              f"--port {url.port}` (pid {server.pid}, log {log}).")
    with out.status("Waiting for the server to answer..."):
        try:
            server.process.wait_until(lambda: _answers(clients), SERVER_START_SECONDS, "answer", interval=0.5)
        except testing.ProcessExited as exc:
            raise CliError(f"The server exited with {exc.returncode}; its log {log} says:\n"
                           f"{server.process.log_tail(2000)}", 3)
        except testing.StartTimeout:
            _stop(server)
            raise CliError(f"The server did not answer within {SERVER_START_SECONDS} s (log {log}).", 3)
    return server


def _stop(server: testing.Server) -> None:
    """SIGTERM to the server's process group (it stops its worker and serving processes), then wait."""
    server.stop(timeout=60)


class _ObjectStore:
    """Where the sample goes and the outputs are read: an S3 endpoint through boto3, or the embedded
    folder store's layout (s3://bucket/key is <data-dir>/s3/bucket/key)."""

    def __init__(self, args):
        self.data_dir = args.data_dir
        self.s3 = None
        if args.s3_endpoint_url:
            self.s3 = boto3.client("s3", endpoint_url=args.s3_endpoint_url, region_name=args.region or "us-east-1")

    def describe(self) -> str:
        return f"S3 at {self.s3.meta.endpoint_url}" if self.s3 else f"the folder store in {self.data_dir / 's3'}"

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bucket, key

    def ensure_bucket(self, bucket: str) -> None:
        if self.s3 is None:
            (self.data_dir / "s3" / bucket).mkdir(parents=True, exist_ok=True)

    def put(self, uri: str, data: bytes) -> None:
        bucket, key = self._split(uri)
        if self.s3 is None:
            path = self.data_dir / "s3" / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        try:
            try:
                self.s3.head_bucket(Bucket=bucket)
            except ClientError:
                self.s3.create_bucket(Bucket=bucket)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise as_cli_error(f"Uploading {uri}", exc)

    def get(self, uri: str) -> bytes:
        bucket, key = self._split(uri)
        try:
            if self.s3 is None:
                return (self.data_dir / "s3" / bucket / key).read_bytes()
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except OSError as exc:
            raise CliError(f"Cannot read {uri} in {self.describe()}: {exc}. Is --data-dir the server's data dir?")
        except (ClientError, BotoCoreError) as exc:
            raise as_cli_error(f"Reading {uri}", exc)
