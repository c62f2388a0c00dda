"""The sidecar-facing API under ``/api/v1/sidecar/``: bundle, heartbeat, schema, audit, approvals.

The bundle call is the hot path. A conditional GET compares ``If-None-Match``
with the revision stored in Redis (no SQL); ``wait=N`` (at most 60 s) parks the
request on an ``asyncio.Event`` that one shared Redis pub/sub subscriber per
process sets when that datasource's revision changes, so a waiting sidecar
costs a coroutine, not a thread or a database connection. The raw ASGI entry
in ``governance.sidecar_asgi`` serves it without Django's middleware (some of
which is sync-only and would pin a thread per waiter); the Django view here
serves the same logic for completeness. The other calls are small sync views
that validate their JSON strictly and refuse oversized bodies with 413.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from audit.services import audit_events_ingest
from governance.bundles import CHANNEL, BundleCompileError, bundle_current, bundle_publish
from governance.models import Datasource, validate_schema_snapshot
from governance.pubsub import EventHub
from governance.services import (
    scan_requested_for,
    sidecar_heartbeat_record,
    sidecar_schema_report,
)
from governance.sidecar_auth import (
    PrincipalCache,
    SidecarPrincipal,
    asidecar_authenticate,
    sidecar_authenticate,
)
from governance.signing import published_public_keys

logger = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60
HEARTBEAT_MAX_BYTES = 16 * 1024
SCHEMA_MAX_BYTES = 2 * 1024 * 1024
AUDIT_MAX_BYTES = 4 * 1024 * 1024
AUDIT_MAX_EVENTS = 1000
_REVISION_RE = re.compile(r"^[0-9a-f]{64}$")


# --- change notifications: one subscriber per process ------------------------------


class ChangeHub(EventHub[int]):
    """Wakes the bundle waiters of a datasource when its revision is announced."""

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
            await sync_to_async(_publish_now)(datasource_id)
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

    def on_lost(self) -> None:
        # Revocations may be missed while unsubscribed: remember nothing, and
        # waiters re-check the revision rather than miss a change while down.
        self.principals.forget()
        self._revisions.clear()
        self._generation.clear()
        super().on_lost()


_hubs: dict[int, ChangeHub] = {}


def change_hub() -> ChangeHub:
    """The hub of the running event loop (a test may run several loops in one process)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None:
        hub = _hubs[id(loop)] = ChangeHub()
    return hub


# --- the bundle call -----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _error(status: int, message: str) -> Reply:
    body = json.dumps({"error": {"code": status, "message": message}}).encode()
    return Reply(status, [("content-type", "application/json")], body)


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
    close_old_connections()
    try:
        datasource = Datasource.objects.filter(pk=datasource_id).first()
        if datasource is not None:
            bundle_publish(datasource=datasource)
    except BundleCompileError:
        pass  # logged and stored by bundle_publish; the caller answers 503
    finally:
        connection.close()


async def _current(aredis: aioredis.Redis, datasource_id: int) -> str | None:
    raw = await aredis.get(f"warden:bundle:{datasource_id}:rev")
    return raw.decode() if raw is not None else None


def parse_wait(raw: str | None) -> int | None:
    """Seconds to long-poll (0..60), or None when the value is malformed."""
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 3:
        return None
    return min(int(raw), MAX_WAIT_SECONDS)


