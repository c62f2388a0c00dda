"""Which web account is which human identity: linking sign-in accounts to identities.

A human identity's ``user`` is the account that signs in to the control plane
as that person. The link decides what the account sees as "mine" (the
identity's approval requests and those of the agents it owns), which
requests it may not decide (its own, its agents'), and which teams it
reviews for. So it is made only on proof:

- Automatically (``identity_link_by_verified_email``), when an account signs
  in through single sign-on or an address of it becomes verified: the
  account is linked to the one human identity with the same e-mail address
  (case-insensitive) when that address is verified (the identity provider's
  ``email_verified`` claim, or allauth's ``EmailAddress.verified``), and
  nobody else claims it: no second identity has that address, and no second
  account has it (as its e-mail or as one of its addresses, verified or not).
  Anything ambiguous links nothing; an admin links by hand.
- By hand (``identity_link_user`` / ``identity_unlink_user``): admins only.

Both record the change in history and an ``identity.linked`` /
``identity.unlinked`` event in the audit trail (names, never addresses).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.sink.trail import audit_control_event
from governance.bundles import bundles_mark_stale
from governance.models import Identity, IdentityKind
from governance.selectors import email_claimants, verified_emails_of
from governance.services.history import _update
from governance.services.identities import _require_admin_to_link

logger = logging.getLogger(__name__)


def _link_event(action: str, actor: Any, identity: Identity, user: Any, **detail: Any) -> None:
    audit_control_event(
        action=action,
        actor=actor,
        target=f"identity:{identity.pk} {identity.name}"[:300],
        outcome="ok",
        detail={"identity": identity.name, "user": user.get_username(), **detail},
    )


def _link(actor: Any, identity: Identity, user: Any, *, how: str) -> Identity:
    _update(actor, identity, {"user": user}, allowed={"user"})
    bundles_mark_stale(obj=identity)
    _link_event("identity.linked", actor, identity, user, how=how)
    return identity


@transaction.atomic
def identity_link_user(*, actor: Any, identity: Identity, user: Any) -> Identity:
    """Link ``user`` to the human ``identity`` by hand (admins only)."""
    _require_admin_to_link(actor)
    identity = Identity.objects.select_for_update(no_key=True).get(pk=identity.pk)
    if identity.kind != IdentityKind.HUMAN:
        raise ValidationError({"user": "Only human identities have a sign-in account."})
    if identity.user_id == user.pk:
        raise ValidationError({"user": f"{identity.name} is already linked to this account."})
    if identity.user_id is not None:
        raise ValidationError(
            {"user": f"{identity.name} is linked to another account; unlink it first."}
        )
    other = Identity.objects.filter(user=user).first()
    if other is not None:
        raise ValidationError(
            {"user": f"This account is linked to {other.name}; unlink that identity first."}
        )
    if not user.is_active:
        raise ValidationError({"user": "This account is not active."})
    return _link(actor, identity, user, how="by_hand")


@transaction.atomic
def identity_unlink_user(*, actor: Any, identity: Identity) -> Identity:
    """Remove the sign-in account from ``identity`` (admins only).

    While the account still has a verified address that only this identity
    claims, its next single sign-on links them again: to keep them apart, an
    admin also changes the identity's e-mail or deactivates the account
    (docs/accounts.md).
    """
    _require_admin_to_link(actor)
    identity = Identity.objects.select_for_update(no_key=True).get(pk=identity.pk)
    if identity.user_id is None:
        raise ValidationError({"user": f"{identity.name} has no sign-in account."})
    user = identity.user
    _update(actor, identity, {"user": None}, allowed={"user"})
    bundles_mark_stale(obj=identity)
    _link_event("identity.unlinked", actor, identity, user)
    return identity


@transaction.atomic
def identity_link_by_verified_email(
    *, user: Any, verified_emails: Iterable[str] = ()
) -> Identity | None:
    """Link ``user`` to the human identity with its verified address, if unambiguous.

    The verified addresses are the account's verified ``EmailAddress`` rows
    plus ``verified_emails`` (what the identity provider marks verified at this
    sign-in). Returns the identity the account is linked to (already or now),
    or None. Links nothing when the account already has an identity, when no
    or several identities match, or when an address is claimed by another
    account or identity (``email_claimants``). Recorded with the actor "system".
    """
    if user is None or user.pk is None or not user.is_active:
        return None
    current = Identity.objects.filter(user=user).first()
    if current is not None:
        return current
    # Lock the account's row: two sign-ins of one account at once link once.
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    addresses = {e.strip().lower() for e in verified_emails if e and e.strip()}
    addresses |= verified_emails_of(user)
    candidates: dict[int, Identity] = {}
    for address in sorted(addresses):
        if not address.isascii():
            # The database's case-insensitive match follows its locale (a dotless i,
            # U+0131, upper-cases to I): a look-alike address could name another person's
            # identity. Non-ASCII addresses are linked by an admin, by hand.
            logger.info("not linking account %s: a non-ASCII address", user.pk)
            return None
        claim = email_claimants(address)
        if any(i.email.strip().lower() != address for i in claim.identities):
            logger.info("not linking account %s: a look-alike address claims it", user.pk)
            return None
        if claim.user_ids - {user.pk}:
            logger.info("not linking account %s: another account claims its address", user.pk)
            return None
        if len(claim.identities) > 1:
            logger.info("not linking account %s: several identities claim its address", user.pk)
            return None
        candidates.update((i.pk, i) for i in claim.identities)
    if len(candidates) != 1:
        return None
    (identity,) = candidates.values()
    identity = Identity.objects.select_for_update(no_key=True).get(pk=identity.pk)
    if identity.kind != IdentityKind.HUMAN or identity.user_id is not None:
        return None
    return _link(None, identity, user, how="verified_email")
