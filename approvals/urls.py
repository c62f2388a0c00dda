"""HTML routes of approvals, mounted at ``/approvals/``.

``approvals:detail`` is the page a held statement's error message names.
"""

from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("pending-count/", views.pending_badge, name="pending_badge"),
    path("mine/", views.my_requests, name="mine"),
    path("<uuid:pk>/", views.detail, name="detail"),
    path("<uuid:pk>/approve/", views.approve, name="approve"),
    path("<uuid:pk>/deny/", views.deny, name="deny"),
    path("<uuid:pk>/cancel/", views.cancel, name="cancel"),
    path("<uuid:pk>/revoke/", views.revoke, name="revoke"),
    path("settings/<int:datasource_pk>/", views.review_settings, name="review_settings"),
]
