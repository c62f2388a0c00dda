"""Browser-test harness: Playwright's sync API driving Debian's chromium against
pytest-django's ``live_server`` (a real threaded server on a free port).

Playwright's own browser download is never used. When chromium is missing the
tests are skipped with the reason, except under CI (``CI`` set), where a
missing browser is a failure rather than a silently green run.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CSP_DIRECTIVES, _ensure_builtin_rows

# Playwright's sync API runs an event loop in this thread; Django refuses ORM
# calls from a thread with a running loop unless told it is safe (it is: the
# loop only drives the browser).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = os.environ.get("WARDEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Where the ``screenshot`` fixture saves its PNGs; unset, it saves none.
SCREENSHOT_DIR = os.environ.get("WARDEN_SCREENSHOTS")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)
    # `make screenshots` only: a run that does not ask for them by marker leaves them out.
    if "screenshots" not in (config.option.markexpr or ""):
        skipped = [item for item in items if item.get_closest_marker("screenshots")]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if not item.get_closest_marker("screenshots")]


# Each test starts with what the data migrations seed (environments, built-in
# classifications): tests/conftest.py's _builtin_rows puts them back after the
# previous test's flush, for every transactional test (all of these are).


@pytest.fixture(scope="module", autouse=True)
def builtin_policy_data_after_module(
    django_db_setup: Any, django_db_blocker: Any
) -> Iterator[None]:
    # The last test's flush removed the seed; later transactional tests in the
    # session (outside tests/e2e) expect a database as migrations left it.
    yield
    with django_db_blocker.unblock():
        _ensure_builtin_rows()


# Module scope, not session: Playwright's sync API keeps an asyncio loop running
# in this thread while it is open, which would break later tests that call
# asyncio.run() (the sidecar's).
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        reason = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Reports every Content-Security-Policy violation in any document of the context to
# Python. Playwright's init scripts run before the page's own and are not subject
# to the page's policy, so the listener is in place from the first byte.
_CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__wardenCspViolation(
    `${event.effectiveDirective} blocked ${event.blockedURI || "inline"} ` +
    `(${event.sourceFile || event.documentURI}:${event.lineNumber})`
  );
});
"""


# Counts the page's own requests in flight (htmx's XMLHttpRequests, fetch), for
# ``settle``: after the load event, those are all a page of this application still
# does by itself (hx-trigger="load", Swagger UI fetching the schema).
_REQUESTS_IN_FLIGHT = """
(() => {
  let inFlight = 0;
  const done = () => { inFlight -= 1; };
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    inFlight += 1;
    this.addEventListener("loadend", done, { once: true });
    return send.apply(this, args);
  };
  const fetch = window.fetch;
  window.fetch = function (...args) {
    inFlight += 1;
    return fetch.apply(this, args).finally(done);
  };
  window.__wardenSettled = () => document.readyState === "complete" && inFlight === 0;
})();
"""


def settle(page: Any) -> None:
    """Wait until the page has loaded and finished the requests it made by itself,
    then one more turn of its event loop, so that what they swapped in has been
    checked against the policy and any violation has been reported.

    Deterministic where ``wait_for_load_state("networkidle")`` waits for 500 ms
    of silence on every page.
    """
    page.wait_for_function("() => window.__wardenSettled()")
    page.evaluate("() => new Promise(resolve => setTimeout(resolve, 0))")


def visit(page: Any, path: str, violations: list[str]) -> None:
    """Open a page: it answers 2xx with the full policy, settles, and nothing on it
    was blocked (named by its path here; the ``page`` fixture would only say so
    at the end)."""
    response = page.goto(path)
    assert response is not None and response.ok, (path, response and response.status)
    policy = response.headers.get("content-security-policy", "")
    for directive in CSP_DIRECTIVES:
        assert directive in policy, (path, policy)
    settle(page)
    assert not violations, (path, violations)


def watch_csp(context: Any, page: Any, violations: list[str] | None = None) -> list[str]:
    """Collect CSP violations (the DOM event, and chromium's console report of them)."""
    violations = [] if violations is None else violations
    context.expose_binding("__wardenCspViolation", lambda _source, text: violations.append(text))
    context.add_init_script(_CSP_LISTENER)

    def console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            violations.append(f"console: {message.text}")

    page.on("console", console)
    return violations


@pytest.fixture
def csp_violations() -> list[str]:
    """The violations ``page`` has seen so far, live (it also fails the test on any)."""
    return []


@pytest.fixture
def page(browser: Any, live_server: Any, csp_violations: list[str]) -> Iterator[Any]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    violations = watch_csp(context, page, csp_violations)
    context.add_init_script(_REQUESTS_IN_FLIGHT)
    yield page
    context.close()
    # A JavaScript error, or anything the Content-Security-Policy blocked, on any page
    # is a defect even if the assertions passed.
    assert not errors, f"JavaScript errors: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


def totp_code(secret: str, *, at: float | None = None, step: int = 30, digits: int = 6) -> str:
    """RFC 6238 TOTP (HMAC-SHA1), computed here independently of allauth."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


@pytest.fixture
def sign_in(page: Any) -> Callable[..., None]:
    """Sign in through the real allauth pages, with the TOTP step when the user has one."""
    from tests.conftest import persona_password

    def do(user: Any, role: str, *, totp_secret: str | None = None) -> None:
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(user.username)
        page.get_by_label("Password").fill(persona_password(role))
        page.get_by_role("button", name="Sign in").click()
        if totp_secret is not None:
            page.wait_for_url("**/accounts/2fa/authenticate/**")
            # allauth accepts only the current 30 s window; never type a code about to expire.
            if 30 - time.time() % 30 < 5:
                time.sleep(30 - time.time() % 30 + 0.5)
            page.get_by_label("Code").fill(totp_code(totp_secret))
            page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/accounts/" not in url)

    return do


@pytest.fixture
def screenshot(page: Any) -> Callable[[str], Path | None]:
    """Save a full-page screenshot for a human to look at, into the directory named
    by WARDEN_SCREENSHOTS (e.g. ``WARDEN_SCREENSHOTS=/tmp/warden-screenshots``).

    Without it none is taken: a screenshot asserts nothing, and a full-page one
    costs a third of a second or more, over 10 s for this directory in ``make
    test``. (``make screenshots`` is another thing: test_screenshots.py.)
    """

    def take(name: str) -> Path | None:
        if not SCREENSHOT_DIR:
            return None
        path = Path(SCREENSHOT_DIR) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
