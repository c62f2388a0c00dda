"""The real sidecar process scans its upstream and reports to the real control plane.

At start it POSTs a report (snapshot, findings, scan summary) that the control
plane turns into a scan run and classifications; "Scan now" in the control
plane reaches it (bundle or heartbeat) and it answers with that request's id.
The upstream holds recognisable values that must appear nowhere the control
plane stored anything, nor in the sidecar's log or state files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance import services
from governance.models import ColumnClassification, Datasource, ScanRun
from tests.integration.conftest import SidecarProcess, sidecar_config
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

CANARY_EMAILS = [f"zebra.canary{i}@leak-check.example" for i in range(30)]


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sidecar_reports_a_scan_at_start_and_on_request(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    with psycopg.connect(upstream_db, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (id, full_name, email) VALUES (%s, %s, %s)",
                [(100 + i, "Maria Garcia", e) for i, e in enumerate(CANARY_EMAILS)],
            )
        conn.execute("CREATE TABLE notes (id int, col7 text, email_sent boolean)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO notes VALUES (%s, %s, %s)",
                [(i, e, True) for i, e in enumerate(CANARY_EMAILS)],
            )
        conn.execute("ANALYZE")
    datasource = demo_policy.datasource
    _sidecar, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=datasource, name="sc-scan"
    )
    state = tmp_path / "state"
    proc = SidecarProcess(
        config=sidecar_config(control_plane, sidecar_token, upstream_db), state_dir=state
    )
    try:
        started = _wait_for(
            lambda: ScanRun.objects.filter(datasource=datasource, trigger="start").first(),
            30,
            "the scan at start",
        )
        assert started.tables == 2 and started.columns == 9
        # Text, date, integer (an SSN fits in one) and bigint columns; not boolean.
        assert started.sampled_columns == 8
        assert started.findings >= 3
        found = {
            (cc.table_name, cc.column_name): cc
            for cc in ColumnClassification.objects.filter(datasource=datasource)
        }
        # An uninformative name with e-mail values is found; a boolean named email_* is not.
        assert found[("notes", "col7")].classification.name == "pii.email"
        assert found[("notes", "col7")].source == "auto"
        assert ("notes", "email_sent") not in found
        datasource.refresh_from_db()
        tables = {t["name"]: t for t in datasource.schema_snapshot["tables"]}
        assert set(tables) == {"customers", "notes"}
        assert tables["notes"]["row_estimate"] == len(CANARY_EMAILS)

        # The sidecar's own view of it: ready file and the state file.
        ready = _wait_for(
            lambda: json.loads(proc.ready_file.read_text()).get("scan", {}).get("reported"),
            10,
            "the ready file to show the report delivered",
        )
        assert ready is True
        report = json.loads((state / "scan-report.json").read_text())
        assert report["scan"]["id"] == started.scan_id

        # "Scan now" in the control plane: the sidecar answers with that request's id.
        schedule = services.scan_request(actor=admin_user, datasource=datasource)
        requested = _wait_for(
            lambda: ScanRun.objects.filter(
                datasource=datasource, scan_id=schedule.requested
            ).first(),
            30,
            "the requested scan",
        )
        assert requested.trigger == "request"

        # Control plane down: a restarted sidecar (bundle from its disk cache) scans,
        # keeps the report and retries with backoff until the control plane is back.
        proc.stop()
        control_plane.stop()
        proc = SidecarProcess(
            config=sidecar_config(control_plane, sidecar_token, upstream_db), state_dir=state
        )
        status = _wait_for(
            lambda: json.loads(proc.ready_file.read_text()).get("scan"), 20, "the scan at restart"
        )
        assert status["trigger"] == "start" and status["reported"] is False
        _wait_for(lambda: "scan report not delivered" in proc.log.read_text(), 10, "a retry")
        control_plane.start()
        _wait_for(
            lambda: ScanRun.objects.filter(datasource=datasource, scan_id=status["id"]).exists(),
            30,
            "the kept report after the control plane came back",
        )
    finally:
        proc.stop()

    # No value reached the control plane's tables or the sidecar's files.
    stored = json.dumps(
        [
            Datasource.objects.get(pk=datasource.pk).schema_snapshot,
            list(ScanRun.objects.filter(datasource=datasource).values()),
        ],
        default=str,
    )
    files = "".join(
        p.read_text(errors="replace") for p in state.iterdir() if p.suffix in (".json", ".log")
    )
    for value in CANARY_EMAILS:
        assert value not in stored and value not in files
