"""ASGI entry point: the bundle long-poll served directly, everything else by Django.

Django runs sync-only middleware (request ids, the admin MFA gate) in a thread
per request; a long-poll under it would pin one thread per waiting sidecar.
This wrapper answers ``GET /api/v1/sidecar/bundle`` itself, with the same
``bundle_reply`` the Django view uses, and hands every other request to
Django unchanged. Serve it with ``uvicorn governance.sidecar_asgi:application``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from governance.sidecar_api import bundle_reply  # noqa: E402 - needs the app registry

BUNDLE_PATH = "/api/v1/sidecar/bundle"


async def _bundle(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))

    async def disconnected() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    reply = await bundle_reply(
        authorization=headers.get("authorization"),
        if_none_match=headers.get("if-none-match", ""),
        wait_raw=(query.get("wait") or [None])[0],
        disconnected=disconnected,
    )
    if reply.status == 499:
        return  # the client went away; nobody to answer
    out = [(k.encode(), v.encode()) for k, v in reply.headers]
    out.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": out})
    await send({"type": "http.response.body", "body": reply.body})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == BUNDLE_PATH and scope["method"] == "GET":
        await _bundle(scope, receive, send)
        return
    await django_application(scope, receive, send)
