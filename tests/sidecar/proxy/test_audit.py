"""The audit spool and shipper: bounded, resumable, and every event arrives exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from sidecar.shipper import JOURNAL_CHUNK, AuditShipper, AuditSpool
from tests.sidecar.proxy.cluster import free_port
from tests.sidecar.proxy.conftest import build_bundle, one_relay, start_sidecar, wait_for

RECEIVER = Path(__file__).with_name("receiver.py")


def _event(i: int) -> dict[str, Any]:
    return {"id": f"ev-{i:05d}", "type": "statement", "n": i}


def test_shipper_retries_and_resumes_without_duplicates(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    attempts = {"n": 0}

    async def flaky(batch: bytes) -> None:
        attempts["n"] += 1
        if attempts["n"] in (1, 3):  # down at first, and again after one good batch
            raise OSError("control plane unreachable")
        received.extend(json.loads(batch))

    async def scenario() -> None:
        spool = AuditSpool(tmp_path, segment_bytes=1_000_000)
        for i in range(250):
            spool.append(_event(i))
        shipper = AuditShipper(spool, flaky, batch_size=100)
        with pytest.raises(OSError):
            await shipper.ship_once()  # attempt 1 fails: nothing acknowledged
        with pytest.raises(OSError):
            await shipper.ship_once()  # attempt 2 ships 100, attempt 3 fails
        assert len(received) == 100 and spool.depth == 150
        spool.close()
        # A restart: a new spool on the same directory resumes after the last ack.
        spool = AuditSpool(tmp_path)
        assert spool.depth == 150
        for i in range(250, 260):
            spool.append(_event(i))
        await AuditShipper(spool, flaky, batch_size=100).ship_once()
        assert spool.depth == 0
        spool.close()

    asyncio.run(scenario())
    ids = [e["id"] for e in received]
    assert len(ids) == len(set(ids)) == 260
    assert list(tmp_path.glob("*.ack")) == []
    assert all(p.stat().st_size == 0 for p in tmp_path.glob("*.jsonl")), "shipped segments go"


def test_batches_are_the_spool_lines_as_written_within_the_control_planes_limits(
    tmp_path: Path,
) -> None:
    batches: list[bytes] = []

    async def upload(batch: bytes) -> None:
        batches.append(batch)

    async def scenario() -> list[bytes]:
        spool = AuditSpool(tmp_path, segment_bytes=10_000_000)
        for i in range(60):  # sizes from ~50 bytes to ~1 KB, a key order json.dumps keeps
            spool.append({"z": "x" * (i * 17 % 1000), "id": f"ev-{i:05d}", "ts": i + 0.5})
        spool.seal()
        written = b"".join(p.read_bytes() for p in spool.sealed_segments()).splitlines()
        await AuditShipper(spool, upload, batch_size=7, max_bytes=2_000).ship_once()
        assert spool.depth == 0
        spool.close()
        return written

    written = asyncio.run(scenario())
    assert all(len(b) <= 2_000 for b in batches)
    assert all(1 <= len(json.loads(b)) <= 7 for b in batches)
    # The bytes on disk, joined: no decode and encode on the way.
    assert b"".join(batches) == b"".join(b"[" + b",".join(p) + b"]" for p in _split(batches))
    assert [line for b in batches for line in _split([b])[0]] == written


def _split(batches: list[bytes]) -> list[list[bytes]]:
    """Each batch's events as the bytes it carries them in."""
    return [[json.dumps(e, separators=(",", ":")).encode() for e in json.loads(b)] for b in batches]


def test_the_batch_limits_default_to_the_control_planes(tmp_path: Path) -> None:
    from sidecar.shipper import AUDIT_MAX_BYTES, AUDIT_MAX_EVENTS

    batches: list[bytes] = []

    async def upload(batch: bytes) -> None:
        batches.append(batch)

    async def scenario() -> None:
        spool = AuditSpool(tmp_path, segment_bytes=64 * 1024 * 1024)
        for i in range(2_500):
            spool.append({"id": f"ev-{i:05d}", "ts": i, "pad": "p" * (5_000 if i < 1_500 else 10)})
        shipper = AuditShipper(spool, upload, batch_size=5_000)
        await shipper.ship_once()
        assert shipper.shipped == 2_500
        spool.close()

    asyncio.run(scenario())
    envelope = len(b'{"events":}')
    assert all(len(b) + envelope <= AUDIT_MAX_BYTES for b in batches)
    counts = [len(json.loads(b)) for b in batches]
    # The first batch is full by bytes (832 events of 5 KB), the second by count.
    assert counts[0] < AUDIT_MAX_EVENTS and len(batches[0]) > AUDIT_MAX_BYTES - 6_000
    assert counts[1] == AUDIT_MAX_EVENTS and sum(counts) == 2_500


