"""A sidecar enforces its own datasource's bundles only (security review, item 1).

Every datasource's bundle is signed with the same key, so a signature alone does
not say whose it is. Here a relay on the plain-HTTP control-plane link answers the
bundle call of datasource A's sidecar with the validly signed bundle of datasource
B, which lets A's service identity read raw values and drop tables. The real
sidecar (``python -m sidecar run``) configured for A rejects it, counts it in
``/metrics``, keeps A's bundle, and, with no bundle of A's at all, does not listen.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from governance import services
from governance.bundles import bundle_current, bundle_publish
from governance.models import Environment
from tests.integration.conftest import (  # noqa: F401 - fixtures: upstream_db, its database
    SidecarProcess,
    _upstream_database,
    app_role,
    as_app_role,
    sidecar_config,
    upstream_db,
    upstream_dbname,
)
from tests.stack import (
    ROOT,
    BundleRelay,
    _stop,
    free_port,
    metric,
    scrape,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

REJECTED = "warden_sidecar_bundle_rejected_total"


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def connect(port: int, token: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname=upstream_dbname(),
        user="svc-billing",
        password=token,
        autocommit=True,
        connect_timeout=5,
    )


def assert_own_policy(port: int, token: str) -> None:
    """A's policy: the SSN masked, DROP refused (B's would allow both)."""
    with connect(port, token) as conn:
        ssn = conn.execute("SELECT ssn FROM customers ORDER BY id").fetchone()
        assert ssn is not None and ssn[0] != "123-45-6789" and ssn[0].endswith("6789"), ssn
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE customers")


def start_unready(config: dict[str, Any], state_dir: Path) -> subprocess.Popen[bytes]:
    """The real sidecar, not waiting for it to serve (it may rightly never do)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config_file = state_dir / "sidecar.json"
    config_file.write_text(json.dumps({**config, "state_dir": str(state_dir)}))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO", "WARDEN_BUNDLE", "WARDEN_SIDECAR"))
    }
    with (state_dir / "sidecar.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(config_file)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_another_datasources_signed_bundle_is_rejected_counted_and_never_enforced(
    control_plane: Any,
    bundle_relay: BundleRelay,
    demo_policy: Any,
    admin_user: Any,
    team_a: Any,
    upstream_db: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    _, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="t")
    _, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-pinned"
    )
    # Datasource B: same tables, svc-billing may connect, nothing classified, staging.
    other = services.datasource_create(
        actor=admin_user,
        name="crm-scratch",
        environment=Environment.objects.get(name="staging"),
        schema_snapshot=demo_policy.datasource.schema_snapshot,
        connect_teams=[team_a],
    )
    config = sidecar_config(
        bundle_relay,
        sidecar_token,
        upstream_db,
        bundle_wait=1,
        scan_enabled=False,
        allow_privileged_upstream=True,  # the test upstream is a superuser
        metrics_listen="127.0.0.1:0",
    )
    assert config["datasource"] == "crm-prod"
    proc = SidecarProcess(config=config, state_dir=tmp_path / "state")
    try:
        metrics_port = json.loads(proc.ready_file.read_text())["metrics_port"]
        assert_own_policy(proc.port, raw)
        own = bundle_current(datasource_id=demo_policy.datasource.pk)
        assert own is not None
        info = f'warden_sidecar_bundle_info{{revision="{own[0]}"}} 1'
        assert info in scrape(metrics_port)

        # B's bundle, validly signed and newer than A's: no replay check stands in the way.
        bundle_publish(datasource=other)
        other_envelope = bundle_current(datasource_id=other.pk)
        assert other_envelope is not None
        theirs, ours = (json.loads(e[1])["bundle"] for e in (other_envelope, own))
        assert theirs["datasource"]["name"] == "crm-scratch"
        assert theirs["issued_at"] > ours["issued_at"]

        # The relay answers with B's bundle from now on.
        bundle_relay.envelope = other_envelope[1]
        assert wait_for(
            lambda: (metric(scrape(metrics_port), REJECTED, 'reason="datasource"') or 0) >= 1
        ), scrape(metrics_port)
        assert bundle_relay.served >= 1
        assert info in scrape(metrics_port)  # A's bundle stays active
        assert_own_policy(proc.port, raw)
        log = proc.log.read_text()
        assert "bundle rejected (datasource)" in log and "'crm-scratch', not 'crm-prod'" in log
    finally:
        proc.stop()

    # With no bundle of its own (B's in the disk cache, B's from the link), a sidecar
    # for A does not listen at all; both rejections are counted.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "bundle.json").write_bytes(other_envelope[1])
    port, metrics_port = free_port(), free_port()
    unready = start_unready(
        {**config, "listen_port": port, "metrics_listen": f"127.0.0.1:{metrics_port}"}, fresh
    )
    try:
        assert wait_for(
            lambda: (metric(scrape(metrics_port), REJECTED, 'reason="datasource"') or 0) >= 2
        ), (fresh / "sidecar.log").read_text()
        assert unready.poll() is None and not listening(port)
        assert metric(scrape(metrics_port), "warden_sidecar_policy_usable") == 0
        log = (fresh / "sidecar.log").read_text()
        assert "cached bundle: the bundle is for datasource 'crm-scratch'" in log
    finally:
        _stop(unready)


def test_check_verifies_the_control_planes_bundle_against_the_pinned_keys(
    control_plane: Any,
    demo_policy: Any,
    admin_user: Any,
    upstream_db: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """``python -m sidecar check --config``: the token, the pinned key and the upstream
    role, as ``run`` would meet them (tests/sidecar/test_preflight.py: the rest)."""
    _, sidecar_token = services.sidecar_register(
        actor=admin_user, datasource=demo_policy.datasource, name="sc-check"
    )
    base = sidecar_config(control_plane, sidecar_token, as_app_role(upstream_db))
    stranger = base64.b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    ).decode()

    def check(**overrides: Any) -> tuple[int, str]:
        config = tmp_path / "sidecar.json"
        config.write_text(json.dumps({**base, "state_dir": str(tmp_path / "s"), **overrides}))
        out = subprocess.run(
            [sys.executable, "-m", "sidecar", "check", "--config", str(config)],
            capture_output=True, text=True, cwd=ROOT, check=False, timeout=60,
        )  # fmt: skip
        return out.returncode, out.stdout + out.stderr

    status, out = check()
    assert status == 0, out
    assert "ok: control plane: bundle revision" in out and "verifies (key " in out
    assert f"ok: upstream: connected as {app_role()}" in out
    assert not (tmp_path / "s").exists()  # the fetched bundle is not cached
    status, out = check(token="wsc_" + "x" * 40, upstream_dsn=upstream_db)
    assert status == 2
    assert "error: control plane: the token is refused (HTTP 401)" in out, out
    assert "error: upstream: the role is privileged (SUPERUSER" in out, out
    status, out = check(bundle_public_keys=f"other:{stranger}")
    assert status == 2 and "error: control plane: its bundle is refused: signed by key" in out
