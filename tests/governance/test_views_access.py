"""The boring cases, for every HTML view: anonymous → sign-in, wrong role → 403,
read-only roles see pages but cannot change anything, GET on a POST action →
405, an unknown object → 404. Parametrised over every route of the UI."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from governance.models import GuardrailRule, MaskingRule

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # Five personas per test with PBKDF2 would dominate the run; hashing is not under test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# (url name, object key in the demo or None). Read pages: any viewer role.
READ_PAGES = [
    ("governance:home", None),
    ("governance:team_list", None),
    ("governance:team_detail", "team"),
    ("governance:identity_list", None),
    ("governance:identity_detail", "identity"),
    ("governance:datasource_list", None),
    ("governance:datasource_detail", "datasource"),
    ("governance:classification_list", None),
    ("governance:classification_detail", "classification"),
    ("governance:column_list", None),
    ("governance:column_detail", "column"),
    ("governance:masking_rule_list", None),
    ("governance:masking_rule_detail", "masking_rule"),
    ("governance:guardrail_list", None),
    ("governance:guardrail_detail", "guardrail"),
    ("governance:change_list", None),
    ("governance:review_queue", None),
    ("governance:detector_list", None),
    ("governance:detector_detail", "detector"),
]
# Pages that change policy (GET shows the form or confirmation): admin/security only.
WRITE_PAGES = [
    ("governance:team_create", None),
    ("governance:team_edit", "team"),
    ("governance:team_delete", "team"),
    ("governance:identity_create", None),
    ("governance:identity_edit", "identity"),
    ("governance:identity_delete", "identity"),
    ("governance:datasource_create", None),
    ("governance:datasource_edit", "datasource"),
    ("governance:datasource_delete", "datasource"),
    ("governance:classification_create", None),
    ("governance:classification_edit", "classification"),
    ("governance:classification_delete", "classification"),
    ("governance:column_create", None),
    ("governance:column_edit", "column"),
    ("governance:column_delete", "column"),
    ("governance:masking_rule_create", None),
    ("governance:masking_rule_edit", "masking_rule"),
    ("governance:masking_rule_delete", "masking_rule"),
    ("governance:guardrail_create", None),
    ("governance:guardrail_edit", "guardrail"),
    ("governance:guardrail_delete", "guardrail"),
    ("governance:detector_create", None),
    ("governance:detector_edit", "detector"),
    ("governance:detector_delete", "detector"),
]
POST_ONLY = [
    ("governance:guardrail_toggle", "guardrail"),
    ("governance:guardrail_move", "guardrail"),
    ("governance:datasource_scan", "datasource"),
    ("governance:datasource_scan_schedule", "datasource"),
    ("governance:detector_try", None),
]


def _objects(demo: Any) -> dict[str, Any]:
    from governance.models import Classification, CustomDetector

    return {
        "team": demo.team_a,
        "identity": demo.service,
        "datasource": demo.datasource,
        "classification": Classification.objects.get(name="pii.phone"),
        "column": demo.columns[0],
        "masking_rule": demo.masking_rules[0],
        "guardrail": demo.guardrails[0],
        "detector": CustomDetector.objects.get_or_create(
            name="employee-id",
            defaults={
                "classification": Classification.objects.get(name="pii.national_id"),
                "value_regex": r"^E\d{6}$",
            },
        )[0],
    }


def _url(name: str, key: str | None, demo: Any) -> str:
    if key is None:
        return reverse(name)
    return reverse(name, args=[_objects(demo)[key].pk])


@pytest.mark.parametrize(("name", "key"), READ_PAGES + WRITE_PAGES)
def test_anonymous_is_sent_to_sign_in(client: Any, demo_policy: Any, name: str, key: str) -> None:
    url = _url(name, key, demo_policy)
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    assert "next=" in response.url


@pytest.mark.parametrize(("name", "key"), POST_ONLY + WRITE_PAGES)
def test_anonymous_post_changes_nothing(client: Any, demo_policy: Any, name: str, key: str) -> None:
    before = (GuardrailRule.objects.count(), MaskingRule.objects.count())
    response = client.post(_url(name, key, demo_policy), {"name": "x", "direction": "down"})
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    assert (GuardrailRule.objects.count(), MaskingRule.objects.count()) == before


@pytest.mark.parametrize(("name", "key"), READ_PAGES + WRITE_PAGES)
def test_role_none_gets_403(client: Any, demo_policy: Any, outsider_user: Any, name: str, key: str):
    client.force_login(outsider_user)
    response = client.get(_url(name, key, demo_policy))
    assert response.status_code == 403
    assert b"No access" in response.content


@pytest.mark.parametrize("role", ["admin", "security", "reviewer", "auditor"])
@pytest.mark.parametrize(("name", "key"), READ_PAGES)
def test_viewers_read_every_page(
    client: Any, demo_policy: Any, personas: dict[str, Any], role: str, name: str, key: str
) -> None:
    client.force_login(personas[role])
    # (The home page sends a reviewer to the inbox and an auditor to the audit overview.)
    response = client.get(_url(name, key, demo_policy), follow=True)
    assert response.status_code == 200
    # Read-only roles get no edit affordances at all; editors get them on every object.
    may_edit = role in {"admin", "security"}
    assert (b'href="/guardrails/new/"' in response.content) == (
        may_edit and name == "governance:guardrail_list"
    )
    if name.endswith("_detail"):
        assert (b">Edit</a>" in response.content) == may_edit
        assert (b"btn-danger" in response.content) == may_edit


@pytest.mark.parametrize("role", ["reviewer", "auditor", "none"])
@pytest.mark.parametrize(("name", "key"), WRITE_PAGES + POST_ONLY)
def test_read_only_roles_cannot_change_anything(
    client: Any, demo_policy: Any, personas: dict[str, Any], role: str, name: str, key: str
) -> None:
    client.force_login(personas[role])
    url = _url(name, key, demo_policy)
    state = ("pk", "position", "enabled", "name")
    guardrails = list(GuardrailRule.objects.values_list(*state))
    rules = list(MaskingRule.objects.values_list("pk", "name", "strategy"))
    response = client.post(url, {"name": "changed", "action": "allow", "direction": "down"})
    assert response.status_code == 403
    assert list(GuardrailRule.objects.values_list(*state)) == guardrails
    assert list(MaskingRule.objects.values_list("pk", "name", "strategy")) == rules
    if name not in dict(POST_ONLY):
        assert client.get(url).status_code == 403


@pytest.mark.parametrize("role", ["admin", "security"])
@pytest.mark.parametrize(("name", "key"), WRITE_PAGES)
def test_editors_open_every_form(
    client: Any, demo_policy: Any, personas: dict[str, Any], role: str, name: str, key: str
) -> None:
    client.force_login(personas[role])
    response = client.get(_url(name, key, demo_policy))
    assert response.status_code == 200
    assert b"<form" in response.content


@pytest.mark.parametrize(("name", "key"), POST_ONLY)
def test_get_on_post_action_is_405(
    client: Any, demo_policy: Any, security_user: Any, name: str, key: str
) -> None:
    client.force_login(security_user)
    before = list(GuardrailRule.objects.values_list("pk", "position", "enabled"))
    response = client.get(_url(name, key, demo_policy))
    assert response.status_code == 405
    assert list(GuardrailRule.objects.values_list("pk", "position", "enabled")) == before


@pytest.mark.parametrize(
    "path",
    [
        "/teams/999999/",
        "/identities/999999/edit/",
        "/datasources/999999/",
        "/classifications/999999/delete/",
        "/columns/999999/",
        "/masking-rules/999999/edit/",
        "/guardrails/999999/",
        "/tokens/999999/revoke/",
        "/account/api-tokens/999999/revoke/",
    ],
)
def test_unknown_object_is_404(client: Any, security_user: Any, path: str) -> None:
    client.force_login(security_user)
    assert client.get(path).status_code == 404


def test_unsupported_method_is_405(client: Any, security_user: Any) -> None:
    client.force_login(security_user)
    assert client.delete(reverse("governance:guardrail_list")).status_code == 405
    assert client.post(reverse("governance:guardrail_list")).status_code == 405
