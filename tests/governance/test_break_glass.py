"""Break-glass grants: the service rules, the database's own refusals, the bundle the
compiler makes of them and what the real engine does with it.

Personas come from tests/conftest.py; the second admin a production grant needs is
made here (an admin with TOTP, as the middleware requires of every admin).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.models import AuditEvent, ChangeRecord, datasource_chain
from governance import services
from governance.bundles import bundle_compile
from governance.errors import ApplicationError
from governance.models import (
    BREAK_GLASS_MAX_HOURS,
    BreakGlassGrant,
    BreakGlassState,
    Environment,
    FloorRule,
    Membership,
    Role,
)
from sidecar.engine import Engine, load_bundle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]

COPY_OUT = "COPY orders TO '/tmp/x'"
COPY_RULE = FloorRule.COPY_SERVER_SIDE.value
ENGINE_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "engine"
# One statement per safety-floor rule, each refused by that rule alone.
FLOOR_STATEMENTS = {
    FloorRule.COPY_SERVER_SIDE: COPY_OUT,
    FloorRule.SERVER_ACCESS: "LOAD 'auto_explain'",
    FloorRule.REMOTE_SERVER: "CREATE SERVER other FOREIGN DATA WRAPPER postgres_fdw",
    FloorRule.SERVER_CONFIG: "ALTER SYSTEM SET work_mem = '64MB'",
    FloorRule.ROLE_SWITCH: "SET ROLE postgres",
    FloorRule.ROLE_SETTING: "ALTER ROLE svc SET work_mem = '64MB'",
}


def make_admin(username: str = "admin2") -> Any:
    """A second admin, TOTP activated like the ``admin_user`` persona."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    user = get_user_model().objects.create_user(
        username=username, email=f"{username}@example.com", password="pw-admin2-Warden1!"
    )
    Membership.objects.create(user=user, role=Role.ADMIN)
    TOTP.activate(user, generate_totp_secret())
    return user


@pytest.fixture
def second_admin(admin_user: Any) -> Any:
    return make_admin()


@pytest.fixture
def staging(demo_policy: Any, admin_user: Any) -> Any:
    """A staging datasource team A may connect to (grants there need no approval)."""
    return services.datasource_create(
        actor=admin_user,
        name="crm-staging",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=demo_policy.datasource.schema_snapshot,
        connect_teams=[demo_policy.team_a],
    )


def in_hours(hours: float) -> datetime.datetime:
    return timezone.now() + datetime.timedelta(hours=hours)


def grant(actor: Any, datasource: Any, identity: Any, **kwargs: Any) -> BreakGlassGrant:
    values: dict[str, Any] = {
        "rules": [FloorRule.COPY_SERVER_SIDE],
        "reason": "INC-4711: export the orders for the auditors",
        "expires_at": in_hours(2),
    }
    values.update(kwargs)
    return services.break_glass_create(
        actor=actor, datasource=datasource, identity=identity, **values
    )


def events(datasource: Any, prefix: str = "break_glass.") -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(
            chain=datasource_chain(datasource.pk), type__startswith=prefix
        ).order_by("seq")
    )


def history(obj: BreakGlassGrant) -> list[str]:
    return list(
        ChangeRecord.objects.filter(
            content_type__model="breakglassgrant", object_id=str(obj.pk)
        ).values_list("action", flat=True)
    )


# --- the list of floor rules ------------------------------------------------------------


def test_the_floor_rules_are_exactly_those_the_engine_names() -> None:
    """``FloorRule`` is kept in governance (the sidecar package exports no list): it must
    name every ``floor.*`` id the engine's source holds, and nothing else."""
    found: set[str] = set()
    for source in ENGINE_DIR.glob("*.py"):
        found |= set(re.findall(r"[\"'](floor\.[a-z_]+)[\"']", source.read_text()))
    assert found == set(FloorRule.values)


@pytest.mark.parametrize("rule", list(FloorRule))
def test_the_engine_produces_each_floor_rule(demo_policy: Any, rule: FloorRule) -> None:
    engine = Engine(load_bundle(bundle_compile(datasource=demo_policy.datasource)))
    decision = engine.decide(identity=demo_policy.service.name, sql=FLOOR_STATEMENTS[rule])
    assert decision.action == "block"
    assert rule.value in {r.rule for r in decision.reasons}


# --- making grants ----------------------------------------------------------------------


