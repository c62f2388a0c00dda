"""Create, edit and delete through the HTML forms for every policy object:
happy paths go through the services (and so into the configuration history),
invalid input comes back as inline field errors with nothing stored, and
refusals that are not about one field (built-ins, objects still in use) are
shown on the page instead of a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from audit.selectors import change_history_for
from governance.models import (
    Classification,
    ColumnClassification,
    Datasource,
    Environment,
    Identity,
    MaskingRule,
    Team,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def editor(client: Any, security_user: Any) -> Any:
    client.force_login(security_user)
    return client


# --- teams ------------------------------------------------------------------------------


def test_team_create_edit_delete(editor: Any) -> None:
    response = editor.post(
        reverse("governance:team_create"), {"name": "Data Platform", "slug": "", "description": ""}
    )
    team = Team.objects.get(name="Data Platform")
    assert response.url == reverse("governance:team_detail", args=[team.pk])
    assert team.slug == "data-platform"
    response = editor.post(
        reverse("governance:team_edit", args=[team.pk]),
        {"name": "Data Platform", "slug": "data-platform", "description": "Owns the warehouse"},
    )
    assert response.status_code == 302
    team.refresh_from_db()
    assert team.description == "Owns the warehouse"
    detail = editor.get(reverse("governance:team_detail", args=[team.pk]))
    assert b"Owns the warehouse" in detail.content
    assert [r.action for r in change_history_for(team)] == ["update", "create"]
    assert editor.post(reverse("governance:team_delete", args=[team.pk])).status_code == 302
    assert not Team.objects.filter(pk=team.pk).exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "", "slug": "x"}, "name"),
        ({"name": "Bad", "slug": "Not A Slug"}, "slug"),
        ({"name": "Team A", "slug": "another"}, "name"),  # duplicate name
    ],
)
def test_team_invalid(editor: Any, team_a: Any, data: dict, field: str) -> None:
    before = Team.objects.count()
    response = editor.post(reverse("governance:team_create"), {"description": "", **data})
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    assert b'class="errorlist"' in response.content
    assert Team.objects.count() == before


def test_team_named_in_guardrail_cannot_be_deleted(editor: Any, security_user: Any, team_a: Any):
    from governance import services

    services.guardrail_create(
        actor=security_user,
        name="team-a-reads",
        action="review",
        message="Team A reads are reviewed.",
        conditions={"teams": ["team-a"], "environments": ["staging"]},
    )
    response = editor.post(reverse("governance:team_delete", args=[team_a.pk]))
    assert response.status_code == 400
    assert b"team-a-reads" in response.content
    assert Team.objects.filter(pk=team_a.pk).exists()


# --- identities ---------------------------------------------------------------------------


def test_identity_create_agent_with_owner(editor: Any, demo_policy: Any) -> None:
    owner = demo_policy.owner
    response = editor.post(
        reverse("governance:identity_create"),
        {
            "name": "agent-sql-helper",
            "kind": "agent",
            "display_name": "SQL helper",
            "email": "",
            "owner": owner.pk,
            "teams": [demo_policy.team_a.pk],
            "is_active": "on",
            "expires_at": "",
        },
    )
    agent = Identity.objects.get(name="agent-sql-helper")
    assert response.url == reverse("governance:identity_detail", args=[agent.pk])
    assert agent.owner == owner
    assert list(agent.teams.all()) == [demo_policy.team_a]


def test_identity_agent_without_owner_is_refused(editor: Any, demo_policy: Any) -> None:
    response = editor.post(
        reverse("governance:identity_create"),
        {"name": "agent-orphan", "kind": "agent", "is_active": "on"},
    )
    assert response.status_code == 400
    assert b"accountable human owner" in response.content
    assert response.context["form"].errors["owner"]
    assert not Identity.objects.filter(name="agent-orphan").exists()


@pytest.mark.parametrize("name", ["", "Has Spaces", "UPPER", "x" * 64])
def test_identity_bad_name(editor: Any, name: str) -> None:
    response = editor.post(
        reverse("governance:identity_create"), {"name": name, "kind": "human", "is_active": "on"}
    )
    assert response.status_code == 400
    assert response.context["form"].errors["name"]
    assert not Identity.objects.filter(kind="human", user__isnull=True).exists()


def test_identity_filters(client: Any, demo_policy: Any, auditor_user: Any) -> None:
    client.force_login(auditor_user)
    url = reverse("governance:identity_list")
    names = lambda r: {i.name for i in r.context["objects"]}  # noqa: E731
    assert names(client.get(url, {"kind": "agent"})) == {"agent-reports"}
    assert names(client.get(url, {"kind": "service"})) == {"svc-billing"}
    assert "svc-billing" in names(client.get(url, {"team": "team-a"}))
    assert names(client.get(url, {"q": "billing"})) == {"svc-billing"}
    # A nonsense filter value is ignored, not a crash.
    assert client.get(url, {"kind": "robot"}).status_code == 200


def test_identity_owning_others_cannot_be_deleted(editor: Any, demo_policy: Any) -> None:
    response = editor.post(reverse("governance:identity_delete", args=[demo_policy.owner.pk]))
    assert response.status_code == 400
    assert Identity.objects.filter(pk=demo_policy.owner.pk).exists()


# --- datasources ---------------------------------------------------------------------------


def test_datasource_create_with_schema(editor: Any, team_a: Any) -> None:
    staging = Environment.objects.get(name="staging")
    schema = {
        "tables": [{"schema": "public", "name": "t", "columns": [{"name": "a", "type": "int"}]}]
    }
    response = editor.post(
        reverse("governance:datasource_create"),
        {
            "name": "warehouse-staging",
            "environment": staging.pk,
            "engine": "postgresql",
            "dialect": "postgres",
            "description": "",
            "connect_teams": [team_a.pk],
            "schema_snapshot": json.dumps(schema),
        },
    )
    ds = Datasource.objects.get(name="warehouse-staging")
    assert response.url == reverse("governance:datasource_detail", args=[ds.pk])
    assert ds.schema_snapshot == schema
    assert ds.mask_services_provisionally is False  # the default: audited only
    detail = editor.get(response.url)
    assert b"public.t" in detail.content


def test_datasource_switch_to_mask_provisional_columns_for_services(
    client: Any, demo_policy: Any, personas: dict
) -> None:
    ds = demo_policy.datasource
    url = reverse("governance:datasource_edit", args=[ds.pk])
    form = {
        "name": ds.name,
        "environment": ds.environment_id,
        "engine": ds.engine,
        "dialect": ds.dialect,
        "description": ds.description,
        "connect_teams": [t.pk for t in ds.connect_teams.all()],
        "review_teams": [t.pk for t in ds.review_teams.all()],
        "schema_snapshot": json.dumps(ds.schema_snapshot),
        "mask_services_provisionally": "on",
        "reason": "services see masked values too",  # crm-prod is in production
    }
    for role in ("reviewer", "auditor", "none"):
        client.force_login(personas[role])
        assert client.post(url, form).status_code == 403
    ds.refresh_from_db()
    assert ds.mask_services_provisionally is False
    client.force_login(personas["security"])
    assert client.post(url, form).status_code == 302
    ds.refresh_from_db()
    assert ds.mask_services_provisionally is True
    page = client.get(reverse("governance:datasource_detail", args=[ds.pk])).content.decode()
    assert "see provisionally protected columns masked too" in page


@pytest.mark.parametrize(
    ("snapshot", "text"),
    [
        ("{not json", b"Not valid JSON"),
        ('{"tables": "nope"}', b"must be a list"),
        ('{"tables": [{"schema": "public"}]}', b"must be a non-empty string"),
    ],
)
def test_datasource_bad_schema(editor: Any, snapshot: str, text: bytes) -> None:
    production = Environment.objects.get(name="production")
    response = editor.post(
        reverse("governance:datasource_create"),
        {
            "name": "bad-schema",
            "environment": production.pk,
            "engine": "postgresql",
            "dialect": "postgres",
            "schema_snapshot": snapshot,
        },
    )
    assert response.status_code == 400
    assert text in response.content
    assert response.context["form"].errors["schema_snapshot"]
    assert not Datasource.objects.filter(name="bad-schema").exists()


def test_datasource_page_shows_columns_with_classification_and_masking(
    client: Any, demo_policy: Any, auditor_user: Any
) -> None:
    client.force_login(auditor_user)
    response = client.get(reverse("governance:datasource_detail", args=[demo_policy.datasource.pk]))
    tables = {f"{t['schema']}.{t['name']}": t for t in response.context["tables"]}
    columns = {c["name"]: c for c in tables["public.customers"]["columns"]}
    assert columns["email"]["classification"].classification.name == "pii.email"
    assert columns["email"]["masking_rule"].strategy == "email"
    assert columns["ssn"]["masking_rule"].strategy == "partial"
    assert columns["id"]["classification"] is None
    card = {c["name"]: c for c in tables["public.orders"]["columns"]}["card_number"]
    # No rule: the control plane compiles the classification's default mask, and says so.
    assert card["masking_rule"] is None
    assert card["default_mask"] == "partial"
    assert b"partial (default)" in response.content


# --- classifications and column classifications -------------------------------------------


def test_classification_create_and_builtin_cannot_be_deleted(editor: Any) -> None:
    response = editor.post(
        reverse("governance:classification_create"),
        {"name": "pii.passport", "level": "restricted", "description": "Passport numbers"},
    )
    assert response.status_code == 302
    assert Classification.objects.filter(name="pii.passport", is_builtin=False).exists()
    builtin = Classification.objects.get(name="pii.email")
    response = editor.post(reverse("governance:classification_delete", args=[builtin.pk]))
    assert response.status_code == 400
    assert b"built in" in response.content
    assert Classification.objects.filter(pk=builtin.pk).exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "nodot", "level": "internal"}, "name"),
        ({"name": "pii.x", "level": "secret-ish"}, "level"),
        ({"name": "pii.email", "level": "internal"}, "name"),
    ],
)
def test_classification_invalid(editor: Any, data: dict, field: str) -> None:
    before = Classification.objects.count()
    response = editor.post(reverse("governance:classification_create"), data)
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    assert Classification.objects.count() == before


def test_column_classification_set_and_relabel(editor: Any, demo_policy: Any) -> None:
    phone = Classification.objects.get(name="pii.phone")
    ds = demo_policy.datasource
    create = reverse("governance:column_create")
    prefilled = editor.get(create, {"datasource": ds.pk, "table_name": "customers"})
    assert prefilled.context["form"].initial["table_name"] == "customers"
    response = editor.post(
        create,
        {
            "datasource": ds.pk,
            "schema_name": "public",
            "table_name": "customers",
            "column_name": "phone",
            "classification": phone.pk,
        },
    )
    column = ColumnClassification.objects.get(datasource=ds, column_name="phone")
    assert response.url == reverse("governance:column_detail", args=[column.pk])
    assert column.status == "confirmed"
    name = Classification.objects.get(name="pii.name")
    edit = reverse("governance:column_edit", args=[column.pk])
    refused = editor.post(edit, {"classification": name.pk})  # crm-prod: a reason first
    assert refused.status_code == 400 and refused.context["form"].errors["reason"]
    editor.post(edit, {"classification": name.pk, "reason": "a name, not a phone number"})
    column.refresh_from_db()
    assert column.classification == name
    assert column.column_name == "phone"


def test_column_not_in_snapshot_is_refused(editor: Any, demo_policy: Any) -> None:
    phone = Classification.objects.get(name="pii.phone")
    response = editor.post(
        reverse("governance:column_create"),
        {
            "datasource": demo_policy.datasource.pk,
            "schema_name": "public",
            "table_name": "customers",
            "column_name": "no_such_column",
            "classification": phone.pk,
        },
    )
    assert response.status_code == 400
    assert response.context["form"].errors["column_name"]
    assert not ColumnClassification.objects.filter(column_name="no_such_column").exists()


# --- masking rules --------------------------------------------------------------------------


def test_masking_rule_edit_shows_in_history(editor: Any, demo_policy: Any) -> None:
    rule = demo_policy.masking_rules[1]  # mask-ssn, partial keep_last 4
    url = reverse("governance:masking_rule_edit", args=[rule.pk])
    form = editor.get(url).context["form"]
    # Parameters are typed fields, one per parameter, not a JSON text.
    assert form["param_keep_last"].value() == 4 and "params" not in form.fields
    response = editor.post(
        url,
        {
            "name": "mask-ssn",
            "classification": rule.classification_id,
            "strategy": "partial",
            "param_keep_last": "2",
            "environments": ["production"],
            "exempt_teams": [demo_policy.team_b.pk],
            "enabled": "on",
            "reason": "four digits are enough to identify",
        },
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.params == {"keep_last": 2}
    assert rule.environments == ["production"]
    detail = editor.get(reverse("governance:masking_rule_detail", args=[rule.pk]))
    rows = detail.content.decode()
    assert "params.keep_last" in rows
    assert '<td class="before">4</td><td class="after">2</td>' in rows


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"param_keep_last": "99"}, "param_keep_last", "less than or equal to 16"),
        ({"param_keep_last": ""}, "param_keep_last", "is required for the partial strategy"),
        ({"param_keep_last": "two"}, "param_keep_last", "Enter a whole number"),
        ({"strategy": "scramble"}, "strategy", "Select a valid choice"),
        ({"classification": "999999"}, "classification", "Select a valid choice"),
        ({"environments": ["mars"]}, "environments", "Select a valid choice"),
    ],
)
def test_masking_rule_invalid(
    editor: Any, demo_policy: Any, overrides: dict, field: str, text: str
) -> None:
    card = Classification.objects.get(name="financial.card")
    data = {
        "name": "mask-card",
        "classification": card.pk,
        "strategy": "partial",
        "param_keep_last": "4",
        "enabled": "on",
        **overrides,
    }
    response = editor.post(reverse("governance:masking_rule_create"), data)
    assert response.status_code == 400
    assert text in response.content.decode()
    assert response.context["form"].errors[field]
    assert not MaskingRule.objects.filter(name="mask-card").exists()


def test_second_rule_for_same_classification_is_refused(editor: Any, demo_policy: Any) -> None:
    email = Classification.objects.get(name="pii.email")
    response = editor.post(
        reverse("governance:masking_rule_create"),
        {"name": "mask-email-2", "classification": email.pk, "strategy": "redact", "enabled": "on"},
    )
    assert response.status_code == 400
    assert b"already masks pii.email" in response.content
    assert not MaskingRule.objects.filter(name="mask-email-2").exists()


def test_scanner_proposal_confirmed_or_rejected(
    editor: Any, demo_policy: Any, security_user: Any
) -> None:
    from governance import services

    phone = Classification.objects.get(name="pii.phone")
    proposal = services.column_classification_set(
        actor=security_user,
        datasource=demo_policy.datasource,
        schema_name="public",
        table_name="customers",
        column_name="phone",
        classification=phone,
        source="auto",
        confidence=0.8,
    )
    assert proposal.status == "proposed"
    listing = editor.get(reverse("governance:column_list"), {"status": "proposed"})
    assert [c.pk for c in listing.context["objects"]] == [proposal.pk]
    assert b'value="confirmed"' in listing.content
    url = reverse("governance:column_review", args=[proposal.pk])
    assert editor.get(url).status_code == 405
    bad = editor.post(url, {"status": "maybe"})
    assert bad.status_code == 400
    proposal.refresh_from_db()
    assert proposal.status == "proposed"
    response = editor.post(url, {"status": "confirmed", "next": "/columns/?status=proposed"})
    assert response.status_code == 302
    assert response.url == "/columns/?status=proposed"
    proposal.refresh_from_db()
    assert proposal.status == "confirmed"
    assert proposal.confirmed_by == security_user


def test_review_needs_an_editor(client: Any, demo_policy: Any, auditor_user: Any) -> None:
    column = demo_policy.columns[0]
    url = reverse("governance:column_review", args=[column.pk])
    assert client.post(url, {"status": "rejected"}).status_code == 302  # to sign-in
    client.force_login(auditor_user)
    assert client.post(url, {"status": "rejected"}).status_code == 403
    column.refresh_from_db()
    assert column.status == "confirmed"


def test_lists_paginate_and_keep_filters(editor: Any, security_user: Any) -> None:
    from governance import services

    for i in range(30):
        services.team_create(actor=security_user, name=f"Squad {i:02d}", slug=f"squad-{i:02d}")
    url = reverse("governance:team_list")
    first = editor.get(url, {"q": "squad"})
    assert len(first.context["objects"]) == 25
    assert first.context["page"].paginator.count == 30
    # The next-page link keeps the search.
    assert b'href="?q=squad&amp;page=2"' in first.content
    second = editor.get(url, {"q": "squad", "page": 2})
    assert [t.name for t in second.context["objects"]] == [f"Squad {i:02d}" for i in range(25, 30)]
    # A page number past the end shows the last page rather than failing.
    assert editor.get(url, {"q": "squad", "page": 99}).status_code == 200
    assert editor.get(url, {"page": "x"}).status_code == 200


def test_history_page_lists_changes_with_filters(
    client: Any, demo_policy: Any, security_user: Any, auditor_user: Any
) -> None:
    from governance import services

    rule = demo_policy.masking_rules[0]
    services.masking_rule_update(
        actor=security_user, rule=rule, data={"strategy": "redact"}, reason="stricter"
    )
    client.force_login(auditor_user)
    url = reverse("governance:change_list")
    response = client.get(url, {"model": "maskingrule", "actor": "security"})
    assert response.status_code == 200
    records = list(response.context["objects"])
    assert [(r.action, r.object_repr) for r in records] == [("update", "mask-email")]
    body = response.content.decode()
    assert f'href="{reverse("governance:masking_rule_detail", args=[rule.pk])}"' in body
    assert '<td class="before">email</td><td class="after">redact</td>' in body
    # Unfiltered it also holds the demo's creations, by admin.
    everything = client.get(url)
    assert everything.context["page"].paginator.count > 10
    assert client.get(url, {"model": "no-such-model"}).status_code == 200
