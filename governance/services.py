"""Write paths of the governance app: one function per use case, shared by UI and API.

Every service is keyword-only with ``actor`` first, runs in one transaction,
checks that the actor may do it (``PermissionDenied`` otherwise), calls
``full_clean()`` before saving and records configuration history
(``audit.ChangeRecord``) in the same transaction.

Update services take ``data: dict[str, Any]`` with the fields to change
(many-to-many fields take an iterable of objects), so a form's
``cleaned_data`` or a serializer's ``validated_data`` can be passed as is.

Field problems raise ``django.core.exceptions.ValidationError`` (a dict by
field); other expected failures raise ``governance.errors.ApplicationError``.
"""

from __future__ import annotations

import base64
import datetime
import secrets
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import Max, ProtectedError
from django.utils import timezone
from django.utils.text import slugify

from audit.models import ChangeAction
from audit.services import audit_control_event, object_snapshot
from audit.services import change_record_create as _change_record_create
from governance.bundles import bundles_mark_stale
from governance.errors import ApplicationError
from governance.models import (
    API_TOKEN_PREFIX,
    BREAK_GLASS_LIVE_STATES,
    SIDECAR_TOKEN_PREFIX,
    TOKEN_PREFIX,
    AccessToken,
    ApiToken,
    BreakGlassGrant,
    BreakGlassState,
    Classification,
    ClassificationRejection,
    ClassificationSource,
    ClassificationStatus,
    ColumnClassification,
    CustomDetector,
    Datasource,
    Environment,
    GuardrailRule,
    Identity,
    IdentityKind,
    MaskingRule,
    Membership,
    Role,
    ScanRun,
    ScanSchedule,
    ScanTrigger,
    Sidecar,
    Team,
    scram_sha256_verifier,
    token_digest,
)
from governance.permissions import can_edit_policy, can_manage_all_tokens, user_role

# --- shared helpers -------------------------------------------------------------------


def change_record_create(**kwargs: Any) -> Any:
    """Record history, and recompile the bundles the change feeds once it commits."""
    bundles_mark_stale(obj=kwargs["obj"])
    return _change_record_create(**kwargs)


def _require_policy_editor(actor: Any) -> None:
    if not can_edit_policy(actor):
        raise PermissionDenied("Only admin and security may change policy.")


def _m2m_names(model: type[models.Model]) -> set[str]:
    return {f.name for f in model._meta.many_to_many}


def _create(actor: Any, obj: models.Model, m2m: dict[str, Iterable[Any]] | None = None) -> None:
    obj.full_clean()
    obj.save()
    for name, values in (m2m or {}).items():
        getattr(obj, name).set(list(values))
    change_record_create(
        actor=actor, action=ChangeAction.CREATE, obj=obj, before=None, after=object_snapshot(obj)
    )


