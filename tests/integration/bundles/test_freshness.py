"""Bundles expire and are re-signed; a sidecar takes nothing older and nothing expired
(security review, item 2).

The control plane signs ``expires_at`` into every bundle and re-signs from Celery
beat; the revision (the ETag) covers it, so a 304 never hides a renewal. The real
sidecar, behind a relay on its control-plane link, refuses an expired bundle when
it has none, refuses an older validly signed one (a replay) when it has one, and
once its bundle is past ``expires_at`` + ``bundle_grace_hours`` with the control
plane unreachable it refuses new sessions with a FATAL naming the expiry while
sessions already open keep working.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.utils import timezone

from config.celery import app as celery_app
from governance import services
from governance.bundles import (
    bundle_compile,
    bundle_current,
    bundle_publish,
    bundles_resign,
    content_digest,
    envelope_bytes,
    redis_client,
)
from governance.models import Sidecar
from sidecar.bundle import BundleClient, envelope_verify, parse_public_keys
from sidecar.engine import compute_revision
from tests.gateway.test_sidecar_api import call
from tests.integration.conftest import SidecarProcess, sidecar_config
from tests.sidecar.bundle.test_pinning import REJECTED, connect, listening, start_unready, wait_for
from tests.stack import BundleRelay, _stop, free_port, metric, pinned_key, scrape

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def sidecar_token(demo_policy: Any, admin_user: Any) -> str:
    _, raw = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-fresh"
    )
    return raw


def test_bundles_expire_and_a_resign_is_a_new_etag(
    control_plane: Any, sidecar_token: str, settings: Any
) -> None:
    url = f"{control_plane.url}/api/v1/sidecar/bundle"
    keys = parse_public_keys(pinned_key())
    status, headers, body = call(url, token=sidecar_token)
    assert status == 200
    first = envelope_verify(body, keys, datasource="crm-prod")
    assert first.expires_at is not None
    lifetime = _time(first.expires_at) - _time(first.issued_at)
    assert lifetime == datetime.timedelta(hours=settings.WARDEN_BUNDLE_LIFETIME_HOURS)
    assert lifetime == datetime.timedelta(hours=24)
    etag = headers["etag"]
    assert call(url, token=sidecar_token, headers={"If-None-Match": etag})[0] == 304

    # A sidecar parked on the long-poll wakes for the re-sign, and gets the new expiry.
    result: dict[str, Any] = {}

    def poll() -> None:
        result["reply"] = call(
            f"{url}?wait=30", token=sidecar_token, headers={"If-None-Match": etag}
        )

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    resigned = bundles_resign()
    waiter.join(10)
    assert time.monotonic() - started < 3
    status, headers, body = result["reply"]
    assert status == 200
    renewed = envelope_verify(body, keys, datasource="crm-prod")
    assert headers["etag"] == f'"{renewed.revision}"' != etag
    assert [p.revision for p in resigned.values()] == [renewed.revision]
    assert renewed.issued_at > first.issued_at and renewed.expires_at > first.expires_at
    assert content_digest(renewed.document) == content_digest(first.document)  # same policy
    assert call(url, token=sidecar_token, headers={"If-None-Match": etag})[0] == 200

    # Celery beat re-signs every WARDEN_BUNDLE_RESIGN_HOURS (6 h), well inside the 24 h.
    entry = celery_app.conf.beat_schedule["bundles-resign"]
    assert entry == {"task": "governance.tasks.bundles_resign", "schedule": 6 * 3600.0}


def test_a_bundle_stored_before_bundles_expired_is_recompiled_when_asked_for(
    control_plane: Any, sidecar_token: str, demo_policy: Any
) -> None:
    # What an older control plane left in Redis: signed, no expires_at (sidecars
    # reject it), under the old content digest.
    legacy = bundle_compile(datasource=demo_policy.datasource)
    del legacy["expires_at"]
    legacy["revision"] = compute_revision(legacy)
    key = f"warden:bundle:{demo_policy.datasource.pk}"
    redis_client().mset(
        {
            f"{key}:rev": legacy["revision"],
            f"{key}:body": envelope_bytes(legacy),
            f"{key}:content": "0" * 64,
        }
    )
    status, headers, body = call(f"{control_plane.url}/api/v1/sidecar/bundle", token=sidecar_token)
    assert status == 200
    served = envelope_verify(body, parse_public_keys(pinned_key()), datasource="crm-prod")
    assert served.expires_at is not None and served.revision != legacy["revision"]
    assert headers["etag"] == f'"{served.revision}"'


def test_with_nothing_active_an_expired_bundle_is_refused_from_the_link_and_the_cache(
    control_plane: Any,
    bundle_relay: BundleRelay,
    sidecar_token: str,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    _, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    # Validly signed, expired an hour ago (issued 25 h ago with the 24 h lifetime).
    expired = envelope_bytes(
        bundle_compile(
            datasource=demo_policy.datasource,
            issued_at=timezone.now() - datetime.timedelta(hours=25),
        )
    )
    bundle_relay.envelope = expired
    state = tmp_path / "state"
    state.mkdir()
    (state / "bundle.json").write_bytes(expired)  # its own cache: past 30 min of grace too
    port, metrics_port = free_port(), free_port()
    config = sidecar_config(
        bundle_relay,
        sidecar_token,
        upstream_db,
        listen_port=port,
        metrics_listen=f"127.0.0.1:{metrics_port}",
        bundle_grace_hours=0.5,
        scan_enabled=False,
        allow_privileged_upstream=True,  # the test upstream is a superuser
    )
    proc = start_unready(config, state)
    try:
        assert wait_for(
            lambda: (metric(scrape(metrics_port), REJECTED, 'reason="expired"') or 0) >= 2
        ), (state / "sidecar.log").read_text()
        assert proc.poll() is None and not listening(port)
        log = (state / "sidecar.log").read_text()
        assert "cached bundle: expired at" in log and "refusing to start from it" in log

        # The control plane's own (unexpired) bundle gets through: it serves.
        bundle_relay.envelope = None
        assert wait_for(lambda: listening(port)), (state / "sidecar.log").read_text()
        with connect(port, raw) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (2,)
    finally:
        _stop(proc)


def test_a_replay_is_refused_and_past_expiry_and_grace_new_sessions_are_refused(
    control_plane: Any,
    bundle_relay: BundleRelay,
    sidecar_token: str,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,
    tmp_path: Path,
) -> None:
    datasource = demo_policy.datasource
    old_token, old_raw = services.token_issue(
        actor=admin_user, identity=demo_policy.service, name="old"
    )
    _, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    # Issued at T-1, unexpired, validly signed: it still lists the token revoked next.
    older = envelope_bytes(bundle_compile(datasource=datasource))
    services.token_revoke(actor=admin_user, token=old_token)
    published = bundle_publish(datasource=datasource)  # issued at T, without the token
    config = sidecar_config(
        bundle_relay,
        sidecar_token,
        upstream_db,
        bundle_wait=1,
        scan_enabled=False,
        allow_privileged_upstream=True,  # the test upstream is a superuser
        metrics_listen="127.0.0.1:0",
        bundle_grace_hours=2 / 3600,  # two seconds
    )
    proc = SidecarProcess(config=config, state_dir=tmp_path / "state")
    try:
        metrics_port = json.loads(proc.ready_file.read_text())["metrics_port"]
        info = f'warden_sidecar_bundle_info{{revision="{published.revision}"}} 1'
        assert info in scrape(metrics_port)
        with pytest.raises(psycopg.OperationalError):
            connect(proc.port, old_raw).close()

        # The heartbeat reports the bundle's expiry and age.
        current = bundle_current(datasource_id=datasource.pk)
        assert current is not None
        expires_at = json.loads(current[1])["bundle"]["expires_at"]
        sidecar = Sidecar.objects.get(name="sc-fresh")
        assert wait_for(
            lambda: Sidecar.objects.get(pk=sidecar.pk).bundle_status.get("expires_at") == expires_at
        )
        status = Sidecar.objects.get(pk=sidecar.pk).bundle_status
        assert status["state"] == "active" and status["age_seconds"] >= 0

        # A replay of the older bundle is rejected and counted; the revoked token stays out.
        bundle_relay.envelope = older
        assert wait_for(
            lambda: (metric(scrape(metrics_port), REJECTED, 'reason="replay"') or 0) >= 1
        ), proc.log.read_text()
        assert info in scrape(metrics_port)
        with pytest.raises(psycopg.OperationalError):
            connect(proc.port, old_raw).close()

        # A live session, then a renewal that expires in 3 s, then the control plane is gone.
        session = connect(proc.port, raw)
        short = bundle_compile(datasource=datasource, lifetime=datetime.timedelta(seconds=3))
        bundle_relay.envelope = envelope_bytes(short)
        renewed = f'warden_sidecar_bundle_info{{revision="{short["revision"]}"}} 1'
        assert wait_for(lambda: renewed in scrape(metrics_port)), proc.log.read_text()
        bundle_relay.down = True
        assert session.execute("SELECT 1").fetchone() == (1,)
        time.sleep(max(0.0, _time(short["expires_at"]).timestamp() + 2.3 - time.time()))

        with pytest.raises(psycopg.OperationalError) as refused:
            connect(proc.port, raw).close()
        message = str(refused.value)
        assert f"Warden's policy expired at {short['expires_at']}" in message, message
        assert "the control plane has been unreachable; new sessions are refused" in message
        # The session that was open keeps working, under the same policy.
        ssn = session.execute("SELECT ssn FROM customers ORDER BY id").fetchone()
        assert ssn is not None and ssn[0] != "123-45-6789" and ssn[0].endswith("6789"), ssn
        session.close()
        text = scrape(metrics_port)
        assert metric(text, "warden_sidecar_policy_usable") == 0
        assert (metric(text, "warden_sidecar_bundle_expires_in_seconds") or 0) < -2
        assert metric(text, "warden_sidecar_bundle_grace_seconds") == 2
    finally:
        proc.stop()


def test_a_publisher_whose_clock_is_behind_still_publishes_newer_policy(
    demo_policy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review's finding: sidecars order bundles by issued_at and refuse an older
    one as a replay, and both the web process and the Celery workers publish. A
    policy change published from a host whose clock was 30 s behind the last
    publisher's got an older issued_at, and every sidecar refused it, revocations
    included, until the next re-sign (6 h). Publications of a datasource now follow
    each other in issued_at whatever the publishing host's clock says."""
    from governance import bundles as compiler  # the module whose clock the host sets

    datasource = demo_policy.datasource
    keys = parse_public_keys(pinned_key())
    first = bundle_publish(datasource=datasource, force=True)
    current = bundle_current(datasource_id=datasource.id)
    assert current is not None and current[0] == first.revision
    held = envelope_verify(current[1], keys, datasource="crm-prod")

    behind = timezone.now() - datetime.timedelta(seconds=30)
    monkeypatch.setattr(compiler.timezone, "now", lambda: behind)
    second = bundle_publish(datasource=datasource, force=True)
    current = bundle_current(datasource_id=datasource.id)
    assert current is not None and current[0] == second.revision != first.revision
    newer = envelope_verify(current[1], keys, datasource="crm-prod")
    assert _time(newer.issued_at) > _time(held.issued_at)

    # A sidecar holding the first takes the second.
    client = BundleClient(
        url="http://127.0.0.1:9", token="wds_test", public_keys=keys, state_dir=tmp_path
    )
    client._activate(held, "network")
    client._activate(newer, "network")
    assert client.active().revision == second.revision
