"""Break-glass grants through the page and the API: the wrong role (403), the wrong or
unknown object (404), CSRF on the forms, htmx rows, and the maker who tries to
approve their own grant."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import ChangeRecord
from governance import services
from governance.models import BreakGlassGrant, BreakGlassState, Environment
from tests.governance.test_break_glass import COPY_RULE, grant, make_admin

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]

ROLES = ["admin", "security", "reviewer", "auditor"]


@pytest.fixture
def second_admin(admin_user: Any) -> Any:
    return make_admin()


@pytest.fixture
def staging(demo_policy: Any, admin_user: Any) -> Any:
    return services.datasource_create(
        actor=admin_user,
        name="crm-staging",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=demo_policy.datasource.schema_snapshot,
        connect_teams=[demo_policy.team_a],
    )


def page_url(datasource: Any) -> str:
    return reverse("governance:break_glass_list", args=[datasource.pk])


def action_url(action: str, g: BreakGlassGrant, datasource_pk: int | None = None) -> str:
    return reverse(
        f"governance:break_glass_{action}", args=[datasource_pk or g.datasource_id, g.pk]
    )


def form_data(**overrides: Any) -> dict[str, Any]:
    expires = timezone.now() + datetime.timedelta(hours=2)
    data = {
        "identity": "svc-billing",
        "rules": [COPY_RULE],
        "reason": "INC-77: restore from the nightly dump",
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M"),
    }
    data.update(overrides)
    return data


def signed_in(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


# --- the page ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_viewers_see_the_grants_only_admins_get_the_form(
    personas: dict[str, Any], demo_policy: Any, admin_user: Any, role: str
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    response = signed_in(personas[role]).get(page_url(demo_policy.datasource))
    assert response.status_code == 200
    body = response.content.decode()
    assert f'id="break-glass-{made.pk}"' in body and "INC-4711" in body
    assert "pending approval" in body
    assert ('id="make-grant"' in body) == (role == "admin")
    assert (f'id="revoke-{made.pk}"' in body) == (role == "admin")
    # The maker sees no approve button for their own grant.
    assert f'id="approve-{made.pk}"' not in body
    detail = signed_in(personas[role]).get(
        reverse("governance:datasource_detail", args=[demo_policy.datasource.pk])
    )
    assert page_url(demo_policy.datasource) in detail.content.decode()


def test_the_page_refuses_role_none_and_anonymous(demo_policy: Any, outsider_user: Any) -> None:
    url = page_url(demo_policy.datasource)
    assert signed_in(outsider_user).get(url).status_code == 403
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and anonymous.url.startswith(reverse("account_login"))


def test_an_unknown_datasource_is_404(admin_user: Any) -> None:
    client = signed_in(admin_user)
    assert client.get("/datasources/999999/break-glass/").status_code == 404
    assert client.post("/datasources/999999/break-glass/", form_data()).status_code == 404


def test_an_admin_makes_a_grant_from_the_page(staging: Any, admin_user: Any) -> None:
    response = signed_in(admin_user).post(page_url(staging), form_data())
    assert response.status_code == 302 and response.url == page_url(staging)
    made = BreakGlassGrant.objects.get()
    assert made.state == BreakGlassState.ACTIVE and made.datasource == staging
    assert made.identity.name == "svc-billing" and made.rules == [COPY_RULE]


@pytest.mark.parametrize("role", ["security", "reviewer", "auditor", "none"])
def test_other_roles_cannot_make_a_grant(personas: dict[str, Any], staging: Any, role: str) -> None:
    response = signed_in(personas[role]).post(page_url(staging), form_data())
    assert response.status_code == 403
    assert not BreakGlassGrant.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"expires_at": "2020-01-01T00:00"}, "in the future"),
        ({"rules": []}, "This field is required"),
        ({"identity": "reviewer"}, "Select a valid choice"),
        ({"reason": ""}, "This field is required"),
    ],
)
def test_a_refused_form_says_why_inline(
    staging: Any, admin_user: Any, reviewer_user: Any, overrides: dict, problem: str
) -> None:
    response = signed_in(admin_user).post(page_url(staging), form_data(**overrides))
    assert response.status_code == 400
    assert problem in response.content.decode()
    assert not BreakGlassGrant.objects.exists()


def test_a_day_and_more_is_refused_by_the_service(staging: Any, admin_user: Any) -> None:
    too_late = timezone.now() + datetime.timedelta(hours=25)
    data = form_data(expires_at=too_late.strftime("%Y-%m-%dT%H:%M"))
    response = signed_in(admin_user).post(page_url(staging), data)
    assert response.status_code == 400
    assert "at most 24 hours" in response.content.decode()


def test_production_approval_from_the_page(
    demo_policy: Any, admin_user: Any, second_admin: Any
) -> None:
    ds = demo_policy.datasource
    signed_in(admin_user).post(page_url(ds), form_data())
    made = BreakGlassGrant.objects.get()
    assert made.state == BreakGlassState.PENDING
    # The maker's approval is refused (403), by crafted POST as well.
    assert signed_in(admin_user).post(action_url("approve", made)).status_code == 403
    assert signed_in(admin_user).post(action_url("deny", made)).status_code == 403
    made.refresh_from_db()
    assert made.state == BreakGlassState.PENDING
    other = signed_in(second_admin)
    assert f'id="approve-{made.pk}"' in other.get(page_url(ds)).content.decode()
    response = other.post(action_url("approve", made), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert f'id="break-glass-{made.pk}"' in response.content.decode()
    assert "badge-ok" in response.content.decode()
    made.refresh_from_db()
    assert made.state == BreakGlassState.ACTIVE and made.approved_by == second_admin
    # Deciding it again is refused inline, with the reason for the toast.
    again = other.post(action_url("deny", made), HTTP_HX_REQUEST="true")
    assert again.status_code == 200 and "only a pending grant" in again.content.decode().lower()
    assert "warden:error" in again["HX-Trigger"]
    plain = other.post(action_url("deny", made))
    assert plain.status_code == 400


def test_revoke_from_the_page(staging: Any, admin_user: Any, demo_policy: Any) -> None:
    made = grant(admin_user, staging, demo_policy.service)
    response = signed_in(admin_user).post(action_url("revoke", made))
    assert response.status_code == 302
    made.refresh_from_db()
    assert made.state == BreakGlassState.REVOKED


@pytest.mark.parametrize("action", ["approve", "deny", "revoke"])
@pytest.mark.parametrize("role", ["security", "reviewer", "auditor", "none"])
def test_other_roles_cannot_act_on_a_grant(
    personas: dict[str, Any], demo_policy: Any, admin_user: Any, action: str, role: str
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    assert signed_in(personas[role]).post(action_url(action, made)).status_code == 403
    made.refresh_from_db()
    assert made.state == BreakGlassState.PENDING


@pytest.mark.parametrize("action", ["approve", "deny", "revoke"])
def test_a_grant_of_another_datasource_is_404(
    demo_policy: Any, staging: Any, admin_user: Any, second_admin: Any, action: str
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    client = signed_in(second_admin)
    assert client.post(action_url(action, made, datasource_pk=staging.pk)).status_code == 404
    missing = f"/datasources/{demo_policy.datasource.pk}/break-glass/999999/{action}/"
    assert client.post(missing).status_code == 404
    assert client.get(action_url(action, made)).status_code == 405
    made.refresh_from_db()
    assert made.state == BreakGlassState.PENDING


def test_the_forms_need_the_csrf_token(
    demo_policy: Any, staging: Any, admin_user: Any, second_admin: Any
) -> None:
    pending = grant(admin_user, demo_policy.datasource, demo_policy.service)
    strict = signed_in(second_admin, csrf=True)
    assert strict.post(page_url(staging), form_data()).status_code == 403
    for action in ("approve", "deny", "revoke"):
        assert strict.post(action_url(action, pending)).status_code == 403
    pending.refresh_from_db()
    assert pending.state == BreakGlassState.PENDING
    assert BreakGlassGrant.objects.count() == 1
    page = strict.get(page_url(demo_policy.datasource)).content
    assert b"hx-headers" in page and b"csrfmiddlewaretoken" in page


# --- the API ----------------------------------------------------------------------------


class Api:
    """A JSON client with a real API token of ``user`` (or anonymous)."""

    def __init__(self, user: Any = None) -> None:
        self.client = Client()
        self.headers: dict[str, str] = {}
        if user is not None:
            _, raw = services.api_token_issue(actor=user, name="tests")
            self.headers["HTTP_AUTHORIZATION"] = f"Token {raw}"

    def call(self, method: str, url: str, data: Any = None) -> Any:
        kwargs: dict[str, Any] = dict(self.headers)
        if data is not None:
            kwargs.update(data=json.dumps(data), content_type="application/json")
        return getattr(self.client, method.lower())(url, **kwargs)


API = "/api/v1/break-glass/"


def payload(ds: Any, **overrides: Any) -> dict[str, Any]:
    data = {
        "datasource": ds.name,
        "identity": "svc-billing",
        "rules": [COPY_RULE],
        "reason": "INC-88: read the server log",
        "expires_at": (timezone.now() + datetime.timedelta(hours=1)).isoformat(),
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize("role", ROLES)
def test_api_viewers_list_and_read(
    personas: dict[str, Any], demo_policy: Any, admin_user: Any, role: str
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    api = Api(personas[role])
    listed = api.call("GET", f"{API}?datasource={demo_policy.datasource.pk}&state=pending")
    assert listed.status_code == 200
    assert [g["id"] for g in listed.json()["results"]] == [made.pk]
    one = api.call("GET", f"{API}{made.pk}/").json()
    assert one["state"] == "pending" and one["identity"] == "svc-billing"
    assert one["created_by"] == "admin" and one["in_force"] is False
    assert api.call("GET", f"{API}{made.pk}/history/").json()["count"] == 1


def test_api_refuses_role_none_and_anonymous(demo_policy: Any, outsider_user: Any) -> None:
    assert Api(outsider_user).call("GET", API).status_code == 403
    assert Api().call("GET", API).status_code == 401
    assert Api().call("POST", API, payload(demo_policy.datasource)).status_code == 401


def test_api_admin_makes_grants(demo_policy: Any, staging: Any, admin_user: Any) -> None:
    api = Api(admin_user)
    active = api.call("POST", API, payload(staging))
    assert active.status_code == 201, active.json()
    assert active.json()["state"] == "active" and active.json()["in_force"] is True
    pending = api.call("POST", API, payload(demo_policy.datasource))
    assert pending.status_code == 201 and pending.json()["state"] == "pending"
    assert ChangeRecord.objects.filter(content_type__model="breakglassgrant").count() == 2


@pytest.mark.parametrize("role", ["security", "reviewer", "auditor", "none"])
def test_api_other_roles_cannot_make_or_act(
    personas: dict[str, Any], demo_policy: Any, admin_user: Any, role: str
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    api = Api(personas[role])
    assert api.call("POST", API, payload(demo_policy.datasource)).status_code == 403
    for action in ("approve", "deny", "revoke"):
        assert api.call("POST", f"{API}{made.pk}/{action}/").status_code == 403
    made.refresh_from_db()
    assert made.state == BreakGlassState.PENDING
    assert BreakGlassGrant.objects.count() == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"rules": ["mask.statement_text"]}, "rules"),
        ({"rules": []}, "rules"),
        ({"identity": "reviewer"}, "identity"),
        ({"identity": "nobody-at-all"}, "identity"),
        ({"datasource": "moon"}, "datasource"),
        ({"reason": ""}, "reason"),
    ],
)
def test_api_invalid_grants_name_the_field(
    staging: Any, admin_user: Any, reviewer_user: Any, overrides: dict, field: str
) -> None:
    response = Api(admin_user).call("POST", API, payload(staging, **overrides))
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not BreakGlassGrant.objects.exists()


def test_api_a_day_and_more_is_400(staging: Any, admin_user: Any) -> None:
    too_late = (timezone.now() + datetime.timedelta(hours=24, minutes=5)).isoformat()
    response = Api(admin_user).call("POST", API, payload(staging, expires_at=too_late))
    assert response.status_code == 400
    assert "at most 24 hours" in response.json()["error"]["fields"]["expires_at"][0]


def test_api_approval_needs_another_admin(
    demo_policy: Any, admin_user: Any, second_admin: Any
) -> None:
    maker, other = Api(admin_user), Api(second_admin)
    made = maker.call("POST", API, payload(demo_policy.datasource)).json()
    own = maker.call("POST", f"{API}{made['id']}/approve/")
    assert own.status_code == 403 and own.json()["error"]["code"] == "permission_denied"
    assert maker.call("POST", f"{API}{made['id']}/deny/").status_code == 403
    approved = other.call("POST", f"{API}{made['id']}/approve/")
    assert approved.status_code == 200
    assert approved.json()["state"] == "active" and approved.json()["approved_by"] == "admin2"
    again = other.call("POST", f"{API}{made['id']}/approve/")
    assert again.status_code == 400 and again.json()["error"]["code"] == "rejected"
    revoked = maker.call("POST", f"{API}{made['id']}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert revoked.json()["revoked_by"] == "admin"


def test_api_deny(demo_policy: Any, admin_user: Any, second_admin: Any) -> None:
    made = Api(admin_user).call("POST", API, payload(demo_policy.datasource)).json()
    denied = Api(second_admin).call("POST", f"{API}{made['id']}/deny/")
    assert denied.status_code == 200 and denied.json()["state"] == "denied"
    assert denied.json()["denied_by"] == "admin2"


@pytest.mark.parametrize("action", ["approve", "deny", "revoke"])
def test_api_unknown_grant_is_404(second_admin: Any, action: str) -> None:
    response = Api(second_admin).call("POST", f"{API}999999/{action}/")
    assert response.status_code == 404
    assert Api(second_admin).call("GET", f"{API}999999/").status_code == 404


def test_api_grants_are_never_edited_or_deleted(
    demo_policy: Any, admin_user: Any, second_admin: Any
) -> None:
    made = grant(admin_user, demo_policy.datasource, demo_policy.service)
    api = Api(second_admin)
    assert api.call("PATCH", f"{API}{made.pk}/", {"reason": "x"}).status_code == 405
    assert api.call("DELETE", f"{API}{made.pk}/").status_code == 405


def test_api_session_writes_need_csrf(staging: Any, admin_user: Any) -> None:
    strict = signed_in(admin_user, csrf=True)
    assert strict.get(API).status_code == 200
    response = strict.post(API, payload(staging), content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]
    assert not BreakGlassGrant.objects.exists()
