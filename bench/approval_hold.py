"""Benchmark of a hold: statement sent -> its approval request committed, EXPLAIN included.

Runs Warden as ``make run`` does (``python -m config.run``: uvicorn, a Celery
worker, the demo sidecar in front of the demo database), in a scratch
``WARDEN_VAR_DIR``, on the PostgreSQL and Redis named by ``DATABASE_URL`` and
``REDIS_URL``. An agent identity (``agent-insights``: its writes need a reviewer)
then sends, through the real sidecar, ``UPDATE orders SET status = ... WHERE id
> N`` with another N each time, so each opens a new request. For each, the time
from the statement sent to the sidecar's NoticeResponse ("Warden is holding
this statement for approval: URL") is measured at the client: the sidecar sends
it once the control plane has answered with the committed request, after it ran
EXPLAIN on its own connection. The client then cancels the hold and sends the
next. Also reports how many requests carry a row estimate. Use a database of
its own (the run migrates and seeds it):

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/warden_bench_hold \\
    REDIS_URL=redis://127.0.0.1:6379/N .venv/bin/python bench/approval_hold.py --statements 200

Ends with ``approval_statement_to_request_p50=<v> ms`` and
``approval_statement_to_request_p99=<v> ms target=300 met|missed``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 300.0
IDENTITY = "agent-insights"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _drain(stream: Any) -> None:
    for _line in stream:
        pass


def ensure_database(dsn: str) -> None:
    """Create the database ``dsn`` names, on its server, if it is missing."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    name = str(params.get("dbname") or "")
    with psycopg.connect(**{**params, "dbname": "postgres"}, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def start_warden(env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m config.run``, once it says where it runs (the sidecar serves)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "config.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("Warden stopped while starting:\n" + "".join(lines[-30:]))
        lines.append(line)
        if "Warden is running at" in line:
            # Keep reading its output so it never blocks on a full pipe.
            threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
            return proc
    proc.terminate()
    raise SystemExit("Warden did not start in 180 s")


def agent_token(env: dict[str, str]) -> str:
    """A fresh access token of the agent, issued by the demo's admin."""
    code = (
        "import django; django.setup()\n"
        "from governance import services\n"
        "from governance.models import Identity\n"
        "from django.contrib.auth import get_user_model\n"
        "admin = get_user_model().objects.get(username='admin')\n"
        f"agent = Identity.objects.get(name={IDENTITY!r})\n"
        "_, raw = services.token_issue(actor=admin, identity=agent, name='bench')\n"
        "print(raw)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def request_rows(dsn: str) -> tuple[int, int]:
    """(requests of the agent, of which with a row estimate) in the control plane."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE r.estimate ? 'rows' "
            "AND r.estimate->'rows' <> '{}'::jsonb) "
            "FROM approvals_approvalrequest r JOIN governance_identity i ON i.id = r.identity_id "
            "WHERE i.name = %s",
            (IDENTITY,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def measure(port: int, dbname: str, token: str, statements: int) -> list[float]:
    conn = psycopg.connect(
        host="127.0.0.1", port=port, dbname=dbname, user=IDENTITY, password=token, autocommit=True
    )
    noticed = threading.Event()
    conn.add_notice_handler(
        lambda d: (
            noticed.set() if (d.message_primary or "").startswith("Warden is holding") else None
        )
    )
    seconds: list[float] = []
    try:
        for i in range(statements):
            noticed.clear()
            errors: list[BaseException] = []

            def run(n: int = i, errors: list[BaseException] = errors) -> None:
                try:
                    conn.execute(f"UPDATE orders SET status = 'refunded' WHERE id > {1000 + n}")
                except psycopg.Error as exc:
                    errors.append(exc)

            sent = time.perf_counter()
            thread = threading.Thread(target=run)
            thread.start()
            if not noticed.wait(30):
                raise SystemExit(f"statement {i}: no hold notice in 30 s ({errors})")
            seconds.append(time.perf_counter() - sent)
            conn.cancel_safe()
            thread.join(30)
            if not errors or not isinstance(errors[0], psycopg.errors.QueryCanceled):
                raise SystemExit(f"statement {i}: expected a cancelled hold, got {errors}")
    finally:
        conn.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--statements", type=int, default=200)
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL")
    if not dsn or not os.environ.get("REDIS_URL"):
        raise SystemExit("set DATABASE_URL (a database of its own) and REDIS_URL")
    ensure_database(dsn)
    with tempfile.TemporaryDirectory(prefix="warden-bench-hold-") as var:
        port, sidecar_port = free_port(), free_port()
        demo_db = "warden_bench_hold_demo"
        env = {
            **os.environ,
            "WARDEN_VAR_DIR": var,
            "WARDEN_PORT": str(port),
            "WARDEN_SIDECAR_PORT": str(sidecar_port),
            "WARDEN_DEMO_DATABASE": demo_db,
            "WARDEN_DEV": "1",
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
        warden = start_warden(env)
        try:
            token = agent_token(env)
            before, _ = request_rows(dsn)
            measure(sidecar_port, demo_db, token, 5)  # warm-up: connections, caches
            started = time.perf_counter()
            seconds = measure(sidecar_port, demo_db, token, args.statements)
            took = time.perf_counter() - started
            after, estimated = request_rows(dsn)
        finally:
            warden.send_signal(signal.SIGINT)
            try:
                warden.wait(60)
            except subprocess.TimeoutExpired:
                warden.kill()
    ms = [s * 1000 for s in seconds]
    p50, p99 = pct(ms, 50), pct(ms, 99)
    print(
        json.dumps(
            {
                "statements": len(ms),
                "requests_opened": after - before,
                "requests_with_row_estimate": estimated,
                "seconds": round(took, 2),
                "max_ms": round(max(ms), 1),
            }
        )
    )
    verdict = "met" if p99 < TARGET_P99_MS else "missed"
    print(f"approval_statement_to_request_p50={p50:.1f} ms target=none")
    print(f"approval_statement_to_request_p99={p99:.1f} ms target={TARGET_P99_MS:.0f} {verdict}")


if __name__ == "__main__":
    main()
