"""Fixtures of the audit tests: a datasource and a clock to place events on."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from governance import services
from governance.models import Environment


@pytest.fixture
def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@pytest.fixture
def crm(admin_user: Any) -> Any:
    return services.datasource_create(
        actor=admin_user, name="crm-prod", environment=Environment.objects.get(name="production")
    )


@pytest.fixture
def lab(admin_user: Any) -> Any:
    return services.datasource_create(
        actor=admin_user, name="lab", environment=Environment.objects.get(name="sandbox")
    )


# The approvals fixtures, for evidence packs that carry approval decisions.
from tests.approvals.conftest import open_request, review_setup  # noqa: E402, F401
