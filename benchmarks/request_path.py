"""Where a GetModelCustomizationJob's server time goes, and why it costs more in a server than in a loop.

Part 1, in-process: bedrock-local's ASGI application (`BedrockApi`) and each step of its request path
are called directly in this process, on a store of `--jobs` customization jobs (seeded as the
control-plane benchmark seeds them) with a `--credentials-file`, for one SigV4-signed
GetModelCustomizationJob by ARN:

- whole request: the ASGI call (route, SigV4, parse, validation, read, answer);
- authenticate (SigV4 verification), route, parse_request, validate, read (the SQLite lookup),
  describe (row to output), serialize (output to JSON bytes).

Each is timed twice per iteration: "cold", right after `--evict-mb` MB of memory were written to
push the CPU caches out (what a server meets when a request arrives after the client and others ran
or the core slept: a sequential boto3 client spends milliseconds between requests), then "warm",
called again at once. Medians over `--iterations`. The baseline is the whole request warm; `x
baseline` divides by it.

Part 2, over the network (`--no-network` skips it): one sequential boto3 client sends
GetModelCustomizationJob to a stdlib asyncio server that answers fixed bytes (the control-plane
benchmark's floor), which spins the CPU for `--burn-ms` either before it writes the answer or after,
in alternating rounds. Work after the send overlaps the client's reading of the answer; work before
it is waited for, and the client's CPU per request grows with the wait too. This is why `serve`
sends an answer as soon as its body is written (api/http.py) and tallies metrics after.

    python -m benchmarks.request_path
    python -m benchmarks.request_path --iterations 1000 --evict-mb 32 --burn-ms 1.0
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

SERVER_CODE = r"""
import asyncio, sys, time
mode, port, burn, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000, open(sys.argv[4], "rb").read()
answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: "
          b"00000000-0000-4000-8000-000000000000\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
def spin():
    end = time.perf_counter() + burn
    while time.perf_counter() < end:
        pass
class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # GETs: no body
            self.buffer = self.buffer[end + 4:]
            if mode == "before":
                spin()
            self.transport.write(answer)
            if mode == "after":
                spin()
async def main():
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", port)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def signed_scope(arn: str, access_key: str, secret: str) -> dict:
    """The ASGI scope of a GetModelCustomizationJob signed now by botocore, as boto3 sends it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    path = "/model-customization-jobs/" + urllib.parse.quote(arn, safe="")
    request = AWSRequest("GET", "http://127.0.0.1:8700" + path, headers={
        "User-Agent": "Boto3 benchmarks.request_path", "amz-sdk-invocation-id": "00000000-0000-4000-8000-000000000000",
        "amz-sdk-request": "attempt=1"})
    SigV4Auth(Credentials(access_key, secret), "bedrock", "us-east-1").add_auth(request)
    prepared = request.prepare()
    headers = [(b"host", b"127.0.0.1:8700"), (b"accept-encoding", b"identity")]
    headers += [(k.lower().encode(), v.encode() if isinstance(v, str) else v) for k, v in prepared.headers.items()]
    headers.append((b"content-length", b"0"))
    raw_path = prepared.url.split("8700", 1)[1]
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8700), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "GET",
            "root_path": "", "path": urllib.parse.unquote(raw_path), "raw_path": raw_path.encode(),
            "query_string": b"", "headers": headers, "state": {}}


def in_process(args, work: Path) -> tuple[list[tuple[str, float, float]], bytes]:
    """(step, warm µs, cold µs) for the whole request and each step, and the Get's answer body."""
    from benchmarks import control_plane as cp
    from bedrock_local.api.app import create_app
    from bedrock_local.api.validation import validation_message
    from bedrock_local.cli import _open_stores
    from bedrock_local.service.context import Context
    from bedrock_local.service.customization_jobs import describe, get_model_customization_job
    from bedrock_local.settings import Settings
    from bedrock_local.store import resources
    from bedrock_local.store.resources import Scope

    credentials = work / "credentials.json"
    credentials.write_text(json.dumps({cp.access_key(a): {"secretAccessKey": cp.secret_key(a), "accountId": a}
                                       for a in cp.ACCOUNTS}))
    settings = Settings(data_dir=work / "data", credentials_file=credentials)
    cp.seed_customization_jobs(settings.resolved_database_url, args.jobs, args.seed)
    db, objects = _open_stores(settings)
    app = create_app(settings, db, objects)
    account, region = cp.MEASURED
    scope_of = Scope(account, region)
    with db.session() as session:
        arn = resources.page(session, scope_of, cp.CZ_KIND, [], descending=True, limit=1, after=None)[0].arn
    access_key, secret = cp.access_key(account), cp.secret_key(account)
    state = {}

    def sign() -> None:  # a signature is good for five minutes: each step signs afresh before its calls
        state["scope"] = signed_scope(arn, access_key, secret)
        state["headers"] = {k.decode().lower(): v.decode() for k, v in state["scope"]["headers"]}

    sign()
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    loop = asyncio.new_event_loop()

    async def timed_call() -> float:  # timed inside the loop: the loop's own start and stop left out
        started = time.perf_counter()
        await app(dict(state["scope"]), receive, send)
        return time.perf_counter() - started

    def whole() -> float:
        return loop.run_until_complete(timed_call())

    whole()
    if sent[0]["status"] != 200:
        raise SystemExit(f"the Get answered {sent[0]['status']}: {sent[1]['body'][:300]!r}")
    body = sent[1]["body"]
    raw_path = state["scope"]["raw_path"].decode()
    headers = state["headers"]
    op = app.codec.service_model.operation_model("GetModelCustomizationJob")
    labels = app._route("GET", raw_path)[2]
    params = app.codec.parse_request(op, labels, "", headers, b"")
    ctx = Context(account, region, db, objects, settings, "request-id", bucket_owners=app.accounts.bucket_owners)
    result = get_model_customization_job(ctx, params)
    row = resources.read(db, scope_of, cp.CZ_KIND, arn=arn)
    steps = [
        ("whole request (ASGI call)", whole),
        ("authenticate (SigV4)", lambda: app.accounts.authenticate("GET", raw_path, "", state["headers"],
                                                                   state["scope"]["headers"], b"")),
        ("route", lambda: app._route("GET", raw_path)),
        ("parse_request", lambda: app.codec.parse_request(op, labels, "", headers, b"")),
        ("validate", lambda: validation_message(params, op.input_shape)),
        ("read (SQLite lookup)", lambda: resources.read(db, scope_of, cp.CZ_KIND, arn=arn)),
        ("describe (row to output)", lambda: describe(row)),
        ("serialize (output to JSON)", lambda: app.codec.serialize_response(op, result)),
    ]
    junk = bytearray(args.evict_mb * 1024 * 1024)
    line = 64

    def evict():
        for i in range(0, len(junk), line):
            junk[i] ^= 1

    out = []
    for name, step in steps:
        warm, cold = [], []
        sign()
        for _ in range(args.iterations):
            for times in (cold, warm):  # cold: right after the eviction; warm: at once again
                if times is cold:
                    evict()
                started = time.perf_counter()
                took = step()
                times.append(took if isinstance(took, float) else time.perf_counter() - started)
        out.append((name, statistics.median(warm) * 1e6, statistics.median(cold) * 1e6))
    loop.close()
    db.dispose()
    return out, body


