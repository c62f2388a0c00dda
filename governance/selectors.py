"""Read paths of the governance app, already restricted to what the user may see.

``<noun>_list(*, user, filters)`` returns a queryset (empty for role ``none``);
``<noun>_get(*, user, pk)`` raises Http404 when the object does not exist or is
out of the user's scope, so "another team's object" and "no such object" look
the same. The scoping rule is documented in ``governance.permissions``.

Filters are plain dicts (a request's query parameters work): ``q`` searches
names everywhere; the other keys are listed per selector.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from audit.sink.history import change_history_for
from governance.models import (
    PRODUCTION_CRITICALITY,
    AccessToken,
    ApiToken,
    BreakGlassGrant,
    Classification,
    ClassificationStatus,
    ColumnClassification,
    CustomDetector,
    Datasource,
    Environment,
    GuardrailRule,
    Identity,
    IdentityKind,
    MaskingRule,
    Role,
    ScanRun,
    ScanSchedule,
    Sidecar,
    Team,
)
from governance.permissions import can_read_all_tokens, can_view, user_role

__all__ = [
    "api_token_get",
    "api_token_list",
    "break_glass_get",
    "break_glass_item_get",
    "break_glass_list",
    "change_history_for",
    "classification_get",
    "classification_list",
    "column_classification_get",
    "column_classification_list",
    "custom_detector_get",
    "custom_detector_list",
    "datasource_get",
    "datasource_list",
    "email_claimants",
    "environment_list",
    "guardrail_get",
    "guardrail_list",
    "identity_for_tokens_get",
    "identity_get",
    "identity_link_problem",
    "identity_list",
    "masking_rule_get",
    "masking_rule_list",
    "production_datasources",
    "production_datasources_affected",
    "review_item_get",
    "review_queue",
    "scan_run_get",
    "scan_run_list",
    "scan_schedule_get",
    "sidecar_attention",
    "sidecar_list",
    "team_get",
    "team_list",
    "token_get",
    "token_list",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(filters: dict[str, Any], key: str) -> bool | None:
    value = filters.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _text(filters: dict[str, Any], key: str) -> str:
    value = filters.get(key)
    # PostgreSQL text cannot hold NUL; a filter containing one matches what the rest matches.
    return str(value).replace("\x00", "").strip() if value not in (None, "") else ""


def _get(qs: QuerySet, pk: Any) -> Any:
    try:
        return qs.get(pk=int(pk))
    except (ValueError, TypeError, qs.model.DoesNotExist):
        raise Http404(f"No such {qs.model._meta.verbose_name}.") from None


def _visible(user: Any, qs: QuerySet) -> QuerySet:
    return qs if can_view(user) else qs.none()


# --- environments and teams -------------------------------------------------------------


def environment_list(*, user: Any, filters: dict | None = None) -> QuerySet[Environment]:
    return _visible(user, Environment.objects.all())


def team_list(*, user: Any, filters: dict | None = None) -> QuerySet[Team]:
    """Filters: q."""
    filters = filters or {}
    qs = Team.objects.all()
    if q := _text(filters, "q"):
        qs = qs.filter(Q(name__icontains=q) | Q(slug__icontains=q) | Q(description__icontains=q))
    return _visible(user, qs)


def team_get(*, user: Any, pk: Any) -> Team:
    return _get(team_list(user=user), pk)


# --- identities and tokens ----------------------------------------------------------------


def identity_list(*, user: Any, filters: dict | None = None) -> QuerySet[Identity]:
    """Filters: q, kind, team (slug), is_active, owner (identity name)."""
    filters = filters or {}
    qs = Identity.objects.select_related("owner", "user").prefetch_related("teams")
    if q := _text(filters, "q"):
        qs = qs.filter(Q(name__icontains=q) | Q(display_name__icontains=q) | Q(email__icontains=q))
    if kind := _text(filters, "kind"):
        qs = qs.filter(kind=kind)
    if team := _text(filters, "team"):
        qs = qs.filter(teams__slug=team)
    if (active := _flag(filters, "is_active")) is not None:
        qs = qs.filter(is_active=active)
    if owner := _text(filters, "owner"):
        qs = qs.filter(owner__name=owner)
    return _visible(user, qs.distinct())


def identity_get(*, user: Any, pk: Any) -> Identity:
    return _get(identity_list(user=user), pk)


@dataclass
class EmailClaim:
    """Who claims an e-mail address (case-insensitive): identities and accounts."""

    identities: list[Identity] = field(default_factory=list)
    user_ids: set[int] = field(default_factory=set)


def email_claimants(address: str) -> EmailClaim:
    """The identities with ``address`` and the accounts that have it (as their e-mail
    or one of their addresses, verified or not) or are linked to such an identity."""
    address = address.strip()
    if not address:
        return EmailClaim()
    identities = list(Identity.objects.filter(email__iexact=address).order_by("pk"))
    users = set(get_user_model().objects.filter(email__iexact=address).values_list("pk", flat=True))
    users |= set(EmailAddress.objects.filter(email__iexact=address).values_list("user", flat=True))
    users |= {i.user_id for i in identities if i.user_id is not None}
    return EmailClaim(identities=identities, user_ids=users)


def verified_emails_of(user: Any) -> set[str]:
    """The account's verified addresses (allauth's ``EmailAddress.verified``), lower-cased."""
    rows = EmailAddress.objects.filter(user=user, verified=True).values_list("email", flat=True)
    return {e.strip().lower() for e in rows if e}


def identity_link_problem(identity: Identity) -> str:
    """Why the human ``identity`` is not linked to a sign-in account automatically
    ("" when it is linked, or will be at its account's next single sign-on)."""
    if identity.kind != IdentityKind.HUMAN or identity.user_id is not None:
        return ""
    if not identity.email:
        return "It has no e-mail address to match; an admin links it by hand."
    claim = email_claimants(identity.email)
    if len(claim.identities) > 1:
        others = ", ".join(i.name for i in claim.identities if i.pk != identity.pk)
        return (
            f"Two identities claim this e-mail address ({others} too); "
            "it is not linked automatically. Link by hand."
        )
    if len(claim.user_ids) > 1:
        return (
            "Two accounts claim this e-mail address; it is not linked automatically. Link by hand."
        )
    if not claim.user_ids:
        return (
            "No account has this e-mail address yet. It is linked at the first single "
            "sign-on whose identity provider marks the address verified."
        )
    (user_id,) = claim.user_ids
    linked = Identity.objects.filter(user_id=user_id).first()
    if linked is not None:
        return f"The account with this e-mail address is linked to {linked.name}."
    if identity.email.strip().lower() not in verified_emails_of(user_id):
        return (
            "The account with this e-mail address has not verified it; it is linked once "
            "the address is verified (single sign-on), or an admin links it by hand."
        )
    return "It is linked at the account's next single sign-on."


def _own_identity_scope(user: Any) -> Q:
    # Owned: the service accounts and agents the user answers for, never a person.
    owned = Q(identity__owner__user=user) & ~Q(identity__kind=IdentityKind.HUMAN)
    return Q(identity__user=user) | owned


def token_list(*, user: Any, filters: dict | None = None) -> QuerySet[AccessToken]:
    """Identity access tokens in scope. Filters: identity (pk), active (bool)."""
    filters = filters or {}
    qs = AccessToken.objects.select_related("identity", "created_by")
    role = user_role(user)
    if can_read_all_tokens(user):
        pass
    elif role == Role.REVIEWER:
        qs = qs.filter(_own_identity_scope(user))
    else:
        return qs.none()
    if identity := _text(filters, "identity"):
        qs = qs.filter(identity_id=identity) if identity.isdigit() else qs.none()
    active = _flag(filters, "active")
    if active is not None:
        from django.utils import timezone

        live = Q(revoked_at__isnull=True) & (
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )
        qs = qs.filter(live) if active else qs.exclude(live)
    return qs


def token_get(*, user: Any, pk: Any) -> AccessToken:
    return _get(token_list(user=user), pk)


def api_token_list(*, user: Any, filters: dict | None = None) -> QuerySet[ApiToken]:
    """The user's own API tokens (an admin sees everyone's). Filters: user (username)."""
    filters = filters or {}
    qs = ApiToken.objects.select_related("user")
    if not getattr(user, "is_authenticated", False):
        return qs.none()
    if user_role(user) != Role.ADMIN:
        qs = qs.filter(user=user)
    if username := _text(filters, "user"):
        qs = qs.filter(user__username=username)
    return qs


def api_token_get(*, user: Any, pk: Any) -> ApiToken:
    return _get(api_token_list(user=user), pk)


# --- datasources and classifications ------------------------------------------------------


def datasource_list(*, user: Any, filters: dict | None = None) -> QuerySet[Datasource]:
    """Filters: q, environment (name), team (slug, connect or review)."""
    filters = filters or {}
    qs = Datasource.objects.select_related("environment").prefetch_related(
        "connect_teams", "review_teams"
    )
    if q := _text(filters, "q"):
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q))
    if environment := _text(filters, "environment"):
        qs = qs.filter(environment__name=environment)
    if team := _text(filters, "team"):
        qs = qs.filter(Q(connect_teams__slug=team) | Q(review_teams__slug=team))
    return _visible(user, qs.distinct())


