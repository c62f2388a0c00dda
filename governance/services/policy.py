"""Policy services: what the sidecars enforce, and who may change it.

Classifications and the classification of each column (a person's, a scanner's, or
inherited by a view from its source columns), masking rules, the ordered
guardrails, and break-glass grants that lift a safety-floor rule for one identity.
Also the checks the other service modules share: who may edit policy, and which
guardrails name a team or classification.

Every change here can alter a bundle, so each service records history and then
calls ``bundles_mark_stale`` for the object it changed.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import Max
from django.utils import timezone

from audit.models import ChangeAction
from audit.sink.history import change_record_create, object_snapshot
from audit.sink.trail import audit_control_event
from governance.bundles import bundles_mark_stale
from governance.errors import ApplicationError
from governance.models import (
    BREAK_GLASS_LIVE_STATES,
    BreakGlassGrant,
    BreakGlassState,
    Classification,
    ClassificationRejection,
    ClassificationSource,
    ClassificationStatus,
    ColumnClassification,
    Datasource,
    Environment,
    GuardrailAction,
    GuardrailRule,
    Identity,
    MaskingRule,
    Role,
    Team,
)
from governance.permissions import can_edit_policy, user_role
from governance.selectors import production_datasources, production_datasources_affected
from governance.services.history import _create, _delete, _update

REASON_MAX_LENGTH = 2000


def _require_policy_editor(actor: Any) -> None:
    if not can_edit_policy(actor):
        raise PermissionDenied("Only admin and security may change policy.")


# --- changes that weaken production ------------------------------------------------------
#
# One rule for every policy object: a change that touches a protective field of an
# object protecting a production datasource, before or after the change, needs a
# reason; so does deleting such an object. Judged on the object's state before and
# after the change, so no sequence of small steps (narrow it to sandbox, then
# disable it) gets around it. docs/api.md, "Changes that weaken production".

# The fields that may change WITHOUT a reason: they name or describe an object, or
# record who decided, and protect nothing. Every other field is protective, so a
# field added to a model later needs a reason until someone lists it here.
FREE_FIELDS: dict[type[models.Model], frozenset[str]] = {
    GuardrailRule: frozenset({"name", "message"}),
    MaskingRule: frozenset({"name"}),
    ColumnClassification: frozenset(
        {"source", "confidence", "confirmed_by", "confirmed_at", "detector", "share"}
    ),
    # Who may connect or review is access, governed by its own history.
    Datasource: frozenset({"name", "description", "connect_teams", "review_teams"}),
    Environment: frozenset({"description"}),
}


def _clean_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if len(reason) > REASON_MAX_LENGTH:
        raise ValidationError({"reason": f"At most {REASON_MAX_LENGTH} characters."})
    return reason


def _refuse_without_reason(change: str, affected: list[str]) -> None:
    raise ValidationError(
        {
            "reason": f"{change} affects production ({', '.join(affected)}): give a reason. "
            "It is kept in the configuration history and the audit trail."
        }
    )


def _only_strengthens(obj: Any, touched: set[str]) -> bool:
    """The few changes of a protective field that can only add protection."""
    if isinstance(obj, GuardrailRule):
        # Block is the strongest action: a block rule switched on can only stop more.
        return touched == {"enabled"} and obj.enabled and obj.action == GuardrailAction.BLOCK
    if isinstance(obj, ColumnClassification):
        # Confirming the classification a column already has.
        return touched == {"status"} and obj.status == ClassificationStatus.CONFIRMED
    return False


def _protective_changes(obj: Any, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    touched = changed - FREE_FIELDS[type(obj)]
    return [] if _only_strengthens(obj, touched) else sorted(touched)


@contextmanager
def _careful(obj: Any, reason: str, what: str) -> Iterator[None]:
    """Around an update of ``obj`` (inside the service's transaction): after it, refuse
    it without a ``reason`` when it touched a protective field and ``obj`` protects
    production before or after. The refusal rolls the update back."""
    before = object_snapshot(obj)
    affected = production_datasources_affected(obj)
    yield
    if reason:
        return
    touched = _protective_changes(obj, before, object_snapshot(obj))
    if not touched:
        return
    affected += [name for name in production_datasources_affected(obj) if name not in affected]
    if affected:
        _refuse_without_reason(f"Changing {', '.join(touched)} of {what}", affected)


def _reason_to_delete(obj: Any, reason: str | None, what: str) -> str:
    """The cleaned reason for deleting ``obj``; required when it protects production."""
    reason = _clean_reason(reason)
    if not reason:
        affected = production_datasources_affected(obj)
        if affected:
            _refuse_without_reason(f"Deleting {what}", affected)
    return reason


def _order_weakens(before: list[GuardrailRule], after: list[GuardrailRule]) -> list[str]:
    """The production datasources whose guardrails ``after`` puts in another relative
    order than ``before`` (the first matching rule decides, so an allow rule moved
    above a block rule lets through what was blocked). A guardrail that protects no
    production datasource moves freely."""
    production = production_datasources()
    affected = {g.pk: production_datasources_affected(g, production) for g in before + after}
    moved = []
    for datasource in production:

        def sequence(rules: list[GuardrailRule], name: str = datasource.name) -> list[int]:
            return [g.pk for g in rules if name in affected[g.pk]]

        if sequence(before) != sequence(after):
            moved.append(datasource.name)
    return moved


def _guardrails_naming(key: str, value: str) -> list[str]:
    """Names of guardrails whose list condition ``key`` mentions ``value``."""
    return list(
        GuardrailRule.objects.filter(**{f"conditions__{key}__contains": [value]}).values_list(
            "name", flat=True
        )
    )


# --- classifications ------------------------------------------------------------------


@transaction.atomic
def classification_create(
    *, actor: Any, name: str, level: str, description: str = ""
) -> Classification:
    _require_policy_editor(actor)
    classification = Classification(name=name, level=level, description=description)
    _create(actor, classification)
    bundles_mark_stale(obj=classification)
    return classification


@transaction.atomic
def classification_update(
    *, actor: Any, classification: Classification, data: dict[str, Any]
) -> Classification:
    """Change name, level or description. Built-in names are fixed; so are names in use."""
    _require_policy_editor(actor)
    classification = Classification.objects.select_for_update(no_key=True).get(pk=classification.pk)
    if "name" in data and data["name"] != classification.name:
        if classification.is_builtin:
            raise ValidationError({"name": "Built-in classifications cannot be renamed."})
        users = _guardrails_naming("classifications", classification.name)
        if users:
            raise ValidationError({"name": f"Guardrails refer to it by name: {', '.join(users)}."})
    _update(actor, classification, data, allowed={"name", "level", "description"})
    bundles_mark_stale(obj=classification)
    return classification


@transaction.atomic
def classification_delete(*, actor: Any, classification: Classification) -> None:
    _require_policy_editor(actor)
    if classification.is_builtin:
        raise ApplicationError(f"{classification.name} is built in and cannot be deleted.")
    users = _guardrails_naming("classifications", classification.name)
    if users:
        raise ApplicationError(
            f"{classification.name} is named in guardrails: {', '.join(users)}.",
            {"guardrails": users},
        )
    _delete(actor, classification, blocked_by="masking rules or column classifications")
    bundles_mark_stale(obj=classification)


@transaction.atomic
def column_classification_set(
    *,
    actor: Any,
    datasource: Datasource,
    schema_name: str,
    table_name: str,
    column_name: str,
    classification: Classification,
    source: str = ClassificationSource.MANUAL,
    confidence: float = 1.0,
    path: str = "",
    reason: str = "",
) -> ColumnClassification:
    """Classify one column, or one path inside it (create or replace).

    A manual classification is confirmed by the actor at once. A scanner
    (``auto``) finding is only a proposal, and never overrides a person's
    confirmed decision for the same column. Replacing the classification of a
    column on a production datasource needs a ``reason``.
    """
    _require_policy_editor(actor)
    reason = _clean_reason(reason)
    existing = (
        ColumnClassification.objects.select_for_update(no_key=True)
        .filter(
            datasource=datasource,
            schema_name=schema_name,
            table_name=table_name,
            column_name=column_name,
            path=path,  # "" is the whole column; a path inside it is another classification
        )
        .first()
    )
    if (
        existing is not None
        and source == ClassificationSource.AUTO
        and existing.source == ClassificationSource.MANUAL
        and existing.status == ClassificationStatus.CONFIRMED
    ):
        return existing
    manual = source == ClassificationSource.MANUAL
    values = {
        "classification": classification,
        "source": source,
        "confidence": 1.0 if manual else confidence,
        "status": ClassificationStatus.CONFIRMED if manual else ClassificationStatus.PROPOSED,
        "confirmed_by": actor if manual else None,
        "confirmed_at": timezone.now() if manual else None,
    }
    if existing is None:
        column = ColumnClassification(
            datasource=datasource,
            schema_name=schema_name,
            table_name=table_name,
            column_name=column_name,
            path=path,
            **values,
        )
        _create(actor, column)
        bundles_mark_stale(obj=column)
        column_classifications_inherit(datasource=datasource)
        return column
    with _careful(existing, reason, f"the classification of {existing.column_path}"):
        _update(actor, existing, values, allowed=set(values), reason=reason)
    bundles_mark_stale(obj=existing)
    column_classifications_inherit(datasource=datasource)
    return existing


@transaction.atomic
def column_classification_review(
    *,
    actor: Any,
    column_classification: ColumnClassification,
    status: str,
    reason: str = "",
) -> ColumnClassification:
    """Confirm or reject a (scanner-)proposed or auto-applied classification.

    A rejection is remembered per (column, classification): later scans do not
    propose it again. Views inheriting from the column follow the decision.
    Rejecting one on a production datasource needs a ``reason``.
    """
    _require_policy_editor(actor)
    if status not in {ClassificationStatus.CONFIRMED, ClassificationStatus.REJECTED}:
        raise ValidationError({"status": "Choose confirmed or rejected."})
    column = ColumnClassification.objects.select_for_update(no_key=True).get(
        pk=column_classification.pk
    )
    reason = _clean_reason(reason)
    with _careful(column, reason, f"{column.classification.name} for {column.column_path}"):
        _update(
            actor,
            column,
            {"status": status, "confirmed_by": actor, "confirmed_at": timezone.now()},
            allowed={"status", "confirmed_by", "confirmed_at"},
            reason=reason,
        )
    bundles_mark_stale(obj=column)
    if status == ClassificationStatus.REJECTED:
        _rejection_remember(actor=actor, column=column, classification=column.classification)
    column_classifications_inherit(datasource=column.datasource)
    return column


def _rejection_remember(
    *, actor: Any, column: ColumnClassification, classification: Classification
) -> None:
    ClassificationRejection.objects.get_or_create(
        datasource=column.datasource,
        schema_name=column.schema_name,
        table_name=column.table_name,
        column_name=column.column_name,
        path=column.path,
        classification=classification,
        defaults={"rejected_by": actor},
    )


@transaction.atomic
def column_classification_reclassify(
    *,
    actor: Any,
    column_classification: ColumnClassification,
    classification: Classification,
    reason: str = "",
) -> ColumnClassification:
    """A person picks another classification for a proposed one: the new one is confirmed
    (manual), and the scanner's choice is remembered as rejected for this column. On a
    production datasource, with a ``reason``."""
    _require_policy_editor(actor)
    reason = _clean_reason(reason)
    column = ColumnClassification.objects.select_for_update(no_key=True).get(
        pk=column_classification.pk
    )
    previous = column.classification
    values = {
        "classification": classification,
        "source": ClassificationSource.MANUAL,
        "confidence": 1.0,
        "status": ClassificationStatus.CONFIRMED,
        "confirmed_by": actor,
        "confirmed_at": timezone.now(),
        "inherited_from": "",
    }
    with _careful(column, reason, f"the classification of {column.column_path}"):
        _update(actor, column, values, allowed=set(values), reason=reason)
    bundles_mark_stale(obj=column)
    if previous.pk != classification.pk:
        _rejection_remember(actor=actor, column=column, classification=previous)
    column_classifications_inherit(datasource=column.datasource)
    return column


@transaction.atomic
def column_classification_delete(
    *, actor: Any, column_classification: ColumnClassification, reason: str = ""
) -> None:
    """Remove a column's classification; on a production datasource, with a ``reason``."""
    _require_policy_editor(actor)
    reason = _reason_to_delete(
        column_classification,
        reason,
        f"the classification of {column_classification.column_path}",
    )
    _delete(actor, column_classification, blocked_by="other objects", reason=reason)
    bundles_mark_stale(obj=column_classification)
    column_classifications_inherit(datasource=column_classification.datasource)


# --- masking rules --------------------------------------------------------------------


@transaction.atomic
def masking_rule_create(
    *,
    actor: Any,
    name: str,
    classification: Classification,
    strategy: str,
    params: dict[str, Any] | None = None,
    exempt_teams: Iterable[Team] = (),
    environments: list[str] | None = None,
    enabled: bool = True,
) -> MaskingRule:
    _require_policy_editor(actor)
    rule = MaskingRule(
        name=name,
        classification=classification,
        strategy=strategy,
        params=params if params is not None else {},
        environments=environments if environments is not None else [],
        enabled=enabled,
    )
    _create(actor, rule, {"exempt_teams": exempt_teams})
    bundles_mark_stale(obj=rule)
    return rule


MASKING_RULE_FIELDS = {
    "name",
    "classification",
    "strategy",
    "params",
    "exempt_teams",
    "environments",
    "enabled",
}


@transaction.atomic
def masking_rule_update(
    *, actor: Any, rule: MaskingRule, data: dict[str, Any], reason: str = ""
) -> MaskingRule:
    """Change any of MASKING_RULE_FIELDS (``exempt_teams``: an iterable of Team).

    Changing anything but its name, when it masks in production before or after the
    change, needs a ``reason`` (as deleting does).
    """
    _require_policy_editor(actor)
    rule = MaskingRule.objects.select_for_update(no_key=True).get(pk=rule.pk)
    reason = _clean_reason(reason)
    with _careful(rule, reason, f"masking rule {rule.name}"):
        _update(actor, rule, data, allowed=MASKING_RULE_FIELDS, reason=reason)
    bundles_mark_stale(obj=rule)
    return rule


@transaction.atomic
def masking_rule_delete(*, actor: Any, rule: MaskingRule, reason: str = "") -> None:
    """Delete a masking rule; one that masks in production needs a ``reason``."""
    _require_policy_editor(actor)
    reason = _reason_to_delete(rule, reason, f"masking rule {rule.name}")
    _delete(actor, rule, blocked_by="other objects", reason=reason)
    bundles_mark_stale(obj=rule)


# --- guardrails -----------------------------------------------------------------------


def _lock_guardrails() -> list[GuardrailRule]:
    # Positions are one sequence; moving or inserting locks all of it so two
    # concurrent edits cannot interleave.
    return list(GuardrailRule.objects.select_for_update(no_key=True).order_by("position", "id"))


@transaction.atomic
def guardrail_create(
    *,
    actor: Any,
    name: str,
    action: str,
    conditions: dict[str, Any] | None = None,
    message: str = "",
    datasource: Datasource | None = None,
    enabled: bool = True,
    position: int | None = None,
    reason: str = "",
) -> GuardrailRule:
    """Add a guardrail at ``position`` (1 = first), or last when not given.

    Inserting an enabled allow or review rule before a guardrail that protects the
    same production datasource overrides it, so that needs a ``reason`` (as moving
    one there does, guardrail_reorder)."""
    _require_policy_editor(actor)
    reason = _clean_reason(reason)
    rules = _lock_guardrails()
    last = rules[-1].position if rules else 0
    if position is None or position > last:
        position = last + 1
    elif position < 1:
        raise ValidationError({"position": "Positions start at 1."})
    else:
        GuardrailRule.objects.filter(position__gte=position).update(
            position=models.F("position") + 1
        )
    guardrail = GuardrailRule(
        name=name,
        action=action,
        conditions=conditions if conditions is not None else {},
        message=message,
        datasource=datasource,
        enabled=enabled,
        position=position,
    )
    _create(actor, guardrail, reason=reason)
    if not reason and guardrail.enabled and guardrail.action != GuardrailAction.BLOCK:
        # ``rules`` still hold their positions from before the insertion.
        after = [
            *(g for g in rules if g.position < position),
            guardrail,
            *(g for g in rules if g.position >= position),
        ]
        moved = _order_weakens([*rules, guardrail], after)
        if moved:
            _refuse_without_reason(
                f"Inserting {guardrail.action} rule {name} at position {position}", moved
            )
    bundles_mark_stale(obj=guardrail)
    return guardrail


GUARDRAIL_FIELDS = {"name", "action", "conditions", "message", "datasource", "enabled"}


@transaction.atomic
def guardrail_update(
    *, actor: Any, guardrail: GuardrailRule, data: dict[str, Any], reason: str = ""
) -> GuardrailRule:
    """Change any of GUARDRAIL_FIELDS; use guardrail_reorder to change the order.

    Changing anything but its name and message, when it applies to a production
    datasource before or after the change, needs a ``reason`` (switching a block
    rule on only adds protection and needs none).
    """
    _require_policy_editor(actor)
    guardrail = GuardrailRule.objects.select_for_update(no_key=True).get(pk=guardrail.pk)
    reason = _clean_reason(reason)
    with _careful(guardrail, reason, f"guardrail {guardrail.name}"):
        _update(actor, guardrail, data, allowed=GUARDRAIL_FIELDS, reason=reason)
    bundles_mark_stale(obj=guardrail)
    return guardrail


@transaction.atomic
def guardrail_set_enabled(
    *, actor: Any, guardrail: GuardrailRule, enabled: bool, reason: str = ""
) -> GuardrailRule:
    return guardrail_update(
        actor=actor, guardrail=guardrail, data={"enabled": enabled}, reason=reason
    )


# The configuration-history object id of the order of all guardrails.
GUARDRAIL_ORDER_ID = "order"


def _guardrails_renumber(
    actor: Any, rules: list[GuardrailRule], order: list[GuardrailRule], reason: str
) -> None:
    """Give ``order`` positions 1..n and record the whole new order as ONE change
    (the object "guardrail order", before and after as lists of names): a reorder
    is one decision, whatever number of rows it moves. One that changes the order of
    the guardrails protecting a production datasource needs a ``reason``."""
    reason = _clean_reason(reason)
    before = [rule.name for rule in rules]
    after = [rule.name for rule in order]
    if before == after:
        return
    if not reason:
        moved = _order_weakens(rules, order)
        if moved:
            _refuse_without_reason("Changing the order of its guardrails", moved)
    for new_position, rule in enumerate(order, start=1):
        if rule.position != new_position:
            rule.position = new_position
            # The deferred unique constraint is checked at commit, after all moves.
            GuardrailRule.objects.filter(pk=rule.pk).update(position=new_position)
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=GuardrailRule(),
        object_id=GUARDRAIL_ORDER_ID,
        object_repr="Guardrail order",
        before={"order": before},
        after={"order": after},
        reason=reason,
    )
    bundles_mark_stale(obj=GuardrailRule())  # no datasource: every bundle


