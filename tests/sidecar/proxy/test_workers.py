"""Several worker processes on one port: one sidecar for clients, whichever worker serves.

The sidecar runs with ``workers = 2``: the kernel spreads connections over the
two processes. Which worker serves a connection is what the sidecar itself says
in the BackendKeyData it hands out (its process id modulo the number of
workers: the cancel route) and in the parent's /metrics (``worker`` label).
A cancel must reach the query of the key it names whichever worker receives it,
failed sign-ins on one worker must throttle the next attempt on the other, each
worker keeps its own audit spool, and SIGTERM stops them all.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar.proxy import messages as m
from sidecar.proxy.server import LoginThrottle
from tests.sidecar.proxy.cluster import free_port
from tests.sidecar.proxy.conftest import (
    BOB_TOKEN,
    Sidecar,
    build_bundle,
    one_relay,
    start_sidecar,
    wait_for,
)
from tests.sidecar.proxy.test_audit import RECEIVER
from tests.sidecar.proxy.test_garbage import recv_message
from tests.sidecar.proxy.test_login_limits import WRONG, _login, guesses_side_by_side

WORKERS = 2
FORWARDED = 'warden_sidecar_cancel_requests_total{route="forwarded"}'


@pytest.fixture(scope="module")
def sidecar(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    name = upstream.rsplit("/", 1)[-1].split("?")[0]
    proc = start_sidecar(
        tmp_path_factory.mktemp("workers"),
        upstream,
        build_bundle(name),
        workers=WORKERS,
        scan_enabled=False,
    )
    yield proc
    proc.stop()


def worker_of(conn: psycopg.Connection[Any]) -> int:
    return conn.info.backend_pid % WORKERS


def per_worker(metrics: str, sample: str) -> dict[int, int]:
    """``sample`` (a metric name with its labels but the worker's) by worker."""
    name, _, labels = sample.partition("{")
    rest = "," + re.escape(labels[:-1]) if labels else ""
    pattern = rf'^{re.escape(name)}{{worker="(\d+)"{rest}}} (\d+)$'
    return {int(worker): int(value) for worker, value in re.findall(pattern, metrics, re.M)}


def alive(pid: int) -> bool:
    """Running (a worker whose parent died is a zombie until something reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ready_info(sidecar: Sidecar) -> dict[str, Any]:
    return dict(json.loads((sidecar.config_path.parent / "ready.json").read_text()))


def connection_on(sidecar: Sidecar, worker: int) -> psycopg.Connection[Any]:
    """A connection that landed on ``worker`` (the kernel decides: try until one does)."""
    for _ in range(64):
        conn = psycopg.connect(sidecar.dsn(), autocommit=True)
        if worker_of(conn) == worker:
            return conn
        conn.close()
    raise AssertionError(f"no connection landed on worker {worker}")


def test_connections_spread_over_the_workers_and_each_keeps_its_spool(sidecar: Sidecar) -> None:
    conns = [psycopg.connect(sidecar.dsn(), autocommit=True) for _ in range(16)]
    try:
        workers = {worker_of(c) for c in conns}
        assert workers == {0, 1}
        for conn in conns:  # every worker enforces the same policy
            row = conn.execute("SELECT email FROM customers WHERE id = 1").fetchone()
            assert row is not None and row[0] != "user1@example.com"
        active = per_worker(sidecar.metrics(), "warden_sidecar_connections_active")
        assert sum(active.values()) == 16 and set(active) == {0, 1}
        assert active[0] == sum(1 for c in conns if worker_of(c) == 0)
        pids = {w["index"]: w["pid"] for w in ready_info(sidecar)["workers"]}
        assert len(set(pids.values())) == WORKERS and os.getpid() not in pids.values()
    finally:
        for conn in conns:
            conn.close()
    # One spool per worker: worker 0's where a single process keeps it.
    spools = {0: sidecar.state_dir / "spool", 1: sidecar.state_dir / "spool" / "worker-1"}

    def starts(directory: Path) -> int:
        lines = "".join(p.read_text() for p in directory.glob("*.jsonl")).splitlines()
        return sum(1 for line in lines if json.loads(line)["type"] == "session_start")

    def counts() -> dict[int, int] | None:
        found = {worker: starts(directory) for worker, directory in spools.items()}
        return found if sum(found.values()) >= 16 else None

    assert wait_for(counts) is not None
    assert all(count > 0 for count in counts().values())  # type: ignore[union-attr]


def _running(admin: psycopg.Connection[Any], marker: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
        (f"%{marker}%",),
    ).fetchone()
    return int(row[0]) if row else 0


class _Sleeper:
    """``SELECT pg_sleep`` on ``conn`` in a thread; what it raised, once it ends."""

    def __init__(self, conn: psycopg.Connection[Any], marker: str) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(conn, marker), daemon=True)
        self.thread.start()

    def _run(self, conn: psycopg.Connection[Any], marker: str) -> None:
        try:
            conn.execute(f"SELECT pg_sleep(30) AS {marker}")
        except BaseException as exc:  # the test inspects it
            self.error = exc

    def cancelled(self, timeout: float = 10.0) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive() and isinstance(self.error, psycopg.errors.QueryCanceled)


def test_a_cancel_reaching_another_worker_cancels_the_right_query(
    sidecar: Sidecar, upstream: str
) -> None:
    with psycopg.connect(upstream, autocommit=True) as admin:
        # Loop until a cancel request's own connection lands on the other worker
        # (the route counters of the parent's /metrics say where it went).
        for _attempt in range(30):
            conn = psycopg.connect(sidecar.dsn(), autocommit=True)
            marker = "w" + secrets.token_hex(4)
            sleeper = _Sleeper(conn, marker)
            assert wait_for(lambda marker=marker: _running(admin, marker) == 1)
            before = sum(per_worker(sidecar.metrics(), FORWARDED).values())
            conn.cancel()
            assert sleeper.cancelled(), sleeper.error
            conn.close()
            after = sum(per_worker(sidecar.metrics(), FORWARDED).values())
            if after > before:
                break
        else:
            raise AssertionError("no cancel request landed on the other worker in 30 tries")


def _cancel_request(port: int, pid: int, secret: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!iiii", 16, m.CANCEL_REQUEST, pid, secret))
        sock.recv(1)  # the sidecar closes it


def test_a_cancel_stops_only_the_query_of_its_key(sidecar: Sidecar, upstream: str) -> None:
    first, second = connection_on(sidecar, 0), connection_on(sidecar, 1)
    with psycopg.connect(upstream, autocommit=True) as admin:
        markers = ["a" + secrets.token_hex(4), "b" + secrets.token_hex(4)]
        sleepers = [_Sleeper(c, mk) for c, mk in zip((first, second), markers, strict=True)]
        assert wait_for(lambda: all(_running(admin, mk) == 1 for mk in markers))
        # The right process id with a guessed secret, sent many times so that both
        # workers receive it: nothing is cancelled.
        for _ in range(12):
            _cancel_request(sidecar.port, second.info.backend_pid, secrets.randbits(31))
        time.sleep(0.5)
        assert all(_running(admin, mk) == 1 for mk in markers)
        # The second connection's own key cancels its query, never the first's.
        second.cancel()
        assert sleepers[1].cancelled(), sleepers[1].error
        time.sleep(0.3)
        assert _running(admin, markers[0]) == 1
        first.cancel()
        assert sleepers[0].cancelled(), sleepers[0].error
    first.close()
    second.close()


def _logins(sidecar: Sidecar, result: str) -> dict[int, int]:
    return per_worker(sidecar.metrics(), f'warden_sidecar_logins_total{{result="{result}"}}')


def test_failed_sign_ins_on_one_worker_throttle_the_next_attempt_on_another(
    sidecar: Sidecar,
) -> None:
    # An address of its own (all of 127/8 is loopback): a pair no earlier test used.
    source, elsewhere = (f"127.{secrets.randbelow(250) + 1}.{i}.{i}" for i in (7, 8))
    failed_before, refused_before = _logins(sidecar, "failed"), _logins(sidecar, "throttled")
    refused = [_login(sidecar, "bob", WRONG, source=source) for _ in range(6)]
    assert all(r.get("C") == "28P01" for r in refused)
    throttled = [_login(sidecar, "bob", BOB_TOKEN, source=source) for _ in range(20)]
    assert all("too many failed sign-ins" in r.get("M", "") for r in throttled), throttled
    failed = {w: n - failed_before.get(w, 0) for w, n in _logins(sidecar, "failed").items()}
    refusals = {w: n - refused_before.get(w, 0) for w, n in _logins(sidecar, "throttled").items()}
    assert sum(failed.values()) == 6 and sum(refusals.values()) == 20
    # Both workers refused: at least one of them saw fewer than the six failures
    # that back a pair off, so it refused on what the other one counted.
    assert refusals[0] > 0 and refusals[1] > 0, refusals
    assert _login(sidecar, "bob", BOB_TOKEN, source=elsewhere) == {}


def _restarts(sidecar: Sidecar) -> int:
    found = re.search(r"^warden_sidecar_worker_restarts_total (\d+)$", sidecar.metrics(), re.M)
    return int(found.group(1)) if found else -1


def test_a_worker_that_dies_is_restarted(sidecar: Sidecar) -> None:
    restarts = _restarts(sidecar)
    before = {w["index"]: w["pid"] for w in ready_info(sidecar)["workers"]}
    os.kill(before[1], signal.SIGKILL)

    def restarted() -> dict[int, int] | None:
        now = {w["index"]: w["pid"] for w in ready_info(sidecar)["workers"]}
        return now if now[1] not in (None, before[1]) else None

    after = wait_for(restarted, timeout=20)
    assert after is not None and after[0] == before[0]
    conn = connection_on(sidecar, 1)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()
    assert _restarts(sidecar) == restarts + 1


def test_sigterm_stops_every_worker(upstream: str, tmp_path: Path) -> None:
    name = upstream.rsplit("/", 1)[-1].split("?")[0]
    sidecar = start_sidecar(
        tmp_path, upstream, build_bundle(name), workers=WORKERS, scan_enabled=False
    )
    pids = [w["pid"] for w in ready_info(sidecar)["workers"]]
    conn = psycopg.connect(sidecar.dsn(), autocommit=True)
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(15) == 0
    for pid in pids:
        assert wait_for(lambda pid=pid: not alive(pid), timeout=5), pid
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sidecar.port), timeout=2).close()


def test_the_spool_of_a_worker_no_longer_configured_is_still_shipped(
    upstream: str, tmp_path: Path
) -> None:
    port = free_port()
    name = upstream.rsplit("/", 1)[-1].split("?")[0]
    settings = {"audit_url": f"http://127.0.0.1:{port}/audit", "scan_enabled": False}
    # Nothing receives yet: worker 1's events stay in its spool when it stops.
    sidecar = start_sidecar(tmp_path, upstream, build_bundle(name), workers=WORKERS, **settings)
    conn = connection_on(sidecar, 1)
    conn.execute("SELECT 1")
    conn.close()
    sidecar.stop()
    left = [
        json.loads(line)["id"]
        for path in (sidecar.state_dir / "spool" / "worker-1").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(left) >= 3  # session start, the statement, session end
    out = tmp_path / "received.jsonl"
    receiver = subprocess.Popen([sys.executable, str(RECEIVER), str(port), str(out)])
    # Back to one worker: it ships worker 1's spool too.
    sidecar = start_sidecar(tmp_path, upstream, build_bundle(name), **settings)
    try:

        def received() -> set[str]:
            # Whole lines only: the receiver may be half-way through writing the last.
            lines = out.read_text().split("\n")[:-1] if out.exists() else []
            return {json.loads(line)["id"] for line in lines if line}

        assert wait_for(lambda: set(left) <= received(), timeout=30)
        lines = out.read_text().splitlines()
        assert len(lines) == len({json.loads(line)["id"] for line in lines}), "each once"
    finally:
        sidecar.stop()
        receiver.terminate()
        receiver.wait()


def test_workers_stop_when_their_parent_is_gone(upstream: str, tmp_path: Path) -> None:
    # Without the parent nothing holds the shared sign-in limits: the workers
    # must not go on serving (fail closed).
    name = upstream.rsplit("/", 1)[-1].split("?")[0]
    sidecar = start_sidecar(
        tmp_path, upstream, build_bundle(name), workers=WORKERS, scan_enabled=False
    )
    pids = [w["pid"] for w in ready_info(sidecar)["workers"]]
    sidecar.proc.kill()
    sidecar.proc.wait()
    for pid in pids:
        assert wait_for(lambda pid=pid: not alive(pid), timeout=10), pid
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sidecar.port), timeout=2).close()


def test_a_second_sidecar_cannot_take_a_share_of_the_port(
    sidecar: Sidecar, upstream: str, tmp_path: Path
) -> None:
    name = upstream.rsplit("/", 1)[-1].split("?")[0]
    with pytest.raises(RuntimeError, match="cannot listen"):
        start_sidecar(
            tmp_path,
            upstream,
            build_bundle(name),
            workers=WORKERS,
            listen_port=sidecar.port,
            scan_enabled=False,
        )


def test_a_sign_in_the_parent_cannot_check_is_refused(sidecar: Sidecar) -> None:
    # The parent holds the sign-in limits: while it does not answer, no worker
    # lets anyone in (fail closed), and once it answers again sign-ins work.
    parent = sidecar.proc.pid

    def attempt() -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            psycopg.connect(sidecar.dsn(), connect_timeout=10).close()
        except psycopg.OperationalError as exc:
            return exc, time.monotonic() - started
        return None, time.monotonic() - started

    os.kill(parent, signal.SIGSTOP)
    try:
        # Four at once (each waits out the worker's question to the parent), whichever
        # worker each reaches.
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            attempts = list(pool.map(lambda _: attempt(), range(4)))
    finally:
        os.kill(parent, signal.SIGCONT)
    for error, took in attempts:
        assert error is not None and "cannot be checked" in str(error), error
        assert took < 5
    with psycopg.connect(sidecar.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()


def _salt_shown(sidecar: Sidecar, user: str) -> str:
    """The salt the SCRAM exchange shows ``user`` (the server-first message's s=)."""
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(m.startup_message({"user": user, "database": sidecar.database}))
        kind, body = recv_message(sock)
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)
        first = b"n,,n=,r=" + secrets.token_hex(12).encode()
        payload = b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first
        sock.sendall(m.frame(b"p", payload))
        kind, body = recv_message(sock)
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 11, (kind, body)
        fields = dict(part.split("=", 1) for part in body[4:].decode().split(","))
        return fields["s"]


def test_a_name_the_bundle_does_not_hold_gets_one_salt_on_every_worker(sidecar: Sidecar) -> None:
    """A review's finding: each worker made its own key for the salt an unknown name is
    shown, so the name got a different salt on each worker (and after a restart), where
    a real identity's salt never changes: a few sign-ins told which names exist. Both
    kinds of name now show one salt however often they ask, on whichever worker."""
    for user in ("nobody-here", "alice"):
        salts = {_salt_shown(sidecar, user) for _ in range(16)}
        assert len(salts) == 1, (user, salts)
    key = sidecar.state_dir / "scram-unknown-salt.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_guesses_sent_side_by_side_to_both_workers_are_limited_as_one_after_another(
    sidecar: Sidecar,
) -> None:
    """A review's finding: a worker asked the parent whether a pair was held back, then
    judged the guess, then reported the failure in a second call, so guesses judged at
    once on two workers all passed the check. The check now counts the guess in the
    same answer (``LoginThrottle.attempt``)."""
    answers = guesses_side_by_side(sidecar, "alice", "127.0.0.4", 16)
    judged = [a for a in answers if "password authentication failed" in a]
    assert len(judged) <= LoginThrottle.FREE + 1, answers
    assert all("too many failed sign-ins" in a for a in answers if a not in judged), answers
