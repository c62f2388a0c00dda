"""No statement runs without its audit record, even through a kill -9.

With ``audit_durability = strict`` (the default in production) the sidecar
fsyncs each statement's intent before forwarding it, and a restart turns the
intents a crash left without an outcome into events with outcome ``unknown``.
The attack on the old behaviour: eight clients insert at full speed, the sidecar
is killed with SIGKILL, and the committed rows are compared with the trail.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import psycopg

from tests.sidecar.proxy.conftest import (
    Sidecar,
    build_bundle,
    one_relay,
    start_sidecar,
    wait_for,
)

CLIENTS = 8


def _insert_until_killed(sidecar: Sidecar, run: int, client: int, acked: list[str]) -> None:
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            for n in range(100_000):
                tag = f"r{run}_c{client}_n{n}"
                # The alias survives redaction, so the event names the statement.
                conn.execute(f"INSERT INTO notes (body) VALUES (%s) RETURNING id AS {tag}", (tag,))
                acked.append(tag)
    except psycopg.Error:
        return  # the sidecar is gone


def test_a_kill_9_leaves_every_statement_that_could_have_run_in_the_trail(
    upstream: str, tmp_path: Path
) -> None:
    bundle = build_bundle(upstream.rsplit("/", 1)[-1].split("?")[0])
    workdir = tmp_path / "sidecar"
    for run in range(3):
        sidecar = start_sidecar(workdir, upstream, bundle, audit_durability="strict")
        acked: list[str] = []
        clients = [
            threading.Thread(target=_insert_until_killed, args=(sidecar, run, c, acked))
            for c in range(CLIENTS)
        ]
        for thread in clients:
            thread.start()
        # Killed in full flight: once the clients have been told of a few hundred.
        wait_for(lambda acked=acked: len(acked) >= 300, timeout=10)
        sidecar.proc.send_signal(signal.SIGKILL)
        sidecar.proc.wait()
        for thread in clients:
            thread.join(10)
        # A new sidecar on the same state directory recovers the journal, then stops.
        start_sidecar(workdir, upstream, bundle, audit_durability="strict").stop()
        with psycopg.connect(upstream) as conn:
            committed = {
                r[0]
                for r in conn.execute("SELECT body FROM notes WHERE body LIKE %s", (f"r{run}_%",))
            }
        events = {
            e["statement"].rsplit(" AS ", 1)[-1]: e["outcome"]
            for e in sidecar.events()
            if e.get("type") == "statement" and f"AS r{run}_" in (e.get("statement") or "")
        }
        assert len(acked) > 50, "the clients hardly ran"
        assert set(acked) <= committed, (
            "a statement the client was told succeeded is not in the table"
        )
        missing = sorted(committed - set(events))
        assert not missing, (
            f"run {run}: {len(missing)} of {len(committed)} committed inserts have no event"
        )
        # Where the crash hid the outcome, the trail says so.
        assert set(events.values()) <= {"allowed", "unknown", "error"}


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
