"""Real parts for the sidecar ↔ control plane tests: reuses the bundle tests' processes.

The control plane (uvicorn on ``config.asgi``), the Celery worker
and the per-session signing key come from ``tests.stack``; this adds
a scratch upstream database and the real sidecar process (``python -m sidecar
run --config FILE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection

from tests.dsn import database_url
from tests.stack import (  # noqa: F401 - fixtures, re-exported for pytest
    ROOT,
    _celery_worker_process,
    _clean_redis,
    _control_plane_process,
    _fresh_content_types,
    _signing_key,
    _stop,
    bundle_relay,
    celery_worker,
    control_plane,
    pinned_key,
    sidecar_clients,
)


@pytest.fixture(autouse=True)
def _no_idle_worker_between(
    request: pytest.FixtureRequest,
    _celery_worker_process: Any,  # noqa: F811 - the fixture
) -> None:
    """A test that did not ask for the shared Celery worker runs without one: left
    running, it would take this test's tasks (a recompile its fixtures queued, say)
    and run them while the test looks, or keep a retry in memory past the Redis flush."""
    if "celery_worker" in request.fixturenames:
        return
    for running in _celery_worker_process:
        running.stop()
    _celery_worker_process.clear()


UPSTREAM_ROWS = [
    (1, "Ada Lovelace", "ada@example.com", "+44 20 7946 0001", "123-45-6789", "1815-12-10"),
    (2, "Alan Turing", "alan@example.com", "+44 20 7946 0002", "987-65-4321", "1912-06-23"),
]


def upstream_dbname() -> str:
    """The name of ``upstream_db``'s database (clients connect to it through the sidecar)."""
    return f"{connection.settings_dict['NAME']}_upstream"


def app_role() -> str:
    """The unprivileged role the sidecars reach ``upstream_db`` as (made with it)."""
    return f"{upstream_dbname()}_app"


def as_app_role(url: str) -> str:
    """``url`` (the upstream's, as its administrator) as the sidecar's own role."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{app_role()}@{host}"))


@pytest.fixture(scope="session")
def _upstream_database(django_db_setup: Any) -> Iterator[str]:
    """``upstream_db``'s database and role, made once: dropping a database makes
    PostgreSQL checkpoint (a second or more on a busy server), so each test empties
    it instead."""
    name = upstream_dbname()
    role = app_role()
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEROLE NOBYPASSRLS')
    yield name
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def upstream_db(_upstream_database: str) -> str:
    """A scratch database shaped like ``DEMO_SCHEMA``'s customers table; its DSN (as its
    administrator). Sidecars reach it as ``app_role()``: no superuser, owns nothing,
    DML on the tables (SidecarProcess swaps the role in).

    Each test gets it as new: an earlier test's sessions are ended and its schema
    ``public`` (every table, grant and default privilege in it) is made again, as a
    fresh database has it."""
    name, role = _upstream_database, app_role()
    with psycopg.connect(database_url(name), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
        conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
    with psycopg.connect(database_url(name)) as conn:
        conn.execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, full_name text, email text,"
            " phone text, ssn text, birth_date date)"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO customers VALUES (%s, %s, %s, %s, %s, %s)", UPSTREAM_ROWS)
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
        )
        conn.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{role}"'
        )
    return database_url(name)


def token_datasource(sidecar_token: str) -> str:
    """The name of the datasource a sidecar token is bound to: the sidecar's ``datasource``."""
    from governance.models import Sidecar, token_digest

    sidecar = Sidecar.objects.select_related("datasource").get(
        token_digest=token_digest(sidecar_token)
    )
    return sidecar.datasource.name


class SidecarProcess:
    """``python -m sidecar run --config FILE``; ``port`` once its ready file appears.

    A config without ``datasource`` gets its token's (the key is required)."""

    def __init__(self, *, config: dict[str, Any], state_dir: Path, timeout: float = 30.0) -> None:
        if "datasource" not in config and config.get("token"):
            config = {**config, "datasource": token_datasource(config["token"])}
        if upstream_dbname() in config.get("upstream_dsn", ""):
            # Never as the database's administrator: the sidecar would refuse it.
            config = {**config, "upstream_dsn": as_app_role(config["upstream_dsn"])}
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file = state_dir / "ready.json"
        self.ready_file.unlink(missing_ok=True)  # left by an earlier process on this state
        self.log = state_dir / "sidecar.log"
        config_file = state_dir / "sidecar.json"
        config_file.write_text(
            json.dumps({**config, "state_dir": str(state_dir), "ready_file": str(self.ready_file)})
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DJANGO", "WARDEN_BUNDLE", "WARDEN_SIDECAR"))
        }
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "--config", str(config_file)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.port = self._wait_ready(timeout)
        except RuntimeError:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited: {self.log.read_text()[-3000:]}")
            try:
                return int(json.loads(self.ready_file.read_text())["port"])
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        raise RuntimeError(f"sidecar not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        _stop(self.proc)


def sidecar_config(
    server: Any, sidecar_token: str, upstream_db: str, **overrides: Any
) -> dict[str, Any]:
    """A real sidecar's configuration against the test control plane (``overrides`` win)."""
    return {
        "upstream_dsn": upstream_db,
        "listen_port": 0,
        "control_plane_url": server.url,
        "token": sidecar_token,
        "datasource": token_datasource(sidecar_token),
        "bundle_public_keys": pinned_key(),
        "bundle_wait": 30,
        "bundle_max_backoff": 1,
        "heartbeat_interval": 1,
        **overrides,
    }
