"""How the gateway is served under ASGI: its waiting and bulk calls skip Django's handler.

Some of the middleware is sync-only (the request ids, the admin MFA gate).
Django runs such a chain on a thread per request and calls the view from it,
so a long-poll under it would hold one thread per waiting sidecar for up to a
minute. Django's own ASGI handler is no better for these calls: it sends the
request signals through a thread hop each way and gives every request its own
thread for sync work, so 2,000 sidecars starting at once opened 2,000 database
connections, and a conditional GET cost ~1 ms of handler for ~50 µs of view.

The views marked ``direct`` (``gateway.http.sidecar_call``: the bundle, the
approval state, audit intake) are therefore called here: the same URLconf and
view functions, an ``ASGIRequest`` built from the scope, the view's coroutine
on the event loop, its response written out. They need none of the rest: no
sessions, cookies, CSRF or pages (the token is their authentication), and the
database work they do runs through ``gateway.longpoll.off_loop`` or the audit
threads, which give their connections back themselves. Every other request,
the gateway's small sync calls included, goes through Django's full stack.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponseBase
from django.urls import Resolver404, resolve

from gateway import longpoll
from gateway.audit_intake import AUDIT_MAX_BYTES
from gateway.http import error_response

logger = logging.getLogger("django.request")

PREFIX = "/api/v1/sidecar/"
ASGIApp = Any  # (scope, receive, send) -> Awaitable[None]
DirectView = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


@functools.lru_cache(maxsize=4096)
def _direct_view(path: str) -> DirectView | None:
    """The view ``path`` resolves to, when it is a gateway call marked ``direct``."""
    try:
        match = resolve(path)
    except Resolver404:
        return None
    if not getattr(match.func, "served_directly", False):
        return None
    return match.func, match.args, match.kwargs


def served_directly(path: str) -> bool:
    """Whether ``path`` is a gateway call served without Django's handler."""
    return path.startswith(PREFIX) and _direct_view(path) is not None


async def _read_body(receive: Any) -> bytes | None:
    """The request body, None on disconnect. At most the largest body a direct call
    accepts (audit intake's) and one byte more are kept, so the view can still
    tell the client it sent too much."""
    chunks: list[bytes] = []
    kept = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if kept <= AUDIT_MAX_BYTES:
            chunks.append(chunk[: AUDIT_MAX_BYTES + 1 - kept])
            kept += len(chunks[-1])
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send: Any, response: HttpResponseBase) -> None:
    body = response.content  # type: ignore[attr-defined]
    headers = [(k.encode("ascii"), v.encode("latin-1")) for k, v in response.items()]
    if not response.has_header("Content-Length"):
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve_direct(view: DirectView, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One direct call: the view runs until it answers or the client goes away."""
    body = await _read_body(receive)
    if body is None:
        return
    func, args, kwargs = view
    request = ASGIRequest(scope, io.BytesIO(body))
    if scope["method"] != "GET":
        # Audit intake: the batch is stored whether or not the sidecar still
        # listens (it re-sends what it did not see acknowledged; ids make that safe).
        await _respond(send, await _answer(func(request, *args, **kwargs), scope))
        return
    answer = asyncio.ensure_future(func(request, *args, **kwargs))
    # Most calls answer in their first step (a 304 from memory): give the view that
    # step before paying for a second task that watches for a disconnect.
    await asyncio.sleep(0)
    if not answer.done():
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((answer, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not answer.done():  # the sidecar went away: stop waiting for it
            answer.cancel()
            return
    await _respond(send, await _answer(answer, scope))


async def _answer(call: Awaitable[HttpResponseBase], scope: dict[str, Any]) -> HttpResponseBase:
    """The view's response, or the gateway's 500 when it failed (logged, not shown)."""
    try:
        return await call
    except Exception:
        logger.exception("Internal Server Error: %s", scope["path"])
        return error_response(500, "The control plane failed; try again.")


def _answer_long_polls_on_exit() -> None:
    """On SIGTERM or SIGINT, answer the open long-polls before the server's own handler runs.

    The server (uvicorn) then stops accepting and waits for open requests,
    which now end at once instead of after their wait. Its handler stays in
    charge of the rest, and is put back by the server when it stops."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; a server in a thread drains as before
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(number: int, frame: Any, previous: Any = previous) -> None:
            try:
                loop.call_soon_threadsafe(longpoll.stop_waiting)
            except RuntimeError:
                pass  # the loop is closed: no long-poll is waiting on it any more
            finally:
                if callable(previous):
                    previous(number, frame)
                elif previous == signal.SIG_DFL:
                    # No handler of the server's: the signal does what it would have.
                    signal.signal(number, signal.SIG_DFL)
                    signal.raise_signal(number)

        signal.signal(signum, handler)


async def _lifespan(receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol, which Django does not speak: its start hooks the signals."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _answer_long_polls_on_exit()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def with_gateway(django_application: ASGIApp) -> ASGIApp:
    """``django_application``, with the gateway's direct calls served by ``serve_direct``."""

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            view = _direct_view(scope["path"])
            if view is not None:
                await serve_direct(view, scope, receive, send)
                return
        await django_application(scope, receive, send)

    return application