def _update(actor: Any, obj: models.Model, data: dict[str, Any], *, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValidationError({name: "This field cannot be changed here." for name in unknown})
    before = object_snapshot(obj)
    m2m = _m2m_names(type(obj))
    for name, value in data.items():
        if name not in m2m:
            setattr(obj, name, value)
    obj.full_clean()
    obj.save()
    for name, value in data.items():
        if name in m2m:
            getattr(obj, name).set(list(value))
    change_record_create(
        actor=actor, action=ChangeAction.UPDATE, obj=obj, before=before, after=object_snapshot(obj)
    )


def _delete(actor: Any, obj: models.Model, *, blocked_by: str) -> None:
    before = object_snapshot(obj)
    pk = obj.pk
    try:
        with transaction.atomic():
            obj.delete()
    except ProtectedError as exc:
        users = sorted({str(o) for o in exc.protected_objects})[:5]
        raise ApplicationError(
            f"{obj} is still used by {blocked_by}: {', '.join(users)}.",
            {"protected": users},
        ) from exc
    change_record_create(
        actor=actor, action=ChangeAction.DELETE, obj=obj, before=before, after=None, object_id=pk
    )


def _guardrails_naming(key: str, value: str) -> list[str]:
    """Names of guardrails whose list condition ``key`` mentions ``value``."""
    return list(
        GuardrailRule.objects.filter(**{f"conditions__{key}__contains": [value]}).values_list(
            "name", flat=True
        )
    )


# --- roles ----------------------------------------------------------------------------


@transaction.atomic
def membership_set_role(*, actor: Any, user: Any, role: Role | str) -> Membership:
    """Give ``user`` a role (admins only). Recorded in history."""
    if user_role(actor) != Role.ADMIN:
        raise PermissionDenied("Only admins may change roles.")
    membership, created = Membership.objects.get_or_create(user=user)
    before = None if created else object_snapshot(membership)
    membership.role = Role(role)
    membership.full_clean()
    membership.save()
    change_record_create(
        actor=actor,
        action=ChangeAction.CREATE if created else ChangeAction.UPDATE,
        obj=membership,
        before=before,
        after=object_snapshot(membership),
    )
    return membership


# --- teams ----------------------------------------------------------------------------


@transaction.atomic
def team_create(*, actor: Any, name: str, slug: str = "", description: str = "") -> Team:
    _require_policy_editor(actor)
    team = Team(name=name, slug=slug or slugify(name), description=description)
    _create(actor, team)
    return team


@transaction.atomic
def team_update(*, actor: Any, team: Team, data: dict[str, Any]) -> Team:
    """Change name, slug or description. A slug used by a guardrail cannot change."""
    _require_policy_editor(actor)
    team = Team.objects.select_for_update(no_key=True).get(pk=team.pk)
    if "slug" in data and data["slug"] != team.slug:
        users = _guardrails_naming("teams", team.slug)
        if users:
            raise ValidationError(
                {"slug": f"Guardrails refer to this team by its slug: {', '.join(users)}."}
            )
    _update(actor, team, data, allowed={"name", "slug", "description"})
    return team


@transaction.atomic
def team_delete(*, actor: Any, team: Team) -> None:
    _require_policy_editor(actor)
    users = _guardrails_naming("teams", team.slug)
    if users:
        raise ApplicationError(
            f"Team {team.name} is named in guardrails: {', '.join(users)}. Change them first.",
            {"guardrails": users},
        )
    _delete(actor, team, blocked_by="other objects")


# --- identities -----------------------------------------------------------------------


@transaction.atomic
def identity_create(
    *,
    actor: Any,
    name: str,
    kind: str,
    display_name: str = "",
    email: str = "",
    user: Any = None,
    owner: Identity | None = None,
    teams: Iterable[Team] = (),
    is_active: bool = True,
    expires_at: datetime.datetime | None = None,
) -> Identity:
    _require_policy_editor(actor)
    identity = Identity(
        name=name,
        kind=kind,
        display_name=display_name,
        email=email,
        user=user,
        owner=owner,
        is_active=is_active,
        expires_at=expires_at,
    )
    _create(actor, identity, {"teams": teams})
    return identity


IDENTITY_FIELDS = {
    "name",
    "kind",
    "display_name",
    "email",
    "user",
    "owner",
    "teams",
    "is_active",
    "expires_at",
}


@transaction.atomic
def identity_update(*, actor: Any, identity: Identity, data: dict[str, Any]) -> Identity:
    """Change any of IDENTITY_FIELDS (``teams``: an iterable of Team)."""
    _require_policy_editor(actor)
    identity = Identity.objects.select_for_update(no_key=True).get(pk=identity.pk)
    _update(actor, identity, data, allowed=IDENTITY_FIELDS)
    return identity


@transaction.atomic
def identity_delete(*, actor: Any, identity: Identity) -> None:
    _require_policy_editor(actor)
    _delete(actor, identity, blocked_by="the identities it owns")


# --- access tokens --------------------------------------------------------------------


def _may_manage_tokens_of(actor: Any, identity: Identity) -> bool:
    if can_manage_all_tokens(actor):
        return True
    if user_role(actor) != Role.REVIEWER:
        return False
    own = Identity.objects.filter(user=actor).first()
    return own is not None and (identity.pk == own.pk or identity.owner_id == own.pk)


@transaction.atomic
def token_issue(
    *,
    actor: Any,
    identity: Identity,
    name: str,
    expires_at: datetime.datetime | None = None,
) -> tuple[AccessToken, str]:
    """Mint an access token; the raw value is returned here once and never stored."""
    if not _may_manage_tokens_of(actor, identity):
        raise PermissionDenied("You may not issue tokens for this identity.")
    identity = Identity.objects.select_for_update(no_key=True).get(pk=identity.pk)
    if not identity.is_active or identity.is_expired:
        raise ApplicationError(f"{identity.name} is not active; it cannot get a token.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = AccessToken(
        identity=identity,
        name=name,
        prefix=raw[:10],
        digest=token_digest(raw),
        scram_verifier=scram_sha256_verifier(raw, salt=_identity_salt(identity)),
        created_by=actor,
        expires_at=expires_at,
    )
    _create(actor, token)
    _token_event("token.issued", actor, token, identity=identity.name)
    return token, raw


def _identity_salt(identity: Identity) -> bytes | None:
    """The SCRAM salt the identity's live tokens share, if it has one.

    A SCRAM exchange offers the client one salt, so the sidecar can only check the
    tokens whose verifiers were made with it: every token of an identity gets the
    same salt, and a second token works beside the first. (The tokens themselves
    are 256 random bits each; a shared salt weakens nothing.)
    """
    live = (
        AccessToken.objects.filter(identity=identity, revoked_at__isnull=True)
        .exclude(scram_verifier="")
        .order_by("-created_at")
        .values_list("scram_verifier", flat=True)
        .first()
    )
    if not live:
        return None
    try:
        return base64.b64decode(live.split("$")[1].split(":")[1], validate=True)
    except (IndexError, ValueError):
        return None


def _token_event(action: str, actor: Any, token: Any, **detail: Any) -> None:
    """Issue and revoke of access and API tokens in the audit trail (never the token)."""
    audit_control_event(
        action=action,
        actor=actor,
        target=f"{token._meta.model_name}:{token.pk} {token.name}"[:300],
        outcome="ok",
        detail={"kind": token._meta.model_name, "prefix": token.prefix, **detail},
    )


@transaction.atomic
def token_revoke(*, actor: Any, token: AccessToken) -> AccessToken:
    if not _may_manage_tokens_of(actor, token.identity):
        raise PermissionDenied("You may not revoke tokens of this identity.")
    token = AccessToken.objects.select_for_update(no_key=True).get(pk=token.pk)
    if token.revoked_at is not None:
        raise ApplicationError("This token is already revoked.")
    before = object_snapshot(token)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=token,
        before=before,
        after=object_snapshot(token),
    )
    _token_event("token.revoked", actor, token)
    return token


