"""Template helpers for the approval pages: SQL highlighting and the pending badge.

Highlighting is done on the server with Pygments' PostgreSQL lexer, so the
page needs no script and no asset from elsewhere; the statement is already
redacted (literals replaced) before it reaches the control plane, and Pygments
escapes every token, so nothing in it can become markup.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django import template
from django.utils.dateparse import parse_datetime
from django.utils.formats import date_format
from django.utils.safestring import SafeString, mark_safe
from django.utils.timezone import localtime
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PostgresLexer

from approvals import live, pages

register = template.Library()

# Short class names ("sql-k" for a keyword); the colours live in warden.css.
_LEXER = PostgresLexer()
_FORMATTER = HtmlFormatter(nowrap=True, classprefix="sql-")


@register.filter
def sql(text: Any) -> SafeString:
    """The statement as highlighted HTML, for inside ``<pre><code>``."""
    return mark_safe(highlight(str(text or ""), _LEXER, _FORMATTER).rstrip("\n"))  # noqa: S308 - Pygments escapes


@register.simple_tag(takes_context=True)
def pending_approvals(context: template.Context) -> int | None:
    """The viewer's pending-approval count, or None when they do not review."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not pages.may_review(user):
        return None
    return pages.pending_count(user=user)


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


@register.filter
def timeline_text(event: dict[str, Any]) -> str:
    """One line of detail under a timeline entry (never a literal from the statement:
    the details hold counts, names, times and the deny reason the reviewer wrote)."""
    detail = event.get("detail") or {}
    kind = event.get("kind")
    if kind == "approval":
        text = f"{detail.get('approvals', '?')} of {detail.get('required', '?')} approvals"
        if detail.get("uses"):
            text += f"; asked for at most {detail['uses']} uses"
        return text
    if kind == "approved":
        text = f"Grant: {detail.get('uses', '?')} use(s) until {_when(detail.get('expires_at'))}"
        reviewers = ", ".join(detail.get("reviewers") or [])
        return f"{text}; approved by {reviewers}" if reviewers else text
    if kind == "denied":
        return str(detail.get("reason", ""))
    if kind == "grant_used":
        return f"{detail.get('uses_left', '?')} use(s) left"
    if kind == "created" and "required_approvals" in detail:
        return f"Risk {detail.get('risk', '?')}; needs {detail['required_approvals']} approval(s)"
    return ""


def _when(iso: Any) -> str:
    at = parse_datetime(iso) if isinstance(iso, str) else None
    if at is None:
        return "?"
    return date_format(localtime(at), "DATETIME_FORMAT")
