"""Access tokens in the UI: issued once (raw value only in that response, only
its digest stored), revoked after confirmation, and scoped: a reviewer manages
only their own identity's tokens and those of identities they own, and gets 404
for anyone else's. Personal API tokens: only their owner sees them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

from governance import services
from governance.models import AccessToken, ApiToken, token_digest

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _raw_token(content: bytes) -> str:
    match = re.search(rb'id="raw-token" type="text" value="([^"]+)"', content)
    assert match, "the token page shows the raw token in a read-only field"
    return match.group(1).decode()


def test_issue_shows_the_token_once_and_stores_only_its_digest(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    identity = demo_policy.service
    url = reverse("governance:token_issue", args=[identity.pk])
    response = client.post(url, {"name": "ci-deploy", "expires_at": ""})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert b"will not be shown again" in response.content
    raw = _raw_token(response.content)
    token = AccessToken.objects.get(identity=identity, name="ci-deploy")
    assert token.digest == token_digest(raw)
    assert raw not in {token.prefix, token.digest, token.scram_verifier}
    assert raw.startswith(token.prefix)
    # Afterwards the identity page lists it by prefix, never the raw value.
    detail = client.get(reverse("governance:identity_detail", args=[identity.pk]))
    assert token.prefix.encode() in detail.content
    assert raw.encode() not in detail.content


def test_issue_with_past_expiry_shows_error_and_stores_nothing(
    client: Any, demo_policy: Any, security_user: Any
) -> None:
    client.force_login(security_user)
    url = reverse("governance:token_issue", args=[demo_policy.service.pk])
    response = client.post(url, {"name": "old", "expires_at": "2001-01-01T00:00"})
    assert response.status_code == 400
    assert response.context["form"].errors["expires_at"]
    response = client.post(url, {"name": ""})
    assert response.context["form"].errors["name"]
    assert not AccessToken.objects.filter(identity=demo_policy.service).exists()


def test_revoke_after_confirmation(client: Any, demo_policy: Any, security_user: Any) -> None:
    token, _ = services.token_issue(actor=security_user, identity=demo_policy.service, name="t")
    client.force_login(security_user)
    url = reverse("governance:token_revoke", args=[token.pk])
    assert client.get(url).status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is None  # GET only asks
    response = client.post(url)
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    again = client.post(url)
    assert again.status_code == 400
    assert b"already revoked" in again.content


def test_reviewer_manages_only_tokens_in_scope(
    client: Any, demo_policy: Any, security_user: Any, reviewer_user: Any
) -> None:
    mine, _ = services.token_issue(actor=security_user, identity=reviewer_user.identity, name="m")
    theirs, _ = services.token_issue(actor=security_user, identity=demo_policy.service, name="t")
    client.force_login(reviewer_user)
    # Someone else's token does not exist, as far as a reviewer can tell.
    assert client.get(reverse("governance:token_revoke", args=[theirs.pk])).status_code == 404
    assert client.post(reverse("governance:token_revoke", args=[theirs.pk])).status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    # Issuing for another identity is refused by the service.
    url = reverse("governance:token_issue", args=[demo_policy.service.pk])
    assert client.post(url, {"name": "sneaky"}).status_code == 403
    assert not AccessToken.objects.filter(name="sneaky").exists()
    # Their own identity's tokens they may issue and revoke.
    response = client.post(
        reverse("governance:token_issue", args=[reviewer_user.identity.pk]), {"name": "laptop"}
    )
    assert response.status_code == 200
    assert client.post(reverse("governance:token_revoke", args=[mine.pk])).status_code == 302
    detail = client.get(reverse("governance:identity_detail", args=[demo_policy.service.pk]))
    assert theirs.prefix.encode() not in detail.content


def test_auditor_sees_tokens_but_cannot_issue_or_revoke(
    client: Any, demo_policy: Any, security_user: Any, auditor_user: Any
) -> None:
    token, _ = services.token_issue(actor=security_user, identity=demo_policy.service, name="t")
    client.force_login(auditor_user)
    detail = client.get(reverse("governance:identity_detail", args=[demo_policy.service.pk]))
    assert token.prefix.encode() in detail.content
    assert b"Issue token" not in detail.content
    issue = reverse("governance:token_issue", args=[demo_policy.service.pk])
    assert client.post(issue, {"name": "x"}).status_code == 403
    assert client.post(reverse("governance:token_revoke", args=[token.pk])).status_code == 403
    token.refresh_from_db()
    assert token.revoked_at is None


def test_token_pages_anonymous_and_outsider(client: Any, demo_policy: Any, outsider_user: Any):
    url = reverse("governance:token_issue", args=[demo_policy.service.pk])
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    client.force_login(outsider_user)
    assert client.get(url).status_code == 403


def test_api_tokens_are_personal(client: Any, security_user: Any, auditor_user: Any) -> None:
    client.force_login(auditor_user)
    url = reverse("governance:api_token_list")
    response = client.post(url, {"name": "nightly-export-7"})
    assert response.status_code == 200
    raw = _raw_token(response.content)
    token = ApiToken.objects.get(user=auditor_user, name="nightly-export-7")
    assert token.digest == token_digest(raw)
    listing = client.get(url)
    assert b"nightly-export-7" in listing.content
    assert raw.encode() not in listing.content
    # Another user cannot see or revoke it: 404, as if it did not exist.
    client.force_login(security_user)
    assert b"nightly-export-7" not in client.get(url).content
    revoke = reverse("governance:api_token_revoke", args=[token.pk])
    assert client.get(revoke).status_code == 404
    assert client.post(revoke).status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    # Its owner can.
    client.force_login(auditor_user)
    assert client.post(revoke).status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_api_token_invalid_form(client: Any, security_user: Any) -> None:
    client.force_login(security_user)
    response = client.post(reverse("governance:api_token_list"), {"name": ""})
    assert response.status_code == 400
    assert response.context["form"].errors["name"]
    assert not ApiToken.objects.exists()


def test_api_token_pages_need_sign_in(client: Any) -> None:
    for url in (reverse("governance:api_token_list"), "/account/api-tokens/1/revoke/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("account_login"))


def test_token_forms_are_not_offered_to_who_may_not_use_them(
    client: Any, demo_policy: Any, security_user: Any, auditor_user: Any, reviewer_user: Any
) -> None:
    token, _ = services.token_issue(actor=security_user, identity=demo_policy.service, name="t")
    issue = reverse("governance:token_issue", args=[demo_policy.service.pk])
    revoke = reverse("governance:token_revoke", args=[token.pk])
    client.force_login(auditor_user)  # reads every token, manages none
    assert client.get(issue).status_code == 403
    assert client.get(revoke).status_code == 403
    client.force_login(reviewer_user)  # not their identity: the token is out of scope
    assert client.get(issue).status_code == 403
    assert client.get(revoke).status_code == 404
    own = reverse("governance:token_issue", args=[reviewer_user.identity.pk])
    assert client.get(own).status_code == 200
