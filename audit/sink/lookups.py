"""What the sink needs to know of the apps around it, plugged in at start-up.

The sink imports no other app, so any app may write to the trail without an
import cycle. The few facts it needs of governance (a sidecar batch's chain and
environment, the environments that exist, who the admins are) are either passed
by the caller or looked up through the functions ``audit.apps.AuditConfig.ready``
installs here from ``audit.governance_lookups``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypedDict


class BatchContext(TypedDict):
    """Where a sidecar's batch is stored: settled by its token, never by its events."""

    chain: str
    datasource_id: int
    environment: str
    sidecar_name: str


@dataclass(frozen=True)
class Lookups:
    batch_context: Callable[[int, int], BatchContext]  # (sidecar id, datasource id)
    environments: Callable[[], Collection[str]]  # every environment's name
    admin_emails: Callable[[], list[str]]  # whom a broken chain is mailed to
    is_admin: Callable[[Any], bool]  # who may change how long the trail is kept


_installed: Lookups | None = None


def lookups_install(lookups: Lookups) -> None:
    global _installed
    _installed = lookups


def lookups() -> Lookups:
    if _installed is None:
        raise RuntimeError("audit.sink needs the audit app to be ready (its lookups installed)")
    return _installed
