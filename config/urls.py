"""URL routes of the control plane: probes, sign-in, the management API and its docs, the UI."""

from collections.abc import Callable
from typing import Any

from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views import defaults

from config.api_docs import DocsView, SchemaView
from config.health import healthz, readyz
from governance.errors import error_body

# The admin signs in through allauth like everyone else: password, then TOTP, under
# allauth's rate limits (its own password-only form would skip both). As allauth
# documents: https://docs.allauth.org/en/latest/common/admin.html
admin.autodiscover()
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/docs/", DocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/sidecar/", include("gateway.urls")),
    path("api/v1/", include("approvals.api_urls")),
    path("api/v1/", include("governance.api_urls")),
    path("approvals/", include("approvals.urls")),
    path("audit/", include("audit.urls")),
    path("", include("governance.urls")),
]


# Outside DRF's views (an unknown /api/ URL, a crash) the API still answers in
# its one error shape; pages keep Django's (templated) error pages.
def _api_or_page(
    code: str, message: str, status: int, page: Callable[..., HttpResponse]
) -> Callable[..., HttpResponse]:
    def handler(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.path.startswith("/api/"):
            return JsonResponse(error_body(code, message), status=status)
        return page(request, *args, **kwargs)

    return handler


handler400 = _api_or_page("bad_request", "Bad request.", 400, defaults.bad_request)
handler403 = _api_or_page("permission_denied", "Forbidden.", 403, defaults.permission_denied)
handler404 = _api_or_page("not_found", "Not found.", 404, defaults.page_not_found)
handler500 = _api_or_page("server_error", "Server error.", 500, defaults.server_error)