@transaction.atomic
def guardrail_reorder(*, actor: Any, order: list[int], reason: str = "") -> list[GuardrailRule]:
    """Put every guardrail in ``order`` (their ids, first evaluated first), in one
    change. ``order`` must name each guardrail exactly once: a list made from a
    page that is out of date (a guardrail added or deleted since) is refused."""
    _require_policy_editor(actor)
    rules = _lock_guardrails()
    by_id = {rule.pk: rule for rule in rules}
    if not isinstance(order, list) or not all(
        isinstance(pk, int) and not isinstance(pk, bool) for pk in order
    ):
        raise ValidationError({"order": "A list of guardrail ids."})
    unknown = [pk for pk in order if pk not in by_id]
    if unknown:
        raise ValidationError(
            {"order": f"No such guardrail: {', '.join(str(pk) for pk in unknown[:10])}."}
        )
    if len(set(order)) != len(order):
        raise ValidationError({"order": "A guardrail is listed twice."})
    missing = [rule.name for rule in rules if rule.pk not in set(order)]
    if missing:
        raise ValidationError(
            {
                "order": f"Every guardrail must be listed; missing: {', '.join(missing[:10])}. "
                "Reload: the list has changed."
            }
        )
    new_order = [by_id[pk] for pk in order]
    _guardrails_renumber(actor, rules, new_order, reason)
    return new_order


