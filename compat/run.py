"""``make compat``: native clients' own suites, directly and through a sandbox sidecar.

    .venv/bin/python -m compat.run [--suites drivers,django_core,...] [--timeout-scale 1.5]

For each suite, each side gets fresh scratch databases on the server of
``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``, an
administrator: it creates the run's role and databases, and drops them at the
end). ``direct`` reaches them as the run's unprivileged role; ``sidecar`` reaches
them through a sidecar per database whose upstream role is that same role, in
front of a sandbox datasource, as an identity exempt from masking
(``compat/sandbox.py``). A suite that fails, hangs past its timeout or cannot set
up does not stop the others.

Prints a table (suite | direct | through the sidecar), one line per suite
``compat_<suite>_ratio=<passed through the sidecar / passed directly>
target=0.99 met|missed``, and the differences: the tests that passed directly
but not through the sidecar, grouped by the error they met, and the statements
the sidecar refused or held, by rule. Logs and the full lists are kept in
``var/compat/last/`` (``report.md``). docs/compatibility.md describes each suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compat.sandbox import IDENTITY, ROOT, Sandbox, refusals, server_address, server_url
from compat.suites import (
    Context,
    Runner,
    Side,
    Target,
    django_tests,
    run_django,
    run_drivers,
    run_dump,
    run_psycopg,
    seed_dump_source,
    which,
)

TARGET_RATIO = 0.99
WORKDIR = ROOT / "var" / "compat"

DJANGO_GROUPS = {
    "django_core": ["basic", "queries", "expressions", "aggregation", "transactions"],
    "django_postgres": ["postgres_tests"],
    "django_schema": [
        "backends",
        "schema",
        "migrations",
        "select_for_update",
        "bulk_create",
        "db_functions",
        "model_fields",
    ],
}
# The extensions Django's postgres_tests migrations create (CREATE EXTENSION IF NOT
# EXISTS, skipped when installed): bloom is not trusted, so an administrator
# installs them all, as for any application's database.
POSTGRES_EXTENSIONS = (
    "bloom",
    "btree_gin",
    "btree_gist",
    "citext",
    "hstore",
    "pg_trgm",
    "unaccent",
    "uuid-ossp",
)


@dataclass
class Suite:
    name: str
    description: str
    timeout: float  # seconds, per side
    runner: Runner | None
    databases: tuple[str, ...] = ("main",)
    extensions: tuple[str, ...] = ()
    setup: Callable[[Context], None] | None = None
    skip: str = ""  # why it is not run


@dataclass
class Outcome:
    suite: Suite
    direct: Side
    sidecar: Side
    refusals: dict[tuple[str, str, str, str], list[Any]]


def suites(cache: Path) -> list[Suite]:
    out = [
        Suite(
            "drivers",
            "driver set (compat/drivers.py): psycopg 3 and asyncpg public APIs",
            300,
            run_drivers,
        )
    ]
    tests: Path | None = None
    fetch_error = ""
    try:
        tests = django_tests(cache)
    except Exception as exc:  # no index, no sdist: the Django suites are skipped
        fetch_error = f"the Django source distribution could not be fetched: {exc}"
    timeouts = {"django_core": 420, "django_postgres": 300, "django_schema": 600}
    for name, labels in DJANGO_GROUPS.items():
        out.append(
            Suite(
                name,
                "Django's own suite: " + ", ".join(labels),
                timeouts[name],
                run_django(tests, labels) if tests else None,
                extensions=POSTGRES_EXTENSIONS if name == "django_postgres" else (),
                skip=fetch_error,
            )
        )
    source = os.environ.get("PSYCOPG_SRC", "")
    out.append(
        Suite(
            "psycopg",
            "psycopg's own suite (PSYCOPG_SRC): cursor, copy, prepared, pipeline, "
            "connection, transaction, types",
            600,
            run_psycopg(Path(source)) if source else None,
            skip="" if source else "PSYCOPG_SRC is not set (psycopg's sdist ships no tests)",
        )
    )
    missing = [p for p in ("pg_dump", "pg_restore", "psql") if not which(p)]
    out.append(
        Suite(
            "pg_dump",
            "pg_dump in 4 formats, each restored by pg_restore or psql -f - (5 restores)",
            300,
            run_dump,
            databases=("source", "target"),
            setup=seed_dump_source,
            skip=f"not on PATH: {', '.join(missing)}" if missing else "",
        )
    )
    return out


def run_side(
    sandbox: Sandbox, suite: Suite, side: str, out: Path, scale: float
) -> tuple[Side, Any]:
    """One suite on one side, in fresh databases dropped afterwards."""
    out.mkdir(parents=True, exist_ok=True)
    names = {
        key: sandbox.create_database(f"{suite.name}_{key}_{side[0]}", suite.extensions)
        for key in suite.databases
    }
    sidecars = []
    try:
        admin = {key: server_url(name) for key, name in names.items()}
        ctx = Context({}, admin, sandbox.role)
        if suite.setup is not None:
            suite.setup(ctx)
        host, port = server_address()
        for key, name in names.items():
            if side == "direct":
                ctx.targets[key] = Target(host, port, sandbox.role, sandbox.password, name)
            else:
                sidecar = sandbox.start_sidecar(name)
                sidecars.append(sidecar)
                ctx.targets[key] = Target("127.0.0.1", sidecar.port, IDENTITY, sandbox.token, name)
        assert suite.runner is not None
        result = suite.runner(ctx, out, suite.timeout * scale)
    except Exception as exc:
        result = Side(note=f"could not run: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        events: list[dict[str, Any]] = []
        for sidecar in sidecars:
            sidecar.stop()
            events += sidecar.events()
            (out / f"sidecar-{sidecar.database}.log").write_text(sidecar.log())
            shutil.rmtree(sidecar.workdir, ignore_errors=True)
            sandbox.sidecars.remove(sidecar)
        for name in names.values():
            try:
                sandbox.drop_database(name)
            except Exception as exc:  # the final cleanup tries again
                print(f"   could not drop {name} yet: {exc}", file=sys.stderr)
    return result, refusals(events)


def ratio(outcome: Outcome) -> tuple[str, bool]:
    direct = len(outcome.direct.passed)
    if not direct:
        return "n/a", False
    value = len(outcome.sidecar.passed) / direct
    return f"{value:.3f}", value >= TARGET_RATIO


def cause(detail: str) -> str:
    """A difference's cause, from the error the test met: Warden's rule when it
    names one, else the error's class and message without numbers and quotes."""
    match = re.search(r"\(rule ([\w.-]+)\)", detail)
    if match:
        holding = "holding" in detail or "needs approval" in detail
        return f"{'held' if holding else 'blocked'} by rule {match.group(1)}"
    text = re.sub(r"\d+", "N", " ".join(detail.split()))
    text = re.sub(r'"[^"]*"', '"…"', text)
    return text[:140] or "(no message)"