def test_the_shippers_limits_are_the_control_planes() -> None:
    from gateway import audit_intake
    from sidecar import shipper

    assert (shipper.AUDIT_MAX_EVENTS, shipper.AUDIT_MAX_BYTES) == (
        audit_intake.AUDIT_MAX_EVENTS,
        audit_intake.AUDIT_MAX_BYTES,
    )


def test_torn_and_zeroed_lines_left_by_a_crash_are_skipped(tmp_path: Path) -> None:
    good = [json.dumps(_event(i), separators=(",", ":")).encode() for i in range(3)]
    # A crash mid-write: the last line torn; on some file systems, a block of zeros.
    (tmp_path / "000000000001.jsonl").write_bytes(b"\n".join(good) + b'\n{"id":"ev-torn","ty')
    (tmp_path / "000000000002.jsonl").write_bytes(good[0] + b"\n" + b"\0" * 40 + b"\n")
    received: list[dict[str, Any]] = []

    async def upload(batch: bytes) -> None:
        received.extend(json.loads(batch))

    async def scenario() -> None:
        spool = AuditSpool(tmp_path)
        await AuditShipper(spool, upload).ship_once()
        assert spool.depth == 0
        spool.close()

    asyncio.run(scenario())
    assert [e["id"] for e in received] == ["ev-00000", "ev-00001", "ev-00002", "ev-00000"]


