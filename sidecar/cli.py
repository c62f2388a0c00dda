"""Command line of the sidecar: a small argparse dispatcher with one subcommand per job.

``python -m sidecar check --bundle FILE --identity NAME --sql TEXT`` prints the
engine's decision as JSON (``--sql -`` reads the statement from stdin). Exit
codes: 0 allow, 1 review or block, 2 usage error or unusable bundle. Other
subcommands (``run``, ``scan``) register themselves in ``build_parser``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _check(args: argparse.Namespace) -> int:
    from sidecar.engine import BundleError, Engine, SessionContext, load_bundle

    try:
        data = json.loads(Path(args.bundle).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        print(f"error: cannot read bundle {args.bundle}: {exc}", file=sys.stderr)
        return 2
    inner = data.get("bundle", data) if isinstance(data, dict) else data
    try:
        bundle = load_bundle(inner)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sql = sys.stdin.read() if args.sql == "-" else args.sql
    session = SessionContext(standard_conforming_strings=not args.scs_off)
    decision = Engine(bundle).decide(
        identity=args.identity,
        sql=sql,
        session=session,
        protocol=args.protocol,
        explain=not args.no_lineage,
    )
    json.dump(decision.to_json(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0 if decision.action == "allow" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sidecar", description="Warden sidecar")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="print the engine's decision for one SQL text")
    check.add_argument("--bundle", required=True, help="bundle JSON (envelope or inner bundle)")
    check.add_argument("--identity", required=True)
    check.add_argument("--sql", required=True, help="the SQL text, or - to read stdin")
    check.add_argument("--protocol", choices=("simple", "extended"), default="simple")
    check.add_argument(
        "--scs-off", action="store_true", help="judge as if standard_conforming_strings=off"
    )
    check.add_argument("--no-lineage", action="store_true", help="skip the sqlglot lineage")
    check.set_defaults(handler=_check)
    run = commands.add_parser("run", help="run the proxy (see sidecar.runner)")
    run.add_argument("--config", help="TOML or JSON config file (env overrides it)")
    run.set_defaults(handler=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from sidecar.runner import main as run_main

    return run_main(["--config", args.config] if args.config else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
