"""What every sidecar call shares: its error body, its methods, how it reads a request.

Errors have one shape, the one deployed sidecars have always been sent::

    {"error": {"code": 400, "type": "invalid", "message": "...", "fields": {...}}}

``code`` stays the HTTP status as an integer (sidecars read only the status and
log the body, and changing the type of a key they may log is not worth it);
``type`` is the string code in the management API's vocabulary (its
``error.code``: ``invalid``, ``not_found``, ...); ``fields`` only when a field
is at fault.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

V = TypeVar("V", bound=Callable[..., Any])

UNAUTHENTICATED = "A valid sidecar token is required."

_TYPES = {
    400: "invalid",
    401: "not_authenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def error_body(status: int, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "error")
    error: dict[str, Any] = {"code": status, "type": kind, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def error_response(status: int, message: str, fields: dict[str, Any] | None = None) -> JsonResponse:
    """The one error answer of the gateway (a 401 also names the scheme to use)."""
    response = JsonResponse(error_body(status, message, fields), status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="warden-sidecar"'
    return response


def sidecar_call(*methods: str, direct: bool = False) -> Callable[[V], V]:
    """A gateway view: other methods are answered 405 in the error shape, no CSRF
    (sidecars send no cookies). ``direct``: served without Django's middleware
    under ASGI (``gateway.asgi``), for the calls that wait or carry bulk."""

    def decorate(view: V) -> V:
        def refused() -> JsonResponse:
            response = error_response(405, f"Use {' or '.join(methods)}.")
            response["Allow"] = ", ".join(methods)
            return response

        wrapper: Any
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                if request.method not in methods:
                    return refused()
                return await view(request, *args, **kwargs)  # type: ignore[no-any-return]

        else:

            @functools.wraps(view)
            def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                if request.method not in methods:
                    return refused()
                return view(request, *args, **kwargs)  # type: ignore[no-any-return]

        wrapper = csrf_exempt(wrapper)
        wrapper.served_directly = direct
        return wrapper  # type: ignore[no-any-return]

    return decorate


def read_body(request: HttpRequest, limit: int) -> bytes | JsonResponse:
    """The body, or a 413 when ``Content-Length`` or the bytes sent exceed ``limit``."""
    length = request.headers.get("Content-Length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        return error_response(413, f"The body is larger than {limit} bytes.")
    body = request.read(limit + 1)
    if len(body) > limit:
        return error_response(413, f"The body is larger than {limit} bytes.")
    return body


def read_json(request: HttpRequest, limit: int) -> tuple[Any, JsonResponse | None]:
    """(the parsed JSON body, None) or (None, the error answer)."""
    body = read_body(request, limit)
    if isinstance(body, JsonResponse):
        return None, body
    if request.content_type != "application/json":
        return None, error_response(415, "Send application/json.")
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError):
        return None, error_response(400, "The body is not valid JSON.")


def check_keys(data: Any, required: set[str], optional: set[str] | None = None) -> str | None:
    """What is wrong with the keys of a JSON object, or None."""
    if not isinstance(data, dict):
        return "The body must be a JSON object."
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - required - (optional or set()))
    parts = ([f"Missing: {', '.join(missing)}."] if missing else []) + (
        [f"Unknown: {', '.join(unknown)}."] if unknown else []
    )
    return " ".join(parts) or None


def site_root(request: HttpRequest) -> str:
    """This control plane's root URL as the caller named it, when its Host is allowed;
    else ``WARDEN_BASE_URL``. Links given to database clients are built on it."""
    try:
        return request.build_absolute_uri("/")
    except DisallowedHost:
        return settings.WARDEN_BASE_URL + "/"