def test_intents_of_one_loop_turn_share_one_commit_and_a_crash_keeps_them(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"

    async def scenario() -> None:
        spool = AuditSpool(tmp_path, durability="strict")
        released: list[int] = []
        for i in range(3):
            ticket, _seq = spool.journal(json.dumps(_event(i)))
            spool.when_durable(ticket, lambda i=i: released.append(i))
        assert spool.durable == 0 and not released  # nothing is on disk yet
        await asyncio.sleep(0)  # the end of the turn: one commit for the three
        assert spool.durable == 3 and released == [0, 1, 2]
        # Written inside the file's allocation: no size for fdatasync to record. The
        # next file is allocated ahead on the writer thread: wait for that work.
        spool._writer.submit(lambda: None).result()
        assert [p.stat().st_size for p in sorted(journal.glob("*.jsonl"))] == [JOURNAL_CHUNK] * 2
        spool._writer.shutdown(wait=True)  # a crash: no outcome, no close

    asyncio.run(scenario())
    recovered = AuditSpool(tmp_path, durability="strict")
    recovered.seal()
    lines = [json.loads(raw) for p in recovered.segments() for raw in p.read_bytes().splitlines()]
    assert [e["id"] for e in lines] == ["ev-00000", "ev-00001", "ev-00002"]
    recovered.close()
    assert not list(journal.glob("*.jsonl")), "a clean stop leaves no journal to recover"


def test_a_journal_the_disk_refuses_releases_nothing_and_refuses_from_then(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        spool = AuditSpool(tmp_path, durability="strict")
        assert spool._journal_file is not None
        full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        os.dup2(full, spool._journal_file.fd)
        os.close(full)
        calls: list[int] = []
        ticket, _seq = spool.journal(json.dumps(_event(0)))
        spool.when_durable(ticket, lambda: calls.append(spool.durable))
        await asyncio.sleep(0)
        # The waiter is told (so its session can close), but the intent is not durable.
        assert calls == [0] and spool.durable == 0
        assert not spool.accepting and "No space" in (spool.write_error or "")
        spool.when_durable(spool.journal(json.dumps(_event(1)))[0], lambda: calls.append(-1))
        assert calls == [0, -1]
        spool._writer.shutdown(wait=True)

    asyncio.run(scenario())


def test_an_event_larger_than_a_batch_goes_alone(tmp_path: Path) -> None:
    batches: list[bytes] = []

    async def upload(batch: bytes) -> None:
        batches.append(batch)

    async def scenario() -> None:
        spool = AuditSpool(tmp_path)
        spool.append(_event(0))
        spool.append({**_event(1), "big": "b" * 5_000})
        spool.append(_event(2))
        await AuditShipper(spool, upload, max_bytes=1_000).ship_once()
        spool.close()

    asyncio.run(scenario())
    assert [[e["id"] for e in json.loads(b)] for b in batches] == [
        ["ev-00000"],
        ["ev-00001"],
        ["ev-00002"],
    ]


def test_spool_bound_drop_policy_counts(tmp_path: Path) -> None:
    spool = AuditSpool(tmp_path, max_bytes=2_000, flush_events=1, full_policy="drop")
    for i in range(100):
        spool.append(_event(i))
    assert spool.accepting, "drop policy keeps serving"
    assert spool.dropped > 0
    assert spool.written + spool.dropped == 100
    spool.append({"id": "end", "type": "session_end"})
    assert spool.written + spool.dropped == 101 and spool.dropped < 100
    spool.close()


def test_spool_bound_refuse_policy_refuses_statements(upstream: str, tmp_path: Path) -> None:
    name = urlsplit(upstream).path.lstrip("/")
    sidecar = start_sidecar(tmp_path, upstream, build_bundle(name), spool_max_bytes=1)
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            # The session's own start event fills the one-byte spool once the writer
            # thread flushes it, possibly before the first statement: from then on
            # every statement is refused.
            refused = wait_for(lambda: _refused(conn), timeout=5)
            assert refused and "audit spool is full" in refused
    finally:
        sidecar.stop()


def test_the_state_directory_and_the_spool_are_private(upstream: str, tmp_path: Path) -> None:
    """A review's finding: the spool's segments were created with the umask (0644 under
    a usual one) beside journal files of 0600, and they hold identities, client
    addresses and redacted statements. The sidecar now creates its state directory
    0700 and every spool segment 0600, whatever the umask."""
    name = urlsplit(upstream).path.lstrip("/")
    previous = os.umask(0o022)
    try:
        sidecar = start_sidecar(tmp_path / "sc", upstream, build_bundle(name))
    finally:
        os.umask(previous)
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")
        assert wait_for(lambda: list((sidecar.state_dir / "spool").glob("*.jsonl")), timeout=10)
        assert stat.S_IMODE(sidecar.state_dir.stat().st_mode) == 0o700
        for path in (sidecar.state_dir / "spool").rglob("*"):
            expected = 0o700 if path.is_dir() else 0o600
            assert stat.S_IMODE(path.stat().st_mode) == expected, path
    finally:
        sidecar.stop()


def _refused(conn: psycopg.Connection) -> str | None:
    try:
        conn.execute("SELECT 2")
    except psycopg.errors.InsufficientPrivilege as exc:
        return str(exc)
    return None


def test_control_plane_down_then_back_every_event_arrives_once(
    upstream: str, tmp_path: Path
) -> None:
    port = free_port()
    name = urlsplit(upstream).path.lstrip("/")
    sidecar = start_sidecar(
        tmp_path / "sc", upstream, build_bundle(name), audit_url=f"http://127.0.0.1:{port}/audit"
    )
    receiver = None
    out = tmp_path / "received.jsonl"
    try:
        # Enforcement does not need the control plane.
        with psycopg.connect(sidecar.dsn(application_name="cp-down"), autocommit=True) as conn:
            for i in range(40):
                conn.execute("SELECT %s::int", (i,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE customers")
        expected = 1 + 40 + 1 + 1  # session start, statements, the refusal, session end
        spooled = wait_for(lambda: len(sidecar.events()) >= expected and sidecar.events())
        assert len(spooled) == expected
        receiver = subprocess.Popen([sys.executable, str(RECEIVER), str(port), str(out)])

        def arrived() -> list[dict[str, Any]]:
            if not out.exists():
                return []
            # Whole lines only: the receiver may be half-way through writing the last.
            complete = out.read_text().split("\n")[:-1]
            return [json.loads(line) for line in complete if line]

        assert wait_for(lambda: len(arrived()) >= expected, timeout=45)
        got = arrived()
        ids = [e["id"] for e in got]
        assert len(ids) == expected, "each event exactly once"
        assert sorted(ids) == sorted(e["id"] for e in spooled)
        assert wait_for(lambda: sidecar.events() == [], timeout=10), "spool drains after ack"
        assert "warden_sidecar_audit_spool_depth 0" in sidecar.metrics()
    finally:
        sidecar.stop()
        if receiver is not None:
            receiver.terminate()
            receiver.wait()


def test_sigterm_flushes_the_spool_with_session_ends(upstream: str, tmp_path: Path) -> None:
    name = urlsplit(upstream).path.lstrip("/")
    sidecar = start_sidecar(tmp_path, upstream, build_bundle(name))
    conn = psycopg.connect(sidecar.dsn(application_name="shutdown"), autocommit=True)
    conn.execute("SELECT 1")
    sidecar.stop()
    assert sidecar.proc.returncode == 0
    events = [e for e in sidecar.events() if e.get("application_name") == "shutdown"]
    assert [e["type"] for e in events] == ["session_start", "statement", "session_end"]
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()


def test_a_failed_spool_write_refuses_statements_whatever_the_policy(tmp_path: Path) -> None:
    # The write and fsync run on the spool's writer thread; a disk error there must
    # still stop the proxy from running statements it cannot record.
    spool = AuditSpool(tmp_path, full_policy="drop")
    (tmp_path / "000000000002.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    spool.append(_event(0))
    spool.seal()  # segment 1 on disk; the next segment is the full device
    assert spool.accepting
    spool.append(_event(1))
    spool.flush()
    assert wait_for(lambda: not spool.accepting, timeout=5)
    assert spool.write_error and "No space" in spool.write_error
    (tmp_path / "000000000002.jsonl").unlink()
    spool.close()


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
