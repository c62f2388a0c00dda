"""Which sign-in account is which human identity (docs/accounts.md).

Automatic links need a verified address that nobody else claims; admins link
and unlink by hand on the identity's page; policy editors who are not admins
cannot set an identity's account through the identity services either.
"""

from __future__ import annotations

from typing import Any

import pytest
from allauth.account.models import EmailAddress, EmailConfirmationHMAC
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse

from audit.models import ChangeRecord
from governance import services
from governance.models import Identity
from governance.selectors import identity_link_problem

pytestmark = pytest.mark.django_db


def _account(username: str, email: str, *, verified: bool | None) -> Any:
    """A sign-in account with ``email`` as its e-mail (and, unless None, an allauth
    address row with that verified flag)."""
    user = get_user_model().objects.create_user(username=username, email=email, password="x")
    if verified is not None:
        EmailAddress.objects.create(user=user, email=email, verified=verified, primary=True)
    return user


@pytest.fixture
def dana(admin_user: Any) -> Identity:
    return services.identity_create(
        actor=admin_user, name="dana", kind="human", email="Dana@Corp.example"
    )


# --- the automatic rule ----------------------------------------------------------------


def test_a_verified_address_links_the_one_identity_with_it(dana: Identity) -> None:
    user = _account("dana.sso", "dana@corp.EXAMPLE", verified=True)
    assert services.identity_link_by_verified_email(user=user) == dana
    dana.refresh_from_db()
    assert dana.user == user
    record = ChangeRecord.objects.filter(object_id=str(dana.pk)).latest("pk")
    assert record.actor_name == "system"
    assert identity_link_problem(dana) == ""
    # Linked once: another call changes nothing.
    count = ChangeRecord.objects.count()
    assert services.identity_link_by_verified_email(user=user) == dana
    assert ChangeRecord.objects.count() == count


def test_an_address_the_provider_marks_verified_now_links(dana: Identity) -> None:
    user = _account("dana.sso", "dana@corp.example", verified=False)
    assert services.identity_link_by_verified_email(user=user) is None
    assert (
        services.identity_link_by_verified_email(user=user, verified_emails=["DANA@corp.example"])
        == dana
    )


def test_an_unverified_address_links_nothing(dana: Identity) -> None:
    user = _account("dana.sso", "dana@corp.example", verified=False)
    assert services.identity_link_by_verified_email(user=user) is None
    no_row = _account("dana.other", "DANA@corp.example", verified=None)
    assert services.identity_link_by_verified_email(user=no_row) is None  # User.email: no proof
    dana.refresh_from_db()
    assert dana.user is None
    assert "Two accounts claim" in identity_link_problem(dana)


def test_a_look_alike_address_links_nothing(dana: Identity) -> None:
    """The database's case-insensitive match follows its locale: upper() of a dotless
    i (U+0131) is 'I', so dana@corp<U+0131>nc.example matched Dana@Corpinc.example
    (found in review)."""
    dana.email = "dana@corpinc.example"
    dana.save(update_fields=["email"])
    mallory = _account("mallory", "dana@corp\u0131nc.example", verified=True)
    assert services.identity_link_by_verified_email(user=mallory) is None
    dana.refresh_from_db()
    assert dana.user is None
    # Nor through the identity provider's claim.
    other = _account("mallory2", "m@evil.example", verified=None)
    found = services.identity_link_by_verified_email(
        user=other, verified_emails=["DANA@CORP\u0130NC.EXAMPLE"]
    )
    assert found is None and Identity.objects.get(pk=dana.pk).user is None


def test_a_provider_claim_that_is_not_true_verifies_nothing() -> None:
    """allauth takes ``email_verified`` as the provider sends it; the string "false"
    (Cognito's userinfo sends strings) must not count as verified."""
    from types import SimpleNamespace

    from governance.adapters import provider_verified_emails

    def login(claim: Any) -> Any:
        extra = {} if claim is None else {"email_verified": claim}
        return SimpleNamespace(
            account=SimpleNamespace(extra_data=extra),
            email_addresses=[SimpleNamespace(email="dana@corp.example", verified=bool(claim))],
        )

    assert provider_verified_emails(login(True)) == ["dana@corp.example"]
    for claim in ("false", "true", 1, False):
        assert provider_verified_emails(login(claim)) == [], claim