@transaction.atomic
def api_token_issue(
    *, actor: Any, name: str, expires_at: datetime.datetime | None = None
) -> tuple[ApiToken, str]:
    """Mint a management-API token acting as ``actor``; raw value returned once."""
    if not getattr(actor, "is_authenticated", False):
        raise PermissionDenied("Sign in first.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    raw = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user=actor, name=name, prefix=raw[:10], digest=token_digest(raw), expires_at=expires_at
    )
    _create(actor, token)
    _token_event("token.issued", actor, token)
    return token, raw


@transaction.atomic
def api_token_revoke(*, actor: Any, token: ApiToken) -> ApiToken:
    if token.user_id != actor.pk and user_role(actor) != Role.ADMIN:
        raise PermissionDenied("You may only revoke your own API tokens.")
    token = ApiToken.objects.select_for_update(no_key=True).get(pk=token.pk)
    if token.revoked_at is not None:
        raise ApplicationError("This token is already revoked.")
    before = object_snapshot(token)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=token,
        before=before,
        after=object_snapshot(token),
    )
    _token_event("token.revoked", actor, token)
    return token


# --- datasources ----------------------------------------------------------------------


@transaction.atomic
def datasource_create(
    *,
    actor: Any,
    name: str,
    environment: Environment,
    engine: str = "postgresql",
    dialect: str = "postgres",
    description: str = "",
    schema_snapshot: dict[str, Any] | None = None,
    connect_teams: Iterable[Team] = (),
    review_teams: Iterable[Team] = (),
) -> Datasource:
    _require_policy_editor(actor)
    datasource = Datasource(
        name=name,
        environment=environment,
        engine=engine,
        dialect=dialect,
        description=description,
        schema_snapshot=schema_snapshot if schema_snapshot is not None else {"tables": []},
    )
    _create(actor, datasource, {"connect_teams": connect_teams, "review_teams": review_teams})
    return datasource


DATASOURCE_FIELDS = {
    "name",
    "environment",
    "engine",
    "dialect",
    "description",
    "schema_snapshot",
    "connect_teams",
    "review_teams",
}


@transaction.atomic
def datasource_update(*, actor: Any, datasource: Datasource, data: dict[str, Any]) -> Datasource:
    """Change any of DATASOURCE_FIELDS. Moving environment re-checks its guardrails."""
    _require_policy_editor(actor)
    datasource = Datasource.objects.select_for_update(no_key=True).get(pk=datasource.pk)
    _update(actor, datasource, data, allowed=DATASOURCE_FIELDS)
    for guardrail in datasource.guardrails.all():
        try:
            guardrail.full_clean()
        except ValidationError as exc:
            raise ValidationError(
                {
                    "environment": f"Guardrail '{guardrail.name}' would become invalid: "
                    + "; ".join(exc.messages)
                }
            ) from exc
    return datasource


@transaction.atomic
def datasource_delete(*, actor: Any, datasource: Datasource) -> None:
    _require_policy_editor(actor)
    _delete(actor, datasource, blocked_by="other objects")


# --- classifications ------------------------------------------------------------------


