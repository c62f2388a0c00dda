"""Fixtures for the security-review attack tests: real PostgreSQL, the real sidecar.

Each module gets a scratch database seeded with the proxy tests' ``SCHEMA_SQL``
plus a schema ``staging`` whose ``customers`` table shadows ``public.customers``
(``ALTER DATABASE ... SET search_path = staging, public``), and a schema
``shadow`` that exists in the database but not in the bundle's snapshot. The
sidecar reaches the database as an unprivileged login role made for the module
(``warden_app_<hex>``): no superuser, owns nothing, DML on the tables. Two
grant exists only so the "did it reach the database" witness cannot pass
vacuously: CREATE on ``public``/``staging`` (a leaked ``CREATE TABLE``
succeeds and the event trigger's ``ddl_seen`` row survives). The role is not a
member of any privileged role (the sidecar would refuse it), so a leaked
``COPY ... TO PROGRAM`` would fail at the server: those attacks assert that the
refusal is Warden's own. ``test_witnesses.py`` proves the witnesses see a
statement that does reach the database.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.sidecar.proxy.conftest import (
    ROOT,
    SCHEMA_SQL,
    SSNS,
    Sidecar,
    admin_url,
    build_bundle,
    create_database,
    drop_database,
    relay,  # noqa: F401 - the fixture: every test here runs on both relays
    start_sidecar,
    wait_for,
    with_database,
)


def partial(value: str, keep: int = 4) -> str:
    return "*" * (len(value) - keep) + value[-keep:]


# What alice (masked: pii.ssn partial keep_last 4) sees of public.customers.ssn, by id.
PUBLIC_MASKED = [partial(s) for s in SSNS]
STAGING_SSNS = [f"STAGING-{i:04d}" for i in range(1, 51)]
SHADOW_SSNS = [f"SHADOW-{i:04d}" for i in range(1, 51)]

EXTRA_SQL = """
-- The DDL witness records whoever runs the DDL (the sidecar's role, the installer's
-- owner role...), not only roles that may insert into ddl_seen.
ALTER FUNCTION public.record_ddl() SECURITY DEFINER SET search_path = pg_catalog, public;
CREATE SCHEMA staging;
CREATE TABLE staging.customers (id integer PRIMARY KEY, name text NOT NULL, ssn text NOT NULL);
INSERT INTO staging.customers
SELECT i, 'Staging ' || i, 'STAGING-' || lpad(i::text, 4, '0') FROM generate_series(1, 50) AS i;
-- In the database, not in the bundle's snapshot.
CREATE SCHEMA shadow;
CREATE TABLE shadow.customers (id integer PRIMARY KEY, name text NOT NULL, ssn text NOT NULL);
INSERT INTO shadow.customers
SELECT i, 'Shadow ' || i, 'SHADOW-' || lpad(i::text, 4, '0') FROM generate_series(1, 50) AS i;
-- A user function: not on any built-in list, so only a guardrail naming it may allow it.
CREATE FUNCTION public.note_count() RETURNS bigint LANGUAGE sql
    AS 'SELECT count(*) FROM public.notes';
REVOKE EXECUTE ON FUNCTION public.note_count() FROM PUBLIC;
"""

STAGING_TABLE = {
    "schema": "staging",
    "name": "customers",
    "kind": "table",
    "columns": [
        {"name": "id", "type": "integer"},
        {"name": "name", "type": "text"},
        {"name": "ssn", "type": "text"},
    ],
}


def role_url(url: str, role: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@dataclass
class Upstream:
    """A scratch database, its superuser DSN, and the sidecar's unprivileged role."""

    name: str
    admin_dsn: str
    app_dsn: str
    role: str

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def ddl_tags(self) -> list[str]:
        with self.admin() as conn:
            return [r[0] for r in conn.execute("SELECT tag FROM public.ddl_seen ORDER BY at")]

    def clear_ddl_seen(self) -> None:
        with self.admin() as conn:
            conn.execute("DELETE FROM public.ddl_seen")

    def relation_exists(self, name: str) -> bool:
        with self.admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = %s",
                (name,),
            ).fetchone()
        return bool(row and row[0])


