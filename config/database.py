"""A Django ``DATABASES`` entry as a ``postgresql://`` URL, for the processes we start
(the demo sidecar's upstream, test servers and workers) and for direct psycopg use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote


def database_url(db: Mapping[str, Any], dbname: str | None = None, *, password: bool = True) -> str:
    """A URL for ``dbname`` (``db``'s own by default) on ``db``'s server, as ``db``'s user.

    The embedded PostgreSQL listens on a Unix socket only, which ``DATABASE_URL``
    gives as a ``host`` query parameter (Django keeps it in ``OPTIONS``, not
    ``HOST``); the URL carries it the same way.
    """
    name = dbname or db["NAME"]
    auth = quote(db.get("USER") or "postgres", safe="")
    if password and db.get("PASSWORD"):
        auth += f":{quote(db['PASSWORD'], safe='')}"
    host = db.get("HOST") or db.get("OPTIONS", {}).get("host", "")
    port = db.get("PORT") or ""
    if not host or host.startswith("/"):  # a Unix socket directory, or libpq's default
        query = [f"host={quote(host)}"] if host else []
        query += [f"port={port}"] if port else []
        return f"postgresql://{auth}@/{name}" + ("?" + "&".join(query) if query else "")
    return f"postgresql://{auth}@{host}:{port or 5432}/{name}"
