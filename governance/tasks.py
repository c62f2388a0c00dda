"""Celery entry points of the governance app. Thin: they call services.

``policy_changed`` is enqueued on commit by every policy change (never for a
change that rolled back); ``identities_expire`` runs from beat.
"""

from __future__ import annotations

from celery import shared_task

from governance import services


@shared_task(ignore_result=True)
def policy_changed() -> int:
    """Bump the policy generation, which sidecars' bundle long-polls will watch."""
    return services.policy_generation_bump()


@shared_task(ignore_result=True)
def identities_expire() -> int:
    """Deactivate identities past their expiry (recorded in history)."""
    return services.identities_expire()