@transaction.atomic
def classification_create(
    *, actor: Any, name: str, level: str, description: str = ""
) -> Classification:
    _require_policy_editor(actor)
    classification = Classification(name=name, level=level, description=description)
    _create(actor, classification)
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
) -> ColumnClassification:
    """Classify one column (create or replace).

    A manual classification is confirmed by the actor at once. A scanner
    (``auto``) finding is only a proposal, and never overrides a person's
    confirmed decision for the same column.
    """
    _require_policy_editor(actor)
    existing = (
        ColumnClassification.objects.select_for_update(no_key=True)
        .filter(
            datasource=datasource,
            schema_name=schema_name,
            table_name=table_name,
            column_name=column_name,
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
            **values,
        )
        _create(actor, column)
        column_classifications_inherit(datasource=datasource)
        return column
    _update(actor, existing, values, allowed=set(values))
    column_classifications_inherit(datasource=datasource)
    return existing


@transaction.atomic
def column_classification_review(
    *, actor: Any, column_classification: ColumnClassification, status: str
) -> ColumnClassification:
    """Confirm or reject a (scanner-)proposed or auto-applied classification.

    A rejection is remembered per (column, classification): later scans do not
    propose it again. Views inheriting from the column follow the decision.
    """
    _require_policy_editor(actor)
    if status not in {ClassificationStatus.CONFIRMED, ClassificationStatus.REJECTED}:
        raise ValidationError({"status": "Choose confirmed or rejected."})
    column = ColumnClassification.objects.select_for_update(no_key=True).get(
        pk=column_classification.pk
    )
    _update(
        actor,
        column,
        {"status": status, "confirmed_by": actor, "confirmed_at": timezone.now()},
        allowed={"status", "confirmed_by", "confirmed_at"},
    )
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
        classification=classification,
        defaults={"rejected_by": actor},
    )


@transaction.atomic
def column_classification_reclassify(
    *, actor: Any, column_classification: ColumnClassification, classification: Classification
) -> ColumnClassification:
    """A person picks another classification for a proposed one: the new one is confirmed
    (manual), and the scanner's choice is remembered as rejected for this column."""
    _require_policy_editor(actor)
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
    _update(actor, column, values, allowed=set(values))
    if previous.pk != classification.pk:
        _rejection_remember(actor=actor, column=column, classification=previous)
    column_classifications_inherit(datasource=column.datasource)
    return column


@transaction.atomic
def column_classification_delete(
    *, actor: Any, column_classification: ColumnClassification
) -> None:
    _require_policy_editor(actor)
    _delete(actor, column_classification, blocked_by="other objects")
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
def masking_rule_update(*, actor: Any, rule: MaskingRule, data: dict[str, Any]) -> MaskingRule:
    """Change any of MASKING_RULE_FIELDS (``exempt_teams``: an iterable of Team)."""
    _require_policy_editor(actor)
    rule = MaskingRule.objects.select_for_update(no_key=True).get(pk=rule.pk)
    _update(actor, rule, data, allowed=MASKING_RULE_FIELDS)
    return rule


@transaction.atomic
def masking_rule_delete(*, actor: Any, rule: MaskingRule) -> None:
    _require_policy_editor(actor)
    _delete(actor, rule, blocked_by="other objects")


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
) -> GuardrailRule:
    """Add a guardrail at ``position`` (1 = first), or last when not given."""
    _require_policy_editor(actor)
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
    _create(actor, guardrail)
    return guardrail


GUARDRAIL_FIELDS = {"name", "action", "conditions", "message", "datasource", "enabled"}


@transaction.atomic
def guardrail_update(
    *, actor: Any, guardrail: GuardrailRule, data: dict[str, Any]
) -> GuardrailRule:
    """Change any of GUARDRAIL_FIELDS; use guardrail_move to change the order."""
    _require_policy_editor(actor)
    guardrail = GuardrailRule.objects.select_for_update(no_key=True).get(pk=guardrail.pk)
    _update(actor, guardrail, data, allowed=GUARDRAIL_FIELDS)
    return guardrail


@transaction.atomic
def guardrail_set_enabled(*, actor: Any, guardrail: GuardrailRule, enabled: bool) -> GuardrailRule:
    return guardrail_update(actor=actor, guardrail=guardrail, data={"enabled": enabled})


