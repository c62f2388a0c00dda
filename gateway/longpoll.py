"""The one long-poll loop of the gateway, and the one way its calls reach the database.

A waiting sidecar costs a coroutine parked on an ``asyncio.Event`` (set by the
Redis subscriber of ``gateway.pubsub``), never a thread or a database
connection: the few ORM calls a long-poll makes run off the event loop and
give their connection back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

from gateway import pubsub

MAX_WAIT_SECONDS = 60
T = TypeVar("T")
P = ParamSpec("P")

# Set once the process is shutting down: every long-poll answers with what it has.
_stopping = False


def parse_wait(raw: str | None) -> int | None:
    """Seconds to long-poll (0..60), or None when the value is malformed."""
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 3:
        return None
    return min(int(raw), MAX_WAIT_SECONDS)


async def long_poll(
    *,
    seconds: float,
    wake: Callable[[], asyncio.Event],
    poll: Callable[[], Awaitable[tuple[bool, T]]],
) -> T:
    """``poll`` until it answers ``(True, answer)`` or ``seconds`` have passed.

    ``poll`` returns ``(final, answer)``: a final answer is returned at once; any
    other is what the caller gets if nothing changes before the time is up
    (a 304, a still-pending state). Between polls the loop waits on ``wake()``.
    A client that goes away cancels the view, and with it the wait.
    """
    deadline = time.monotonic() + seconds
    while True:
        # Take the event before reading the state: a change published in between
        # sets this event, so it cannot be missed.
        event = wake()
        final, answer = await poll()
        remaining = deadline - time.monotonic()
        if final or remaining <= 0 or _stopping:
            return answer
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), remaining)


def stop_waiting() -> None:
    """The process is shutting down: every long-poll answers now, and new ones at once.

    uvicorn waits for open requests before it exits, and a long-poll waits up
    to a minute: without this a rolling restart took the whole wait, or ended
    in a kill. A sidecar given its usual "nothing new" answer simply polls
    again, and reaches a process that is not stopping. Call on the loop."""
    global _stopping
    _stopping = True
    pubsub.wake_all()


async def off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function`` (ORM work) on a thread, its database connection closed afterwards.

    A long-poll then holds no connection while it waits. A connection inside a
    transaction belongs to whoever opened it (a test's, under the test client)
    and is left alone."""

    def call() -> T:
        if connection.in_atomic_block:
            return function(*args, **kwargs)
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    return await sync_to_async(call)()
