"""Fixtures for the engine tests: the fixture bundles and a seeded scratch PostgreSQL.

The scratch database lives on the server named by DATABASE_URL, under a random
name starting with ``warden_engine_sql_``; it is created and seeded once per
session from ``seed.sql`` and dropped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from sidecar import masking_db
from sidecar.engine import Bundle, Engine, load_bundle

BUNDLES = Path(__file__).resolve().parents[2] / "fixtures" / "bundles"
SEED = Path(__file__).with_name("seed.sql")


def bundle_data(name: str) -> dict[str, Any]:
    envelope = json.loads((BUNDLES / f"{name}.json").read_text("utf-8"))
    return envelope["bundle"]


@pytest.fixture(scope="session")
def production() -> Bundle:
    return load_bundle(bundle_data("demo-production"))


@pytest.fixture(scope="session")
def staging() -> Bundle:
    return load_bundle(bundle_data("demo-staging"))


@pytest.fixture(scope="session")
def engines(production: Bundle, staging: Bundle) -> dict[str, Engine]:
    return {"production": Engine(production), "staging": Engine(staging)}


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("DATABASE_URL is not set: the masking tests need a real PostgreSQL")
    return url


@pytest.fixture(scope="session")
def scratch_dsn() -> Iterator[str]:
    """A freshly seeded database; its DSN. Dropped when the session ends."""
    base = psycopg.conninfo.conninfo_to_dict(_server_url())
    name = f"warden_engine_sql_{secrets.token_hex(4)}"
    admin = psycopg.connect(**{**base, "dbname": "postgres"}, autocommit=True)
    admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    # No JIT: see create_database in tests/sidecar/proxy/conftest.py.
    admin.execute(pgsql.SQL("ALTER DATABASE {} SET jit = off").format(pgsql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(**{**base, "dbname": name})
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SEED.read_text("utf-8"))  # type: ignore[arg-type]
            user = conn.execute("SELECT current_user").fetchone()
        # The hash mask calls Warden's keyed function in the database.
        masking_db.install(dsn, grant_to=user[0] if user else "postgres")
        yield dsn
    finally:
        admin.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )
        admin.close()


@pytest.fixture()
def pg(scratch_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose changes are rolled back after each test."""
    with psycopg.connect(scratch_dsn) as conn:
        yield conn
        conn.rollback()
