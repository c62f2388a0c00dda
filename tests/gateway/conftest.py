"""Gateway fixtures: the tests of every call a sidecar makes.

Tests marked ``serial`` (``test_sidecar_api``, ``test_audit_ingest_asgi``) run
against the real ASGI server (``config.asgi`` under uvicorn, one per session)
with what tests/stack.py gives the bundle tests: a known signing key the client pins, a
flushed Redis, content types forgotten after the transactional flush. The
others go through Django's test client, as tests/approvals does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings

from governance import signing
from tests.approvals.conftest import review_setup  # noqa: F401 - fixture, re-exported for pytest
from tests.stack import (  # noqa: F401 - fixtures, re-exported for pytest
    SIGNING_KEY,
    _control_plane_process,
    control_plane,
)


@pytest.fixture(autouse=True)
def _like_tests_bundles(request: pytest.FixtureRequest) -> Iterator[None]:
    """For the serial tests: tests/stack.py's three autouse fixtures, in their order."""
    if request.node.get_closest_marker("serial") is None:
        yield
        return
    settings: Any = request.getfixturevalue("settings")
    settings.WARDEN_BUNDLE_SIGNING_KEY = SIGNING_KEY
    signing.active_signing_key.cache_clear()
    # Our own Redis database: bundles of an earlier test's datasource ids must
    # not be served to this one's.
    redis.Redis.from_url(django_settings.REDIS_URL).flushdb()
    try:
        yield
    finally:
        signing.active_signing_key.cache_clear()
        # A transactional test ends with a flush; content type ids remembered from
        # it must not leak into the next test (history records name their content type).
        from django.contrib.contenttypes.models import ContentType

        ContentType.objects.clear_cache()
