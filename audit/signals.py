"""Sign-ins, successful and failed, in the audit trail (Django's auth signals).

allauth signs in through ``django.contrib.auth``, so these cover the local form,
SSO and the admin alike. A failed attempt records the username tried, never the
password (Django has already masked it, and only the name keys are read here).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver

from audit.sink.trail import audit_control_event

_USERNAME_KEYS = ("username", "login", "email")


def _client_addr(request: Any) -> str:
    return str(getattr(request, "META", {}).get("REMOTE_ADDR", "") or "") if request else ""


@receiver(user_logged_in, dispatch_uid="audit_sign_in")
def _signed_in(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    audit_control_event(
        action="auth.sign_in",
        actor=user,
        target=f"user:{user.pk}" if user is not None else "",
        outcome="ok",
        client_addr=_client_addr(request),
    )


@receiver(user_login_failed, dispatch_uid="audit_sign_in_failed")
def _sign_in_failed(
    sender: Any, credentials: dict[str, Any] | None = None, request: Any = None, **kwargs: Any
) -> None:
    credentials = credentials or {}
    tried = next((str(credentials[k]) for k in _USERNAME_KEYS if credentials.get(k)), "")
    audit_control_event(
        action="auth.sign_in_failed",
        actor_name="anonymous",
        target=f"username:{tried[:150]}" if tried else "",
        outcome="failed",
        detail={"username": tried[:150]},
        client_addr=_client_addr(request),
    )
