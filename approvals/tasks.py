"""Celery entry points of approvals. Thin: each calls one service.

Notices are enqueued on commit by the services and retried with backoff when a
mail server or webhook fails; ``approval_notify`` records every delivery, so a
retry or a duplicate run sends nothing twice. The sweeps (expiry, escalation,
reminders, the purge of decided requests' values) run from beat
(``CELERY_BEAT_SCHEDULE`` in config/settings.py).
"""

from __future__ import annotations

from celery import shared_task

from approvals import services


@shared_task(
    name="approvals.tasks.approval_notify",
    autoretry_for=(Exception,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
    ignore_result=True,
)
def approval_notify_task(*, request_id: str, kind: str) -> int:
    return services.approval_notify(request_id=request_id, kind=kind)


@shared_task(
    name="approvals.tasks.approvals_expire",
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=3,
    ignore_result=True,
)
def approvals_expire() -> int:
    return services.approvals_expire_stale()


@shared_task(
    name="approvals.tasks.approvals_escalate",
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=3,
    ignore_result=True,
)
def approvals_escalate() -> int:
    return services.approvals_escalate_due()


@shared_task(
    name="approvals.tasks.approvals_remind",
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=3,
    ignore_result=True,
)
def approvals_remind() -> int:
    return services.approvals_remind_due()


@shared_task(
    name="approvals.tasks.approvals_purge_values",
    autoretry_for=(Exception,),
    retry_backoff=True,
    max_retries=3,
    ignore_result=True,
)
def approvals_purge_values() -> int:
    return services.approvals_purge_values()
