"""Issue 22, "done when": an AI agent's held write through the MCP server, approved by a
reviewer in Chromium, then run; every part real.

uvicorn serves the control plane, a Celery worker compiles the bundle (the agent's
credential with its token's prefix, format 1.2), ``python -m sidecar run`` proxies a
scratch database with its MCP listener on, the agent is the ``mcp`` SDK's own client
over streamable HTTP, and the reviewer decides in the inbox the pages serve. The
agent's writes need a reviewer (``review-agent-writes`` in ``demo_policy``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation
from playwright.sync_api import expect

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from governance import services
from tests.conftest import persona_password
from tests.integration import test_approvals_browser
from tests.integration.conftest import SidecarProcess, sidecar_config
from tests.stack import Server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

reviewer_page = test_approvals_browser.reviewer_page

UPDATE = "UPDATE customers SET full_name = 'Grace H.' WHERE id = 2"


def _in_thread(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run the async MCP client in a thread of its own: Playwright's sync API holds
    this thread's event loop."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(work())  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    if "error" in out:
        raise out["error"]
    return out["value"]


def _calls(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async def work() -> list[Any]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        info = Implementation(name="reports-agent", version="1")
        async with (
            http,
            Client(streamable_http_client(url, http_client=http), client_info=info) as client,
        ):
            return [await client.call_tool(name, args) for name, args in calls]

    return _in_thread(work)


def _mcp_sidecar(
    control_plane: Server,
    demo_policy: Any,
    admin_user: Any,
    reviewer_user: Any,
    upstream_db: str,
    tmp_path: Path,
    name: str,
) -> tuple[SidecarProcess, str, str]:
    """The reviewer on the team that reviews the demo datasource, a sidecar ``name``
    with its MCP listener on, once it is up: the sidecar, its MCP URL and an access
    token of the agent."""
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    _, token = services.token_issue(actor=admin_user, identity=demo_policy.agent, name="mcp")
    _, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name=name
    )
    config = sidecar_config(
        control_plane, sidecar_token, upstream_db, scan_enabled=False, mcp_listen="127.0.0.1:0"
    )
    proc = SidecarProcess(config=config, state_dir=tmp_path / "state")
    deadline = time.monotonic() + 30
    while "mcp_port" not in json.loads(proc.ready_file.read_text()):
        if time.monotonic() > deadline:
            proc.stop()
            raise AssertionError(proc.log.read_text()[-3000:])
        time.sleep(0.1)
    port = json.loads(proc.ready_file.read_text())["mcp_port"]
    return proc, f"http://127.0.0.1:{port}/mcp", token


def test_a_held_write_is_approved_in_the_inbox_then_runs(
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
    proc, url, token = _mcp_sidecar(
        control_plane, demo_policy, admin_user, reviewer_user, upstream_db, tmp_path, "sc-mcp"
    )
    try:
        # The write is held: execute answers at once with the request, nothing ran.
        started = time.monotonic()
        held, foreign = _calls(
            url,
            token,
            [("execute", {"sql": UPDATE}), ("approval_status", {"id": str(uuid.uuid4())})],
        )
        assert time.monotonic() - started < 10, "execute waited for the reviewer"
        assert not held.is_error, held.content
        assert held.structured_content["status"] == "held"
        request = held.structured_content["approval_request"]
        assert request["state"] == "pending"
        pending = ApprovalRequest.objects.get(pk=request["id"])
        assert pending.identity_id == agent.pk and "Grace" not in pending.statement
        assert request["url"] == f"{control_plane.url}/approvals/{pending.pk}/"
        # Another request id is none of this agent's business.
        assert foreign.structured_content["error"]["code"] == "unknown_request"
        with psycopg.connect(upstream_db) as conn:
            assert conn.execute("SELECT full_name FROM customers WHERE id = 2").fetchone() != (
                "Grace H.",
            )

        # The reviewer approves in the browser.
        hasher = PBKDF2PasswordHasher()
        reviewer_user.password = hasher.encode(persona_password("reviewer"), hasher.salt())
        reviewer_user.save(update_fields=["password"])
        page = reviewer_page
        page.goto("/accounts/login/")
        page.get_by_label("Username or email").fill(reviewer_user.username)
        page.get_by_label("Password").fill(persona_password("reviewer"))
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda u: "/accounts/" not in u)
        page.goto(request["url"])
        card = page.locator(f"#request-{pending.pk}")
        expect(card).to_contain_text("agent-reports")
        card.get_by_role("button", name="Approve agent-reports's request").click()
        expect(card).to_have_attribute("data-state", "approved")

        # The agent sees it approved, runs the same statement again, and it runs.
        status, done, again = _calls(
            url,
            token,
            [
                ("approval_status", {"id": request["id"], "wait_seconds": 10}),
                ("execute", {"sql": UPDATE}),
                ("execute", {"sql": UPDATE}),
            ],
        )
        assert status.structured_content["state"] == "approved"
        assert done.structured_content == {"status": "done", "rows_affected": 1}
        with psycopg.connect(upstream_db) as conn:
            row = conn.execute("SELECT full_name FROM customers WHERE id = 2").fetchone()
        assert row == ("Grace H.",)
        # The grant's one use is spent: the same write again needs a new review.
        assert again.structured_content["status"] == "held"
        assert again.structured_content["approval_request"]["id"] != request["id"]

        # The trail, shipped to the control plane: the tool calls beside the statements.
        def shipped() -> list[Any]:
            return list(
                AuditEvent.objects.filter(type="mcp.call", identity_name=agent.name).order_by(
                    "occurred_at"
                )
            )

        expected = [
            ("execute", "held"),
            ("approval_status", "error"),  # the other request id
            ("approval_status", "approved"),
            ("execute", "approved"),
            ("execute", "held"),
        ]
        deadline = time.monotonic() + 20
        while len(shipped()) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        calls = shipped()
        assert [(e.extra["tool"], e.outcome) for e in calls] == expected
        assert all(e.identity_owner == demo_policy.owner.name for e in calls)
        assert all(e.application_name == "mcp:reports-agent" for e in calls)
        ran = AuditEvent.objects.filter(
            type="statement", application_name="mcp:reports-agent", outcome="approved"
        )
        assert ran.exists()
    finally:
        proc.stop()


def test_a_hold_the_database_forged_does_not_show_another_identitys_request(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    """Attack (a review's finding): the MCP server took any WR001 error whose DETAIL
    names an approval request for a hold of the caller's, and then answered
    approval_status about it. The database answers WR001 with any DETAIL too: a view
    over a function that raises it put another identity's request on the agent's
    list, and approval_status told the agent its state, its reviewer and the reason.
    Now the control plane's answer names whose request it is, and only the caller's
    own is told."""
    from approvals import services as approvals
    from tests.approvals.conftest import open_payload

    proc, url, token = _mcp_sidecar(
        control_plane, demo_policy, admin_user, reviewer_user, upstream_db, tmp_path, "sc-forge"
    )
    try:
        victim, _, _ = approvals.approval_request_open(
            datasource=demo_policy.datasource, identity=demo_policy.service, **open_payload()
        )
        approvals.approval_decide(
            request_id=victim.id, user=reviewer_user, approve=False, reason="payroll is frozen"
        )
        with psycopg.connect(upstream_db, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION public.forge() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'held' USING ERRCODE = 'WR001', DETAIL = "
                f"'approval_request={victim.id} state=pending url=x'; END $$"
            )
            conn.execute("CREATE VIEW public.forged AS SELECT public.forge() AS x")
            conn.execute("GRANT SELECT ON public.forged TO PUBLIC")
        forged, status = _calls(
            url,
            token,
            [
                ("query", {"sql": "SELECT x FROM forged"}),
                ("approval_status", {"id": str(victim.id)}),
            ],
        )
        assert str(victim.id) in json.dumps(forged.structured_content)  # the forgery arrived
        assert status.is_error, status.structured_content
        assert status.structured_content["error"]["code"] == "unknown_request"
        assert "payroll" not in json.dumps(status.structured_content)
    finally:
        proc.stop()
