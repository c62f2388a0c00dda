"""Fixtures for the proxy tests: a scratch upstream database, a real bundle, the real sidecar.

The upstream is a fresh database on the PostgreSQL server named by
``DATABASE_URL`` (prefix ``warden_proxy_``). The sidecar runs as a subprocess
(``python -m sidecar.runner``) with a bundle built here in the documented
format, so every test goes through the same code path production does.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from sidecar.proxy.scram import make_verifier
from sidecar.proxy.session import NATIVE_RELAY_AVAILABLE

ROOT = Path(__file__).resolve().parents[3]
ALICE_TOKEN = "wdn_alice_" + "a1" * 16
BOB_TOKEN = "wdn_bob_" + "b2" * 16
SEC_TOKEN = "wdn_sec_" + "c3" * 16

SCHEMA_SQL = """
CREATE TABLE customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    ssn text NOT NULL
);
INSERT INTO customers
SELECT i, 'Customer ' || i, 'user' || i || '@example.com',
       lpad(i::text, 3, '0') || '-55-' || (1000 + i)
FROM generate_series(1, 50) AS i;
CREATE TABLE notes (id serial PRIMARY KEY, body text);
-- Records every DDL command that reaches the database, so a test can prove a
-- refused statement never did.
CREATE TABLE ddl_seen (tag text, at timestamptz DEFAULT now());
CREATE FUNCTION record_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.ddl_seen(tag) VALUES (tg_tag); END $$;
CREATE EVENT TRIGGER record_ddl ON ddl_command_start EXECUTE FUNCTION record_ddl();
"""

SSNS = [f"{i:03d}-55-{1000 + i}" for i in range(1, 51)]
EMAILS = [f"user{i}@example.com" for i in range(1, 51)]


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


# Nothing listens on port 1: a wrong upstream whatever server (TCP or socket) the tests use.
UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/postgres"


def admin_url() -> str:
    """The maintenance database on the server DATABASE_URL names."""
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return with_database(url, "postgres")


def create_database(prefix: str = "warden_proxy_") -> str:
    name = prefix + secrets.token_hex(4)
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # PostgreSQL's JIT (on by default) compiles a statement whose estimated cost
        # passes jit_above_cost; masked rewrites (a subquery per JSON path, functions
        # the planner guesses 100 rows for) pass it on tables of five rows, and it took
        # 1-2 s a statement. Scratch databases go without, as the private cluster goes
        # without fsync: the same results, sooner.
        conn.execute(f'ALTER DATABASE "{name}" SET jit = off')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def identity(
    name: str,
    token: str,
    *,
    kind: str = "human",
    teams: list[str] | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "teams": teams or [],
        "owner": owner,
        "expires_at": None,
        "credentials": [
            {"id": f"tok_{name}", "scram_sha_256": make_verifier(token), "expires_at": None}
        ],
    }


def build_bundle(datasource: str, **overrides: Any) -> dict[str, Any]:
    """A realistic bundle: classified PII masked, DROP blocked, DELETE without WHERE held."""
    from sidecar.engine import compute_revision

    bundle: dict[str, Any] = {
        "format": "warden.bundle/1",
        "revision": "",
        "issued_at": "2026-11-23T12:00:00Z",
        "datasource": {
            "name": datasource,
            "engine": "postgresql",
            "dialect": "postgres",
            "environment": "production",
            "criticality": 5,
        },
        "schema": {
            "tables": [
                {
                    "schema": "public",
                    "name": "customers",
                    "kind": "table",
                    "columns": [
                        {"name": "id", "type": "integer"},
                        {"name": "name", "type": "text"},
                        {"name": "email", "type": "text"},
                        {"name": "ssn", "type": "text"},
                    ],
                },
                {
                    "schema": "public",
                    "name": "notes",
                    "kind": "table",
                    "columns": [
                        {"name": "id", "type": "integer"},
                        {"name": "body", "type": "text"},
                    ],
                },
                {
                    "schema": "public",
                    "name": "ddl_seen",
                    "kind": "table",
                    "columns": [
                        {"name": "tag", "type": "text"},
                        {"name": "at", "type": "timestamp with time zone"},
                    ],
                },
            ]
        },
        "identities": [
            identity("alice", ALICE_TOKEN, teams=["eng"]),
            identity("bob", BOB_TOKEN, kind="agent", teams=["eng"], owner="alice"),
            identity("sec", SEC_TOKEN, teams=["security"]),
        ],
        "classifications": [
            {"name": "pii.email", "level": "confidential"},
            {"name": "pii.ssn", "level": "restricted"},
        ],
        "column_classifications": [
            {
                "schema": "public",
                "table": "customers",
                "column": "email",
                "classification": "pii.email",
            },
            {
                "schema": "public",
                "table": "customers",
                "column": "ssn",
                "classification": "pii.ssn",
            },
        ],
        "masking_rules": [
            {
                "classification": "pii.email",
                "strategy": "email",
                "params": {},
                "exempt_teams": ["security"],
                "environments": [],
            },
            {
                "classification": "pii.ssn",
                "strategy": "partial",
                "params": {"keep_last": 4},
                "exempt_teams": ["security"],
                "environments": [],
            },
        ],
        "guardrails": [
            {
                "name": "no-drop",
                "position": 1,
                "enabled": True,
                "action": "block",
                "message": "Dropping objects is not allowed through Warden",
                "conditions": {"statement_kinds": ["drop", "truncate"]},
            },
            {
                "name": "delete-needs-review",
                "position": 2,
                "enabled": True,
                "action": "review",
                "message": "Deleting rows needs a reviewer",
                "conditions": {"statement_kinds": ["delete"]},
            },
            {
                "name": "allow-the-rest",
                "position": 100,
                "enabled": True,
                "action": "allow",
                "message": "",
                "conditions": {},
            },
        ],
        "risk": {"review_at": 101, "block_at": 101, "critical_at": 101},
        "approvals": {"hold_seconds": 0},
    }
    bundle.update(overrides)
    bundle["revision"] = compute_revision(bundle)
    return bundle


@dataclass
class Sidecar:
    """A running sidecar subprocess and what a test needs to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    database: str
    state_dir: Path
    config_path: Path
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def dsn(self, user: str = "alice", token: str = ALICE_TOKEN, **kw: str) -> str:
        params = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": user,
            "password": token,
            "dbname": self.database,
            "sslmode": "disable",
        }
        params.update(kw)
        return make_conninfo("", **params)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def events(self) -> list[dict[str, Any]]:
        """Every audit event in the spool (after the sidecar's periodic flush)."""
        out = []
        for path in sorted((self.state_dir / "spool").glob("*.jsonl")):
            # Complete lines only: the sidecar may be writing the last one right now.
            complete = path.read_text().rpartition("\n")[0]
            out += [json.loads(line) for line in complete.splitlines() if line]
        return out

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# The relay the sidecars started here use, set by the ``relay`` fixture: the proxy
# tests and tests/security run once on the native relay, once on Python alone.
_RELAY = {"native_relay": NATIVE_RELAY_AVAILABLE}


