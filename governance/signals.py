"""Signal receivers of the governance app: an address becoming verified links its account.

Sign-in through single sign-on links in ``governance.adapters``; this catches
the other way an address becomes verified (allauth's confirmation e-mail).
"""

from __future__ import annotations

from typing import Any

from allauth.account.signals import email_confirmed
from django.dispatch import receiver

from governance.services import identity_link_by_verified_email


@receiver(email_confirmed, dispatch_uid="governance_link_on_email_confirmed")
def link_on_email_confirmed(sender: Any, request: Any, email_address: Any, **kwargs: Any) -> None:
    identity_link_by_verified_email(user=email_address.user)
