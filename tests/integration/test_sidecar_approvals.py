"""A held statement through the real sidecar process and the real approvals API.

uvicorn serves the control plane (the approval long-poll on the ASGI app), a
Celery worker compiles the bundle, the sidecar takes its policy from the
control plane and asks it about every statement the engine sends to review.
The agent identity's writes need a reviewer (``review-agent-writes`` in
``demo_policy``); the reviewer decides through the same service the inbox uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from approvals import services as approvals
from approvals.models import ApprovalRequest
from governance import services
from governance.bundles import bundle_current
from tests.integration.conftest import SidecarProcess, sidecar_config, upstream_dbname
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _config(control_plane: Server, sidecar_token: str, upstream_db: str) -> dict[str, Any]:
    # Audit stays in the local spool (nothing listens here), so the test can
    # read each statement event the sidecar wrote.
    return sidecar_config(
        control_plane,
        sidecar_token,
        upstream_db,
        heartbeat_interval=5,
        audit_url="http://127.0.0.1:9/api/v1/sidecar/audit",
        # The policy under test is demo_policy's: a start scan's findings would be
        # enforced provisionally (production) halfway through.
        scan_enabled=False,
    )


def _agent_sidecar(
    control_plane: Server,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    state_dir: Path,
    name: str,
    **overrides: Any,
) -> tuple[SidecarProcess, str]:
    """A sidecar registered as ``name`` in front of the upstream (its configuration
    with ``overrides``), and a token of the agent identity whose writes need a
    reviewer."""
    _, raw = services.token_issue(actor=admin_user, identity=demo_policy.agent, name="t")
    _, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name=name
    )
    proc = SidecarProcess(
        config={**_config(control_plane, sidecar_token, upstream_db), **overrides},
        state_dir=state_dir,
    )
    return proc, raw


@pytest.fixture
def reviewer(demo_policy: Any, admin_user: Any, reviewer_user: Any) -> Any:
    """The reviewer, on team B: the team that reviews the demo datasource."""
    services.identity_update(
        actor=admin_user, identity=reviewer_user.identity, data={"teams": [demo_policy.team_b]}
    )
    return reviewer_user


def _connect(port: int, dbname: str, token: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname=dbname,
        user="agent-reports",
        password=token,
        autocommit=True,
    )


def _pending(agent: Any, timeout: float = 15.0) -> ApprovalRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ApprovalRequest.objects.filter(identity=agent, state="pending").first()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError("no pending approval request appeared")


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            result["value"] = fn()
        except Exception as exc:
            result["error"] = exc
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _spool_events(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((state_dir / "spool").glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def test_held_statement_runs_once_approved_is_refused_when_denied_and_reuses_a_grant(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    proc, raw = _agent_sidecar(
        control_plane, demo_policy, admin_user, upstream_db, state_dir, "sc-approvals"
    )
    dbname = upstream_dbname()
    try:
        with _connect(proc.port, dbname, raw) as conn:
            # 1. Held, approved while the client waits: the statement then runs.
            thread, result = _in_thread(
                lambda: conn.execute("UPDATE customers SET full_name = 'Ada L.' WHERE id = 1")
            )
            request = _pending(demo_policy.agent)
            assert request.kind == "update"
            assert "Ada" not in request.statement and "'" not in request.statement
            assert request.tables == ["public.customers"]
            time.sleep(0.3)
            assert thread.is_alive(), "the statement did not wait for the decision"
            approvals.approval_decide(request_id=request.id, user=reviewer, approve=True)
            thread.join(20)
            assert "error" not in result, result
            assert result["seconds"] < 15
            assert result["value"].rowcount == 1
            # Same connection, still usable; the update did reach the database.
            row = conn.execute("SELECT full_name FROM customers WHERE id = 1").fetchone()
            assert row == ("Ada L.",)
            fingerprint = request.fingerprint
            ids = [str(request.id)]

            # 1b. A named prepared statement: each run (Bind) needs its own approval,
            # not only its Parse: a grant's uses count every run.
            update = "UPDATE customers SET full_name = %s WHERE id = %s"
            for name in ("Prepared 1", "Prepared 2"):
                thread, result = _in_thread(
                    lambda name=name: conn.execute(update, (name, 1), prepare=True)
                )
                request = _pending(demo_policy.agent)
                approvals.approval_decide(request_id=request.id, user=reviewer, approve=True)
                thread.join(20)
                assert "error" not in result, result
                row = conn.execute("SELECT full_name FROM customers WHERE id = 1").fetchone()
                assert row == (name,)
                ids.append(str(request.id))

            # 2. Held, denied: 42501 naming the request, the reviewer and the reason.
            thread, result = _in_thread(lambda: conn.execute("DELETE FROM customers WHERE id = 2"))
            request = _pending(demo_policy.agent)
            approvals.approval_decide(
                request_id=request.id,
                user=reviewer,
                approve=False,
                reason="not during the audit",
            )
            thread.join(20)
            error = result.get("error")
            assert isinstance(error, psycopg.errors.InsufficientPrivilege), result
            assert f"/approvals/{request.id}/" in str(error)
            assert "denied" in str(error) and "not during the audit" in str(error)
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (2,)
            ids.append(str(request.id))

            # 3. An approval given while nobody waited: the client cancels its wait,
            # the reviewer approves later, and the re-run of the same statement with
            # the same values goes through at once on the grant.
            thread, result = _in_thread(
                lambda: conn.execute("UPDATE customers SET full_name = 'Alan T.' WHERE id = 2")
            )
            request = _pending(demo_policy.agent)
            assert request.fingerprint == fingerprint  # literals do not change it
            conn.cancel_safe()
            thread.join(10)
            assert isinstance(result.get("error"), psycopg.errors.QueryCanceled), result
            approvals.approval_decide(request_id=request.id, user=reviewer, approve=True)
            ids.append(str(request.id))
        started = time.monotonic()
        again = subprocess.run(
            [
                "psql",
                f"host=127.0.0.1 port={proc.port} dbname={dbname} user=agent-reports",
                "-XAt",
                "-c",
                "UPDATE customers SET full_name = 'Alan T.' WHERE id = 2",
            ],
            env={**os.environ, "PGPASSWORD": raw},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.returncode == 0, again.stderr
        assert time.monotonic() - started < 5  # no wait: the grant was there
        with _connect(proc.port, dbname, raw) as conn:
            row = conn.execute("SELECT full_name FROM customers WHERE id = 2").fetchone()
            assert row == ("Alan T.",)
            # The grant had one use: the next run is held again (and cancelled here).
            thread, result = _in_thread(
                lambda: conn.execute("UPDATE customers SET full_name = 'y' WHERE id = 2")
            )
            _pending(demo_policy.agent)
            conn.cancel_safe()
            thread.join(10)
            assert isinstance(result.get("error"), psycopg.errors.QueryCanceled), result

        # The audit trail: outcomes held/approved/denied with the request ids, no literals.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events = [e for e in _spool_events(state_dir) if e.get("action") == "review"]
            if len(events) >= 7:
                break
            time.sleep(0.2)
        outcomes = [e["outcome"] for e in events]
        expected = ["approved", "approved", "approved", "denied", "held", "approved", "held"]
        assert outcomes == expected, outcomes
        # A cancel can land before the control plane's answer, so a cancelled
        # hold may not know its request id; approved and denied ones always do.
        decided = [e["approval_request"] for e in events if e["outcome"] != "held"]
        assert decided == ids, (decided, ids)
        spool = "".join(p.read_text() for p in (state_dir / "spool").glob("*.jsonl"))
        assert "Ada L." not in spool and "Alan T." not in spool
    finally:
        proc.stop()


def test_a_held_text_of_several_statements_is_approved_and_runs(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    """The sidecar sends one kind per statement; the control plane used to answer 400
    to its "update,delete", so such a text could never be approved."""
    proc, raw = _agent_sidecar(
        control_plane,
        demo_policy,
        admin_user,
        upstream_db,
        tmp_path / "state",
        "sc-approvals-multi",
    )
    try:
        with _connect(proc.port, upstream_dbname(), raw) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            text = (
                "UPDATE customers SET full_name = 'Grace H.' WHERE id = 1; "
                "UPDATE customers SET full_name = 'Edsger D.' WHERE id = 2"
            )
            thread, result = _in_thread(lambda: conn.execute(text))
            request = _pending(demo_policy.agent)
            assert request.kind == "update, update"
            # The client is told at once, while it waits, where the request is.
            deadline = time.monotonic() + 10
            while not notices and time.monotonic() < deadline:
                time.sleep(0.05)
            assert thread.is_alive() and len(notices) == 1, notices
            assert notices[0].startswith("Warden is holding this statement for approval: ")
            assert f"/approvals/{request.id}/" in notices[0] and "waiting up to" in notices[0]
            approvals.approval_decide(request_id=request.id, user=reviewer, approve=True)
            thread.join(20)
            assert "error" not in result, result
            rows = conn.execute("SELECT full_name FROM customers ORDER BY id").fetchall()
            assert rows[:2] == [("Grace H.",), ("Edsger D.",)]
    finally:
        proc.stop()


def test_control_plane_down_refuses_held_statements(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    proc, raw = _agent_sidecar(
        control_plane, demo_policy, admin_user, upstream_db, tmp_path / "state", "sc-approvals-down"
    )
    dbname = upstream_dbname()
    try:
        control_plane.stop()  # the sidecar keeps enforcing its verified bundle
        with _connect(proc.port, dbname, raw) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("DELETE FROM customers WHERE id = 1")
            assert info.value.sqlstate == "WR001"
            assert "approval could not be requested" in str(info.value)
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (2,)
    finally:
        proc.stop()
        control_plane.start()


def test_undecided_request_times_out_and_a_withdrawn_one_says_so(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    security_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    # The datasource's own hold time, shorter than the default (20 s), reaches the
    # sidecar in its bundle, recompiled by the worker once the settings change.
    hold = 6
    approvals.review_settings_set(
        actor=admin_user, datasource=demo_policy.datasource, data={"hold_seconds": hold}
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = bundle_current(datasource_id=demo_policy.datasource.pk)
        if current and json.loads(current[1])["bundle"]["approvals"]["hold_seconds"] == hold:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the bundle never carried the new hold time")
    proc, raw = _agent_sidecar(
        control_plane, demo_policy, admin_user, upstream_db, tmp_path / "state", "sc-approvals-wait"
    )
    dbname = upstream_dbname()
    try:
        with _connect(proc.port, dbname, raw) as waits, _connect(proc.port, dbname, raw) as other:
            # Nobody decides: after the bundle's hold time, WR001 naming the pending request.
            slow, slow_result = _in_thread(
                lambda: waits.execute("DELETE FROM customers WHERE id = 1")
            )
            pending = _pending(demo_policy.agent)
            # Meanwhile another session's request is withdrawn by the agent's owner.
            quick, quick_result = _in_thread(
                lambda: other.execute("UPDATE customers SET full_name = 'z' WHERE id = 2")
            )
            deadline = time.monotonic() + 15
            withdrawn = None
            while withdrawn is None and time.monotonic() < deadline:
                withdrawn = (
                    ApprovalRequest.objects.filter(identity=demo_policy.agent, state="pending")
                    .exclude(pk=pending.pk)
                    .first()
                )
                time.sleep(0.05)
            assert withdrawn is not None
            approvals.approval_cancel(request_id=withdrawn.id, user=security_user)
            quick.join(10)
            error = quick_result.get("error")
            assert isinstance(error, psycopg.Error) and error.sqlstate == "WR001", quick_result
            assert f"/approvals/{withdrawn.id}/" in str(error) and "cancelled" in str(error)
            assert slow.is_alive(), "the undecided statement stopped waiting early"
            slow.join(hold + 15)
            error = slow_result.get("error")
            assert isinstance(error, psycopg.Error) and error.sqlstate == "WR001", slow_result
            assert f"/approvals/{pending.id}/" in str(error) and "is pending" in str(error)
            # The hint fits the refusal: where the request is, not "ask the data owner".
            hint = error.diag.message_hint or ""
            assert hint.startswith("Follow the approval request at ") and str(pending.id) in hint
            assert hold - 1 <= slow_result["seconds"] < hold + 10
            assert waits.execute("SELECT count(*) FROM customers").fetchone() == (2,)
    finally:
        proc.stop()


def _orders(upstream_db: str, rows: int) -> None:
    """An ``orders`` table as DEMO_SCHEMA has it, ids 1..rows, analysed for the planner."""
    with psycopg.connect(upstream_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint,"
            " card_number text, amount numeric(12,2))"
        )
        conn.execute(
            "INSERT INTO orders SELECT g, 1, '4111111111111111', 10 FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("ANALYZE orders")


def test_a_grant_runs_only_the_values_approved_and_a_denial_is_remembered(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    """The story of issue 17: a reviewer approved an UPDATE of the orders above 499;
    the requester then ran the same shape for every order on that grant and changed
    993 rows. Now the grant is bound to the values: other values need a new approval,
    whose request shows them and the planner's estimate of the rows they touch."""
    _orders(upstream_db, 993)
    proc, raw = _agent_sidecar(
        control_plane, demo_policy, admin_user, upstream_db, tmp_path / "state", "sc-values"
    )
    dbname = upstream_dbname()
    try:
        with _connect(proc.port, dbname, raw) as conn:
            approved_text = "UPDATE orders SET amount = 5 WHERE id > 499"
            thread, result = _in_thread(lambda: conn.execute(approved_text))
            first = _pending(demo_policy.agent)
            assert first.statement == "UPDATE orders SET amount = $1 WHERE id > $2"
            assert first.values == [
                {"statement": 0, "n": 1, "value": "5"},
                {"statement": 0, "n": 2, "value": "499"},
            ]
            assert first.binding == "statement" and len(first.values_digest) == 64
            estimated = first.estimate["rows"]["orders"]
            assert 400 <= estimated <= 600, first.estimate  # 494 rows: the planner's guess
            assert first.estimate["top"] == "ModifyTable" and first.estimate["error"] == ""
            approvals.approval_decide(request_id=first.id, user=reviewer, approve=True)
            thread.join(20)
            assert "error" not in result, result
            assert result["value"].rowcount == 494

            # The same statement for every order: the grant does not cover it.
            thread, result = _in_thread(
                lambda: conn.execute("UPDATE orders SET amount = 7 WHERE id > 0")
            )
            second = _pending(demo_policy.agent)
            assert second.pk != first.pk and second.fingerprint == first.fingerprint
            assert second.values_digest != first.values_digest
            assert [v["value"] for v in second.values] == ["7", "0"]
            # Every order (the planner may count the dead row versions the first run left).
            assert second.estimate["rows"]["orders"] >= 900, second.estimate
            assert thread.is_alive(), "the statement ran on a grant for other values"
            approvals.approval_decide(
                request_id=second.id,
                user=reviewer,
                approve=False,
                reason="only the orders above 499",
            )
            thread.join(20)
            assert isinstance(result.get("error"), psycopg.errors.InsufficientPrivilege), result
            counts = conn.execute(
                "SELECT amount, count(*) FROM orders GROUP BY amount ORDER BY amount"
            ).fetchall()
            assert [(int(a), n) for a, n in counts] == [(5, 494), (10, 499)]

            # Run again within the hour: the denial at once, no new request.
            started = time.monotonic()
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
                conn.execute("UPDATE orders SET amount = 7 WHERE id > 0")
            assert time.monotonic() - started < 3
            assert "only the orders above 499" in str(denied.value)
            assert f"/approvals/{second.id}/" in str(denied.value)
            assert not ApprovalRequest.objects.filter(state="pending").exists()

            # Parameters bind too: the extended protocol's values are the Bind's.
            update = "UPDATE orders SET amount = %s WHERE id > %s"
            thread, result = _in_thread(lambda: conn.execute(update, (8, 990)))
            third = _pending(demo_policy.agent)
            assert [v["value"] for v in third.values] == ["8", "990"], third.values
            assert third.estimate["rows"]["orders"] < 50, third.estimate
            approvals.approval_decide(request_id=third.id, user=reviewer, approve=True)
            thread.join(20)
            assert "error" not in result and result["value"].rowcount == 3, result
    finally:
        proc.stop()


