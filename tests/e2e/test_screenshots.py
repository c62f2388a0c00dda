"""``make screenshots``: PNGs of the pages a maintainer wants to look at, for the README.

Each role's home (admin and security share one; a reviewer's is the inbox, an
auditor's the audit overview), the approvals inbox with pending requests, the
configuration history with a change's diff, and the masking rule form, at
1440x900 and 390x844, written to ``var/screenshots/``. Not part of ``make test``
(marked ``screenshots``, which only ``-m screenshots`` selects); it asserts only
that each page renders without a JavaScript error or a CSP violation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.urls import reverse
from playwright.sync_api import expect

from governance import services
from tests.e2e.seed import seed_day

pytestmark = [pytest.mark.e2e, pytest.mark.screenshots, pytest.mark.django_db(transaction=True)]

OUT = Path(settings.BASE_DIR) / "var" / "screenshots"
SIZES = [(1440, 900), (390, 844)]


def _shoot(page: Any, name: str, path: str) -> None:
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.goto(path)
        expect(page.locator("main h1").first).to_be_visible()
        page.screenshot(path=str(OUT / f"{name}-{width}x{height}.png"), full_page=True)


def _sign_out(page: Any) -> None:
    page.set_viewport_size({"width": 1440, "height": 900})
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/accounts/login/**")


def test_screenshots(
    page: Any,
    sign_in: Any,
    demo_policy: Any,
    admin_user: Any,
    security_user: Any,
    reviewer_user: Any,
    auditor_user: Any,
) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    seed_day(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)
    guardrail, rule = demo_policy.guardrails[0], demo_policy.masking_rules[1]
    services.guardrail_update(
        actor=security_user,
        guardrail=guardrail,
        data={"message": "Schema changes in production go through reviewed migrations."},
    )

    sign_in(admin_user, "admin", totp_secret=admin_user.totp_secret)
    _shoot(page, "home-admin", "/")
    _sign_out(page)

    sign_in(security_user, "security")
    _shoot(page, "home-security", "/")
    _shoot(page, "history", reverse("governance:change_list"))
    _shoot(page, "masking-rule-form", reverse("governance:masking_rule_edit", args=[rule.pk]))
    _sign_out(page)

    sign_in(reviewer_user, "reviewer")
    _shoot(page, "home-reviewer", "/")
    _shoot(page, "inbox", reverse("approvals:inbox"))
    _sign_out(page)

    sign_in(auditor_user, "auditor")
    _shoot(page, "home-auditor", "/")
    assert len(list(OUT.glob("*.png"))) >= 14
