"""ASGI entry point: the bundle and approval long-polls served directly, the rest by Django.

Django runs sync-only middleware (request ids, the admin MFA gate) in a thread
per request; a long-poll under it would pin one thread per waiting sidecar.
This wrapper answers ``GET /api/v1/sidecar/bundle`` itself, with the same
``bundle_reply`` the Django view uses, and hands every other request to
Django unchanged; ``GET /api/v1/sidecar/approvals/<id>`` likewise goes to
``approvals.sidecar_api.approval_state_reply``. Serve it with
``uvicorn governance.sidecar_asgi:application``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from approvals.sidecar_api import approval_state_reply  # noqa: E402
from governance.sidecar_api import (  # noqa: E402 - needs the app registry
    AUDIT_MAX_BYTES,
    AUDIT_WORKERS,
    audit_reply_on_kept_connection,
    bundle_reply,
)

BUNDLE_PATH = "/api/v1/sidecar/bundle"
AUDIT_PATH = "/api/v1/sidecar/audit"
APPROVAL_PREFIX = "/api/v1/sidecar/approvals/"


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


# Audit batches run on these threads, not Django's one sync thread: batches of
# different chains then overlap their database waits with each other's parsing.
_audit_pool = ThreadPoolExecutor(max_workers=AUDIT_WORKERS, thread_name_prefix="audit-ingest")


async def _audit(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= AUDIT_MAX_BYTES + 1:
            chunks.append(chunk)
        more = message.get("more_body", False)
    reply = functools.partial(
        audit_reply_on_kept_connection,
        authorization=headers.get("authorization"),
        content_type=headers.get("content-type", ""),
        body=b"".join(chunks)[: AUDIT_MAX_BYTES + 1],
    )
    status, payload = await asyncio.get_running_loop().run_in_executor(_audit_pool, reply)
    body = json.dumps(payload).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        out.append((b"www-authenticate", b'Bearer realm="warden-sidecar"'))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def _approval(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The approval long-poll: a waiting sidecar costs a coroutine (approvals.sidecar_api)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    # The URL names the control plane to database clients: trust only an allowed Host.
    host = headers.get("host", "")
    base = f"{scope.get('scheme', 'http')}://{host}/"
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        base = settings.WARDEN_BASE_URL + "/"

    async def disconnected() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    status, body = await approval_state_reply(
        authorization=headers.get("authorization"),
        request_id=scope["path"][len(APPROVAL_PREFIX) :],
        wait_raw=(query.get("wait") or [None])[0],
        base=base,
        disconnected=disconnected,
    )
    if status == 499:
        return  # the client went away; nobody to answer
    payload = json.dumps(body).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        out.append((b"www-authenticate", b'Bearer realm="warden-sidecar"'))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == BUNDLE_PATH and scope["method"] == "GET":
        await _bundle(scope, receive, send)
        return
    if scope["type"] == "http" and scope["path"] == AUDIT_PATH and scope["method"] == "POST":
        await _audit(scope, receive, send)
        return
    if (
        scope["type"] == "http"
        and scope["path"].startswith(APPROVAL_PREFIX)
        and scope["method"] == "GET"
    ):
        await _approval(scope, receive, send)
        return
    await django_application(scope, receive, send)


# Everything imported so far (Django, the apps, their modules) lives as long as the
# process: move it out of the collector's reach, so a full collection does not walk
# it again and again. An audit batch allocates ~10,000 containers (its events'
# dicts and lists), which at the default threshold of 700 meant a dozen young
# collections per batch; they are all garbage by the batch's end.
gc.collect()  # what imports left behind, so it is not frozen for good
gc.freeze()
gc.set_threshold(20_000, 10, 10)
