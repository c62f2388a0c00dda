"""The approvals fixtures (tests.approvals.conftest) for the real-process approval tests."""

from tests.approvals.conftest import open_request, review_setup  # noqa: F401 - fixtures
