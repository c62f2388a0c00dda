"""Python's cyclic garbage collector, paused while large statements are judged.

Judging one builds a parse tree of hundreds of thousands of objects, whose
allocations set off the collector's full passes over everything alive: in a
worker thread they hold the interpreter lock for 300-600 ms at a time (2 MB of
multi-row INSERT), stalling the event loop, and they were more than half of
the judging's own time (1 MB: 1.2 s with the collector, 0.4 s without). The
tree has no reference cycles, so nothing waits for the collector; it resumes
when the last large statement is judged. Used by the engine (any caller) and by
the proxy around its worker thread; the pauses nest.
"""

from __future__ import annotations

import gc
import threading


class _Pause:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._judging = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._judging == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._judging += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._judging -= 1
            if self._judging == 0 and self._resume:
                gc.enable()


_PAUSE = _Pause()


def paused() -> _Pause:
    """A context manager: the collector is off inside it (and in any that overlap)."""
    return _PAUSE
