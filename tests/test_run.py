"""``make run`` (python -m config.run) from nothing: embedded services, demo, clean stop, restart.

Runs the real command with the embedded PostgreSQL and Redis in a temporary
var/ directory, as on a fresh machine, then checks the probes, the sign-in
page, that Ctrl-C (SIGINT) stops every process it started, and that a second
run finds the same data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.livesrv import ROOT, free_port

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _run_once(var: Path, port: int) -> tuple[dict, list[int], int]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(WARDEN_VAR_DIR=str(var), WARDEN_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "config.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while not any("Press Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines[-40:])
            lines.append(line)
        url = f"http://127.0.0.1:{port}"
        assert any(f"Warden is running at {url}/" in line for line in lines)
        assert _get(f"{url}/healthz")[0] == 200
        status, body = _get(f"{url}/readyz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _get(f"{url}/accounts/login/")
        assert status == 200 and "password" in body.lower()
        # Everything it started, at any depth (Celery's pool and beat too), plus PostgreSQL.
        started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        pg_pid = int((var / "pg" / "postmaster.pid").read_text().split()[0])
        started.append(pg_pid)
        with psycopg.connect(f"postgresql://postgres@/warden?host={var / 'pg'}") as conn:
            history = conn.execute("SELECT count(*) FROM audit_changerecord").fetchone()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    creds = json.loads((var / "demo-credentials.json").read_text())
    return creds, started, history


def test_make_run_starts_stops_cleanly_and_finds_its_data_again(tmp_path):
    var = tmp_path / "var"
    port = free_port()
    creds, started, history = _run_once(var, port)
    assert history > 40  # the demo was seeded through the services
    assert set(creds) == {"admin", "security", "reviewer", "auditor"}
    assert (var / "demo-credentials.json").stat().st_mode & 0o077 == 0
    deadline = time.monotonic() + 15
    while any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in started
    ):
        assert time.monotonic() < deadline, "children still running after Ctrl-C"
        time.sleep(0.2)
    again, _, history_again = _run_once(var, port)
    assert again == creds
    assert history_again == history  # same data, and seeding again changed nothing
