"""Benchmark of audit ingestion through the real sidecar API, then the UI's query latencies.

``--web-processes`` uvicorn processes serve ``config.asgi`` (the gateway behind it)
(Django behind it), each on a port of its own as behind a load balancer, on a
database of its own (migrated here); ``--sidecars`` sidecars, spread over
``--datasources`` datasources (each sidecar has its own chain, anchored into
its datasource's), post batches of ``--batch`` statement events shaped like
the proxy's over keep-alive HTTP, ``--clients`` at a time (client n to web
process n mod N), until ``--events`` have been accepted. Figures: events/s
accepted (wall clock), the web processes' CPU time per event (steadier than
the rate on a shared machine) and, when PostgreSQL runs on this machine, its
backends' CPU time per event, and their sum.
Then every chain is verified, and ``bench/audit_queries.py`` runs when it
exists (its ``main()``). ``--database-stage`` instead times only PostgreSQL's
side of ingestion on whatever the database holds, for comparing schemas.

    WARDEN_DEV=1 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/warden_bench_audit \\
    REDIS_URL=redis://127.0.0.1:6379/N .venv/bin/python bench/audit.py

Ends with ``audit_ingest_cpu_per_event=<v> us target=40 met|missed`` (web and
PostgreSQL together) and ``audit_ingest_rate=<v> events/s target=20000
met|missed`` (missed, whatever the rate, when ``audit_verify`` fails after the run).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from audit.services import audit_verify  # noqa: E402
from governance import services  # noqa: E402
from governance.models import Environment, Membership, Role  # noqa: E402
from sidecar.events import SCHEMA_VERSION  # noqa: E402
from sidecar.proxy.audit_event import event_id  # noqa: E402

TARGET = 20_000
CPU_TARGET_US = 40.0
CLASSIFICATIONS = ["pii.email", "pii.ssn", "pii.phone", "financial.card"]
TABLES = ["public.customers", "public.orders", "public.payments", "public.api_keys"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(sidecars: int, datasources: int = 1) -> list[str]:
    """Datasources and sidecars for the run (fresh names each time); their tokens.
    Sidecar i belongs to datasource i mod ``datasources``."""
    call_command("migrate", verbosity=0)
    User = get_user_model()
    admin, _ = User.objects.get_or_create(
        username="bench-admin", defaults={"is_superuser": True, "is_staff": True}
    )
    Membership.objects.get_or_create(user=admin, defaults={"role": Role.ADMIN})
    production = Environment.objects.get(name="production")
    run = uuid.uuid4().hex[:6]
    sources = [
        services.datasource_create(
            actor=admin, name=f"bench-audit-{run}-{i}", environment=production
        )
        for i in range(max(1, min(datasources, sidecars)))
    ]
    tokens = []
    for i in range(sidecars):
        _, token = services.sidecar_register(
            actor=admin, datasource=sources[i % len(sources)], name=f"bench-{i}"
        )
        tokens.append(token)
    return tokens


def event(rng: random.Random) -> dict[str, Any]:
    """One statement event as ``sidecar.proxy.audit_event`` writes it: versioned, so
    the intake checks every key's type against the contract (``sidecar/events.py``),
    with the session's state, and without the optional members a statement without
    them leaves out (``OMITTED_WHEN_NONE``, ``error_sqlstate``)."""
    classified = rng.random() < 0.4
    tables = rng.sample(TABLES, rng.randint(1, 2))
    return {
        "v": SCHEMA_VERSION,
        "id": event_id(),
        "type": "statement",
        "ts": round(time.time(), 6),
        "action": "allow",
        "outcome": "allowed",
        "rows": rng.randint(0, 500),
        "duration_ms": round(rng.random() * 20, 3),
        "identity": f"svc-{rng.randint(1, 40)}",
        "identity_kind": rng.choice(["service", "human", "agent"]),
        "owner": "alice",
        "datasource": "ignored",
        "sidecar": "bench",
        "client_addr": f"10.0.{rng.randint(0, 9)}.{rng.randint(1, 250)}",
        "application_name": "bench",
        "session_state": {
            "client_encoding": "UTF8",
            "standard_conforming_strings": "on",
            "search_path": None,
        },
        "kind": "select",
        "statement": "SELECT id, email, total FROM customers JOIN orders USING (id) "
        "WHERE customers.id = $1 AND status = $2 LIMIT $3",
        "fingerprint": f"{rng.getrandbits(256):064x}",
        "tables": tables,
        "tables_read": tables,
        "tables_written": [],
        "columns_read": [f"{t}.id" for t in tables],
        "functions": [],
        "classifications": rng.sample(CLASSIFICATIONS, 2) if classified else [],
        "masked_columns": ["public.customers.email"] if classified else [],
        "reasons": [{"code": "masked", "message": "classified columns masked"}]
        if classified
        else [],
        "risk": rng.randint(0, 60),
        "revision": "a" * 64,
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def web_backends() -> list[int]:
    """The PostgreSQL backends serving the web process (every other connection to
    this database), when their CPU can be read here; else []."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        pids = [pid for (pid,) in cursor.fetchall()]
    connection.close()
    return local_backends(pids)