def datasource_get(*, user: Any, pk: Any) -> Datasource:
    return _get(datasource_list(user=user), pk)


def datasource_schema(*, datasource: Datasource) -> list[dict[str, Any]]:
    """The snapshot's tables with each column's classification (or None) and the
    classifications of paths inside it (``paths``, by path), for display."""
    by_column: dict[tuple[str, str, str], ColumnClassification] = {}
    paths: dict[tuple[str, str, str], list[ColumnClassification]] = {}
    for c in datasource.column_classifications.select_related("classification").order_by("path"):
        key = (c.schema_name, c.table_name, c.column_name)
        if c.path:
            paths.setdefault(key, []).append(c)
        else:
            by_column[key] = c
    tables = []
    for table in (datasource.schema_snapshot or {}).get("tables", []):
        columns = [
            {
                **column,
                "classification": by_column.get((table["schema"], table["name"], column["name"])),
                "paths": paths.get((table["schema"], table["name"], column["name"]), []),
            }
            for column in table.get("columns", [])
        ]
        tables.append({**table, "columns": columns})
    return tables


def classification_list(*, user: Any, filters: dict | None = None) -> QuerySet[Classification]:
    """Filters: q, level, is_builtin."""
    filters = filters or {}
    qs = Classification.objects.all()
    if q := _text(filters, "q"):
        qs = qs.filter(Q(name__icontains=q) | Q(description__icontains=q))
    if level := _text(filters, "level"):
        qs = qs.filter(level=level)
    if (builtin := _flag(filters, "is_builtin")) is not None:
        qs = qs.filter(is_builtin=builtin)
    return _visible(user, qs)


