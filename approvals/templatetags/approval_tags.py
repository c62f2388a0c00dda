"""Template helpers for the approval pages: what will run, the pending badge, timelines.

The statement is laid out and highlighted on the server (``approvals.sql_display``:
PostgreSQL's scanner, sqlglot's line breaks), so the page needs no script and no
asset from elsewhere. The statement is already redacted (literals replaced by
``$n``) before it reaches the control plane; the values a reviewer is shown come
beside it, and ``sql_display`` escapes every token and value, so nothing in them
can become markup.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any
from urllib.parse import urlencode

from django import template
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.safestring import SafeString, mark_safe

from approvals import live, pages, selectors, sql_display
from approvals.models import GrantBinding
from governance.permissions import Role, user_role

register = template.Library()


@register.filter
def sql(text: Any) -> SafeString:
    """The statement as highlighted HTML, for inside ``<pre><code>``, in its own layout
    (the short cells of "My requests")."""
    return mark_safe(sql_display.highlight(text, pretty=False))  # noqa: S308 - escaped there


@register.inclusion_tag("approvals/_what_runs.html")
def what_runs(approval: Any) -> dict[str, Any]:
    """The statement a reviewer approves, the values at its placeholders, the planner's
    estimate and what the grant will be bound to (``approvals/_what_runs.html``)."""
    pieces = sql_display.layout(str(approval.statement or ""))
    purged = approval.values_purged_at is not None
    values = () if purged else sql_display.shown_values(approval.values)
    return {
        "pk": approval.pk,
        "statement_html": mark_safe(sql_display.render(pieces, values)),  # noqa: S308 - escaped
        "purged": purged,
        "groups": sql_display.value_groups(values),
        "multi": sql_display.statement_count(pieces) > 1,
        # Without values, say so only where the statement has placeholders to fill.
        "not_sent": not purged and not values and sql_display.has_placeholders(pieces),
        "estimate": sql_display.estimate(approval.estimate),
        "any_values": approval.binding == GrantBinding.SHAPE,
    }


@register.simple_tag(takes_context=True)
def pending_approvals(context: template.Context) -> int | None:
    """The viewer's pending-approval count, or None when they do not review."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not pages.may_review(user):
        return None
    return pages.pending_count(user=user)


@register.simple_tag(takes_context=True)
def approvals_waiting(context: template.Context) -> dict[str, Any] | None:
    """Pending approvals for the home page, with where the count leads.

    A reviewer (or admin) gets their inbox. Security does not read requests but
    watches that they are decided: every datasource's count, linked to the held
    statements in the audit explorer since the oldest pending request. None for
    the roles that see neither."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    if pages.may_review(user):
        return {"count": pages.pending_count(user=user), "url": reverse("approvals:inbox")}
    if user_role(user) != Role.SECURITY:
        return None
    count, oldest = selectors.approvals_pending_everywhere(user=user)
    query: dict[str, str] = {"type": "statement", "outcome": "held"}
    if oldest is not None:
        query["since"] = oldest.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "count": count,
        "url": f"{reverse('audit:explorer')}?{urlencode(query)}",
        "held_statements": True,
    }


@register.simple_tag(takes_context=True)
def approvals_live_query(context: template.Context) -> str:
    """The query a live page polls with (``approvals.live``): the view's, read before
    it drew anything, or else the version now."""
    return str(context.get("live_query") or live.poll_query(live.approvals_version()))


@register.filter
def state_tally(requests: list[Any]) -> str:
    """ "2 approved, 1 denied" for a requester's history, most frequent first."""
    counts = Counter(str(r.state) for r in requests)
    return ", ".join(f"{n} {state}" for state, n in counts.most_common())


def _count(number: Any, noun: str) -> str:
    """ "1 use", "2 uses", "? uses" (a detail that lacks the number)."""
    if isinstance(number, int) and not isinstance(number, bool):
        return f"{number} {noun}{'' if number == 1 else 's'}"
    return f"? {noun}s"


@register.filter
def timeline_text(event: dict[str, Any]) -> str:
    """One line of detail under a timeline entry (never a literal from the statement:
    the details hold counts, names, times and the deny reason the reviewer wrote)."""
    detail = event.get("detail") or {}
    kind = event.get("kind")
    if kind == "approval":
        text = f"{detail.get('approvals', '?')} of {detail.get('required', '?')} approvals"
        if detail.get("uses"):
            text += f"; asked for at most {_count(detail['uses'], 'use')}"
        return text
    if kind == "approved":
        text = f"Grant: {_count(detail.get('uses'), 'use')} until {_when(detail.get('expires_at'))}"
        reviewers = ", ".join(detail.get("reviewers") or [])
        return f"{text}; approved by {reviewers}" if reviewers else text
    if kind == "denied":
        return str(detail.get("reason", ""))
    if kind == "grant_used":
        return f"{_count(detail.get('uses_left'), 'use')} left"
    if kind == "created" and "required_approvals" in detail:
        needs = _count(detail["required_approvals"], "approval")
        return f"Risk {detail.get('risk', '?')}; needs {needs}"
    return ""


def _when(iso: Any) -> str:
    at = parse_datetime(iso) if isinstance(iso, str) else None
    if at is None:
        return "?"
    # The pages' one format (``warden.when``), as plain text inside a sentence.
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
