"""A new bundle file takes effect without a restart; a bad one never replaces the good one."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from sidecar.proxy.scram import make_verifier
from tests.sidecar.proxy.conftest import (
    ALICE_TOKEN,
    BOB_TOKEN,
    build_bundle,
    one_relay,
    start_sidecar,
    wait_for,
)


def _publish(path: Path, bundle: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(bundle))
    tmp.replace(path)


def _can_login(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_revocation_and_bad_bundles(upstream: str, tmp_path: Path) -> None:
    name = urlsplit(upstream).path.lstrip("/")
    first = build_bundle(name)
    sidecar = start_sidecar(tmp_path, upstream, first)
    bundle_file = tmp_path / "bundle.json"
    try:
        assert _can_login(sidecar.dsn())
        assert f'revision="{first["revision"]}"' in sidecar.metrics()
        open_session = psycopg.connect(sidecar.dsn(), autocommit=True)

        # Revoke alice: only bob and sec remain.
        second = build_bundle(
            name, identities=[i for i in first["identities"] if i["name"] != "alice"]
        )
        _publish(bundle_file, second)
        assert wait_for(lambda: not _can_login(sidecar.dsn()), timeout=10)
        # The session alice already had is ended too, with a clear reason.
        with pytest.raises(psycopg.OperationalError, match="no longer allowed"):
            open_session.execute("SELECT 1")
        open_session.close()
        assert f'revision="{second["revision"]}"' in sidecar.metrics()

        # A bundle that does not validate is rejected; enforcement carries on.
        broken = dict(second, revision="0" * 64)
        _publish(bundle_file, broken)
        assert wait_for(lambda: "bundle file rejected" in sidecar.log(), timeout=10)
        assert _can_login(sidecar.dsn(user="bob", token=BOB_TOKEN))
        assert f'revision="{second["revision"]}"' in sidecar.metrics()
        with (
            psycopg.connect(sidecar.dsn(user="bob", token=BOB_TOKEN)) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute("DROP TABLE notes")
    finally:
        sidecar.stop()


def test_a_revoked_token_ends_its_session_while_the_identity_keeps_another(
    upstream: str, tmp_path: Path
) -> None:
    """Attack (a review's finding): revoking a leaked token (a new one issued, the old
    one revoked) ended nothing, because a session was checked only for its identity
    still having *some* usable credential. A session signed in with the revoked token
    kept running. It must end, with a clear reason; the new token's session goes on."""
    name = urlsplit(upstream).path.lstrip("/")
    new_token = "wdn_alice2" + "b2" * 16
    salt = b"0123456789abcdef"  # one salt for an identity's tokens, as the control plane does
    first = build_bundle(name)
    alice = next(i for i in first["identities"] if i["name"] == "alice")
    alice["credentials"] = [
        {"id": "tok_leaked", "scram_sha_256": make_verifier(ALICE_TOKEN, salt=salt),
         "expires_at": None},
        {"id": "tok_new", "scram_sha_256": make_verifier(new_token, salt=salt),
         "expires_at": None},
    ]  # fmt: skip
    sidecar = start_sidecar(tmp_path, upstream, build_bundle(name, identities=first["identities"]))
    try:
        leaked = psycopg.connect(sidecar.dsn(), autocommit=True)
        kept = psycopg.connect(sidecar.dsn(token=new_token), autocommit=True)
        assert leaked.execute("SELECT 1").fetchone() == (1,)
        alice["credentials"] = alice["credentials"][1:]  # the leaked token revoked
        second = build_bundle(name, identities=first["identities"])
        _publish(tmp_path / "bundle.json", second)
        assert wait_for(lambda: f'revision="{second["revision"]}"' in sidecar.metrics(), 10)
        assert not _can_login(sidecar.dsn())
        with pytest.raises(psycopg.OperationalError, match="no longer allowed"):
            leaked.execute("SELECT 1")
        leaked.close()
        assert kept.execute("SELECT 1").fetchone() == (1,)
        kept.close()
    finally:
        sidecar.stop()


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
