"""Guardrail pages: create through the form (conditions built from its fields),
unsafe policy refused inline with nothing stored, inline enable/disable and
reordering with htmx (row partials) and without JavaScript (redirect back)."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from audit.selectors import change_history_for
from governance.models import GuardrailRule

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _form(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "block-deletes-without-where",
        "action": "block",
        "message": "DELETE without WHERE is blocked.",
        "datasource": "",
        "enabled": "on",
        "statement_kinds": ["delete", "update"],
        "environments": ["production"],
        "tables": "public.customers, billing.*",
        "functions": "",
        "missing_where": "true",
        "unbounded_classified_read": "",
        "multi_statement": "",
        "unparseable": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_create_guardrail_builds_conditions_and_records_history(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    response = client.post(reverse("governance:guardrail_create"), _form())
    rule = GuardrailRule.objects.get(name="block-deletes-without-where")
    assert response.status_code == 302
    assert response.url == reverse("governance:guardrail_detail", args=[rule.pk])
    assert rule.position == 3  # appended after the demo's two rules
    assert rule.conditions["statement_kinds"] == ["delete", "update"]
    assert rule.conditions["tables"] == ["public.customers", "billing.*"]
    assert rule.conditions["missing_where"] is True
    assert rule.conditions["multi_statement"] is None
    record = change_history_for(rule).get(action="create")
    assert record.actor == security_user
    page = client.get(response.url)
    assert b"security</strong>" in page.content
    assert b"created this" in page.content


def test_allow_all_in_production_is_refused_inline(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    before = GuardrailRule.objects.count()
    response = client.post(
        reverse("governance:guardrail_create"),
        _form(
            name="allow-everything",
            action="allow",
            message="",
            statement_kinds=None,
            environments=None,
            tables="",
            missing_where="",
        ),
    )
    assert response.status_code == 400
    assert b"would allow everything in production" in response.content
    assert b'class="form-errors"' in response.content
    assert GuardrailRule.objects.count() == before


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"name": ""}, "name", b"This field is required"),
        ({"action": "explode"}, "action", b"Select a valid choice"),
        ({"message": ""}, "message", b"needs a message"),
        ({"statement_kinds": ["nonsense"]}, "statement_kinds", b"Select a valid choice"),
        ({"missing_where": "maybe"}, "missing_where", b"Select a valid choice"),
        ({"datasource": "999999"}, "datasource", b"Select a valid choice"),
        ({"tables": "bad table!"}, None, b"Tables must look like"),
    ],
)
def test_invalid_guardrail_shows_field_errors_and_stores_nothing(
    client: Any, demo_policy: Any, security_user: Any, overrides: dict, field: str, text: bytes
) -> None:
    client.force_login(security_user)
    before = list(GuardrailRule.objects.values_list("pk", "name"))
    response = client.post(reverse("governance:guardrail_create"), _form(**overrides))
    assert response.status_code == 400
    assert text in response.content
    if field is not None:
        assert response.context["form"].errors.get(field)
    assert list(GuardrailRule.objects.values_list("pk", "name")) == before


def test_edit_guardrail_prefills_and_saves(client: Any, demo_policy: Any, security_user: Any):
    client.force_login(security_user)
    rule = demo_policy.guardrails[0]
    url = reverse("governance:guardrail_edit", args=[rule.pk])
    form = client.get(url).context["form"]
    assert form.initial["environments"] == ["production"]
    assert form.initial["statement_kinds"] == ["ddl"]
    # Its message only (the form posts every field): no reason needed.
    data = _form(name=rule.name, message="No DDL in production, use migrations.")
    data.update(statement_kinds=["ddl"], tables="", missing_where="")
    response = client.post(url, data)
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.message == "No DDL in production, use migrations."
    detail = client.get(reverse("governance:guardrail_detail", args=[rule.pk]))
    # The history shows what changed, from what to what.
    assert b"Schema changes in production go through migrations." in detail.content
    assert b"No DDL in production, use migrations." in detail.content


def test_toggle_with_htmx_returns_the_row(client: Any, demo_policy: Any, security_user: Any):
    client.force_login(security_user)
    rule = demo_policy.guardrails[1]
    url = reverse("governance:guardrail_toggle", args=[rule.pk])
    response = client.post(url, {"reason": "noisy"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.strip().startswith(f'<tr id="guardrail-{rule.pk}"')
    assert 'aria-checked="false"' in body
    rule.refresh_from_db()
    assert rule.enabled is False
    assert change_history_for(rule).filter(action="update").exists()
    # A review rule switched back on in production needs a reason too.
    refused = client.post(url, HTTP_HX_REQUEST="true")
    assert "give a reason" in refused["HX-Trigger"]
    client.post(url, {"reason": "quiet again"}, HTTP_HX_REQUEST="true")
    rule.refresh_from_db()
    assert rule.enabled is True


def test_toggle_without_javascript_redirects_back(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    rule = demo_policy.guardrails[0]
    url = reverse("governance:guardrail_toggle", args=[rule.pk])
    # It protects production: without a reason a page asks for one, keeping "next".
    asked = client.post(url, {"next": "/guardrails/?action=block"})
    assert asked.status_code == 400
    assert b'name="reason"' in asked.content and b"/guardrails/?action=block" in asked.content
    rule.refresh_from_db()
    assert rule.enabled is True
    response = client.post(url, {"next": "/guardrails/?action=block", "reason": "noisy"})
    assert response.status_code == 302
    assert response.url == "/guardrails/?action=block"
    rule.refresh_from_db()
    assert rule.enabled is False
    # An off-site "next" is ignored rather than followed.
    response = client.post(url, {"next": "https://evil.example/"})
    assert response.url == reverse("governance:guardrail_list")


def test_enabling_an_unsafe_rule_is_refused_inline(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    from governance import services

    client.force_login(security_user)
    # Disabled allow-all rules are harmless; turning one on in production is not.
    rule = services.guardrail_create(
        actor=security_user, name="allow-all", action="allow", enabled=False
    )
    url = reverse("governance:guardrail_toggle", args=[rule.pk])
    response = client.post(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"would allow everything in production" in response.content
    assert "warden:error" in response["HX-Trigger"]
    rule.refresh_from_db()
    assert rule.enabled is False


def test_move_reorders_and_returns_all_rows(client: Any, demo_policy: Any, security_user: Any):
    client.force_login(security_user)
    first, second = demo_policy.guardrails
    url = reverse("governance:guardrail_move", args=[second.pk])
    # Both protect production: the move changes which decides first, so a reason.
    refused = client.post(url, {"direction": "up"}, HTTP_HX_REQUEST="true")
    assert "give a reason" in refused["HX-Trigger"]
    response = client.post(url, {"direction": "up", "reason": "x"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.strip().startswith('<tbody id="guardrail-rows"')
    assert body.index(f'id="guardrail-{second.pk}"') < body.index(f'id="guardrail-{first.pk}"')
    first.refresh_from_db()
    second.refresh_from_db()
    assert (second.position, first.position) == (1, 2)
    # Without JavaScript: a redirect back to the list, same effect.
    response = client.post(url, {"direction": "down", "reason": "x"})
    assert response.status_code == 302
    second.refresh_from_db()
    assert second.position == 2


def test_move_with_bad_direction_is_400_and_changes_nothing(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    rule = demo_policy.guardrails[0]
    url = reverse("governance:guardrail_move", args=[rule.pk])
    response = client.post(url, {"direction": "sideways"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400
    rule.refresh_from_db()
    assert rule.position == 1


def test_delete_guardrail_after_confirmation(client: Any, demo_policy: Any, security_user: Any):
    client.force_login(security_user)
    rule = demo_policy.guardrails[0]
    url = reverse("governance:guardrail_delete", args=[rule.pk])
    confirm = client.get(url)
    assert confirm.status_code == 200
    assert b"cannot be undone" in confirm.content
    assert b'name="reason"' in confirm.content  # it protects crm-prod
    assert GuardrailRule.objects.filter(pk=rule.pk).exists()
    refused = client.post(url)
    assert refused.status_code == 400 and b"give a reason" in refused.content
    assert GuardrailRule.objects.filter(pk=rule.pk).exists()
    response = client.post(url, {"reason": "replaced by a migration check"})
    assert response.status_code == 302
    assert not GuardrailRule.objects.filter(pk=rule.pk).exists()
    assert change_history_for(rule).filter(action="delete").exists()


def test_list_filters_and_search(client: Any, demo_policy: Any, auditor_user: Any) -> None:
    client.force_login(auditor_user)
    url = reverse("governance:guardrail_list")
    names = lambda r: [g.name for g in r.context["objects"]]  # noqa: E731
    assert names(client.get(url)) == ["block-ddl-in-production", "review-agent-writes"]
    assert names(client.get(url, {"action": "review"})) == ["review-agent-writes"]
    assert names(client.get(url, {"q": "ddl"})) == ["block-ddl-in-production"]
    assert names(client.get(url, {"q": "no-such-rule"})) == []
    # Auditors see the list without the inline controls.
    assert b'class="switch"' not in client.get(url).content