@transaction.atomic
def guardrail_move(
    *,
    actor: Any,
    guardrail: GuardrailRule,
    position: int | None = None,
    direction: str | None = None,
    reason: str = "",
) -> GuardrailRule:
    """Move to ``position`` (1 = first) or one step ``direction`` "up"/"down".

    Positions are renumbered 1..n afterwards, recorded as one change of the
    guardrail order (``guardrail_reorder``).
    """
    _require_policy_editor(actor)
    if (position is None) == (direction is None):
        raise ValidationError({"position": "Give either a position or a direction."})
    rules = _lock_guardrails()
    ids = [r.pk for r in rules]
    if guardrail.pk not in ids:
        raise ApplicationError("This guardrail no longer exists.")
    index = ids.index(guardrail.pk)
    if direction is not None:
        if direction not in {"up", "down"}:
            raise ValidationError({"direction": "Use 'up' or 'down'."})
        target = index - 1 if direction == "up" else index + 1
    else:
        assert position is not None
        if position < 1:
            raise ValidationError({"position": "Positions start at 1."})
        target = position - 1
    target = max(0, min(target, len(rules) - 1))
    order = list(rules)
    moved = order.pop(index)
    order.insert(target, moved)
    _guardrails_renumber(actor, rules, order, reason)
    return moved


