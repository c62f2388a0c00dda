"""One Redis pub/sub subscription per process, fanned out to per-key asyncio Events.

The bundle long-poll (waiters per datasource) and the approval long-poll
(waiters per request) both park on an ``asyncio.Event`` and are woken by a
message; neither holds a thread or a database connection while it waits.
A hub belongs to one event loop (``PerLoop``): uvicorn runs one for the life of
the process, while Django's sync handler (the test client, runserver) runs each
async view on a loop of its own that is closed when the view returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
H = TypeVar("H")

# Every hub of this process, so that shutting down can wake all their waiters.
_hubs: weakref.WeakSet[EventHub[Any]] = weakref.WeakSet()


def wake_all() -> None:
    """Wake every waiter of every hub (each re-checks its state)."""
    for hub in list(_hubs):
        hub._fire(None)


class EventHub(Generic[K]):
    """Subclasses name the ``channel`` and say what a message means (``on_message``)."""

    channel: str
    what: str  # for the log line when Redis is lost

    def __init__(self) -> None:
        self._events: dict[K, asyncio.Event] = {}
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        _hubs.add(self)

    async def start(self) -> None:
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._listen())
        assert self._ready is not None
        await self._ready.wait()

    def event_for(self, key: K) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def _fire(self, key: K | None) -> None:
        keys = list(self._events) if key is None else [key]
        for k in keys:
            event = self._events.pop(k, None)
            if event is not None:
                event.set()

    def on_message(self, data: bytes) -> None:
        raise NotImplementedError

    def on_ready(self) -> None:
        """Subscribed (again): from here on no message is missed."""

    def on_lost(self) -> None:
        """While unsubscribed a message may be missed: every waiter re-checks."""
        self._fire(None)

    async def on_stop(self) -> None:
        """The loop is shutting down (its tasks are cancelled): release what the hub holds."""

    async def _listen(self) -> None:
        assert self._ready is not None
        delay = 0.1
        while True:
            pubsub = aioredis.Redis.from_url(settings.REDIS_URL).pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.on_ready()
                        self._ready.set()
                        delay = 0.1
                    elif message["type"] == "message":
                        self.on_message(message["data"])
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await self.on_stop()
                raise
            except Exception as exc:  # Redis restarted or unreachable: resubscribe
                logger.warning("%s subscriber lost Redis: %s", self.what, exc)
            finally:
                self._ready.clear()
                self.on_lost()
                with contextlib.suppress(Exception):  # already broken; nothing to release
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class PerLoop(Generic[H]):
    """One hub per running event loop, made on first use.

    Keyed by the loop itself, not its ``id``: a closed loop's id may be reused
    by the next one, which must not inherit a hub bound to a dead loop. Hubs of
    closed loops are dropped whenever a new one is made.
    """

    def __init__(self, factory: Callable[[], H]) -> None:
        self._factory = factory
        self._hubs: dict[asyncio.AbstractEventLoop, H] = {}

    def get(self) -> H:
        loop = asyncio.get_running_loop()
        hub = self._hubs.get(loop)
        if hub is None:
            for closed in [known for known in self._hubs if known.is_closed()]:
                del self._hubs[closed]
            hub = self._hubs[loop] = self._factory()
        return hub