@transaction.atomic
def guardrail_move(
    *,
    actor: Any,
    guardrail: GuardrailRule,
    position: int | None = None,
    direction: str | None = None,
) -> GuardrailRule:
    """Move to ``position`` (1 = first) or one step ``direction`` "up"/"down".

    Positions are renumbered 1..n afterwards; every guardrail whose position
    changed gets a history record.
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
    moved = rules.pop(index)
    rules.insert(target, moved)
    for new_position, rule in enumerate(rules, start=1):
        if rule.position != new_position:
            before = object_snapshot(rule)
            rule.position = new_position
            # The deferred unique constraint is checked at commit, after all moves.
            GuardrailRule.objects.filter(pk=rule.pk).update(position=new_position)
            change_record_create(
                actor=actor,
                action=ChangeAction.UPDATE,
                obj=rule,
                before=before,
                after=object_snapshot(rule),
            )
    return moved


@transaction.atomic
def guardrail_delete(*, actor: Any, guardrail: GuardrailRule) -> None:
    _require_policy_editor(actor)
    _delete(actor, guardrail, blocked_by="other objects")


def next_guardrail_position() -> int:
    return (GuardrailRule.objects.aggregate(m=Max("position"))["m"] or 0) + 1


# --- single sign-on ---------------------------------------------------------------------

_ROLE_ORDER = [Role.ADMIN, Role.SECURITY, Role.REVIEWER, Role.AUDITOR, Role.NONE]


def _identity_name_for(user: Any) -> str:
    import re

    base = re.sub(r"[^a-z0-9_.-]", "_", (user.get_username() or "user").lower().split("@")[0])
    if not re.match(r"^[a-z_]", base):
        base = "u_" + base
    base = base[:56]
    name, n = base, 1
    while Identity.objects.filter(name=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


@transaction.atomic
def sso_user_sync(
    *,
    user: Any,
    groups: list[str],
    team_map: dict[str, str],
    role_map: dict[str, str],
) -> Identity:
    """Apply an identity provider's group claims to a user signing in with SSO.

    The user gets a human identity (created on first sign-in) whose teams are
    exactly the mapped groups' teams, and, when a role map is configured, the
    highest role any of their groups maps to (``none`` when no group maps).
    The provider is the source of truth, so removals apply at the next sign-in.
    Recorded in history with the actor "system".
    """
    import logging

    log = logging.getLogger(__name__)
    identity = Identity.objects.filter(user=user).first()
    if identity is None:
        identity = Identity(
            name=_identity_name_for(user),
            kind=IdentityKind.HUMAN,
            display_name=user.get_full_name() or user.get_username(),
            email=user.email or "",
            user=user,
        )
        _create(None, identity)
    wanted_slugs = sorted({team_map[g] for g in groups if g in team_map})
    teams = list(Team.objects.filter(slug__in=wanted_slugs))
    missing = sorted(set(wanted_slugs) - {t.slug for t in teams})
    if missing:
        log.warning("OIDC_GROUP_TEAM_MAP names teams that do not exist: %s", ", ".join(missing))
    if {t.pk for t in identity.teams.all()} != {t.pk for t in teams}:
        _update(None, identity, {"teams": teams}, allowed={"teams"})
    if role_map:
        roles = {Role(role_map[g]) for g in groups if g in role_map}
        role = next((r for r in _ROLE_ORDER if r in roles), Role.NONE)
        membership, created = Membership.objects.get_or_create(user=user)
        if created or membership.role != role:
            before = None if created else object_snapshot(membership)
            membership.role = role
            membership.full_clean()
            membership.save()
            change_record_create(
                actor=None,
                action=ChangeAction.CREATE if created else ChangeAction.UPDATE,
                obj=membership,
                before=before,
                after=object_snapshot(membership),
            )
    return identity


# --- sidecars -------------------------------------------------------------------------

_HEARTBEAT_COUNTER_LIMIT = 64


def _sidecar_token() -> tuple[str, str, str]:
    raw = SIDECAR_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:10], token_digest(raw)


def _forget_sidecar_digest(digest: str) -> None:
    from governance.sidecar_auth import sidecar_auth_forget

    transaction.on_commit(lambda: sidecar_auth_forget(digest=digest))


@transaction.atomic
def sidecar_register(*, actor: Any, datasource: Datasource, name: str) -> tuple[Sidecar, str]:
    """Register a sidecar for ``datasource``; the raw token is returned here once."""
    _require_policy_editor(actor)
    raw, prefix, digest = _sidecar_token()
    sidecar = Sidecar(
        datasource=datasource, name=name, token_prefix=prefix, token_digest=digest, created_by=actor
    )
    _create(actor, sidecar)
    _sidecar_event("sidecar.registered", actor, sidecar)
    return sidecar, raw


def _sidecar_event(action: str, actor: Any, sidecar: Sidecar) -> None:
    audit_control_event(
        action=action,
        actor=actor,
        datasource=sidecar.datasource,
        target=f"sidecar:{sidecar.pk} {sidecar.name}",
        outcome="ok",
        detail={"prefix": sidecar.token_prefix},
    )


@transaction.atomic
def sidecar_rotate_token(*, actor: Any, sidecar: Sidecar) -> tuple[Sidecar, str]:
    """Replace the token; the old one stops working when this commits."""
    _require_policy_editor(actor)
    sidecar = Sidecar.objects.select_for_update(no_key=True).get(pk=sidecar.pk)
    if sidecar.revoked_at is not None:
        raise ApplicationError("This sidecar is revoked; register a new one.")
    before = object_snapshot(sidecar)
    old_digest = sidecar.token_digest
    raw, sidecar.token_prefix, sidecar.token_digest = _sidecar_token()
    sidecar.token_rotated_at = timezone.now()
    sidecar.full_clean()
    sidecar.save()
    _forget_sidecar_digest(old_digest)
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=sidecar,
        before=before,
        after=object_snapshot(sidecar),
    )
    _sidecar_event("sidecar.token_rotated", actor, sidecar)
    return sidecar, raw


@transaction.atomic
def sidecar_revoke(*, actor: Any, sidecar: Sidecar) -> Sidecar:
    _require_policy_editor(actor)
    sidecar = Sidecar.objects.select_for_update(no_key=True).get(pk=sidecar.pk)
    if sidecar.revoked_at is not None:
        raise ApplicationError("This sidecar is already revoked.")
    before = object_snapshot(sidecar)
    sidecar.revoked_at = timezone.now()
    sidecar.save(update_fields=["revoked_at"])
    _forget_sidecar_digest(sidecar.token_digest)
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE,
        obj=sidecar,
        before=before,
        after=object_snapshot(sidecar),
    )
    _sidecar_event("sidecar.revoked", actor, sidecar)
    return sidecar


def sidecar_heartbeat_record(
    *,
    sidecar_id: int,
    revision: str,
    version: str,
    counters: dict[str, int],
    bundle_status: dict[str, Any],
) -> None:
    """Store what a sidecar reports. Not history: it changes every few seconds."""
    if len(counters) > _HEARTBEAT_COUNTER_LIMIT:
        raise ValidationError({"counters": f"At most {_HEARTBEAT_COUNTER_LIMIT} counters."})
    Sidecar.objects.filter(pk=sidecar_id, revoked_at__isnull=True).update(
        last_heartbeat_at=timezone.now(),
        running_revision=revision,
        version=version,
        counters=counters,
        bundle_status=bundle_status,
    )


@transaction.atomic
def sidecar_schema_report(
    *,
    datasource_id: int,
    snapshot: dict[str, Any],
    findings: list[dict[str, Any]],
    scan: dict[str, Any] | None = None,
    sidecar_id: int | None = None,
) -> dict[str, Any]:
    """Take a sidecar's scan: record the drift from the previous snapshot, store the new
    one, turn findings into classifications and views' sources into inherited ones,
    and keep the scan's counts. Recorded in history with the actor "system".

    A finding at or above ``WARDEN_SCAN_AUTO_APPLY_CONFIDENCE`` is applied at once
    (``auto_applied``: masked, awaiting confirmation); one below is ``proposed``. A
    scanner never overrides a person, and a rejected (column, classification) is
    never proposed again.
    """
    from governance.scans import snapshot_drift

    datasource = Datasource.objects.select_for_update(no_key=True).get(pk=datasource_id)
    previous = datasource.schema_snapshot or {}
    drift = snapshot_drift(previous, snapshot) if previous.get("tables") else {}
    changed = previous != snapshot
    if changed:
        before = object_snapshot(datasource)
        datasource.schema_snapshot = snapshot
        datasource.full_clean()
        datasource.save(update_fields=["schema_snapshot", "updated_at"])
        change_record_create(
            actor=None,
            action=ChangeAction.UPDATE,
            obj=datasource,
            before=before,
            after=object_snapshot(datasource),
        )
    counts = _findings_apply(datasource=datasource, findings=findings)
    counts["inherited"] = column_classifications_inherit(datasource=datasource)
    run = _scan_run_record(
        datasource=datasource,
        sidecar_id=sidecar_id,
        scan=scan,
        findings=len(findings),
        counts=counts,
        drift=drift,
    )
    return {
        "snapshot_changed": changed,
        **counts,
        "scan": run.scan_id,
        "drift": run.drift_count,
    }


# Contract names the scanner may emit for built-ins Warden already has under another name.
FINDING_CLASSIFICATION_ALIASES = {"pii.ip_address": "network.ip", "pii.birth_date": "pii.dob"}


def _findings_apply(*, datasource: Datasource, findings: list[dict[str, Any]]) -> dict[str, int]:
    from django.conf import settings

    threshold = settings.WARDEN_SCAN_AUTO_APPLY_CONFIDENCE
    classifications = {c.name: c for c in Classification.objects.all()}
    existing = {
        (c.schema_name, c.table_name, c.column_name): c
        for c in ColumnClassification.objects.select_for_update(no_key=True).filter(
            datasource=datasource
        )
    }
    rejected = set(
        ClassificationRejection.objects.filter(datasource=datasource).values_list(
            "schema_name", "table_name", "column_name", "classification__name"
        )
    )
    columns = datasource.snapshot_columns()
    proposed = auto_applied = ignored = 0
    # The most confident finding for a column wins.
    for finding in sorted(findings, key=lambda f: -float(f["confidence"])):
        key = (finding["schema"], finding["table"], finding["column"])
        name = FINDING_CLASSIFICATION_ALIASES.get(
            finding["classification"], finding["classification"]
        )
        classification = classifications.get(name)
        current = existing.get(key)
        if (
            classification is None
            or (*key, name) in rejected
            or key[2] not in columns.get(key[:2], [])
            or (current is not None and current.status != ClassificationStatus.REJECTED)
        ):
            ignored += 1
            continue
        confidence = float(finding["confidence"])
        apply_now = confidence >= threshold
        values = {
            "classification": classification,
            "source": ClassificationSource.AUTO,
            "confidence": confidence,
            "status": ClassificationStatus.AUTO_APPLIED
            if apply_now
            else ClassificationStatus.PROPOSED,
            "confirmed_by": None,
            "confirmed_at": None,
            "detector": str(finding.get("detector") or "")[:100],
            "share": finding.get("share"),
            "inherited_from": "",
        }
        if current is None:
            current = ColumnClassification(
                datasource=datasource,
                schema_name=key[0],
                table_name=key[1],
                column_name=key[2],
                **values,
            )
            _create(None, current)
        else:  # rejected as another classification: this one is new
            _update(None, current, values, allowed=set(values))
        existing[key] = current
        if apply_now:
            auto_applied += 1
        else:
            proposed += 1
    return {"proposed": proposed, "auto_applied": auto_applied, "ignored": ignored}


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
    from governance.models import ENFORCED_STATUSES, Level

    rows = {
        (c.schema_name, c.table_name, c.column_name): c
        for c in ColumnClassification.objects.select_for_update(no_key=True)
        .filter(datasource=datasource)
        .select_related("classification")
    }
    rejected = set(
        ClassificationRejection.objects.filter(datasource=datasource).values_list(
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
                if source is None or source.status not in ENFORCED_STATUSES:
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
            _create(
                None,
                ColumnClassification(
                    datasource=datasource,
                    schema_name=key[0],
                    table_name=key[1],
                    column_name=key[2],
                    **values,
                ),
            )
            changed += 1
        elif current.source == ClassificationSource.MANUAL or (
            current.status == ClassificationStatus.CONFIRMED
            and current.source != ClassificationSource.INHERITED
        ):
            continue  # a person decided this column
        elif any(getattr(current, k) != v for k, v in values.items()):
            _update(None, current, values, allowed=set(values))
            changed += 1
    return changed


def _scan_run_record(
    *,
    datasource: Datasource,
    sidecar_id: int | None,
    scan: dict[str, Any] | None,
    findings: int,
    counts: dict[str, int],
    drift: dict[str, Any],
) -> ScanRun:
    import uuid

    scan = scan or {}
    if scan.get("id"):
        # A report re-sent after a lost reply (or one request heard twice, through the
        # bundle and the heartbeat) is the same scan: keep its first record and drift.
        earlier = ScanRun.objects.filter(datasource=datasource, scan_id=scan["id"]).first()
        if earlier is not None:
            return earlier
    run = ScanRun(
        datasource=datasource,
        sidecar_id=sidecar_id,
        scan_id=scan.get("id") or uuid.uuid4().hex,
        trigger=scan.get("trigger") or ScanTrigger.REPORT,
        started_at=scan.get("started_at"),
        finished_at=scan.get("finished_at"),
        duration_ms=scan.get("duration_ms"),
        tables=scan.get("tables", len((datasource.schema_snapshot or {}).get("tables", []))),
        columns=scan.get("columns", sum(len(c) for c in datasource.snapshot_columns().values())),
        sampled_columns=scan.get("sampled_columns", 0),
        findings=findings,
        proposed=counts["proposed"],
        auto_applied=counts["auto_applied"],
        inherited=counts["inherited"],
        drift=drift,
    )
    run.full_clean()
    run.save()
    return run


@transaction.atomic
def identities_expire() -> int:
    """Deactivate every active identity whose ``expires_at`` has passed; return how many."""
    expired = Identity.objects.select_for_update(no_key=True).filter(
        is_active=True, expires_at__lte=timezone.now()
    )
    count = 0
    for identity in expired:
        _update(None, identity, {"is_active": False}, allowed={"is_active"})
        count += 1
    return count


# --- custom detectors -------------------------------------------------------------------


@transaction.atomic
def custom_detector_create(
    *,
    actor: Any,
    name: str,
    classification: Classification,
    confidence: float = 0.9,
    name_regex: str = "",
    value_regex: str = "",
    enabled: bool = True,
) -> CustomDetector:
    _require_policy_editor(actor)
    detector = CustomDetector(
        name=name,
        classification=classification,
        confidence=confidence,
        name_regex=name_regex or "",
        value_regex=value_regex or "",
        enabled=enabled,
    )
    _create(actor, detector)
    return detector


@transaction.atomic
def custom_detector_update(
    *, actor: Any, detector: CustomDetector, data: dict[str, Any]
) -> CustomDetector:
    _require_policy_editor(actor)
    data = {k: (v or "") if k in {"name_regex", "value_regex"} else v for k, v in data.items()}
    _update(
        actor,
        detector,
        data,
        allowed={"name", "classification", "confidence", "name_regex", "value_regex", "enabled"},
    )
    return detector


@transaction.atomic
def custom_detector_delete(*, actor: Any, detector: CustomDetector) -> None:
    _require_policy_editor(actor)
    _delete(actor, detector, blocked_by="other objects")


# --- scans --------------------------------------------------------------------------------


def scan_schedule_for(*, datasource: Datasource) -> ScanSchedule:
    """The datasource's schedule; one with the defaults is created on first use."""
    schedule, _ = ScanSchedule.objects.get_or_create(datasource=datasource)
    return schedule