@transaction.atomic
def guardrail_delete(*, actor: Any, guardrail: GuardrailRule, reason: str = "") -> None:
    """Delete a guardrail; one that applies to a production datasource needs a ``reason``."""
    _require_policy_editor(actor)
    reason = _reason_to_delete(guardrail, reason, f"guardrail {guardrail.name}")
    _delete(actor, guardrail, blocked_by="other objects", reason=reason)
    bundles_mark_stale(obj=guardrail)


def next_guardrail_position() -> int:
    return (GuardrailRule.objects.aggregate(m=Max("position"))["m"] or 0) + 1


def column_classifications_inherit(*, datasource: Datasource) -> int:
    """Inherit until nothing changes, so a view over a view inherits too (bounded: a
    chain deeper than this waits for the next scan). Returns how many changed."""
    total = 0
    for _ in range(_INHERIT_MAX_DEPTH):
        changed = _inherit_pass(datasource=datasource)
        total += changed
        if not changed:
            break
    return total


_INHERIT_MAX_DEPTH = 8


def _inherit_pass(*, datasource: Datasource) -> int:
    """Give each view column the classification of its source columns (the snapshot's
    ``sources``), so the engine masks reads through the view like the table.

    With several classified sources the most sensitive wins. An inherited
    classification follows its source: it goes when the source is no longer
    enforced, and a person's own decision on the view column is left alone.
    Returns how many were created or changed.
    """
    from governance.models import Level

    # Whole columns only: a view column inherits its source column's classification,
    # not those of paths inside it (the scan judges the view's own values per path).
    # A provisional source (enforced before review) protects its views too.
    protect_threshold = datasource.environment.protect_threshold
    rows = {
        (c.schema_name, c.table_name, c.column_name): c
        for c in ColumnClassification.objects.select_for_update(no_key=True)
        .filter(datasource=datasource, path="")
        .select_related("classification")
    }
    rejected = set(
        ClassificationRejection.objects.filter(datasource=datasource, path="").values_list(
            "schema_name", "table_name", "column_name", "classification__name"
        )
    )
    wanted: dict[tuple[str, str, str], tuple[ColumnClassification, str]] = {}
    for table in (datasource.schema_snapshot or {}).get("tables", []):
        if table.get("kind", "table") not in {"view", "materialized_view"}:
            continue
        for column in table.get("columns", []):
            key = (table["schema"], table["name"], column["name"])
            best: tuple[ColumnClassification, str] | None = None
            for path in column.get("sources") or []:
                parts = path.rsplit(".", 2)
                source = rows.get(tuple(parts)) if len(parts) == 3 else None  # type: ignore[arg-type]
                if source is None or source.enforcement(protect_threshold) is None:
                    continue
                if (*key, source.classification.name) in rejected:
                    continue
                rank = Level(source.classification.level).rank
                if best is None or rank > Level(best[0].classification.level).rank:
                    best = (source, path)
            if best is not None:
                wanted[key] = best
    changed = 0
    for key, row in rows.items():
        if row.source == ClassificationSource.INHERITED and key not in wanted:
            _delete(None, row, blocked_by="other objects")
            bundles_mark_stale(obj=row)
            changed += 1
    for key, (source, path) in wanted.items():
        current = rows.get(key)
        values = {
            "classification": source.classification,
            "source": ClassificationSource.INHERITED,
            "confidence": source.confidence,
            "status": source.status,
            "confirmed_by": source.confirmed_by,
            "confirmed_at": source.confirmed_at,
            "detector": "",
            "share": None,
            "inherited_from": path,
        }
        if current is None:
            inherited = ColumnClassification(
                datasource=datasource,
                schema_name=key[0],
                table_name=key[1],
                column_name=key[2],
                **values,
            )
            _create(None, inherited)
            bundles_mark_stale(obj=inherited)
            changed += 1
        elif current.source == ClassificationSource.MANUAL or (
            current.status == ClassificationStatus.CONFIRMED
            and current.source != ClassificationSource.INHERITED
        ):
            continue  # a person decided this column
        elif any(getattr(current, k) != v for k, v in values.items()):
            _update(None, current, values, allowed=set(values))
            bundles_mark_stale(obj=current)
            changed += 1
    return changed


