"""The bundle call, the gateway's hot path, and the signing keys sidecars pin.

A conditional GET compares ``If-None-Match`` with the revision kept in memory
from the change messages (else one Redis GET; no SQL). ``wait=N`` (at most
60 s) parks the request on an ``asyncio.Event`` that one shared Redis pub/sub
subscriber per process sets when that datasource's revision changes, so a
waiting sidecar costs a coroutine, not a thread or a database connection.
Under ASGI the call is served without Django's middleware (``gateway.asgi``):
some of it is sync-only and would pin a thread per waiter.
"""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from gateway.auth import PrincipalCache, SidecarPrincipal, asidecar_authenticate
from gateway.http import UNAUTHENTICATED, error_response, sidecar_call
from gateway.longpoll import long_poll, off_loop, parse_wait
from gateway.pubsub import EventHub, PerLoop
from governance.bundles import CHANNEL, BundleCompileError, bundle_publish
from governance.models import Datasource
from governance.signing import published_public_keys

BAD_WAIT = "wait must be a whole number of seconds (0-60)."


# --- change notifications: one subscriber per process ------------------------------


class ChangeHub(EventHub[int]):
    """Wakes the bundle waiters of a datasource when its revision is announced.

    Also the gateway's async Redis pool and its revocation-aware token memory:
    a ``forget <digest>`` message on the same channel drops a revoked token."""

    channel = CHANNEL
    what = "bundle change"

    def __init__(self) -> None:
        super().__init__()
        self.principals = PrincipalCache()
        # Current revision per datasource, kept by the change messages, so a 304
        # costs no Redis round trip; ``_generation`` stops a slow read from
        # overwriting a newer announcement.
        self._revisions: dict[int, str] = {}
        self._generation: dict[int, int] = {}
        self._bodies: dict[int, tuple[str, bytes]] = {}
        self._flights: dict[tuple[int, str], asyncio.Future[bytes | None]] = {}
        self.redis: aioredis.Redis | None = None

    async def start(self) -> None:
        if self.redis is None:
            # Blocking pool: a thundering herd of woken waiters queues for a
            # connection instead of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, max_connections=64, timeout=20
            )
            self.redis = aioredis.Redis(connection_pool=pool)
        await super().start()

    async def on_stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)

    async def revision(self, datasource_id: int) -> str | None:
        """The current revision: from memory while subscribed, else one Redis GET."""
        assert self.redis is not None and self._ready is not None
        known = self._revisions.get(datasource_id)
        if known is not None and self._ready.is_set():
            return known
        generation = self._generation.get(datasource_id, 0)
        raw = await self.redis.get(f"warden:bundle:{datasource_id}:rev")
        revision = raw.decode() if raw is not None else None
        if (
            revision is not None
            and self._ready.is_set()
            and self._generation.get(datasource_id, 0) == generation
        ):
            self._revisions[datasource_id] = revision
        return revision

    async def body(self, datasource_id: int, revision: str) -> bytes | None:
        """The signed envelope of ``revision``, or None when it is no longer current.

        Fetched once per process and revision however many waiters wake at once
        (single flight), so a change costs one Redis read, not one per sidecar.
        """
        cached = self._bodies.get(datasource_id)
        if cached is not None and cached[0] == revision:
            return cached[1]
        key = (datasource_id, revision)
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch_body(datasource_id, revision))
            self._flights[key] = flight
            flight.add_done_callback(lambda _f: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _fetch_body(self, datasource_id: int, revision: str) -> bytes | None:
        assert self.redis is not None
        rev, body = await self.redis.mget(
            f"warden:bundle:{datasource_id}:rev", f"warden:bundle:{datasource_id}:body"
        )
        if rev is None or body is None or rev.decode() != revision:
            return None
        if _without_expiry(body):
            # Stored by a control plane from before bundles expired: sidecars reject
            # it. Recompiled here (its content digest no longer matches, so this
            # publishes), and the caller reads the new revision.
            await off_loop(_publish_now, datasource_id)
            return None
        self._bodies[datasource_id] = (revision, body)
        return bytes(body)

    def forget_revision(self, datasource_id: int) -> None:
        self._generation[datasource_id] = self._generation.get(datasource_id, 0) + 1
        self._revisions.pop(datasource_id, None)

    def on_message(self, data: bytes) -> None:
        kind, _, rest = data.decode().partition(" ")
        if kind == "bundle":
            ds_text, _, revision = rest.partition(" ")
            ds = int(ds_text)
            self._generation[ds] = self._generation.get(ds, 0) + 1
            self._revisions[ds] = revision
            self._fire(ds)
        elif kind == "forget":
            self.principals.forget(rest)

    def on_ready(self) -> None:
        # What was looked up while unsubscribed may have been revoked unheard.
        self.principals.forget()
        self.principals.listening = True

    def on_lost(self) -> None:
        # Revocations may be missed while unsubscribed: remember nothing, and
        # waiters re-check the revision rather than miss a change while down.
        self.principals.listening = False
        self.principals.forget()
        self._revisions.clear()
        self._generation.clear()
        super().on_lost()


_change_hubs = PerLoop(ChangeHub)


def change_hub() -> ChangeHub:
    """The hub of the running event loop, started: its Redis pool and token memory
    serve every long-poll of the gateway."""
    return _change_hubs.get()


async def waiting_sidecar(
    request: HttpRequest,
) -> tuple[ChangeHub, aioredis.Redis, SidecarPrincipal, int] | JsonResponse:
    """What every long-poll starts with: the hub (started), its Redis, the sidecar behind
    the token and the seconds it may wait; else the answer refusing the call."""
    hub = change_hub()
    await hub.start()
    assert hub.redis is not None
    principal = await asidecar_authenticate(
        request.headers.get("Authorization"), hub.redis, hub.principals
    )
    if principal is None:
        return error_response(401, UNAUTHENTICATED)
    wait = parse_wait(request.GET.get("wait"))
    if wait is None:
        return error_response(400, BAD_WAIT)
    return hub, hub.redis, principal, wait


# --- the bundle call -----------------------------------------------------------------


def _etag_matches(if_none_match: str, revision: str) -> bool:
    for item in if_none_match.split(","):
        tag = item.strip().removeprefix("W/").strip('"')
        if tag == revision or tag == "*":
            return True
    return False


def _without_expiry(body: bytes) -> bool:
    try:
        return "expires_at" not in json.loads(body)["bundle"]
    except (ValueError, KeyError, TypeError):
        return False


def _publish_now(datasource_id: int) -> None:
    try:
        datasource = Datasource.objects.filter(pk=datasource_id).first()
        if datasource is not None:
            bundle_publish(datasource=datasource)
    except BundleCompileError:
        pass  # logged and stored by bundle_publish; the caller answers 503


async def _current(aredis: aioredis.Redis, datasource_id: int) -> str | None:
    raw = await aredis.get(f"warden:bundle:{datasource_id}:rev")
    return raw.decode() if raw is not None else None


def _cache_headers(response: HttpResponse, revision: str) -> HttpResponse:
    # The ETag is the revision: the SHA-256 of the whole signed bundle, issued_at
    # and expires_at included. A re-sign (governance.bundles.bundles_resign) is
    # therefore a new ETag, and a 304 never hides a renewed expiry from a sidecar.
    response["ETag"] = f'"{revision}"'
    response["Cache-Control"] = "no-cache"
    return response


@sidecar_call("GET", direct=True)
async def bundle_view(request: HttpRequest) -> HttpResponse:
    """The signed bundle of the token's datasource; 304 while ``If-None-Match`` names
    it, after up to ``wait`` seconds of waiting for a change."""
    call = await waiting_sidecar(request)
    if isinstance(call, JsonResponse):
        return call
    hub, aredis, principal, wait = call
    if_none_match = request.headers.get("If-None-Match", "")
    ds = principal.datasource_id
    attempts = 0

    async def poll() -> tuple[bool, HttpResponse]:
        nonlocal attempts
        while True:
            revision = await hub.revision(ds)
            if revision is None:
                await off_loop(_publish_now, ds)
                revision = await _current(aredis, ds)
                if revision is None:
                    return True, error_response(
                        503, "No bundle could be compiled for this datasource yet."
                    )
            if if_none_match and _etag_matches(if_none_match, revision):
                not_modified = HttpResponse(status=304)
                del not_modified["Content-Type"]
                return False, _cache_headers(not_modified, revision)
            stored = await hub.body(ds, revision)
            if stored is not None:
                response = HttpResponse(stored, content_type="application/json")
                return True, _cache_headers(response, revision)
            # Replaced meanwhile, or Redis lost it: read the revision afresh (never
            # spin on a remembered one), and give up after a few tries.
            hub.forget_revision(ds)
            attempts += 1
            if attempts > 3:
                return True, error_response(503, "The bundle is changing; try again.")

    return await long_poll(seconds=wait, wake=lambda: hub.event_for(ds), poll=poll)


@sidecar_call("GET")
def keys_view(request: HttpRequest) -> JsonResponse:
    """The public keys bundles may be signed with (public: sidecars pin them)."""
    keys = [
        {"key_id": kid, "alg": "ed25519", "public_key": pub}
        for kid, pub in published_public_keys().items()
    ]
    return JsonResponse({"keys": keys})
