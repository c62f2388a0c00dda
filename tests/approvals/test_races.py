"""Races, with real threads on their own database connections: two reviewers at once yield
one decision; a grant's last use is consumed once; two sidecars share one request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from approvals import services
from approvals.models import ApprovalDecision, ApprovalRequest, Grant
from tests.approvals.conftest import open_payload

pytestmark = pytest.mark.django_db(transaction=True)
ROUNDS = 5


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at the same moment, each in a thread with its own connection."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = call()
        except Exception as exc:  # the outcome under test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_two_reviewers_at_once_yield_one_decision(review_setup, open_request):
    for n in range(ROUNDS):
        request = open_request(fingerprint=f"{n:02x}" * 16)
        results = race(
            lambda r=request: services.approval_decide(
                request_id=r.pk, user=review_setup.reviewer, approve=True
            ),
            lambda r=request: services.approval_decide(
                request_id=r.pk, user=review_setup.reviewer2, approve=False, reason="no"
            ),
        )
        winners = [r for r in results if isinstance(r, ApprovalRequest)]
        losers = [r for r in results if isinstance(r, ValidationError)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert ApprovalDecision.objects.filter(request=request).count() == 1
        final = ApprovalRequest.objects.get(pk=request.pk)
        assert final.state == winners[0].state
        assert Grant.objects.filter(request=request).count() == (final.state == "approved")


def test_two_approvals_of_a_critical_request_at_once_both_count(review_setup, open_request):
    for n in range(ROUNDS):
        request = open_request(fingerprint=f"{n:02x}" * 16, risk=99)
        results = race(
            lambda r=request: services.approval_decide(
                request_id=r.pk, user=review_setup.reviewer, approve=True
            ),
            lambda r=request: services.approval_decide(
                request_id=r.pk, user=review_setup.reviewer2, approve=True
            ),
        )
        assert all(isinstance(r, ApprovalRequest) for r in results), results
        assert ApprovalRequest.objects.get(pk=request.pk).state == "approved"
        assert Grant.objects.filter(request=request).count() == 1


def test_last_use_of_a_grant_is_consumed_once(review_setup, open_request):
    def open_same(fp: str) -> Any:
        return services.approval_request_open(
            datasource=review_setup.datasource,
            identity=review_setup.requester.identity,
            **open_payload(fingerprint=fp),
        )

    for n in range(ROUNDS):
        fp = f"{n:02x}" * 16
        request = open_request(fingerprint=fp)
        services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
        results = race(*(lambda fp=fp: open_same(fp) for _ in range(3)))
        assert not any(isinstance(r, Exception) for r in results), results
        granted = [r for r in results if r[1] is not None]
        assert len(granted) == 1
        assert Grant.objects.get(request=request).uses_left == 0
        # The others share one new pending request.
        pending = {r[0].pk for r in results if r[1] is None}
        assert len(pending) == 1
        assert ApprovalRequest.objects.filter(state="pending", fingerprint=fp).count() == 1


def test_concurrent_opens_share_one_request(review_setup):
    def open_new(fp: str) -> Any:
        return services.approval_request_open(
            datasource=review_setup.datasource,
            identity=review_setup.requester.identity,
            **open_payload(fingerprint=fp),
        )

    for n in range(ROUNDS):
        fp = f"{n + 100:03x}" * 10
        results = race(*(lambda fp=fp: open_new(fp) for _ in range(4)))
        assert not any(isinstance(r, Exception) for r in results), results
        assert len({r[0].pk for r in results}) == 1
        assert sum(1 for r in results if r[2]) == 1  # exactly one "created"


class SlowHook(BaseHTTPRequestHandler):
    """A webhook receiver that takes its time, so concurrent deliveries overlap."""

    posts: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        time.sleep(0.3)
        type(self).posts.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_two_copies_of_a_notice_at_once_send_it_once(
    review_setup, open_request, settings, admin_user
):
    from django.core import mail

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.WARDEN_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # the receiver is local
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        services.review_settings_set(
            actor=admin_user,
            datasource=review_setup.datasource,
            data={"webhook_url": f"http://127.0.0.1:{server.server_address[1]}/hook"},
        )
        for n in range(3):
            request = open_request(fingerprint=f"{n:02x}" * 16)
            mail.outbox = []
            SlowHook.posts = []
            results = race(
                *(
                    lambda r=request: services.approval_notify(request_id=r.pk, kind="created")
                    for _ in range(3)
                )
            )
            assert all(isinstance(r, int) for r in results) and sum(results) == 3, results
            assert len(mail.outbox) == 2 and len(SlowHook.posts) == 1
    finally:
        server.shutdown()


def test_revoking_while_a_sidecar_uses_the_grant_lets_exactly_one_win(review_setup, open_request):
    """The grant's last use and its revocation at once: it is either used (and the
    revocation refused) or revoked (and the statement held again), never both."""
    for n in range(ROUNDS):
        fingerprint = f"{n:02x}" * 16
        request = open_request(fingerprint=fingerprint, values_digest="e" * 64)
        services.approval_decide(request_id=request.pk, user=review_setup.reviewer, approve=True)
        use, revoke = race(
            lambda fp=fingerprint: services.approval_request_open(
                datasource=review_setup.datasource,
                identity=review_setup.requester.identity,
                **open_payload(fingerprint=fp, values_digest="e" * 64),
            ),
            lambda r=request: services.grant_revoke(request_id=r.pk, user=review_setup.reviewer),
        )
        grant = Grant.objects.get(request=request)
        if isinstance(revoke, Grant):
            # Revoked first: the run found no grant and opened a new request.
            assert grant.state == "revoked" and grant.uses_left == 1
            assert use[1] is None and use[2] is True, use
        else:
            assert isinstance(revoke, ValidationError), revoke
            assert grant.state == "used" and use[1] is not None, use
