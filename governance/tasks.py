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


@shared_task(name="governance.bundles_recompile")
def bundles_recompile(*, datasource_ids: list[int] | None = None) -> dict[str, str]:
    """Recompile (and publish when changed) the bundles of these datasources, or all.

    Enqueued on commit by ``governance.bundles.bundles_mark_stale`` for every
    recorded policy change, including token revocation.
    """
    from governance.bundles import bundles_publish_all

    results = bundles_publish_all(datasource_ids=datasource_ids)
    return {str(pk): p.revision for pk, p in results.items()}


@shared_task(ignore_result=True, name="governance.tasks.bundles_resign")
def bundles_resign() -> dict[str, str]:
    """From beat (every ``WARDEN_BUNDLE_RESIGN_HOURS``): re-sign every bundle with a
    fresh expiry, well before the current one expires (``WARDEN_BUNDLE_LIFETIME_HOURS``)."""
    from governance.bundles import bundles_resign as resign

    return {str(pk): p.revision for pk, p in resign().items()}


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
