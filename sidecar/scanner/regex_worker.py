"""Custom detectors' regexes, run in a child process under a deadline per pattern.

The bundle's ``detectors`` carry regexes the security team typed. Python's ``re``
backtracks, cannot be interrupted (not even by a signal handler: the matching
loop never returns to the interpreter), and a pattern such as
``(?:a?){30}a{30}`` takes longer than anyone would wait on a 30-character
value. The control plane refuses the patterns its probe strings catch, but that
is a heuristic, and a bundle can come from elsewhere (an offline bundle file, an
older control plane). So the scan never runs them in its own process: a child
interpreter (``python -I -S``, nothing imported but ``re``) compiles them and
answers, per column, which detectors' name regex matched and which sampled
values each value regex matched. The scan waits for each detector's answer at
most ``timeout`` seconds (and ``budget`` seconds in all over a scan); when one
does not come, the child is killed, that detector is reported as timed out and
skipped for the rest of the scan (its earlier findings stand), and a fresh
child takes the remaining detectors.

The built-in detectors need none of this: their patterns are anchored and
linear by construction, their values are cut to 512 characters in the database,
and the validators they call are bounded.

Values cross the pipe (``marshal``: strings, numbers, lists only) and never
reach a log: the child's stderr is discarded, and warnings name the detector
and the column, never a value. On Linux the child dies with the thread that
started it (``PR_SET_PDEATHSIG``), so a scan worker that is terminated while a
pattern backtracks leaves nothing spinning behind.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import selectors
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from sidecar.scanner.detectors import (
    MIN_VALUES,
    PROBE,
    ColumnSample,
    Detector,
    Verdict,
    custom_verdict,
)

log = logging.getLogger("warden.sidecar.scanner")

# One custom detector on one column, and one custom detector over a whole scan.
DETECTOR_TIMEOUT_MS = 1000
DETECTOR_BUDGET_MS = 30_000
# How long the child may take to start and compile the patterns.
START_TIMEOUT = 10.0

_HEADER = struct.Struct("!I")

# The child: compiles the patterns, then answers one request per column with one
# reply per detector, in the order asked, as soon as each is known.
_CHILD = r"""
import marshal, os, re, struct, sys

try:  # Linux: die with the thread that started us, even if it is killed.
    import ctypes, signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(0)  # the parent is already gone

HEADER = struct.Struct("!I")
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer


def read():
    head = stdin.read(4)
    if len(head) < 4:
        os._exit(0)
    (size,) = HEADER.unpack(head)
    return marshal.loads(stdin.read(size))


def write(obj):
    data = marshal.dumps(obj)
    stdout.write(HEADER.pack(len(data)) + data)
    stdout.flush()


specs, probe, min_values = read()
patterns = [
    (
        re.compile(name, name_flags) if name is not None else None,
        re.compile(value, value_flags) if value is not None else None,
    )
    for name, name_flags, value, value_flags in specs
]
write("ready")
while True:
    column, values, total, indices = read()
    for i in indices:
        name_re, value_re = patterns[i]
        try:
            if name_re is not None and name_re.search(column) is None:
                write((i, False, None))
                continue
            if value_re is None or total < min_values:
                write((i, True, None))
                continue
            matched = []
            for seen, value in enumerate(values):
                if seen == probe and not matched:
                    break  # as value_share: a bad start cannot reach the minimum share
                if value_re.fullmatch(value) is not None:
                    matched.append(seen)
            write((i, True, matched))
        except Exception:
            write((i, None, None))  # e.g. a value that is not text: no verdict