def test_outside_production_a_grant_is_active_at_once(
    staging: Any, demo_policy: Any, admin_user: Any
) -> None:
    made = grant(admin_user, staging, demo_policy.service, rules=["floor.role_switch", COPY_RULE])
    made.refresh_from_db()
    assert made.state == BreakGlassState.ACTIVE and made.is_in_force
    assert made.created_by == admin_user and made.approved_by is None
    assert made.rules == sorted(["floor.role_switch", COPY_RULE])
    assert history(made) == ["create"]
    (created,) = events(staging)
    assert created.actor == "admin" and created.outcome == "active"
    assert created.extra["detail"]["identity"] == "svc-billing"
    assert created.extra["detail"]["rules"] == made.rules
    assert created.extra["detail"]["reason"].startswith("INC-4711")
    # The generic policy.change event joins the datasource's chain too.
    assert events(staging, "policy.change")[-1].extra["detail"]["model"] == "breakglassgrant"


def test_in_production_a_second_admin_must_approve(
    demo_policy: Any, admin_user: Any, second_admin: Any
) -> None:
    ds = demo_policy.datasource
    made = grant(admin_user, ds, demo_policy.service)
    assert made.state == BreakGlassState.PENDING and not made.is_in_force
    # The one who asked may neither approve nor deny.
    with pytest.raises(PermissionDenied):
        services.break_glass_approve(actor=admin_user, grant=made)
    with pytest.raises(PermissionDenied):
        services.break_glass_deny(actor=admin_user, grant=made)
    made.refresh_from_db()
    assert made.state == BreakGlassState.PENDING
    approved = services.break_glass_approve(actor=second_admin, grant=made)
    approved.refresh_from_db()
    assert approved.state == BreakGlassState.ACTIVE
    assert approved.approved_by == second_admin and approved.approved_at is not None
    assert history(made) == ["update", "create"]  # newest first
    assert [e.type for e in events(ds)] == ["break_glass.created", "break_glass.approved"]
    assert events(ds)[-1].actor == "admin2"
    with pytest.raises(ApplicationError, match="pending"):
        services.break_glass_approve(actor=second_admin, grant=made)


def test_a_second_admin_may_deny_and_the_maker_may_withdraw(
    demo_policy: Any, admin_user: Any, second_admin: Any
) -> None:
    ds = demo_policy.datasource
    asked = grant(admin_user, ds, demo_policy.service)
    denied = services.break_glass_deny(actor=second_admin, grant=asked)
    denied.refresh_from_db()
    assert denied.state == BreakGlassState.DENIED and denied.denied_by == second_admin
    with pytest.raises(ApplicationError):
        services.break_glass_approve(actor=second_admin, grant=denied)
    with pytest.raises(ApplicationError):
        services.break_glass_revoke(actor=admin_user, grant=denied)
    withdrawn = services.break_glass_revoke(
        actor=admin_user, grant=grant(admin_user, ds, demo_policy.service)
    )
    assert withdrawn.state == BreakGlassState.REVOKED and withdrawn.revoked_by == admin_user
    assert [e.type for e in events(ds)] == [
        "break_glass.created",
        "break_glass.denied",
        "break_glass.created",
        "break_glass.revoked",
    ]


@pytest.mark.parametrize("role", ["security", "reviewer", "auditor", "none"])
def test_only_admins_make_decide_or_revoke(
    demo_policy: Any,
    personas: dict[str, Any],
    admin_user: Any,
    second_admin: Any,
    role: str,
) -> None:
    ds, actor = demo_policy.datasource, personas[role]
    with pytest.raises(PermissionDenied):
        grant(actor, ds, demo_policy.service)
    pending = grant(admin_user, ds, demo_policy.service)
    for service in (
        services.break_glass_approve,
        services.break_glass_deny,
        services.break_glass_revoke,
    ):
        with pytest.raises(PermissionDenied):
            service(actor=actor, grant=pending)
    pending.refresh_from_db()
    assert pending.state == BreakGlassState.PENDING
    assert BreakGlassGrant.objects.count() == 1


