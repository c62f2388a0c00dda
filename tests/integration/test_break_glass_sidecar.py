"""A break-glass grant made in the control plane reaches a real sidecar, lifts the floor
rule for its identity only, is named in the statement's audit event, and stops
working once revoked.

The control plane (uvicorn), the Celery worker that recompiles on commit and the
sidecar process are real (tests/integration/conftest.py); clients are psycopg.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from governance import services
from governance.models import Environment
from tests.integration.conftest import SidecarProcess, app_role, sidecar_config, upstream_dbname
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _set_role(port: int, user: str, token: str) -> str | None:
    """Run ``SET ROLE`` to the sidecar's own role; None when it ran, else the error."""
    with psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname=upstream_dbname(),
        user=user,
        password=token,
        autocommit=True,
    ) as conn:
        try:
            conn.execute(f'SET ROLE "{app_role()}"')
        except psycopg.Error as exc:
            return str(exc)
    return None


def _wait(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def _break_glass_events(sidecar_name: str) -> list[tuple[str, str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT identity_name, action, extra->>'break_glass' FROM audit_event "
            "WHERE source = 'sidecar' AND sidecar_id = %s AND type = 'statement' "
            "AND statement ILIKE 'SET ROLE%%' ORDER BY occurred_at",
            [sidecar_name],
        )
        return [(who, action, json.loads(used or "null")) for who, action, used in cursor]


def test_a_grant_lifts_the_floor_on_a_running_sidecar_until_revoked(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    staging = services.datasource_create(
        actor=admin_user,
        name="crm-staging",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=demo_policy.datasource.schema_snapshot,
        connect_teams=[demo_policy.team_a],
    )
    _, billing = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    _, reports = services.token_issue(actor=admin_user, identity=demo_policy.agent, name="t")
    sidecar, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=staging, name="sc-break-glass"
    )
    proc = SidecarProcess(
        config=sidecar_config(control_plane, sidecar_token, upstream_db),
        state_dir=tmp_path / "state",
    )
    try:
        refused = _set_role(proc.port, "svc-billing", billing)
        assert refused is not None and "floor.role_switch" in refused, refused

        grant = services.break_glass_create(
            actor=admin_user,
            datasource=staging,
            identity=demo_policy.service,
            rules=["floor.role_switch"],
            reason="INC-12: run the maintenance as the application role",
            expires_at=timezone.now() + datetime.timedelta(hours=1),
        )
        # The commit enqueues the recompile; the sidecar's long-poll brings the grant.
        assert _wait(lambda: _set_role(proc.port, "svc-billing", billing) is None), (
            "the grant never reached the sidecar"
        )
        # Only for its identity.
        other = _set_role(proc.port, "agent-reports", reports)
        assert other is not None and "floor.role_switch" in other, other

        services.break_glass_revoke(actor=admin_user, grant=grant)
        assert _wait(lambda: _set_role(proc.port, "svc-billing", billing) is not None), (
            "the revoked grant still lifts the floor"
        )

        # The audit trail names the grant on the statement it let through, and only there.
        assert _wait(lambda: len(_break_glass_events(sidecar.name)) >= 4, 15)
        rows = _break_glass_events(sidecar.name)
        allowed = [r for r in rows if r[1] == "allow"]
        assert allowed and all(r[0] == "svc-billing" for r in allowed), rows
        assert all(r[2] == [str(grant.pk)] for r in allowed), rows
        assert all(r[2] in (None, []) for r in rows if r[1] != "allow"), rows
    finally:
        proc.stop()