async def bundle_reply(
    *,
    authorization: str | None,
    if_none_match: str,
    wait_raw: str | None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> Reply:
    """The bundle call, independent of how it is served (raw ASGI or a Django view)."""
    hub = change_hub()
    await hub.start()
    assert hub.redis is not None
    aredis = hub.redis
    principal = await asidecar_authenticate(authorization, aredis, hub.principals)
    if principal is None:
        return _error(401, "A valid sidecar token is required.")
    wait = parse_wait(wait_raw)
    if wait is None:
        return _error(400, "wait must be a whole number of seconds (0-60).")
    ds = principal.datasource_id
    deadline = time.monotonic() + wait
    attempts = 0
    while True:
        # Take the event before reading the revision: a change published in
        # between sets this event, so it cannot be missed.
        event = hub.event_for(ds)
        revision = await hub.revision(ds)
        if revision is None:
            await sync_to_async(_publish_now)(ds)
            revision = await _current(aredis, ds)
            if revision is None:
                return _error(503, "No bundle could be compiled for this datasource yet.")
        if not if_none_match or not _etag_matches(if_none_match, revision):
            stored = await hub.body(ds, revision)
            if stored is None:
                # Replaced meanwhile, or Redis lost it: read the revision afresh
                # (never spin on a remembered one), and give up after a few tries.
                hub.forget_revision(ds)
                attempts += 1
                if attempts > 3:
                    return _error(503, "The bundle is changing; try again.")
                continue
            # The ETag is the revision: the SHA-256 of the whole signed bundle,
            # issued_at and expires_at included. A re-sign (governance.bundles.
            # bundles_resign) is therefore a new ETag, and a 304 never hides a
            # renewed expiry from a sidecar.
            headers = [
                ("content-type", "application/json"),
                ("etag", f'"{revision}"'),
                ("cache-control", "no-cache"),
            ]
            return Reply(200, headers, stored)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Reply(304, [("etag", f'"{revision}"'), ("cache-control", "no-cache")], b"")
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
            return Reply(499, [], b"")


async def _bundle_view(request: HttpRequest) -> HttpResponse:
    reply = await bundle_reply(
        authorization=request.headers.get("Authorization"),
        if_none_match=request.headers.get("If-None-Match", ""),
        wait_raw=request.GET.get("wait"),
    )
    response = HttpResponse(reply.body, status=reply.status)
    for name, value in reply.headers:
        response[name] = value
    return response


bundle_view = csrf_exempt(require_GET(_bundle_view))


# --- the other calls -----------------------------------------------------------------


def _json_body(request: HttpRequest, limit: int) -> tuple[Any, JsonResponse | None]:
    length = request.headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        return None, _json_error(413, f"The body is larger than {limit} bytes.")
    body = request.read(limit + 1)
    if len(body) > limit:
        return None, _json_error(413, f"The body is larger than {limit} bytes.")
    if request.content_type != "application/json":
        return None, _json_error(415, "Send application/json.")
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError):
        return None, _json_error(400, "The body is not valid JSON.")


def _json_error(status: int, message: str, fields: dict[str, Any] | None = None) -> JsonResponse:
    error: dict[str, Any] = {"code": status, "message": message}
    if fields:
        error["fields"] = fields
    return JsonResponse({"error": error}, status=status)


def _principal(request: HttpRequest) -> SidecarPrincipal | None:
    return sidecar_authenticate(request.headers.get("Authorization"))


def _unauthorized() -> JsonResponse:
    response = _json_error(401, "A valid sidecar token is required.")
    response["WWW-Authenticate"] = 'Bearer realm="warden-sidecar"'
    return response


def _check_keys(data: Any, required: set[str], optional: set[str] = frozenset()) -> str | None:  # type: ignore[assignment]
    if not isinstance(data, dict):
        return "The body must be a JSON object."
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - required - optional)
    if missing:
        return f"Missing: {', '.join(missing)}."
    if unknown:
        return f"Unknown: {', '.join(unknown)}."
    return None


@csrf_exempt
@require_POST
def heartbeat_view(request: HttpRequest) -> JsonResponse:
    """Body: {revision, version, counters: {name: int}, status: {...}}."""
    principal = _principal(request)
    if principal is None:
        return _unauthorized()
    data, problem = _json_body(request, HEARTBEAT_MAX_BYTES)
    if problem is not None:
        return problem
    message = _check_keys(data, {"revision", "version", "counters"}, {"status"})
    if message:
        return _json_error(400, message)
    revision, version, counters = data["revision"], data["version"], data["counters"]
    status = data.get("status", {})
    fields: dict[str, str] = {}
    if not isinstance(revision, str) or not (revision == "" or _REVISION_RE.match(revision)):
        fields["revision"] = "A 64-character lower-case hex revision, or empty."
    if not isinstance(version, str) or len(version) > 64:
        fields["version"] = "A string of at most 64 characters."
    if not isinstance(counters, dict) or not all(
        isinstance(k, str)
        and len(k) <= 64
        and isinstance(v, int)
        and not isinstance(v, bool)
        and 0 <= v < 2**63
        for k, v in counters.items()
    ):
        fields["counters"] = "An object of names to non-negative integers."
    if not isinstance(status, dict):
        fields["status"] = "An object."
    if fields:
        return _json_error(400, "The heartbeat is not valid.", fields)
    try:
        sidecar_heartbeat_record(
            sidecar_id=principal.sidecar_id,
            revision=revision,
            version=version,
            counters=counters,
            bundle_status=status,
        )
    except ValidationError as exc:
        return _json_error(400, "The heartbeat is not valid.", exc.message_dict)
    current = bundle_current(datasource_id=principal.datasource_id)
    reply: dict[str, Any] = {"current_revision": current[0] if current else None}
    requested = scan_requested_for(datasource_id=principal.datasource_id)
    if requested:
        reply["scan_requested"] = requested
    return JsonResponse(reply)


_FINDING_KEYS = {"schema", "table", "column", "classification", "confidence"}
_FINDING_OPTIONAL = {"share", "detector"}
_SCAN_KEYS = {"id", "trigger"}
_SCAN_OPTIONAL = {
    "started_at",
    "finished_at",
    "tables",
    "columns",
    "sampled_columns",
    "duration_ms",
}
_SCAN_TRIGGERS = {"start", "schedule", "request"}
MAX_FINDINGS = 10_000


