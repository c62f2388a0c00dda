"""Schemathesis on the approvals endpoints alone (the whole-API run rarely reaches them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from approvals import services as approvals
from governance import services
from tests.approvals.conftest import open_payload

pytestmark = [pytest.mark.fuzz, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_approvals_api_has_no_server_errors(live_server, review_setup, admin_user, tmp_path):
    approvals.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    _, raw = services.api_token_issue(actor=review_setup.reviewer, name="schemathesis")
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(cli), "run", f"{live_server.url}/api/schema/",
            "--header", f"Authorization: Token {raw}",
            "--checks", "not_a_server_error",
            "--include-path-regex", "approvals|review-settings",
            "--max-examples", "25",
            "--max-time", "40",
            "--seed", "1",
            "--report-dir", str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )  # fmt: skip
    tail = result.stdout[-4000:]
    assert result.returncode == 0, tail
    assert "Server error" not in result.stdout
    assert " passed" in result.stdout, tail
