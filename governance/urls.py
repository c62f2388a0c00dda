"""HTML routes of the governance app (the security-team UI), mounted at ``/``.

Each policy object gets list/new/detail/edit/delete routes named
``governance:<key>_<page>``; the key is the ``Resource.key`` in views.
"""

from django.urls import URLPattern, include, path

from governance import views

app_name = "governance"


def _resource_routes(prefix: str, res: views.Resource) -> list[URLPattern]:
    kw = {"res": res}
    return [
        path(f"{prefix}/", views.object_list, kw, name=f"{res.key}_list"),
        path(f"{prefix}/new/", views.object_create, kw, name=f"{res.key}_create"),
        path(f"{prefix}/<int:pk>/", views.object_detail, kw, name=f"{res.key}_detail"),
        path(f"{prefix}/<int:pk>/edit/", views.object_edit, kw, name=f"{res.key}_edit"),
        path(f"{prefix}/<int:pk>/delete/", views.object_delete, kw, name=f"{res.key}_delete"),
    ]


_PREFIXES = {
    "team": "teams",
    "identity": "identities",
    "datasource": "datasources",
    "classification": "classifications",
    "column": "columns",
    "masking_rule": "masking-rules",
    "detector": "detectors",
    "guardrail": "guardrails",
}

urlpatterns = [
    path("", views.home, name="home"),
    *(
        route
        for key, prefix in _PREFIXES.items()
        for route in _resource_routes(prefix, views.RESOURCES[key])
    ),
    path("changes/", views.change_list, name="change_list"),
    path("simulate/", views.simulate, name="simulate"),
    path("guardrails/<int:pk>/toggle/", views.guardrail_toggle, name="guardrail_toggle"),
    path("guardrails/<int:pk>/move/", views.guardrail_move, name="guardrail_move"),
    path("guardrails/order/", views.guardrail_order, name="guardrail_order"),
    path("masking-rules/preview/", views.masking_preview, name="masking_preview"),
    path("columns/<int:pk>/review/", views.column_review, name="column_review"),
    path("review/", views.review_queue, name="review_queue"),
    path(
        "datasources/<int:datasource_pk>/review/<int:pk>/",
        views.review_decide,
        name="review_decide",
    ),
    path("datasources/<int:pk>/scan/", views.datasource_scan, name="datasource_scan"),
    path("datasources/<int:pk>/break-glass/", views.break_glass_list, name="break_glass_list"),
    *(
        path(
            f"datasources/<int:datasource_pk>/break-glass/<int:pk>/{action}/",
            views.break_glass_action,
            {"action": action},
            name=f"break_glass_{action}",
        )
        for action in ("approve", "deny", "revoke")
    ),
    path(
        "datasources/<int:pk>/scan-schedule/",
        views.datasource_scan_schedule,
        name="datasource_scan_schedule",
    ),
    path("detectors/try/", views.detector_try, name="detector_try"),
    path("identities/<int:pk>/tokens/new/", views.token_issue, name="token_issue"),
    path("identities/<int:pk>/link/", views.identity_link, name="identity_link"),
    path("identities/<int:pk>/unlink/", views.identity_unlink, name="identity_unlink"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
    path("sidecars/", include("governance.sidecar_ui_urls")),
    path("account/api-tokens/", views.api_token_list, name="api_token_list"),
    path("account/api-tokens/<int:pk>/revoke/", views.api_token_revoke, name="api_token_revoke"),
]
