"""API authentication and pagination, kept apart from governance.api.

DRF imports these while it loads its own settings, so they must not import
DRF's views (governance.api does, which would be a circular import).
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from governance.models import ApiToken, token_digest


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Token <raw>``; looked up by digest, refused when revoked or expired."""

    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed token header.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Malformed token.") from None
        token = ApiToken.objects.select_related("user").filter(digest=token_digest(raw)).first()
        if token is None or not token.is_active or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired token.")
        # At most one write a minute per token: a busy script should not
        # turn every read into an UPDATE.
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
