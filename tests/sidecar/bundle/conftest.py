"""The sidecar's bundle client (``sidecar/bundle.py``) against bundles of a real control plane.

From tests/stack.py: the three autouse fixtures every bundle test has (a known
signing key, a flushed Redis, content types forgotten after a transactional flush),
the control plane (uvicorn on ``config.asgi``), the bundle client processes and a
relay on the control-plane link. Serial, as every test that flushes Redis
(``SERIAL_DIRS`` in tests/conftest.py).
"""

from tests.stack import (  # noqa: F401 - fixtures, re-exported for pytest
    _clean_redis,
    _control_plane_process,
    _fresh_content_types,
    _signing_key,
    bundle_relay,
    control_plane,
    sidecar_clients,
)
