"""The test database as a URL, for the processes a test starts (servers, workers, sidecars)."""

from __future__ import annotations

from django.db import connection

from config.database import database_url as _database_url


def database_url(dbname: str | None = None) -> str:
    """A URL for ``dbname`` (the test database by default) on the tests' server."""
    return _database_url(connection.settings_dict, dbname)