def _serving_new_rules(sidecar: Any, datasource: Any, before: str, timeout: float = 30) -> str:
    """The revision the control plane published after ``before``, once the sidecar's
    heartbeat says it runs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = bundle_current(datasource_id=datasource.id)
        if current is not None and current[0] != before:
            sidecar.refresh_from_db()
            if sidecar.running_revision == current[0]:
                return current[0]
        time.sleep(0.1)
    raise AssertionError("the sidecar did not take the new bundle")


def test_an_approval_given_after_the_rules_changed_is_judged_again(
    control_plane: Server,
    celery_worker: Any,
    demo_policy: Any,
    admin_user: Any,
    reviewer: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    """Attack: an agent's UPDATE waits for a reviewer; meanwhile the security team
    ships an emergency block of agent updates; the reviewer, who approves from the
    request alone, approves. The statement must not run on the verdict of rules that
    are no longer in force: it is judged again under the bundle the sidecar now runs.
    A change that leaves the statement reviewed keeps the approval (the reviewer
    approved this statement), and the new rules' SQL runs."""
    datasource = demo_policy.datasource
    proc, raw = _agent_sidecar(
        control_plane, demo_policy, admin_user, upstream_db, tmp_path / "state",
        "sc-approvals-change", heartbeat_interval=1,
    )  # fmt: skip
    sidecar = datasource.sidecars.get(name="sc-approvals-change")
    revision = _serving_new_rules(sidecar, datasource, "")
    dbname = upstream_dbname()

    def held_then(change: Any, run: Any) -> dict[str, Any]:
        """Run ``run`` on a connection, change the rules while it is held, wait until
        the sidecar runs the new ones, approve; what ``run`` returned or raised, and
        the request (``request``)."""
        nonlocal revision
        thread, result = _in_thread(run)
        request = _pending(demo_policy.agent)
        change()
        revision = _serving_new_rules(sidecar, datasource, revision)
        assert thread.is_alive(), "the statement did not wait for the decision"
        approvals.approval_decide(request_id=request.id, user=reviewer, approve=True)
        thread.join(20)
        assert not thread.is_alive()
        return {**result, "request": str(request.id)}

    def names() -> list[tuple[str]]:
        with _connect(proc.port, dbname, raw) as conn:
            return conn.execute("SELECT full_name FROM customers ORDER BY id").fetchall()

    try:
        with _connect(proc.port, dbname, raw) as conn:
            # 1. A change that leaves the UPDATE reviewed: the approval stands.
            result = held_then(
                lambda: services.guardrail_create(
                    actor=admin_user,
                    name="review-staging-ddl",
                    action="review",
                    conditions={"environments": ["staging"], "statement_kinds": ["ddl"]},
                    message="DDL in staging is reviewed.",
                ),
                lambda: conn.execute("UPDATE customers SET full_name = 'Kept K.' WHERE id = 1"),
            )
            assert "error" not in result, result
            assert names()[0] == ("Kept K.",)

            # 1b. A change that asks for review on other grounds than the reviewer was
            # shown (another rule, first now): the approval does not carry over.
            result = held_then(
                lambda: services.guardrail_create(
                    actor=admin_user,
                    name="review-agent-updates",
                    action="review",
                    conditions={"identity_kinds": ["agent"], "statement_kinds": ["update"]},
                    message="Agent updates are reviewed by the data owner.",
                    position=1,
                    reason="the data owner reviews agent updates",
                ),
                lambda: conn.execute("UPDATE customers SET full_name = 'Other O.' WHERE id = 1"),
            )
            error = result.get("error")
            assert isinstance(error, psycopg.Error) and error.sqlstate == "WR001", result
            assert "run it again to request one" in str(error)
            assert "review-agent-updates" in str(error)
            assert names()[0] == ("Kept K.",)

            # 2. An emergency block while the UPDATE waits: refused, nothing changed.
            freeze: dict[str, Any] = {}

            def block() -> None:
                freeze["rule"] = services.guardrail_create(
                    actor=admin_user,
                    name="freeze-agent-updates",
                    action="block",
                    conditions={"identity_kinds": ["agent"], "statement_kinds": ["update"]},
                    message="Agent updates are frozen during the incident.",
                    position=1,
                )

            result = held_then(
                block,
                lambda: conn.execute("UPDATE customers SET full_name = 'Ran R.' WHERE id = 1"),
            )
            error = result.get("error")
            assert isinstance(error, psycopg.errors.InsufficientPrivilege), result
            assert "frozen during the incident" in str(error)
            assert "rules changed while the statement waited" in str(error.diag.message_detail)
            assert names()[0] == ("Kept K.",)
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session carries on
            # The trail links the refusal to the approval it overrode.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                refused = [
                    e
                    for e in _spool_events(tmp_path / "state")
                    if e.get("approval_request") == result["request"]
                ]
                if refused:
                    break
                time.sleep(0.2)
            assert [(e["action"], e["outcome"]) for e in refused] == [("block", "blocked")]

            # 3. The same with a prepared statement (the extended protocol holds its
            # Bind): the freeze lifted, a run held, the freeze back, then approved.
            services.guardrail_set_enabled(
                actor=admin_user, guardrail=freeze["rule"], enabled=False, reason="lifted"
            )
            revision = _serving_new_rules(sidecar, datasource, revision)
            update = "UPDATE customers SET full_name = %s WHERE id = %s"
            result = held_then(
                lambda: services.guardrail_set_enabled(
                    actor=admin_user, guardrail=freeze["rule"], enabled=True, reason="again"
                ),
                lambda: conn.execute(update, ("Bound B.", 1), prepare=True),
            )
            error = result.get("error")
            assert isinstance(error, psycopg.errors.InsufficientPrivilege), result
            assert "frozen during the incident" in str(error)
            assert names()[0] == ("Kept K.",)
            # Every later run of that prepared statement is judged under the freeze.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(update, ("Bound again", 1), prepare=True)
            assert names()[0] == ("Kept K.",)
    finally:
        proc.stop()
