"""The Content-Security-Policy header on every HTML response (``WARDEN_CSP``).

The pages run no inline code: scripts and styles come from ``static/`` (the
templates hold no ``<script>`` body, ``<style>``, ``style=`` or ``on…=``
attribute, and htmx runs without eval or its inline indicator styles), so a
markup injection that slipped past escaping still cannot run script or restyle
the page. A view that needs another policy sets the header itself.

Django's own debug pages (DEBUG only: the technical 404 and 500) are inline
HTML, CSS and JavaScript; they are left without the header so they stay usable.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def policy_text(policy: dict[str, list[str]]) -> str:
    return "; ".join(f"{name} {' '.join(sources)}".strip() for name, sources in policy.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.header = policy_text(settings.WARDEN_CSP)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            HEADER not in response
            and response.get("Content-Type", "").startswith("text/html")
            and not (settings.DEBUG and response.status_code in {404, 500})
        ):
            response[HEADER] = self.header
        return response