# --- break-glass grants -----------------------------------------------------------------


def _require_admin(actor: Any, what: str) -> None:
    if user_role(actor) != Role.ADMIN:
        raise PermissionDenied(f"Only admins may {what} break-glass grants.")


def _break_glass_event(action: str, actor: Any, grant: BreakGlassGrant) -> None:
    """Every state change of a grant in the datasource's audit chain (never a secret)."""
    audit_control_event(
        action=action,
        actor=actor,
        datasource=grant.datasource,
        target=f"breakglassgrant:{grant.pk} {grant.identity.name}"[:300],
        outcome=grant.state,
        detail={
            "grant": str(grant.pk),
            "identity": grant.identity.name,
            "rules": list(grant.rules),
            "reason": grant.reason[:1000],
            "expires_at": grant.expires_at.isoformat(),
            "created_by": grant.created_by.get_username() if grant.created_by else None,
        },
    )


def _break_glass_lock(grant: BreakGlassGrant) -> BreakGlassGrant:
    return (
        BreakGlassGrant.objects.select_for_update(no_key=True, of=("self",))
        .select_related("datasource__environment", "identity", "created_by")
        .get(pk=grant.pk)
    )


def _break_glass_save(
    actor: Any, grant: BreakGlassGrant, before: dict[str, Any], event: str
) -> BreakGlassGrant:
    grant.full_clean()
    grant.save()
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=grant,
        before=before,
        after=object_snapshot(grant),
    )
    bundles_mark_stale(obj=grant)
    _break_glass_event(event, actor, grant)
    return grant


