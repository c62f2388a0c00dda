"""Signing in through the real allauth pages, and the keyboard's way into a page.

Every main page rendering in a real browser with the demo policy (its heading) is
checked in the one walk over all pages, tests/e2e/test_landing_and_phone.py."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_admin_signs_in_with_password_and_totp(page: Any, sign_in: Any, admin_user: Any) -> None:
    sign_in(admin_user, "admin", totp_secret=admin_user.totp_secret)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".sidebar-footer .who")).to_have_text("admin")


def test_wrong_totp_code_keeps_admin_out(page: Any, admin_user: Any) -> None:
    from tests.conftest import persona_password

    page.goto("/accounts/login/")
    page.get_by_label("Username or email").fill("admin")
    page.get_by_label("Password").fill(persona_password("admin"))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/accounts/2fa/authenticate/**")
    page.get_by_label("Code").fill("000000")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".errorlist")).to_be_visible()
    page.goto("/guardrails/")
    # Still in the sign-in flow (login or 2FA stage), never on a policy page.
    assert "/accounts/" in page.url
    expect(page.get_by_role("heading", name="Guardrails")).to_have_count(0)


def test_anonymous_visitor_is_sent_to_sign_in(page: Any) -> None:
    page.goto("/guardrails/")
    assert "/accounts/login/" in page.url
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_keyboard_skip_link_and_visible_focus(page: Any, sign_in: Any, auditor_user: Any) -> None:
    sign_in(auditor_user, "auditor")
    page.goto("/identities/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    # The next Tab lands inside the page content, not back in the navigation.
    page.keyboard.press("Tab")
    in_main = page.evaluate("document.activeElement.closest('main') !== null")
    assert in_main
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
