"""The gateway's own promises: each sidecar call exists once, served by ``config.asgi``;
one error shape; a wrong or revoked token, or another datasource's, is refused."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

import pytest
from django.conf import settings
from django.urls import URLPattern, URLResolver, get_resolver, resolve

from gateway import approval_requests, audit_intake, bundle, reports
from gateway.asgi import served_directly
from gateway.auth import (
    PrincipalCache,
    SidecarPrincipal,
    _lookup_db,
    bearer_digest,
    sidecar_authenticate,
)
from gateway.http import error_body
from governance import services as gov
from governance.models import Environment
from governance.sidecar_auth import sidecar_auth_forget
from tests.approvals.conftest import open_payload
from tests.stack import run_async

SIDECAR = "/api/v1/sidecar/"
REQUEST_ID = "00000000-0000-0000-0000-000000000000"
# Every path a sidecar calls, the view that answers it, and whether it skips the middleware.
CALLS = [
    ("bundle", bundle.bundle_view, True),
    ("keys", bundle.keys_view, False),
    ("heartbeat", reports.heartbeat_view, False),
    ("schema", reports.schema_view, False),
    ("audit", audit_intake.audit_view, True),
    ("approvals", approval_requests.approval_open_view, False),
    (f"approvals/{REQUEST_ID}", approval_requests.approval_state_view, True),
]


def _patterns(resolver: URLResolver) -> list[URLPattern]:
    found: list[URLPattern] = []
    for entry in resolver.url_patterns:
        found += _patterns(entry) if isinstance(entry, URLResolver) else [entry]
    return found


@pytest.mark.parametrize(("path", "view", "direct"), CALLS)
def test_each_sidecar_call_resolves_to_its_one_gateway_view(path: str, view: Any, direct: bool):
    assert settings.ASGI_APPLICATION == "config.asgi.application"
    assert resolve(SIDECAR + path).func is view
    assert view.__module__.startswith("gateway.")
    assert served_directly(SIDECAR + path) is direct
    routed = [p for p in _patterns(get_resolver()) if p.callback is view]
    assert len(routed) == 1, routed


def test_the_old_homes_are_gone():
    for module in (
        "governance.sidecar_api",
        "governance.sidecar_asgi",
        "governance.sidecar_urls",
        "governance.pubsub",
        "approvals.sidecar_api",
    ):
        assert importlib.util.find_spec(module) is None, module


def test_the_error_shape():
    assert error_body(401, "No.") == {
        "error": {"code": 401, "type": "not_authenticated", "message": "No."}
    }
    assert error_body(400, "Bad.", {"x": ["y"]}) == {
        "error": {"code": 400, "type": "invalid", "message": "Bad.", "fields": {"x": ["y"]}}
    }


async def _call(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Any:
    """One request through config.asgi's application, as uvicorn would make it."""
    from config.asgi import application

    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(scope, receive, send)
    headers_out = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], headers_out, body


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["bundle", "bundle?wait=5", f"approvals/{REQUEST_ID}?wait=5", "heartbeat"]
)
@pytest.mark.parametrize("token", [None, b"Bearer wsc_not-a-token-of-anyone-at-all"])
def test_config_asgi_refuses_a_missing_or_unknown_token(path: str, token: bytes | None):
    method = "POST" if path == "heartbeat" else "GET"
    headers = [(b"authorization", token)] if token else []
    status, headers_out, body = run_async(_call(method, SIDECAR + path, headers))
    assert status == 401
    assert json.loads(body) == error_body(401, "A valid sidecar token is required.")
    assert headers_out["www-authenticate"] == 'Bearer realm="warden-sidecar"'
    assert headers_out["content-length"] == str(len(body))
    # The long-polls skip the middleware (no request id); the small calls keep it.
    assert ("x-request-id" in headers_out) is (path == "heartbeat")


@pytest.fixture
def tokens(review_setup: Any, admin_user: Any) -> dict[str, Any]:
    sidecar, token = gov.sidecar_register(
        actor=admin_user, datasource=review_setup.datasource, name="sc"
    )
    other_ds = gov.datasource_create(
        actor=admin_user,
        name="other-ds",
        environment=Environment.objects.get(name="staging"),
        connect_teams=[review_setup.team_a],
    )
    _, other = gov.sidecar_register(actor=admin_user, datasource=other_ds, name="sc")
    return {"mine": token, "other": other, "sidecar": sidecar, "admin": admin_user}


