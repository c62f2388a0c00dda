"""The upstream side: SCRAM, MD5 and cleartext logins, a refused login, a restart mid-session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.sidecar.proxy.cluster import PrivatePostgres
from tests.sidecar.proxy.conftest import (
    SCHEMA_SQL,
    build_bundle,
    one_relay,
    start_sidecar,
    wait_for,
)

USERS = {
    # role -> (password_encryption used to store it, pg_hba method)
    "scram_user": ("scram-sha-256", "scram-sha-256"),
    "md5_user": ("md5", "md5"),
    "clear_user": ("scram-sha-256", "password"),
}
PASSWORD = "upstream-pw-Zk4"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    hba = [f"host all {user} 127.0.0.1/32 {method}" for user, (_, method) in USERS.items()]
    pg = PrivatePostgres(tmp_path_factory.mktemp("pg"), hba)
    pg.start()
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
        for user, (encryption, _) in USERS.items():
            conn.execute(f"SET password_encryption = '{encryption}'")
            conn.execute(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    with psycopg.connect(pg.url(database="app"), autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    yield pg
    pg.stop()


@pytest.mark.parametrize("user", USERS)
def test_upstream_login_methods(cluster: PrivatePostgres, tmp_path: Path, user: str) -> None:
    sidecar = start_sidecar(tmp_path, cluster.url(user, PASSWORD, "app"), build_bundle("app"))
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            # The database sees the sidecar's own role, never the client's identity.
            assert conn.execute("SELECT current_user").fetchone() == (user,)
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)
    finally:
        sidecar.stop()


def test_refused_upstream_login_reaches_the_client(
    cluster: PrivatePostgres, tmp_path: Path
) -> None:
    sidecar = start_sidecar(
        tmp_path, cluster.url("scram_user", "wrong", "app"), build_bundle("app")
    )
    try:
        with pytest.raises(psycopg.OperationalError, match="upstream database refused"):
            psycopg.connect(sidecar.dsn())
    finally:
        sidecar.stop()


def test_upstream_restart_mid_session(cluster: PrivatePostgres, tmp_path: Path) -> None:
    sidecar = start_sidecar(
        tmp_path, cluster.url("scram_user", PASSWORD, "app"), build_bundle("app")
    )
    try:
        conn = psycopg.connect(sidecar.dsn(), autocommit=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        cluster.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        with pytest.raises(psycopg.OperationalError, match="upstream"):
            psycopg.connect(sidecar.dsn())
        cluster.start()

        def works() -> bool:
            try:
                with psycopg.connect(sidecar.dsn(), autocommit=True) as fresh:
                    return fresh.execute("SELECT 2").fetchone() == (2,)
            except psycopg.OperationalError:
                return False

        assert wait_for(works, timeout=20)
        assert sidecar.proc.poll() is None
    finally:
        sidecar.stop()


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
