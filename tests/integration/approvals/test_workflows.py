"""Approvals with real processes: the ASGI long-poll under uvicorn, and the Celery
workflows (notify by email and webhook, escalate, expire, idempotent under retry) on a
real worker with the real broker. Emails land in files (the worker's filebased backend);
the webhook is a real local HTTP server."""

from __future__ import annotations

import datetime
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from approvals import services
from approvals.models import ApprovalEvent, ApprovalRequest, Grant
from config.celery import app as celery_app
from governance import services as gov
from governance.models import Environment
from tests.approvals.conftest import open_payload
from tests.stack import Server, Worker, free_port, server_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def call(url: str, *, token: str | None = None, body: Any = None, timeout: float = 70) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


# --- the long-poll on the real ASGI server ------------------------------------------------


@pytest.fixture
def sidecar_token(review_setup: Any, admin_user: Any) -> str:
    _, token = gov.sidecar_register(actor=admin_user, datasource=review_setup.datasource, name="sc")
    return token


def test_long_poll_reaches_the_sidecar_within_a_second_of_the_decision(
    control_plane: Server, review_setup: Any, sidecar_token: str, admin_user: Any
) -> None:
    base = f"{control_plane.url}/api/v1/sidecar/approvals"
    status, opened = call(
        base, token=sidecar_token, body={"identity": "requester", **open_payload()}
    )
    assert status == 201
    assert opened["url"] == f"{control_plane.url}/approvals/{opened['id']}/"
    answers: list[tuple[float, Any]] = []

    def wait() -> None:
        answers.append((0.0, call(f"{base}/{opened['id']}?wait=30", token=sidecar_token)))
        answers[-1] = (time.monotonic(), answers[-1][1])

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for thread in waiters:
        thread.start()
    time.sleep(1.0)  # the waiters are parked
    assert not answers
    services.approval_decide(request_id=opened["id"], user=review_setup.reviewer, approve=True)
    committed = time.monotonic()
    for thread in waiters:
        thread.join(timeout=10)
    assert len(answers) == 3
    for received, (code, body) in answers:
        assert code == 200 and body["state"] == "approved"
        assert received - committed < 1.0
    # The sidecar then consumes the grant by posting the statement again.
    status, consumed = call(
        base, token=sidecar_token, body={"identity": "requester", **open_payload()}
    )
    assert (status, consumed["state"], consumed["grant"]["uses_left"]) == (200, "approved", 0)


def test_long_poll_times_out_pending_and_guards_the_datasource(
    control_plane: Server, review_setup: Any, sidecar_token: str, admin_user: Any
) -> None:
    other = gov.datasource_create(
        actor=admin_user, name="other-ds", environment=Environment.objects.get(name="staging")
    )
    _, other_token = gov.sidecar_register(actor=admin_user, datasource=other, name="sc")
    base = f"{control_plane.url}/api/v1/sidecar/approvals"
    _, opened = call(base, token=sidecar_token, body={"identity": "requester", **open_payload()})
    started = time.monotonic()
    status, body = call(f"{base}/{opened['id']}?wait=1", token=sidecar_token)
    assert (status, body["state"]) == (200, "pending")
    assert 0.9 < time.monotonic() - started < 10  # loose: a loaded 2-core sandbox
    assert call(f"{base}/{opened['id']}?wait=1", token=other_token)[0] == 404
    assert call(f"{base}/{opened['id']}", token=None)[0] == 401
    assert call(f"{base}/{opened['id']}?wait=x", token=sidecar_token)[0] == 400
    assert call(f"{base}/nope?wait=1", token=sidecar_token)[0] == 404
    # A forged Host never makes it into the link database clients are shown.
    forged = urllib.request.Request(f"{base}/{opened['id']}", headers={"Host": "evil.example"})
    forged.add_header("Authorization", f"Bearer {sidecar_token}")
    with urllib.request.urlopen(forged, timeout=10) as response:
        url = json.loads(response.read())["url"]
    assert "evil.example" not in url and url.endswith(f"/approvals/{opened['id']}/")

    # A denial reaches a waiter with its reason and reviewer.
    def deny() -> None:
        try:
            services.approval_decide(
                request_id=opened["id"],
                user=review_setup.reviewer,
                approve=False,
                reason="Not now.",
            )
        finally:
            connection.close()

    timer = threading.Timer(0.5, deny)
    timer.start()
    status, body = call(f"{base}/{opened['id']}?wait=10", token=sidecar_token)
    timer.join()
    assert (body["state"], body["reason"], body["denied_by"]) == ("denied", "Not now.", "reviewer")