@transaction.atomic
def scan_schedule_update(
    *, actor: Any, datasource: Datasource, data: dict[str, Any]
) -> ScanSchedule:
    _require_policy_editor(actor)
    schedule = ScanSchedule.objects.select_for_update(no_key=True).get(
        pk=scan_schedule_for(datasource=datasource).pk
    )
    _update(
        actor,
        schedule,
        data,
        allowed={"interval_seconds", "sample_rows", "statement_timeout_ms"},
    )
    return schedule


def _scan_request(*, actor: Any, datasource: Datasource, now: Any = None) -> ScanSchedule:
    import uuid

    schedule = ScanSchedule.objects.select_for_update(no_key=True).get(
        pk=scan_schedule_for(datasource=datasource).pk
    )
    before = object_snapshot(schedule)
    schedule.requested = uuid.uuid4().hex
    schedule.requested_at = now or timezone.now()
    schedule.requested_by = actor
    schedule.full_clean()
    schedule.save()
    if actor is None:
        # Beat asks every interval; history would drown in it. The bundle still changes.
        bundles_mark_stale(obj=schedule)
    else:
        change_record_create(
            actor=actor,
            action=ChangeAction.UPDATE,
            obj=schedule,
            before=before,
            after=object_snapshot(schedule),
        )
    return schedule


