"""Hash masking inside the protected database: the installer (through the real command),
HMAC-SHA-256 against Python's, who may call and read what, the sidecar's status check,
rotation, and the command's errors. All against a real PostgreSQL: a scratch database
per module and random unprivileged login roles, dropped afterwards.

The ``warden_masking`` owner role is cluster-wide and may be shared with other scratch
databases (other modules, parallel runs): teardown drops it only when PostgreSQL agrees
that nothing in any database still depends on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from sidecar.masking_db import (
    OWNER_ROLE,
    VERSION,
    MaskingError,
    install,
    rotate_key,
    status,
)
from tests.sidecar.proxy.conftest import (
    ROOT,
    admin_url,
    create_database,
    drop_database,
    with_database,
)

INSTALL_HINT = "python -m sidecar install-masking --config FILE --admin-dsn DSN"


@dataclass(frozen=True)
class Scratch:
    database: str
    admin_dsn: str  # a superuser on the scratch database
    role: str  # the sidecar's unprivileged upstream role
    sidecar_dsn: str
    config: Path  # the sidecar's JSON config (upstream_dsn = sidecar_dsn)


def _create_role(attributes: str = "LOGIN NOSUPERUSER") -> str:
    name = "warden_mask_" + secrets.token_hex(4)
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" {attributes}')
    return name


def _drop_role(name: str, *databases: str) -> None:
    """Roles are cluster-wide: drop what the role owns and holds in the databases that
    still exist, then the role."""
    for database in databases:
        with psycopg.connect(_dsn(database), autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{name}"')
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def _drop_owner_role_if_unused() -> None:
    """DROP ROLE refuses while any database still holds an object owned by, or a
    privilege granted to, the role; then another scratch database still uses it."""
    with (
        psycopg.connect(admin_url(), autocommit=True) as conn,
        contextlib.suppress(errors.DependentObjectsStillExist, errors.ObjectInUse),
    ):
        conn.execute(f'DROP ROLE IF EXISTS "{OWNER_ROLE}"')


def _dsn(database: str, user: str | None = None) -> str:
    url = with_database(admin_url(), database)
    return make_conninfo(url, user=user) if user else url


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    database = create_database("warden_mask_")
    role = _create_role()
    tmp = tmp_path_factory.mktemp("masking")
    config = tmp / "sidecar.json"
    sidecar_dsn = _dsn(database, role)
    config.write_text(
        json.dumps(
            {
                "upstream_dsn": sidecar_dsn,
                "bundle_file": str(tmp / "bundle.json"),
                "state_dir": str(tmp / "state"),
                "datasource": database,
            }
        )
    )
    try:
        yield Scratch(database, _dsn(database), role, sidecar_dsn, config)
    finally:
        drop_database(database)  # the schema, its objects and every grant in it
        _drop_role(role)
        _drop_owner_role_if_unused()


@pytest.fixture(scope="module")
def installed(scratch: Scratch) -> subprocess.CompletedProcess[str]:
    """The first run of the real command on the scratch database."""
    return _cli(
        "install-masking", "--config", str(scratch.config), "--admin-dsn", scratch.admin_dsn
    )


@pytest.fixture
def extra_role(scratch: Scratch) -> Iterator[str]:
    """Another unprivileged login role, never granted anything by the installer."""
    role = _create_role()
    try:
        yield role
    finally:
        _drop_role(role, scratch.database)


def _key_rows(scratch: Scratch) -> list[tuple[int, bytes, bytes, bool]]:
    with psycopg.connect(scratch.admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT version, inner_pad, outer_pad, active FROM warden_masking.masking_key"
            " ORDER BY version"
        ).fetchall()
    return [(v, bytes(i), bytes(o), a) for v, i, o, a in rows]


def _active_key(scratch: Scratch) -> bytes:
    """The active HMAC key, recovered from its pads (as an administrator may)."""
    (_, inner, outer, _) = next(r for r in _key_rows(scratch) if r[3])
    assert len(inner) == len(outer) == 64
    key = bytes(b ^ 0x36 for b in inner)
    assert key == bytes(b ^ 0x5C for b in outer)
    assert key[32:] == bytes(32) and key[:32] != bytes(32)  # 32 random bytes, zero-padded
    return key[:32]


def _hmac_as(dsn: str, value: str | None) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT warden_masking.hmac(%s::text)", [value]).fetchone()
    assert row is not None
    return row[0]


def test_install_twice_through_the_command_keeps_the_key(
    scratch: Scratch, installed: subprocess.CompletedProcess[str]
) -> None:
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip().startswith(
        f"installed version {VERSION} in database {scratch.database}; key created"
    )
    assert scratch.role in installed.stdout  # EXECUTE granted to the upstream DSN's user
    before = _hmac_as(scratch.sidecar_dsn, "111-22-3333")
    again = _cli(
        "install-masking", "--config", str(scratch.config), "--admin-dsn", scratch.admin_dsn
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().startswith(f"already at version {VERSION}")
    assert "key kept" in again.stdout
    assert _hmac_as(scratch.sidecar_dsn, "111-22-3333") == before
    key = _active_key(scratch)
    for row in _key_rows(scratch):
        for secret in (key.hex(), row[1].hex(), row[2].hex()):
            assert secret not in installed.stdout + installed.stderr + again.stdout + again.stderr


def test_hmac_is_hmac_sha256_of_the_utf8_bytes(scratch: Scratch, installed: Any) -> None:
    key = _active_key(scratch)
    for value in ("111-22-3333", "Zoë Ølsen, 東京 🙂", ""):
        expected = hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        assert _hmac_as(scratch.sidecar_dsn, value) == expected
    assert _hmac_as(scratch.sidecar_dsn, None) is None  # NULL in, NULL out


def test_the_sidecar_role_calls_but_cannot_read_the_key(
    scratch: Scratch, installed: Any, extra_role: str
) -> None:
    key = _active_key(scratch)
    rows = _key_rows(scratch)
    with psycopg.connect(scratch.sidecar_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT warden_masking.version(), warden_masking.hmac('x')").fetchone()
        assert row is not None and row[0] == VERSION and re.fullmatch(r"[0-9a-f]{64}", row[1])
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM warden_masking.masking_key")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT warden_masking.key_missing()")
        definition = conn.execute(
            "SELECT pg_get_functiondef('warden_masking.hmac(text)'::regprocedure)"
        ).fetchone()
        assert definition is not None
        text = definition[0]
        assert "SECURITY DEFINER" in text and "masking_key" in text
        for secret in [key.hex()] + [r[1].hex() for r in rows] + [r[2].hex() for r in rows]:
            assert secret not in text.lower()
        assert "\\x" not in text  # no bytea literal at all
    with psycopg.connect(scratch.admin_dsn, autocommit=True) as conn:
        owners = conn.execute(
            """
            SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'warden_masking'
            UNION ALL SELECT pg_get_userbyid(relowner) FROM pg_class
                WHERE oid = 'warden_masking.masking_key'::regclass
            UNION ALL SELECT pg_get_userbyid(proowner) FROM pg_proc
                WHERE pronamespace = 'warden_masking'::regnamespace
            """
        ).fetchall()
        assert {o for (o,) in owners} == {OWNER_ROLE}
        attributes = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
            " FROM pg_roles WHERE rolname = %s",
            [OWNER_ROLE],
        ).fetchone()
        assert attributes == (False, False, False, False, False)
    # A grant on the key table (or a column of it) is revoked by the next install.
    with psycopg.connect(scratch.admin_dsn, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA warden_masking TO "{extra_role}"')
        conn.execute(f'GRANT SELECT ON warden_masking.masking_key TO "{extra_role}"')
        conn.execute(f'GRANT SELECT (inner_pad) ON warden_masking.masking_key TO "{extra_role}"')
    install(scratch.admin_dsn, grant_to=scratch.role)
    with psycopg.connect(scratch.admin_dsn, autocommit=True) as conn:
        conn.execute(f'REVOKE USAGE ON SCHEMA warden_masking FROM "{extra_role}"')
        row = conn.execute(
            "SELECT has_table_privilege(%s, 'warden_masking.masking_key', 'SELECT'),"
            " has_column_privilege(%s, 'warden_masking.masking_key', 'inner_pad', 'SELECT')",
            [extra_role, extra_role],
        ).fetchone()
        assert row == (False, False)
    # A role without the grant may not call it (nor look into the schema).
    with (
        psycopg.connect(_dsn(scratch.database, extra_role), autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT warden_masking.hmac('x')")


def test_status_reports_what_the_sidecar_can_do(
    scratch: Scratch, installed: Any, extra_role: str
) -> None:
    fresh = create_database("warden_mask_")
    try:
        missing = status(_dsn(fresh, scratch.role))
        assert (missing.installed, missing.usable, missing.version) == (False, False, None)
        assert INSTALL_HINT in missing.detail and fresh in missing.detail
        # A schema of that name someone else made is not taken over.
        with psycopg.connect(_dsn(fresh), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA warden_masking")
        with pytest.raises(MaskingError, match="already exists and is owned by"):
            install(_dsn(fresh), grant_to=scratch.role)
    finally:
        drop_database(fresh)

    ungranted = status(_dsn(scratch.database, extra_role))
    assert ungranted.installed and not ungranted.usable
    assert extra_role in ungranted.detail and INSTALL_HINT in ungranted.detail

    with psycopg.connect(scratch.sidecar_dsn) as conn:  # an open connection, not autocommit
        ok = status(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (ok.installed, ok.usable, ok.version) == (True, True, VERSION), ok.detail
    assert status(scratch.sidecar_dsn).usable

    with psycopg.connect(scratch.admin_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM warden_masking.masking_key WHERE active")
    try:
        gone = status(scratch.sidecar_dsn)
        assert gone.installed and not gone.usable and gone.version == VERSION
        assert INSTALL_HINT in gone.detail and "key missing" in gone.detail
        # Fails closed: an error, never NULL.
        with pytest.raises(psycopg.Error, match="warden masking key missing"):
            _hmac_as(scratch.sidecar_dsn, "111-22-3333")
    finally:
        summary = install(scratch.admin_dsn, grant_to=scratch.role)
    assert summary.startswith(f"already at version {VERSION}") and "key created" in summary
    assert status(scratch.sidecar_dsn).usable


def test_rotation_changes_every_hash_and_keeps_the_old_key_inactive(
    scratch: Scratch, installed: Any
) -> None:
    with psycopg.connect(scratch.admin_dsn, autocommit=True) as conn:
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'"
        ).fetchone()
        if available:  # then the new key comes from gen_random_bytes()
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    before_rows = _key_rows(scratch)
    before = _hmac_as(scratch.sidecar_dsn, "111-22-3333")
    rotated = _cli(
        "rotate-masking-key", "--config", str(scratch.config), "--admin-dsn", scratch.admin_dsn
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "rotated the masking key" in rotated.stdout
    after = _hmac_as(scratch.sidecar_dsn, "111-22-3333")
    assert after != before
    key = _active_key(scratch)
    assert after == hmac.new(key, b"111-22-3333", hashlib.sha256).hexdigest()
    rows = _key_rows(scratch)
    assert [r[3] for r in rows].count(True) == 1
    old_active = next(r for r in before_rows if r[3])
    assert (old_active[0], old_active[1], old_active[2], False) in rows
    assert len(rows) == len(before_rows) + 1 and rows[-1][3]
    assert status(scratch.sidecar_dsn).usable
    for row in rows:
        assert row[1].hex() not in rotated.stdout + rotated.stderr


def test_command_errors_exit_2_with_one_line(scratch: Scratch, installed: Any) -> None:
    wrong = with_database(admin_url(), "postgres")
    password = "hunter2-" + secrets.token_hex(4)
    with_password = wrong.replace("://postgres@", f"://postgres:{password}@", 1)
    assert password in with_password  # trust auth ignores it; it must not be printed
    result = _cli("install-masking", "--config", str(scratch.config), "--admin-dsn", with_password)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: the admin DSN points at database postgres; this sidecar protects "
        f"{scratch.database}"
    )
    assert result.stdout == ""
    rotate = _cli("rotate-masking-key", "--config", str(scratch.config), "--admin-dsn", wrong)
    assert rotate.returncode == 2 and "points at database postgres" in rotate.stderr

    result = _cli(
        "install-masking",
        "--config",
        str(scratch.config),
        "--admin-dsn",
        scratch.admin_dsn,
        "--grant-to",
        "warden_no_such_role_" + secrets.token_hex(3),
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr

    # The sidecar's own role is no administrator: refused, clearly, nothing changed.
    result = _cli(
        "install-masking", "--config", str(scratch.config), "--admin-dsn", scratch.sidecar_dsn
    )
    assert result.returncode == 2
    assert "may not create roles and schemas" in result.stderr

    unreachable = f"postgresql://postgres:{password}@127.0.0.1:1/{scratch.database}"
    result = _cli("install-masking", "--config", str(scratch.config), "--admin-dsn", unreachable)
    assert result.returncode == 2 and "cannot connect" in result.stderr
    assert password not in result.stderr + result.stdout


def test_a_createrole_administrator_can_install(scratch: Scratch, installed: Any) -> None:
    """Not only a superuser: a role with CREATEROLE and CREATE on the database."""
    database = create_database("warden_mask_")
    admin = _create_role("LOGIN NOSUPERUSER CREATEROLE")
    try:
        with psycopg.connect(_dsn(database), autocommit=True) as conn:
            conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{admin}"')
        summary = install(_dsn(database, admin), grant_to=scratch.role, expect_database=database)
        assert summary.startswith(f"installed version {VERSION} in database {database}")
        assert status(_dsn(database, scratch.role)).usable
        with pytest.raises(MaskingError, match="points at database"):
            rotate_key(_dsn(database, admin), expect_database="elsewhere")
        assert "rotated" in rotate_key(_dsn(database, admin), expect_database=database)
    finally:
        drop_database(database)
        _drop_role(admin)


def test_per_call_cost(scratch: Scratch, installed: Any) -> None:
    """Hashing 100k values through the function stays in the microseconds per call."""
    with psycopg.connect(scratch.sidecar_dsn, autocommit=True) as conn:
        plan = conn.execute(
            "EXPLAIN (ANALYZE, TIMING OFF) "
            "SELECT warden_masking.hmac(g::text) FROM generate_series(1, 100000) g"
        ).fetchall()
    found = re.search(r"Execution Time: ([0-9.]+) ms", plan[-1][0])
    assert found is not None
    total_ms = float(found.group(1))
    micros = total_ms * 1000 / 100_000
    print(f"warden_masking.hmac: {micros:.2f} µs per call over 100k rows")
    assert micros < 200
