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
    assert p99 < 0.05, (
        f"SELECT 1 p99 {p99 * 1000:.1f} ms (median {statistics.median(latencies) * 1000:.1f})"
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
