"""Audit intake: the proxy's spooled events, stored in the audit trail under the token's datasource.

The busiest call after the bundle. Under ASGI it is served without Django's
middleware (``gateway.asgi``) and each batch runs on one of a few dedicated
threads that keep their database connection from batch to batch, rather than
on the request's own thread: batches of different chains then overlap their
database waits with each other's parsing, and no batch pays for a new backend.
"""

from __future__ import annotations

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpRequest, JsonResponse

from audit.sink.intake import EventRejected, audit_events_ingest
from gateway.auth import sidecar_authenticate
from gateway.http import UNAUTHENTICATED, check_keys, error_response, read_body, sidecar_call

AUDIT_MAX_BYTES = 4 * 1024 * 1024
AUDIT_MAX_EVENTS = 1000
# Threads ASGI servers run audit batches on. Each keeps one database connection,
# whatever DB_CONN_MAX_AGE says: count them per process.
AUDIT_WORKERS = 4
_audit_pool = ThreadPoolExecutor(max_workers=AUDIT_WORKERS, thread_name_prefix="audit-ingest")


@sidecar_call("POST", direct=True)
async def audit_view(request: HttpRequest) -> JsonResponse:
    """Body: {events: [{id, ts, type, ...}]}, the proxy's spool lines, stored in the
    audit trail under the token's datasource. Idempotent by ``id``: a re-sent
    event is answered as a duplicate and stored once."""
    body = read_body(request, AUDIT_MAX_BYTES)
    if isinstance(body, JsonResponse):
        return body
    reply = functools.partial(
        audit_reply,
        authorization=request.headers.get("Authorization"),
        content_type=request.content_type or "",
        body=body,
    )
    if isinstance(request, ASGIRequest):
        return await asyncio.get_running_loop().run_in_executor(
            _audit_pool, functools.partial(_on_kept_connection, reply)
        )
    # Under WSGI (runserver, the test client) on the request's thread and connection.
    return await sync_to_async(reply)()


NESTED_TOO_DEEPLY = "The body nests JSON too deeply."


def audit_reply(*, authorization: str | None, content_type: str, body: bytes) -> JsonResponse:
    """Authenticate, validate and store one audit batch."""
    principal = sidecar_authenticate(authorization)
    if principal is None:
        return error_response(401, UNAUTHENTICATED)
    if content_type.split(";")[0].strip() != "application/json":
        return error_response(415, "Send application/json.")
    try:
        data = _audit_json(body)
    except (ValueError, UnicodeDecodeError):
        return error_response(400, "The body is not valid JSON.")
    except RecursionError:  # nested deeper than the parser goes: no event is
        return error_response(400, NESTED_TOO_DEEPLY)
    message = check_keys(data, {"events"})
    if message:
        return error_response(400, message)
    events = data["events"]
    if not isinstance(events, list) or len(events) > AUDIT_MAX_EVENTS:
        return error_response(400, f"events: a list of at most {AUDIT_MAX_EVENTS} objects.")
    try:  # each event's id, ts and types are the sink's to check (EventRejected)
        result = audit_events_ingest(
            sidecar_id=principal.sidecar_id, datasource_id=principal.datasource_id, events=events
        )
    except EventRejected as refused:
        # Nothing of the batch was stored; the sidecar keeps it in its spool and
        # logs this message (which names the version or key, never a value).
        return error_response(refused.status, refused.message)
    except RecursionError:  # the scrub walks what the parser took (it goes deeper)
        return error_response(400, NESTED_TOO_DEEPLY)
    return JsonResponse(result, status=202)


def _on_kept_connection(reply: functools.partial[JsonResponse]) -> JsonResponse:
    """``reply`` on one of the audit threads, on a connection kept between batches.

    These threads run outside Django's request cycle. A new backend per batch
    (fork, authentication, the partitions' relation cache built again) cost
    PostgreSQL more than the batch's own rows. A connection that failed or no
    longer answers is closed, and the next batch opens a fresh one."""
    if connection.connection is not None and not connection.is_usable():
        connection.close()
    try:
        return reply()
    except BaseException:
        connection.close()
        raise


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
