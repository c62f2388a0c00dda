"""The sidecar gateway: every HTTP call a sidecar makes, under ``/api/v1/sidecar/``.

The bundle long-poll, the signing keys, heartbeats, schema reports, audit
intake and approvals, with the sidecar token authentication and the Redis
pub/sub hub that wakes long-polls. It calls into ``governance``, ``approvals``
and ``audit``; none of them imports it.
"""
