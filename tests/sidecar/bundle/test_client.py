"""The bundle client's checks, cache and backoff, without a control plane.

Bundles here are the engine's fixture bundles, signed with a key made for the
test; every check is exercised on real bytes, as they would arrive.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.bundle import (
    CACHE_FILE,
    BundleClient,
    BundleRejected,
    NoBundle,
    envelope_verify,
    parse_public_keys,
)
from sidecar.engine import canonical_bytes, compute_revision
from tests.stack import run_async

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "bundles" / "demo-production.json"


FAR_FUTURE = "2099-01-01T00:00:00Z"


def _inner(
    issued_at: str = "2026-01-01T00:00:00Z", expires_at: str | None = FAR_FUTURE, **changes: Any
) -> dict[str, Any]:
    data = json.loads(FIXTURE.read_text())
    bundle = copy.deepcopy(data.get("bundle", data))
    bundle.update(changes)
    bundle["issued_at"] = issued_at
    if expires_at is not None:
        bundle["expires_at"] = expires_at
    bundle["revision"] = compute_revision(bundle)
    return bundle


class Signer:
    def __init__(self, key_id: str = "k1") -> None:
        self.key_id = key_id
        self.private = Ed25519PrivateKey.generate()

    @property
    def pin(self) -> str:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"{self.key_id}:{base64.b64encode(raw).decode()}"

    def envelope(self, bundle: dict[str, Any]) -> bytes:
        signature = base64.b64encode(self.private.sign(canonical_bytes(bundle))).decode()
        return canonical_bytes(
            {
                "bundle": bundle,
                "signature": {"alg": "ed25519", "key_id": self.key_id, "value": signature},
            }
        )


def test_a_signed_fixture_bundle_verifies() -> None:
    signer = Signer()
    verified = envelope_verify(signer.envelope(_inner()), parse_public_keys(signer.pin))
    assert verified.revision == verified.bundle.revision
    assert verified.key_id == "k1"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda raw, s: raw.replace(b'"hold_seconds":20', b'"hold_seconds":21'), "signature"),
        (lambda raw, s: json.dumps({"bundle": json.loads(raw)["bundle"]}).encode(), "envelope"),
        (lambda raw, s: raw.replace(b'"alg":"ed25519"', b'"alg":"none"'), "algorithm"),
        (lambda raw, s: raw.replace(b'"key_id":"k1"', b'"key_id":"k9"'), "not pinned"),
        (lambda raw, s: Signer("k1").envelope(json.loads(raw)["bundle"]), "signature"),
        (lambda raw, s: raw[:-3], "not JSON"),
    ],
    ids=["byte-changed", "unsigned", "alg-none", "unpinned-key", "other-key-same-id", "truncated"],
)
def test_tampered_or_unsigned_bundles_are_rejected(tamper: Any, reason: str) -> None:
    signer = Signer()
    raw = tamper(signer.envelope(_inner()), signer)
    with pytest.raises(BundleRejected, match=reason):
        envelope_verify(raw, parse_public_keys(signer.pin))


def test_a_signed_bundle_the_engine_refuses_is_rejected() -> None:
    signer = Signer()
    bundle = _inner()
    bundle["format"] = "warden.bundle/2"  # signed by us, but not the contract
    with pytest.raises(BundleRejected, match="refused by the engine"):
        envelope_verify(signer.envelope(bundle), parse_public_keys(signer.pin))


def test_rotation_pins_several_keys_and_follows_the_key_id() -> None:
    old, new = Signer("2025"), Signer("2026")
    keys = parse_public_keys(f"{old.pin},{new.pin}")
    assert envelope_verify(old.envelope(_inner()), keys).key_id == "2025"
    assert envelope_verify(new.envelope(_inner()), keys).key_id == "2026"
    with pytest.raises(ValueError, match="pinned"):
        parse_public_keys("")


def _client(tmp_path: Path, signer: Signer, url: str = "http://127.0.0.1:9") -> BundleClient:
    return BundleClient(
        url=url, token="wds_test", public_keys=parse_public_keys(signer.pin), state_dir=tmp_path
    )


def test_no_bundle_means_refuse_to_serve(tmp_path: Path) -> None:
    client = _client(tmp_path, Signer())
    with pytest.raises(NoBundle):
        client.current()
    with pytest.raises(NoBundle):
        run_async(client.start(timeout=0.3))  # nothing on disk, nobody listening
    assert client.status()["state"] == "no_bundle"
    assert client.status()["consecutive_failures"] >= 1


def test_disk_cache_is_written_atomically_and_reverified_on_start(tmp_path: Path) -> None:
    signer = Signer()
    raw = signer.envelope(_inner())
    client = _client(tmp_path, signer)
    client._write_cache(raw)
    assert (tmp_path / CACHE_FILE).read_bytes() == raw
    assert [p.name for p in tmp_path.iterdir()] == [CACHE_FILE]
    assert oct((tmp_path / CACHE_FILE).stat().st_mode & 0o777) == "0o600"
    restarted = _client(tmp_path, signer)
    assert restarted.load_from_disk()
    assert restarted.status()["source"] == "disk"
    # A cache that no longer verifies (edited on disk) is refused, and reported.
    (tmp_path / CACHE_FILE).write_bytes(raw.replace(b'"hold_seconds":20', b'"hold_seconds":0'))
    edited = _client(tmp_path, signer)
    assert not edited.load_from_disk()
    assert edited.status()["rejected"] == 1
    with pytest.raises(NoBundle):
        edited.current()


def test_an_older_bundle_is_a_replay_and_is_rejected(tmp_path: Path) -> None:
    signer = Signer()
    client = _client(tmp_path, signer)
    keys = parse_public_keys(signer.pin)
    newer = envelope_verify(signer.envelope(_inner("2026-02-01T00:00:00Z")), keys)
    older = envelope_verify(
        signer.envelope(_inner("2026-01-01T00:00:00Z", approvals={"hold_seconds": 5})), keys
    )
    client._activate(newer, "network")
    with pytest.raises(BundleRejected, match="replay"):
        client._activate(older, "network")
    assert client.active().revision == newer.revision


def test_a_subscriber_can_refuse_a_bundle_and_the_previous_stays(tmp_path: Path) -> None:
    signer = Signer()
    client = _client(tmp_path, signer)
    keys = parse_public_keys(signer.pin)
    first = envelope_verify(signer.envelope(_inner("2026-01-01T00:00:00Z")), keys)
    client._activate(first, "network")
    seen: list[str] = []

    def refuse(document: dict[str, Any]) -> None:
        seen.append(document["revision"])
        raise RuntimeError("the proxy cannot use it")

    client.subscribe(refuse)
    second = envelope_verify(
        signer.envelope(_inner("2026-01-02T00:00:00Z", approvals={"hold_seconds": 5})), keys
    )
    with pytest.raises(BundleRejected, match="refused by the sidecar"):
        client._activate(second, "network")
    assert seen == [second.revision] and client.current()["revision"] == first.revision


def test_backoff_grows_with_failures_jittered_and_capped(tmp_path: Path) -> None:
    client = _client(tmp_path, Signer())
    client.min_backoff, client.max_backoff = 0.5, 8.0
    client._status.consecutive_failures = 1
    first = [client.backoff_delay() for _ in range(200)]
    client._status.consecutive_failures = 20
    late = [client.backoff_delay() for _ in range(200)]
    assert all(0.25 <= d <= 0.5 for d in first)
    assert all(0.25 <= d <= 8.0 for d in late)
    assert max(late) > 4 and len({round(d, 3) for d in late}) > 50  # spread, not lock-step


def test_the_client_imports_without_django() -> None:
    code = (
        "import sys; import sidecar.bundle; "
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


# --- the datasource pin, expiry and freshness (security review) ---------------------------


def _verified(signer: Signer, **kwargs: Any) -> Any:
    return envelope_verify(signer.envelope(_inner(**kwargs)), parse_public_keys(signer.pin))


def test_a_bundle_for_another_datasource_is_rejected_by_reason_and_counted(
    tmp_path: Path,
) -> None:
    signer = Signer()
    other = _inner(datasource={**_inner()["datasource"], "name": "other"})
    raw = signer.envelope(other)
    with pytest.raises(BundleRejected, match="'other', not 'demo'") as caught:
        envelope_verify(raw, parse_public_keys(signer.pin), datasource="demo")
    assert caught.value.reason == "datasource"
    counted: dict[str, int] = {}
    client = BundleClient(
        url="http://127.0.0.1:9",
        token="wds_test",
        public_keys=parse_public_keys(signer.pin),
        state_dir=tmp_path,
        datasource="demo",
        rejections=counted,
    )
    client._write_cache(raw)
    assert not client.load_from_disk()
    assert not client.load_from_disk()  # the same rejected cache is not counted twice
    assert counted == {"datasource": 1}
    assert client.status()["last_rejection"]["code"] == "datasource"
    assert client.policy_usable() is not None  # nothing active: nothing to serve


def test_a_signed_bundle_without_an_expiry_is_rejected() -> None:
    signer = Signer()
    with pytest.raises(BundleRejected, match="no expires_at") as caught:
        _verified(signer, expires_at=None)
    assert caught.value.reason == "expiry"
    with pytest.raises(BundleRejected, match="not after issued_at"):
        _verified(signer, expires_at="2025-12-31T00:00:00Z")


def test_with_nothing_active_the_network_must_be_unexpired_the_cache_within_grace(
    tmp_path: Path,
) -> None:
    signer = Signer()
    # Long expired by now.
    expired = _verified(signer, issued_at="2026-01-01T00:00:00Z", expires_at="2026-01-02T00:00:00Z")
    client = _client(tmp_path, signer)
    with pytest.raises(BundleRejected, match="expired at") as caught:
        client._activate(expired, "network")
    assert caught.value.reason == "expired"
    client.grace_seconds = 1e10  # the cache is the sidecar's own: honoured for the grace
    client._activate(expired, "disk")
    assert client.policy_usable() is None and client.status()["state"] == "expired"
    late = _client(tmp_path, signer)
    late.grace_seconds = 3600.0
    with pytest.raises(BundleRejected, match="and its grace period"):
        late._activate(expired, "disk")


def test_renewals_are_taken_replays_are_not_and_grace_ends_in_a_refusal(tmp_path: Path) -> None:
    signer = Signer()
    client = _client(tmp_path, signer)
    client.grace_seconds = 60.0
    first = _verified(signer, issued_at="2026-12-01T00:00:00Z", expires_at="2099-01-01T00:00:00Z")
    renewal = _verified(signer, issued_at="2026-12-01T06:00:00Z", expires_at="2099-01-01T06:00:00Z")
    client._activate(first, "network")
    client._activate(renewal, "network")  # same policy, later issue and expiry: taken
    assert client.active().revision == renewal.revision
    with pytest.raises(BundleRejected, match="replay") as caught:
        client._activate(first, "network")
    assert caught.value.reason == "replay"
    expires = renewal.expires_ts
    assert expires is not None
    assert client.policy_usable(now=expires - 1) is None
    assert client.policy_usable(now=expires + 59) is None  # in the grace period
    refusal = client.policy_usable(now=expires + 61)
    assert refusal == (
        "Warden's policy expired at 2099-01-01T06:00:00Z and the control plane has been "
        "unreachable; new sessions are refused"
    )


def test_the_offline_file_is_pinned_and_expires_with_the_same_grace(tmp_path: Path) -> None:
    from sidecar.runner import FileBundleSource

    path = tmp_path / "bundle.json"
    counted: dict[str, int] = {}
    path.write_text(json.dumps(_inner(datasource={**_inner()["datasource"], "name": "other"})))
    with pytest.raises(BundleRejected, match="'other', not 'demo'"):
        FileBundleSource(path, datasource="demo", rejections=counted)
    path.write_text(json.dumps(_inner(expires_at="2026-01-02T00:00:00Z")))
    with pytest.raises(BundleRejected, match="expired at"):
        FileBundleSource(path, datasource="demo", grace_seconds=3600, rejections=counted)
    assert counted == {"datasource": 1, "expired": 1}
    in_grace = FileBundleSource(path, datasource="demo", grace_seconds=1e10)
    assert in_grace.policy_usable() is None
    in_grace.grace_seconds = 0
    assert "policy expired at 2026-01-02T00:00:00Z" in str(in_grace.policy_usable())
    path.write_text(json.dumps(_inner(expires_at=None)))  # no expiry: offline, never expires
    assert FileBundleSource(path, datasource="demo").policy_usable() is None


def test_an_offline_sidecar_given_another_datasources_file_does_not_listen(
    tmp_path: Path,
) -> None:
    from tests.sidecar.bundle.test_pinning import listening, start_unready
    from tests.stack import _stop, free_port, metric, scrape

    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(_inner(datasource={**_inner()["datasource"], "name": "other"})))
    port, metrics_port = free_port(), free_port()
    config = {
        "upstream_dsn": "postgresql://nobody@127.0.0.1:1/nothing",
        "bundle_file": str(bundle),
        "datasource": "demo",
        "listen_port": port,
        "metrics_listen": f"127.0.0.1:{metrics_port}",
    }
    proc = start_unready(config, tmp_path / "state")
    try:
        rejected = 'reason="datasource"'
        deadline = time.monotonic() + 15
        while metric(scrape(metrics_port), "warden_sidecar_bundle_rejected_total", rejected) != 1:
            assert time.monotonic() < deadline, (tmp_path / "state" / "sidecar.log").read_text()
            time.sleep(0.1)
        time.sleep(1.5)  # retried every second, counted once: the file did not change
        assert metric(scrape(metrics_port), "warden_sidecar_bundle_rejected_total", rejected) == 1
        assert proc.poll() is None and not listening(port)
        log = (tmp_path / "state" / "sidecar.log").read_text()
        assert "bundle file rejected (datasource)" in log and "'other', not 'demo'" in log
    finally:
        _stop(proc)


class _Replies:
    """A control plane that answers the bundle poll with each of ``bodies`` in turn
    (the last one for good): what anyone on the link could answer with."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.served = 0
        replies = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = replies.bodies[min(replies.served, len(replies.bodies) - 1)]
                replies.served += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


