"""django-allauth glue: closed sign-up, SSO group claims → teams and role, the admin MFA gate.

- ``AccountAdapter``: local sign-up only when ``ACCOUNT_ALLOW_SIGNUPS`` is on.
- ``SocialAccountAdapter``: users arriving through OIDC are linked to the human
  identity their verified address names, or get a new one (docs/accounts.md),
  and their ``OIDC_GROUPS_CLAIM`` groups are mapped to teams and a role
  (``OIDC_GROUP_TEAM_MAP`` / ``OIDC_GROUP_ROLE_MAP``) at every sign-in.
- ``AdminMfaRequiredMiddleware``: an admin without TOTP is sent to set it up
  before anything else (API session calls get a 403 in the API error shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.mfa.models import Authenticator
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django_htmx.http import HttpResponseStopPolling

from governance.errors import error_body
from governance.models import Role
from governance.permissions import user_role
from governance.services import identity_link_by_verified_email, sso_user_sync


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return bool(settings.ACCOUNT_ALLOW_SIGNUPS)


def groups_from_claims(extra_data: dict[str, Any], claim: str) -> list[str]:
    """The group names in the id_token or userinfo claims (a list, or one string)."""
    groups: list[str] = []
    for part in ("id_token", "userinfo"):
        claims = extra_data.get(part) or {}
        value = claims.get(claim) if isinstance(claims, dict) else None
        if isinstance(value, str):
            groups.append(value)
        elif isinstance(value, list):
            groups.extend(v for v in value if isinstance(v, str))
    # Flat extra_data (other providers) carries the claims at the top level.
    top = extra_data.get(claim)
    if isinstance(top, list):
        groups.extend(v for v in top if isinstance(v, str))
    return sorted(set(groups))


def provider_verified_emails(sociallogin: Any) -> list[str]:
    """The addresses the identity provider marks verified at this sign-in. allauth
    takes ``email_verified`` as it comes, and some providers send the string
    "false": when the claim is there it must be the JSON value true."""
    claims = sociallogin.account.extra_data or {}
    if "email_verified" in claims and claims["email_verified"] is not True:
        return []
    return [e.email for e in sociallogin.email_addresses if e.verified is True]


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        # The IdP decides who exists; the role map decides what they may see.
        return True

    def _sync(self, sociallogin: Any) -> None:
        # First link the account to the human identity its verified address names
        # (docs/accounts.md), so the sync below applies to that identity.
        identity_link_by_verified_email(
            user=sociallogin.user,
            verified_emails=provider_verified_emails(sociallogin),
        )
        sso_user_sync(
            user=sociallogin.user,
            groups=groups_from_claims(
                sociallogin.account.extra_data or {}, settings.OIDC_GROUPS_CLAIM
            ),
            team_map=settings.OIDC_GROUP_TEAM_MAP,
            role_map=settings.OIDC_GROUP_ROLE_MAP,
        )

    def save_user(self, request: HttpRequest, sociallogin: Any, form: Any = None) -> Any:
        user = super().save_user(request, sociallogin, form)
        self._sync(sociallogin)
        return user

    def pre_social_login(self, request: HttpRequest, sociallogin: Any) -> None:
        super().pre_social_login(request, sociallogin)
        if sociallogin.is_existing:
            self._sync(sociallogin)


# Paths an admin without TOTP may still reach: signing in and out, setting up
# MFA itself, static assets and the probes.
_MFA_EXEMPT_PREFIXES = ("/accounts/", "/static/", "/healthz", "/readyz")


class AdminMfaRequiredMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and not request.path.startswith(_MFA_EXEMPT_PREFIXES)
            and user_role(user) == Role.ADMIN
            and not Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()
        ):
            if request.path.startswith("/api/"):
                return JsonResponse(
                    error_body(
                        "mfa_required",
                        "Admins must set up two-factor authentication (TOTP) first.",
                    ),
                    status=403,
                )
            if request.headers.get("HX-Request") == "true":
                # A page's poll (the inbox badge, every second): a redirect would be
                # followed and the set-up page swapped into the page; stop polling.
                return HttpResponseStopPolling()
            return HttpResponseRedirect(reverse("mfa_activate_totp"))
        return self.get_response(request)
