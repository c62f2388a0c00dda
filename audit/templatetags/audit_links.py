"""Links to audit events that carry their time, so opening one is a primary-key
lookup in one partition rather than a search of every partition by id."""

from __future__ import annotations

import functools
from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from audit.sink.chain import micros
from governance.templatetags.warden import badge

register = template.Library()


@register.filter
def event_url(event: Any) -> str:
    """``{{ event|event_url }}`` → ``/audit/events/<id>/?at=<µs since epoch>``."""
    return f"{reverse('audit:event_detail', args=[event.id])}?at={micros(event.occurred_at)}"


# --- how an event reads in a list ------------------------------------------------------

_CHANGE_VERBS = {"create": "Created", "update": "Changed", "delete": "Deleted"}
# A statement's outcome when it went the way its action says: shown once, not twice.
_EXPECTED_OUTCOME = {"allow": "allowed", "block": "blocked", "review": "held"}


@functools.lru_cache(maxsize=128)
def _model_words(model_name: str) -> str:
    """``guardrailrule`` → "guardrail rule" (the model's verbose name), as history names it."""
    from django.apps import apps

    for model in apps.get_models():
        if model._meta.model_name == model_name:
            return str(model._meta.verbose_name)
    return model_name or "object"


@register.filter
def event_label(event: Any) -> str:
    """The words for the event's type ("Policy changed", "Database session started")."""
    from audit.sink.kinds import event_label as label

    return label(event.type)


@register.filter
def event_summary(event: Any) -> str:
    """What a control-plane event concerns, in one line: for ``policy.change``, the
    object and the fields changed ("Changed guardrail 3 No deletes: enabled, position").
    """
    extra = event.extra if isinstance(event.extra, dict) else {}
    target = str(extra.get("target") or "")
    detail = extra.get("detail") if isinstance(extra.get("detail"), dict) else {}
    if event.type == "policy.change":
        model, _, rest = target.partition(":")
        _pk, _, name = rest.partition(" ")
        what = f"{_model_words(model or str(detail.get('model', '')))} {name}".strip()
        verb = _CHANGE_VERBS.get(event.outcome, event.outcome or "Changed")
        fields = [str(f) for f in detail.get("fields") or []]
        if fields and event.outcome == "update":
            return f"{verb} {what}: {', '.join(fields)}"
        return f"{verb} {what}"
    if event.type.startswith("approval.") and target:
        who = detail.get("identity")
        return f"Request {target[:8]}" + (f" by {who}" if who else "")
    return target.partition(" ")[2] or target


@register.simple_tag
def event_outcome(event: Any) -> SafeString:
    """The decision as one badge ("blocked"), or the action then what came of it
    ("review → approved") when they differ; a control-plane event's outcome as text."""
    if not event.action:
        if event.type == "policy.change":  # its summary says created, changed, deleted
            return mark_safe("")
        return format_html("{}", event.outcome or "")
    expected = _EXPECTED_OUTCOME.get(event.action)
    css = f"badge badge-action-{event.action}"
    if event.outcome in ("", expected):
        return format_html('<span class="{}">{}</span>', css, expected or event.action)
    return format_html('<span class="{}">{}</span> → {}', css, event.action, event.outcome)


def _count_link(count: int, url: str, label: str) -> SafeString:
    if not count:
        return mark_safe("0")
    return format_html('<a href="{}" aria-label="{}">{}</a>', url, label, count)


@register.simple_tag
def report_row(r: dict[str, Any]) -> SafeString:
    """One row of the PII report, built in one go: a page shows up to 200 of them and
    the template engine's per-variable cost made that the page's slowest part."""
    row = r["row"]
    name = row.identity_name

    def reads(n: int, what: str) -> str:
        return f"{n} {what} read{'' if n == 1 else 's'} by {name}: show them"

    badges = format_html_join(
        " ",
        '<a class="badge badge-outline" href="{}" title="{} raw, {} masked">{} {}</a>',
        ((url, c.raw, c.masked, c.classification, c.statements) for c, url in r["classifications"]),
    )
    return format_html(
        '<tr data-identity="{}"><td><code>{}</code></td><td>{}</td>'
        '<td class="num read-raw" data-count="raw">{}</td>'
        '<td class="num" data-count="masked">{}</td>'
        '<td class="num" data-count="statements">{}</td><td>{}</td></tr>',
        name,
        name,
        badge(row.identity_kind, "kind"),
        _count_link(row.raw, r["raw_url"], reads(row.raw, "raw")),
        _count_link(row.masked, r["masked_url"], reads(row.masked, "masked")),
        _count_link(row.statements, r["url"], reads(row.statements, "PII")),
        badges,
    )
