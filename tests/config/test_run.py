"""``make run`` (python -m config.run) from nothing: embedded services, demo, clean stop, restart.

Runs the real command with the embedded PostgreSQL and Redis in a temporary
var/ directory, as on a fresh machine, then checks the probes, the sign-in
page, Warden's own 404 page (DEBUG is off), that the demo sidecar answers the
printed psql line with masked values and blocks ``DROP TABLE``, that its MCP server
answers the printed MCP line (the SDK's own client) with masked values, that Ctrl-C
(SIGINT) stops every process it started (the sidecar too), and that a second
run finds the same data and token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
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

# Serial: it drives the whole stack as subprocesses (make run's control plane, worker,
# sidecar and MCP server), mostly waiting on them, beside the parallel bulk.
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _demo_psql(lines: list[str]) -> tuple[str, str]:
    """The printed psql line, run twice: a masked SELECT and a refused DROP."""
    line = next(x for x in lines if "PGPASSWORD=" in x and " psql " in x)
    match = re.search(r"PGPASSWORD=(\S+) psql (.+)$", line.strip())
    assert match, line
    token, conninfo = match.group(1), shlex.split(match.group(2))[0]
    env = {**os.environ, "PGPASSWORD": token}

    def psql(statement: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["psql", conninfo, "-XAt", "-F", "|", "-c", statement],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )

    shown = psql("SELECT email, ssn FROM customers ORDER BY id LIMIT 1")
    assert shown.returncode == 0, shown.stderr
    email, ssn = shown.stdout.strip().split("|")
    # Generated SSNs look like 9xx-xx-xxxx; masked, not one digit of it may remain.
    assert email.startswith("***@") and ssn and not any(c.isdigit() for c in ssn), shown.stdout
    dropped = psql("DROP TABLE customers")
    assert dropped.returncode != 0 and "block-ddl-in-production" in dropped.stderr, dropped
    # The name is hash-masked by the database's keyed function; its plan shows the call.
    named = psql("SELECT full_name FROM customers ORDER BY id LIMIT 1")
    assert named.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", named.stdout.strip()), named
    plan = psql("EXPLAIN (VERBOSE) SELECT full_name FROM customers")
    assert plan.returncode == 0 and "warden_masking.hmac" in plan.stdout, plan
    # psql's \d family runs its catalog queries through the production policy.
    described = psql("\\d customers")
    assert described.returncode == 0 and "full_name" in described.stdout, described
    listed = psql("\\dt")
    assert listed.returncode == 0 and "payments" in listed.stdout, listed
    for command in ("\\d+ customers", "\\dn", "\\df", "\\dv", "\\di", "\\ds", "\\du",
                    "\\l", "\\dx", "\\dT", "\\dp", "\\dd", "\\dm", "\\dconfig"):  # fmt: skip
        described = psql(command)
        assert described.returncode == 0 and "ERROR" not in described.stderr, (command, described)
    return token, conninfo


def _demo_mcp(lines: list[str], mcp_port: int) -> None:
    """The printed MCP line: the demo agent, over streamable HTTP, reads masked values."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    line = next(x for x in lines if "claude mcp add" in x)
    match = re.search(r"(http://\S+/mcp) --header \"Authorization: Bearer (\S+)\"", line)
    assert match, line
    url, token = match.groups()
    assert f":{mcp_port}/" in url

    async def read() -> object:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            return await client.call_tool(
                "query", {"sql": "SELECT email FROM customers ORDER BY id LIMIT 1"}
            )

    deadline = time.monotonic() + 30  # the MCP server starts once the proxy serves
    while True:
        try:
            result = asyncio.run(read())
            break
        except Exception:
            assert time.monotonic() < deadline, "the MCP server did not answer"
            time.sleep(0.5)
    rows = result.structured_content["rows"]  # type: ignore[attr-defined]
    assert rows[0][0].startswith("***@"), rows


def _run_once(var: Path, port: int, sidecar_port: int) -> tuple[dict, list[int], int, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    mcp_port = free_port()
    env.update(
        WARDEN_VAR_DIR=str(var),
        WARDEN_PORT=str(port),
        WARDEN_SIDECAR_PORT=str(sidecar_port),
        WARDEN_MCP_PORT=str(mcp_port),
    )
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
        # DEBUG is off unless asked for: Warden's own 404, not Django's debug page (which
        # lists the URL patterns); static files are still served (WhiteNoise).
        status, body = _get(f"{url}/no-such-page/")
        assert status == 404 and "There is nothing here" in body, body[:500]
        assert "URLconf" not in body
        assert _get(f"{url}/static/css/warden.css")[0] == 200
        token, conninfo = _demo_psql(lines)
        assert f"port={sidecar_port}" in conninfo and "dbname=warden_demo" in conninfo
        _demo_mcp(lines, mcp_port)
        # Everything it started, at any depth (Celery's pool and beat too), plus PostgreSQL.
        started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        pg_pid = int((var / "pg" / "postmaster.pid").read_text().split()[0])
        started.append(pg_pid)
        with psycopg.connect(f"postgresql://postgres@/warden?host={var / 'pg'}") as conn:
            # Changes people made (the seed runs as the demo admin). The demo sidecar's
            # scans also change classifications, as the control plane itself ("system"),
            # whenever a scan finishes, so they are not the seed's to repeat.
            history = conn.execute(
                "SELECT count(*) FROM audit_changerecord WHERE actor_id IS NOT NULL"
            ).fetchone()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    creds = json.loads((var / "demo-credentials.json").read_text())
    return creds, started, history, token


def test_make_run_starts_stops_cleanly_and_finds_its_data_again(tmp_path):
    var = tmp_path / "var"
    port, sidecar_port = free_port(), free_port()
    creds, started, history, token = _run_once(var, port, sidecar_port)
    assert history > 40  # the demo was seeded through the services
    assert set(creds) == {"admin", "security", "reviewer", "auditor", "alice"}
    assert (var / "demo-credentials.json").stat().st_mode & 0o077 == 0
    deadline = time.monotonic() + 15
    while any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in started
    ):
        assert time.monotonic() < deadline, "children still running after Ctrl-C"
        time.sleep(0.2)
    again, _, history_again, token_again = _run_once(var, port, sidecar_port)
    assert again == creds
    assert token_again == token  # the demo identity's psql line stays valid
    assert history_again == history  # same data, and seeding again changed nothing
