"""The real sidecar's events in the real trail: stored, chained, and free of literals.

uvicorn serves the control plane, ``python -m sidecar run`` proxies a scratch
database, real psycopg clients send statements full of literals (PII-looking
strings and numbers), and the test then reads every stored row of the
sidecar's chain as text: none of those literals may appear anywhere.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection

from audit.models import sidecar_chain
from audit.services import audit_verify
from governance import services
from tests.integration.conftest import SidecarProcess, pinned_key, upstream_dbname
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

LITERALS = [
    "123-45-6789",
    "ada@example.com",
    "Zebra-Literal-Q7",
    "31337.77",
    "424242",
    "+44 20 7946 0001",
]
STATEMENTS = [
    "SELECT full_name FROM customers WHERE email = 'ada@example.com'",
    "SELECT id FROM customers WHERE ssn = '123-45-6789' OR phone = '+44 20 7946 0001'",
    "SELECT 'Zebra-Literal-Q7' AS tag, 31337.77 AS amount",
    "SELECT count(*) FROM customers WHERE id IN (424242, 1)",
    "UPDATE customers SET full_name = 'Zebra-Literal-Q7' WHERE id = 424242",
]


def _stored(chain: str) -> list[tuple[str, str]]:
    """(the whole row as text, its statement) of every statement event in the chain."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e::text, e.statement FROM audit_event e WHERE chain = %s "
            "AND source = 'sidecar' AND type = 'statement'",
            [chain],
        )
        return cursor.fetchall()


def test_real_sidecar_events_carry_no_literals(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    _, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    sidecar, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-audit-trail"
    )
    config = {
        "upstream_dsn": upstream_db,
        "listen_port": 0,
        "control_plane_url": control_plane.url,
        "token": sidecar_token,
        "bundle_public_keys": pinned_key(),
        "bundle_wait": 30,
        "bundle_max_backoff": 1,
        "heartbeat_interval": 1,
    }
    proc = SidecarProcess(config=config, state_dir=tmp_path / "state")
    dbname = upstream_dbname()
    chain = sidecar_chain(demo_policy.datasource.pk, sidecar.pk)
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=proc.port,
            dbname=dbname,
            user="svc-billing",
            password=raw,
            autocommit=True,
        ) as conn:
            for sql in STATEMENTS:
                with contextlib.suppress(psycopg.Error):  # blocked or held: audited all the same
                    conn.execute(sql)
            # Bound parameters (extended protocol) as well as inline literals.
            conn.execute("SELECT id FROM customers WHERE email = %s", ["ada@example.com"])
        deadline = time.monotonic() + 20
        while len(_stored(chain)) < len(STATEMENTS) + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.stop()

    rows = _stored(chain)
    assert len(rows) == len(STATEMENTS) + 1, rows
    for row, _statement in rows:
        for literal in LITERALS:
            assert literal not in row, (literal, row)
    statements = [statement for _row, statement in rows]
    assert sum("FROM customers" in s for s in statements) >= 3, statements
    print("\n".join(statements))
    result = audit_verify(chain=chain)
    assert result.ok, result.first_broken


def test_beat_tasks_run_on_a_real_worker(celery_worker: Any, demo_policy: Any) -> None:
    """The verification and partition tasks, queued as beat would, on a real worker."""
    from audit.models import AuditVerification
    from audit.tasks import audit_partitions_prepare, audit_verify_chains

    before = AuditVerification.objects.count()
    audit_partitions_prepare.delay()
    audit_verify_chains.delay()
    deadline = time.monotonic() + 30
    while AuditVerification.objects.count() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    run = AuditVerification.objects.order_by("-id").first()
    assert run is not None and run.pk and AuditVerification.objects.count() == before + 1
    assert run.ok and run.finished_at is not None, run.first_broken
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass('audit_event_' || to_char(now() + interval '2 month', "
            "'\"y\"YYYY\"m\"MM') || '_production')"
        )
        assert cursor.fetchone()[0] is not None
