"""HTML routes of the governance app."""

urlpatterns: list = []
