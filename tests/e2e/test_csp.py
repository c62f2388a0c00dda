"""The Content-Security-Policy in a real chromium: every main page carries it and
nothing on them is blocked by it (no inline script, style or handler is left, htmx
runs without eval or inline styles). The ``page`` fixture fails any browser test
on a violation; this one walks the pages a signed-in admin reaches, the Django
admin and the API docs included, and interacts with the htmx parts."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.approvals import scenario

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DIRECTIVES = (
    "script-src 'self'",
    "style-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
)


def _visit(page: Any, path: str) -> None:
    response = page.goto(path)
    assert response is not None and response.ok, (path, response and response.status)
    policy = response.headers.get("content-security-policy", "")
    for directive in DIRECTIVES:
        assert directive in policy, (path, policy)
    page.wait_for_load_state("networkidle")


def test_main_pages_raise_no_csp_violation(
    page: Any,
    sign_in: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer_user: Any,
    csp_violations: list[str],
    screenshot: Any,
) -> None:
    s = scenario.build(demo=demo_policy, admin=admin_user, reviewer=reviewer_user)
    _visit(page, "/accounts/login/")
    sign_in(admin_user, "admin", totp_secret=admin_user.totp_secret)
    ds, guardrail = demo_policy.datasource, demo_policy.guardrails[0]
    # Every page of the navigation is walked by tests/e2e/test_landing_and_phone.py,
    # under the same watch (the page fixture fails on a violation); here the rest.
    for path in [
        f"/approvals/{s.agent_request.pk}/",
        f"/identities/{demo_policy.service.pk}/",
        f"/datasources/{ds.pk}/",
        f"/guardrails/{guardrail.pk}/",
        "/guardrails/new/",
        "/accounts/2fa/",
        "/admin/",
        "/admin/governance/guardrailrule/",
        f"/admin/governance/guardrailrule/{guardrail.pk}/change/",
        "/api/docs/",
    ]:
        _visit(page, path)
        assert not csp_violations, (path, csp_violations)
    expect(page.locator("#swagger-ui")).to_contain_text("Warden management API")
    screenshot("csp-api-docs")
    # An htmx swap: a guardrail switched off and on again in place. (Deciding approvals
    # inline is tests/e2e/test_approvals.py's, under the same watch.)
    _visit(page, "/guardrails/")
    switch = page.locator(f"#toggle-{guardrail.pk}")
    switch.click()
    # It protects production: the dialog asks for a reason first.
    page.get_by_role("dialog").get_by_label("Reason").fill("csp check")
    page.get_by_role("dialog").get_by_role("button", name="Disable guardrail").click()
    expect(page.locator(f"#toggle-{guardrail.pk}")).to_have_attribute("aria-checked", "false")
    page.locator(f"#toggle-{guardrail.pk}").click()
    expect(page.locator(f"#toggle-{guardrail.pk}")).to_have_attribute("aria-checked", "true")
    page.wait_for_load_state("networkidle")
    assert not csp_violations, csp_violations


def test_the_sign_in_pages_raise_no_csp_violation(page: Any, csp_violations: list[str]) -> None:
    for path in ["/accounts/login/", "/accounts/password/reset/", "/no-such-page/"]:
        response = page.goto(path)
        assert response is not None
        assert "script-src 'self'" in response.headers.get("content-security-policy", ""), path
    assert not csp_violations, csp_violations


def test_setting_up_totp_raises_no_csp_violation(page: Any, csp_violations: list[str]) -> None:
    """A new admin's first sign-in: the TOTP set-up page (its QR code is a data: image),
    then the recovery codes, under the same policy."""
    from django.contrib.auth import get_user_model

    from tests.e2e.conftest import totp_code

    get_user_model().objects.create_user(
        "root2", email="root2@example.com", password="pw-root2-Warden1!", is_superuser=True
    )
    page.goto("/accounts/login/")
    page.get_by_label("Username or email").fill("root2")
    page.get_by_label("Password").fill("pw-root2-Warden1!")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    if "/reauthenticate/" in page.url:
        page.get_by_label("Password").fill("pw-root2-Warden1!")
        page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/accounts/2fa/totp/activate/**")
    qr = page.locator("img.qr")
    expect(qr).to_be_visible()
    assert page.evaluate("document.querySelector('img.qr').naturalWidth") > 0
    secret = page.locator("#authenticator_secret").input_value()
    if 30 - time.time() % 30 < 5:  # never type a code about to expire
        time.sleep(30 - time.time() % 30 + 0.5)
    page.get_by_label("Authenticator code").fill(totp_code(secret))
    page.get_by_role("button", name="Activate").click()
    page.wait_for_url(lambda url: "/totp/activate/" not in url)
    page.goto("/accounts/2fa/recovery-codes/")
    page.wait_for_load_state("networkidle")
    assert not csp_violations, csp_violations
