"""Fault tests: the control plane down, a restart from disk, catching up, tampering in transit.

The sidecar's bundle client runs as a real process; the control plane is a
real uvicorn that the tests stop and start again on the same port; tampering
is a local TCP relay that changes one byte of each bundle it forwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from governance import services
from governance.bundles import bundle_publish
from tests.stack import ByteFlipRelay, Server, SidecarClient

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PROBE = "svc-billing:SELECT ssn FROM customers"


def _change_ssn_mask(demo_policy: Any, admin_user: Any, strategy: str) -> str:
    services.masking_rule_update(
        actor=admin_user,
        rule=demo_policy.masking_rules[1],
        data={"strategy": strategy, "params": {}},
        reason="fault drill",
    )
    published = bundle_publish(datasource=demo_policy.datasource)
    assert published.changed
    return published.revision


@pytest.fixture
def sidecar_token(demo_policy: Any, admin_user: Any) -> str:
    _, raw = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-faults"
    )
    return raw


def test_down_restart_from_disk_and_catch_up(
    control_plane: Server,
    sidecar_clients: list[SidecarClient],
    sidecar_token: str,
    demo_policy: Any,
    admin_user: Any,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    client = SidecarClient(
        url=control_plane.url, token=sidecar_token, state_dir=state, probes=[PROBE]
    )
    sidecar_clients.append(client)
    first = client.next_event(timeout=20, kind="active")
    assert first["event"] == "active" and first["source"] == "network"
    enforced = first["probes"][0]["upstream_sql"]
    assert (state / "bundle.json").exists()
    assert not list(state.glob(".*.tmp"))  # written atomically: no temp file left behind

    # The control plane stops: the client keeps enforcing what it has.
    control_plane.stop()
    time.sleep(3)
    assert client.proc.poll() is None
    assert client.events.empty()  # no new activation, no exit

    # The client restarts while the control plane is still down: from disk.
    client.stop()
    restarted = SidecarClient(
        url=control_plane.url, token=sidecar_token, state_dir=state, probes=[PROBE]
    )
    sidecar_clients.append(restarted)
    from_disk = restarted.next_event(timeout=20, kind="active")
    assert from_disk["event"] == "active", from_disk
    assert (from_disk["source"], from_disk["revision"]) == ("disk", first["revision"])
    assert from_disk["probes"][0]["upstream_sql"] == enforced

    # Policy changes while it is down; when the control plane returns, it catches up.
    new_revision = _change_ssn_mask(demo_policy, admin_user, "redact")
    time.sleep(1)
    control_plane.start()
    back_at = time.monotonic()
    caught_up = restarted.next_event(timeout=20, kind="active")
    assert caught_up["event"] == "active", caught_up
    assert (caught_up["source"], caught_up["revision"]) == ("network", new_revision)
    assert caught_up["probes"][0]["upstream_sql"] != enforced
    print(f"\ncaught up {time.monotonic() - back_at:.2f} s after the control plane returned")


def test_a_bundle_changed_in_transit_is_rejected_and_the_previous_stays(
    control_plane: Server,
    sidecar_clients: list[SidecarClient],
    sidecar_token: str,
    demo_policy: Any,
    admin_user: Any,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    direct = SidecarClient(
        url=control_plane.url, token=sidecar_token, state_dir=state, probes=[PROBE]
    )
    sidecar_clients.append(direct)
    first = direct.next_event(timeout=20, kind="active")
    assert first["event"] == "active"
    direct.stop()

    relay = ByteFlipRelay(control_plane.port)
    try:
        via_relay = SidecarClient(
            url=f"http://127.0.0.1:{relay.port}",
            token=sidecar_token,
            state_dir=state,
            probes=[PROBE],
        )
        sidecar_clients.append(via_relay)
        from_disk = via_relay.next_event(timeout=20, kind="active")
        assert from_disk["source"] == "disk"
        _change_ssn_mask(demo_policy, admin_user, "redact")
        rejected = via_relay.next_event(timeout=20, kind="rejected")
        assert rejected["event"] == "rejected", rejected
        status = rejected["status"]
        assert status["revision"] == first["revision"]  # the previous bundle stays active
        assert "signature does not match" in status["last_rejection"]["reason"]
        assert relay.flipped >= 1
        # Nothing tampered was written over the good cache.
        cached = (state / "bundle.json").read_bytes()
        assert first["revision"].encode() in cached
        time.sleep(1.5)
        assert not any(e.get("event") == "active" for e in list(via_relay.events.queue))

        # A sidecar that never had a valid bundle refuses to serve at all.
        fresh = SidecarClient(
            url=f"http://127.0.0.1:{relay.port}",
            token=sidecar_token,
            state_dir=tmp_path / "fresh",
            probes=[PROBE],
        )
        sidecar_clients.append(fresh)
        refused = fresh.next_event(timeout=20, kind="refused")
        assert refused["event"] == "refused", refused
        assert refused["status"]["state"] == "no_bundle"
        assert fresh.proc.wait(timeout=10) == 3
    finally:
        relay.close()
