"""Fixtures for the scanner tests: scratch databases on the server DATABASE_URL names."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.sidecar.proxy.conftest import admin_url, create_database, drop_database, with_database
from tests.sidecar.scanner.seed import seed


@pytest.fixture
def scratch_url() -> Iterator[str]:
    """An empty database, dropped afterwards."""
    name = create_database("warden_scan_")
    try:
        yield with_database(admin_url(), name)
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def seeded_url() -> Iterator[str]:
    """The realistic database of ``seed.py`` (34 tables, a view, a materialized view)."""
    name = create_database("warden_scan_")
    url = with_database(admin_url(), name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            seed(conn)
        yield url
    finally:
        drop_database(name)
