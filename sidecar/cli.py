"""Command line of the sidecar: a small argparse dispatcher with one subcommand per job.

Installed as ``warden-sidecar`` (``sidecar/pyproject.toml``), or ``python -m sidecar``
from a checkout.

``python -m sidecar check --config FILE [--offline]`` checks a sidecar's configuration
before ``run`` (``sidecar.preflight``): one line per check, exit 0 when none failed,
2 otherwise. ``python -m sidecar check --bundle FILE --identity NAME --sql TEXT``
prints the engine's decision as JSON (``--sql -`` reads the statement from stdin).
Exit codes: 0 allow, 1 review or block, 2 usage error or unusable bundle.
``python -m sidecar scan --config FILE [--json]`` scans the upstream with the
sidecar's credential and prints the findings (never values) for an operator;
exit 2 when the configuration or the connection fails. ``run`` starts the proxy.
``python -m sidecar mcp --config FILE`` serves one AI agent over MCP on stdin and
stdout, its access token from ``WARDEN_MCP_TOKEN`` (or ``_FILE``) or ``mcp_token``
(``sidecar.mcp``, docs/mcp.md).

``python -m sidecar install-masking --config FILE --admin-dsn DSN [--grant-to ROLE]``
installs (or upgrades) hash masking in the database the sidecar protects, with an
administrator's connection: the ``warden_masking`` role and schema, the key table,
a key generated inside PostgreSQL, and ``warden_masking.hmac(text)``, executable
by ``ROLE`` (default: the user of the sidecar's ``upstream_dsn``).
``python -m sidecar rotate-masking-key --config FILE --admin-dsn DSN`` makes a new
key active (every hash changes). Both refuse an admin DSN pointing at another
database than the sidecar's upstream, print a one-line summary and exit 0, or
print a one-line error and exit 2. Neither prints key material or the admin
password. See ``sidecar.masking_db`` and ``docs/masking.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _check(args: argparse.Namespace) -> int:
    if args.config is not None:
        from sidecar.preflight import check

        return check(args.config, offline=args.offline)
    if args.identity is None or args.sql is None:
        args.parser.error("--bundle needs --identity and --sql")
    return _decide(args)


def _decide(args: argparse.Namespace) -> int:
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
    parser = argparse.ArgumentParser(prog=_prog(), description="Warden sidecar")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="check a configuration (--config), or print the engine's decision for one SQL "
        "text (--bundle)",
    )
    what = check.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--config",
        help="the sidecar's TOML or JSON config file: check it, the bundle it would enforce, "
        "and (unless --offline) the upstream and the control plane",
    )
    what.add_argument("--bundle", help="bundle JSON (envelope or inner bundle)")
    check.add_argument(
        "--offline",
        action="store_true",
        help="with --config: reach neither upstream nor control plane",
    )
    check.add_argument("--identity", help="with --bundle: the identity to decide for")
    check.add_argument("--sql", help="with --bundle: the SQL text, or - to read stdin")
    check.add_argument("--protocol", choices=("simple", "extended"), default="simple")
    check.add_argument(
        "--scs-off", action="store_true", help="judge as if standard_conforming_strings=off"
    )
    check.add_argument("--no-lineage", action="store_true", help="skip the sqlglot lineage")
    check.set_defaults(handler=_check, parser=check)
    run = commands.add_parser("run", help="run the proxy (see sidecar.runner)")
    run.add_argument("--config", help="TOML or JSON config file (env overrides it)")
    run.set_defaults(handler=_run)
    mcp = commands.add_parser(
        "mcp", help="serve one AI agent over MCP on stdin and stdout (docs/mcp.md)"
    )
    mcp.add_argument("--config", required=True, help="the sidecar's TOML or JSON config file")
    mcp.set_defaults(handler=_mcp)
    scan = commands.add_parser(
        "scan", help="scan the upstream now and print the findings (nothing is sent)"
    )
    scan.add_argument("--config", required=True, help="the sidecar's TOML or JSON config file")
    scan.add_argument("--json", action="store_true", help="print the report body as JSON")
    scan.set_defaults(handler=_scan)
    install = commands.add_parser(
        "install-masking",
        help="install or upgrade hash masking in the upstream database (administrator)",
    )
    install.add_argument("--config", required=True, help="the sidecar's TOML or JSON config file")
    install.add_argument(
        "--admin-dsn",
        required=True,
        help="an administrator's libpq DSN for the same database (superuser, or CREATEROLE)",
    )
    install.add_argument(
        "--grant-to", help="the role allowed to hash (default: the upstream DSN's user)"
    )
    install.set_defaults(handler=_install_masking)
    rotate = commands.add_parser(
        "rotate-masking-key", help="activate a new hash masking key (every hash changes)"
    )
    rotate.add_argument("--config", required=True, help="the sidecar's TOML or JSON config file")
    rotate.add_argument("--admin-dsn", required=True, help="an administrator's libpq DSN")
    rotate.set_defaults(handler=_rotate_masking_key)
    return parser


def _scan_bundle(config: Any) -> dict[str, Any]:
    """The bundle whose ``scan`` settings and ``detectors`` apply: the offline bundle file,
    or the verified bundle cached on disk; none (defaults) when there is neither."""
    from sidecar.runner import bundle_client, inner_bundle

    if config.bundle_file:
        return inner_bundle(json.loads(Path(config.bundle_file).read_text("utf-8")))
    client = bundle_client(config)
    if client.load_from_disk():
        return client.current()
    print("note: no cached bundle yet; scanning with default settings", file=sys.stderr)
    return {}


def _scan(args: argparse.Namespace) -> int:
    import logging

    from sidecar.config import ConfigError, load_config
    from sidecar.scanner import ScanError, ScanSettings, run_scan

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
        bundle = _scan_bundle(config)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_scan(
            config.upstream_dsn,
            password=config.upstream_password,
            settings=ScanSettings.from_bundle(bundle),
            trigger="request",
        )
    except ScanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report.body(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    rows = [
        (f"{f.schema}.{f.table}.{f.column}", f.classification, f"{f.confidence:.2f}",
         f"{f.share:.2f}", f.detector)
        for f in sorted(report.findings, key=lambda f: (f.schema, f.table, f.column))
    ]  # fmt: skip
    header = ("column", "classification", "confidence", "share", "detector")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    s = report.summary
    print(
        f"\n{len(rows)} findings; {s['tables']} relations, {s['columns']} columns, "
        f"{s['sampled_columns']} sampled, {len(report.errors)} errors, {s['duration_ms']} ms"
    )
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return 0


def _masking(args: argparse.Namespace, rotate: bool) -> int:
    from sidecar.config import ConfigError, load_config
    from sidecar.masking_db import MaskingError, install, rotate_key, upstream_identity

    try:
        config = load_config(args.config)
        database, user = upstream_identity(config.upstream_dsn)
        if rotate:
            summary = rotate_key(args.admin_dsn, expect_database=database)
        else:
            summary = install(
                args.admin_dsn, grant_to=args.grant_to or user, expect_database=database
            )
    except (ConfigError, MaskingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def _install_masking(args: argparse.Namespace) -> int:
    return _masking(args, rotate=False)


def _rotate_masking_key(args: argparse.Namespace) -> int:
    return _masking(args, rotate=True)


def _run(args: argparse.Namespace) -> int:
    from sidecar.runner import main as run_main

    return run_main(["--config", args.config] if args.config else [])


def _prog() -> str:
    # `warden-sidecar` when installed, `python -m sidecar` from a checkout.
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("warden-sidecar") else "python -m sidecar"


def _mcp(args: argparse.Namespace) -> int:
    from sidecar.runner import mcp_main

    return mcp_main(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)
