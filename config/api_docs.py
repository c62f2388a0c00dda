"""The OpenAPI schema (``/api/schema/``) and its Swagger UI (``/api/docs/``).

Both describe every endpoint, parameter and error of the management API: a map
for an attacker as much as for an integrator. So they answer signed-in users and
API tokens only, unless ``WARDEN_PUBLIC_API_DOCS`` is on. A signed-out browser
asking for the docs is sent to sign in; an API client gets 401 like elsewhere.

The docs page is drf-spectacular's split view: the page and its start-up script
are two responses, so the page needs no inline script under the CSP
(``config.csp``); ``templates/drf_spectacular/swagger_ui.html`` drops the inline
style too.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import BasePermission


class DocsAccess(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        if settings.WARDEN_PUBLIC_API_DOCS:
            return True
        return bool(request.user and request.user.is_authenticated)


class SchemaView(SpectacularAPIView):
    permission_classes = [DocsAccess]


class DocsView(SpectacularSwaggerSplitView):
    permission_classes = [DocsAccess]

    def handle_exception(self, exc: Exception) -> Any:
        if isinstance(exc, NotAuthenticated) and "HTTP_AUTHORIZATION" not in self.request.META:
            return redirect_to_login(self.request.get_full_path())
        return super().handle_exception(exc)
