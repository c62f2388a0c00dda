"""Who is calling the gateway: a sidecar's bearer token, bound to one datasource.

Tokens are looked up by SHA-256 digest. The digest -> (sidecar, datasource)
mapping is cached in Redis for a few minutes so a conditional GET or a
long-poll costs no SQL; revoking or rotating a token marks its entry revoked
when the change commits (``governance.sidecar_auth``), so a revoked token stops
working at once in Redis, and in a server process's memory once the ``forget``
message reaches it over pub/sub (``PrincipalCache``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, JsonResponse

from gateway.http import UNAUTHENTICATED, check_keys, error_response, read_json
from gateway.longpoll import off_loop
from governance.bundles import redis_client
from governance.models import Sidecar, token_digest
from governance.sidecar_auth import CACHE_SECONDS, REVOKED, auth_cache_key

_BEARER_RE = re.compile(r"^Bearer ([A-Za-z0-9_\-]{16,128})$")


@dataclass(frozen=True)
class SidecarPrincipal:
    sidecar_id: int
    datasource_id: int


def bearer_digest(header: str | None) -> str | None:
    """The digest of a well-formed ``Bearer`` token, else None (never the token itself)."""
    match = _BEARER_RE.match(header or "")
    return token_digest(match.group(1)) if match else None


def _decode(raw: bytes) -> SidecarPrincipal:
    sidecar_id, _, datasource_id = raw.decode().partition(":")
    return SidecarPrincipal(int(sidecar_id), int(datasource_id))


def _lookup_db(digest: str) -> SidecarPrincipal | None:
    row = (
        Sidecar.objects.filter(token_digest=digest, revoked_at__isnull=True)
        .values_list("pk", "datasource_id")
        .first()
    )
    if row is None:
        return None
    principal = SidecarPrincipal(row[0], row[1])
    redis_client().set(
        auth_cache_key(digest),
        f"{principal.sidecar_id}:{principal.datasource_id}",
        ex=CACHE_SECONDS,
        nx=True,  # never over a revocation that committed after the query above
    )
    return principal


def sidecar_authenticate(header: str | None) -> SidecarPrincipal | None:
    """The sidecar behind an ``Authorization`` header, or None."""
    digest = bearer_digest(header)
    if digest is None:
        return None
    cached = redis_client().get(auth_cache_key(digest))
    if cached == REVOKED:
        return None
    return _decode(cached) if cached else _lookup_db(digest)


def sidecar_json_call(
    request: HttpRequest, limit: int, required: set[str], optional: set[str]
) -> tuple[SidecarPrincipal, Any] | JsonResponse:
    """The sidecar behind a JSON call and its body, its keys checked; else the answer
    refusing it (401, 413, 415, or 400 naming the keys)."""
    principal = sidecar_authenticate(request.headers.get("Authorization"))
    if principal is None:
        return error_response(401, UNAUTHENTICATED)
    data, problem = read_json(request, limit)
    if problem is not None:
        return problem
    message = check_keys(data, required, optional)
    if message:
        return error_response(400, message)
    return principal, data


class PrincipalCache:
    """Per-process memory of recent tokens, for the hot path of the bundle call.

    Entries live ``ttl`` seconds, and the change hub drops one as soon as a
    ``forget`` message for its digest arrives (revocation, rotation), or all of
    them while it is not subscribed, so memory never outlives a revocation by
    more than the pub/sub delivery time.
    """

    def __init__(self, ttl: float = 60.0, size: int = 100_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[float, SidecarPrincipal]] = {}
        # Bumped by every forget: a lookup that began before one must not remember
        # what it found (``put``), which may be the token just revoked.
        self.forgets = 0
        # Whether the hub hears forget messages now: while it does not, nothing is
        # remembered (the hub clears all and sets this when subscribed again).
        self.listening = False

    def get(self, digest: str) -> SidecarPrincipal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: SidecarPrincipal, forgets: int) -> None:
        """Remember ``principal``, found by a lookup that began when ``forgets`` was
        the count of forgets; not if one has come since, nor while not listening."""
        if forgets != self.forgets or not self.listening:
            return
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def forget(self, digest: str | None = None) -> None:
        self.forgets += 1
        if digest is None:
            self._entries.clear()
        else:
            self._entries.pop(digest, None)


async def asidecar_authenticate(
    header: str | None, aredis: object, memory: PrincipalCache | None = None
) -> SidecarPrincipal | None:
    """Async variant: memory, else one Redis GET, else one SQL query off the loop
    (its connection given back at once: a long-poll must not hold one)."""
    digest = bearer_digest(header)
    if digest is None:
        return None
    forgets = 0
    if memory is not None:
        remembered = memory.get(digest)
        if remembered is not None:
            return remembered
        forgets = memory.forgets
    cached = await aredis.get(auth_cache_key(digest))  # type: ignore[attr-defined]
    if cached == REVOKED:
        return None
    principal = _decode(cached) if cached else await off_loop(_lookup_db, digest)
    if principal is not None and memory is not None:
        memory.put(digest, principal, forgets)
    return principal
