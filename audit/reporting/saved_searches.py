"""Saved explorer searches: a name for a query string, personal to its owner.

Another person's saved search answers 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import Http404

from audit.report_models import SavedSearch
from audit.reporting.selectors import require_audit_reader

_DUPLICATE = "You already have a saved search of that name."


def saved_search_list(*, user: Any) -> QuerySet[SavedSearch]:
    require_audit_reader(user)
    return SavedSearch.objects.filter(owner=user)


def saved_search_get(*, user: Any, pk: Any) -> SavedSearch:
    try:
        return saved_search_list(user=user).get(pk=int(pk))
    except (TypeError, ValueError, SavedSearch.DoesNotExist):
        raise Http404("No such saved search.") from None


def saved_search_create(*, actor: Any, name: str, query: str) -> SavedSearch:
    """Save ``query`` (the explorer's GET parameters, without a cursor) under ``name``."""
    require_audit_reader(actor)
    search = SavedSearch(owner=actor, name=name.strip(), query=query)
    if SavedSearch.objects.filter(owner=actor, name=search.name).exists():
        raise ValidationError({"name": _DUPLICATE})
    search.full_clean()
    try:
        with transaction.atomic():
            search.save()
    except IntegrityError:
        raise ValidationError({"name": _DUPLICATE}) from None
    return search


def saved_search_delete(*, actor: Any, search: SavedSearch) -> None:
    if search.owner_id != getattr(actor, "pk", None):
        raise Http404("No such saved search.")
    search.delete()