def _fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _finding_valid(f: Any) -> bool:
    return (
        isinstance(f, dict)
        and _FINDING_KEYS <= set(f) <= _FINDING_KEYS | _FINDING_OPTIONAL
        and all(
            isinstance(f[k], str) and 0 < len(f[k]) <= 100 for k in _FINDING_KEYS - {"confidence"}
        )
        and _fraction(f["confidence"])
        and ("share" not in f or _fraction(f["share"]))
        and ("detector" not in f or (isinstance(f["detector"], str) and len(f["detector"]) <= 100))
    )


def _scan_problems(scan: Any) -> dict[str, str]:
    """Field problems of the optional ``scan`` summary (empty when valid)."""
    from django.utils.dateparse import parse_datetime

    message = _check_keys(scan, _SCAN_KEYS, _SCAN_OPTIONAL)
    if message:
        return {"scan": message}
    fields: dict[str, str] = {}
    if not isinstance(scan["id"], str) or not 0 < len(scan["id"]) <= 64:
        fields["scan.id"] = "A string of 1-64 characters."
    if scan["trigger"] not in _SCAN_TRIGGERS:
        fields["scan.trigger"] = "One of start, schedule, request."
    for key in ("started_at", "finished_at"):
        value = scan.get(key)
        if value is None:
            continue
        try:
            parsed = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            fields[f"scan.{key}"] = "An ISO 8601 time with a time zone."
    for key in ("tables", "columns", "sampled_columns"):
        value = scan.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
            fields[f"scan.{key}"] = "A non-negative integer."
    duration = scan.get("duration_ms", 0)
    if (
        not isinstance(duration, int | float)
        or isinstance(duration, bool)
        or not 0 <= duration < 10**9
    ):
        fields["scan.duration_ms"] = "A non-negative number of milliseconds."
    return fields


@csrf_exempt
@require_POST
def schema_view(request: HttpRequest) -> JsonResponse:
    """Body: {snapshot: {tables: [...]}, findings: [{schema, table, column, classification,
    confidence, share?, detector?}], scan?: {id, trigger, started_at, finished_at, tables,
    columns, sampled_columns, duration_ms}}; findings name a classification, never a
    value. Anything malformed is refused whole (400) and nothing is stored."""
    principal = _principal(request)
    if principal is None:
        return _unauthorized()
    data, problem = _json_body(request, SCHEMA_MAX_BYTES)
    if problem is not None:
        return problem
    message = _check_keys(data, {"snapshot", "findings"}, {"scan"})
    if message:
        return _json_error(400, message)
    try:
        validate_schema_snapshot(data["snapshot"])
    except ValidationError as exc:
        return _json_error(400, "The snapshot is not valid.", {"snapshot": exc.messages})
    findings = data["findings"]
    if (
        not isinstance(findings, list)
        or len(findings) > MAX_FINDINGS
        or not all(_finding_valid(f) for f in findings)
    ):
        return _json_error(
            400,
            "findings: a list of {schema, table, column, classification, confidence, "
            "share?, detector?}.",
        )
    scan = data.get("scan")
    if scan is not None:
        fields = _scan_problems(scan)
        if fields:
            return _json_error(400, "The scan summary is not valid.", fields)
    try:
        result = sidecar_schema_report(
            datasource_id=principal.datasource_id,
            snapshot=data["snapshot"],
            findings=findings,
            scan=scan,
            sidecar_id=principal.sidecar_id,
        )
    except ValidationError as exc:
        return _json_error(400, "The report is not valid.", {"findings": exc.messages})
    return JsonResponse(result, status=202)


