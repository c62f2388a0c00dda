"""The revocation side of the sidecar token cache (``gateway.auth`` authenticates).

The gateway caches a token's digest -> (sidecar, datasource) in Redis and in
each server process's memory. Revoking or rotating a token must end both at
once, and governance revokes tokens without knowing the gateway: it marks the
Redis entry named here revoked and announces ``forget <digest>`` on the bundle
channel, which every gateway process listens to.
"""

from __future__ import annotations

from django.db import transaction

from governance.bundles import CHANNEL, redis_client

CACHE_SECONDS = 300
# What the Redis cache holds for a token revoked or rotated out, instead of nothing:
# a lookup that read the database just before the revocation committed adds its
# entry only where there is none (SET NX), so it cannot bring the token back.
REVOKED = b"revoked"


def auth_cache_key(digest: str) -> str:
    return f"warden:sidecar-auth:{digest}"


def sidecar_auth_forget(*, digest: str) -> None:
    """End a token in the Redis cache and in every server process's memory."""
    client = redis_client()
    client.set(auth_cache_key(digest), REVOKED, ex=CACHE_SECONDS)
    client.publish(CHANNEL, f"forget {digest}")


def sidecar_auth_forget_on_commit(*, digest: str) -> None:
    """``sidecar_auth_forget`` once the change that ends the token commits (never, if it
    rolls back)."""
    transaction.on_commit(lambda: sidecar_auth_forget(digest=digest))
