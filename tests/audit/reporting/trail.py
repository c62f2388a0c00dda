"""Writing audit events for tests, the way ingestion stores them (rows, chain, head, rollup).

Rows go straight into ``audit_event`` with a correct per-chain ``seq``,
``prev_hash`` and ``hash`` (``audit.chain``); statements bump ``audit_activity_daily`` and
allowed ones with classifications ``audit_access_daily``, as ingestion does. Used where a test
needs exact timestamps (keyset pagination across equal ``occurred_at``) or
events in past months, which the sidecar API would stamp otherwise.
"""

from __future__ import annotations

import datetime
import itertools
import json
from typing import Any

from django.db import connection

from audit.chain import CHAINED_FIELDS, GENESIS, canonical_event, chain_hash

_ids = itertools.count(1)

DEFAULTS: dict[str, Any] = {
    "source": "sidecar",
    "type": "statement",
    "actor": "",
    "identity_name": "alice",
    "identity_kind": "human",
    "identity_owner": "",
    "datasource_id": None,
    "environment": "production",
    "sidecar_id": "sc-1",
    "client_addr": "10.0.0.1",
    "application_name": "psql",
    "statement_kind": "select",
    "statement": "SELECT id FROM public.customers WHERE id = ?",
    "fingerprint": "fp",
    "tables": [],
    "columns": [],
    "classifications": [],
    "masked_columns": [],
    "action": "allow",
    "outcome": "allowed",
    "rows": 1,
    "duration_ms": 1.5,
    "risk": 10,
    "extra": {},
}


def _head(chain: str) -> tuple[int, str]:
    with connection.cursor() as cur:
        cur.execute("SELECT seq, hash FROM audit_chain_head WHERE chain = %s", [chain])
        row = cur.fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


def event_add(
    *, occurred_at: datetime.datetime, stored_hash: str | None = None, **fields: Any
) -> int:
    """Insert one event (chained after the last of its chain); returns its id.

    ``stored_hash`` stores that instead of the true hash: an event altered after
    the fact, which the append-only table would otherwise never let a test make.
    """
    row = {**DEFAULTS, **fields}
    row["occurred_at"] = occurred_at
    row.setdefault("received_at", occurred_at)
    row.setdefault("event_id", f"test-{next(_ids)}-{occurred_at.timestamp()}")
    row.setdefault(
        "chain",
        f"datasource:{row['datasource_id']}" if row["datasource_id"] else "control-plane",
    )
    seq, prev = _head(row["chain"])
    row["seq"] = seq + 1
    row["prev_hash"] = prev
    row["hash"] = stored_hash or chain_hash(prev, canonical_event(row))
    columns = [*CHAINED_FIELDS, "prev_hash", "hash"]
    values = [json.dumps(row[c]) if c == "extra" else row[c] for c in columns]
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cur:
        cur.execute("SELECT audit_partition_ensure(%s, %s)", [occurred_at, row["environment"]])
        cur.execute(f"INSERT INTO audit_event ({names}) VALUES ({marks}) RETURNING id", values)
        event_pk = cur.fetchone()[0]
        # The head moves as ingestion moves it, so audit_verify walks these events too.
        cur.execute(
            "INSERT INTO audit_chain_head (chain, seq, hash) VALUES (%s, %s, %s) "
            "ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
            [row["chain"], row["seq"], row["hash"]],
        )
        if row["type"] == "statement":
            cur.execute(
                "INSERT INTO audit_activity_daily AS d VALUES (%s, %s, %s, 1) "
                "ON CONFLICT (day, environment, outcome, writer) "
                "DO UPDATE SET events = d.events + 1",
                [occurred_at.astimezone(datetime.UTC).date(), row["environment"], row["outcome"]],
            )
        if (
            row["type"] == "statement"
            and row["action"] == "allow"
            and row["datasource_id"] is not None
            and row["classifications"]
        ):
            cur.execute(
                "INSERT INTO audit_access_daily AS d (day, identity_name, identity_kind, "
                "datasource_id, classifications, masked, events) "
                "VALUES (%s, %s, %s, %s, %s, %s, 1) "
                "ON CONFLICT (day, identity_name, datasource_id, classifications, masked, writer) "
                "DO UPDATE SET events = d.events + 1",
                [
                    occurred_at.astimezone(datetime.UTC).date(),
                    row["identity_name"],
                    row["identity_kind"],
                    row["datasource_id"],
                    sorted(set(row["classifications"])),
                    bool(row["masked_columns"]),
                ],
            )
    return int(event_pk)