def test_one_malformed_reply_does_not_stop_the_updates(tmp_path: Path) -> None:
    """A review's finding: the poll caught only what the JSON parser usually raises.
    A reply nested deeper than the parser goes (RecursionError) ended the task that
    polls, silently: the sidecar kept its bundle, revocations no longer arrived, and
    it looked alive until the bundle expired. A signed date that does not exist did
    the same. Each must be a rejection, and the next good bundle must be taken."""
    signer = Signer()
    good = signer.envelope(_inner("2026-03-01T00:00:00Z"))
    bad_date = signer.envelope(_inner("2026-02-30T00:00:00Z"))
    with pytest.raises(BundleRejected, match="malformed"):
        envelope_verify(bad_date, parse_public_keys(signer.pin))
    with pytest.raises(BundleRejected, match="nested too deep"):
        envelope_verify(b"[" * 100_000, parse_public_keys(signer.pin))
    replies = _Replies([b"[" * 100_000, bad_date, good])
    try:
        client = _client(tmp_path, signer, url=replies.url)
        client.min_backoff = client.max_backoff = 0.05
        client.wait = 0

        async def watch_until_active() -> None:
            task = asyncio.create_task(client.watch())
            try:
                deadline = time.monotonic() + 10
                while client._active is None and time.monotonic() < deadline:
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.02)
            finally:
                task.cancel()

        run_async(watch_until_active())
        assert replies.served >= 3
        assert client.active().revision == envelope_verify(good, client.keys).revision
        assert client.status()["rejected"] >= 2
    finally:
        replies.close()


def test_a_bundle_issued_in_the_future_is_rejected(tmp_path: Path) -> None:
    """A review's finding: bundles are ordered by issued_at, so one signed by a
    control plane whose clock ran ahead was taken, and then every correct bundle
    after it was refused as a replay, revocations included, while it did not expire
    in time. More than five minutes ahead of this host is refused; a correct
    bundle goes on being taken."""
    signer = Signer()
    client = _client(tmp_path, signer)
    keys = parse_public_keys(signer.pin)
    now = datetime.datetime.now(datetime.UTC)

    def at(moment: datetime.datetime) -> Any:
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return envelope_verify(signer.envelope(_inner(stamp, approvals={"hold_seconds": 5})), keys)

    with pytest.raises(BundleRejected, match="later than this host's clock") as refused:
        client._activate(at(now + datetime.timedelta(days=300)), "network")
    assert refused.value.reason == "clock"
    current = at(now - datetime.timedelta(minutes=1))
    client._activate(current, "network")
    with pytest.raises(BundleRejected, match="later than this host's clock"):
        client._activate(at(now + datetime.timedelta(hours=2)), "network")
    assert client.active().revision == current.revision
    client._activate(at(now + datetime.timedelta(minutes=2)), "network")  # within the skew
