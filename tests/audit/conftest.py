"""Fixtures for the audit trail: a registered sidecar and events shaped like the proxy's."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection

from governance import services


@pytest.fixture
def sidecar(demo_policy: Any, admin_user: Any) -> SimpleNamespace:
    """A sidecar of ``crm-prod`` and its bearer token."""
    obj, token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-audit"
    )
    return SimpleNamespace(obj=obj, token=token, datasource=demo_policy.datasource)


def statement_event(**overrides: Any) -> dict[str, Any]:
    """A statement event as ``sidecar.proxy.session._record`` writes one."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": "statement",
        "ts": round(time.time(), 6),
        "action": "allow",
        "outcome": "allowed",
        "rows": 3,
        "duration_ms": 1.25,
        "error_sqlstate": None,
        "identity": "svc-billing",
        "identity_kind": "service",
        "owner": "admin",
        "datasource": "claimed-elsewhere",
        "sidecar": "sc-audit",
        "client_addr": "127.0.0.1",
        "application_name": "psql",
        "kind": "select",
        "statement": "SELECT ssn FROM customers WHERE id = ?",
        "fingerprint": "fp1",
        "tables": ["public.customers"],
        "tables_read": ["public.customers"],
        "tables_written": [],
        "columns_read": ["public.customers.id", "public.customers.ssn"],
        "functions": [],
        "classifications": ["pii.ssn"],
        "masked_columns": ["public.customers.ssn"],
        "statements": None,
        "reasons": [{"code": "masked", "message": "masked"}],
        "risk": 40,
        "revision": "r" * 64,
    }
    event.update(overrides)
    return event


def chain_rows(chain: str) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, event_id, prev_hash, hash FROM audit_event WHERE chain = %s ORDER BY seq",
            [chain],
        )
        return cursor.fetchall()