def differences(outcome: Outcome) -> list[tuple[str, int, str]]:
    """(cause, tests, an example test) for the tests that passed directly only."""
    lost = sorted(outcome.direct.passed - outcome.sidecar.passed)
    groups: Counter[str] = Counter()
    example: dict[str, str] = {}
    for test in lost:
        got = outcome.sidecar.outcomes.get(test)
        reason = cause(got[1]) if got else "did not run (setup failed, or the run stopped)"
        if got and got[0] == "skip":
            reason = "skipped: " + got[1][:100]
        groups[reason] += 1
        example.setdefault(reason, test)
    return [(c, n, example[c]) for c, n in groups.most_common()]


def versions() -> str:
    """What was measured: the server, the clients, the relay the sidecars used."""
    from importlib.metadata import PackageNotFoundError, version

    import psycopg

    from sidecar.proxy.session import NATIVE_RELAY_AVAILABLE

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    with psycopg.connect(server_url(), connect_timeout=10) as conn:
        server = conn.execute("SHOW server_version").fetchone()
    return (
        f"commit {commit()}; PostgreSQL {server[0] if server else '?'}; "
        f"Django {of('Django')}, psycopg {of('psycopg')} (libpq {psycopg.pq.version()}), "
        f"asyncpg {of('asyncpg')}; "
        f"sidecar relay: {'native' if NATIVE_RELAY_AVAILABLE else 'Python (native not built)'}"
    )


