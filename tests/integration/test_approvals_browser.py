"""Issues 6 and 17, "done when", end to end with every part real.

uvicorn serves the control plane (pages, sidecar API, the approval long-poll),
a Celery worker compiles the bundle and sends notices, ``python -m sidecar run``
proxies a scratch database, the client is real ``psql``, and the reviewer
decides in real chromium, in the inbox the pages serve. The agent identity's
writes need a reviewer (``review-agent-writes`` in ``demo_policy``).

1. A held statement: psql prints the hold notice as it waits; the card shows
   its values (a classified one redacted) and the planner's estimate; it
   completes once the reviewer approves it in the browser, within the hold.
2. Nobody decides within the hold (the datasource's own, short): psql gets
   WR001 naming the request's page; the reviewer opens that URL, approves, then
   revokes the grant: the re-run is held for a new review, approved, and runs.
3. A denial, with its reason, reaches psql as 42501.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connections
from playwright.sync_api import expect

from approvals import services as approvals
from approvals.models import ApprovalRequest
from governance import services
from governance.bundles import bundle_current
from tests.conftest import persona_password
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, watch_csp
from tests.integration.conftest import SidecarProcess, pinned_key, upstream_dbname
from tests.stack import Server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _config(control_plane: Server, sidecar_token: str, upstream_db: str) -> dict[str, Any]:
    return {
        "upstream_dsn": upstream_db,
        "listen_port": 0,
        "control_plane_url": control_plane.url,
        "token": sidecar_token,
        "bundle_public_keys": pinned_key(),
        "bundle_wait": 30,
        "bundle_max_backoff": 1,
        "heartbeat_interval": 5,
        # The policy under test is demo_policy's: a start scan's findings would be
        # enforced provisionally (production) halfway through.
        "scan_enabled": False,
    }


class Psql:
    """One ``psql -c`` run in a thread, so the test can act while the statement is held.
    Its standard error is read line by line as psql writes it, so a notice printed
    while the statement waits is seen while it waits (``lines``, with their times)."""

    def __init__(self, *, port: int, dbname: str, user: str, token: str, sql: str) -> None:
        self.args = [
            "psql",
            f"host=127.0.0.1 port={port} dbname={dbname} user={user}",
            "-XAt",
            "-v",
            "VERBOSITY=verbose",  # the SQLSTATE in the error line
            "-c",
            sql,
        ]
        self.env = {**os.environ, "PGPASSWORD": token}
        self.result: subprocess.CompletedProcess[str] | None = None
        self.lines: list[tuple[float, str]] = []
        self.finished_at: float | None = None
        self.started_at = time.monotonic()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            self.lines.append((time.monotonic(), line))
        stdout = proc.stdout.read()
        proc.wait(django_settings.WARDEN_APPROVAL_HOLD_SECONDS + 30)
        stderr = "".join(line for _, line in self.lines)
        self.result = subprocess.CompletedProcess(self.args, proc.returncode, stdout, stderr)
        self.finished_at = time.monotonic()

    def printed(self, text: str, timeout: float = 10.0) -> float:
        """When psql printed a line containing ``text`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            time.sleep(0.05)
        raise AssertionError(f"psql did not print {text!r}: {self.lines}")

    def join(self, timeout: float) -> subprocess.CompletedProcess[str]:
        self.thread.join(timeout)
        assert self.result is not None, "psql is still waiting"
        return self.result


def _pending(identity: Any, *, exclude: tuple[Any, ...] = (), timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = (
            ApprovalRequest.objects.filter(identity=identity, state="pending")
            .exclude(pk__in=exclude)
            .first()
        )
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError("no pending approval request appeared")


def _rows(upstream_db: str) -> dict[int, str]:
    with psycopg.connect(upstream_db) as conn:
        return dict(conn.execute("SELECT id, full_name FROM customers").fetchall())


# Step 2's hold time (the datasource's own): the statement nobody decides waits this long.
SHORT_HOLD_SECONDS = 5


def _hold_until_running(
    proc: SidecarProcess, datasource: Any, admin_user: Any, seconds: int | None
) -> None:
    """Set the datasource's hold time (None: the setting's) and wait until the running
    sidecar has made the bundle that carries it active."""
    logged = len(proc.log.read_text())
    approvals.review_settings_set(
        actor=admin_user, datasource=datasource, data={"hold_seconds": seconds}
    )
    expected = seconds or django_settings.WARDEN_APPROVAL_HOLD_SECONDS
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = bundle_current(datasource_id=datasource.pk)
        if (
            current is not None
            and json.loads(current[1])["bundle"]["approvals"]["hold_seconds"] == expected
            and f"bundle {current[0][:12]} active" in proc.log.read_text()[logged:]
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"the sidecar never took the bundle holding {expected} s")


@pytest.fixture
def reviewer_page(control_plane: Server) -> Iterator[Any]:
    """Chromium for this test only, closed before the test's database teardown.

    While Playwright's sync API is open its event loop runs in this thread, and
    Django then hands out other connection objects (asgiref's context-local
    storage); the serialized-rollback teardown must run on the original one, or
    the next serialized test finds rows it did not expect. So: function scope,
    and the connections opened meanwhile are closed before Playwright stops.
    """
    if not Path(CHROMIUM).exists():
        reason = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            base_url=control_plane.url, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        violations = watch_csp(context, page)
        try:
            yield page
        finally:
            context.close()
            browser.close()
            connections.close_all()
    assert not errors, f"JavaScript errors: {errors}"
    assert not violations, f"Content-Security-Policy violations: {violations}"


def test_reviewer_decides_in_the_browser_and_the_client_sees_it(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer_user: Any,
    upstream_db: str,
    tmp_path: Path,
    reviewer_page: Any,
) -> None:
    agent = demo_policy.agent
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    _, token = services.token_issue(actor=admin_user, identity=agent, name="t")
    _, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-approvals-ui"
    )
    proc = SidecarProcess(
        config=_config(control_plane, sidecar_token, upstream_db), state_dir=tmp_path / "state"
    )
    dbname = upstream_dbname()

    def psql(sql: str) -> Psql:
        return Psql(port=proc.port, dbname=dbname, user=agent.name, token=token, sql=sql)

    # The control plane process uses the production hasher, not the tests' fast one.
    hasher = PBKDF2PasswordHasher()
    reviewer_user.password = hasher.encode(persona_password("reviewer"), hasher.salt())
    reviewer_user.save(update_fields=["password"])
    page = reviewer_page
    try:
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(reviewer_user.username)
        page.get_by_label("Password").fill(persona_password("reviewer"))
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/accounts/" not in url)
        badge = page.locator("#pending-badge")
        expect(badge).to_have_attribute("data-count", "0")

        # 1. Held; psql prints the hold notice while it waits; the badge shows the
        # request without a reload, its card the values (the one written into a
        # classified column redacted) and the planner's estimate; approved inline;
        # psql completes.
        first = psql(
            "INSERT INTO customers (id, full_name, email) "
            "VALUES (3, 'Ada L.', 'nobody@example.com')"
        )
        request = _pending(agent)
        assert request.required_approvals == 1
        assert "Ada" not in request.statement  # redacted before it left the sidecar
        noticed = first.printed("Warden is holding this statement for approval: ")
        notice = first.printed(f"/approvals/{request.pk}/")
        assert noticed == notice and first.thread.is_alive()
        assert (
            f"waiting up to {django_settings.WARDEN_APPROVAL_HOLD_SECONDS} s" in first.lines[0][1]
        )
        expect(badge).to_have_attribute("data-count", "1")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Inbox").click()
        card = page.locator(f"#request-{request.pk}")
        expect(card).to_contain_text("agent-reports")
        values = card.locator(".values-table")
        expect(values).to_contain_text("'Ada L.'")
        expect(values).to_contain_text("redacted (pii.email)")
        expect(card).to_contain_text("≈ 1 row in customers (estimate)")
        assert "nobody@example.com" not in page.content()
        assert first.thread.is_alive(), "the statement did not wait for the decision"
        clicked = time.monotonic()
        card.get_by_role("button", name="Approve agent-reports's request").click()
        expect(card).to_have_attribute("data-state", "approved")
        expect(badge).to_have_attribute("data-count", "0")
        done = first.join(django_settings.WARDEN_APPROVAL_HOLD_SECONDS)
        assert done.returncode == 0, done.stderr
        assert first.finished_at is not None
        waited = first.finished_at - first.started_at
        after_click = first.finished_at - clicked
        print(f"\nheld {waited:.1f} s in all; completed {after_click:.2f} s after the click")
        assert waited < django_settings.WARDEN_APPROVAL_HOLD_SECONDS
        assert _rows(upstream_db)[3] == "Ada L."

        # 2. Nobody decides in time: WR001 naming the request; approved at that URL.
        # The datasource's own hold time, short, so that the test does not wait out
        # the default; back to the default before anyone has to decide in the browser.
        _hold_until_running(proc, demo_policy.datasource, admin_user, SHORT_HOLD_SECONDS)
        sql = "UPDATE customers SET full_name = 'Alan T.' WHERE id = 2"
        second = psql(sql)
        held = _pending(agent, exclude=(request.pk,))
        second.printed(f"waiting up to {SHORT_HOLD_SECONDS} s")
        timed_out = second.join(SHORT_HOLD_SECONDS + 20)
        assert second.finished_at is not None
        assert second.finished_at - second.started_at >= SHORT_HOLD_SECONDS - 1
        assert timed_out.returncode != 0
        assert "WR001" in timed_out.stderr, timed_out.stderr
        assert "is pending" in timed_out.stderr
        url = re.search(r"https?://\S+/approvals/[0-9a-f-]{36}/", timed_out.stderr)
        assert url is not None, timed_out.stderr
        assert url.group(0) == f"{control_plane.url}/approvals/{held.pk}/"
        assert _rows(upstream_db)[2] == "Alan Turing"  # nothing ran
        _hold_until_running(proc, demo_policy.datasource, admin_user, None)
        page.goto(url.group(0))
        card = page.locator(f"#request-{held.pk}")
        card.get_by_role("button", name="Approve agent-reports's request").click()
        expect(card).to_have_attribute("data-state", "approved")
        # Revoked on that page before it is used: the re-run is held for a new review
        # (the sidecar asks the control plane at every run), approved, and runs.
        page.reload()
        page.get_by_role("button", name="Revoke the grant of agent-reports's request").click()
        expect(page.locator("#grant")).to_have_attribute("data-grant-state", "revoked")
        rerun = psql(sql)
        renewed = _pending(agent, exclude=(request.pk, held.pk))
        rerun.printed("Warden is holding this statement for approval: ")
        rerun.printed(f"waiting up to {django_settings.WARDEN_APPROVAL_HOLD_SECONDS} s")
        assert _rows(upstream_db)[2] == "Alan Turing" and rerun.thread.is_alive()
        page.goto(f"/approvals/{renewed.pk}/")
        card = page.locator(f"#request-{renewed.pk}")
        card.get_by_role("button", name="Approve agent-reports's request").click()
        expect(card).to_have_attribute("data-state", "approved")
        again = rerun.join(django_settings.WARDEN_APPROVAL_HOLD_SECONDS)
        assert again.returncode == 0, again.stderr
        assert _rows(upstream_db)[2] == "Alan T."
        page.reload()
        expect(page.locator("#timeline")).to_contain_text("Grant used")

        # 3. Denied in the browser with a reason: psql gets 42501 with the reason.
        third = psql("DELETE FROM customers WHERE id = 1")
        denied = _pending(agent, exclude=(request.pk, held.pk, renewed.pk))
        expect(badge).to_have_attribute("data-count", "1")
        page.goto("/approvals/")
        card = page.locator(f"#request-{denied.pk}")
        card.get_by_text("Deny…").click()
        card.get_by_label("Reason for agent-reports").fill("Deletes go through the retention job.")
        card.get_by_role("button", name="Deny", exact=True).click()
        expect(card).to_have_attribute("data-state", "denied")
        refused = third.join(django_settings.WARDEN_APPROVAL_HOLD_SECONDS)
        assert refused.returncode != 0
        assert "42501" in refused.stderr, refused.stderr
        assert "denied by reviewer" in refused.stderr
        assert "Deletes go through the retention job." in refused.stderr
        assert f"/approvals/{denied.pk}/" in refused.stderr
        assert 1 in _rows(upstream_db)
    finally:
        proc.stop()
