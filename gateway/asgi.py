"""How the gateway is served under ASGI: its waiting and bulk calls skip Django's middleware.

Some of the middleware is sync-only (the request ids, the admin MFA gate).
Django runs such a chain on a thread per request and calls the view from it,
so a long-poll under it would hold one thread per waiting sidecar for up to a
minute. The views marked ``direct`` (``gateway.http.sidecar_call``: the bundle,
the approval state, audit intake) are therefore served by Django's own ASGI
handler with no middleware at all: same URLconf, same views, same request and
response objects, the view's coroutine on the event loop. They need none of
it: no sessions, cookies, CSRF or pages; the token is their authentication.
Every other request, the gateway's small sync calls included, goes through
the full stack.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, resolve

PREFIX = "/api/v1/sidecar/"

ASGIApp = Any  # (scope, receive, send) -> Awaitable[None]


class DirectHandler(ASGIHandler):
    """Django's ASGI handler without the middleware."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        response = await super().get_response_async(request)
        # What CommonMiddleware would add: a length, not a chunked body.
        if not response.streaming and not response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
        return response


def served_directly(path: str) -> bool:
    """Whether ``path`` is a gateway call marked to skip the middleware."""
    if not path.startswith(PREFIX):
        return False
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return bool(getattr(match.func, "served_directly", False))


def with_gateway(django_application: ASGIApp) -> ASGIApp:
    """``django_application``, with the gateway's direct calls served without middleware."""
    direct = DirectHandler()

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and served_directly(scope["path"]):
            await direct(scope, receive, send)
        else:
            await django_application(scope, receive, send)

    return application