def commit() -> str:
    """HEAD, and whether the sidecar's code in the work tree differs from it."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607 (git from PATH, as a developer runs it)
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "sidecar")
    return f"{head}{' + uncommitted changes in sidecar/' if changed else ''}"


def report(outcomes: list[Outcome], seconds: float) -> str:
    lines = ["| suite | direct | through the sidecar |", "|---|---|---|"]
    for o in outcomes:
        if o.suite.skip or o.suite.runner is None:
            lines.append(f"| {o.suite.name} | skipped | {o.suite.skip} |")
        else:
            lines.append(f"| {o.suite.name} | {o.direct.summary()} | {o.sidecar.summary()} |")
    lines.append("")
    for o in outcomes:
        if o.suite.skip or o.suite.runner is None:
            lines.append(f"compat_{o.suite.name}_ratio=skipped target={TARGET_RATIO} missed")
            continue
        value, met = ratio(o)
        lines.append(
            f"compat_{o.suite.name}_ratio={value} target={TARGET_RATIO} "
            + ("met" if met else "missed")
        )
    lines.append(f"compat_seconds={seconds:.0f}")
    return "\n".join(lines)


def details(outcomes: list[Outcome], limit: int | None) -> str:
    lines: list[str] = []
    for o in outcomes:
        if o.suite.skip or o.suite.runner is None:
            continue
        diffs = differences(o)
        designed = sorted(o.sidecar.by_design)
        gained = sorted(o.sidecar.passed - o.direct.passed)
        if not (diffs or o.refusals or designed or gained):
            continue
        lines.append(f"\n## {o.suite.name}: {o.suite.description}")
        lines.append(
            f"direct {o.direct.seconds:.0f} s, through the sidecar {o.sidecar.seconds:.0f} s"
        )
        if diffs:
            lines.append("\npassed directly, not through the sidecar (tests, cause, example):")
            for c, n, example in diffs[:limit]:
                lines.append(f"  {n:>5}  {c}  [{example}]")
            if limit is not None and len(diffs) > limit:
                lines.append(f"  ... {len(diffs) - limit} more causes in var/compat/last/report.md")
        if gained:
            lines.append(f"\npassed through the sidecar only: {len(gained)} (e.g. {gained[0]})")
        if designed:
            lines.append("\nby design (not counted in the ratio):")
            for test in designed:
                d = o.direct.outcomes.get(test, ("-", ""))[0]
                s, detail = o.sidecar.outcomes.get(test, ("-", ""))
                lines.append(f"  {test}: direct {d}, sidecar {s} {detail[:160]}")
        if o.refusals:
            lines.append(
                "\nstatements the sidecar refused or held "
                "(count, outcome, rule, kind: message | an example, redacted):"
            )
            ranked = sorted(o.refusals.items(), key=lambda kv: -kv[1][0])
            for (what, rule, kind, message), (n, example) in ranked[:limit]:
                lines.append(
                    f"  {n:>6}  {what} {rule} {kind}: {message[:100] or '-'} | {example[:100]}"
                )
            if limit is not None and len(ranked) > limit:
                lines.append(f"  ... {len(ranked) - limit} more in var/compat/last/report.md")
    return "\n".join(lines)


def full_lists(outcomes: list[Outcome]) -> str:
    """Every test that passed directly but not through the sidecar, with its error."""
    lines = []
    for o in outcomes:
        lost = sorted(o.direct.passed - o.sidecar.passed)
        if not lost:
            continue
        lines.append(f"\n### {o.suite.name}: {len(lost)} tests\n")
        for test in lost:
            outcome, detail = o.sidecar.outcomes.get(test, ("not run", ""))
            lines.append(f"- `{test}`: {outcome} {detail[:300]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default="", help="comma-separated names (default: all)")
    parser.add_argument(
        "--timeout-scale", type=float, default=float(os.environ.get("COMPAT_TIMEOUT_SCALE", "1"))
    )
    args = parser.parse_args()

    # SIGTERM (a CI's timeout, `kill`) ends the run through the same cleanup as Ctrl-C.
    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    last = WORKDIR / "last"
    shutil.rmtree(last, ignore_errors=True)
    last.mkdir(parents=True)
    wanted = {s for s in args.suites.split(",") if s}
    all_suites = suites(WORKDIR)
    unknown = wanted - {s.name for s in all_suites}
    if unknown:
        print(f"unknown suites: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    chosen = [s for s in all_suites if not wanted or s.name in wanted]
    header = versions()
    print(header, flush=True)
    sandbox = Sandbox(last / "sidecars")
    outcomes: list[Outcome] = []
    interrupted = False
    try:
        sandbox.create_role()
        for suite in chosen:
            if suite.skip or suite.runner is None:
                print(f"-- {suite.name}: skipped: {suite.skip}", flush=True)
                outcomes.append(Outcome(suite, Side(ran=False), Side(ran=False), {}))
                continue
            sides: dict[str, Side] = {}
            refused: dict[tuple[str, str, str, str], list[Any]] = {}
            for side in ("direct", "sidecar"):
                print(f"-- {suite.name}: {side} ...", flush=True)
                try:
                    result, seen = run_side(
                        sandbox, suite, side, last / suite.name / side, args.timeout_scale
                    )
                except Exception as exc:  # set-up failed: this suite only
                    result, seen = Side(note=f"could not set up: {exc}"), {}
                sides[side] = result
                refused.update(seen)
                print(f"   {result.summary()} in {result.seconds:.0f} s", flush=True)
            outcomes.append(Outcome(suite, sides["direct"], sides["sidecar"], refused))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        for problem in sandbox.cleanup():
            print(f"cleanup: {problem}", file=sys.stderr)
    seconds = time.monotonic() - started
    summary = report(outcomes, seconds)
    if interrupted:
        done = ", ".join(o.suite.name for o in outcomes) or "none"
        summary += f"\ninterrupted: only these suites ran to the end: {done}"
    (last / "report.md").write_text(
        header
        + "\n\n"
        + summary
        + "\n"
        + details(outcomes, None)
        + "\n\n## Every difference\n"
        + full_lists(outcomes)
        + "\n"
    )
    print(details(outcomes, 12))
    print()
    print(summary)
    print(f"(logs and every difference: {last.relative_to(ROOT)}/report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
