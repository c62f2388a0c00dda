"""Who may do what: roles, the checks views and the API share, and the scoping rule.

Roles (one per user, stored on ``Membership``; a superuser is always admin):

- ``admin``: everything, including users, roles and every token.
- ``security``: reads everything and edits policy (teams, identities, tokens,
  datasources, classifications, masking rules, guardrails).
- ``reviewer``: reads policy and decides approvals.
- ``auditor``: reads everything, changes nothing.
- ``none``: sees nothing (signed in, but not let in).

Scoping ("another team's object" answers 404, as if it did not exist): identity
access tokens are visible to admin, security and auditor; a reviewer sees and
manages only the tokens of their own identity and of the identities they own.
API tokens are personal: only their user (and admins) see them. Selectors apply
these rules; views and the API never filter by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from governance.models import Membership, Role

__all__ = [
    "POLICY_EDITORS",
    "VIEWERS",
    "IsPolicyEditorOrReadOnly",
    "Role",
    "can_edit_policy",
    "can_manage_all_tokens",
    "can_review",
    "can_view",
    "require_role",
    "user_role",
]

VIEWERS = frozenset({Role.ADMIN, Role.SECURITY, Role.REVIEWER, Role.AUDITOR})
POLICY_EDITORS = frozenset({Role.ADMIN, Role.SECURITY})
TOKEN_READERS = frozenset({Role.ADMIN, Role.SECURITY, Role.AUDITOR})


def user_role(user: Any) -> Role:
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return Role.NONE
    if user.is_superuser:
        return Role.ADMIN
    try:
        return Role(user.membership.role)
    except Membership.DoesNotExist:
        return Role.NONE


def can_view(user: Any) -> bool:
    return user_role(user) in VIEWERS


def can_edit_policy(user: Any) -> bool:
    return user_role(user) in POLICY_EDITORS


def can_review(user: Any) -> bool:
    return user_role(user) in {Role.ADMIN, Role.REVIEWER}


def can_manage_all_tokens(user: Any) -> bool:
    return user_role(user) in POLICY_EDITORS


def can_read_all_tokens(user: Any) -> bool:
    return user_role(user) in TOKEN_READERS


def require_role(
    *roles: Role | str,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Function-view decorator: anonymous → sign-in page, any other role → 403."""
    allowed = {Role(r) for r in roles}

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if user_role(request.user) not in allowed:
                raise PermissionDenied("Your role does not allow this.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


class IsPolicyEditorOrReadOnly(BasePermission):
    """API: viewers may read; only admin and security may write.

    Anonymous requests fail authentication first (401); DRF turns False here
    into 403 for an authenticated user.
    """

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return can_view(request.user)
        return can_edit_policy(request.user)


class IsViewer(BasePermission):
    """API: any role but none. Object-level scoping happens in selectors."""

    message = "Your role does not allow this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_view(request.user)


class IsAdmin(BasePermission):
    message = "Only admins may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return user_role(request.user) == Role.ADMIN


class IsAdminOrReadOnly(BasePermission):
    """API: viewers may read; only admins may write (break-glass grants)."""

    message = "Only admins may do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return can_view(request.user)
        return user_role(request.user) == Role.ADMIN
