"""Identity services: who connects through the sidecars, and who runs the control plane.

Identities (humans, service accounts, AI agents), their teams, the access tokens
they sign in to a sidecar with, accounts' roles (memberships) and management-API
tokens, the single sign-on sync that keeps a user's identity, teams and role in
step with the identity provider, and the expiry of identities.

Identities, teams and access tokens reach the bundles (a sidecar checks tokens
and team-based rules), so their services record history and then call
``bundles_mark_stale``. Roles and API tokens act on the control plane only: no
bundle carries them, and their services record history alone.
"""

from __future__ import annotations

import base64
import datetime
import logging
import re
import secrets
from collections.abc import Iterable
from typing import Any

from allauth.account.models import EmailAddress
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from audit.models import ChangeAction
from audit.sink.history import change_record_create, object_snapshot
from audit.sink.trail import audit_control_event
from governance.bundles import bundles_mark_stale
from governance.errors import ApplicationError
from governance.models import (
    API_TOKEN_PREFIX,
    TOKEN_PREFIX,
    AccessToken,
    ApiToken,
    Datasource,
    Identity,
    IdentityKind,
    Membership,
    Role,
    Team,
    identities_allowed_on,
    scram_sha256_verifier,
    token_digest,
)
from governance.permissions import can_manage_all_tokens, user_role
from governance.selectors import email_claimants
from governance.services.history import _create, _delete, _revoke, _update
from governance.services.policy import _guardrails_naming, _require_policy_editor

logger = logging.getLogger(__name__)

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
    bundles_mark_stale(obj=team)
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
    bundles_mark_stale(obj=team)
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
    bundles_mark_stale(obj=team)


# --- identities -----------------------------------------------------------------------


def _require_admin_to_link(actor: Any) -> None:
    """Which account is which identity decides whose requests one sees and may not
    decide: admins link accounts (``governance.services.accounts``)."""
    if user_role(actor) != Role.ADMIN:
        raise PermissionDenied("Only admins link and unlink sign-in accounts.")


def _pk(value: Any) -> Any:
    return getattr(value, "pk", value)


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
    if user is not None:
        _require_admin_to_link(actor)
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
    bundles_mark_stale(obj=identity)
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
    if "user" in data and _pk(data["user"]) != identity.user_id:
        _require_admin_to_link(actor)
    _update(actor, identity, data, allowed=IDENTITY_FIELDS)
    bundles_mark_stale(obj=identity)
    return identity


@transaction.atomic
def identity_delete(*, actor: Any, identity: Identity) -> None:
    _require_policy_editor(actor)
    _delete(actor, identity, blocked_by="the identities it owns")
    bundles_mark_stale(obj=identity)


@transaction.atomic
def identities_expire() -> int:
    """Deactivate every active identity whose ``expires_at`` has passed; return how many."""
    expired = Identity.objects.select_for_update(no_key=True).filter(
        is_active=True, expires_at__lte=timezone.now()
    )
    count = 0
    for identity in expired:
        _update(None, identity, {"is_active": False}, allowed={"is_active"})
        bundles_mark_stale(obj=identity)
        count += 1
    return count


# --- access tokens --------------------------------------------------------------------


