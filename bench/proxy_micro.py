"""The sidecar's Python cost per transaction without sockets: a stable A/B measure.

Drives one real ``Session`` (real ``EnginePolicy`` over the bench bundle, real
``AuditSpool`` in a temporary directory, real ``Metrics``) with pgbench's
select-only exchange: a Query with a fresh random literal in, the server's
RowDescription/DataRow/CommandComplete/ReadyForQuery back. The transports are
stand-ins that only count bytes, so what is measured is the sidecar's own work
per transaction (split, decide, relay, audit), not the system calls that
``bench/proxy.py`` includes. CPU time (``time.process_time``), best of rounds.

    .venv/bin/python bench/proxy_micro.py [--n 20000] [--rounds 5] [--tree DIR]
        [--workload select-only|select-prepared|orm]

``select-prepared`` drives the extended protocol instead: one named statement
prepared once, then Bind/Execute/Sync per transaction (a driver's prepared
statement, the path that checks the policy generation on every Bind). ``orm``
sends an ORM's statement (quoted names, ``LIMIT 21``) with a fresh string
literal and a fresh integer each time, in positions where their values change
nothing.

``--tree`` runs the same loop against another checkout's ``sidecar`` package
(e.g. ``git archive HEAD sidecar | tar -x -C /tmp/base``) for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _Transport:
    """Counts what would have been sent; the socket write is not what is measured."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _frame(kind: bytes, payload: bytes) -> bytes:
    return kind + (len(payload) + 4).to_bytes(4, "big") + payload


def _reply() -> bytes:
    # name, table oid, attnum, type oid (int4), type size, type modifier, format
    field = b"abalance\x00" + (0).to_bytes(4, "big") + (0).to_bytes(2, "big")
    field += (23).to_bytes(4, "big") + (4).to_bytes(2, "big")
    field += (-1).to_bytes(4, "big", signed=True) + (0).to_bytes(2, "big")
    row = (1).to_bytes(2, "big") + (4).to_bytes(4, "big") + b"1234"
    return (
        _frame(b"T", (1).to_bytes(2, "big") + field)
        + _frame(b"D", row)
        + _frame(b"C", b"SELECT 1\x00")
        + _frame(b"Z", b"I")
    )


def _prepared_reply() -> bytes:
    # BindComplete, then the portal's description (libpq asks for it), the row...
    return _frame(b"2", b"") + _reply()


def _bind(value: int) -> bytes:
    param = str(value).encode()
    bind = b"\x00s1\x00" + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    bind += len(param).to_bytes(4, "big") + param + (0).to_bytes(2, "big")
    # What libpq sends for each run of a prepared statement: Bind, Describe (portal),
    # Execute, Sync.
    return (
        _frame(b"B", bind)
        + _frame(b"D", b"P\x00")
        + _frame(b"E", b"\x00" + (0).to_bytes(4, "big"))
        + _frame(b"S", b"")
    )


def _fit_to_tree(document: dict[str, Any]) -> None:
    """Checkouts from before the masking key left the bundle require one: give them one."""
    from sidecar.engine import bundle_schema, compute_revision

    required = bundle_schema()["properties"]["datasource"]["required"]
    if "masking_key" in required:
        document["datasource"]["masking_key"] = "bench-masking-key-0123456789"
        document["revision"] = compute_revision(document)


ORM = (
    'SELECT "pgbench_accounts"."aid", "pgbench_accounts"."abalance" FROM "pgbench_accounts" '
    'WHERE "pgbench_accounts"."aid" = {0} AND "pgbench_accounts"."filler" <> '
    "'user-{0}@example.com' LIMIT 21"
)


async def run(n: int, rounds: int, workload: str = "select-only") -> list[float]:
    prepared = workload == "select-prepared"
    from bench.proxy import bundle
    from sidecar.metrics import Metrics
    from sidecar.proxy.policy import identities_from_bundle
    from sidecar.proxy.session import Session
    from sidecar.runner import EnginePolicy
    from sidecar.shipper import AuditSpool

    document = bundle("bench")
    _fit_to_tree(document)

    class Source:
        def current(self) -> dict[str, Any]:
            return document

        def subscribe(self, callback: Any) -> None:
            pass

    metrics = Metrics()
    policy = EnginePolicy(Source(), metrics)
    identity = identities_from_bundle(document)["bench"]
    tmp = Path(tempfile.mkdtemp(prefix="warden-micro-"))
    spool = AuditSpool(tmp / "spool", max_bytes=16 * 1024**3)
    client, upstream = _Transport(), _Transport()
    session = Session(
        client=client,  # type: ignore[arg-type]
        upstream=upstream,  # type: ignore[arg-type]
        identity=identity,
        policy=policy,
        audit=spool,
        metrics=metrics,
        parameters={"client_encoding": "UTF8", "standard_conforming_strings": "on"},
        status=b"I",
        base_event={
            "identity": "bench",
            "identity_kind": "service",
            "owner": "ops",
            "datasource": "bench",
            "sidecar": "bench",
            "client_addr": "127.0.0.1",
            "application_name": "pgbench",
        },
        max_message=256 * 1024 * 1024,
        on_close=lambda _s: None,
    )
    # Where the transports deliver data (the native relay when built; older trees:
    # the session's methods).
    client_data = getattr(session, "client_entry", session.client_data)
    upstream_data = getattr(session, "upstream_entry", session.upstream_data)
    reply = _reply()
    rng = random.Random(7)
    results = []
    if prepared:
        sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        session.client_data(_frame(b"P", b"s1\x00" + sql + b"\x00\x00\x00") + _frame(b"S", b""))
        session.upstream_data(_frame(b"1", b"") + _frame(b"Z", b"I"))
        reply = _prepared_reply()
    for _ in range(rounds):
        if prepared:
            binds = [_bind(rng.randint(1, 10**9)) for _ in range(n)]
            started = time.process_time()
            for b in binds:
                client_data(b)
                upstream_data(reply)
            results.append((time.process_time() - started) / n * 1e6)
            spool.flush()
            continue
        # Fresh literals every round, as pgbench's random aid over 800k rows: the
        # decision caches see a new text almost every time.
        sql = ORM if workload == "orm" else "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
        queries = [
            _frame(b"Q", sql.format(rng.randint(1, 10**9)).encode() + b"\x00") for _ in range(n)
        ]
        started = time.process_time()
        for q in queries:
            client_data(q)
            upstream_data(reply)
        results.append((time.process_time() - started) / n * 1e6)
        spool.flush()
    spool.close()
    shutil.rmtree(tmp, ignore_errors=True)
    assert not session.closed and not session.pending, "the exchange went wrong"
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="transactions per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", default=str(ROOT), help="checkout whose sidecar package to run")
    parser.add_argument(
        "--workload", choices=("select-only", "select-prepared", "orm"), default="select-only"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # bench.proxy (the bundle)
    sys.path.insert(0, str(Path(args.tree).resolve()))  # the sidecar under test
    results = asyncio.run(run(args.n, args.rounds, args.workload))
    what = args.workload
    print(
        f"session CPU per {what} transaction: best {min(results):.2f} us, "
        f"rounds {' '.join(f'{r:.2f}' for r in results)} ({args.tree})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