@transaction.atomic
def scan_request(*, actor: Any, datasource: Datasource) -> ScanSchedule:
    """ "Scan now": a new request id that reaches the sidecar through the bundle's
    ``scan.requested`` and the heartbeat reply; the sidecar reports with that id."""
    _require_policy_editor(actor)
    return _scan_request(actor=actor, datasource=datasource)


def scan_pending(*, schedule: ScanSchedule) -> str | None:
    """The requested scan id when no scan with that id was reported yet."""
    if not schedule.requested:
        return None
    done = ScanRun.objects.filter(datasource_id=schedule.datasource_id, scan_id=schedule.requested)
    return None if done.exists() else schedule.requested


@transaction.atomic
def scans_request_due(*, now: Any = None) -> list[int]:
    """Request a scan of every datasource with no scan reported within its interval and
    no request of its own younger than the interval (a silent sidecar is asked once per
    interval, not every minute). Returns the datasource ids asked."""
    now = now or timezone.now()
    asked = []
    for datasource in Datasource.objects.select_for_update(skip_locked=True).order_by("pk"):
        schedule = scan_schedule_for(datasource=datasource)
        if schedule.interval_seconds == 0:
            continue
        since = now - datetime.timedelta(seconds=schedule.interval_seconds)
        recent_scan = ScanRun.objects.filter(datasource=datasource, received_at__gt=since).exists()
        recent_request = schedule.requested_at is not None and schedule.requested_at > since
        if recent_scan or recent_request:
            continue
        _scan_request(actor=None, datasource=datasource, now=now)
        asked.append(datasource.pk)
    return asked


def scan_requested_for(*, datasource_id: int) -> str | None:
    """The scan request a sidecar has not answered yet (for the heartbeat reply)."""
    schedule = ScanSchedule.objects.filter(datasource_id=datasource_id).first()
    return scan_pending(schedule=schedule) if schedule is not None else None


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
