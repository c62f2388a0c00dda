"""Break-glass grants in a real chromium: a second admin approves and revokes a
production grant in place (htmx), and makes a staging grant with the form, all
under the Content-Security-Policy (the ``page`` fixture fails on any violation)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from playwright.sync_api import expect

from governance import services
from governance.models import BreakGlassGrant, Environment, Membership, Role
from tests.conftest import persona_password

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _second_admin() -> Any:
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        "admin2", email="admin2@example.com", password=persona_password("admin")
    )
    Membership.objects.create(user=user, role=Role.ADMIN)
    user.totp_secret = generate_totp_secret()
    TOTP.activate(user, user.totp_secret)
    return user


def test_a_second_admin_approves_and_revokes_in_place(
    page: Any, sign_in: Any, demo_policy: Any, admin_user: Any, screenshot: Any
) -> None:
    prod = demo_policy.datasource
    staging = services.datasource_create(
        actor=admin_user,
        name="crm-staging",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=prod.schema_snapshot,
        connect_teams=[demo_policy.team_a],
    )
    pending = services.break_glass_create(
        actor=admin_user,
        datasource=prod,
        identity=demo_policy.service,
        rules=["floor.copy_server_side"],
        reason="INC-9: restore the orders table from the nightly file",
        expires_at=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2),
    )
    other = _second_admin()
    sign_in(other, "admin", totp_secret=other.totp_secret)

    page.goto(f"/datasources/{prod.pk}/")
    page.locator("#break-glass-link").click()
    row = page.locator(f"#break-glass-{pending.pk}")
    expect(row).to_contain_text("pending approval")
    page.locator(f"#approve-{pending.pk}").click()
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("approved by admin2")
    screenshot("break-glass-approved")
    page.locator(f"#revoke-{pending.pk}").click()
    expect(row).to_contain_text("revoked")
    pending.refresh_from_db()
    assert pending.state == "revoked" and pending.approved_by_id == other.pk

    page.goto(f"/datasources/{staging.pk}/break-glass/")
    page.get_by_label("Identity").select_option("svc-billing")
    page.get_by_label("floor.role_switch", exact=False).check()
    page.get_by_label("Reason").fill("INC-10: switch to the maintenance role")
    page.locator("#make-grant").click()
    expect(page.locator(".messages")).to_contain_text("in force")
    made = BreakGlassGrant.objects.get(datasource=staging)
    assert made.state == "active" and made.rules == ["floor.role_switch"]
    expect(page.locator(f"#break-glass-{made.pk}")).to_contain_text("active")
    screenshot("break-glass-staging")