def _may_manage_tokens_of(actor: Any, identity: Identity) -> bool:
    if can_manage_all_tokens(actor):
        return True
    if user_role(actor) != Role.REVIEWER:
        return False
    own = Identity.objects.filter(user=actor).first()
    if own is None:
        return False
    # An owner's reach: the service accounts and agents it answers for, never a person.
    return identity.pk == own.pk or (
        identity.owner_id == own.pk and identity.kind != IdentityKind.HUMAN
    )


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
    bundles_mark_stale(obj=token)
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
    token = _revoke(actor, token, already="This token is already revoked.")
    bundles_mark_stale(obj=token)
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
    token = _revoke(actor, token, already="This token is already revoked.")
    _token_event("token.revoked", actor, token)
    return token


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
) -> Identity | None:
    """Apply an identity provider's group claims to a user signing in with SSO.

    The user gets a human identity whose teams are exactly the mapped groups'
    teams, and, when a role map is configured, the highest role any of their
    groups maps to (``none`` when no group maps). The provider is the source of
    truth, so removals apply at the next sign-in. Recorded in history with the
    actor "system".

    The identity is the one linked to the user (``identity_link_by_verified_email``
    links an existing one first); else a new one is created, unless an identity
    already claims one of the user's addresses: that one may be this person, so
    none is made beside it (an admin links by hand) and only the role applies.
    """
    identity = Identity.objects.filter(user=user).first()
    if identity is None:
        addresses = {user.email or ""} | set(
            EmailAddress.objects.filter(user=user).values_list("email", flat=True)
        )
        addresses.discard("")
        if any(email_claimants(a).identities for a in addresses):
            logger.warning(
                "account %s signed in with an address an identity claims; not linked, "
                "an admin links it by hand",
                user.pk,
            )
        else:
            identity = Identity(
                name=_identity_name_for(user),
                kind=IdentityKind.HUMAN,
                display_name=user.get_full_name() or user.get_username(),
                email=user.email or "",
                user=user,
            )
            _create(None, identity)
            bundles_mark_stale(obj=identity)
    if identity is not None:
        _sso_teams_sync(identity, groups, team_map)
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


def _sso_teams_sync(identity: Identity, groups: list[str], team_map: dict[str, str]) -> None:
    wanted_slugs = sorted({team_map[g] for g in groups if g in team_map})
    teams = list(Team.objects.filter(slug__in=wanted_slugs))
    missing = sorted(set(wanted_slugs) - {t.slug for t in teams})
    if missing:
        logger.warning("OIDC_GROUP_TEAM_MAP names teams that do not exist: %s", ", ".join(missing))
    if {t.pk for t in identity.teams.all()} != {t.pk for t in teams}:
        _update(None, identity, {"teams": teams}, allowed={"teams"})
        bundles_mark_stale(obj=identity)


# --- access tokens: last used -----------------------------------------------------------

_CREDENTIAL_ID = re.compile(r"^tok-([1-9][0-9]{0,17})$")
MAX_LOGINS_PER_HEARTBEAT = 500


def access_tokens_used(*, datasource_id: int, logins: dict[str, float]) -> int:
    """Record when access tokens last signed in, as a sidecar's heartbeat reports it
    (``{"tok-<id>": POSIX seconds}``, the ids its bundle carries: never a token).

    Only tokens of identities the datasource's bundle lists count: a sidecar cannot
    touch another datasource's tokens. A time ahead of the control plane's clock is
    taken as now; an older time than the one stored changes nothing. Returns how
    many tokens changed. Not history: it changes with every sign-in.
    """
    if len(logins) > MAX_LOGINS_PER_HEARTBEAT:
        raise ValidationError({"logins": f"At most {MAX_LOGINS_PER_HEARTBEAT} sign-ins."})
    now = timezone.now()
    times: dict[int, datetime.datetime] = {}
    for credential_id, at in logins.items():
        match = _CREDENTIAL_ID.match(credential_id)
        if match is None:
            raise ValidationError({"logins": f"{credential_id[:40]!r} is not a credential id."})
        moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
        times[int(match.group(1))] = min(moment, now)
    if not times:
        return 0
    datasource = Datasource.objects.filter(pk=datasource_id).first()
    if datasource is None:
        return 0
    allowed = identities_allowed_on(datasource, now).values("pk")
    changed = 0
    tokens = AccessToken.objects.filter(pk__in=times, identity__in=allowed)
    for pk, last in tokens.values_list("pk", "last_used_at"):
        at = times[pk]
        if last is None or last < at:
            changed += AccessToken.objects.filter(pk=pk).update(last_used_at=at)
    return changed
