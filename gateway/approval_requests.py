"""A sidecar's approval calls: open a request for a held statement, wait for its decision.

``POST /api/v1/sidecar/approvals`` consumes a grant, returns the pending request
for the same statement and values, answers with a denial of them in the last
hour, or opens one. ``GET /api/v1/sidecar/approvals/<id>?wait=N``
long-polls the request's state: a waiting sidecar costs one coroutine parked on
an ``asyncio.Event``, and under ASGI the call is served without Django's
middleware (``gateway.asgi``). One Redis pub/sub subscriber per process
(channel ``warden:approval-decided``, message: the request id, published on
commit of every decision) sets the event. The state itself is read from a
Redis key the services write on commit, so a waiter needs neither a thread nor
a database connection; only when that key is missing (Redis lost it, or it was
never written) is the database read, once, in a short call that gives its
connection back.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from django.core.exceptions import ValidationError
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
from gateway.auth import sidecar_json_call
from gateway.bundle import waiting_sidecar
from gateway.http import (
    error_response,
    sidecar_call,
    site_root,
)
from gateway.longpoll import long_poll, off_loop
from gateway.pubsub import EventHub, PerLoop
from governance.models import Datasource

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
# The values fields came later: an older sidecar sends none of them.
VALUES_FIELDS = ("values_digest", "values", "estimate")
OPEN_OPTIONAL = {"client_addr", "application_name", *VALUES_FIELDS}
NOT_FOUND = "No such approval request."


# --- POST: open (or reuse) a request ----------------------------------------------------


@sidecar_call("POST")
def approval_open_view(request: HttpRequest) -> JsonResponse:
    """Nothing is stored unless every field is valid."""
    call = sidecar_json_call(request, OPEN_MAX_BYTES, OPEN_REQUIRED, OPEN_OPTIONAL)
    if isinstance(call, JsonResponse):
        return call
    principal, data = call
    name = data["identity"]
    datasource = Datasource.objects.filter(pk=principal.datasource_id).first()
    if datasource is None:
        return error_response(404, "This sidecar's datasource no longer exists.")
    identity = (
        identity_for_datasource(datasource=datasource, name=name)
        if isinstance(name, str) and 0 < len(name) <= 63 and "\x00" not in name
        else None
    )
    if identity is None:
        return error_response(
            400,
            "Unknown identity for this datasource.",
            {"identity": ["No active identity of that name may connect to this datasource."]},
        )
    # Omitted means "not sent" (an older sidecar); a null is a malformed value.
    nulls = {k: ["Omit it or give a value."] for k in VALUES_FIELDS if data.get(k, 0) is None}
    if nulls:
        return error_response(400, "The approval request is not valid.", nulls)
    fields = {k: data[k] for k in OPEN_REQUIRED - {"identity"}}
    try:
        approval, grant, created = approval_request_open(
            datasource=datasource,
            identity=identity,
            sidecar=principal.sidecar_id,
            client_addr=data.get("client_addr", ""),
            application_name=data.get("application_name", ""),
            values_digest=data.get("values_digest"),
            values=data.get("values"),
            estimate=data.get("estimate"),
            **fields,
        )
    except ValidationError as exc:
        return error_response(400, "The approval request is not valid.", exc.message_dict)
    url = approval_url(approval.id, base=site_root(request))
    if approval.state == ApprovalState.DENIED:
        # The same statement with the same values was denied a moment ago: its
        # refusal, at once, instead of a new request nobody would approve.
        denial = state_payload(approval)
        return JsonResponse(
            {
                "id": denial["id"],
                "state": denial["state"],
                "url": url,
                "reason": denial["reason"],
                "denied_by": denial["denied_by"],
            }
        )
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
        "identity": payload.get("identity", ""),
    }


def _db_state(request_id: str) -> dict[str, Any] | None:
    """The state from the database, cached back into Redis for the next reader."""
    request = (
        ApprovalRequest.objects.select_related("denied_by", "identity")
        .filter(pk=request_id)
        .first()
    )
    if request is None:
        return None
    approval_publish(request=request, wake=False)
    return state_payload(request)


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


_decision_hubs = PerLoop(DecisionHub)


async def _state(aredis: aioredis.Redis, request_id: str) -> dict[str, Any] | None:
    raw = await aredis.get(state_key(request_id))
    if raw is not None:
        with contextlib.suppress(ValueError):
            cached = dict(json.loads(raw))
            if "identity" in cached:  # cached before it named whose request: read afresh
                return cached
    return await off_loop(_db_state, request_id)


@sidecar_call("GET", direct=True)
async def approval_state_view(request: HttpRequest, request_id: str) -> JsonResponse:
    """The request's state, answered as soon as it is decided (or after ``wait`` seconds)."""
    call = await waiting_sidecar(request)  # the bundle hub's Redis pool and token memory
    if isinstance(call, JsonResponse):
        return call
    _, aredis, principal, wait = call
    pk = _parse_id(request_id)
    if pk is None:
        return error_response(404, NOT_FOUND)
    hub = _decision_hubs.get()
    if wait:
        await hub.start()
    base = site_root(request)
    datasource_id = principal.datasource_id

    async def poll() -> tuple[bool, JsonResponse]:
        payload = await _state(aredis, pk)
        if payload is None or payload.get("datasource_id") != datasource_id:
            return True, error_response(404, NOT_FOUND)
        decided = payload["state"] != ApprovalState.PENDING
        return decided, JsonResponse(_answer(payload, base))

    return await long_poll(seconds=wait, wake=lambda: hub.event_for(pk), poll=poll)