def test_two_identities_with_the_address_link_neither(admin_user: Any, dana: Identity) -> None:
    twin = services.identity_create(
        actor=admin_user, name="dana-2", kind="human", email="dana@corp.example"
    )
    user = _account("dana.sso", "dana@corp.example", verified=True)
    assert services.identity_link_by_verified_email(user=user) is None
    assert not Identity.objects.filter(user=user).exists()
    problem = identity_link_problem(dana)
    assert "Two identities claim this e-mail address" in problem and "dana-2" in problem
    assert "link by hand" in identity_link_problem(twin).lower()


def test_two_accounts_with_the_address_link_neither(dana: Identity) -> None:
    first = _account("dana.sso", "dana@corp.example", verified=True)
    second = _account("dana.local", "other@corp.example", verified=None)
    EmailAddress.objects.create(user=second, email="DANA@corp.example", verified=False)
    assert services.identity_link_by_verified_email(user=first) is None
    assert services.identity_link_by_verified_email(user=second) is None
    dana.refresh_from_db()
    assert dana.user is None
    assert "Two accounts claim this e-mail address" in identity_link_problem(dana)


def test_an_agent_with_the_address_is_never_linked(admin_user: Any, dana: Identity) -> None:
    agent = services.identity_create(
        actor=admin_user, name="bot", kind="agent", owner=dana, email="bot@corp.example"
    )
    user = _account("bot.sso", "bot@corp.example", verified=True)
    assert services.identity_link_by_verified_email(user=user) is None
    agent.refresh_from_db()
    assert agent.user is None


def test_an_identity_linked_elsewhere_or_an_account_linked_already_stay(
    admin_user: Any, dana: Identity
) -> None:
    by_hand = _account("dana.hand", "d@home.example", verified=False)
    services.identity_link_user(actor=admin_user, identity=dana, user=by_hand)
    user = _account("dana.sso", "dana@corp.example", verified=True)
    assert services.identity_link_by_verified_email(user=user) is None
    dana.refresh_from_db()
    assert dana.user == by_hand
    # An account with an identity already (the admin persona's) keeps it.
    own = Identity.objects.get(user=admin_user)
    assert services.identity_link_by_verified_email(user=admin_user) == own


def test_confirming_an_address_links_through_allauths_confirmation(dana: Identity) -> None:
    user = _account("dana.local", "dana@corp.example", verified=False)
    address = EmailAddress.objects.get(user=user)
    key = EmailConfirmationHMAC(address).key
    response = Client().post(reverse("account_confirm_email", args=[key]))
    assert response.status_code == 302
    dana.refresh_from_db()
    assert dana.user == user


# --- by hand: admins only ----------------------------------------------------------------


def test_admin_links_and_unlinks_by_hand(admin_user: Any, dana: Identity) -> None:
    user = _account("dana.sso", "dana@corp.example", verified=False)
    services.identity_link_user(actor=admin_user, identity=dana, user=user)
    assert Identity.objects.get(pk=dana.pk).user == user
    with pytest.raises(ValidationError, match="already linked"):
        services.identity_link_user(actor=admin_user, identity=dana, user=user)
    services.identity_unlink_user(actor=admin_user, identity=dana)
    assert Identity.objects.get(pk=dana.pk).user is None
    with pytest.raises(ValidationError, match="no sign-in account"):
        services.identity_unlink_user(actor=admin_user, identity=dana)


def test_hand_links_refuse_agents_and_accounts_linked_elsewhere(
    admin_user: Any, dana: Identity, reviewer_user: Any
) -> None:
    agent = services.identity_create(actor=admin_user, name="bot", kind="agent", owner=dana)
    with pytest.raises(ValidationError, match="Only human identities"):
        services.identity_link_user(actor=admin_user, identity=agent, user=reviewer_user)
    with pytest.raises(ValidationError, match="linked to reviewer"):
        services.identity_link_user(actor=admin_user, identity=dana, user=reviewer_user)


def test_only_admins_set_an_identitys_account(
    admin_user: Any, security_user: Any, dana: Identity
) -> None:
    user = _account("dana.sso", "dana@corp.example", verified=True)
    with pytest.raises(PermissionDenied):
        services.identity_link_user(actor=security_user, identity=dana, user=user)
    with pytest.raises(PermissionDenied):
        services.identity_update(actor=security_user, identity=dana, data={"user": user})
    with pytest.raises(PermissionDenied):
        services.identity_create(actor=security_user, name="eve", kind="human", user=user)
    # Other changes by a policy editor still go through, the account unchanged.
    services.identity_link_user(actor=admin_user, identity=dana, user=user)
    services.identity_update(
        actor=security_user, identity=dana, data={"display_name": "Dana", "user": user}
    )
    with pytest.raises(PermissionDenied):
        services.identity_unlink_user(actor=security_user, identity=dana)
    assert Identity.objects.get(pk=dana.pk).user == user


