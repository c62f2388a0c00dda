"""Celery entry points of the governance app. Thin: they call services.

``bundles_recompile`` is enqueued on commit by every recorded policy change
(never for a change that rolled back); ``identities_expire``,
``break_glass_expire`` and ``bundles_resign`` run from beat.
"""

from __future__ import annotations

from celery import shared_task

from governance import services


@shared_task(ignore_result=True)
def identities_expire() -> int:
    """Deactivate identities past their expiry (recorded in history)."""
    return services.identities_expire()


@shared_task(ignore_result=True, name="governance.bundles_recompile")
def bundles_recompile(*, datasource_ids: list[int] | None = None) -> int:
    """Recompile (and publish when changed) the bundles of these datasources, or all.

    Enqueued on commit by ``governance.bundles.bundles_mark_stale``, once per
    transaction that recorded a policy change (token revocation included).
    Returns how many bundles changed: the worker logs a task's return value, and
    ``bundle_publish`` already logs each new revision.
    """
    from governance.bundles import bundles_publish_all

    results = bundles_publish_all(datasource_ids=datasource_ids)
    return sum(1 for published in results.values() if published.changed)


@shared_task(ignore_result=True, name="governance.tasks.bundles_resign")
def bundles_resign() -> int:
    """From beat (every ``WARDEN_BUNDLE_RESIGN_HOURS``): re-sign every bundle with a
    fresh expiry, well before the current one expires (``WARDEN_BUNDLE_LIFETIME_HOURS``).
    Returns how many were re-signed (the revisions are logged as they are published)."""
    from governance.bundles import bundles_resign as resign

    return len(resign())


@shared_task(ignore_result=True, name="governance.tasks.scans_request_due")
def scans_request_due() -> list[int]:
    """From beat: request a scan of every datasource whose scan interval passed."""
    return services.scans_request_due()


@shared_task(ignore_result=True, name="governance.tasks.break_glass_expire")
def break_glass_expire() -> list[int]:
    """From beat, every minute: mark break-glass grants past their expiry ``expired``
    (recorded in history and the audit trail), which recompiles their datasources'
    bundles without them."""
    return services.break_glass_expire()