# --- Celery workflows on a real worker ----------------------------------------------------


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    fail_next = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length))
        cls = type(self)
        if cls.fail_next > 0:
            cls.fail_next -= 1
            cls.received.append({"failed": True, **payload})
            self.send_response(500)
        else:
            cls.received.append(payload)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(settings: Any) -> Iterator[tuple[str, type[Hook]]]:
    # Saved here (review settings) and sent by the worker (its env): both allow loopback.
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    Hook.received = []
    Hook.fail_next = 0
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", Hook
    server.shutdown()


@pytest.fixture(scope="module")
def _workflow_worker(
    django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[Worker], Path]]:
    """One worker for the module's workflow tests (starting one takes seconds), and the
    directory its emails land in; ``worker`` hands it on idle from test to test."""
    mail = tmp_path_factory.mktemp("mail")
    workers: list[Worker] = []
    yield workers, mail
    for running in workers:
        running.stop()


@pytest.fixture
def mail_dir(_workflow_worker: tuple[list[Worker], Path]) -> Path:
    """Where the worker's emails land, emptied of an earlier test's."""
    path = _workflow_worker[1]
    for message in path.iterdir():
        message.unlink()
    return path


@pytest.fixture
def worker(
    _workflow_worker: tuple[list[Worker], Path],
    mail_dir: Path,
) -> Iterator[Worker]:
    # The queue's only consumer while it runs: tests/integration's conftest stops the
    # folder's shared worker before a test that does not ask for it.
    workers = _workflow_worker[0]
    if not workers or not workers[-1].alive():
        env = {
            **server_env(),
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(mail_dir),
            "WARDEN_PUBLIC_URL": "https://warden.example.com",
            # The webhook receiver is local: loopback is refused unless allowed.
            "WARDEN_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        workers[:] = [Worker(env)]
    running = workers[-1]
    yield running
    # Nothing of this test may still run (or retry) when the next one starts.
    if not running.idle(timeout=10):
        running.stop()


def mails(mail_dir: Path) -> list[str]:
    messages = []
    for path in sorted(mail_dir.glob("*.log")):
        # The filebased backend separates messages with a line of 79 dashes.
        messages += [m for m in path.read_text().split("-" * 79) if "Subject:" in m]
    return messages


def recipients(mail_dir: Path) -> list[str]:
    return sorted(
        line.split(":", 1)[1].strip()
        for message in mails(mail_dir)
        for line in message.splitlines()
        if line.startswith("To:")
    )


def notified(request_id: Any) -> list[str]:
    return sorted(
        ApprovalEvent.objects.filter(request_id=request_id, kind="notified").values_list(
            "key", flat=True
        )
    )


def test_creation_notifies_reviewers_by_email_and_webhook_once_despite_a_retry(
    worker, webhook, mail_dir, review_setup, admin_user
):
    url, hook = webhook
    services.review_settings_set(
        actor=admin_user, datasource=review_setup.datasource, data={"webhook_url": url}
    )
    hook.fail_next = 1  # the first webhook delivery fails: the task retries with backoff
    request, _, created = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    assert created
    assert _wait_for(lambda: len(notified(request.pk)) == 3, timeout=40)
    link = f"https://warden.example.com/approvals/{request.pk}/"
    assert recipients(mail_dir) == ["reviewer2@example.com", "reviewer@example.com"]
    assert all(link in message for message in mails(mail_dir))
    assert [p.get("failed", False) for p in hook.received] == [True, False]
    assert link in hook.received[-1]["text"]
    # The same notice delivered again (a duplicate, a manual re-run) sends nothing more.
    duplicates = [
        celery_app.send_task(
            "approvals.tasks.approval_notify",
            kwargs={"request_id": str(request.pk), "kind": "created"},
        ).id
        for _ in range(2)
    ]
    assert worker.ran(duplicates, timeout=30)
    assert len(mails(mail_dir)) == 2
    assert len([p for p in hook.received if not p.get("failed")]) == 1
    assert len(notified(request.pk)) == 3


def test_escalation_notifies_the_fallback_team_and_expiry_ends_requests_and_grants(
    worker, webhook, mail_dir, review_setup, admin_user
):
    url, hook = webhook
    oncall_team = gov.team_create(actor=admin_user, name="Oncall", slug="oncall")
    gov.identity_update(
        actor=admin_user, identity=review_setup.reviewer2.identity, data={"teams": [oncall_team]}
    )
    services.review_settings_set(
        actor=admin_user,
        datasource=review_setup.datasource,
        data={
            "fallback_team": oncall_team,
            "escalate_after_seconds": 1,
            "remind_every_seconds": 1,
            "expire_after_seconds": 4,
            "webhook_url": url,
        },
    )
    request, _, _ = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(),
    )
    assert _wait_for(lambda: recipients(mail_dir) == ["reviewer@example.com"])
    time.sleep(1.1)
    celery_app.send_task("approvals.tasks.approvals_escalate")
    assert _wait_for(
        lambda: recipients(mail_dir) == ["reviewer2@example.com", "reviewer@example.com"]
    )
    assert ApprovalRequest.objects.get(pk=request.pk).escalated_at is not None
    assert _wait_for(lambda: any("escalated" in p["text"] for p in hook.received))
    # A reminder goes to everyone who may now decide: the review team and the fallback.
    celery_app.send_task("approvals.tasks.approvals_remind")
    assert _wait_for(lambda: len(mails(mail_dir)) == 4)
    assert recipients(mail_dir) == [
        "reviewer2@example.com",
        "reviewer2@example.com",
        "reviewer@example.com",
        "reviewer@example.com",
    ]
    assert sum("still waiting" in m for m in mails(mail_dir)) == 2
    # A grant from another request, past its expiry, ends with the same sweep.
    approved, _, _ = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(fingerprint="cd" * 16),
    )
    services.approval_decide(request_id=approved.pk, user=review_setup.reviewer, approve=True)
    Grant.objects.filter(request=approved).update(expires_at=timezone.now())
    time.sleep(max(0.0, 4.1 - (timezone.now() - request.created_at).total_seconds()))
    celery_app.send_task("approvals.tasks.approvals_expire")
    assert _wait_for(lambda: ApprovalRequest.objects.get(pk=request.pk).state == "expired")
    assert _wait_for(lambda: Grant.objects.get(request=approved).state == "expired")