def test_api_refuses_a_policy_editor_setting_the_account(
    security_user: Any, dana: Identity
) -> None:
    _account("dana.sso", "dana@corp.example", verified=True)
    client = Client()
    client.force_login(security_user)
    response = client.patch(
        f"/api/v1/identities/{dana.pk}/",
        {"user": "dana.sso"},
        content_type="application/json",
    )
    assert response.status_code == 403
    assert Identity.objects.get(pk=dana.pk).user is None


# --- the identity's page ----------------------------------------------------------------


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_admin_links_and_unlinks_on_the_identity_page(admin_user: Any, dana: Identity) -> None:
    user = _account("dana.sso", "dana@corp.example", verified=False)
    client = _client(admin_user)
    page = client.get(reverse("governance:identity_detail", args=[dana.pk]))
    assert page.status_code == 200
    assert b'action="/identities/%d/link/"' % dana.pk in page.content
    assert b"has not verified it" in page.content
    response = client.post(reverse("governance:identity_link", args=[dana.pk]), {"username": ""})
    assert response.status_code == 400
    response = client.post(
        reverse("governance:identity_link", args=[dana.pk]), {"username": "nobody"}
    )
    assert response.status_code == 400 and b"No account has this user name." in response.content
    response = client.post(
        reverse("governance:identity_link", args=[dana.pk]), {"username": "dana.sso"}
    )
    assert response.status_code == 302
    assert Identity.objects.get(pk=dana.pk).user == user
    page = client.get(reverse("governance:identity_detail", args=[dana.pk]))
    assert b"Unlink dana.sso" in page.content
    response = client.post(reverse("governance:identity_unlink", args=[dana.pk]))
    assert response.status_code == 302
    assert Identity.objects.get(pk=dana.pk).user is None


def test_the_page_says_why_an_ambiguous_address_is_not_linked(
    admin_user: Any, auditor_user: Any, dana: Identity
) -> None:
    services.identity_create(
        actor=admin_user, name="dana-2", kind="human", email="DANA@corp.example"
    )
    for viewer in (admin_user, auditor_user):
        page = _client(viewer).get(reverse("governance:identity_detail", args=[dana.pk]))
        assert b"Two identities claim this e-mail address" in page.content
        assert b"Link by hand" in page.content
    # Only admins get the form.
    page = _client(auditor_user).get(reverse("governance:identity_detail", args=[dana.pk]))
    assert b"/link/" not in page.content


@pytest.mark.parametrize(
    "persona", ["security_user", "reviewer_user", "auditor_user", "outsider_user"]
)
def test_link_and_unlink_are_refused_to_other_roles(
    request: pytest.FixtureRequest, persona: str, admin_user: Any, dana: Identity
) -> None:
    user = _account("dana.sso", "dana@corp.example", verified=False)
    client = _client(request.getfixturevalue(persona))
    link = client.post(
        reverse("governance:identity_link", args=[dana.pk]), {"username": "dana.sso"}
    )
    assert link.status_code == 403
    assert Identity.objects.get(pk=dana.pk).user is None
    services.identity_link_user(actor=admin_user, identity=dana, user=user)
    unlink = client.post(reverse("governance:identity_unlink", args=[dana.pk]))
    assert unlink.status_code == 403
    assert Identity.objects.get(pk=dana.pk).user == user


def test_link_needs_sign_in_csrf_and_an_existing_identity(admin_user: Any, dana: Identity) -> None:
    _account("dana.sso", "dana@corp.example", verified=False)
    url = reverse("governance:identity_link", args=[dana.pk])
    anonymous = Client().post(url, {"username": "dana.sso"})
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    assert strict.post(url, {"username": "dana.sso"}).status_code == 403
    client = _client(admin_user)
    assert client.get(url).status_code == 405
    missing = reverse("governance:identity_link", args=[dana.pk + 10_000])
    assert client.post(missing, {"username": "dana.sso"}).status_code == 404
    assert Identity.objects.get(pk=dana.pk).user is None
