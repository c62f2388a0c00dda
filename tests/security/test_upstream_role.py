"""Least privilege upstream: the sidecar refuses to act as a privileged role.

A superuser, BYPASSRLS or CREATEROLE role, or a member (directly or through
another role) of pg_read_server_files, pg_write_server_files,
pg_execute_server_program, pg_read_all_data or pg_write_all_data, would turn any
statement the engine misjudged into files, programs or every table. The sidecar
refuses to start as one unless ``allow_privileged_upstream`` is set, and each
session checks again at login, so a role made privileged later is refused there.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import psycopg
import pytest

from tests.security.conftest import Upstream, security_bundle
from tests.sidecar.proxy.conftest import ALICE_TOKEN, one_relay, start_sidecar


def test_a_superuser_upstream_is_refused_at_start(upstream: Upstream, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_sidecar(
            tmp_path,
            upstream.admin_dsn,
            security_bundle(upstream.name),
            allow_privileged_upstream=False,
        )
    assert "SUPERUSER" in str(failed.value) and "allow_privileged_upstream" in str(failed.value)


def test_an_inherited_file_role_is_refused_at_login(upstream: Upstream, tmp_path: Path) -> None:
    """The sidecar started unprivileged; then its role gains pg_read_server_files
    through an intermediate role. New sessions are refused, naming the privilege."""
    sidecar = start_sidecar(
        tmp_path, upstream.app_dsn, security_bundle(upstream.name), allow_privileged_upstream=False
    )
    middle = "warden_mid_" + secrets.token_hex(4)
    try:
        with psycopg.connect(sidecar.dsn(token=ALICE_TOKEN)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with upstream.admin() as admin:
            admin.execute(f"CREATE ROLE {middle} NOLOGIN")
            admin.execute(f"GRANT pg_read_server_files TO {middle}")
            admin.execute(f"GRANT {middle} TO {upstream.role}")
        with pytest.raises(psycopg.OperationalError, match=r"privileged .pg_read_server_files"):
            psycopg.connect(sidecar.dsn(token=ALICE_TOKEN)).close()
    finally:
        sidecar.stop()
        with upstream.admin() as admin:
            admin.execute(f"DROP ROLE IF EXISTS {middle}")


def test_allowed_explicitly_it_starts_and_says_so_in_the_log(
    upstream: Upstream, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        tmp_path, upstream.admin_dsn, security_bundle(upstream.name), allow_privileged_upstream=True
    )
    try:
        with psycopg.connect(sidecar.dsn(token=ALICE_TOKEN)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert "the upstream role is privileged (SUPERUSER" in sidecar.log()
        # Reported (and in the heartbeat, which the sidecar page shows).
        assert "warden_sidecar_upstream_privileged 1" in sidecar.metrics()
    finally:
        sidecar.stop()


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
