"""Template context every page gets."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def page_path(request: HttpRequest) -> dict[str, Any]:
    """``page_path``: the page the user is on, for the ``next`` of its forms.

    In a fragment htmx fetched or posted for (a row swapped in after a move, a
    drag), ``request.get_full_path`` is that endpoint's, often one that only takes
    POST: a form rendered there would send the user back to it after a plain submit
    (as when the fragment's htmx handlers are not attached yet) and get a 405. The
    page is the browser's address, which htmx sends (same host only)."""
    htmx = getattr(request, "htmx", None)
    current = htmx.current_url_abs_path if htmx else None
    return {"page_path": current or request.get_full_path()}
