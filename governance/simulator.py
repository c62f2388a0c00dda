"""The policy simulator: what the sidecar would decide for an identity and a statement.

``policy_simulate`` compiles the datasource's current policy with the real
bundle compiler, loads it with the engine's own ``load_bundle`` and asks the
real engine (``explain=True``, so lineage is included), so a security engineer
sees exactly what enforcement would do, including the rewrite sent upstream.
To try a rule before enabling it, one disabled guardrail may be treated as
enabled, and/or one draft guardrail (validated like a real one, never saved)
added after the others. Nothing is written and the SQL is never stored or
logged: it is the analyst's own text and may hold literals that are PII. No
masking key is involved: hash masking calls a keyed function inside the
protected database, so the rewrite shows the call, not a key.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.utils import timezone

from governance import selectors
from governance.bundles import BundleCompileError, _conditions, bundle_compile
from governance.errors import ApplicationError
from governance.models import Datasource, GuardrailRule, Identity
from governance.permissions import can_view
from sidecar.engine import BundleError, Engine, SessionContext, compute_revision, load_bundle

MAX_SQL_LENGTH = 100_000


def _try_disabled_guardrail(
    *, user: Any, bundle: dict[str, Any], datasource: Datasource, pk: Any
) -> str:
    try:
        guardrail = selectors.guardrail_get(user=user, pk=pk)
    except Http404 as exc:  # unknown, out of scope or malformed: one answer for all
        raise ValidationError({"include_disabled_guardrail": ["No such guardrail."]}) from exc
    if guardrail.datasource_id not in (None, datasource.pk):
        raise ValidationError(
            {
                "include_disabled_guardrail": [
                    f"Guardrail {guardrail.name} applies to another datasource, not "
                    f"{datasource.name}."
                ]
            }
        )
    for entry in bundle["guardrails"]:
        if entry["name"] == guardrail.name:
            entry["enabled"] = True
    return guardrail.name


def _add_draft_guardrail(
    *, bundle: dict[str, Any], datasource: Datasource, draft: dict[str, Any]
) -> str:
    """Validate ``draft`` as the model would, then append it (enabled, evaluated last)."""
    if not isinstance(draft, dict):
        raise ValidationError(
            {"draft_guardrail": ["A JSON object: name, action, conditions, message."]}
        )
    unknown = set(draft) - {"name", "action", "conditions", "message"}
    if unknown:
        raise ValidationError(
            {"draft_guardrail": [f"Unknown fields: {', '.join(sorted(unknown))}."]}
        )
    rule = GuardrailRule(
        name=str(draft.get("name") or "draft"),
        position=0,
        enabled=True,
        conditions=draft.get("conditions") or {},
        action=str(draft.get("action") or ""),
        message=str(draft.get("message") or ""),
        datasource=datasource,
    )
    try:
        rule.full_clean(exclude=["position"], validate_unique=False)
    except ValidationError as exc:
        raise ValidationError(
            {"draft_guardrail": [f"{k}: {m}" for k, ms in exc.message_dict.items() for m in ms]}
        ) from exc
    if any(g["name"] == rule.name for g in bundle["guardrails"]):
        raise ValidationError(
            {
                "draft_guardrail": [
                    f"A guardrail named {rule.name} already exists; rename the draft."
                ]
            }
        )
    names = [c["name"] for c in bundle["classifications"]]
    last = max((g["position"] for g in bundle["guardrails"]), default=0)
    bundle["guardrails"].append(
        {
            "name": rule.name,
            "position": last + 1,
            "enabled": True,
            "conditions": _conditions(rule, names),
            "action": rule.action,
            "message": rule.message,
        }
    )
    return rule.name


def _identity_notes(bundle: dict[str, Any], datasource: Datasource, name: str) -> list[str]:
    """Say in plain words why an identity the bundle does not carry is refused."""
    if any(i["name"] == name for i in bundle["identities"]):
        return []
    known = Identity.objects.filter(name=name).first()
    if known is None:
        return [f"There is no identity named {name!r}: the sidecar refuses the connection."]
    if not known.is_active:
        return [f"Identity {name} is deactivated: the sidecar refuses it."]
    if known.expires_at is not None and known.expires_at <= timezone.now():
        return [f"Identity {name} has expired: the sidecar refuses it."]
    return [
        f"Identity {name} is in none of the teams allowed to connect to {datasource.name}: "
        f"the sidecar refuses it. Add one of its teams to the datasource's connect teams."
    ]


def policy_simulate(
    *,
    user: Any,
    datasource: Datasource,
    identity_name: str,
    sql: str,
    include_disabled_guardrail: Any = None,
    draft_guardrail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The engine's decision (JSON, with lineage) for ``identity_name`` sending ``sql``.

    Returns ``{"decision": Decision.to_json(), "notes": [...], "tried": [...]}``
    where ``tried`` names the guardrails simulated as enabled. Raises
    ``ValidationError`` for bad input and ``ApplicationError`` when the policy
    cannot be compiled.
    """
    if not can_view(user):
        raise PermissionDenied("Your role does not allow this.")
    if not sql.strip():
        raise ValidationError({"sql": ["Enter a statement to simulate."]})
    if len(sql) > MAX_SQL_LENGTH:
        raise ValidationError({"sql": [f"At most {MAX_SQL_LENGTH} characters."]})
    if not identity_name.strip():
        raise ValidationError({"identity": ["Name the identity that would send it."]})
    try:
        bundle = bundle_compile(datasource=datasource)
    except BundleCompileError as exc:
        raise ApplicationError(f"The current policy does not compile: {exc}") from exc
    tried: list[str] = []
    if include_disabled_guardrail not in (None, ""):
        tried.append(
            _try_disabled_guardrail(
                user=user, bundle=bundle, datasource=datasource, pk=include_disabled_guardrail
            )
        )
    if draft_guardrail:
        tried.append(
            _add_draft_guardrail(bundle=bundle, datasource=datasource, draft=draft_guardrail)
        )
    if tried:
        bundle.pop("revision")
        bundle["revision"] = compute_revision(bundle)
    try:
        loaded = load_bundle(bundle)
    except BundleError as exc:
        raise ApplicationError(f"The simulated policy is refused by the engine: {exc}") from exc
    decision = Engine(loaded).decide(
        identity=identity_name, sql=sql, session=SessionContext(), protocol="simple", explain=True
    )
    result = {
        "decision": decision.to_json(),
        "notes": _identity_notes(bundle, datasource, identity_name),
        "tried": tried,
    }
    return result