@pytest.mark.parametrize(
    ("hours", "message"),
    [(BREAK_GLASS_MAX_HOURS + 0.05, "at most 24 hours"), (-0.1, "in the future")],
)
def test_the_expiry_is_in_the_future_and_within_24_hours(
    staging: Any, demo_policy: Any, admin_user: Any, hours: float, message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        grant(admin_user, staging, demo_policy.service, expires_at=in_hours(hours))
    assert message in " ".join(refused.value.message_dict["expires_at"])
    assert not BreakGlassGrant.objects.exists()
    longest = in_hours(BREAK_GLASS_MAX_HOURS - 0.01)
    assert grant(admin_user, staging, demo_policy.service, expires_at=longest).is_in_force


def test_the_identity_must_be_allowed_on_the_datasource(
    staging: Any, demo_policy: Any, admin_user: Any, reviewer_user: Any
) -> None:
    # The reviewer's identity is in no team that may connect.
    with pytest.raises(ValidationError) as refused:
        grant(admin_user, staging, reviewer_user.identity)
    assert "may not connect" in refused.value.message_dict["identity"][0]
    services.identity_update(
        actor=admin_user, identity=demo_policy.agent, data={"is_active": False}
    )
    with pytest.raises(ValidationError):
        grant(admin_user, staging, demo_policy.agent)
    assert not BreakGlassGrant.objects.exists()


@pytest.mark.parametrize(
    ("rules", "field_message"),
    [
        ([], "at least one"),
        (["default.copy_server_side"], "Not a safety-floor rule"),
        (["mask.statement_text"], "Not a safety-floor rule"),
        ("floor.role_switch", "list"),
    ],
)
def test_only_floor_rules_can_be_lifted(
    staging: Any, demo_policy: Any, admin_user: Any, rules: Any, field_message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        grant(admin_user, staging, demo_policy.service, rules=rules)
    assert field_message in " ".join(refused.value.message_dict["rules"])


def test_a_reason_is_required(staging: Any, demo_policy: Any, admin_user: Any) -> None:
    with pytest.raises(ValidationError) as refused:
        grant(admin_user, staging, demo_policy.service, reason="   ")
    assert "reason" in refused.value.message_dict


def test_revoke_ends_an_active_grant(staging: Any, demo_policy: Any, admin_user: Any) -> None:
    made = grant(admin_user, staging, demo_policy.service)
    revoked = services.break_glass_revoke(actor=admin_user, grant=made)
    revoked.refresh_from_db()
    assert revoked.state == BreakGlassState.REVOKED and revoked.revoked_at is not None
    assert history(made) == ["update", "create"]
    assert [e.type for e in events(staging)][-1] == "break_glass.revoked"
    with pytest.raises(ApplicationError, match="already revoked"):
        services.break_glass_revoke(actor=admin_user, grant=made)
    assert bundle_compile(datasource=staging)["break_glass"] == []


# --- the database refuses what the services refuse -------------------------------------


def test_the_database_keeps_four_eyes_and_the_24_hours(demo_policy: Any, admin_user: Any) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    rows = BreakGlassGrant.objects.filter(pk=made.pk)
    now = timezone.now()
    for change in (
        {"state": "active", "approved_by": admin_user, "approved_at": now},
        {"state": "denied", "denied_by": admin_user, "denied_at": now},
        {"expires_at": made.created_at + datetime.timedelta(hours=24, seconds=1)},
        {"rules": ["default.unknown_statement"]},
        {"rules": []},
        {"reason": ""},
        {"state": "revoked"},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            rows.update(**change)


# --- expiry ----------------------------------------------------------------------------


def test_beat_marks_expired_grants_and_the_bundle_drops_them(
    staging: Any, demo_policy: Any, admin_user: Any
) -> None:
    made = grant(admin_user, staging, demo_policy.service, expires_at=in_hours(1))
    pending = grant(admin_user, demo_policy.datasource, demo_policy.service, expires_at=in_hours(1))
    later = in_hours(2)
    assert services.break_glass_expire(now=in_hours(0.5)) == []
    assert sorted(services.break_glass_expire(now=later)) == sorted(
        [staging.pk, demo_policy.datasource.pk]
    )
    for row in (made, pending):
        row.refresh_from_db()
        assert row.state == BreakGlassState.EXPIRED
        assert history(row) == ["update", "create"]
    expired = events(staging)[-1]
    assert expired.type == "break_glass.expired" and expired.actor == "system"
    assert services.break_glass_expire(now=later) == []


def test_a_grant_that_expired_pending_cannot_be_approved(
    demo_policy: Any, admin_user: Any, second_admin: Any
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    past = timezone.now() - datetime.timedelta(minutes=1)
    BreakGlassGrant.objects.filter(pk=made.pk).update(
        created_at=past - datetime.timedelta(hours=1), expires_at=past
    )
    with pytest.raises(ApplicationError, match="expired"):
        services.break_glass_approve(actor=second_admin, grant=made)


# --- the bundle and the engine ---------------------------------------------------------


def test_the_bundle_carries_exactly_the_active_unexpired_grants(
    demo_policy: Any, staging: Any, admin_user: Any, second_admin: Any
) -> None:
    prod = demo_policy.datasource
    active = grant(
        admin_user,
        staging,
        demo_policy.service,
        rules=[FloorRule.ROLE_SWITCH, COPY_RULE],
        expires_at=in_hours(3),
    )
    revoked = services.break_glass_revoke(
        actor=admin_user, grant=grant(admin_user, staging, demo_policy.agent)
    )
    lapsed = grant(admin_user, staging, demo_policy.agent)
    past = timezone.now() - datetime.timedelta(minutes=5)
    BreakGlassGrant.objects.filter(pk=lapsed.pk).update(
        created_at=past - datetime.timedelta(hours=1), expires_at=past
    )  # active, but beat has not marked it expired yet
    pending = grant(admin_user, prod, demo_policy.service)
    assert revoked.state == "revoked" and pending.state == "pending"

    active.refresh_from_db()
    expected = active.expires_at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    bundle = bundle_compile(datasource=staging)
    assert bundle["break_glass"] == [
        {
            "id": str(active.pk),
            "identity": "svc-billing",
            "rules": ["floor.copy_server_side", "floor.role_switch"],
            "expires_at": expected,
        }
    ]
    assert bundle_compile(datasource=prod)["break_glass"] == []
    approved = services.break_glass_approve(actor=second_admin, grant=pending)
    assert [g["id"] for g in bundle_compile(datasource=prod)["break_glass"]] == [str(approved.pk)]


def test_a_grant_whose_identity_left_the_datasource_is_not_compiled(
    staging: Any, demo_policy: Any, admin_user: Any
) -> None:
    grant(admin_user, staging, demo_policy.agent)
    services.identity_update(actor=admin_user, identity=demo_policy.agent, data={"teams": []})
    assert bundle_compile(datasource=staging)["break_glass"] == []


def test_the_engine_lifts_the_named_floor_rule_for_that_identity_only(
    staging: Any, demo_policy: Any, admin_user: Any
) -> None:
    made = grant(admin_user, staging, demo_policy.service, rules=[COPY_RULE])
    engine = Engine(load_bundle(bundle_compile(datasource=staging)))

    lifted = engine.decide(identity="svc-billing", sql=COPY_OUT)
    assert lifted.break_glass == (str(made.pk),)
    assert lifted.to_json()["break_glass"] == [str(made.pk)]
    assert "floor.copy_server_side" not in {r.rule for r in lifted.reasons}
    assert lifted.action != "block"

    # Another identity allowed on the same datasource: still the floor.
    other = engine.decide(identity="agent-reports", sql=COPY_OUT)
    assert other.action == "block" and other.break_glass == ()
    assert "floor.copy_server_side" in {r.rule for r in other.reasons}
    # A floor rule the grant does not name stays.
    role = engine.decide(identity="svc-billing", sql="SET ROLE postgres")
    assert role.action == "block" and "floor.role_switch" in {r.rule for r in role.reasons}
    # And only until it expires, by the engine's own clock.
    after = (made.expires_at + datetime.timedelta(seconds=1)).timestamp()
    assert engine.decide(identity="svc-billing", sql=COPY_OUT, now=after).action == "block"

    services.break_glass_revoke(actor=admin_user, grant=made)
    engine = Engine(load_bundle(bundle_compile(datasource=staging)))
    assert engine.decide(identity="svc-billing", sql=COPY_OUT).action == "block"


def test_a_grant_change_recompiles_only_its_datasource(
    staging: Any, demo_policy: Any, admin_user: Any
) -> None:
    from governance.bundles import _datasource_scope

    assert _datasource_scope(grant(admin_user, staging, demo_policy.service)) == [staging.pk]


def test_beat_runs_the_expiry_sweep_every_minute(
    settings: Any, staging: Any, demo_policy: Any, admin_user: Any
) -> None:
    from config.celery import app
    from governance import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["break-glass-expire"]
    assert entry["schedule"] == 60.0
    assert entry["task"] == tasks.break_glass_expire.name and entry["task"] in app.tasks
    made = grant(admin_user, staging, demo_policy.service)
    BreakGlassGrant.objects.filter(pk=made.pk).update(
        created_at=timezone.now() - datetime.timedelta(hours=2),
        expires_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    assert tasks.break_glass_expire() == [staging.pk]
    made.refresh_from_db()
    assert made.state == BreakGlassState.EXPIRED
