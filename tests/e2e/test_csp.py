"""The Content-Security-Policy in a real chromium, on the pages before and around
signing in. The ``page`` fixture fails any browser test on a violation; the walk
over every page a signed-in admin reaches (the Django admin, the API docs and an
htmx swap included), each checked for the policy's header and for nothing blocked,
is tests/e2e/test_landing_and_phone.py's, which checks each page once for all it
asks of a page."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import settle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


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
    settle(page)
    assert not csp_violations, csp_violations
