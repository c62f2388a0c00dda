"""Every management API endpoint against every persona: 401, 403, 404, 405, 400 and success.

Requests go through the real URL routing, authentication (API tokens minted by
the service, stored as digests), permissions, serializers and services, into
PostgreSQL. "Nothing stored" is checked by counting rows and history.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from audit.models import ChangeRecord
from governance import services
from governance.bundles import bundle_compile
from governance.models import (
    AccessToken,
    Classification,
    ColumnClassification,
    CustomDetector,
    Datasource,
    GuardrailRule,
    Identity,
    MaskingRule,
    Team,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


class Api:
    """A JSON client authenticated with a real API token of ``user`` (or anonymous)."""

    def __init__(self, user: Any = None) -> None:
        self.client = Client()
        self.headers: dict[str, str] = {}
        if user is not None:
            _, raw = services.api_token_issue(actor=user, name="tests")
            self.headers["HTTP_AUTHORIZATION"] = f"Token {raw}"

    def call(self, method: str, url: str, data: Any = None) -> Any:
        body = json.dumps(data) if data is not None else None
        kwargs: dict[str, Any] = dict(self.headers)
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        return getattr(self.client, method.lower())(url, **kwargs)


@pytest.fixture
def api(personas: dict[str, Any]) -> dict[str, Api]:
    clients = {role: Api(user) for role, user in personas.items()}
    clients["anonymous"] = Api()
    return clients


# name -> (model, valid create payload, invalid payload and the field it must name)
def _payloads(demo: Any) -> dict[str, tuple[type, dict, dict, str]]:
    return {
        "teams": (Team, {"name": "Data Platform"}, {"name": "", "slug": "Bad Slug"}, "name"),
        "identities": (
            Identity,
            {"name": "svc-etl", "kind": "service", "owner": "security", "teams": ["team-a"]},
            {"name": "svc-orphan", "kind": "service"},
            "owner",
        ),
        "datasources": (
            Datasource,
            {"name": "hr-staging", "environment": "staging", "connect_teams": ["team-b"]},
            {"name": "hr-x", "environment": "moon"},
            "environment",
        ),
        "classifications": (
            Classification,
            {"name": "pii.passport", "level": "restricted"},
            {"name": "nodots", "level": "secret"},
            "level",
        ),
        "column-classifications": (
            ColumnClassification,
            {
                "datasource": "crm-prod",
                "schema_name": "public",
                "table_name": "customers",
                "column_name": "phone",
                "classification": "pii.phone",
            },
            {
                "datasource": "crm-prod",
                "schema_name": "public",
                "table_name": "customers",
                "column_name": "shoe_size",
                "classification": "pii.phone",
            },
            "column_name",
        ),
        "masking-rules": (
            MaskingRule,
            {
                "name": "mask-card",
                "classification": "financial.card",
                "strategy": "partial",
                "params": {"keep_last": 4},
            },
            {"name": "mask-x", "classification": "pii.unknown", "strategy": "redact"},
            "classification",
        ),
        "guardrails": (
            GuardrailRule,
            {
                "name": "block-truncate",
                "action": "block",
                "conditions": {"statement_kinds": ["truncate"]},
                "message": "TRUNCATE is not allowed.",
            },
            {"name": "allow-everything", "action": "allow", "conditions": {}},
            "conditions",
        ),
        "detectors": (
            CustomDetector,
            {"name": "badge-no", "classification": "pii.national_id", "value_regex": "^B\\d{5}$"},
            {"name": "slow", "classification": "pii.email", "value_regex": "^(a+)+$"},
            "value_regex",
        ),
    }


def _an_object(name: str, demo: Any) -> Any:
    return {
        "teams": demo.team_a,
        "identities": demo.service,
        "datasources": demo.datasource,
        "classifications": Classification.objects.get(name="pii.email"),
        "column-classifications": demo.columns[0],
        "masking-rules": demo.masking_rules[0],
        "guardrails": demo.guardrails[0],
        "detectors": CustomDetector.objects.get_or_create(
            name="employee-id",
            defaults={
                "classification": Classification.objects.get(name="pii.national_id"),
                "value_regex": r"^E\d{6}$",
            },
        )[0],
    }[name]


POLICY = [
    "teams",
    "identities",
    "datasources",
    "classifications",
    "column-classifications",
    "masking-rules",
    "guardrails",
    "detectors",
]


def _routes(name: str, pk: int) -> list[tuple[str, str]]:
    base = f"/api/v1/{name}/"
    routes = [
        ("GET", base),
        ("POST", base),
        ("GET", f"{base}{pk}/"),
        ("PATCH", f"{base}{pk}/"),
        ("PUT", f"{base}{pk}/"),
        ("DELETE", f"{base}{pk}/"),
        ("GET", f"{base}{pk}/history/"),
    ]
    if name == "guardrails":
        routes += [("POST", f"{base}{pk}/{a}/") for a in ("enable", "disable", "move")]
    if name == "identities":
        routes += [("GET", f"{base}{pk}/tokens/"), ("POST", f"{base}{pk}/tokens/")]
    return routes


def _error(response: Any) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "fields"}, body
    return body["error"]


@pytest.mark.parametrize("name", POLICY)
def test_anonymous_gets_401_everywhere(name, api, demo_policy):
    pk = _an_object(name, demo_policy).pk
    for method, url in _routes(name, pk):
        response = api["anonymous"].call(method, url, {} if method != "GET" else None)
        assert response.status_code == 401, (method, url)
        assert response["WWW-Authenticate"] == "Token"
        assert _error(response)["code"] == "not_authenticated"


@pytest.mark.parametrize("name", POLICY)
def test_role_none_gets_403_everywhere(name, api, demo_policy):
    pk = _an_object(name, demo_policy).pk
    for method, url in _routes(name, pk):
        response = api["none"].call(method, url, {} if method != "GET" else None)
        assert response.status_code == 403, (method, url)
        assert _error(response)["code"] == "permission_denied"


@pytest.mark.parametrize("role", ["reviewer", "auditor"])
@pytest.mark.parametrize("name", POLICY)
def test_readers_may_read_but_not_write(name, role, api, demo_policy):
    obj = _an_object(name, demo_policy)
    model, valid, _, _ = _payloads(demo_policy)[name]
    before = (model.objects.count(), ChangeRecord.objects.count())
    assert api[role].call("GET", f"/api/v1/{name}/").status_code == 200
    assert api[role].call("GET", f"/api/v1/{name}/{obj.pk}/").status_code == 200
    assert api[role].call("GET", f"/api/v1/{name}/{obj.pk}/history/").status_code == 200
    assert api[role].call("POST", f"/api/v1/{name}/", valid).status_code == 403
    assert api[role].call("PATCH", f"/api/v1/{name}/{obj.pk}/", {}).status_code == 403
    assert api[role].call("DELETE", f"/api/v1/{name}/{obj.pk}/").status_code == 403
    assert (model.objects.count(), ChangeRecord.objects.count()) == before


@pytest.mark.parametrize("name", POLICY)
def test_security_creates_reads_and_deletes_with_history(name, api, demo_policy):
    model, valid, _, _ = _payloads(demo_policy)[name]
    response = api["security"].call("POST", f"/api/v1/{name}/", valid)
    assert response.status_code == 201, response.json()
    pk = response.json()["id"]
    obj = model.objects.get(pk=pk)
    detail = api["security"].call("GET", f"/api/v1/{name}/{pk}/")
    assert detail.status_code == 200 and detail.json()["id"] == pk
    history = api["auditor"].call("GET", f"/api/v1/{name}/{pk}/history/").json()["results"]
    assert [h["action"] for h in history] == ["create"]
    assert history[0]["actor_name"] == "security"
    # A reason is required where the object protects production (crm-prod); elsewhere
    # it is kept when given.
    response = api["security"].call("DELETE", f"/api/v1/{name}/{pk}/", {"reason": "tidy up"})
    assert response.status_code == 204
    assert not model.objects.filter(pk=obj.pk).exists()
    deleted = ChangeRecord.objects.filter(
        content_type__model=model._meta.model_name, object_id=str(pk), action="delete"
    )
    assert deleted.count() == 1


@pytest.mark.parametrize("name", POLICY)
def test_invalid_payload_is_400_with_field_errors_and_nothing_stored(name, api, demo_policy):
    model, _, invalid, field = _payloads(demo_policy)[name]
    before = (model.objects.count(), ChangeRecord.objects.count())
    response = api["security"].call("POST", f"/api/v1/{name}/", invalid)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert all(isinstance(m, str) and m for m in error["fields"][field])
    assert (model.objects.count(), ChangeRecord.objects.count()) == before


@pytest.mark.parametrize("name", POLICY)
def test_missing_object_is_404_and_unknown_method_405(name, api, demo_policy):
    assert api["admin"].call("GET", f"/api/v1/{name}/999999/").status_code == 404
    assert _error(api["admin"].call("GET", f"/api/v1/{name}/nope/"))["code"] == "not_found"
    response = api["admin"].call("PUT", f"/api/v1/{name}/", {})
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/guardrails/{g}/enable/",
        "/api/v1/guardrails/{g}/disable/",
        "/api/v1/guardrails/{g}/move/",
        "/api/v1/tokens/{t}/revoke/",
        "/api/v1/api-tokens/{a}/revoke/",
    ],
)
def test_get_on_post_actions_is_405(url, api, demo_policy, admin_user):
    token, _ = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    api_token, _ = services.api_token_issue(actor=admin_user, name="x")
    resolved = url.format(g=demo_policy.guardrails[0].pk, t=token.pk, a=api_token.pk)
    response = api["admin"].call("GET", resolved)
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"


def test_filters_search_and_pagination(api, demo_policy):
    body = api["auditor"].call("GET", "/api/v1/identities/?kind=agent").json()
    assert [i["name"] for i in body["results"]] == ["agent-reports"]
    body = api["auditor"].call("GET", "/api/v1/classifications/?q=pii.&page_size=2").json()
    assert body["count"] == Classification.objects.filter(name__icontains="pii.").count()
    assert len(body["results"]) == 2 and body["next"]
    body = api["auditor"].call("GET", "/api/v1/guardrails/?action=review").json()
    assert [g["name"] for g in body["results"]] == ["review-agent-writes"]
    body = api["auditor"].call("GET", "/api/v1/datasources/?environment=staging").json()
    assert body["count"] == 0


def test_no_masking_key_in_datasource_or_bundle(api, demo_policy):
    # Hashing is keyed inside the protected database; the control plane holds no key.
    body = api["admin"].call("GET", f"/api/v1/datasources/{demo_policy.datasource.pk}/").json()
    assert "masking_key" not in body
    assert "masking_key" not in json.dumps(bundle_compile(datasource=demo_policy.datasource))


# --- guardrail actions -------------------------------------------------------------------


def test_guardrail_enable_disable_and_move(api, demo_policy):
    first, second = demo_policy.guardrails
    response = api["security"].call(
        "POST", f"/api/v1/guardrails/{first.pk}/disable/", {"reason": "migration window"}
    )
    assert response.status_code == 200 and response.json()["enabled"] is False
    response = api["security"].call(
        "POST", f"/api/v1/guardrails/{first.pk}/move/", {"direction": "down", "reason": "r"}
    )
    assert response.status_code == 200 and response.json()["position"] == 2
    names = [g["name"] for g in api["auditor"].call("GET", "/api/v1/guardrails/").json()["results"]]
    assert names == [second.name, first.name]
    history = (
        api["auditor"].call("GET", f"/api/v1/guardrails/{first.pk}/history/").json()["results"]
    )
    # The move is one change of the guardrail order, not one per guardrail moved.
    assert history[0]["before"]["enabled"] is True and history[0]["after"]["enabled"] is False
    assert history[0]["reason"] == "migration window"
    order = ChangeRecord.objects.filter(object_id="order").get()
    assert order.after == {"order": [second.name, first.name]}
    bad = api["security"].call("POST", f"/api/v1/guardrails/{first.pk}/move/", {})
    assert bad.status_code == 400
    assert api["auditor"].call("POST", f"/api/v1/guardrails/{first.pk}/enable/").status_code == 403


def test_unsafe_guardrail_is_refused_with_a_clear_message(api, demo_policy):
    response = api["security"].call(
        "POST", "/api/v1/guardrails/", {"name": "yolo", "action": "allow", "conditions": {}}
    )
    message = " ".join(_error(response)["fields"]["conditions"])
    assert "would allow everything in production" in message
    # Narrowed to a sandbox it is fine.
    response = api["security"].call(
        "POST",
        "/api/v1/guardrails/",
        {"name": "sandbox-free", "action": "allow", "conditions": {"environments": ["sandbox"]}},
    )
    assert response.status_code == 201, response.json()


def test_masking_rule_for_unknown_classification_names_it(api, demo_policy):
    response = api["security"].call(
        "POST",
        "/api/v1/masking-rules/",
        {"name": "m", "classification": "pii.shoe_size", "strategy": "redact"},
    )
    assert _error(response)["fields"]["classification"] == [
        "Unknown classification 'pii.shoe_size'."
    ]


def test_contradicting_masking_rule_is_refused(api, demo_policy):
    response = api["security"].call(
        "POST",
        "/api/v1/masking-rules/",
        {"name": "mask-email-again", "classification": "pii.email", "strategy": "redact"},
    )
    assert response.status_code == 400
    assert "mask-email" in " ".join(_error(response)["fields"]["classification"])


# --- access tokens and scoping -----------------------------------------------------------


def test_token_issue_shows_the_raw_token_once_and_stores_a_digest(api, demo_policy):
    url = f"/api/v1/identities/{demo_policy.service.pk}/tokens/"
    response = api["security"].call("POST", url, {"name": "ci"})
    assert response.status_code == 201
    raw = response.json()["token"]
    token = AccessToken.objects.get(pk=response.json()["id"])
    assert raw not in json.dumps(
        list(AccessToken.objects.values()), default=str
    ) and raw not in json.dumps(list(ChangeRecord.objects.values()), default=str)
    listed = api["auditor"].call("GET", url).json()["results"]
    assert [t["prefix"] for t in listed] == [token.prefix] and "token" not in listed[0]
    revoked = api["security"].call("POST", f"/api/v1/tokens/{token.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["is_active"] is False
    again = api["security"].call("POST", f"/api/v1/tokens/{token.pk}/revoke/")
    assert again.status_code == 400 and "already revoked" in _error(again)["message"]


def test_token_issue_invalid_payload(api, demo_policy):
    url = f"/api/v1/identities/{demo_policy.service.pk}/tokens/"
    before = AccessToken.objects.count()
    response = api["security"].call("POST", url, {"name": "", "expires_at": "2001-01-01T00:00:00Z"})
    assert response.status_code == 400
    assert {"name"} <= set(_error(response)["fields"])
    past = api["security"].call("POST", url, {"name": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 400 and "expires_at" in _error(past)["fields"]
    assert AccessToken.objects.count() == before


def test_reviewer_sees_only_tokens_of_own_identities(api, demo_policy, reviewer_user, admin_user):
    mine = reviewer_user.identity
    bot = services.identity_create(
        actor=admin_user, name="bot-of-reviewer", kind="agent", owner=mine
    )
    own_token, _ = services.token_issue(actor=admin_user, identity=bot, name="own")
    other_token, _ = services.token_issue(
        actor=admin_user, identity=demo_policy.service, name="other"
    )
    reviewer = api["reviewer"]
    listed = {t["id"] for t in reviewer.call("GET", "/api/v1/tokens/").json()["results"]}
    assert listed == {own_token.pk}
    assert reviewer.call("GET", f"/api/v1/tokens/{other_token.pk}/").status_code == 404
    assert reviewer.call("POST", f"/api/v1/tokens/{other_token.pk}/revoke/").status_code == 404
    other_url = f"/api/v1/identities/{demo_policy.service.pk}/tokens/"
    assert reviewer.call("GET", other_url).status_code == 404
    assert reviewer.call("POST", other_url, {"name": "sneaky"}).status_code == 404
    issued = reviewer.call("POST", f"/api/v1/identities/{bot.pk}/tokens/", {"name": "mine"})
    assert issued.status_code == 201
    assert reviewer.call("POST", f"/api/v1/tokens/{own_token.pk}/revoke/").status_code == 200
    other_token.refresh_from_db()
    assert other_token.revoked_at is None


def test_auditor_reads_tokens_but_cannot_issue_or_revoke(api, demo_policy, admin_user):
    token, _ = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    auditor = api["auditor"]
    assert auditor.call("GET", f"/api/v1/tokens/{token.pk}/").status_code == 200
    url = f"/api/v1/identities/{demo_policy.service.pk}/tokens/"
    assert auditor.call("POST", url, {"name": "x"}).status_code == 403
    assert auditor.call("POST", f"/api/v1/tokens/{token.pk}/revoke/").status_code == 403
    assert api["none"].call("GET", "/api/v1/tokens/").status_code == 403
    assert api["anonymous"].call("GET", "/api/v1/tokens/").status_code == 401


def test_api_tokens_are_personal(api, security_user, auditor_user):
    mine = api["security"].call("POST", "/api/v1/api-tokens/", {"name": "automation"})
    assert mine.status_code == 201
    raw, pk = mine.json()["token"], mine.json()["id"]
    assert raw.startswith("wda_")
    assert api["auditor"].call("GET", f"/api/v1/api-tokens/{pk}/").status_code == 404
    assert api["auditor"].call("POST", f"/api/v1/api-tokens/{pk}/revoke/").status_code == 404
    assert api["admin"].call("GET", f"/api/v1/api-tokens/{pk}/").status_code == 200
    with_new = Client(HTTP_AUTHORIZATION=f"Token {raw}")
    assert with_new.get("/api/v1/teams/").status_code == 200
    assert api["security"].call("POST", f"/api/v1/api-tokens/{pk}/revoke/").status_code == 200
    response = with_new.get("/api/v1/teams/")
    assert response.status_code == 401
    assert _error(response)["code"] == "authentication_failed"
    assert api["security"].call("POST", "/api/v1/api-tokens/", {}).status_code == 400


def test_session_auth_requires_csrf(security_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(security_user)
    assert client.get("/api/v1/teams/").status_code == 200
    response = client.post("/api/v1/teams/", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in _error(response)["message"]


def test_request_id_is_recorded_in_history(api, demo_policy):
    api["security"].headers["HTTP_X_REQUEST_ID"] = "req-12345"
    response = api["security"].call("POST", "/api/v1/teams/", {"name": "Traced"})
    assert response["X-Request-ID"] == "req-12345"
    record = ChangeRecord.objects.get(
        content_type__model="team", object_id=str(response.json()["id"]), action="create"
    )
    assert record.request_id == "req-12345"


INVALID_UPDATES = {
    "teams": {"slug": "Not A Slug"},
    "identities": {"owner": "nobody-at-all"},
    "datasources": {"schema_snapshot": {"tables": [{"schema": "public"}]}},
    "classifications": {"level": "top-secret"},
    "column-classifications": {"classification": "pii.unknown"},
    "masking-rules": {"params": {"keep_last": "four"}},
    "guardrails": {"action": "allow", "conditions": {}},
    "detectors": {"name_regex": "(x+x+)+y"},
}


@pytest.mark.parametrize("name", POLICY)
def test_invalid_update_is_400_and_changes_nothing(name, api, demo_policy):
    obj = _an_object(name, demo_policy)
    before = api["security"].call("GET", f"/api/v1/{name}/{obj.pk}/").json()
    records = ChangeRecord.objects.count()
    response = api["security"].call("PATCH", f"/api/v1/{name}/{obj.pk}/", INVALID_UPDATES[name])
    assert response.status_code == 400, response.json()
    error = _error(response)
    assert set(error["fields"]) & (set(INVALID_UPDATES[name]) | {"non_field_errors"}), error
    assert api["security"].call("GET", f"/api/v1/{name}/{obj.pk}/").json() == before
    assert ChangeRecord.objects.count() == records


@pytest.mark.parametrize("name", POLICY)
def test_valid_update_is_recorded_from_what_to_what(name, api, demo_policy):
    obj = _an_object(name, demo_policy)
    field, value = {
        "teams": ("description", "Owns the CRM"),
        "identities": ("display_name", "Billing service"),
        "datasources": ("description", "CRM in production"),
        "classifications": ("description", "Where to reach someone"),
        "column-classifications": ("classification", "pii.name"),
        "masking-rules": ("strategy", "redact"),
        "guardrails": ("message", "No DDL here."),
        "detectors": ("confidence", 0.75),
    }[name]
    # A reason where the object protects production (ignored where none is taken).
    body = {field: value, "reason": "CHG-1"}
    response = api["security"].call("PATCH", f"/api/v1/{name}/{obj.pk}/", body)
    assert response.status_code == 200, response.json()
    assert response.json()[field] == value
    latest = api["auditor"].call("GET", f"/api/v1/{name}/{obj.pk}/history/").json()["results"][0]
    assert latest["action"] == "update" and latest["actor_name"] == "security"
    assert latest["after"][field] == value and latest["before"][field] != value


def test_the_issued_token_page_shows_the_header_the_api_takes(security_user):
    """The page used to say ``Authorization: Bearer``, which the API answers with 401:
    the header it shows now is the one that works, copied as it stands."""
    import html
    import re

    page = Client()
    page.force_login(security_user)
    issued = page.post("/account/api-tokens/", {"name": "terraform"})
    assert issued.status_code == 200
    shown = re.search(r'<code class="api-header">([^<]+)</code>', issued.content.decode())
    assert shown is not None
    name, _, value = html.unescape(shown.group(1)).partition(": ")
    assert name == "Authorization" and value.startswith("Token ")
    assert Client().get("/api/v1/teams/", headers={name: value}).status_code == 200
    bearer = value.replace("Token ", "Bearer ", 1)
    assert Client().get("/api/v1/teams/", headers={name: bearer}).status_code == 401
    listed = page.get("/account/api-tokens/").content.decode()
    assert "Authorization: Token …" in listed and "Bearer" not in listed
