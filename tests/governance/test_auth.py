"""Sign-in with allauth: password + TOTP, admins forced to set up TOTP, closed sign-up."""

from __future__ import annotations

import time

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.contrib.auth import get_user_model
from django.test import Client

from governance.models import Membership, Role
from tests.conftest import persona_password

pytestmark = pytest.mark.django_db


def totp_now(secret: str) -> str:
    # A code computed in the last seconds of its 30 s window may be checked in
    # the next one; wait for a fresh window instead of flaking.
    if time.time() % 30 > 27:
        time.sleep(30 - time.time() % 30 + 0.1)
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30))


def test_admin_signs_in_with_password_then_totp(admin_user):
    client = Client()
    response = client.post(
        "/accounts/login/", {"login": "admin", "password": persona_password("admin")}
    )
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/authenticate/"
    # Not signed in yet: the second factor is still owed.
    assert client.get("/api/v1/teams/").status_code == 401
    response = client.post("/accounts/2fa/authenticate/", {"code": "000000"})
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    response = client.post(
        "/accounts/2fa/authenticate/", {"code": totp_now(admin_user.totp_secret)}
    )
    assert response.status_code == 302
    assert int(client.session["_auth_user_id"]) == admin_user.pk
    assert client.get("/api/v1/teams/").status_code == 200


def test_wrong_password_is_refused(security_user):
    client = Client()
    response = client.post("/accounts/login/", {"login": "security", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_admin_without_totp_is_sent_to_set_it_up_first(db):
    get_user_model().objects.create_user("root2", password="pw-x-Warden1!", is_superuser=True)
    client = Client()
    response = client.post("/accounts/login/", {"login": "root2", "password": "pw-x-Warden1!"})
    assert response.status_code == 302
    for path in ["/", "/teams/", "/admin/"]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == "/accounts/2fa/totp/activate/"
    response = client.get("/api/v1/teams/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "mfa_required"
    # A page's poll is told to stop, not sent the set-up page to swap into the page.
    response = client.get("/approvals/pending-count/", headers={"HX-Request": "true"})
    assert response.status_code == 286 and not response.content
    # The way out stays open: allauth asks for the password again, then shows the setup.
    response = client.get("/accounts/2fa/totp/activate/")
    assert response.status_code == 302 and response["Location"].startswith(
        "/accounts/reauthenticate/"
    )
    response = client.post(response["Location"], {"password": "pw-x-Warden1!"})
    assert response.status_code == 302
    assert client.get("/accounts/2fa/totp/activate/").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_non_admins_are_not_forced_into_mfa(security_user):
    client = Client()
    client.force_login(security_user)
    assert client.get("/api/v1/teams/").status_code == 200


def test_membership_role_decides_admin_gate(db):
    user = get_user_model().objects.create_user("boss", password="pw-x-Warden1!")
    Membership.objects.create(user=user, role=Role.ADMIN)
    client = Client()
    client.force_login(user)
    assert client.get("/api/v1/teams/").json()["error"]["code"] == "mfa_required"


def test_sign_up_is_closed_by_default(db):
    client = Client()
    client.post(
        "/accounts/signup/",
        {
            "username": "mallory",
            "email": "m@example.com",
            "password1": "pw-mallory-Warden1!",
            "password2": "pw-mallory-Warden1!",
        },
    )
    assert not get_user_model().objects.filter(username="mallory").exists()


def test_sign_up_can_be_opened(db, settings):
    settings.ACCOUNT_ALLOW_SIGNUPS = True
    client = Client()
    client.post(
        "/accounts/signup/",
        {
            "username": "newbie",
            "email": "n@example.com",
            "password1": "pw-newbie-Warden1!",
            "password2": "pw-newbie-Warden1!",
        },
    )
    user = get_user_model().objects.get(username="newbie")
    # A new account sees nothing until an admin gives it a role.
    client.force_login(user)
    assert client.get("/api/v1/teams/").status_code == 403
