"""One large statement never stalls the other sessions; an oversized one is refused.

Statements above 64 KiB are judged in a worker thread while their own session
waits, and partial messages are buffered without re-copying; above
``max_statement_bytes`` a statement gets an ErrorResponse and the session stays.
"""

from __future__ import annotations

import statistics
import threading
import time

import psycopg

from tests.sidecar.proxy.conftest import Sidecar, one_relay


def _latencies(sidecar: Sidecar, seconds: float) -> list[float]:
    out = []
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")  # connected and warm before measuring
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.execute("SELECT 1")
            out.append(time.perf_counter() - started)
    return out


def test_a_5_mb_statement_does_not_slow_the_other_sessions(sidecar: Sidecar) -> None:
    big = "SELECT length('" + "x" * (5 * 1024 * 1024) + "')"
    result: list[object] = []

    def run_big() -> None:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            for _ in range(3):
                result.append(conn.execute(big).fetchone())

    worker = threading.Thread(target=run_big)
    worker.start()
    try:
        latencies = _latencies(sidecar, 2.0)
    finally:
        worker.join(60)
    assert result == [(5 * 1024 * 1024,)] * 3
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    # Judging the 5 MB text on the event loop would stall every session for a second
    # or more; 150 ms leaves room for a loaded machine (80 ms seen at load 9).
    assert p99 < 0.15, (
        f"SELECT 1 p99 {p99 * 1000:.1f} ms (median {statistics.median(latencies) * 1000:.1f})"
    )


def _bulk_insert(rows: int, seed: int) -> str:
    """Django's bulk_create shape: one INSERT of many rows, new values every time (so
    every one is judged in full, never served from a cache)."""
    values = ", ".join(
        f"('bulk {seed}-{i} lorem ipsum dolor sit amet', {seed * rows + i})" for i in range(rows)
    )
    return f'INSERT INTO "notes" ("body", "id") VALUES {values} RETURNING "notes"."id"'


def test_judging_multi_row_inserts_does_not_stall_the_other_sessions(sidecar: Sidecar) -> None:
    """Three INSERTs of 2 MB and 40,000 rows, judged off the event loop while another
    session runs SELECT 1 without pause: none of its round trips waits long for the
    judging. (A worker thread alone let the garbage collector's full passes over the
    statement's parse tree hold the interpreter lock for 300-600 ms at a time.) Each
    has its own number of rows, so none is decided from another's template."""
    statements = [_bulk_insert(40_000 + n, 1000 + n) for n in range(3)]
    assert all(len(s) > 2_000_000 for s in statements)
    counts: list[int] = []
    judged: list[float] = []

    def run_big() -> None:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            for statement in statements:
                started = time.perf_counter()
                counts.append(len(conn.execute(statement).fetchall()))
                judged.append(time.perf_counter() - started)

    worker = threading.Thread(target=run_big)
    worker.start()
    try:
        latencies = _latencies(sidecar, 0.5)  # connected and warm
        latencies = []
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            while worker.is_alive():
                started = time.perf_counter()
                conn.execute("SELECT 1")
                latencies.append(time.perf_counter() - started)
    finally:
        worker.join(120)
    assert counts == [40_000, 40_001, 40_002]
    latencies.sort()
    worst = latencies[-1]
    # A bound a loaded CI machine keeps (the worst measured under CI's load: 347 ms;
    # quiet, 121-166 ms): it fails when judging holds the lock for a second or more, as
    # a superlinear scan or analysis would. The figure itself is measured, not asserted.
    assert worst < 1.0, (
        f"SELECT 1 waited {worst * 1000:.0f} ms (then {latencies[-2] * 1000:.0f}, "
        f"{latencies[-3] * 1000:.0f} ms; median {statistics.median(latencies) * 1000:.1f}) "
        f"while the INSERTs took {', '.join(f'{s:.1f}' for s in judged)} s"
    )


def test_an_oversized_statement_is_an_error_not_a_lost_session(sidecar: Sidecar) -> None:
    # The default limit is 8 MiB: a 9 MiB statement is refused, the session goes on.
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        try:
            conn.execute("SELECT length('" + "x" * (9 * 1024 * 1024) + "')")
        except psycopg.errors.InsufficientPrivilege as exc:
            assert "max_statement_bytes" in str(exc)
        else:
            raise AssertionError("a 9 MiB statement went through")
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