@transaction.atomic
def break_glass_create(
    *,
    actor: Any,
    datasource: Datasource,
    identity: Identity,
    rules: Iterable[str],
    reason: str,
    expires_at: datetime.datetime,
) -> BreakGlassGrant:
    """Lift the safety-floor ``rules`` for ``identity`` on ``datasource`` until ``expires_at``
    (at most ``BREAK_GLASS_MAX_HOURS`` away). Admins only.

    In production (criticality 5) the grant is ``pending`` until a second admin approves
    it (``break_glass_approve``); elsewhere it is ``active`` at once and reaches the
    sidecars with the next bundle.
    """
    _require_admin(actor, "make")
    datasource = Datasource.objects.select_related("environment").get(pk=datasource.pk)
    grant = BreakGlassGrant(
        datasource=datasource,
        identity=identity,
        rules=list(rules) if not isinstance(rules, str) else rules,
        reason=(reason or "").strip(),
        expires_at=expires_at,
        created_by=actor,
        state=BreakGlassState.PENDING
        if datasource.environment.is_production
        else BreakGlassState.ACTIVE,
    )
    _create(actor, grant)
    bundles_mark_stale(obj=grant)
    _break_glass_event("break_glass.created", actor, grant)
    return grant


def _break_glass_decide(
    *, actor: Any, grant: BreakGlassGrant, verb: str
) -> tuple[BreakGlassGrant, dict[str, Any]]:
    _require_admin(actor, verb)
    grant = _break_glass_lock(grant)
    if grant.state != BreakGlassState.PENDING:
        raise ApplicationError(
            f"Only a pending grant can be {verb}d; this one is {grant.get_state_display().lower()}."
        )
    if grant.created_by_id is not None and grant.created_by_id == actor.pk:
        raise PermissionDenied(
            f"A second admin must {verb} this grant: you asked for it. Revoke it to withdraw it."
        )
    if grant.expires_at <= timezone.now():
        raise ApplicationError("This grant expired before anyone decided it.")
    return grant, object_snapshot(grant)