"""


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class CustomDetectorRunner:
    """The custom detectors of one scan, in one child process (started at the first
    column, replaced after a timeout, killed by ``close``)."""

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        timeout_ms: int = DETECTOR_TIMEOUT_MS,
        budget_ms: int = DETECTOR_BUDGET_MS,
    ) -> None:
        self.detectors = list(detectors)
        self.timeout = timeout_ms / 1000
        self.budget = budget_ms / 1000
        # Names of detectors stopped during this scan (timed out, over budget, or
        # their child died while they ran), in the order it happened.
        self.timed_out: list[str] = []
        # Set when no child can be started: every custom detector is then skipped.
        self.unavailable = False
        self._spent = [0.0] * len(self.detectors)
        self._stopped: set[int] = set()
        self._proc: subprocess.Popen[bytes] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._buffer = bytearray()

    def __enter__(self) -> CustomDetectorRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- verdicts --

    def verdicts(self, column: ColumnSample, where: str = "") -> list[Verdict]:
        """The verdicts of the detectors still running, for one column (``where``
        names it in warnings)."""
        active = [i for i in range(len(self.detectors)) if i not in self._stopped]
        if not active or self.unavailable:
            return []
        counts = Counter(v for v in column.values if v)
        total = sum(counts.values())
        values = list(counts) if total >= MIN_VALUES else []
        answers: dict[int, tuple[bool | None, list[int] | None]] = {}
        pending = active
        restarts = 0
        while pending:
            if not self._send((column.name, values, total, pending)):
                restarts += 1
                if restarts > 1:
                    self._give_up("its worker process could not be restarted")
                    return []
                continue
            pending = self._collect(pending, answers, where or column.name)
        out = []
        for i in active:
            if i not in answers:
                continue
            hinted, matched = answers[i]
            if hinted is None:
                continue
            share = None
            if matched is not None:
                share = sum(counts[values[j]] for j in matched) / total
            verdict = custom_verdict(self.detectors[i], hinted=hinted, share=share)
            if verdict is not None:
                out.append(verdict)
        return out

    def _collect(
        self,
        pending: list[int],
        answers: dict[int, tuple[bool | None, list[int] | None]],
        where: str,
    ) -> list[int]:
        """Read one reply per pending detector; returns the detectors still to ask
        (those after one that timed out, for a fresh child)."""
        started = time.monotonic()
        for position, i in enumerate(pending):
            allowed = min(self.timeout, max(0.0, self.budget - self._spent[i]))
            try:
                reply = self._read(started + allowed)
            except (_Timeout, _Died) as exc:
                self._spent[i] += time.monotonic() - started
                self._kill()
                if isinstance(exc, _Died):
                    why = "stopped: its worker process died"
                elif allowed < self.timeout:
                    why = self._over_budget()
                else:
                    why = f"timed out after {allowed * 1000:.0f} ms"
                self._stop(i, where, why)
                return pending[position + 1 :]
            now = time.monotonic()
            self._spent[i] += now - started
            started = now
            index, hinted, matched = reply
            if index != i:
                self._kill()
                self._give_up("its worker process answered out of turn")
                return []
            answers[i] = (hinted, matched)
            if self._spent[i] >= self.budget:
                self._stop(i, where, self._over_budget())
        return []

    def _over_budget(self) -> str:
        return f"timed out: used up its {self.budget * 1000:.0f} ms for this scan"

    def _stop(self, i: int, where: str, why: str) -> None:
        name = self.detectors[i].name
        self._stopped.add(i)
        self.timed_out.append(name)
        log.warning(
            "custom detector %s %s on %s: no finding from it there or on any column "
            "after it in this scan (check its regex for catastrophic backtracking)",
            name,
            why,
            where,
        )

    def _give_up(self, why: str) -> None:
        self.unavailable = True
        log.error("custom detectors skipped for the rest of this scan: %s", why)

    # -- the child --

    def _send(self, request: Any) -> bool:
        """Send one request, starting the child if needed; False if it died meanwhile
        (it is then gone, and the next call starts a fresh one)."""
        if self._proc is None and not self._start():
            return False
        assert self._proc is not None and self._proc.stdin is not None
        data = marshal.dumps(request)
        try:
            self._proc.stdin.write(_HEADER.pack(len(data)) + data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            return False
        return True

    def _start(self) -> bool:
        specs = [
            (
                d.hint.pattern if d.hint is not None else None,
                d.hint.flags if d.hint is not None else 0,
                d.value_pattern.pattern if d.value_pattern is not None else None,
                d.value_pattern.flags if d.value_pattern is not None else 0,
            )
            for d in self.detectors
        ]
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter, a fixed script
                [sys.executable, "-I", "-S", "-c", _CHILD, str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            self._give_up(f"cannot start a worker process ({type(exc).__name__})")
            return False
        assert self._proc.stdout is not None
        self._buffer.clear()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._proc.stdout, selectors.EVENT_READ)
        data = marshal.dumps((specs, PROBE, MIN_VALUES))
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(_HEADER.pack(len(data)) + data)
            self._proc.stdin.flush()
            ready = self._read(time.monotonic() + START_TIMEOUT)
        except (OSError, _Timeout, _Died):
            ready = None
        if ready != "ready":
            self._kill()
            self._give_up("its worker process did not start")
            return False
        return True

    def _read(self, deadline: float) -> Any:
        assert self._proc is not None and self._selector is not None
        stdout: IO[bytes] | None = self._proc.stdout
        assert stdout is not None
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= _HEADER.size + size:
                    data = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
                    del self._buffer[: _HEADER.size + size]
                    return marshal.loads(data)  # noqa: S302 - our own child's replies
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if not self._selector.select(remaining):
                continue
            chunk = os.read(stdout.fileno(), 1 << 16)
            if not chunk:
                raise _Died
            self._buffer += chunk

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if proc is None:
            return
        proc.kill()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()

    def close(self) -> None:
        self._kill()