def classification_get(*, user: Any, pk: Any) -> Classification:
    return _get(classification_list(user=user), pk)


def column_classification_list(
    *, user: Any, filters: dict | None = None
) -> QuerySet[ColumnClassification]:
    """Filters: q (column path), datasource (pk), classification (name), status, source."""
    filters = filters or {}
    qs = ColumnClassification.objects.select_related(
        "datasource__environment", "classification", "confirmed_by"
    )
    if q := _text(filters, "q"):
        qs = qs.filter(
            Q(schema_name__icontains=q)
            | Q(table_name__icontains=q)
            | Q(column_name__icontains=q)
            | Q(path__icontains=q)
        )
    if datasource := _text(filters, "datasource"):
        qs = qs.filter(datasource_id=datasource) if datasource.isdigit() else qs.none()
    if classification := _text(filters, "classification"):
        qs = qs.filter(classification__name=classification)
    if status := _text(filters, "status"):
        qs = qs.filter(status=status)
    if source := _text(filters, "source"):
        qs = qs.filter(source=source)
    return _visible(user, qs)


def column_classification_get(*, user: Any, pk: Any) -> ColumnClassification:
    return _get(column_classification_list(user=user), pk)


# --- masking rules and guardrails -----------------------------------------------------------


def masking_rule_list(*, user: Any, filters: dict | None = None) -> QuerySet[MaskingRule]:
    """Filters: q, classification (name), strategy, enabled, environment (name)."""
    filters = filters or {}
    qs = MaskingRule.objects.select_related("classification").prefetch_related("exempt_teams")
    if q := _text(filters, "q"):
        qs = qs.filter(Q(name__icontains=q) | Q(classification__name__icontains=q))
    if classification := _text(filters, "classification"):
        qs = qs.filter(classification__name=classification)
    if strategy := _text(filters, "strategy"):
        qs = qs.filter(strategy=strategy)
    if (enabled := _flag(filters, "enabled")) is not None:
        qs = qs.filter(enabled=enabled)
    if environment := _text(filters, "environment"):
        qs = qs.filter(Q(environments=[]) | Q(environments__contains=[environment]))
    return _visible(user, qs)


def masking_rule_get(*, user: Any, pk: Any) -> MaskingRule:
    return _get(masking_rule_list(user=user), pk)


