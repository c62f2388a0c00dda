"""Ending a sidecar token in the gateway's caches, once the change that ends it commits."""

from __future__ import annotations

from django.db import transaction


def forget_sidecar_digest(digest: str) -> None:
    from governance.sidecar_auth import sidecar_auth_forget

    transaction.on_commit(lambda: sidecar_auth_forget(digest=digest))