def make_upstream(prefix: str = "warden_sec_", *, staging_search_path: bool = True) -> Upstream:
    name = create_database(prefix)
    admin = with_database(admin_url(), name)
    role = "warden_app_" + secrets.token_hex(4)
    password = secrets.token_hex(12)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(EXTRA_SQL)
        conn.execute(
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}' "
            "NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS NOREPLICATION"
        )
        for schema in ("public", "staging", "shadow"):
            conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
            conn.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
            )
            conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}")
        conn.execute(f"GRANT EXECUTE ON FUNCTION public.note_count() TO {role}")
        # Witness grants (see the module docstring): only a leak can use them.
        conn.execute(f"GRANT CREATE ON SCHEMA public, staging TO {role}")
        if staging_search_path:
            conn.execute(f'ALTER DATABASE "{name}" SET search_path = staging, public')
        conn.execute("DELETE FROM public.ddl_seen")
    return Upstream(name, admin, role_url(admin, role, password), role)


def drop_upstream(upstream: Upstream) -> None:
    try:
        with psycopg.connect(upstream.admin_dsn, autocommit=True) as conn:
            conn.execute(f"REASSIGN OWNED BY {upstream.role} TO CURRENT_USER")
            conn.execute(f"DROP OWNED BY {upstream.role}")
    finally:
        drop_database(upstream.name)
        with psycopg.connect(admin_url(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {upstream.role}")


def _schema_knows_masking_key() -> bool:
    """Whether this tree's bundle schema still has ``datasource.masking_key`` (the
    fixed sidecar carries no key in the bundle; today's requires one)."""
    schema = json.loads((ROOT / "sidecar" / "engine" / "bundle.schema.json").read_text())
    return "masking_key" in schema["properties"]["datasource"]["properties"]


def finalize(bundle: dict[str, Any]) -> dict[str, Any]:
    from sidecar.engine import compute_revision

    out = copy.deepcopy(bundle)
    out["revision"] = ""
    out["revision"] = compute_revision(out)
    return out


def security_bundle(database: str, **overrides: Any) -> dict[str, Any]:
    """The proxy tests' bundle, plus staging.customers (unclassified) in the snapshot
    and the datasource's search_path ``staging, public``. Keeps ``allow-the-rest``."""
    base = build_bundle(database)
    datasource = {**base["datasource"], "search_path": ["staging", "public"]}
    if not _schema_knows_masking_key():
        datasource.pop("masking_key", None)
    bundle = {
        **base,
        "datasource": datasource,
        "schema": {"tables": [*base["schema"]["tables"], STAGING_TABLE]},
    }
    bundle.update(copy.deepcopy(overrides))
    return finalize(bundle)


def guardrail(name: str, action: str, position: int, **conditions: Any) -> dict[str, Any]:
    return {
        "name": name,
        "position": position,
        "enabled": True,
        "action": action,
        "message": f"{name} ({action})",
        "conditions": conditions,
    }


def bundle_file(sidecar: Sidecar) -> Path:
    return Path(json.loads(sidecar.config_path.read_text())["bundle_file"])


def publish(sidecar: Sidecar, bundle: dict[str, Any]) -> None:
    """Replace the running sidecar's bundle file atomically and wait until it serves it."""
    bundle = finalize(bundle)
    path = bundle_file(sidecar)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(bundle))
    tmp.replace(path)
    revision = f'revision="{bundle["revision"]}"'
    assert wait_for(lambda: revision in sidecar.metrics(), timeout=15), "bundle not picked up"


@pytest.fixture(scope="module")
def upstream(relay: str) -> Iterator[Upstream]:  # noqa: F811 - one database per relay
    up = make_upstream()
    try:
        yield up
    finally:
        drop_upstream(up)


@pytest.fixture(scope="module")
def sidecar(
    relay: str,  # noqa: F811 - set before the sidecar starts
    upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sidecar]:
    """The module's sidecar: production, alice masked, allow-the-rest guardrail."""
    workdir = tmp_path_factory.mktemp("sidecar")
    proc = start_sidecar(workdir, upstream.app_dsn, security_bundle(upstream.name))
    try:
        yield proc
    finally:
        proc.stop()


def exempt(bundle: dict[str, Any], teams: list[str]) -> dict[str, Any]:
    """``bundle`` with every masking rule exempting ``teams``."""
    out = copy.deepcopy(bundle)
    for rule in out["masking_rules"]:
        rule["exempt_teams"] = teams
    return out


@pytest.fixture(scope="module")
def _exempt_sidecar(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Sidecar, dict[str, Any]]]:
    """A module's sidecar where alice (team eng) is exempt from masking: one start for
    the module's policy-change attacks instead of one per test."""
    loose = exempt(security_bundle(upstream.name), ["security", "eng"])
    proc = start_sidecar(tmp_path_factory.mktemp("exempt"), upstream.app_dsn, finalize(loose))
    try:
        yield proc, loose
    finally:
        proc.stop()


