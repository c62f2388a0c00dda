"""Management REST API routes."""

urlpatterns: list = []