def network(args, work: Path, body: bytes) -> list[tuple[str, float, float, float, float]]:
    """(variant, req/s, wall ms, client CPU ms, server CPU ms) per request, for the burn variants."""
    from bedrock_local import testing
    from benchmarks import control_plane as cp
    from benchmarks.common import cpu_seconds

    body_file = work / "get.json"
    body_file.write_bytes(body)
    variants = [("no work", "none", 0.0), (f"{args.burn_ms:g} ms before the send", "before", args.burn_ms),
                (f"{args.burn_ms:g} ms after the send", "after", args.burn_ms)]
    servers = []
    try:
        for label, mode, burn in variants:
            port = testing.free_port()
            process = cp.start_process(label, [sys.executable, "-c", SERVER_CODE, mode, str(port), str(burn),
                                               str(body_file)], port, work / "server.log")
            client = testing.client("bedrock", f"http://127.0.0.1:{port}", access_key="AKIDBENCHMARK",
                                    secret_key="benchmark", retries={"max_attempts": 0})
            servers.append((label, process, client, [0, 0.0, 0.0, 0.0]))
        arn = json.loads(body)["jobArn"]
        for _ in range(args.rounds):
            for label, process, client, total in servers:
                for _ in range(20):
                    client.get_model_customization_job(jobIdentifier=arn)
                server_cpu, wall, own = cpu_seconds(process.pid), time.perf_counter(), time.process_time()
                for _ in range(args.requests):
                    client.get_model_customization_job(jobIdentifier=arn)
                total[0] += args.requests
                total[1] += time.perf_counter() - wall
                total[2] += time.process_time() - own
                total[3] += cpu_seconds(process.pid) - server_cpu
    finally:
        for _, process, _, _ in servers:
            process.stop()
    return [(label, n / wall, 1e3 * wall / n, 1e3 * own / n, 1e3 * server / n)
            for label, _, _, (n, wall, own, server) in servers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000, help="customization jobs in the store (default 2,000)")
    parser.add_argument("--iterations", type=int, default=600, help="timed calls of each step, warm and cold")
    parser.add_argument("--evict-mb", type=int, default=16, help="memory written between calls to evict the caches")
    parser.add_argument("--no-network", action="store_true", help="skip part 2 (the boto3 client and burn servers)")
    parser.add_argument("--burn-ms", type=float, default=1.0, help="CPU the part-2 server spends per request")
    parser.add_argument("--requests", type=int, default=300, help="part 2: requests per server per round")
    parser.add_argument("--rounds", type=int, default=5, help="part 2: rounds, the servers taking turns")
    parser.add_argument("--seed", type=int, default=20230420)
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bedrock-local-request-path-"))
    try:
        steps, body = in_process(args, work)
        burns = [] if args.no_network else network(args, work, body)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; {args.jobs:,} jobs in SQLite; medians of {args.iterations} calls; "
          f"cold = after writing {args.evict_mb} MB")
    baseline = steps[0][1]
    print(f"\n{'step of a verified GetModelCustomizationJob':<44} {'warm µs':>9} {'cold µs':>9} {'cold/warm':>10} "
          f"{'warm x baseline':>16} {'cold x baseline':>16}")
    print("-" * 109)
    for name, warm, cold in steps:
        print(f"{name:<44} {warm:9.0f} {cold:9.0f} {cold / warm:9.1f}x {warm / baseline:15.2f}x {cold / baseline:15.2f}x")
    print(f"baseline: the whole request, warm ({baseline:.0f} µs). The steps' cold times add up to more than the "
          f"whole's: each pays for the interpreter's own code again.")
    if burns:
        print(f"\n{'server (one sequential boto3 client)':<38} {'req/s':>7} {'wall ms':>8} {'client CPU ms':>14} "
              f"{'server CPU ms':>14} {'ratio':>7}")
        print("-" * 93)
        base = burns[0][1]
        for label, rate, wall, own, server in burns:
            print(f"{label:<38} {rate:7.0f} {wall:8.3f} {own:14.3f} {server:14.3f} {rate / base:6.2f}x")
        print("baseline: no work (the control-plane floor); ratio = req/s / baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
