"""The revocation side of the sidecar token cache (``gateway.auth`` authenticates).

The gateway caches a token's digest -> (sidecar, datasource) in Redis and in
each server process's memory. Revoking or rotating a token must end both at
once, and governance revokes tokens without knowing the gateway: it deletes the
Redis entry named here and announces ``forget <digest>`` on the bundle channel,
which every gateway process listens to.
"""

from __future__ import annotations

from governance.bundles import CHANNEL, redis_client

CACHE_SECONDS = 300


def auth_cache_key(digest: str) -> str:
    return f"warden:sidecar-auth:{digest}"


def sidecar_auth_forget(*, digest: str) -> None:
    """Drop a token from the Redis cache and from every server process's memory."""
    client = redis_client()
    client.delete(auth_cache_key(digest))
    client.publish(CHANNEL, f"forget {digest}")
