"""The test database as a URL, for the processes a test starts (servers, workers, sidecars)."""

from __future__ import annotations

from urllib.parse import quote

from django.db import connection


def database_url(dbname: str | None = None) -> str:
    """A URL for ``dbname`` (the test database by default) on the tests' server.

    The embedded PostgreSQL (``make test`` on a machine without one) listens on
    a Unix socket only, given as a ``host`` query parameter.
    """
    db = connection.settings_dict
    name = dbname or db["NAME"]
    auth = quote(db["USER"] or "postgres", safe="")
    if db["PASSWORD"]:
        auth += f":{quote(db['PASSWORD'], safe='')}"
    host = db["HOST"] or db.get("OPTIONS", {}).get("host", "")
    if not host or host.startswith("/"):  # a Unix socket directory
        query = f"?host={quote(host)}" if host else ""
        if db["PORT"]:
            query += f"{'&' if query else '?'}port={db['PORT']}"
        return f"postgresql://{auth}@/{name}{query}"
    return f"postgresql://{auth}@{host}:{db['PORT'] or 5432}/{name}"