@transaction.atomic
def break_glass_approve(*, actor: Any, grant: BreakGlassGrant) -> BreakGlassGrant:
    """A second admin (not the one who asked) puts a pending grant in force."""
    grant, before = _break_glass_decide(actor=actor, grant=grant, verb="approve")
    grant.state = BreakGlassState.ACTIVE
    grant.approved_by = actor
    grant.approved_at = timezone.now()
    return _break_glass_save(actor, grant, before, "break_glass.approved")


@transaction.atomic
def break_glass_deny(*, actor: Any, grant: BreakGlassGrant) -> BreakGlassGrant:
    """A second admin (not the one who asked) refuses a pending grant."""
    grant, before = _break_glass_decide(actor=actor, grant=grant, verb="deny")
    grant.state = BreakGlassState.DENIED
    grant.denied_by = actor
    grant.denied_at = timezone.now()
    return _break_glass_save(actor, grant, before, "break_glass.denied")


@transaction.atomic
def break_glass_revoke(*, actor: Any, grant: BreakGlassGrant) -> BreakGlassGrant:
    """End a pending or active grant now (any admin, its creator included)."""
    _require_admin(actor, "revoke")
    grant = _break_glass_lock(grant)
    if grant.state not in BREAK_GLASS_LIVE_STATES:
        raise ApplicationError(
            f"This grant is already {grant.get_state_display().lower()}; nothing to revoke."
        )
    before = object_snapshot(grant)
    grant.state = BreakGlassState.REVOKED
    grant.revoked_by = actor
    grant.revoked_at = timezone.now()
    return _break_glass_save(actor, grant, before, "break_glass.revoked")


@transaction.atomic
def break_glass_expire(*, now: datetime.datetime | None = None) -> list[int]:
    """Mark every pending or active grant whose ``expires_at`` has passed ``expired``
    (beat, every minute). Recorded like any change, with the actor "system", so each
    affected datasource's bundle is recompiled without the grant. Returns their ids."""
    now = now or timezone.now()
    due = (
        BreakGlassGrant.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
        .select_related("datasource__environment", "identity", "created_by")
        .filter(state__in=BREAK_GLASS_LIVE_STATES, expires_at__lte=now)
        .order_by("pk")
    )
    datasources: list[int] = []
    for grant in due:
        before = object_snapshot(grant)
        grant.state = BreakGlassState.EXPIRED
        _break_glass_save(None, grant, before, "break_glass.expired")
        if grant.datasource_id not in datasources:
            datasources.append(grant.datasource_id)
    return datasources
