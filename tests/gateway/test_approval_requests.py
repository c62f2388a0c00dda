"""The sidecar-facing approvals API through Django (the ASGI long-poll has its own test
under tests/integration): token binding, strict bodies, grants, dedupe, states."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from django.db import connection

from approvals import services
from approvals.models import ApprovalRequest, Grant
from governance import services as gov
from governance.models import Environment
from tests.approvals.conftest import open_payload

pytestmark = pytest.mark.django_db

OPEN = "/api/v1/sidecar/approvals"


@pytest.fixture
def tokens(review_setup: Any, admin_user: Any) -> dict[str, str]:
    _, token = gov.sidecar_register(actor=admin_user, datasource=review_setup.datasource, name="sc")
    other_ds = gov.datasource_create(
        actor=admin_user,
        name="other-ds",
        environment=Environment.objects.get(name="staging"),
        connect_teams=[review_setup.team_a],
    )
    _, other = gov.sidecar_register(actor=admin_user, datasource=other_ds, name="sc")
    return {"mine": token, "other": other}


def post(client: Any, token: str | None, body: Any, **extra: Any) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(OPEN, data=data, content_type="application/json", **headers, **extra)


def get(client: Any, token: str | None, request_id: Any, wait: int | None = None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    query = f"?wait={wait}" if wait is not None else ""
    return client.get(f"{OPEN}/{request_id}{query}", **headers)


def body(**overrides: Any) -> dict[str, Any]:
    return {"identity": "requester", **open_payload(**overrides)}


def test_open_creates_then_dedupes_then_consumes_the_grant(
    client, tokens, review_setup, django_capture_on_commit_callbacks
):
    first = post(client, tokens["mine"], body())
    assert first.status_code == 201, first.content
    data = first.json()
    assert data["state"] == "pending"
    assert data["url"] == f"http://testserver/approvals/{data['id']}/"
    again = post(client, tokens["mine"], body())
    assert again.status_code == 200 and again.json()["id"] == data["id"]
    assert ApprovalRequest.objects.count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(request_id=data["id"], user=review_setup.reviewer, approve=True)
    state = get(client, tokens["mine"], data["id"]).json()
    assert state["state"] == "approved" and state["reason"] == ""
    consumed = post(client, tokens["mine"], body())
    assert consumed.status_code == 200
    grant = consumed.json()["grant"]
    assert consumed.json()["state"] == "approved" and grant["uses_left"] == 0
    assert Grant.objects.get(pk=grant["id"]).state == "used"
    # Used up: the same statement now needs a new request.
    assert post(client, tokens["mine"], body()).status_code == 201


def test_public_url_setting_names_the_link(client, tokens, settings):
    settings.WARDEN_PUBLIC_URL = "https://warden.example.com"
    data = post(client, tokens["mine"], body()).json()
    assert data["url"] == f"https://warden.example.com/approvals/{data['id']}/"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (body(fingerprint="not hex"), "fingerprint"),
        (body(risk="high"), "risk"),
        (body(risk=True), "risk"),
        (body(reasons=[{"rule": "x"}]), "reasons"),
        (body(tables=[1]), "tables"),
        (body(statement=""), "statement"),
        (body(statement="SELECT '\x00'"), "statement"),
        (body(application_name="x" * 200), "application_name"),
    ],
)
def test_bad_payloads_are_400_and_store_nothing(client, tokens, payload, field):
    response = post(client, tokens["mine"], payload)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert ApprovalRequest.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    ["not json", "[]", json.dumps({"identity": "requester"}), json.dumps({**body(), "extra": 1})],
)
def test_malformed_bodies_are_400(client, tokens, raw):
    response = post(client, tokens["mine"], raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400
    assert ApprovalRequest.objects.count() == 0


def test_unknown_or_unconnectable_identity_is_400(client, tokens, review_setup):
    assert post(client, tokens["mine"], body(identity="nobody")).status_code == 400
    # reviewer2 exists but is not in a team that may connect to this datasource.
    assert post(client, tokens["mine"], body(identity="reviewer2")).status_code == 400
    assert ApprovalRequest.objects.count() == 0


def test_agent_identity_may_open(client, tokens):
    response = post(client, tokens["mine"], body(identity="agent-reports"))
    assert response.status_code == 201


def test_no_token_401_and_wrong_method_405(client, tokens):
    assert post(client, None, body()).status_code == 401
    assert post(client, "wds_bogus", body()).status_code == 401
    assert client.get(OPEN, HTTP_AUTHORIZATION=f"Bearer {tokens['mine']}").status_code == 405
    assert get(client, None, "x").status_code == 401


def test_oversized_body_is_413(client, tokens):
    huge = json.dumps(body(statement="x" * 300_000))
    assert post(client, tokens["mine"], huge).status_code == 413


def test_another_datasources_token_sees_404(client, tokens):
    data = post(client, tokens["mine"], body()).json()
    assert get(client, tokens["other"], data["id"]).status_code == 404
    assert get(client, tokens["mine"], data["id"]).status_code == 200
    assert get(client, tokens["mine"], "not-a-uuid").status_code == 404
    assert get(client, tokens["mine"], "00000000-0000-0000-0000-000000000000").status_code == 404
    # The other datasource's sidecar cannot open requests for identities not on it either.
    assert post(client, tokens["other"], body(identity="reviewer")).status_code == 400


def test_denied_state_names_the_reason_and_reviewer(
    client, tokens, review_setup, django_capture_on_commit_callbacks
):
    data = post(client, tokens["mine"], body()).json()
    assert get(client, tokens["mine"], data["id"]).json()["state"] == "pending"
    with django_capture_on_commit_callbacks(execute=True):
        services.approval_decide(
            request_id=data["id"], user=review_setup.reviewer, approve=False, reason="No."
        )
    state = get(client, tokens["mine"], data["id"]).json()
    assert (state["state"], state["reason"], state["denied_by"]) == ("denied", "No.", "reviewer")
    assert state["decided_at"]
    # Whose request it is: a sidecar tells an identity (an MCP agent) only its own.
    assert state["identity"] == "requester"
    # A state cached before it named the identity is read afresh, not served as is.
    from approvals.services import state_key
    from governance.bundles import redis_client

    redis_client().set(state_key(data["id"]), json.dumps({"id": data["id"], "state": "denied"}))
    assert get(client, tokens["mine"], data["id"]).json()["identity"] == "requester"


def test_bad_wait_is_400(client, tokens):
    data = post(client, tokens["mine"], body()).json()
    assert get(client, tokens["mine"], data["id"], wait=-1).status_code == 400
    response = client.get(
        f"{OPEN}/{data['id']}?wait=abc", HTTP_AUTHORIZATION=f"Bearer {tokens['mine']}"
    )
    assert response.status_code == 400


def test_wait_times_out_pending(client, tokens):
    data = post(client, tokens["mine"], body()).json()
    started = time.monotonic()
    response = get(client, tokens["mine"], data["id"], wait=1)
    assert response.json()["state"] == "pending"
    assert 0.9 <= time.monotonic() - started < 10  # loose: a loaded 2-core sandbox


@pytest.mark.django_db(transaction=True)
def test_wait_under_wsgi_wakes_on_the_decision(tokens, review_setup):
    """The Django view (WSGI, dev server) long-polls too: woken by the same publication."""
    from django.test import Client

    data = post(Client(), tokens["mine"], body()).json()
    answers: list[tuple[float, Any]] = []

    def wait() -> None:
        try:
            answers.append((time.monotonic(), get(Client(), tokens["mine"], data["id"], wait=20)))
        finally:
            connection.close()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    assert not answers
    services.approval_decide(request_id=data["id"], user=review_setup.reviewer, approve=True)
    decided = time.monotonic()
    waiter.join(timeout=10)
    received, response = answers[0]
    assert response.json()["state"] == "approved"
    assert received - decided < 1.5
