"""Template helpers for the security-team UI: the viewer's role, navigation state,
badges for environments/levels/actions, and a readable before/after diff for
configuration history. Presentation only; no policy decisions are made here."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from governance import selectors
from governance.permissions import can_edit_policy, user_role

register = template.Library()


@register.simple_tag(takes_context=True, name="user_role")
def user_role_tag(context: template.Context) -> str:
    """The viewer's role as a plain string: ``{% user_role as role %}``."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return "none"
    # Role is a TextChoices member; str() gives its value ("admin", ...).
    return str(user_role(user))


@register.simple_tag(takes_context=True)
def may_edit(context: template.Context) -> bool:
    request = context.get("request")
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated and can_edit_policy(user))


@register.simple_tag(takes_context=True)
def nav_current(context: template.Context, *prefixes: str) -> SafeString:
    """``aria-current="page"`` on the nav link of the section being shown."""
    request = context.get("request")
    match = getattr(request, "resolver_match", None)
    name = getattr(match, "url_name", "") or ""
    if any(name == p or name.startswith(p + "_") for p in prefixes):
        return mark_safe('aria-current="page"')
    return mark_safe("")


_ENV_CLASSES = {"production", "staging", "sandbox"}


@register.simple_tag
def badge(value: Any, family: str = "") -> SafeString:
    """A pill for a choice value: ``{% badge ds.environment "env" %}``."""
    text = str(value) if value is not None else "—"
    css = "badge"
    if family:
        key = text.lower()
        if family != "env" or key in _ENV_CLASSES:
            css += f" badge-{family}-{key}"
    return format_html('<span class="{}">{}</span>', css, text)


@register.filter
def provisional(column_classification: Any) -> bool:
    """Whether the bundle masks this classification only provisionally: a finding nobody
    reviewed, at or above its environment's protect threshold."""
    from governance.models import PROVISIONAL

    threshold = column_classification.datasource.environment.protect_threshold
    return bool(column_classification.enforcement(threshold) == PROVISIONAL)


@register.filter
def jsonpretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _short(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    # Nested objects (guardrail conditions, masking params) are shown key by key,
    # so a change of one condition reads as that condition, not as a JSON blob.
    if not isinstance(data, dict):
        return {prefix or "value": data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


_HIDDEN_KEYS = {"updated_at", "created_at", "digest", "scram_verifier"}


@register.simple_tag
def history_changes(record: Any) -> list[dict[str, str]]:
    """Rows of ``{"field", "before", "after"}`` for the keys a change touched."""
    before = _flatten(getattr(record, "before", None) or {})
    after = _flatten(getattr(record, "after", None) or {})
    rows = []
    for key in sorted(set(before) | set(after)):
        if key.split(".")[-1] in _HIDDEN_KEYS:
            continue
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        rows.append({"field": key, "before": _short(old), "after": _short(new)})
    return rows


_FLAG_TEXT = {
    "missing_where": ("no WHERE", "has WHERE"),
    "unbounded_classified_read": ("unbounded classified read", "bounded read"),
    "multi_statement": ("several statements", "one statement"),
    "unparseable": ("unparseable", "parseable"),
}


@register.simple_tag
def conditions_summary(guardrail: Any) -> str:
    """One line saying when a guardrail matches: "production · delete, update · no WHERE"."""
    cond = guardrail.normalised_conditions()
    parts = []
    for key in ("environments", "identity_kinds", "teams", "statement_kinds", "tables"):
        if cond[key]:
            parts.append(", ".join(cond[key]))
    if cond["classifications"]:
        parts.append("touches " + ", ".join(cond["classifications"]))
    if cond["functions"]:
        parts.append("calls " + ", ".join(cond["functions"]))
    for flag, (yes, no) in _FLAG_TEXT.items():
        if cond[flag] is not None:
            parts.append(yes if cond[flag] else no)
    return " · ".join(parts) if parts else "every statement"


@register.simple_tag(takes_context=True)
def production_affected(context: template.Context, obj: Any) -> str:
    """The production datasources ``obj`` protects, comma-separated ("" for none): a
    button that disables or removes it then asks for confirmation and a reason.
    Production datasources are read once per rendered page."""
    cache = context.render_context
    if "production_datasources" not in cache:
        cache["production_datasources"] = selectors.production_datasources()
    return ", ".join(
        selectors.production_datasources_affected(obj, cache["production_datasources"])
    )


@register.simple_tag(takes_context=True)
def reorder_affects(context: template.Context, guardrail: Any, direction: str) -> str:
    """The production datasources (comma-separated, "" for none) whose guardrails change
    order when ``guardrail`` moves one step ``direction``: both it and the neighbour it
    passes protect them, so the move asks for a reason (services.policy). The
    guardrails are read once per rendered page."""
    cache = context.render_context
    if "production_datasources" not in cache:
        cache["production_datasources"] = selectors.production_datasources()
    if "guardrail_scopes" not in cache:
        production = cache["production_datasources"]
        cache["guardrail_scopes"] = [
            (g.pk, set(selectors.production_datasources_affected(g, production)))
            for g in selectors.guardrail_list(user=context["request"].user)
        ]
    scopes = cache["guardrail_scopes"]
    ids = [pk for pk, _ in scopes]
    if guardrail.pk not in ids:
        return ""
    index = ids.index(guardrail.pk)
    other = index - 1 if direction == "up" else index + 1
    if not 0 <= other < len(scopes):
        return ""
    return ", ".join(sorted(scopes[index][1] & scopes[other][1]))