def local_backends(pids: list[int]) -> list[int]:
    """``pids`` when all are PostgreSQL processes on this machine, else []: a remote
    server's pids may name unrelated processes here."""
    try:
        if any(Path(f"/proc/{pid}/comm").read_text().strip() != "postgres" for pid in pids):
            return []
    except OSError:
        return []
    return pids


def backends_cpu(pids: list[int]) -> float:
    try:
        return sum(cpu_seconds(pid) for pid in pids)
    except FileNotFoundError as exc:
        # A connection to the bench database closed during the run (another
        # process's, taken for one of the web processes'): its CPU time is lost.
        raise SystemExit(
            f"a PostgreSQL backend of the bench database exited during the run ({exc.filename}): "
            "its CPU time cannot be counted; run again with nothing else connected to it"
        ) from None


class LockWaits:
    """Samples, every 50 ms while the run lasts, how many of the ingest backends are
    running a statement and how many of those wait for a lock (a chain head, a
    rollup row): the share of ingestion spent queueing, which the machine's load
    moves much less than the rate."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.active, self.waiting = pids, 0, 0
        self.events: Counter[str] = Counter()  # what they wait for: tuple, extend …
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> LockWaits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psycopg

        settings = connection.settings_dict
        with psycopg.connect(
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            user=settings["USER"] or None,
            password=settings["PASSWORD"] or None,
            dbname=settings["NAME"],
            autocommit=True,
        ) as sampler:
            while not self._stop.wait(0.05):
                rows = sampler.execute(
                    "SELECT wait_event_type = 'Lock', wait_event FROM pg_stat_activity "
                    "WHERE pid = ANY(%s) AND state = 'active'",
                    [self.pids],
                ).fetchall()
                self.active += len(rows)
                for is_lock, wait_event in rows:
                    if is_lock:
                        self.waiting += 1
                        self.events[wait_event] += 1

    def share(self) -> float:
        return self.waiting / self.active if self.active else 0.0


def run(
    args: argparse.Namespace, ports: list[int], tokens: list[str]
) -> tuple[int, int, float, float]:
    """Post batches until args.events are accepted.

    Returns (accepted, duplicates, seconds, CPU seconds this load generator used meanwhile).
    """
    rng = random.Random(7)
    per_client = max(1, args.events // args.batch // args.clients)
    bodies = [
        [
            json.dumps({"events": [event(rng) for _ in range(args.batch)]}).encode()
            for _ in range(per_client)
        ]
        for _ in range(args.clients)
    ]
    totals = {"accepted": 0, "duplicates": 0}
    lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(args.clients + 1)

    def client(n: int) -> None:
        token = tokens[n % len(tokens)]
        conn = http.client.HTTPConnection("127.0.0.1", ports[n % len(ports)], timeout=120)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        start.wait()
        for body in bodies[n]:
            conn.request("POST", "/api/v1/sidecar/audit", body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            if reply.status != 202:
                errors.append(f"{reply.status} {data[:200]!r}")
                return
            answer = json.loads(data)
            with lock:
                totals["accepted"] += answer["accepted"]
                totals["duplicates"] += answer["duplicates"]
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    for t in threads:
        t.start()
    start.wait()
    began, cpu_began = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    if errors:
        raise SystemExit(f"ingestion failed: {errors[0]}")
    return totals["accepted"], totals["duplicates"], elapsed, cpu


def stages(batches: int = 20, repeat: int = 7) -> None:
    """Time the ingest path's Python stages in this process, one thread, no database:
    parse the body, map events to rows, seal (hash chain) and write the COPY text."""
    from audit.chain import micros
    from audit.services import _seal, _sidecar_row
    from gateway.audit_intake import _audit_json

    rng = random.Random(7)
    bodies = [
        json.dumps({"events": [event(rng) for _ in range(500)]}).encode() for _ in range(batches)
    ]
    context = {
        "chain": "bench",
        "datasource_id": 1,
        "environment": "production",
        "sidecar_name": "bench",
    }
    best = {"parse": float("inf"), "map": float("inf"), "seal+copy": float("inf")}
    # The collector as config.asgi sets it for the server process.
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    for _ in range(repeat):
        took = dict.fromkeys(best, 0.0)
        for body in bodies:
            a = time.perf_counter()
            events = _audit_json(body)["events"]
            b = time.perf_counter()
            received = micros(datetime.datetime.now(datetime.UTC))
            rows = [_sidecar_row(e, received_us=received, context=context) for e in events]
            c = time.perf_counter()
            _seal(rows, 0, "0" * 64)
            d = time.perf_counter()
            took["parse"] += b - a
            took["map"] += c - b
            took["seal+copy"] += d - c
        best = {k: min(best[k], took[k]) for k in best}
    gc.set_threshold(*threshold)
    gc.unfreeze()
    per_event = {k: v / (500 * batches) * 1e6 for k, v in best.items()}
    print(
        "in-process stages, us/event (best of "
        f"{repeat}): "
        + ", ".join(f"{k} {v:.1f}" for k, v in per_event.items())
        + f"; total {sum(per_event.values()):.1f}"
    )


def database_stage(batches: int = 120) -> None:
    """PostgreSQL's own CPU per event for the ingest statements, one connection,
    nothing else running through it: ``_chain_append`` (idempotency key, COPY,
    chain head, rollups) and the commit, on rows built beforehand. For comparing
    schemas (indexes, collations) without the web process's noise."""
    from django.db import transaction

    from audit.chain import micros
    from audit.services import _chain_append, _sidecar_row
    from governance.models import Datasource

    rng = random.Random(11)
    context = {
        # A chain of its own (verified with the others), on a bench datasource so
        # the PII rollup is written as in a real batch.
        "chain": f"bench-db-stage-{uuid.uuid4().hex[:8]}",
        "datasource_id": Datasource.objects.filter(name__startswith="bench-audit-")
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first(),
        "environment": "production",
        "sidecar_name": "bench",
    }
    received = micros(datetime.datetime.now(datetime.UTC))
    work = [
        [_sidecar_row(event(rng), received_us=received, context=context) for _ in range(500)]
        for _ in range(batches + 1)
    ]
    with transaction.atomic():
        _chain_append(context["chain"], work[0])  # warm-up: partition check, caches
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = local_backends([cursor.fetchone()[0]])
    if not backend:
        print("database stage: the server's backends cannot be read from here")
        return
    before = backends_cpu(backend)
    for rows in work[1:]:
        with transaction.atomic():
            _chain_append(context["chain"], rows)
    per_event = (backends_cpu(backend) - before) / (500 * batches) * 1e6
    connection.close()
    print(f"database stage: PostgreSQL CPU per event {per_event:.1f} us ({batches} batches of 500)")


