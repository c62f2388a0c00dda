"""The sidecar-facing API over a real uvicorn: auth, ETag/304, long-poll, strict bodies."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest
from django.db import connection

from governance import services
from governance.bundles import bundle_publish, redis_client
from governance.models import Environment, Sidecar
from sidecar.bundle import BundleClient, envelope_verify, parse_public_keys
from tests.stack import Server, pinned_key, run_async

# Serial, as under tests/integration: a uvicorn of its own, and Redis flushed before each test.
pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.serial,
]


def call(
    url: str,
    *,
    token: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def refused_within(url: str, token: str, seconds: float = 2.0) -> bool:
    """Whether ``token`` is refused (401) within ``seconds``. A server process drops
    a token from its memory when the ``forget`` message of a revocation or rotation
    reaches it over Redis pub/sub (``gateway.auth.PrincipalCache``): at once in
    practice, but after the revoking request returns, so the first call may win."""
    deadline = time.monotonic() + seconds
    while True:
        status = call(url, token=token)[0]
        if status == 401 or time.monotonic() > deadline:
            return status == 401
        time.sleep(0.01)


@pytest.fixture
def registered(demo_policy: Any, admin_user: Any) -> tuple[Sidecar, str]:
    return services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-1"
    )


def test_bundle_is_signed_served_with_an_etag_and_304_when_unchanged(
    control_plane: Server, registered: tuple[Sidecar, str]
) -> None:
    _, token = registered
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    status, headers, body = call(url, token=token)
    assert status == 200
    verified = envelope_verify(body, parse_public_keys(pinned_key()), datasource="crm-prod")
    assert headers["etag"] == f'"{verified.revision}"'
    status, headers, body = call(url, token=token, headers={"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")
    status, _, _ = call(url, token=token, headers={"If-None-Match": '"' + "0" * 64 + '"'})
    assert status == 200
    # The published public key is the pinned one.
    status, _, keys = call(f"{control_plane.url}/api/v1/sidecar/keys")
    kid, pub = pinned_key().split(":", 1)
    assert status == 200
    assert {"key_id": kid, "alg": "ed25519", "public_key": pub} in json.loads(keys)["keys"]


def test_tokens_bind_to_one_datasource_and_stop_at_revoke_or_rotate(
    control_plane: Server, registered: tuple[Sidecar, str], admin_user: Any, team_a: Any
) -> None:
    sidecar, token = registered
    other_ds = services.datasource_create(
        actor=admin_user,
        name="other",
        environment=Environment.objects.get(name="staging"),
        connect_teams=[team_a],
    )
    _, other_token = services.sidecar_register(actor=admin_user, datasource=other_ds, name="sc-2")
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    keys = parse_public_keys(pinned_key())
    assert envelope_verify(call(url, token=token)[2], keys).document["datasource"]["name"] == (
        "crm-prod"
    )
    assert envelope_verify(call(url, token=other_token)[2], keys).document["datasource"][
        "name"
    ] == ("other")
    assert call(url)[0] == 401
    assert call(url, token="wds_" + "x" * 40)[0] == 401
    _, new_token = services.sidecar_rotate_token(actor=admin_user, sidecar=sidecar)
    assert refused_within(url, token)  # the old token, cached a moment ago, is gone
    assert call(url, token=new_token)[0] == 200
    services.sidecar_revoke(actor=admin_user, sidecar=sidecar)
    assert refused_within(url, new_token)
    assert call(url, token=other_token)[0] == 200


def test_long_poll_returns_as_soon_as_the_revision_changes(
    control_plane: Server, registered: tuple[Sidecar, str], demo_policy: Any, admin_user: Any
) -> None:
    _, token = registered
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    _, headers, _ = call(url, token=token)
    etag = headers["etag"]
    started = time.monotonic()
    status, _, _ = call(f"{url}?wait=1", token=token, headers={"If-None-Match": etag})
    assert status == 304 and 0.9 < time.monotonic() - started < 3

    result: dict[str, Any] = {}

    def poll() -> None:
        result["reply"] = call(f"{url}?wait=30", token=token, headers={"If-None-Match": etag})
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    services.masking_rule_update(
        actor=admin_user,
        rule=demo_policy.masking_rules[0],
        data={"strategy": "redact"},
        reason="stricter",
    )
    changed_at = time.monotonic()
    published = bundle_publish(datasource=demo_policy.datasource)  # what the task does
    waiter.join(timeout=35)
    status, headers, _ = result["reply"]
    assert status == 200 and headers["etag"] == f'"{published.revision}"'
    latency = result["at"] - changed_at
    print(f"long-poll woke {latency * 1000:.0f} ms after the change")
    assert latency < 2


def test_a_stopping_server_answers_its_long_polls_at_once(
    registered: tuple[Sidecar, str], tmp_path: Any
) -> None:
    """A rolling restart: SIGTERM ends a 50 s long-poll with "nothing new" within a
    moment, and the process exits, although the server would wait a minute for it."""
    _, token = registered
    server = Server(log=tmp_path / "uvicorn.log", drain_seconds=60)
    server.start()
    try:
        url = f"{server.url}/api/v1/sidecar/bundle"
        _, headers, _ = call(url, token=token)
        result: dict[str, Any] = {}

        def poll() -> None:
            etag = {"If-None-Match": headers["etag"]}
            result["reply"] = call(f"{url}?wait=50", token=token, headers=etag, timeout=60)
            result["at"] = time.monotonic()

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(1)
        assert server.proc is not None
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        waiter.join(timeout=55)
        assert result["reply"][0] == 304
        assert result["at"] - signalled < 5  # against the 50 s it would wait
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert server.proc.wait(timeout=10) in (0, -signal.SIGTERM)
        log = server.log.read_text()
        assert "Application shutdown complete" in log and "Cancel" not in log, log
    finally:
        server.stop()


def test_bad_wait_and_methods_are_refused(
    control_plane: Server, registered: tuple[Sidecar, str]
) -> None:
    _, token = registered
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    assert call(f"{url}?wait=abc", token=token)[0] == 400
    assert call(f"{url}?wait=-1", token=token)[0] == 400
    assert call(url, token=token, method="POST", body=b"{}")[0] == 405


def _post(server: Server, path: str, token: str | None, payload: Any, **kw: Any) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return call(
        f"{server.url}/api/v1/sidecar/{path}",
        token=token,
        method="POST",
        body=body,
        headers=headers,
        **kw,
    )


def test_heartbeat_is_recorded_and_validated_strictly(
    control_plane: Server, registered: tuple[Sidecar, str]
) -> None:
    sidecar, token = registered
    rev = "a" * 64
    good = {"revision": rev, "version": "0.1.0", "counters": {"statements": 7}, "status": {}}
    status, _, body = _post(control_plane, "heartbeat", token, good)
    assert status == 200
    current = json.loads(body)["current_revision"]
    assert current is None or len(current) == 64
    sidecar.refresh_from_db()
    assert sidecar.running_revision == rev and sidecar.counters == {"statements": 7}
    assert sidecar.last_heartbeat_at is not None and not sidecar.is_stale()
    for bad in (
        {**good, "extra": 1},
        {**good, "revision": "not-hex"},
        {**good, "counters": {"x": -1}},
        {**good, "counters": {"x": True}},
        {k: v for k, v in good.items() if k != "version"},
        [good],
    ):
        assert _post(control_plane, "heartbeat", token, bad)[0] == 400, bad
    assert _post(control_plane, "heartbeat", token, b"{not json")[0] == 400
    assert _post(control_plane, "heartbeat", None, good)[0] == 401
    big = {**good, "status": {"x": "y" * 20000}}
    assert _post(control_plane, "heartbeat", token, big)[0] == 413
    assert call(f"{control_plane.url}/api/v1/sidecar/heartbeat", token=token)[0] == 405


def test_schema_report_updates_the_snapshot_and_proposes_findings(
    control_plane: Server, registered: tuple[Sidecar, str], demo_policy: Any
) -> None:
    _, token = registered
    snapshot = dict(demo_policy.datasource.schema_snapshot)
    snapshot["tables"] = [
        *snapshot["tables"],
        {
            "schema": "public",
            "name": "leads",
            "kind": "table",
            "columns": [{"name": "id", "type": "bigint"}, {"name": "mail", "type": "text"}],
        },
    ]
    findings = [
        {
            "schema": "public",
            "table": "leads",
            "column": "mail",
            "classification": "pii.email",
            "confidence": 0.9,
        },
        {  # a person already classified this one: the scanner does not override
            "schema": "public",
            "table": "customers",
            "column": "email",
            "classification": "pii.phone",
            "confidence": 0.5,
        },
    ]
    status, _, body = _post(
        control_plane, "schema", token, {"snapshot": snapshot, "findings": findings}
    )
    assert status == 202, body
    result = json.loads(body)
    # 0.9 is at the default auto-apply threshold: applied at once, awaiting confirmation.
    assert {k: result[k] for k in ("snapshot_changed", "proposed", "auto_applied", "ignored")} == {
        "snapshot_changed": True,
        "proposed": 0,
        "auto_applied": 1,
        "ignored": 1,
    }
    assert result["drift"] == 1  # the new table
    cc = demo_policy.datasource.column_classifications.get(table_name="leads")
    assert (cc.classification.name, cc.status, cc.source) == ("pii.email", "auto_applied", "auto")
    bad = {"snapshot": {"tables": "no"}, "findings": []}
    assert _post(control_plane, "schema", token, bad)[0] == 400
    bad_finding = {**findings[0], "value": "someone@example.com"}
    assert (
        _post(control_plane, "schema", token, {"snapshot": snapshot, "findings": [bad_finding]})[0]
        == 400
    )


def test_audit_is_accepted_and_a_malformed_approval_request_is_refused(
    control_plane: Server, registered: tuple[Sidecar, str]
) -> None:
    _, token = registered
    ts = 1_700_000_000.5
    events = {
        "events": [
            {"id": "e1", "ts": ts, "type": "statement"},
            {"id": "e1", "ts": ts, "type": "statement"},
            {"id": "e2", "ts": 1_700_000_001, "type": "session_start"},
        ]
    }
    status, _, body = _post(control_plane, "audit", token, events)
    assert (status, json.loads(body)) == (202, {"accepted": 2, "duplicates": 1})
    # The same batch again (a reply lost on the way back): nothing new is counted.
    status, _, body = _post(control_plane, "audit", token, events)
    assert (status, json.loads(body)) == (202, {"accepted": 0, "duplicates": 3})
    assert _post(control_plane, "audit", token, {"events": [{"kind": "x"}]})[0] == 400
    assert _post(control_plane, "audit", token, {"events": [{"id": "e3"}]})[0] == 400
    assert _post(control_plane, "audit", token, {"events": [{"id": "e3", "ts": True}]})[0] == 400
    assert _post(control_plane, "audit", None, events)[0] == 401
    # JSON nested past what the parsers go to: a 400 that says so, not a 500.
    deep = b'{"events": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    status, _, body = _post(control_plane, "audit", token, deep)
    assert status == 400 and b"nests JSON too deeply" in body, (status, body[:200])
    # Within what the parser takes, deeper than the scrub goes: a 400 too.
    nested = {"id": "e9", "ts": ts, "type": "statement", "plan": json.loads("[" * 900 + "]" * 900)}
    status, _, body = _post(control_plane, "audit", token, {"events": [nested]})
    assert status == 400 and b"nests JSON too deeply" in body, (status, body[:200])
    # Approvals are tested in tests/approvals; a malformed body is refused here too.
    status, _, _ = _post(control_plane, "approvals", token, {"statement": "x"})
    assert status == 400


def test_the_client_pulls_and_reports_its_status_in_a_heartbeat(
    control_plane: Server, registered: tuple[Sidecar, str], tmp_path: Any
) -> None:
    sidecar, token = registered
    client = BundleClient(
        url=control_plane.url,
        token=token,
        public_keys=parse_public_keys(pinned_key()),
        state_dir=tmp_path,
        datasource="crm-prod",
    )

    async def run() -> str | None:
        await client.start(timeout=10)
        assert await client.poll_once(wait=1) == "unchanged"  # a 304 after the wait
        return await client.heartbeat(version="9.9.9", counters={"statements": 3})

    current = run_async(run())
    assert current == client.active().revision
    sidecar.refresh_from_db()
    assert sidecar.running_revision == current and sidecar.version == "9.9.9"
    assert sidecar.bundle_status["state"] == "active"
    assert sidecar.bundle_status["source"] == "network"
    assert sidecar.bundle_status["rejected"] == 0


def test_a_lost_redis_copy_is_recompiled_not_spun_on(
    control_plane: Server, registered: tuple[Sidecar, str]
) -> None:
    _, token = registered
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    status, headers, _ = call(url, token=token)
    assert status == 200
    # The server remembers this revision; Redis loses everything (restart, flush).
    redis_client().flushdb()
    started = time.monotonic()
    status, _, body = call(url, token=token, timeout=10)
    assert status == 200 and time.monotonic() - started < 5
    envelope_verify(body, parse_public_keys(pinned_key()))
    # A fresh server process has nothing in memory either: it compiles on demand.
    control_plane.stop()
    control_plane.start()
    status, fresh, body = call(url, token=token, headers={"If-None-Match": headers["etag"]})
    assert status == 200 and fresh["etag"] != headers["etag"]  # a new issue time
    envelope_verify(body, parse_public_keys(pinned_key()))


def test_many_sidecars_at_first_contact_share_a_few_database_connections(
    control_plane: Server, demo_policy: Any, admin_user: Any
) -> None:
    """150 sidecars starting at once each cost one token lookup in SQL. Served through
    Django's ASGI handler, every request got a thread (and a database connection) of its
    own: past PostgreSQL's max_connections, sidecars got 500s. The lookups share the
    gateway's one thread for ORM work instead."""
    tokens = [
        services.sidecar_register(
            actor=admin_user, datasource=demo_policy.datasource, name=f"fleet-{n}"
        )[1]
        for n in range(150)
    ]
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    statuses: list[int] = []
    peak = [0]
    storming = threading.Event()
    start = threading.Barrier(len(tokens))

    def sample_connections() -> None:
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as db:
            while storming.is_set():
                row = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                ).fetchone()
                peak[0] = max(peak[0], row[0] if row else 0)
                time.sleep(0.005)

    def first_contact(token: str) -> None:
        start.wait()
        statuses.append(call(url, token=token)[0])

    storming.set()
    sampler = threading.Thread(target=sample_connections)
    sampler.start()
    threads = [threading.Thread(target=first_contact, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    storming.clear()
    sampler.join(timeout=10)
    assert sorted(set(statuses)) == [200] and len(statuses) == len(tokens)
    # This test's own two connections, the server's ORM thread, a few of Django's.
    assert peak[0] <= 12, f"{peak[0]} connections to the database during the storm"