@csrf_exempt
@require_POST
def audit_view(request: HttpRequest) -> JsonResponse:
    """Body: {events: [{id, ts, type, ...}]}, the proxy's spool lines, stored in the
    audit trail under the token's datasource. Idempotent by ``id``: a re-sent
    event is answered as a duplicate and stored once. (Under uvicorn,
    ``governance.sidecar_asgi`` serves this path itself, off Django's one sync
    thread, through the same ``audit_reply``.)"""
    length = request.headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) > AUDIT_MAX_BYTES):
        return _json_error(413, f"The body is larger than {AUDIT_MAX_BYTES} bytes.")
    status, payload = audit_reply(
        authorization=request.headers.get("Authorization"),
        content_type=request.content_type or "",
        body=request.read(AUDIT_MAX_BYTES + 1),
    )
    response = JsonResponse(payload, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="warden-sidecar"'
    return response


def audit_reply(
    *, authorization: str | None, content_type: str, body: bytes
) -> tuple[int, dict[str, Any]]:
    """Authenticate, validate and store one audit batch; (status, JSON answer)."""

    def error(status: int, message: str) -> tuple[int, dict[str, Any]]:
        return status, {"error": {"code": status, "message": message}}

    principal = sidecar_authenticate(authorization)
    if principal is None:
        return error(401, "A valid sidecar token is required.")
    if len(body) > AUDIT_MAX_BYTES:
        return error(413, f"The body is larger than {AUDIT_MAX_BYTES} bytes.")
    if content_type.split(";")[0].strip() != "application/json":
        return error(415, "Send application/json.")
    try:
        data = _audit_json(body)
    except (ValueError, UnicodeDecodeError):
        return error(400, "The body is not valid JSON.")
    message = _check_keys(data, {"events"})
    if message:
        return error(400, message)
    events = data["events"]
    if not isinstance(events, list) or len(events) > AUDIT_MAX_EVENTS:
        return error(400, f"events: a list of at most {AUDIT_MAX_EVENTS} objects.")
    if not all(
        isinstance(e, dict)
        and isinstance(e.get("id"), str)
        and 0 < len(e["id"]) <= 64
        and isinstance(e.get("ts"), int | float)
        and not isinstance(e["ts"], bool)
        and isinstance(e.get("type", ""), str)
        for e in events
    ):
        return error(400, "Every event needs a string id (at most 64 characters) and a numeric ts.")
    result = audit_events_ingest(
        sidecar_id=principal.sidecar_id, datasource_id=principal.datasource_id, events=events
    )
    return 202, result


def _audit_json(body: bytes) -> Any:
    """The batch, parsed by orjson where that gives what the standard parser gives.

    The standard parser took a quarter of the ingest path's Python time. orjson
    refuses some JSON the standard parser takes, such as a lone surrogate escape:
    those batches are parsed the slow way rather than refused, so one odd event
    cannot jam a sidecar's spool. orjson also reads an integer beyond 64 bits as a
    float, silently: a number of 19 digits or more takes the slow way too."""
    if not _has_long_number(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


_DIGITS_AS_NUL = bytes.maketrans(b"0123456789", b"\0" * 10)
_LONG_NUMBERS = tuple(lead + b"\0" * 19 for lead in (b":", b",", b"[", b":-", b",-", b"[-"))


def _has_long_number(body: bytes) -> bool:
    """Whether a JSON number of 19 digits or more follows a colon, comma or bracket.

    Digits become NUL and whitespace goes, then a few substring searches: a quarter
    of orjson's own time, where the equivalent regular expression took three times
    orjson's. A string that merely contains such a run only costs the slow path."""
    plain = body.translate(_DIGITS_AS_NUL, b" \t\n\r")
    return any(pattern in plain for pattern in _LONG_NUMBERS)


# Threads the ASGI app runs audit batches on (governance.sidecar_asgi). Each keeps
# one database connection, whatever DB_CONN_MAX_AGE says: count them per process.
AUDIT_WORKERS = 4


def audit_reply_on_kept_connection(
    *, authorization: str | None, content_type: str, body: bytes
) -> tuple[int, dict[str, Any]]:
    """``audit_reply`` for the ASGI app's audit threads, on a connection kept between batches.

    These threads run outside Django's request cycle. A new backend per batch
    (fork, authentication, the partitions' relation cache built again) cost
    PostgreSQL more than the batch's own rows. A connection that failed or no
    longer answers is closed, and the next batch opens a fresh one."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()
    try:
        return audit_reply(authorization=authorization, content_type=content_type, body=body)
    except BaseException:
        connection.close()
        raise


@csrf_exempt
def approvals_view(request: HttpRequest, request_id: str | None = None) -> JsonResponse:
    """POST opens (or reuses) an approval request; GET <id> reads its state (see
    ``approvals.sidecar_api``; under ASGI the GET long-poll never reaches Django)."""
    from approvals import sidecar_api as approvals_api

    principal = _principal(request)
    if principal is None:
        return _unauthorized()
    if request_id is None:
        if request.method != "POST":
            return _json_error(405, "Use POST.")
        data, problem = _json_body(request, approvals_api.OPEN_MAX_BYTES)
        if problem is not None:
            return problem
        return approvals_api.approval_open_view(request, principal, data)
    if request.method != "GET":
        return _json_error(405, "Use GET.")
    return approvals_api.approval_state_view(request, principal, request_id)


@require_GET
def keys_view(request: HttpRequest) -> JsonResponse:
    """The public keys bundles may be signed with (public: sidecars pin them)."""
    keys = [
        {"key_id": kid, "alg": "ed25519", "public_key": pub}
        for kid, pub in published_public_keys().items()
    ]
    return JsonResponse({"keys": keys})
