"""OIDC single sign-on end to end against a real (fake) identity provider process.

allauth discovers the provider, redirects to it, exchanges the code (with
PKCE) over HTTP, validates the RS256 id_token and fetches userinfo; Warden's
adapter then maps the groups claim to teams and a role.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client

from audit.models import ChangeRecord
from governance import services
from governance.models import Identity, Role
from governance.permissions import user_role
from governance.selectors import identity_link_problem

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    claims = tmp_path / "claims.json"
    claims.write_text(
        json.dumps(
            {
                "sub": "u-1001",
                "email": "carol@corp.example",
                "email_verified": True,
                "preferred_username": "carol",
                "name": "Carol Chen",
                "groups": ["warden-security", "dba"],
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.oidc_idp", "--client-id", "warden",
         "--client-secret", "s3cret", "--claims", str(claims)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}", claims
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def sso_settings(settings, idp, team_a, team_b):
    url, _ = idp
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": "sso",
                    "name": "Corp SSO",
                    "client_id": "warden",
                    "secret": "s3cret",
                    "settings": {"server_url": url},
                }
            ],
        }
    }
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.OIDC_GROUP_TEAM_MAP = {"dba": "team-a", "analysts": "team-b"}
    settings.OIDC_GROUP_ROLE_MAP = {"warden-security": "security", "warden-audit": "auditor"}
    return settings


def sso_sign_in(client: Client) -> None:
    response = client.post("/accounts/oidc/sso/login/")
    assert response.status_code == 302, response.content[:500]
    authorize = response["Location"]
    at_idp = requests.get(authorize, allow_redirects=False, timeout=10)
    assert at_idp.status_code == 302
    callback = urlsplit(at_idp.headers["Location"])
    response = client.get(f"{callback.path}?{callback.query}")
    assert response.status_code == 302, response.content[:2000]


def test_sso_creates_user_identity_teams_and_role(sso_settings, idp):
    _, claims = idp
    client = Client()
    sso_sign_in(client)
    user = get_user_model().objects.get(email="carol@corp.example")
    assert int(client.session["_auth_user_id"]) == user.pk
    assert user_role(user) == Role.SECURITY
    identity = Identity.objects.get(user=user)
    assert identity.kind == "human"
    assert [t.slug for t in identity.teams.all()] == ["team-a"]
    assert client.get("/api/v1/teams/").status_code == 200
    assert ChangeRecord.objects.filter(object_id=str(identity.pk), actor_name="system").exists()

    # The IdP is the source of truth: new groups apply at the next sign-in.
    data = json.loads(claims.read_text())
    data["groups"] = ["warden-audit", "analysts"]
    claims.write_text(json.dumps(data))
    client = Client()
    sso_sign_in(client)
    user.refresh_from_db()
    assert user_role(user) == Role.AUDITOR
    assert [t.slug for t in Identity.objects.get(user=user).teams.all()] == ["team-b"]
    assert get_user_model().objects.filter(email="carol@corp.example").count() == 1


def test_sso_user_without_mapped_groups_sees_nothing(sso_settings, idp):
    _, claims = idp
    data = json.loads(claims.read_text())
    data["groups"] = ["marketing"]
    claims.write_text(json.dumps(data))
    client = Client()
    sso_sign_in(client)
    user = get_user_model().objects.get(email="carol@corp.example")
    assert user_role(user) == Role.NONE
    assert client.get("/api/v1/teams/").status_code == 403


def test_tampered_callback_does_not_sign_in(sso_settings, idp):
    client = Client()
    response = client.post("/accounts/oidc/sso/login/")
    at_idp = requests.get(response["Location"], allow_redirects=False, timeout=10)
    callback = urlsplit(at_idp.headers["Location"])
    query = callback.query.replace("state=", "state=x")
    client.get(f"{callback.path}?{query}")
    assert "_auth_user_id" not in client.session
    assert not get_user_model().objects.filter(email="carol@corp.example").exists()


def _claims(claims_path: Path, **changes: object) -> None:
    data = json.loads(claims_path.read_text())
    data.update(changes)
    claims_path.write_text(json.dumps(data))


def test_sso_links_the_identity_with_the_verified_address(sso_settings, idp, admin_user):
    # The identity an admin made before Carol ever signed in, address in other case.
    carol = services.identity_create(
        actor=admin_user, name="carol", kind="human", email="Carol@Corp.Example"
    )
    before = Identity.objects.count()
    sso_sign_in(Client())
    user = get_user_model().objects.get(email="carol@corp.example")
    carol.refresh_from_db()
    assert carol.user == user
    assert Identity.objects.count() == before  # linked, not a second identity
    assert [t.slug for t in carol.teams.all()] == ["team-a"]  # the groups apply to it


def test_sso_with_an_unverified_address_links_nothing_and_makes_no_twin(
    sso_settings, idp, admin_user
):
    _, claims = idp
    _claims(claims, email_verified=False)
    carol = services.identity_create(
        actor=admin_user, name="carol", kind="human", email="carol@corp.example"
    )
    before = Identity.objects.count()
    client = Client()
    sso_sign_in(client)
    user = get_user_model().objects.get(email="carol@corp.example")
    assert user_role(user) == Role.SECURITY  # the role still applies
    carol.refresh_from_db()
    assert carol.user is None
    assert Identity.objects.count() == before
    assert "has not verified it" in identity_link_problem(carol)
    # The provider verifies the address later: the next sign-in links.
    _claims(claims, email_verified=True)
    sso_sign_in(Client())
    carol.refresh_from_db()
    assert carol.user == user


def test_sso_never_links_an_address_two_identities_claim(sso_settings, idp, admin_user):
    for name, email in (("carol", "carol@corp.example"), ("carol-2", "CAROL@corp.example")):
        services.identity_create(actor=admin_user, name=name, kind="human", email=email)
    sso_sign_in(Client())
    user = get_user_model().objects.get(email="carol@corp.example")
    assert not Identity.objects.filter(user=user).exists()
    problem = identity_link_problem(Identity.objects.get(name="carol"))
    assert "Two identities claim this e-mail address" in problem
