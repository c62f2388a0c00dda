"""The sidecar's side of approvals: open a request for a held statement, wait for its decision.

``POST /api/v1/sidecar/approvals`` (a sync Django view, mounted by
``governance.sidecar_api``) consumes a grant, returns the pending request for
the same statement, or opens one. ``GET /api/v1/sidecar/approvals/<id>?wait=N``
is served by the raw ASGI app (``governance.sidecar_asgi``): a waiting sidecar
costs one coroutine parked on an ``asyncio.Event``. One Redis pub/sub
subscriber per process (channel ``warden:approval-decided``, message: the
request id, published on commit of every decision) sets the event. The state
itself is read from a Redis key the services write on commit, so a waiter
needs neither a thread nor a database connection; only when that key is
missing (Redis lost it, or it was never written) is the database read, once,
in a short sync call that gives its connection back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection
from django.http import HttpRequest, JsonResponse

from approvals.models import ApprovalRequest, ApprovalState
from approvals.services import (
    DECIDED_CHANNEL,
    approval_publish,
    approval_request_open,
    approval_url,
    identity_for_datasource,
    state_key,
    state_payload,
)
from governance.bundles import redis_client
from governance.models import Datasource
from governance.pubsub import EventHub
from governance.sidecar_auth import SidecarPrincipal, asidecar_authenticate

logger = logging.getLogger(__name__)

OPEN_MAX_BYTES = 256 * 1024
OPEN_REQUIRED = {
    "identity",
    "fingerprint",
    "statement",
    "kind",
    "risk",
    "reasons",
    "tables",
    "classifications",
}
OPEN_OPTIONAL = {"client_addr", "application_name"}


def _error(status: int, message: str, fields: dict[str, Any] | None = None) -> JsonResponse:
    error: dict[str, Any] = {"code": status, "message": message}
    if fields:
        error["fields"] = fields
    return JsonResponse({"error": error}, status=status)


# --- POST: open (or reuse) a request ----------------------------------------------------


def approval_open_view(
    request: HttpRequest, principal: SidecarPrincipal, data: Any
) -> JsonResponse:
    """The body is parsed JSON; nothing is stored unless every field is valid."""
    if not isinstance(data, dict):
        return _error(400, "The body must be a JSON object.")
    missing = sorted(OPEN_REQUIRED - set(data))
    unknown = sorted(set(data) - OPEN_REQUIRED - OPEN_OPTIONAL)
    if missing or unknown:
        parts = ([f"Missing: {', '.join(missing)}."] if missing else []) + (
            [f"Unknown: {', '.join(unknown)}."] if unknown else []
        )
        return _error(400, " ".join(parts))
    name = data["identity"]
    datasource = Datasource.objects.filter(pk=principal.datasource_id).first()
    if datasource is None:
        return _error(404, "This sidecar's datasource no longer exists.")
    identity = (
        identity_for_datasource(datasource=datasource, name=name)
        if isinstance(name, str) and 0 < len(name) <= 63 and "\x00" not in name
        else None
    )
    if identity is None:
        return _error(
            400,
            "Unknown identity for this datasource.",
            {"identity": ["No active identity of that name may connect to this datasource."]},
        )
    fields = {k: data[k] for k in OPEN_REQUIRED - {"identity"}}
    try:
        approval, grant, created = approval_request_open(
            datasource=datasource,
            identity=identity,
            sidecar=principal.sidecar_id,
            client_addr=data.get("client_addr", ""),
            application_name=data.get("application_name", ""),
            **fields,
        )
    except ValidationError as exc:
        return _error(400, "The approval request is not valid.", exc.message_dict)
    url = approval_url(approval.id, base=request.build_absolute_uri("/"))
    if grant is not None:
        return JsonResponse(
            {
                "id": str(approval.id),
                "state": ApprovalState.APPROVED,
                "url": url,
                "grant": {
                    "id": str(grant.id),
                    "uses_left": grant.uses_left,
                    "expires_at": grant.expires_at.isoformat(),
                },
            }
        )
    body = {
        "id": str(approval.id),
        "state": approval.state,
        "url": url,
        "expires_at": approval.expires_at.isoformat(),
    }
    return JsonResponse(body, status=201 if created else 200)


# --- GET: the state, long-polled ---------------------------------------------------------


def _answer(payload: dict[str, Any], base: str) -> dict[str, Any]:
    return {
        "id": payload["id"],
        "state": payload["state"],
        "url": approval_url(payload["id"], base=base),
        "reason": payload.get("reason", ""),
        "denied_by": payload.get("denied_by", ""),
        "decided_at": payload.get("decided_at"),
    }


def _db_state(request_id: str) -> dict[str, Any] | None:
    """The state from the database, cached back into Redis for the next reader."""
    close_old_connections()
    try:
        request = ApprovalRequest.objects.select_related("denied_by").filter(pk=request_id).first()
        if request is None:
            return None
        approval_publish(request=request, wake=False)
        return state_payload(request)
    finally:
        connection.close()


def _parse_id(raw: str) -> str | None:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


class DecisionHub(EventHub[str]):
    """Wakes the waiters of a request when its decision is published."""

    channel = DECIDED_CHANNEL
    what = "approval decision"

    def on_message(self, data: bytes) -> None:
        self._fire(data.decode())


_hubs: dict[int, DecisionHub] = {}


def decision_hub() -> DecisionHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None:
        hub = _hubs[id(loop)] = DecisionHub()
    return hub


async def _state(aredis: aioredis.Redis, request_id: str) -> dict[str, Any] | None:
    raw = await aredis.get(state_key(request_id))
    if raw is not None:
        with contextlib.suppress(ValueError):
            return dict(json.loads(raw))
    return await sync_to_async(_db_state)(request_id)


async def approval_state_reply(
    *,
    authorization: str | None,
    request_id: str,
    wait_raw: str | None,
    base: str,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of the state call, answered as soon as the request is decided."""
    from governance.sidecar_api import change_hub, parse_wait

    bundle_hub = change_hub()  # its Redis pool and its revocation-aware token cache
    await bundle_hub.start()
    assert bundle_hub.redis is not None
    aredis = bundle_hub.redis
    principal = await asidecar_authenticate(authorization, aredis, bundle_hub.principals)
    if principal is None:
        return 401, {"error": {"code": 401, "message": "A valid sidecar token is required."}}
    wait = parse_wait(wait_raw)
    if wait is None:
        return 400, {
            "error": {"code": 400, "message": "wait must be a whole number of seconds (0-60)."}
        }
    pk = _parse_id(request_id)
    not_found = 404, {"error": {"code": 404, "message": "No such approval request."}}
    if pk is None:
        return not_found
    hub = decision_hub()
    if wait:
        await hub.start()
    deadline = time.monotonic() + wait
    while True:
        # Take the event before reading the state: a decision published in
        # between sets this event, so it cannot be missed.
        event = hub.event_for(pk)
        payload = await _state(aredis, pk)
        if payload is None or payload.get("datasource_id") != principal.datasource_id:
            return not_found
        remaining = deadline - time.monotonic()
        if payload["state"] != ApprovalState.PENDING or remaining <= 0:
            return 200, _answer(payload, base)
        waiter = asyncio.ensure_future(event.wait())
        watchers: set[asyncio.Future[Any]] = {waiter}
        gone = asyncio.ensure_future(disconnected()) if disconnected else None
        if gone is not None:
            watchers.add(gone)
        try:
            done, _ = await asyncio.wait(
                watchers, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in watchers:
                fut.cancel()
        if gone is not None and gone in done:
            return 499, {}


def approval_state_view(
    request: HttpRequest, principal: SidecarPrincipal, request_id: str
) -> JsonResponse:
    """The same call under WSGI or the test client: a blocking wait, one thread per waiter.
    Production serves it from the ASGI app instead (see the module docstring)."""
    from governance.sidecar_api import parse_wait

    wait = parse_wait(request.GET.get("wait"))
    if wait is None:
        return _error(400, "wait must be a whole number of seconds (0-60).")
    pk = _parse_id(request_id)
    if pk is None:
        return _error(404, "No such approval request.")
    base = request.build_absolute_uri("/")
    pubsub = redis_client().pubsub()
    try:
        if wait:
            pubsub.subscribe(DECIDED_CHANNEL)
        deadline = time.monotonic() + wait
        while True:
            raw = redis_client().get(state_key(pk))
            payload = json.loads(raw) if raw is not None else _db_state_keep(pk)
            if payload is None or payload.get("datasource_id") != principal.datasource_id:
                return _error(404, "No such approval request.")
            remaining = deadline - time.monotonic()
            if payload["state"] != ApprovalState.PENDING or remaining <= 0:
                return JsonResponse(_answer(payload, base))
            pubsub.get_message(timeout=min(remaining, 1.0))
    finally:
        pubsub.close()


def _db_state_keep(request_id: str) -> dict[str, Any] | None:
    # Inside a Django request the connection belongs to the request; do not close it.
    request = ApprovalRequest.objects.select_related("denied_by").filter(pk=request_id).first()
    if request is None:
        return None
    approval_publish(request=request, wake=False)
    return state_payload(request)
