"""Audit ingestion as served in production: uvicorn's ASGI app and its audit worker threads.

Each worker thread keeps its database connection from batch to batch; these
tests check that a connection lost in between (PostgreSQL restarted, the
backend killed) costs nothing: the next batch reconnects and is stored whole.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditEvent
from audit.services import audit_verify
from gateway.audit_intake import AUDIT_WORKERS
from governance import services
from tests.stack import Server

# Serial, as under tests/integration: a uvicorn of its own, and Redis flushed before each test.
pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.serial,
]


@pytest.fixture
def sidecar_token(demo_policy: Any, admin_user: Any) -> str:
    _, raw = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-audit-asgi"
    )
    return raw


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": str(uuid.uuid4()),
            "ts": time.time(),
            "type": "statement",
            "identity": "svc-billing",
            "action": "allow",
            "statement": "SELECT id FROM customers WHERE id = $1",
        }
        for _ in range(n)
    ]


def _post(server: Server, token: str, events: list[dict[str, Any]]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{server.url}/api/v1/sidecar/audit",
        data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _kill_other_backends() -> int:
    """Terminate every session on the test database but this test's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return len(cursor.fetchall())


def _post_concurrently(
    server: Server, token: str, batches: list[list[dict[str, Any]]]
) -> list[Any]:
    """All batches at once, so several audit worker threads (and connections) take part."""
    start = threading.Barrier(len(batches))

    def post(batch: list[dict[str, Any]]) -> Any:
        start.wait()
        return _post(server, token, batch)

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        return list(pool.map(post, batches))


def test_batches_after_a_lost_connection_are_stored_whole(
    control_plane: Server, sidecar_token: str, demo_policy: Any
) -> None:
    stored: list[str] = []
    for _ in range(3):  # a few rounds, so every worker thread holds a connection
        batches = [_events(20) for _ in range(AUDIT_WORKERS)]
        for answer in _post_concurrently(control_plane, sidecar_token, batches):
            assert answer == (202, {"accepted": 20, "duplicates": 0})
        stored += [e["id"] for batch in batches for e in batch]

    assert _kill_other_backends() >= 2  # the workers' kept connections

    for _ in range(2):
        batches = [_events(20) for _ in range(AUDIT_WORKERS)]
        for answer in _post_concurrently(control_plane, sidecar_token, batches):
            assert answer == (202, {"accepted": 20, "duplicates": 0})
        stored += [e["id"] for batch in batches for e in batch]

    in_trail = set(
        AuditEvent.objects.filter(event_id__in=stored).values_list("event_id", flat=True)
    )
    assert in_trail == set(stored)
    assert audit_verify().ok


def test_a_resent_batch_after_a_lost_connection_is_a_duplicate(
    control_plane: Server, sidecar_token: str
) -> None:
    batch = _events(30)
    assert _post(control_plane, sidecar_token, batch)[0] == 202
    _kill_other_backends()
    assert _post(control_plane, sidecar_token, batch) == (202, {"accepted": 0, "duplicates": 30})
    assert AuditEvent.objects.filter(event_id__in=[e["id"] for e in batch]).count() == 30
