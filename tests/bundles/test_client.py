"""The bundle client's checks, cache and backoff, without a control plane.

Bundles here are the engine's fixture bundles, signed with a key made for the
test; every check is exercised on real bytes, as they would arrive.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
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
from tests.bundles.conftest import run_async

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "bundles" / "demo-production.json"


def _inner(issued_at: str = "2026-01-01T00:00:00Z", **changes: Any) -> dict[str, Any]:
    data = json.loads(FIXTURE.read_text())
    bundle = copy.deepcopy(data.get("bundle", data))
    bundle.update(changes)
    bundle["issued_at"] = issued_at
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
