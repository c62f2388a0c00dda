"""The real sidecar process scanning in offline mode, and the operator's ``scan`` command.

Offline mode has no control plane to report to: the sidecar writes its report
to ``state_dir/scan-report.json`` and its summary to the ready file, which is
what these tests read. Scans at start, on the bundle's schedule, and for a new
``scan.requested`` id; client traffic is served while it scans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.sidecar.proxy.conftest import (
    ALICE_TOKEN,
    ROOT,
    UNREACHABLE_URL,
    Sidecar,
    build_bundle,
    start_sidecar,
)

CANARY = [f"okapi{i}.canary@leak-check.example" for i in range(25)]


def _seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE customers (id integer PRIMARY KEY, name text, email text, ssn text)"
        )
        conn.execute("CREATE TABLE imported (col7 text, email_sent boolean)")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers VALUES (%s, %s, %s, %s)",
                [(i, "Maria Garcia", CANARY[i], f"536-90-{4300 + i}") for i in range(25)],
            )
            cur.executemany("INSERT INTO imported VALUES (%s, true)", [(c,) for c in CANARY])
        conn.execute("ANALYZE")


def _scan_status(sidecar: Sidecar, ready: Path, check: Any, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads(ready.read_text()).get("scan")
        except (OSError, ValueError):
            status = None
        if status and check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"no matching scan status; log:\n{sidecar.log()[-3000:]}")


def test_sidecar_scans_at_start_on_schedule_and_on_request(
    scratch_url: str, tmp_path: Path
) -> None:
    _seed(scratch_url)
    bundle = build_bundle(
        "scan-test",
        scan={
            "interval_seconds": 2,
            "sample_rows": 50,
            "statement_timeout_ms": 2000,
            "requested": None,
        },
    )
    sidecar = start_sidecar(tmp_path, scratch_url, bundle, scan_enabled=True)
    ready = tmp_path / "ready.json"
    try:
        first = _scan_status(sidecar, ready, lambda s: True)
        assert first["trigger"] == "start"
        assert first["tables"] == 2 and first["columns"] == 6 and first["errors"] == 0
        assert first["reported"] is False  # offline: nothing to report to
        report = json.loads((sidecar.state_dir / "scan-report.json").read_text())
        found = {(f["table"], f["column"]): f for f in report["findings"]}
        assert found[("imported", "col7")]["classification"] == "pii.email"
        assert found[("customers", "ssn")]["classification"] == "pii.ssn"
        assert ("imported", "email_sent") not in found

        # Client traffic is served meanwhile (the scan runs off the event loop).
        with psycopg.connect(sidecar.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (25,)

        # The bundle's interval: scheduled scans follow.
        _scan_status(sidecar, ready, lambda s: s["trigger"] == "schedule")

        # A new scan.requested id: a scan for that request.
        requested = build_bundle(
            "scan-test",
            scan={
                "interval_seconds": 0,
                "sample_rows": 50,
                "statement_timeout_ms": 2000,
                "requested": "req-42",
            },
        )
        bundle_path = tmp_path / "bundle.json"
        tmp = bundle_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(requested))
        tmp.replace(bundle_path)
        status = _scan_status(sidecar, ready, lambda s: s["id"] == "req-42")
        assert status["trigger"] == "request"
    finally:
        sidecar.stop()
    # Raw values stayed in the database.
    written = sidecar.log() + "".join(
        p.read_text() for p in [ready, sidecar.state_dir / "scan-report.json"]
    )
    for value in CANARY:
        assert value not in written


def test_scan_command_prints_findings(scratch_url: str, tmp_path: Path) -> None:
    _seed(scratch_url)
    bundle_path = tmp_path / "bundle.json"
    bundle_path.write_text(json.dumps(build_bundle("scan-test")))
    config = tmp_path / "sidecar.json"
    config.write_text(
        json.dumps(
            {
                "upstream_dsn": scratch_url,
                "bundle_file": str(bundle_path),
                "state_dir": str(tmp_path / "state"),
                "datasource": "scan-test",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_SIDECAR_")}

    def scan(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sidecar", "scan", "--config", str(config), *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    as_json = scan("--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert set(body) == {"snapshot", "findings", "scan"}
    found = {(f["table"], f["column"]): f["classification"] for f in body["findings"]}
    assert found[("imported", "col7")] == "pii.email"
    table = scan()
    assert table.returncode == 0, table.stderr
    assert "public.imported.col7" in table.stdout and "pii.email" in table.stdout
    for value in CANARY:
        assert value not in as_json.stdout + table.stdout + as_json.stderr + table.stderr

    # A wrong upstream is a clear error, exit 2, no traceback.
    config.write_text(
        json.dumps(
            {
                "upstream_dsn": UNREACHABLE_URL,
                "bundle_file": str(bundle_path),
                "state_dir": str(tmp_path / "state"),
                "datasource": "scan-test",
            }
        )
    )
    failed = scan()
    assert failed.returncode == 2
    assert "cannot connect to the upstream database" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert ALICE_TOKEN not in failed.stderr


def test_stopping_the_sidecar_does_not_wait_for_a_running_scan(
    scratch_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("CREATE VIEW slow AS SELECT pg_sleep(30)::text AS s")
    bundle = build_bundle(
        "scan-test",
        scan={
            "interval_seconds": 0,
            "sample_rows": 10,
            "statement_timeout_ms": 60000,
            "requested": None,
        },
    )
    sidecar = start_sidecar(tmp_path, scratch_url, bundle, scan_enabled=True)
    try:
        with psycopg.connect(scratch_url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'warden-scanner'"
                " AND query LIKE '%%slow%%' AND state = 'active'"
            ).fetchone():
                assert time.monotonic() < deadline, sidecar.log()[-2000:]
                time.sleep(0.1)
        started = time.monotonic()
        sidecar.proc.terminate()
        sidecar.proc.wait(timeout=20)
        assert time.monotonic() - started < 5
    finally:
        sidecar.stop()