def _relay_in_use(name: str) -> Iterator[str]:
    if name == "native" and not NATIVE_RELAY_AVAILABLE:
        pytest.skip("the native relay is not built: python -m sidecar.proxy.build_relay")
    _RELAY["native_relay"] = name == "native"
    yield name
    _RELAY["native_relay"] = NATIVE_RELAY_AVAILABLE


@pytest.fixture(scope="module", autouse=True, params=["native", "python"])
def relay(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _relay_in_use(request.param)


def each_relay_where_used() -> Any:
    """A ``relay`` fixture for a module where only some tests run a sidecar: those
    (through ``upstream``, which asks for it) run on both relays, the others once."""

    @pytest.fixture(scope="module", params=["native", "python"])
    def relay(request: pytest.FixtureRequest) -> Iterator[str]:
        yield from _relay_in_use(request.param)

    return relay


def one_relay() -> Any:
    """A ``relay`` fixture for a module whose subject is not how messages are relayed
    (start-up, sign-in, TLS to the upstream, workers): its tests run once, on the
    relay a sidecar uses by default, which keeps ``make test`` within its time."""

    @pytest.fixture(scope="module", autouse=True)
    def relay() -> str:
        _RELAY["native_relay"] = NATIVE_RELAY_AVAILABLE
        return "native" if NATIVE_RELAY_AVAILABLE else "python"

    return relay


def start_sidecar(
    workdir: Path, upstream_dsn: str, bundle: dict[str, Any], **config: Any
) -> Sidecar:
    workdir.mkdir(parents=True, exist_ok=True)
    bundle_path = workdir / "bundle.json"
    bundle_path.write_text(json.dumps(bundle))
    ready = workdir / "ready.json"
    ready.unlink(missing_ok=True)
    inner = bundle["bundle"] if isinstance(bundle.get("bundle"), dict) else bundle
    settings = {
        "upstream_dsn": upstream_dsn,
        "bundle_file": str(bundle_path),
        "state_dir": str(workdir / "state"),
        # The sidecar accepts only bundles naming its datasource: the bundle's own here.
        "datasource": inner["datasource"]["name"],
        "listen_port": 0,
        "metrics_listen": "127.0.0.1:0",
        "ready_file": str(ready),
        "sidecar_id": "test-sidecar",
        # Most proxy tests reach their scratch database as its superuser; the
        # least-privilege check has its own tests (tests/security/test_upstream_role.py),
        # and tests/security passes an unprivileged role anyway.
        "allow_privileged_upstream": True,
        # Tests replace the bundle file and wait for the new revision: read it often
        # (the default, every second, costs a test up to a second per change).
        "bundle_file_interval": 0.05,
        # The classification scan at start runs in a worker process of its own (a
        # second Python start, a second CPU): only the tests about it ask for it
        # (tests/sidecar/scanner/test_process.py, tests/sidecar/proxy/test_orphans.py).
        "scan_enabled": False,
        **_RELAY,
        **config,
    }
    config_path = workdir / "sidecar.json"
    config_path.write_text(json.dumps(settings))
    log_path = workdir / "sidecar.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_SIDECAR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.runner", "--config", str(config_path)],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sidecar did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    database = urlsplit(upstream_dsn).path.lstrip("/")
    return Sidecar(
        proc=proc,
        port=info["port"],
        metrics_port=info.get("metrics_port", 0),
        database=config.get("database") or database,
        state_dir=workdir / "state",
        config_path=config_path,
        log_path=log_path,
    )


@pytest.fixture(scope="module")
def upstream(relay: str) -> Iterator[str]:
    """A scratch database with PII, seeded; yields its admin DSN (superuser). One per
    relay, so the tests of the second relay start from the same data as the first's."""
    name = create_database()
    dsn = with_database(admin_url(), name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    yield dsn
    drop_database(name)


@pytest.fixture(scope="module")
def sidecar(
    relay: str, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    workdir = tmp_path_factory.mktemp("sidecar")
    name = urlsplit(upstream).path.lstrip("/")
    proc = start_sidecar(workdir, upstream, build_bundle(name))
    yield proc
    proc.stop()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
