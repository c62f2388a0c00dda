"""Template helpers for the security-team UI: the viewer's role, navigation state,
badges for environments/levels/actions, and a readable before/after diff for
configuration history. Presentation only; no policy decisions are made here."""

from __future__ import annotations

import datetime
import json
from typing import Any

from django import template
from django.utils.dateparse import parse_datetime
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


# --- date-times -------------------------------------------------------------------------
#
# One format everywhere: "2026-12-06 14:05 UTC" in a <time> whose ``datetime`` is
# the exact instant. static/js/warden.js rewrites the text into the browser's time
# zone and adds the relative time ("3 hours ago") as its title; without JavaScript
# the page stays in UTC, which the text says.

_WHEN_FORMATS = {"": "%Y-%m-%d %H:%M", "seconds": "%Y-%m-%d %H:%M:%S"}


def _instant(value: Any) -> datetime.datetime | None:
    if isinstance(value, str):
        try:
            value = parse_datetime(value)
        except ValueError:
            return None
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is None:  # a naive value is UTC here (TIME_ZONE, USE_TZ)
        value = value.replace(tzinfo=datetime.UTC)
    return value.astimezone(datetime.UTC)


@register.filter
def when(value: Any, precision: str = "") -> SafeString | str:
    """``{{ token.last_used_at|when|default:"never" }}``: the instant as a <time>
    element, "" for None (so ``default`` applies). ``when:"seconds"`` shows seconds.

    Takes a datetime or an ISO 8601 string (e.g. a snapshot's ``scanned_at``)."""
    at = _instant(value)
    if at is None:
        return "" if value in (None, "") else str(value)
    text = at.strftime(_WHEN_FORMATS.get(precision, _WHEN_FORMATS[""]))
    return format_html(
        '<time datetime="{}" data-when="{}">{} UTC</time>',
        at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        precision or "minutes",
        text,
    )


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
    if isinstance(value, str) and len(value) >= 16 and value[10:11] == "T" and _instant(value):
        return when(value)  # a recorded date-time, in the one format
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


_HIDDEN_KEYS = {"updated_at", "created_at", "digest", "token_digest", "scram_verifier"}


def _is_snapshot(value: Any) -> bool:
    """A datasource's schema snapshot: {"tables": [...], "scanned_at"?}."""
    if not (isinstance(value, dict) and set(value) <= {"tables", "scanned_at"}):
        return False
    tables = value.get("tables")
    # Not a guardrail's conditions, whose "tables" are names.
    return isinstance(tables, list) and all(isinstance(t, dict) and "name" in t for t in tables)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _schema_changes(before: Any, after: Any) -> list[dict[str, str]]:
    """Added, changed and dropped tables and columns between two snapshots, as lines."""
    from governance.scans import snapshot_drift

    drift = snapshot_drift(before or {}, after or {})
    lines = [{"kind": "added", "what": "table", "name": t} for t in drift["new_tables"]]
    lines += [{"kind": "added", "what": "column", "name": c} for c in drift["new_columns"]]
    lines += [
        {
            "kind": "changed",
            "what": "column",
            "name": c["column"],
            "detail": f"{c['from']} → {c['to']}",
        }
        for c in drift["changed_columns"]
    ]
    lines += [{"kind": "dropped", "what": "column", "name": c} for c in drift["dropped_columns"]]
    lines += [{"kind": "dropped", "what": "table", "name": t} for t in drift["dropped_tables"]]
    return lines


@register.simple_tag
def history_changes(record: Any) -> list[dict[str, Any]]:
    """Rows of ``{"field", "before", "after"}`` for the keys a change touched: every
    changed field of an update, every field set by a create, every field a delete
    removed. A schema snapshot is one row whose ``schema`` lists the tables and
    columns added, changed and dropped, not two JSON blobs."""
    before_obj = getattr(record, "before", None) or {}
    after_obj = getattr(record, "after", None) or {}
    rows: list[dict[str, Any]] = []
    for name in sorted(set(before_obj) | set(after_obj)):
        old, new = before_obj.get(name), after_obj.get(name)
        sides_ok = all(side is None or _is_snapshot(side) for side in (old, new))
        if sides_ok and (old or new) and old != new:
            schema = _schema_changes(old, new)
            if not schema:  # only ``scanned_at`` moved
                detail = "scanned again; no table or column changed"
                schema = [{"kind": "same", "what": "", "name": "", "detail": detail}]
            rows.append({"field": name, "schema": schema})
            before_obj = {k: v for k, v in before_obj.items() if k != name}
            after_obj = {k: v for k, v in after_obj.items() if k != name}
    before = _flatten(before_obj)
    after = _flatten(after_obj)
    for key in sorted(set(before) | set(after)):
        if key.split(".")[-1] in _HIDDEN_KEYS:
            continue
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if _empty(old) and _empty(new):
            continue
        rows.append(
            {
                "field": key,
                "before": "" if key not in before else _short(old),
                "after": "" if key not in after else _short(new),
            }
        )
    rows.sort(key=lambda row: row["field"])
    return rows


# --- sidecar counters -------------------------------------------------------------------

# The heartbeat's counter keys (sidecar/runner.py ``heartbeat_counters``), in words.
_COUNTER_LABELS = {
    "connections_total": "Connections since start",
    "connections_active": "Connections open",
    "statements_allow": "Statements allowed",
    "statements_review": "Statements held for review",
    "statements_block": "Statements blocked",
    "audit_spool_depth": "Audit events waiting to ship",
    "audit_shipped": "Audit events shipped",
    "audit_dropped": "Audit events dropped",
    "privileged_upstream": "Privileged database role",
    "workers": "Worker processes",
    "workers_serving": "Workers answering",
}
_REJECTION_WORDS = {
    "envelope": "not a signed envelope",
    "signature": "bad signature",
    "engine": "refused by the engine",
    "datasource": "for another datasource",
    "expiry": "no valid expiry",
    "expired": "expired",
    "replay": "older than the active one",
    "clock": "issued in the future",
    "refused": "not usable",
}


@register.filter
def counter_label(key: str) -> str:
    """``statements_allow`` → "Statements allowed"; an unknown key in plain words."""
    key = str(key)
    if key in _COUNTER_LABELS:
        return _COUNTER_LABELS[key]
    if key.startswith("bundle_rejected_"):
        reason = key.removeprefix("bundle_rejected_")
        return f"Bundles rejected ({_REJECTION_WORDS.get(reason, reason.replace('_', ' '))})"
    return key.replace("_", " ").capitalize()


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
