"""Benchmark of the approval long-poll: decision commit -> waiting sidecar has the answer.

Runs the real parts: one uvicorn process serving ``config.asgi`` (the gateway behind it)
(the ASGI long-poll), Redis pub/sub, PostgreSQL. Opens N requests through the
sidecar API (``POST /api/v1/sidecar/approvals``), parks N long-polls at once
(``GET .../<id>?wait=60``), then decides them all through the service
(``approvals.services.approval_decide``, in a thread of this process) and
measures, per request, the time from the decision's commit (an on-commit hook
registered before the service's own) until its waiting client has read the
answer. Also reports the server's thread count and database connections while
the N waiters are parked (neither should grow with N). Use a database of its own:

    WARDEN_DEV=1 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/warden_bench \\
    REDIS_URL=redis://127.0.0.1:6379/N .venv/bin/python bench/approvals.py --requests 200

Ends with ``approval_decision_to_sidecar_p50=<v> ms`` and
``approval_decision_to_sidecar_p99=<v> ms target=500 met|missed``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from approvals.services import approval_decide  # noqa: E402
from governance import services  # noqa: E402
from governance.models import Datasource, Environment, Identity, Membership, Sidecar, Team  # noqa: E402

TARGET_P99_MS = 500.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def db_connections() -> int:
    """Connections to this database other than this process's own."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return int(cur.fetchone()[0])


def db_connections_closing() -> int:
    try:
        return db_connections()
    finally:
        connection.close()


# --- setup -----------------------------------------------------------------------------


def setup() -> tuple[Datasource, Any, str]:
    call_command("migrate", verbosity=0)
    User = get_user_model()
    admin, created = User.objects.get_or_create(
        username="bench-admin", defaults={"is_superuser": True, "is_staff": True}
    )
    if created:
        admin.set_unusable_password()
        admin.save()
    connect = Team.objects.filter(slug="bench-appr").first() or services.team_create(
        actor=admin, name="Bench approvals", slug="bench-appr"
    )
    review = Team.objects.filter(slug="bench-review").first() or services.team_create(
        actor=admin, name="Bench reviewers", slug="bench-review"
    )
    datasource = Datasource.objects.filter(name="bench-appr-db").first()
    if datasource is None:
        datasource = services.datasource_create(
            actor=admin,
            name="bench-appr-db",
            environment=Environment.objects.get(name="production"),
            connect_teams=[connect],
            review_teams=[review],
        )
    if not Identity.objects.filter(name="bench-requester").exists():
        services.identity_create(actor=admin, name="bench-requester", kind="human", teams=[connect])
    reviewer = User.objects.filter(username="bench-reviewer").first()
    if reviewer is None:
        reviewer = User.objects.create_user(username="bench-reviewer", email="r@example.com")
        Membership.objects.create(user=reviewer, role="reviewer")
        services.identity_create(
            actor=admin, name="bench-reviewer", kind="human", user=reviewer, teams=[review]
        )
    Sidecar.objects.filter(datasource=datasource).delete()
    _, token = services.sidecar_register(actor=admin, datasource=datasource, name="bench-sc")
    return datasource, reviewer, token


# --- the client ------------------------------------------------------------------------


async def http(
    port: int, method: str, path: str, token: str, body: bytes = b""
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n"
    )
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    raw = await reader.readuntil(b"\r\n\r\n")
    status = int(raw.split(b" ", 2)[1])
    match = re.search(rb"(?i)content-length: *(\d+)", raw)
    data = await reader.readexactly(int(match.group(1))) if match else b""
    writer.close()
    return status, data


async def open_requests(port: int, token: str, n: int) -> list[str]:
    run = secrets.token_hex(4)
    sem = asyncio.Semaphore(20)

    async def one(i: int) -> str:
        body = {
            "identity": "bench-requester",
            "fingerprint": f"{run}{i:08x}".ljust(32, "0"),
            "statement": f"DELETE FROM public.t{i} WHERE id = $1",
            "kind": "delete",
            "risk": 75,
            "reasons": [{"rule": "bench", "message": "benchmark"}],
            "tables": [f"public.t{i}"],
            "classifications": [],
        }
        async with sem:
            status, data = await http(
                port, "POST", "/api/v1/sidecar/approvals", token, json.dumps(body).encode()
            )
        if status != 201:
            raise RuntimeError(f"open answered {status}: {data[:200]!r}")
        return str(json.loads(data)["id"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def measure(port: int, token: str, ids: list[str], reviewer: Any, server_pid: int) -> None:
    received: dict[str, float] = {}
    states: dict[str, str] = {}

    async def wait(request_id: str) -> None:
        status, data = await http(
            port, "GET", f"/api/v1/sidecar/approvals/{request_id}?wait=60", token
        )
        received[request_id] = time.time()
        states[request_id] = json.loads(data).get("state", f"http {status}")

    threads_before = threads_of(server_pid)
    waiters = [asyncio.create_task(wait(i)) for i in ids]
    await asyncio.sleep(3.0)  # every waiter has reached the server and parked
    parked = len(ids) - len(received)
    threads_parked = threads_of(server_pid)
    conns_parked = await asyncio.to_thread(db_connections_closing)
    print(
        f"{parked} long-polls parked; server threads {threads_before} -> {threads_parked}; "
        f"server database connections while parked: {conns_parked}"
    )
    committed: dict[str, float] = {}

    def decide_all() -> None:
        for request_id in ids:
            with transaction.atomic():
                # Registered before the service's own publish hook, so it runs first.
                transaction.on_commit(
                    lambda rid=request_id: committed.__setitem__(rid, time.time())
                )
                approval_decide(request_id=request_id, user=reviewer, approve=True)
        connection.close()

    started = time.perf_counter()
    await asyncio.to_thread(decide_all)
    decide_seconds = time.perf_counter() - started
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=70)
    latencies = [(received[i] - committed[i]) * 1000 for i in ids]
    wrong = sum(1 for i in ids if states[i] != "approved")
    print(f"decided {len(ids)} in {decide_seconds:.2f} s ({len(ids) / decide_seconds:.0f}/s)")
    print(
        f"decision commit -> sidecar: p50 {pct(latencies, 50):.1f} ms, "
        f"p90 {pct(latencies, 90):.1f} ms, p99 {pct(latencies, 99):.1f} ms, "
        f"max {max(latencies):.1f} ms; answers not 'approved': {wrong}"
    )
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    verdict = "met" if p99 < TARGET_P99_MS and wrong == 0 and parked == len(ids) else "missed"
    print(f"approval_decision_to_sidecar_p50={p50:.1f} ms target=none")
    print(f"approval_decision_to_sidecar_p99={p99:.1f} ms target={TARGET_P99_MS:.0f} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    _, reviewer, token = setup()
    connection.close()  # so that the count of connections while parked is the server's alone
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"warden-bench-approvals-{port}.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application",
             "--port", str(port), "--loop", "uvloop", "--no-access-log"],
            cwd=ROOT, env={**os.environ}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:

        async def run() -> None:
            for _ in range(300):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            started = time.perf_counter()
            ids = await open_requests(port, token, args.requests)
            took = time.perf_counter() - started
            print(f"opened {len(ids)} requests through the sidecar API in {took:.2f} s")
            await measure(port, token, ids, reviewer, server.pid)

        asyncio.run(run())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
