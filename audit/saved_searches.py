"""Moved to ``audit.reporting.saved_searches``; this path stays for the callers that import it."""

from audit.reporting.saved_searches import (
    saved_search_create,
    saved_search_delete,
    saved_search_get,
    saved_search_list,
)

__all__ = [
    "saved_search_create",
    "saved_search_delete",
    "saved_search_get",
    "saved_search_list",
]
