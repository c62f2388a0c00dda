"""The sandbox the compatibility suite runs in: a role, scratch databases, sidecars.

Everything here is made for one run and removed at its end: an unprivileged
upstream role ``warden_compat_<hex>`` (LOGIN, no SUPERUSER/CREATEDB/CREATEROLE,
owner of the scratch databases it uses, nothing else), scratch databases
``warden_compat_<hex>_<suite>_<side>`` owned by it, and sidecars started as
production starts them (``python -m sidecar.runner --config sidecar.json``, an
offline bundle file) in front of a *sandbox* datasource, reached by an identity
exempt from masking, under the ``allow-sandbox`` guardrail the demo seeds.
The same role is used directly and as the sidecar's upstream role.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from sidecar.engine import compute_revision
from sidecar.proxy.scram import make_verifier

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = "compat"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url(database: str = "postgres") -> str:
    """``DATABASE_URL`` (an administrator of the server) with another database."""
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def server_address() -> tuple[str, int]:
    parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_URL))
    return parts.hostname or "127.0.0.1", parts.port or 5432


def sandbox_bundle(datasource: str, token: str) -> dict[str, Any]:
    """A sandbox datasource's bundle, as the control plane would compile it.

    One identity, ``compat``, in the team ``compat`` that every masking rule exempts
    (the one classified column is a snapshot entry only: nothing in the scratch
    databases is masked, but the identity is exempt as a sandbox user would be);
    the guardrails are the demo's ``allow-sandbox`` (``governance`` seed_demo).
    Held statements are answered at once (``hold_seconds`` 0, and no approvals
    URL in offline mode): a hold is a refusal here, never a wait.
    """
    bundle: dict[str, Any] = {
        "format": "warden.bundle/1",
        "revision": "",
        "issued_at": "2026-01-01T00:00:00Z",
        "datasource": {
            "name": datasource,
            "engine": "postgresql",
            "dialect": "postgres",
            "environment": "sandbox",
            "criticality": 1,
        },
        "schema": {
            "tables": [
                {
                    "schema": "public",
                    "name": "warden_compat_people",
                    "kind": "table",
                    "columns": [
                        {"name": "id", "type": "integer"},
                        {"name": "email", "type": "text"},
                    ],
                }
            ]
        },
        "identities": [
            {
                "name": IDENTITY,
                "kind": "human",
                "teams": ["compat"],
                "owner": None,
                "expires_at": None,
                "credentials": [
                    {"id": "tok_compat", "scram_sha_256": make_verifier(token), "expires_at": None}
                ],
            }
        ],
        "classifications": [{"name": "pii.email", "level": "confidential"}],
        "column_classifications": [
            {
                "schema": "public",
                "table": "warden_compat_people",
                "column": "email",
                "classification": "pii.email",
            }
        ],
        "masking_rules": [
            {
                "classification": "pii.email",
                "strategy": "email",
                "params": {},
                "exempt_teams": ["compat"],
                "environments": [],
            }
        ],
        "guardrails": [
            {
                "name": "allow-sandbox",
                "position": 1,
                "enabled": True,
                "action": "allow",
                "message": "",
                "conditions": {"environments": ["sandbox"]},
            }
        ],
        "risk": {"review_at": 101, "block_at": 101, "critical_at": 101},
        "approvals": {"hold_seconds": 0},
    }
    bundle["revision"] = compute_revision(bundle)
    return bundle


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    database: str
    token: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.workdir / "sidecar.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """Every audit event the sidecar spooled (read after it stopped)."""
        out: list[dict[str, Any]] = []
        for path in sorted((self.workdir / "state" / "spool").rglob("*.jsonl")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


@dataclass
class Sandbox:
    """The run's role and the databases and sidecars made for it."""

    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    token: str = field(default_factory=lambda: "wdn_compat_" + secrets.token_hex(16))
    databases: list[str] = field(default_factory=list)
    sidecars: list[Sidecar] = field(default_factory=list)
    role_created: bool = False

    @property
    def role(self) -> str:
        return f"warden_compat_{self.tag}"

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(server_url(database), autocommit=True, connect_timeout=10)

    def create_role(self) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                ).format(sql.Identifier(self.role), sql.Literal(self.password))
            )
        self.role_created = True

    def create_database(self, suffix: str, extensions: tuple[str, ...] = ()) -> str:
        """A scratch database owned by the role; ``extensions`` are created in it as an
        administrator would (some are not trusted, and the role may create none it
        does not own the database for), so the suites find them installed."""
        name = f"{self.role}_{suffix}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(self.role)
                )
            )
        self.databases.append(name)
        if extensions:
            with self.admin(name) as conn:
                for ext in extensions:
                    conn.execute(
                        sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext))
                    )
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.databases:
            self.databases.remove(name)

    def upstream_url(self, database: str) -> str:
        host, port = server_address()
        return (
            f"postgresql://{quote(self.role)}:{quote(self.password)}@{host}:{port}/"
            f"{quote(database)}?sslmode=disable"
        )

    def start_sidecar(self, database: str) -> Sidecar:
        workdir = self.workdir / f"sidecar-{database}"
        workdir.mkdir(parents=True, exist_ok=True)
        datasource = f"compat-{database}"
        (workdir / "bundle.json").write_text(json.dumps(sandbox_bundle(datasource, self.token)))
        ready = workdir / "ready.json"
        ready.unlink(missing_ok=True)
        config = {
            "upstream_dsn": self.upstream_url(database),
            "bundle_file": str(workdir / "bundle.json"),
            "state_dir": str(workdir / "state"),
            "datasource": datasource,
            "listen_host": "127.0.0.1",
            "listen_port": 0,
            "ready_file": str(ready),
            "sidecar_id": "compat",
            # Nothing ships the spool here: room for every event of a run.
            "spool_max_bytes": 4 * 1024**3,
            "log_level": "WARNING",
        }
        (workdir / "sidecar.json").write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_SIDECAR_")}
        log = (workdir / "sidecar.log").open("wb")
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "sidecar.runner", "--config", str(workdir / "sidecar.json")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                text = (workdir / "sidecar.log").read_text(errors="replace")
                raise RuntimeError(f"the sidecar did not start:\n{text[-4000:]}")
            time.sleep(0.05)
        port = int(json.loads(ready.read_text())["port"])
        sidecar = Sidecar(proc, port, workdir, database, self.token)
        self.sidecars.append(sidecar)
        return sidecar

    def cleanup(self) -> list[str]:
        """Stop every sidecar, drop every database and the role; the problems met."""
        problems: list[str] = []
        for sidecar in self.sidecars:
            try:
                sidecar.stop()
            except Exception as exc:  # keep cleaning up
                problems.append(f"stopping a sidecar: {exc}")
        self.sidecars.clear()
        for name in list(self.databases):
            try:
                self.drop_database(name)
            except Exception as exc:
                problems.append(f"dropping {name}: {exc}")
                self.databases.remove(name)
        if self.role_created:
            try:
                with self.admin() as conn:
                    conn.execute(
                        sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.role))
                    )
                self.role_created = False
            except Exception as exc:
                problems.append(f"dropping role {self.role}: {exc}")
        return problems


def refusals(events: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[Any]]:
    """The statements the sidecar refused or held, grouped by (outcome, first rule,
    statement kind, the rule's message): ``[count, an example's redacted text]``."""
    out: dict[tuple[str, str, str, str], list[Any]] = {}
    for event in events:
        if event.get("type") != "statement" or event.get("action") in (None, "allow"):
            continue
        reasons = event.get("reasons") or [{}]
        first = reasons[0] if isinstance(reasons[0], dict) else {}
        key = (
            str(event.get("outcome") or event.get("action")),
            str(first.get("rule") or "-"),
            str(event.get("kind") or "?"),
            " ".join(str(first.get("message") or "").split())[:160],
        )
        entry = out.setdefault(key, [0, " ".join(str(event.get("statement") or "").split())[:200]])
        entry[0] += 1
    return out