def start_server(port: int, n: int) -> subprocess.Popen[bytes]:
    log = Path(tempfile.gettempdir()) / f"bench-audit-uvicorn-{n}.log"
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sidecars", type=int, default=4)
    parser.add_argument(
        "--datasources",
        type=int,
        default=1,
        help="datasources the sidecars are spread over (1: one busy datasource)",
    )
    parser.add_argument(
        "--web-processes",
        type=int,
        default=1,
        help="uvicorn processes, each on its own port; client n posts to process n mod N",
    )
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument(
        "--stages", action="store_true", help="first time the Python stages in-process"
    )
    parser.add_argument(
        "--database-stage",
        action="store_true",
        help="only time PostgreSQL's CPU for the ingest statements, on the events the "
        "database already holds (no HTTP run)",
    )
    args = parser.parse_args()
    if args.stages:
        stages()

    tokens = setup(args.sidecars, args.datasources)
    if args.database_stage:
        database_stage()
        return
    connection.close()
    print(f"load average before the run: {Path('/proc/loadavg').read_text().strip()}")
    ports = [free_port() for _ in range(max(1, args.web_processes))]
    servers = [start_server(port, n) for n, port in enumerate(ports)]
    try:
        for port in ports:
            wait_for(port)
        # Warm-up (connections, caches, first partition checks), not counted; twice,
        # so each process's ingest threads have opened the connections they will use.
        warm = argparse.Namespace(**{**vars(args), "events": args.batch * args.clients})
        run(warm, ports, tokens)
        run(warm, ports, tokens)
        backends = web_backends()
        web_before = sum(cpu_seconds(s.pid) for s in servers)
        database_before = backends_cpu(backends)
        with LockWaits(backends) as lock_waits:
            accepted, duplicates, elapsed, client_cpu = run(args, ports, tokens)
        web_cpu = sum(cpu_seconds(s.pid) for s in servers) - web_before
        database_cpu = backends_cpu(backends) - database_before
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            server.wait(timeout=10)

    rate = accepted / elapsed
    processes = f"{len(servers)} uvicorn process{'es' if len(servers) > 1 else ''}"
    print(
        f"ingested {accepted:,} events ({duplicates} duplicates) in {elapsed:.2f} s: "
        f"{rate:,.0f} events/s; batches of {args.batch}, {args.clients} clients, "
        f"{args.sidecars} sidecar chains over {min(args.datasources, args.sidecars)} "
        f"datasource(s), {processes}"
    )
    web_us = web_cpu / accepted * 1e6
    print(
        f"web process CPU per event: {web_us:.1f} us "
        f"(one core at 100% would take {1e6 / web_us:,.0f} events/s)"
    )
    total_us = web_us
    if backends:
        # The statements' own cost in PostgreSQL (not its WAL writer or checkpointer).
        database_us = database_cpu / accepted * 1e6
        total_us += database_us
        print(
            f"PostgreSQL CPU per event ({len(backends)} backends of the web processes): "
            f"{database_us:.1f} us"
        )
    if backends:
        print(
            f"ingest statements waiting for a lock: {lock_waits.share():.0%} of "
            f"{lock_waits.active:,} samples of a running statement"
            + "".join(f", {n} {event}" for event, n in lock_waits.events.most_common())
        )
    # The load generator shares the machine: what it burns, the server cannot use.
    print(f"load generator CPU per event: {client_cpu / accepted * 1e6:.1f} us")
    print(f"load average after the run: {Path('/proc/loadavg').read_text().strip()}")
    began = time.perf_counter()
    verified = audit_verify()
    print(
        f"audit_verify: {'OK' if verified.ok else 'BROKEN'} {verified.checked:,} events "
        f"in {verified.chains} chains, {time.perf_counter() - began:.2f} s"
        + ("" if verified.ok else f": {verified.first_broken}")
    )
    if backends:
        print(
            f"audit_ingest_cpu_per_event={total_us:.1f} us target={CPU_TARGET_US:.0f} "
            f"{'met' if total_us <= CPU_TARGET_US else 'missed'}"
        )
    verdict = (
        f"audit_ingest_rate={rate:.0f} events/s target={TARGET} "
        f"{'met' if rate >= TARGET and verified.ok else 'missed'}"
    )
    print(verdict)
    queries = ROOT / "bench" / "audit_queries.py"
    if queries.exists() and not args.skip_queries:
        # Its own process: it seeds a scratch database of its own, and Django in this
        # process is already bound to the ingestion database.
        subprocess.run([sys.executable, str(queries)], check=False)
        print(verdict)  # the ingestion verdict stays the last line


if __name__ == "__main__":
    main()
