"""The audit spool and its shipper: events survive a control-plane outage and a restart.

Spool. Events are appended to JSON-lines segment files under
``<state_dir>/spool`` (``000000000001.jsonl``, ...). Appends are buffered in
memory and written + fsynced in batches (every ``flush_interval`` seconds or
``flush_events`` events), so the per-statement cost is an append to a buffer
(``lines``: in C when the native relay is built, which writes a statement's
event into it directly; ``_PythonLines`` otherwise). The
write and the fsync run on one writer thread, in submission order, so a slow
disk does not stall the event loop (and every session with it). A segment is
sealed when it grows past ``segment_bytes`` or when the shipper asks for it;
only sealed segments whose writes have completed are shipped. A failed write
makes the spool refuse (``accepting`` false) whatever the policy: the trail
cannot be kept.

Bound and policy. The spool holds at most ``max_bytes`` on disk. When it is
full, the configured ``full_policy`` applies: ``refuse`` (the default) makes
the proxy refuse new statements with a clear error until the spool drains, so
nothing runs unaudited; ``drop`` keeps serving and drops the new events,
counting them in ``dropped`` (exported as a metric). Session end events are
written even when full: they are few and close the trail.

Durability. With ``durability="strict"`` no statement runs without its record:
before the proxy forwards a statement it writes its intent (the statement's
event with outcome ``unknown``) to a journal under ``<state_dir>/journal``,
and holds the statement until the intent is on disk. Intents are committed by
group commit: one write and one ``fdatasync`` at the end of the event loop's
turn for every intent the turn produced. The commit runs on the event loop
itself, not on the writer thread: handing it to a thread and back costs two
wake-ups (a futex, the loop's eventfd, the GIL changing hands), which measured
three to four times the CPU of the ``fdatasync`` itself; the price is that the
loop waits for the disk once per turn, while the clients it serves wait for it
anyway. Journal files are allocated ahead (``JOURNAL_CHUNK`` bytes, created
and made durable on the writer thread before they are needed), so a commit
changes no file size and ``fdatasync`` has no metadata to write. The
statement's outcome follows in the spool as usual, under the same event id. A
journal file is deleted once every intent in it has its outcome on disk; the
ones left after a crash are appended to the spool at the next start, so the
trail shows every statement that could have run: the control plane keeps the
first event of an id, so an outcome recorded before the crash wins over the
journal's ``unknown``. ``batched`` skips the journal (an outcome may then be lost
with the last ``flush_interval`` of a crash).

Shipping. The shipper reads sealed segments in order and calls an async
``upload(batch)`` with each batch as a JSON array of events: the spool lines as
they are on disk, joined, never decoded and encoded again. A batch stays within
what the control plane takes (``AUDIT_MAX_EVENTS`` events, ``AUDIT_MAX_BYTES``
of body). A segment is deleted only after every
batch in it was acknowledged; progress inside a segment is kept in
``<segment>.ack`` (atomically replaced), so a restart resumes after the last
acknowledged batch. Failures back off exponentially (with jitter) up to
``max_backoff``. Event ids make uploads idempotent on the receiving side, which
covers the one remaining window (crash between acknowledgement and ``.ack``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("warden.sidecar.shipper")

# One batch: the events as a JSON array (``[{...},{...}]``), encoded.
Upload = Callable[[bytes], Awaitable[None]]

# What the control plane's POST /api/v1/sidecar/audit takes (AUDIT_MAX_EVENTS and
# AUDIT_MAX_BYTES in gateway/audit_intake.py; the sidecar cannot import them, a
# test in tests/sidecar/proxy/test_audit.py keeps the two equal).
AUDIT_MAX_EVENTS = 1000
AUDIT_MAX_BYTES = 4 * 1024 * 1024
# Room for the envelope the upload wraps the array in (``{"events":...}``).
ENVELOPE_BYTES = 64
# What a journal file is allocated, and grows by when a turn's intents pass its
# end. A file is replaced at every spool flush, so it must hold what one flush
# covers: up to ``flush_events`` intents, each a whole statement event (about
# 1 KB). 4 MiB holds some 4,000; growing a file means an fsync on the loop.
JOURNAL_CHUNK = 4 * 1024 * 1024


class AuditSpool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 512 * 1024 * 1024,
        segment_bytes: int = 8 * 1024 * 1024,
        flush_interval: float = 0.1,
        flush_events: int = 2000,
        full_policy: str = "refuse",
        durability: str = "batched",
        native: bool = True,
    ) -> None:
        if full_policy not in ("refuse", "drop"):
            raise ValueError("full_policy must be 'refuse' or 'drop'")
        if durability not in ("strict", "batched"):
            raise ValueError("durability must be 'strict' or 'batched'")
        self.directory = directory
        # Private: the spool holds identities, addresses and redacted statements.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.flush_interval = flush_interval
        self.full_policy = full_policy
        self.dropped = 0
        self.written = 0
        # The events not yet written, flushed at ``flush_events`` of them (its limit).
        # 2,000 rather than 500: at 23,000 statements a second that is 12 writes and
        # fdatasyncs a second instead of 46, which took 1-1.7 us of the sidecar's CPU
        # off every statement (bench/README.md). At most ~2 MB wait in memory, and a
        # flush's intents under strict durability fit one JOURNAL_CHUNK. ``native``:
        # the relay's buffer when it is built (the native_relay setting turns it off).
        self.lines = _lines(flush_events, native)
        existing = self.segments()
        self._seq = int(existing[-1].stem) + 1 if existing else 1
        self._current_lines = 0
        self._current_bytes = 0
        self._disk_bytes = sum(p.stat().st_size for p in existing)
        self._depth = sum(_count_lines(p) - _acked(p) for p in existing)
        self._file = self._open_current()
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-spool")
        self._last_write: Future[None] | None = None
        self._closing: dict[str, Future[None]] = {}
        self.write_error: str | None = None
        # Read on every statement; kept current by _account (``accepting`` lives in
        # ``lines``, where the native relay reads it).
        self.full = False
        self.accepting = True
        self._account(0)
        # The intent journal (strict durability). Tickets count intents; ``durable``
        # is the highest whose fdatasync is done, read by sessions on every write.
        self.strict = durability == "strict"
        self.durable = 0
        self._tickets = 0
        self._journal_buffer: list[str] = []
        self._commit_scheduled = False
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._journal_dir = directory / "journal"
        self._journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # journal seq -> intents in it without their outcome on disk yet
        self._unresolved: dict[int, int] = {}
        self._resolved_unflushed: list[int] = []
        self._recover_journal()
        self._journal_seq = self._next_journal_seq()
        self._journal_file: _JournalFile | None = None
        self._next_journal: Future[_JournalFile] | None = None
        if self.strict:
            self._journal_file = _JournalFile(self._journal_path(self._journal_seq))
            self._prepare_next_journal()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- the intent journal (strict durability) -----------------------------

    def journal(self, line: str) -> tuple[int, int]:
        """Record an intent (the event as it reads if the outcome is never known);
        returns (ticket, journal seq). The intent is durable once ``durable`` reaches
        the ticket; ``when_durable`` calls back then."""
        self._tickets += 1
        self._journal_buffer.append(line)
        seq = self._journal_seq
        self._unresolved[seq] = self._unresolved.get(seq, 0) + 1
        if not self._commit_scheduled:
            # At the end of this turn of the loop: every session whose bytes arrived
            # in the turn has journaled its intents by then (group commit).
            self._commit_scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._commit_journal)
        return self._tickets, seq

    def resolved(self, seq: int) -> None:
        """The outcome of an intent in journal ``seq`` was appended to the spool."""
        self._resolved_unflushed.append(seq)

    def when_durable(self, ticket: int, callback: Callable[[], None]) -> None:
        """``callback`` once ``ticket`` is on disk, or once the journal failed (the
        caller then finds ``write_error`` set and must not run what waited)."""
        if ticket <= self.durable or self.write_error is not None:
            callback()
        else:
            self._waiters.append((ticket, callback))

    def _commit_journal(self) -> None:
        """One write and one fdatasync for every intent buffered since the last."""
        self._commit_scheduled = False
        if not self._journal_buffer or self._journal_file is None:
            return
        self._journal_buffer.append("")
        data = "\n".join(self._journal_buffer).encode()
        self._journal_buffer = []
        if self.write_error is None:
            try:
                self._journal_file.commit(data)
            except OSError as exc:
                self._failed(exc)
            else:
                self.durable = self._tickets
        # After a failure every waiter is told: none of them may run.
        last = self.durable if self.write_error is None else self._tickets
        ready = [cb for t, cb in self._waiters if t <= last]
        self._waiters = [(t, cb) for t, cb in self._waiters if t > last]
        for callback in ready:
            callback()

    def _prepare_next_journal(self) -> None:
        """Create (and make durable) the file the next rotation switches to, on the
        writer thread, so the loop never waits for a file to be made."""
        self._next_journal = self._writer.submit(
            _JournalFile, self._journal_path(self._journal_seq + 1)
        )
        self._next_journal.add_done_callback(self._written)

    def _rotate_journal(self) -> None:
        """Start a new journal file, and delete the earlier ones whose every intent
        has its outcome in a spool write that is queued (so: done first) before."""
        if self._journal_file is None or self._next_journal is None:
            return
        for seq in self._resolved_unflushed:
            self._unresolved[seq] -= 1
        self._resolved_unflushed = []
        # Intents waiting for this turn's commit are counted against the current
        # file and go to it: the switch waits for a flush without any.
        if self._unresolved.get(self._journal_seq) and not self._journal_buffer:
            self._submit(_JournalFile.close, self._journal_file)
            try:
                self._journal_file = self._next_journal.result()
            except OSError:
                return  # write_error is set: the proxy refuses from now
            self._journal_seq += 1
            self._prepare_next_journal()
        done = [s for s, n in self._unresolved.items() if n <= 0 and s != self._journal_seq]
        for seq in done:
            del self._unresolved[seq]
        if done:
            self._submit(_unlink_sync, [self._journal_path(s) for s in done])

    def _journal_path(self, seq: int) -> Path:
        return self._journal_dir / f"{seq:012d}.jsonl"

    def _next_journal_seq(self) -> int:
        existing = sorted(self._journal_dir.glob("*.jsonl"))
        return int(existing[-1].stem) + 1 if existing else 1

    def _recover_journal(self) -> None:
        """Intents a crash left without their outcome: appended to the spool (after
        everything recorded before the crash, so a known outcome of the same id,
        shipped first, is the one the control plane keeps)."""
        leftovers = sorted(self._journal_dir.glob("*.jsonl"))
        if not leftovers:
            return
        lines = []
        for path in leftovers:
            # The file's allocation past its last intent reads as zero bytes.
            for raw in path.read_bytes().rstrip(b"\0").splitlines():
                try:
                    json.loads(raw)
                except ValueError:
                    continue  # a torn last line: its fsync never returned, nothing ran
                lines.append(raw.decode())
        if lines:
            data = ("\n".join(lines) + "\n").encode()
            _write_sync(self._file, data)
            self._current_lines += len(lines)
            self._current_bytes += len(data)
            self._account(len(data))
            self._depth += len(lines)
            log.warning("recovered %d audit intents left by an unclean stop", len(lines))
        for path in leftovers:
            path.unlink()

    # ---- writing ------------------------------------------------------------

    def _account(self, delta: int) -> None:
        self._disk_bytes += delta
        self.full = self._disk_bytes >= self.max_bytes
        # While full, the relay leaves each event to append_line, which applies the policy.
        self.lines.open = not self.full
        # False when the proxy must refuse statements: full under ``refuse``, or
        # the disk failed (nothing could be recorded, whatever the policy).
        self.accepting = self.write_error is None and not (
            self.full and self.full_policy == "refuse"
        )
        if self.write_error is not None:
            # _failed ran on the writer thread between the test and the store above:
            # its False must not be overwritten until the next flush.
            self.accepting = False

    @property
    def accepting(self) -> bool:
        """False when the proxy must refuse statements (see ``_account``)."""
        return bool(self.lines.accepting)

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.lines.accepting = bool(value)  # a native bool member takes only a bool

    @property
    def depth(self) -> int:
        """Events recorded and not yet acknowledged by the control plane."""
        return self._depth + len(self.lines)

    def append(self, event: dict[str, Any]) -> None:
        self.append_line(json.dumps(event, separators=(",", ":"), default=str), event.get("type"))

    def append_line(self, line: str, kind: object = None) -> None:
        """Append one event already encoded as a JSON object (no newline)."""
        if self.full and kind != "session_end":
            self.dropped += 1
            return
        if self.lines.append(line):
            self.flush()

    def flush(self) -> None:
        count = len(self.lines)
        if self._resolved_unflushed and not count:
            self._rotate_journal()
        if not count:
            return
        data = self.lines.take()
        self._submit(_write_sync, self._file, data)
        if self.strict:
            self._rotate_journal()  # queued after the write: the outcomes are on disk first
        self._current_lines += count
        self._current_bytes += len(data)
        self._account(len(data))
        self._depth += count
        self.written += count
        if self._current_bytes >= self.segment_bytes:
            self._rotate()
        self.changed.set()

    def _submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        future = self._writer.submit(fn, *args)
        future.add_done_callback(self._written)
        self._last_write = future
        return future

    def _written(self, future: Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if self.write_error is None:
            # May run on the writer thread: two attribute stores, read by the loop.
            self.write_error = f"{type(exc).__name__}: {exc}"
            self.accepting = False
            log.error("audit spool write failed, refusing statements: %s", self.write_error)

    def _rotate(self) -> None:
        """Close the current segment (after its queued writes) and start the next."""
        if self._current_lines == 0:
            return
        # Not shippable until closed: its writes, queued before the close, are done then.
        self._closing[f"{self._seq:012d}.jsonl"] = self._submit(_close_sync, self._file)
        self._seq += 1
        self._current_lines = 0
        self._current_bytes = 0
        self._file = self._open_current()

    def seal(self) -> None:
        """Close the current segment (if it has events); returns once it is on disk."""
        self.flush()
        self._rotate()
        self.wait_written()

    async def seal_async(self) -> None:
        """``seal`` without blocking the event loop while the writer thread catches up."""
        self.flush()
        self._rotate()
        if self._last_write is not None and not self._last_write.done():
            await asyncio.wrap_future(self._last_write)

    def wait_written(self) -> None:
        """Block until everything submitted so far is written and fsynced."""
        if self._last_write is not None:
            self._last_write.result()

    def _open_current(self) -> Any:
        # 0600 whatever the umask, as the journal files (a review's finding: 0644).
        path = self.directory / f"{self._seq:012d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "ab")

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl"))

    def sealed_segments(self) -> list[Path]:
        current = f"{self._seq:012d}.jsonl"
        for name in [n for n, f in self._closing.items() if f.done()]:
            del self._closing[name]
        return [p for p in self.segments() if p.name != current and p.name not in self._closing]

    def forget(self, segment: Path, *, events: int) -> None:
        """The shipper finished ``segment``: remove it and its progress file."""
        size = segment.stat().st_size
        segment.unlink()
        segment.with_suffix(".ack").unlink(missing_ok=True)
        self._account(-size)
        self._depth -= events

    def acknowledged(self, events: int) -> None:
        self._depth -= events

    async def run(self) -> None:
        """Flush on a timer until cancelled; the final flush happens in ``close``."""
        while True:
            await asyncio.sleep(self.flush_interval)
            self.flush()

    def close(self) -> None:
        self.flush()
        self._rotate_journal()
        self._submit(_close_sync, self._file)
        if self._journal_file is not None and self._next_journal is not None:
            self._submit(_JournalFile.close, self._journal_file)
            unused = [self._journal_path(self._journal_seq + 1)]
            if not self._unresolved.get(self._journal_seq):
                # A clean stop: every intent has its outcome; nothing to recover.
                unused.append(self._journal_path(self._journal_seq))
            self._next_journal.add_done_callback(_close_made)
            self._submit(_unlink_sync, unused)
        self._writer.shutdown(wait=True)


class _PythonLines:
    """The spool's events not yet written, as the native relay's ``SpoolLines`` keeps
    them (in C, where the relay appends a statement's event without Python)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # SpoolLines' interface; the relay reads only SpoolLines' (append_line checks ``full``).
        self.open = True
        self.accepting = True  # AuditSpool.accepting
        self._lines: list[str] = []

    def append(self, line: str) -> bool:
        """One event (a JSON object, no newline); True when a flush is due."""
        self._lines.append(line)
        return len(self._lines) >= self.limit

    def take(self) -> bytes:
        """The lines, each ended by a newline; the buffer is then empty."""
        self._lines.append("")
        data = "\n".join(self._lines).encode()
        self._lines = []
        return data

    def __len__(self) -> int:
        return len(self._lines)


def _lines(limit: int, native: bool) -> Any:
    if native:
        try:
            from sidecar.proxy import _relay  # type: ignore[attr-defined]
        except ImportError:
            pass
        else:
            return _relay.SpoolLines(limit)
    return _PythonLines(limit)


def _write_sync(file: Any, data: bytes) -> None:
    file.write(data)
    file.flush()
    os.fsync(file.fileno())


def _close_sync(file: Any) -> None:
    file.close()


def _close_made(made: Future[_JournalFile]) -> None:
    if made.exception() is None:
        made.result().close()


class _JournalFile:
    """One intent journal file, allocated ahead: intents are written inside the
    allocation, so a commit changes no size and ``fdatasync`` writes data only.
    Made on the writer thread (``_prepare_next_journal``)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0
        self.offset = 0
        self._allocate(JOURNAL_CHUNK)
        # The file's name is durable too: a crash must not lose a journal whose
        # intents were acknowledged as on disk.
        directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _allocate(self, size: int) -> None:
        os.posix_fallocate(self.fd, self.size, size)
        os.fsync(self.fd)  # the new size first, so each commit's fdatasync has none
        self.size += size

    def commit(self, data: bytes) -> None:
        if self.offset + len(data) > self.size:
            self._allocate(max(JOURNAL_CHUNK, len(data)))
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.offset)
            self.offset += written
            view = view[written:]
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _unlink_sync(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def _acked(segment: Path) -> int:
    try:
        return int(segment.with_suffix(".ack").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _write_ack(segment: Path, lines: int) -> None:
    tmp = segment.with_suffix(".ack.tmp")
    tmp.write_text(str(lines))
    tmp.replace(segment.with_suffix(".ack"))


class AuditShipper:
    """Moves sealed spool segments to the control plane through ``upload``."""

    def __init__(
        self,
        spool: AuditSpool,
        upload: Upload,
        *,
        batch_size: int = 500,
        max_bytes: int = AUDIT_MAX_BYTES - ENVELOPE_BYTES,
        interval: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.spool = spool
        self.upload = upload
        self.batch_size = max(1, min(batch_size, AUDIT_MAX_EVENTS))
        self.max_bytes = max_bytes  # of the JSON array a batch is
        self.interval = interval
        self.max_backoff = max_backoff
        self.shipped = 0
        self.failures = 0

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.ship_once()
                backoff = 0.5
                await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                log.warning("audit upload failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311
                backoff = min(backoff * 2, self.max_backoff)

    async def ship_once(self) -> None:
        """Ship everything recorded so far. Raises if an upload fails."""
        await self.spool.seal_async()
        for segment in self.spool.sealed_segments():
            await self._ship_segment(segment)

    async def _ship_segment(self, segment: Path) -> None:
        data = segment.read_bytes()
        lines = data.splitlines()
        if not data.endswith(b"\n") or b"\0" in data:
            # A crash mid-write leaves a torn last line (or, on some file systems,
            # a block of zeros): only such a segment is decoded line by line, and
            # what does not read as JSON is skipped (blanked: positions still count).
            lines = [line if _readable(line) else b"" for line in lines]
        position = _acked(segment)
        while position < len(lines):
            # Up to batch_size events and max_bytes of array ("[" + lines joined by
            # "," + "]"); a single line larger than that still goes, alone.
            end, size = position, 1
            batch: list[bytes] = []
            while end < len(lines) and len(batch) < self.batch_size:
                line = lines[end]
                if not line or line[0] != 0x7B or line[-1] != 0x7D:  # not {...}: unreadable
                    log.warning("skipping an unreadable audit line in %s", segment.name)
                    end += 1
                    continue
                if batch and size + len(line) + 1 > self.max_bytes:
                    break
                if len(line) + 2 > self.max_bytes:
                    log.error(
                        "an audit event of %d bytes exceeds the batch limit of %d; sent alone",
                        len(line),
                        self.max_bytes,
                    )
                batch.append(line)
                size += len(line) + 1
                end += 1
            if batch:
                await self.upload(b"[" + b",".join(batch) + b"]")
            self.shipped += len(batch)
            _write_ack(segment, end)
            self.spool.acknowledged(end - position)
            position = end
        self.spool.forget(segment, events=0)


def _readable(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # UnicodeDecodeError included
        return False
