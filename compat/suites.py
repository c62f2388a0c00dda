"""The suites of ``make compat``: how each is run against one side, and counted.

A side is one way to reach a database: PostgreSQL itself (``direct``) or a
sidecar in front of it (``sidecar``). Each suite runs as a subprocess with a
timeout (its process group is killed when it expires); whatever it recorded
until then is counted. A test passes when its recorded outcome is ``ok`` (or an
expected failure); the ratio compares the tests that passed through the sidecar
with those that passed directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
PASSED = {"ok", "xfail"}
WORSE = {"ok": 0, "xfail": 0, "skip": 1, "xpass": 2, "fail": 3, "error": 4}


@dataclass(frozen=True)
class Target:
    """Where one side's database is reached, and as whom."""

    host: str
    port: int
    user: str
    password: str
    dbname: str

    def conninfo(self, **extra: str) -> str:
        return make_conninfo(
            "",
            host=self.host,
            port=str(self.port),
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            sslmode="disable",
            **extra,
        )

    def pg_env(self) -> dict[str, str]:
        """libpq's variables for pg_dump, pg_restore and psql."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": "disable",
        }


@dataclass
class Side:
    """One suite's outcome on one side."""

    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (outcome, detail)
    by_design: set[str] = field(default_factory=set)
    seconds: float = 0.0
    note: str = ""
    ran: bool = True

    def record(self, test_id: str, outcome: str, detail: str = "") -> None:
        old = self.outcomes.get(test_id)
        if old is None or WORSE.get(outcome, 4) >= WORSE.get(old[0], 4):
            self.outcomes[test_id] = (outcome, detail)

    @property
    def passed(self) -> set[str]:
        return {t for t, (o, _) in self.outcomes.items() if o in PASSED and t not in self.by_design}

    def count(self, outcome: str) -> int:
        return sum(
            1 for t, (o, _) in self.outcomes.items() if o == outcome and t not in self.by_design
        )

    def summary(self) -> str:
        if not self.ran:
            return "not run"
        failed = self.count("fail") + self.count("xpass")
        parts = [f"{len(self.passed)} passed"]
        if failed:
            parts.append(f"{failed} failed")
        if self.count("error"):
            parts.append(f"{self.count('error')} errors")
        if self.count("skip"):
            parts.append(f"{self.count('skip')} skipped")
        text = ", ".join(parts)
        note = " ".join(self.note.split())
        return f"{text} ({note})" if note else text


def run_process(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float
) -> tuple[int | None, float]:
    """Run ``cmd`` in a process group of its own, output to ``log``; kill the group
    after ``timeout`` s. Returns (exit status or None when it timed out, seconds)."""
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        code: int | None = None
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # After a timeout, and when the run itself is interrupted: the whole
            # group (runtests.py and pytest start processes of their own).
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, time.monotonic() - started


def read_jsonl(path: Path, side: Side) -> None:
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        side.record(item["id"], item["outcome"], item.get("detail", ""))
        if item.get("by_design"):
            side.by_design.add(item["id"])


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the driver set -----------------------------------------------------------------


@dataclass
class Context:
    """What a suite gets for one side: a Target per database it asked for, an
    administrator's conninfo for each (setup and checks, never the measure), and the
    upstream role."""

    targets: dict[str, Target]
    admin: dict[str, str]
    role: str

    @property
    def main(self) -> Target:
        return self.targets["main"]


Runner = Callable[[Context, Path, float], Side]


def run_drivers(ctx: Context, out: Path, timeout: float) -> Side:
    target = ctx.main
    results = out / "results.jsonl"
    code, seconds = run_process(
        [
            sys.executable,
            "-m",
            "compat.drivers",
            "--conninfo",
            target.conninfo(),
            "--out",
            str(results),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        log=out / "output.log",
        timeout=timeout,
    )
    side = Side(seconds=seconds)
    read_jsonl(results, side)
    if code is None:
        side.note = f"timed out after {timeout:.0f} s"
    elif code != 0:
        side.note = f"exit status {code}"
    return side


# --- Django's own suite -------------------------------------------------------------


def django_version() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"(?i)django==([\w.]+)\s*$", line.strip())
        if match:
            return match.group(1)
    raise SystemExit("no Django pin (Django==X) in requirements.txt")


