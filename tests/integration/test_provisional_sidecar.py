"""Protection before review, end to end: a fresh production datasource with no masking
rule, a finding nobody reviewed, the real control plane and the real sidecar.

A person reads the column masked with its classification's default mask and is told
so once per session (a NOTICE); a service reads it raw and the audit trail, shipped to
the control plane, records that it would have been masked. Rejecting the finding
unmasks it in the running sidecar.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection

from governance import services
from governance.bundles import bundle_publish
from governance.models import ColumnClassification, Environment, MaskingRule
from tests.conftest import DEMO_SCHEMA
from tests.integration.conftest import (
    UPSTREAM_ROWS,
    SidecarProcess,
    sidecar_config,
    upstream_dbname,
)
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

NOTICE = "Warden masked public.customers.phone provisionally (pii.phone, not yet reviewed)"


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _connect(port: int, user: str, token: str) -> tuple[psycopg.Connection[Any], list[str]]:
    notices: list[str] = []
    conn = psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname=upstream_dbname(),
        user=user,
        password=token,
        autocommit=True,
    )
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    return conn, notices


def _phones(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT phone FROM customers ORDER BY id").fetchall()]


def _service_events() -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extra FROM audit_event WHERE source = 'sidecar' AND type = 'statement' "
            "AND identity_name = 'svc-app' AND statement LIKE '%%phone%%'"
        )
        return [
            json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in cursor.fetchall()
        ]


def test_a_provisional_finding_is_masked_for_people_and_audited_for_services(
    control_plane: Server,
    celery_worker: Any,
    admin_user: Any,
    team_a: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    assert not MaskingRule.objects.exists()  # a fresh install: no rule at all
    datasource = services.datasource_create(
        actor=admin_user,
        name="fresh-prod",
        environment=Environment.objects.get(name="production"),
        schema_snapshot=DEMO_SCHEMA,
        connect_teams=[team_a],
    )
    # What a first scan reports of a column it recognises only by its name.
    services.sidecar_schema_report(
        datasource_id=datasource.pk,
        snapshot=DEMO_SCHEMA,
        findings=[
            {
                "schema": "public",
                "table": "customers",
                "column": "phone",
                "classification": "pii.phone",
                "confidence": 0.5,
                "detector": "name",
            }
        ],
    )
    human = services.identity_create(actor=admin_user, name="hana", kind="human", teams=[team_a])
    service = services.identity_create(
        actor=admin_user, name="svc-app", kind="service", owner=human, teams=[team_a]
    )
    _, human_token = services.token_issue(actor=admin_user, identity=human, name="t")
    _, service_token = services.token_issue(actor=admin_user, identity=service, name="t")
    _, sidecar_token = services.sidecar_register(actor=admin_user, datasource=datasource, name="sc")
    bundle_publish(datasource=datasource)
    proc = SidecarProcess(
        config=sidecar_config(control_plane, sidecar_token, upstream_db),
        state_dir=tmp_path / "state",
    )
    raw = [row[3] for row in UPSTREAM_ROWS]
    try:
        conn, notices = _connect(proc.port, "hana", human_token)
        with conn:
            assert _phones(conn) == ["************0001", "************0002"]  # keeps the last 4
            _phones(conn)
            conn.execute("SELECT full_name FROM customers").fetchall()
        assert notices == [NOTICE]  # once in the session
        conn, notices = _connect(proc.port, "hana", human_token)
        with conn:
            _phones(conn)
        assert notices == [NOTICE]  # and once in the next

        conn, notices = _connect(proc.port, "svc-app", service_token)
        with conn:
            assert _phones(conn) == raw
        assert notices == []
        events = _wait(_service_events, 30, "the service's audit event")
        assert events[0]["would_have_masked"] == ["public.customers.phone"]

        # Rejecting the finding unmasks the column in the running sidecar.
        phone = ColumnClassification.objects.get(datasource=datasource, column_name="phone")
        services.column_classification_review(
            actor=admin_user, column_classification=phone, status="rejected", reason="no phone"
        )

        def unmasked() -> bool:
            conn, notices = _connect(proc.port, "hana", human_token)
            with conn:
                return _phones(conn) == raw and not notices

        _wait(unmasked, 15, "the rejected finding to be unmasked")
    finally:
        proc.stop()
