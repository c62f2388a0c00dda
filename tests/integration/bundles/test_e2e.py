"""End to end: a policy change in the UI reaches a running sidecar client within 2 s.

Real parts only: uvicorn serving the control plane (UI and sidecar API), a
Celery worker running the recompile, Redis pub/sub, and ``python -m
sidecar.bundle`` as the sidecar's bundle client, which verifies, activates and
reports each bundle with the engine's decision for a probe statement.
"""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from governance import services
from tests.stack import Server, SidecarClient

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

BOUND_SECONDS = 2.0


class Browser:
    """A signed-in HTTP session against the live server (cookies + CSRF, like a browser)."""

    def __init__(self, base: str, user: Any) -> None:
        self.base = base
        # A session row the live server can read; then it is a cookie like any other.
        helper = Client()
        helper.force_login(user)
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        cookie = http.cookiejar.Cookie(
            0, settings.SESSION_COOKIE_NAME, helper.cookies[settings.SESSION_COOKIE_NAME].value,
            None, False, "127.0.0.1", False, False, "/", True, False, None, True, None, None, {},
        )  # fmt: skip
        jar.set_cookie(cookie)

    def post_form(self, path: str, fields: list[tuple[str, str]]) -> int:
        page = self.opener.open(self.base + path).read().decode()
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, "the page has no CSRF token"
        body = urllib.parse.urlencode([("csrfmiddlewaretoken", match.group(1)), *fields]).encode()
        request = urllib.request.Request(self.base + path, data=body, method="POST")
        request.add_header("Referer", self.base + path)
        with self.opener.open(request) as response:
            return int(response.status)


def _wait_for_new_revision(client: SidecarClient, old: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        event = client.next_event(timeout=max(0.05, deadline - time.monotonic()), kind="active")
        assert event["event"] == "active", event
        if event["revision"] != old:
            return event


def test_ui_change_and_token_revocation_reach_the_running_sidecar_within_two_seconds(
    control_plane: Server,
    celery_worker: Any,
    sidecar_clients: list[SidecarClient],
    demo_policy: Any,
    admin_user: Any,
    security_user: Any,
    tmp_path: Path,
) -> None:
    token, _raw = services.token_issue(
        actor=admin_user, identity=demo_policy.service, name="billing"
    )
    _, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-e2e"
    )
    client = SidecarClient(
        url=control_plane.url,
        token=sidecar_token,
        state_dir=tmp_path / "state",
        probes=["svc-billing:SELECT ssn FROM customers"],
    )
    sidecar_clients.append(client)
    first = client.next_event(timeout=20, kind="active")
    assert first["event"] == "active" and first["source"] == "network", first
    assert first["credentials"]["svc-billing"] == [f"tok-{token.pk}"]
    masked_before = first["probes"][0]["upstream_sql"]
    assert "ssn" in masked_before and masked_before != "SELECT ssn FROM customers"

    # 1. The security team changes the SSN mask in the UI.
    browser = Browser(control_plane.url, security_user)
    rule = demo_policy.masking_rules[1]
    started = time.time()
    status = browser.post_form(
        reverse("governance:masking_rule_edit", args=[rule.pk]),
        [
            ("name", "mask-ssn"),
            ("classification", str(rule.classification_id)),
            ("strategy", "redact"),
            ("params", "{}"),
            ("exempt_teams", str(demo_policy.team_b.pk)),
            ("enabled", "on"),
            ("reason", "redact, as agreed"),  # crm-prod is in production
        ],
    )
    assert status == 200  # after the redirect to the rule's page
    changed = _wait_for_new_revision(client, first["revision"], timeout=10)
    mask_latency = changed["t"] - started
    assert changed["probes"][0]["upstream_sql"] != masked_before
    assert "'***'" in changed["probes"][0]["upstream_sql"]

    # 2. An identity's token is revoked in the UI.
    started = time.time()
    status = browser.post_form(reverse("governance:token_revoke", args=[token.pk]), [])
    assert status == 200
    revoked = _wait_for_new_revision(client, changed["revision"], timeout=10)
    revoke_latency = revoked["t"] - started
    assert revoked["credentials"]["svc-billing"] == []

    print(
        f"\nUI change -> sidecar active: masking rule {mask_latency * 1000:.0f} ms, "
        f"token revocation {revoke_latency * 1000:.0f} ms (bound {BOUND_SECONDS:.0f} s)"
    )
    assert mask_latency < BOUND_SECONDS
    assert revoke_latency < BOUND_SECONDS
