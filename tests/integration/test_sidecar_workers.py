"""A sidecar of two worker processes against the real control plane: still one sidecar.

The control plane must see one registration: one heartbeat with the totals of
both workers and each worker's own counters, the audit events of both spools
exactly once, and a revocation enforced by whichever worker a client reaches.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance import services
from tests.integration.conftest import SidecarProcess, sidecar_config, upstream_dbname
from tests.integration.test_sidecar_control_plane import _connect, _counts, _wait_statements
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_two_workers_report_as_one_sidecar(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    token, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    second, raw2 = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t2")
    sidecar, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-workers"
    )
    config = sidecar_config(control_plane, sidecar_token, upstream_db, workers=2)
    proc = SidecarProcess(config=config, state_dir=tmp_path / "state")
    dbname = upstream_dbname()
    try:
        conns = [_connect(proc.port, dbname, "svc-billing", raw) for _ in range(12)]
        on = {c.info.backend_pid % 2 for c in conns}
        assert on == {0, 1}
        for conn in conns:
            conn.execute("SELECT id FROM customers ORDER BY id").fetchall()

        # The audit events of both workers' spools, each once.
        _wait_statements(sidecar.pk, 12, timeout=30)
        time.sleep(1.5)
        counts = _counts(sidecar.pk)
        assert counts.get("type:statement") == 12 and counts.get("duplicates") == 0, counts

        # One heartbeat: totals in counters, each worker's own in status.workers.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sidecar.refresh_from_db()
            if sidecar.counters.get("connections_active") == 12:
                break
            time.sleep(0.2)
        assert sidecar.counters["workers"] == 2 and sidecar.counters["workers_serving"] == 2
        assert sidecar.counters["connections_active"] == 12, sidecar.counters
        assert sidecar.counters["statements_allow"] == 12, sidecar.counters
        each = {w["worker"]: w for w in sidecar.bundle_status["workers"]}
        assert set(each) == {0, 1}
        for worker in (0, 1):
            assert each[worker]["connections_active"] == sum(
                1 for c in conns if c.info.backend_pid % 2 == worker
            )
        assert sidecar.bundle_status["state"] == "active"

        # Worker 0's heartbeat reports worker 1's sign-ins too: the second token's
        # latest sign-in is one only worker 1 saw.
        while True:
            signed_in = time.time()
            with _connect(proc.port, dbname, "svc-billing", raw2) as conn:
                if conn.info.backend_pid % 2 == 1:
                    break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            second.refresh_from_db()
            if second.last_used_at and second.last_used_at.timestamp() >= signed_in - 0.001:
                break
            time.sleep(0.2)
        assert second.last_used_at is not None
        assert second.last_used_at.timestamp() >= signed_in - 0.001
        services.token_revoke(actor=admin_user, token=second)  # the identity's other token

        # A revocation reaches both workers: their sessions end, new ones are refused.
        services.token_revoke(actor=admin_user, token=token)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ended = 0
            for conn in conns:
                try:
                    conn.execute("SELECT 1")
                except psycopg.OperationalError:
                    ended += 1
            if ended == len(conns):
                break
            time.sleep(0.2)
        assert ended == len(conns)
        for _ in range(6):
            with pytest.raises(psycopg.OperationalError):
                _connect(proc.port, dbname, "svc-billing", raw)
    finally:
        proc.stop()
