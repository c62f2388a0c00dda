"""Celery entry points of the governance app; each fetches ids and calls a service."""

from __future__ import annotations

from celery import shared_task

from governance.bundles import bundles_publish_all


@shared_task(name="governance.bundles_recompile")
def bundles_recompile(*, datasource_ids: list[int] | None = None) -> dict[str, str]:
    """Recompile (and publish when changed) the bundles of these datasources, or all."""
    results = bundles_publish_all(datasource_ids=datasource_ids)
    return {str(pk): p.revision for pk, p in results.items()}
