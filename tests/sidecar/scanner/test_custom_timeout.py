"""Custom detectors' regexes run under a deadline: a catastrophic pattern costs the
scan about a second, is reported by name, and the other detectors carry on."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from sidecar.scanner import ScanSettings, run_scan
from sidecar.scanner.detectors import ColumnSample, classify, custom_detectors, preferred
from sidecar.scanner.regex_worker import CustomDetectorRunner
from tests.sidecar.proxy.conftest import ROOT

# ``re`` needs about 36 s for this on a run of 30 or 31 "a" (exponential backtracking);
# the control plane's probe strings (runs of 40) do not trigger it.
CATASTROPHIC = r"(?:a?){30}a{30}"
SLOW = {
    "name": "slow",
    "classification": "internal.slow",
    "confidence": 0.9,
    "name_regex": None,
    "value_regex": CATASTROPHIC,
}
EMPLOYEE = {
    "name": "employee-id",
    "classification": "pii.national_id",
    "confidence": 0.9,
    "name_regex": "(?i)^emp(loyee)?_?id$",
    "value_regex": r"^E\d{6}$",
}
PROJECT = {
    "name": "project-code",
    "classification": "internal.project",
    "confidence": 0.7,
    "name_regex": None,
    "value_regex": r"PRJ-[A-Z]{3}",
}


def test_a_catastrophic_value_regex_times_out_and_the_scan_goes_on(
    scratch_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE a_codes (id int, code text);
            INSERT INTO a_codes SELECT i, repeat('a', 30 + i % 2) FROM generate_series(1, 8) i;
            CREATE TABLE staff (id int, emp_id text, email text);
            INSERT INTO staff SELECT i, 'E' || lpad(i::text, 6, '0'), 's' || i || '@example.com'
                FROM generate_series(1, 20) i;
            """
        )
    detectors = (SLOW, EMPLOYEE)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "warden.sidecar.scanner"):
        report = run_scan(scratch_url, settings=ScanSettings(detectors=detectors))
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"the scan took {elapsed:.1f} s"
    assert report.detectors_timed_out == ["custom:slow"]
    warning = next(r.getMessage() for r in caplog.records if "custom:slow" in r.getMessage())
    assert "timed out after 1000 ms on public.a_codes.code" in warning
    assert not any("aaaa" in r.getMessage() for r in caplog.records)  # never a value
    found = {(f.table, f.column): f for f in report.findings}
    assert not any(f.detector == "custom:slow" for f in report.findings)
    # The other custom detector, asked on the same column after the timeout and on
    # later tables, still answers; so do the built-ins.
    assert found[("staff", "emp_id")].detector == "custom:employee-id"
    assert found[("staff", "email")].detector == "email"


def test_the_runner_agrees_with_in_process_classification() -> None:
    detectors, _ = custom_detectors([EMPLOYEE, PROJECT])
    ids = [f"E{i:06d}" for i in range(20)]
    columns = [
        ColumnSample("employee_id", "text", "text", ids),
        ColumnSample("badge", "text", "text", ids),
        ColumnSample("emp_id", "text", "text", ["x"] * 20),
        ColumnSample("emp_id", "text", "text", ids[:3]),  # too few values: the name speaks
        ColumnSample("c9", "text", "text", ["PRJ-ABC", "PRJ-XYZ"] * 10),
        ColumnSample("c10", "text", "text", ["PRJ-ABC"] * 9 + ["nope"] * 11),
        ColumnSample("c11", "text", "text", [f"v{i}" for i in range(40)] + ["PRJ-ABC"] * 60),
        ColumnSample("email", "text", "text", [f"u{i}@example.com" for i in range(20)]),
    ]
    with CustomDetectorRunner(detectors) as runner:
        for column in columns:
            best = classify(column)  # the built-ins, as the scan asks them
            for verdict in runner.verdicts(column):
                best = preferred(best, verdict)
            assert best == classify(column, detectors), column.name
        assert runner.timed_out == []


def test_a_catastrophic_name_regex_times_out_too() -> None:
    detectors, _ = custom_detectors(
        [
            {
                **SLOW,
                "name": "slow-name",
                "name_regex": r"^(a|a)*b$",
                "value_regex": None,
            },
            PROJECT,
        ]
    )
    started = time.monotonic()
    with CustomDetectorRunner(detectors, timeout_ms=300) as runner:
        column = ColumnSample("a" * 60, "text", "text", ["PRJ-ABC"] * 10)
        verdicts = runner.verdicts(column, "public.t.col")
        assert [v.detector for v in verdicts] == ["custom:project-code"]
        assert runner.timed_out == ["custom:slow-name"]
        # Stopped for the rest of the scan: the next column does not wait for it.
        again = time.monotonic()
        assert [v.detector for v in runner.verdicts(column)] == ["custom:project-code"]
        assert time.monotonic() - again < 0.3
    assert time.monotonic() - started < 3


def test_a_scan_budget_per_detector(caplog: pytest.LogCaptureFixture) -> None:
    # About 40 ms a column, well inside the per-column deadline, but they add up. The
    # budget is 25 such columns, so a machine five times slower still sees several.
    detectors, _ = custom_detectors([{**SLOW, "value_regex": r"(?:a?){20}a{20}"}])
    column = ColumnSample("code", "text", "text", ["a" * 20] * 5 + ["a" * 21] * 2)
    with CustomDetectorRunner(detectors, timeout_ms=5000, budget_ms=1000) as runner:
        asked = 0
        while not runner.timed_out and asked < 100:
            runner.verdicts(column, f"public.t{asked}.code")
            asked += 1
        assert runner.timed_out == ["custom:slow"]
        assert asked > 1
    assert "used up its 1000 ms for this scan" in caplog.text


CHILD_SCRIPT = """
import sys
from sidecar.scanner.detectors import ColumnSample, custom_detectors
from sidecar.scanner.regex_worker import CustomDetectorRunner

detectors, _ = custom_detectors([{
    "name": "slow", "classification": "x", "confidence": 0.9,
    "name_regex": None, "value_regex": sys.argv[1],
}])
runner = CustomDetectorRunner(detectors, timeout_ms=600_000)
runner.verdicts(ColumnSample("c", "text", "text", ["x"] * 5))  # starts the child
print(runner._proc.pid, flush=True)
runner.verdicts(ColumnSample("c", "text", "text", ["a" * 31] * 5))
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_dies_with_a_killed_scan_worker() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, CATASTROPHIC],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        time.sleep(0.3)
        assert _alive(child)  # backtracking
        os.kill(proc.pid, signal.SIGKILL)  # as the sidecar terminates its scan worker
        proc.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