def django_tests(cache: Path) -> Path:
    """The ``tests/`` directory of the pinned Django's source distribution, fetched with
    pip (``--no-binary :all:``) into ``cache`` once."""
    version = django_version()
    tests = cache / f"django-{version}" / "tests"
    if (tests / "runtests.py").exists():
        return tests
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"django=={version}",
            "-d",
            str(downloads),
        ],
        check=True,
    )
    archive = next(downloads.glob(f"[Dd]jango-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"django-{version}/tests/")]
        tar.extractall(cache, members=members, filter="data")
    return tests


def run_django(tests: Path, labels: list[str]) -> Runner:
    def run(ctx: Context, out: Path, timeout: float) -> Side:
        target = ctx.main
        results = out / "results.jsonl"
        env = {
            **os.environ,
            "COMPAT_PG_HOST": target.host,
            "COMPAT_PG_PORT": str(target.port),
            "COMPAT_PG_USER": target.user,
            "COMPAT_PG_PASSWORD": target.password,
            "COMPAT_PG_NAME": target.dbname,
            "COMPAT_RESULTS": str(results),
            "PYTHONPATH": str(HERE / "django_suite"),
            "PYTHONWARNINGS": "ignore",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        log = out / "output.log"
        code, seconds = run_process(
            [
                sys.executable,
                "runtests.py",
                "--settings",
                "compat_settings",
                "--keepdb",
                "--parallel",
                "1",
                "--noinput",
                "--verbosity",
                "1",
                *labels,
            ],
            cwd=tests,
            env=env,
            log=log,
            timeout=timeout,
        )
        side = Side(seconds=seconds)
        read_jsonl(results, side)
        if code is None:
            side.note = f"timed out after {timeout:.0f} s"
        elif not side.outcomes:
            last = [line for line in tail(log, 40).splitlines() if line.strip()]
            side.note = "setup failed: " + (last[-1][:300] if last else f"exit status {code}")
        return side

    return run


# --- psycopg's own suite ------------------------------------------------------------

# The modules of psycopg's suite about the protocol and the types (and their async and
# server-side variants), without the tests it marks slow, timing-based or flakey (minutes of
# sleeping, and timing asserts a shared machine fails either way) or needing pproxy.
PSYCOPG_TESTS = [
    "tests/test_cursor*.py",
    "tests/test_copy*.py",
    "tests/test_prepared*.py",
    "tests/test_pipeline*.py",
    "tests/test_connection*.py",
    "tests/test_transaction*.py",
    "tests/types",
]
PSYCOPG_MARKERS = "not slow and not timing and not flakey and not proxy and not mypy"


def run_psycopg(source: Path) -> Runner:
    """psycopg's own tests from a checkout (``PSYCOPG_SRC``) with the venv's pytest,
    against the installed psycopg (its test requirements: pytest and anyio, which the
    venv has; tests needing numpy or shapely skip themselves)."""

    def run(ctx: Context, out: Path, timeout: float) -> Side:
        target = ctx.main
        junit = out / "junit.xml"
        paths = sorted(
            str(p.relative_to(source)) for pattern in PSYCOPG_TESTS for p in source.glob(pattern)
        )
        code, seconds = run_process(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:randomly",
                "-o",
                f"cache_dir={out / 'pytest_cache'}",
                "-m",
                PSYCOPG_MARKERS,
                f"--junitxml={junit}",
                "--test-dsn",
                target.conninfo(),
                *paths,
            ],
            cwd=source,
            env=dict(os.environ),
            log=out / "output.log",
            timeout=timeout,
        )
        side = Side(seconds=seconds)
        read_junit(junit, side)
        if code is None:
            side.note = f"timed out after {timeout:.0f} s"
        elif not side.outcomes:
            side.note = "no results: " + tail(out / "output.log", 3).replace("\n", " ")[:300]
        return side

    return run


def read_junit(path: Path, side: Side) -> None:
    if not path.exists():
        return
    import xml.etree.ElementTree as ET

    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        test_id = f"{case.get('classname')}.{case.get('name')}"
        outcome, detail = "ok", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "fail" if child.tag == "failure" else "error"
                detail = (child.get("message") or "")[:400]
            elif child.tag == "skipped":
                outcome = "xfail" if child.get("type") == "pytest.xfail" else "skip"
        side.record(test_id, outcome, detail)


# --- pg_dump piped to pg_restore and psql -------------------------------------------

DUMP_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE SEQUENCE invoice_numbers START 1000;
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    mood mood DEFAULT 'ok',
    score positive,
    tags text[],
    profile jsonb,
    created timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE customers IS 'people who buy';
COMMENT ON COLUMN customers.email IS 'where to write';
CREATE TABLE orders (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    invoice integer NOT NULL DEFAULT nextval('invoice_numbers'),
    amount numeric(10, 2) CHECK (amount >= 0),
    note text,
    payload bytea,
    period tstzrange
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE INDEX customers_lower_name ON customers (lower(name));
CREATE UNIQUE INDEX orders_invoice ON orders (invoice) WHERE amount > 0;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
CREATE MATERIALIZED VIEW order_totals AS
    SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id;
CREATE FUNCTION order_count(c bigint) RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT count(*) FROM orders WHERE customer_id = c $$;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION touch();
CREATE SCHEMA archive;
CREATE TABLE archive.old_orders (LIKE orders INCLUDING DEFAULTS);
CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO customers (name, email, mood, score, tags, profile)
SELECT 'Customer ' || i, 'c' || i || '@example.com', (ARRAY['sad','ok','happy'])[1 + i % 3]::mood,
       1 + i % 50, ARRAY['t' || i % 7, E'tab\\there'], jsonb_build_object('i', i, 'q', 'it''s')
FROM generate_series(1, 2000) AS i;
INSERT INTO orders (customer_id, amount, note, payload, period)
SELECT 1 + i % 2000, (i % 500) + 0.25,
       CASE WHEN i % 3 = 0 THEN NULL ELSE E'line\\nbreak ' || i END,
       decode(md5(i::text), 'hex'),
       tstzrange('2024-01-01'::timestamptz + i * interval '1 hour', NULL)
FROM generate_series(1, 6000) AS i;
INSERT INTO archive.old_orders (id, customer_id, invoice, amount) VALUES (1, 1, 1, 1.5);
INSERT INTO events SELECT i, date '2024-01-01' + i FROM generate_series(0, 300) AS i;
REFRESH MATERIALIZED VIEW order_totals;
"""

# What a restored database must hold: every relation's rows (as text, ordered), the
# sequence's position and the objects' definitions.
FINGERPRINT_SQL = """
SELECT 'customers', md5(string_agg(c::text, '|' ORDER BY c.id)) FROM customers c
UNION ALL SELECT 'orders', md5(string_agg(o::text, '|' ORDER BY o.id)) FROM orders o
UNION ALL SELECT 'old_orders', md5(string_agg(a::text, '|' ORDER BY a.id)) FROM archive.old_orders a
UNION ALL SELECT 'events', md5(string_agg(e::text, '|' ORDER BY e.id)) FROM events e
UNION ALL SELECT 'order_totals', md5(string_agg(t::text, '|' ORDER BY t.customer_id))
    FROM order_totals t
UNION ALL SELECT 'big_orders', count(*)::text FROM big_orders
UNION ALL SELECT 'invoice_numbers', last_value::text FROM invoice_numbers
UNION ALL SELECT 'order_count', order_count(1)::text
UNION ALL SELECT 'objects', md5(string_agg(kind || ':' || name, ',' ORDER BY kind, name)) FROM (
    SELECT c.relkind::text AS kind, n.nspname || '.' || c.relname AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('public', 'archive')
    UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'comment', description FROM pg_description d
        JOIN pg_class c ON c.oid = d.objoid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
) AS objects
"""

PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d"]
# The dumps taken of the source: name -> pg_dump's options. The same role owns both
# databases, so the OWNER TO statements are kept where a user would keep them.
DUMPS: dict[str, list[str]] = {
    "pg_dump -Fc": ["-Fc"],
    "pg_dump -Ft": ["-Ft"],
    "pg_dump -Fp": ["-Fp"],
    "pg_dump -Fp --inserts --no-owner": ["-Fp", "--inserts", "--no-owner"],
}
# The restores: name, the dump it reads on its standard input, the command (the
# target's conninfo is appended).
RESTORES: list[tuple[str, str, list[str]]] = [
    ("pg_restore of -Fc", "pg_dump -Fc", ["pg_restore", "--exit-on-error", "-d"]),
    (
        "pg_restore --single-transaction of -Fc",
        "pg_dump -Fc",
        ["pg_restore", "--exit-on-error", "--single-transaction", "-d"],
    ),
    (
        "pg_restore --no-owner of -Ft",
        "pg_dump -Ft",
        ["pg_restore", "--exit-on-error", "--no-owner", "-d"],
    ),
    ("psql -f - of -Fp", "pg_dump -Fp", PSQL),
    ("psql -f - of -Fp --inserts", "pg_dump -Fp --inserts --no-owner", PSQL),
]


def fingerprint(conninfo: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return list(conn.execute(FINGERPRINT_SQL).fetchall())


def run_dump(ctx: Context, out: Path, timeout: float) -> Side:
    """Each dump of the ``source`` database, then each restore of one into the emptied
    ``target`` database, both reached the side's way. A dump passes when pg_dump exits
    0; a restore when it exits 0 and the target then has the source's rows, sequence
    position and objects. When a dump failed on this side, its restores read the same
    dump taken directly (as an administrator), so that they are measured all the same."""
    source, target = ctx.targets["source"], ctx.targets["target"]
    side = Side()
    started = time.monotonic()
    step = timeout / (len(DUMPS) + len(RESTORES))
    log = out / "output.log"
    expected = fingerprint(ctx.admin["source"])
    files: dict[str, Path] = {}
    for name, options in DUMPS.items():
        path = out / (re.sub(r"\W+", "_", name) + ".dump")
        code, detail = command(
            ["pg_dump", *options, "-f", str(path), source.conninfo()], None, log, step
        )
        if code == 0:
            side.record(name, "ok")
        else:
            side.record(name, "error", detail)
            fallback = ["pg_dump", *options, "-f", str(path), ctx.admin["source"]]
            if command(fallback, None, log, step)[0] != 0:
                continue
        files[name] = path
    for name, dump, restore in RESTORES:
        if dump not in files:
            side.record(name, "error", f"no dump to restore: {dump} failed")
            continue
        reset_schemas(ctx.admin["target"], ctx.role)
        code, detail = command([*restore, target.conninfo()], files[dump], log, step)
        if code != 0:
            side.record(name, "error", detail)
            continue
        got = fingerprint(ctx.admin["target"])
        if got != expected:
            differs = [a[0] for a, b in zip(expected, got, strict=False) if a != b]
            side.record(name, "fail", f"restored database differs: {differs or 'rows'}")
        else:
            side.record(name, "ok")
    side.seconds = time.monotonic() - started
    return side


def command(
    cmd: list[str], stdin: Path | None, log: Path, timeout: float
) -> tuple[int | None, str]:
    """Run a client program (``stdin`` read from a file, as from a pipe); its exit
    status (None after ``timeout``) and its first error line."""
    with log.open("a") as handle:
        handle.write(f"\n$ {cmd[0]} {' '.join(cmd[1:-1])}\n")
    errors = log.with_suffix(".stderr")
    with errors.open("wb") as err, stdin.open("rb") if stdin else open(os.devnull, "rb") as inp:
        try:
            code: int | None = subprocess.run(  # noqa: S603
                cmd, stdin=inp, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    text = errors.read_text(errors="replace")
    with log.open("a") as handle:
        handle.write(text)
    if code is None:
        return None, f"timed out after {timeout:.0f} s"
    lines = [line for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
    return code, first[:400]


def reset_schemas(admin_conninfo: str, role: str) -> None:
    """Empty the target: drop its schemas but pg_catalog's, recreate ``public``."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS archive CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute(sql.SQL("CREATE SCHEMA public AUTHORIZATION {}").format(sql.Identifier(role)))


def seed_dump_source(ctx: Context) -> None:
    """The source's objects and rows, made directly as the upstream role (setup)."""
    with psycopg.connect(ctx.admin["source"], autocommit=True) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(ctx.role)))
        conn.execute(DUMP_SCHEMA)


def which(program: str) -> bool:
    return shutil.which(program) is not None