def test_the_worker_purges_decided_values_and_never_sends_them(
    worker, webhook, mail_dir, review_setup, admin_user
):
    """A value sent for review reaches no e-mail, webhook or audit event, and the beat
    task removes it from the decided request once the retention has passed."""
    url, hook = webhook
    services.review_settings_set(
        actor=admin_user,
        datasource=review_setup.datasource,
        data={"webhook_url": url, "values_retention_seconds": 60},
    )
    canary = "'okapi-canary-7731'"
    request, _, _ = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(values_digest="f" * 64, values=[{"statement": 0, "n": 1, "value": canary}]),
    )
    pending, _, _ = services.approval_request_open(
        datasource=review_setup.datasource,
        identity=review_setup.requester.identity,
        **open_payload(values_digest="e" * 64, values=[{"statement": 0, "n": 1, "value": canary}]),
    )
    assert _wait_for(lambda: len(notified(request.pk)) == 3 and len(notified(pending.pk)) == 3)
    services.approval_decide(
        request_id=request.pk, user=review_setup.reviewer, approve=False, reason="No."
    )
    ApprovalRequest.objects.filter(pk=request.pk).update(
        decided_at=timezone.now() - datetime.timedelta(minutes=61)
    )
    celery_app.send_task("approvals.tasks.approvals_purge_values")
    assert _wait_for(lambda: ApprovalRequest.objects.get(pk=request.pk).values == [])
    assert ApprovalRequest.objects.get(pk=request.pk).values_purged_at is not None
    assert ApprovalEvent.objects.filter(request=request, kind="values_purged").count() == 1
    # The pending one keeps its value for its reviewers.
    assert ApprovalRequest.objects.get(pk=pending.pk).values[0]["value"] == canary
    assert len(mails(mail_dir)) == 4 and len(hook.received) == 2
    assert not any("okapi-canary" in m for m in mails(mail_dir))
    assert not any("okapi-canary" in json.dumps(p) for p in hook.received)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_event e WHERE e::text LIKE '%okapi-canary%'")
        assert cursor.fetchone()[0] == 0


def test_beat_schedule_names_registered_tasks():
    celery_app.loader.import_default_modules()
    registered = set(celery_app.tasks)
    for entry in celery_app.conf.beat_schedule.values():
        assert entry["task"] in registered, entry["task"]
    assert {
        "approvals.tasks.approvals_expire",
        "approvals.tasks.approvals_escalate",
        "approvals.tasks.approvals_purge_values",
    } <= {e["task"] for e in celery_app.conf.beat_schedule.values()}