@pytest.fixture
def exempt_then_masked(
    _exempt_sidecar: tuple[Sidecar, dict[str, Any]],
) -> tuple[Sidecar, dict[str, Any]]:
    """That sidecar, given the exempt bundle again (an earlier test published the
    other), and the bundle that masks alice, for the test to publish."""
    proc, loose = _exempt_sidecar
    publish(proc, loose)
    return proc, exempt(loose, ["security"])


@pytest.fixture
def witness_file() -> Iterator[Path]:
    """A path a leaked ``COPY ... TO PROGRAM 'touch <path>'`` would create (the
    server runs as another OS user, so it lives in the shared temp directory)."""
    path = Path(tempfile.gettempdir()) / f"warden_pwned_{secrets.token_hex(6)}"
    yield path
    path.unlink(missing_ok=True)


# ---- audit events ---------------------------------------------------------------------


def statement_events(sidecar: Sidecar, needle: str) -> list[dict[str, Any]]:
    """Statement events whose redacted ``statement`` contains the word ``needle``."""
    pattern = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(needle)}(?![A-Za-z0-9_])")
    return [
        e
        for e in sidecar.events()
        if e.get("type") == "statement" and pattern.search(str(e.get("statement") or ""))
    ]


def wait_event(sidecar: Sidecar, needle: str, timeout: float = 8.0) -> dict[str, Any]:
    """The (single, latest) statement event naming ``needle``, once flushed to the spool."""
    found = wait_for(lambda: statement_events(sidecar, needle), timeout=timeout)
    assert found, f"no audit event whose statement names {needle!r}"
    return found[-1]


def session_state(event: dict[str, Any]) -> dict[str, Any]:
    state = event.get("session_state")
    assert isinstance(state, dict), (
        "the audit event does not record the session state its statement was decided "
        f"under (no session_state; keys: {sorted(event)})"
    )
    return state


def assert_decided_under(event: dict[str, Any], schema: str) -> None:
    """The event's session_state.search_path resolves unqualified names to ``schema``
    (it is in the path, before the other of public/staging if that is there too)."""
    path = list(session_state(event).get("search_path") or [])
    other = {"public": "staging", "staging": "public"}[schema]
    assert schema in path, f"decided under search_path {path}, expected {schema} first"
    assert other not in path or path.index(schema) < path.index(other), (
        f"decided under search_path {path}, expected {schema} before {other}"
    )


def assert_warden_refused(error: psycopg.Error) -> None:
    assert error.sqlstate == "42501", f"{error.sqlstate}: {error}"
    assert "Warden" in str(error), f"42501 but not Warden's refusal: {error}"


def assert_refused_fields(fields: dict[str, str]) -> None:
    assert fields.get("C") == "42501", fields
    assert "Warden" in fields.get("M", ""), f"42501 but not Warden's refusal: {fields}"