def guardrail_list(*, user: Any, filters: dict | None = None) -> QuerySet[GuardrailRule]:
    """In evaluation order. Filters: q, action, enabled, datasource (pk)."""
    filters = filters or {}
    qs = GuardrailRule.objects.select_related("datasource").order_by("position")
    if q := _text(filters, "q"):
        qs = qs.filter(Q(name__icontains=q) | Q(message__icontains=q))
    if action := _text(filters, "action"):
        qs = qs.filter(action=action)
    if (enabled := _flag(filters, "enabled")) is not None:
        qs = qs.filter(enabled=enabled)
    if datasource := _text(filters, "datasource"):
        qs = qs.filter(datasource_id=datasource) if datasource.isdigit() else qs.none()
    return _visible(user, qs)


def guardrail_get(*, user: Any, pk: Any) -> GuardrailRule:
    return _get(guardrail_list(user=user), pk)


@dataclass(frozen=True)
class ProductionDatasource:
    pk: int
    name: str
    environment: str


def production_datasources() -> list[ProductionDatasource]:
    """Every production datasource (criticality 5), by name: read once for a list page."""
    return [
        ProductionDatasource(pk, name, environment)
        for pk, name, environment in Datasource.objects.filter(
            environment__criticality__gte=PRODUCTION_CRITICALITY
        )
        .order_by("name")
        .values_list("pk", "name", "environment__name")
    ]


def production_datasources_affected(
    obj: Any, production: list[ProductionDatasource] | None = None
) -> list[str]:
    """Names of the production datasources whose protection ``obj`` is part of: a
    guardrail or masking rule by its scope (one datasource, or every datasource of
    the environments it names, all when it names none), a column classification by
    its datasource, a datasource itself, an environment its datasources. Empty for
    anything else. ``production``: production_datasources(), when the caller asks
    about many objects. Judged on ``obj`` as it is in memory (its own fields), so
    a service can ask before and after a change.

    A change to the protective fields of such an object needs a reason
    (services.policy, docs/api.md "Changes that weaken production").
    """
    if isinstance(obj, Datasource):
        return [obj.name] if obj.environment.is_production else []
    if isinstance(obj, Environment):
        if not obj.is_production:
            return []
        return list(
            Datasource.objects.filter(environment_id=obj.pk)
            .order_by("name")
            .values_list("name", flat=True)
        )
    if production is None:
        production = production_datasources()
    if isinstance(obj, ColumnClassification):
        return [d.name for d in production if d.pk == obj.datasource_id]
    if isinstance(obj, GuardrailRule):
        if obj.datasource_id is not None:
            return [d.name for d in production if d.pk == obj.datasource_id]
        names = set(obj.normalised_conditions()["environments"])
    elif isinstance(obj, MaskingRule):
        names = set(obj.environments or [])
    else:
        return []
    return [d.name for d in production if not names or d.environment in names]


def identity_for_tokens_get(*, user: Any, pk: Any) -> Identity:
    """An identity whose tokens ``user`` may see (Http404 otherwise, see permissions)."""
    qs = Identity.objects.all()
    if can_read_all_tokens(user):
        pass
    elif user_role(user) == Role.REVIEWER:
        qs = qs.filter(Q(user=user) | (Q(owner__user=user) & ~Q(kind=IdentityKind.HUMAN)))
    else:
        qs = qs.none()
    return _get(qs, pk)


# --- classification scans -------------------------------------------------------------------


def custom_detector_list(*, user: Any, filters: dict | None = None) -> QuerySet[CustomDetector]:
    """Filters: q (name or pattern), classification (name), enabled."""
    filters = filters or {}
    qs = CustomDetector.objects.select_related("classification")
    if q := _text(filters, "q"):
        qs = qs.filter(
            Q(name__icontains=q) | Q(name_regex__icontains=q) | Q(value_regex__icontains=q)
        )
    if classification := _text(filters, "classification"):
        qs = qs.filter(classification__name=classification)
    if (enabled := _flag(filters, "enabled")) is not None:
        qs = qs.filter(enabled=enabled)
    return _visible(user, qs)


def custom_detector_get(*, user: Any, pk: Any) -> CustomDetector:
    return _get(custom_detector_list(user=user), pk)


