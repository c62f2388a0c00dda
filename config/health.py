"""Probes: /healthz says the process answers; /readyz that PostgreSQL and Redis do too.

Neither needs a session or touches the ORM's models, so a load balancer can
call them as often as it likes. /readyz answers 503 and names what failed.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_postgres() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means "not ready"; say which kind
        return type(exc).__name__
    return None


def _check_redis() -> str | None:
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means "not ready"; say which kind
        return type(exc).__name__
    return None


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"postgresql": _check_postgres(), "redis": _check_redis()}
    failed = sorted(name for name, error in checks.items() if error)
    body = {
        "status": "ok" if not failed else "unavailable",
        "checks": {
            name: ("ok" if error is None else f"failed: {error}") for name, error in checks.items()
        },
    }
    return JsonResponse(body, status=200 if not failed else 503)
