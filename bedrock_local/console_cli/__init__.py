"""The client commands of `bedrock-local`: `jobs`, `watch`, `models` and `quickstart`. They are API
clients of a running server (boto3 against --endpoint-url), never readers of its database;
`quickstart` alone may start a server itself. cli.py registers them with `register`."""

import functools
import sys

from bedrock_local.console_cli import jobs, models, quickstart, watch
from bedrock_local.console_cli.common import CliError, add_client_flags


def register(commands) -> None:
    """Add the client subcommands to `bedrock-local`'s subparsers."""
    for module in (jobs, watch, models, quickstart):
        before = set(commands.choices)
        module.register(commands, add_client_flags)
        for name in set(commands.choices) - before:
            parser = commands.choices[name]
            parser.set_defaults(run=_reporting_errors(parser.get_default("run")), log_level="warning")


def _reporting_errors(function):
    @functools.wraps(function)
    def run(args) -> int:
        try:
            return function(args)
        except CliError as exc:
            print(f"bedrock-local {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
    return run