def _auth(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.mark.django_db
def test_another_sidecar_or_a_revoked_token_is_refused_on_every_call(
    client, tokens, django_capture_on_commit_callbacks
):
    opened = client.post(
        SIDECAR + "approvals",
        data=json.dumps({"identity": "requester", **open_payload()}),
        content_type="application/json",
        **_auth(tokens["mine"]),
    )
    assert opened.status_code == 201
    state = f"{SIDECAR}approvals/{opened.json()['id']}"
    # Another datasource's sidecar: the request does not exist for it.
    refused = client.get(state, **_auth(tokens["other"]))
    assert refused.status_code == 404
    assert refused.json() == error_body(404, "No such approval request.")
    assert client.get(state, **_auth(tokens["mine"])).status_code == 200
    # Revoked: refused everywhere, the long-poll included.
    with django_capture_on_commit_callbacks(execute=True):  # drops the cached token
        gov.sidecar_revoke(actor=tokens["admin"], sidecar=tokens["sidecar"])
    for method, path in [
        ("get", state),
        ("get", SIDECAR + "bundle"),
        ("post", SIDECAR + "heartbeat"),
        ("post", SIDECAR + "schema"),
        ("post", SIDECAR + "audit"),
        ("post", SIDECAR + "approvals"),
    ]:
        kwargs = {"content_type": "application/json", "data": "{}"} if method == "post" else {}
        response = getattr(client, method)(path, **_auth(tokens["mine"]), **kwargs)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "not_authenticated"


@pytest.mark.django_db
def test_a_wrong_method_is_405_in_the_error_shape(client, tokens):
    response = client.post(SIDECAR + "bundle", **_auth(tokens["mine"]))
    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert response.json() == error_body(405, "Use GET.")


@pytest.mark.django_db
def test_a_heartbeat_records_when_its_datasources_tokens_last_signed_in(
    client, tokens, review_setup
):
    import time

    from governance.models import AccessToken

    admin = tokens["admin"]
    service, _ = gov.token_issue(actor=admin, identity=review_setup.service, name="svc")
    # The reviewer's identity is in team B only: crm-prod's bundle does not carry it.
    outsider, _ = gov.token_issue(actor=admin, identity=review_setup.reviewer.identity, name="x")
    body = {"revision": "", "version": "1", "counters": {}}

    def beat(logins: dict[str, Any], token: str = tokens["mine"]) -> int:
        data = json.dumps({**body, "logins": logins})
        response = client.post(
            SIDECAR + "heartbeat", data=data, content_type="application/json", **_auth(token)
        )
        return response.status_code

    signed_in = time.time() - 60
    assert beat({f"tok-{service.pk}": signed_in, f"tok-{outsider.pk}": signed_in}) == 200
    service.refresh_from_db()
    assert abs(service.last_used_at.timestamp() - signed_in) < 0.01
    assert AccessToken.objects.get(pk=outsider.pk).last_used_at is None  # another tenant's
    # An older report changes nothing; one from a clock ahead is taken as now.
    assert beat({f"tok-{service.pk}": signed_in - 3600}) == 200
    service.refresh_from_db()
    assert abs(service.last_used_at.timestamp() - signed_in) < 0.01
    assert beat({f"tok-{service.pk}": time.time() + 86400}) == 200
    service.refresh_from_db()
    assert service.last_used_at.timestamp() <= time.time()
    # Not a credential id, not a time: refused before anything is stored.
    for bad in ({"wrt_secret-token": signed_in}, {f"tok-{service.pk}": "now"}, []):
        assert beat(bad) == 400, bad  # type: ignore[arg-type]
    # Another datasource's sidecar cannot mark this datasource's token used.
    other_ds_token = tokens["other"]
    fresh, _ = gov.token_issue(actor=admin, identity=review_setup.service, name="fresh")
    gov.identity_update(actor=admin, identity=review_setup.service, data={"teams": []})
    assert beat({f"tok-{fresh.pk}": signed_in}, other_ds_token) == 200
    assert AccessToken.objects.get(pk=fresh.pk).last_used_at is None


@pytest.mark.django_db
def test_a_lookup_that_read_the_database_before_a_revocation_cannot_cache_the_token(tokens):
    """The lookup's query ran before the revocation committed; its cache write lands
    after the revocation's. Here the revocation's cache side runs first and the
    database still says the token is good, which is that lookup's view: it must not
    bring the token back, in Redis or in a server process's memory."""
    digest = bearer_digest(f"Bearer {tokens['mine']}")
    assert digest is not None
    sidecar_auth_forget(digest=digest)  # the revocation's mark, its row not yet changed
    assert _lookup_db(digest) is not None  # what the late lookup read from the database
    assert sidecar_authenticate(f"Bearer {tokens['mine']}") is None
    assert sidecar_authenticate(f"Bearer {tokens['other']}") is not None


def test_a_forget_during_a_lookup_keeps_its_token_out_of_a_server_s_memory():
    memory = PrincipalCache()
    memory.listening = True  # as the hub sets it once subscribed
    principal = SidecarPrincipal(sidecar_id=1, datasource_id=2)
    began = memory.forgets  # a lookup begins, then awaits Redis or the database
    memory.forget("d" * 64)  # the revocation's message arrives meanwhile
    memory.put("d" * 64, principal, began)
    assert memory.get("d" * 64) is None
    memory.put("d" * 64, principal, memory.forgets)  # a lookup begun after it
    assert memory.get("d" * 64) == principal


def test_a_server_remembers_no_token_while_it_cannot_hear_revocations():
    hub = bundle.ChangeHub()
    principal = SidecarPrincipal(sidecar_id=1, datasource_id=2)
    hub.principals.put("d" * 64, principal, hub.principals.forgets)
    assert hub.principals.get("d" * 64) is None  # not subscribed yet
    hub.on_ready()
    began = hub.principals.forgets
    hub.on_lost()  # the subscription drops during a lookup
    hub.principals.put("d" * 64, principal, hub.principals.forgets)  # begun while down
    hub.on_ready()
    hub.principals.put("d" * 64, principal, began)
    assert hub.principals.get("d" * 64) is None
    hub.principals.put("e" * 64, principal, hub.principals.forgets)
    assert hub.principals.get("e" * 64) == principal


@pytest.mark.django_db
def test_deleting_a_datasource_ends_its_sidecars_tokens(tokens, django_capture_on_commit_callbacks):
    header = f"Bearer {tokens['mine']}"
    assert sidecar_authenticate(header) is not None  # and now cached in Redis
    with django_capture_on_commit_callbacks(execute=True):
        gov.datasource_delete(
            actor=tokens["admin"], datasource=tokens["sidecar"].datasource, reason="gone"
        )
    assert sidecar_authenticate(header) is None
    assert sidecar_authenticate(f"Bearer {tokens['other']}") is not None
