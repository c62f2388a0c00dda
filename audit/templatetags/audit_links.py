"""Links to audit events that carry their time, so opening one is a primary-key
lookup in one partition rather than a search of every partition by id."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from audit.sink.chain import micros

register = template.Library()


@register.filter
def event_url(event: Any) -> str:
    """``{{ event|event_url }}`` → ``/audit/events/<id>/?at=<µs since epoch>``."""
    return f"{reverse('audit:event_detail', args=[event.id])}?at={micros(event.occurred_at)}"