def review_queue(*, user: Any, filters: dict | None = None) -> QuerySet[ColumnClassification]:
    """Classifications awaiting a person: auto-applied first (they already mask), then
    proposals, most confident first. Filters: datasource (pk), q."""
    qs = column_classification_list(user=user, filters=filters).filter(
        status__in=[ClassificationStatus.AUTO_APPLIED, ClassificationStatus.PROPOSED]
    )
    return qs.order_by("status", "-confidence", "datasource__name", "schema_name", "table_name")


def review_item_get(*, user: Any, datasource_pk: Any, pk: Any) -> ColumnClassification:
    """A classification of *this* datasource (another datasource's answers 404)."""
    return _get(column_classification_list(user=user).filter(datasource_id=datasource_pk), pk)


def scan_run_list(*, user: Any, datasource: Datasource) -> QuerySet[ScanRun]:
    return _visible(user, ScanRun.objects.filter(datasource=datasource).select_related("sidecar"))


def scan_run_get(*, user: Any, datasource_pk: Any, pk: Any) -> ScanRun:
    return _get(_visible(user, ScanRun.objects.filter(datasource_id=datasource_pk)), pk)


def scan_schedule_get(*, datasource: Datasource) -> ScanSchedule:
    """The datasource's schedule, or an unsaved one with the defaults (reads never write)."""
    return ScanSchedule.objects.filter(datasource=datasource).first() or ScanSchedule(
        datasource=datasource
    )


# --- break-glass grants ---------------------------------------------------------------------


def break_glass_list(*, user: Any, filters: dict | None = None) -> QuerySet[BreakGlassGrant]:
    """Newest first. Filters: datasource (pk), state, identity (name), q (reason or identity)."""
    filters = filters or {}
    qs = BreakGlassGrant.objects.select_related(
        "datasource__environment",
        "identity",
        "created_by",
        "approved_by",
        "denied_by",
        "revoked_by",
    )
    if q := _text(filters, "q"):
        qs = qs.filter(Q(reason__icontains=q) | Q(identity__name__icontains=q))
    if datasource := _text(filters, "datasource"):
        qs = qs.filter(datasource_id=datasource) if datasource.isdigit() else qs.none()
    if state := _text(filters, "state"):
        qs = qs.filter(state=state)
    if identity := _text(filters, "identity"):
        qs = qs.filter(identity__name=identity)
    return _visible(user, qs)


def break_glass_get(*, user: Any, pk: Any) -> BreakGlassGrant:
    return _get(break_glass_list(user=user), pk)


def break_glass_item_get(*, user: Any, datasource_pk: Any, pk: Any) -> BreakGlassGrant:
    """A grant of *this* datasource (another datasource's answers 404)."""
    return _get(break_glass_list(user=user).filter(datasource_id=datasource_pk), pk)


# --- sidecars --------------------------------------------------------------------------

# The states the sidecar list filters by (``?state=``), in the words the pages use.
SIDECAR_STATES = {
    "never": "never connected",
    "stale": "stale",
    "privileged": "running as a privileged role",
    "revoked": "revoked",
}


def _sidecar_state_q(state: str, now: datetime.datetime) -> Q:
    silent_since = now - datetime.timedelta(seconds=settings.WARDEN_SIDECAR_STALE_SECONDS)
    live = Q(revoked_at__isnull=True)
    return {
        # Registered, but no heartbeat ever: not installed yet, or its token never worked.
        "never": live & Q(last_heartbeat_at__isnull=True),
        # Heard from once, silent for longer than the stale limit since.
        "stale": live & Q(last_heartbeat_at__lt=silent_since),
        # Reported in its heartbeat: its upstream role is privileged and it was allowed.
        "privileged": live & Q(counters__privileged_upstream__gte=1),
        "revoked": Q(revoked_at__isnull=False),
    }[state]


def sidecar_list(*, user: Any, filters: dict | None = None) -> QuerySet[Sidecar]:
    """Every sidecar, by datasource and name. Filters: state (a key of SIDECAR_STATES)."""
    filters = filters or {}
    qs = _visible(user, Sidecar.objects.select_related("datasource__environment"))
    state = _text(filters, "state")
    if state in SIDECAR_STATES:
        qs = qs.filter(_sidecar_state_q(state, timezone.now()))
    return qs.order_by("datasource__name", "name")


def sidecar_attention(*, user: Any) -> dict[str, int]:
    """How many sidecars need someone: never connected, stale, running privileged."""
    now = timezone.now()
    qs = _visible(user, Sidecar.objects.all())
    return {
        state: qs.filter(_sidecar_state_q(state, now)).count()
        for state in ("never", "stale", "privileged")
    }
