"""Sidecar configuration for the control-plane mode: env-only works, bad combinations fail."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sidecar.config import ConfigError, load_config
from sidecar.runner import bundle_client


def _pin() -> str:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return f"k1:{base64.b64encode(public).decode()}"


def _env(**extra: str) -> dict[str, str]:
    base = {
        "WARDEN_SIDECAR_UPSTREAM_DSN": "postgresql://warden@db/app",
        "WARDEN_SIDECAR_STATE_DIR": "state",
        "WARDEN_SIDECAR_DATASOURCE": "crm-prod",
        "WARDEN_SIDECAR_CONTROL_PLANE_URL": "http://cp.example:8000",
        "WARDEN_SIDECAR_BUNDLE_PUBLIC_KEYS": _pin(),
        # An internal network the operator vouches for (test_bad_combinations: refused
        # without it).
        "WARDEN_SIDECAR_ALLOW_PLAIN_HTTP": "true",
    }
    return {**base, **extra}


def test_environment_alone_configures_a_control_plane_sidecar(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wsc_secret\n")
    config = load_config(env=_env(WARDEN_SIDECAR_TOKEN_FILE=str(token_file)))
    assert (config.control_plane_url, config.token, config.bundle_file) == (
        "http://cp.example:8000",
        "wsc_secret",
        "",
    )
    client = bundle_client(config)
    assert client.control_plane.url == "http://cp.example:8000"
    assert set(client.keys) == {"k1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WARDEN_SIDECAR_TOKEN": "t", "WARDEN_SIDECAR_BUNDLE_FILE": "b.json"}, "exactly one"),
        ({}, "token is required"),
        ({"WARDEN_SIDECAR_TOKEN": "t", "WARDEN_SIDECAR_BUNDLE_PUBLIC_KEYS": ""}, "public_keys"),
        ({"WARDEN_SIDECAR_TOKEN": "t", "WARDEN_SIDECAR_CONTROL_PLANE_URL": "cp:80"}, "http"),
        ({"WARDEN_SIDECAR_TOKEN": "t", "WARDEN_SIDECAR_HEARTBEAT_INTERVAL": "0"}, "heartbeat"),
        # Plain http to a host on the network: the token and verifiers in clear (not
        # 0.0.0.0: that names this host).
        ({"WARDEN_SIDECAR_TOKEN": "t", "WARDEN_SIDECAR_ALLOW_PLAIN_HTTP": "false"}, "plain http"),
        (
            {
                "WARDEN_SIDECAR_TOKEN": "t",
                "WARDEN_SIDECAR_CONTROL_PLANE_URL": "https://cp.example",
                "WARDEN_SIDECAR_AUDIT_URL": "http://10.0.0.5/a",
                "WARDEN_SIDECAR_ALLOW_PLAIN_HTTP": "false",
            },
            "audit_url is plain http",
        ),
    ],
)
def test_bad_combinations_are_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=_env(**env))


def test_plain_http_to_this_host_is_allowed() -> None:
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://0.0.0.0:8000"):
        env = _env(WARDEN_SIDECAR_TOKEN="t", WARDEN_SIDECAR_CONTROL_PLANE_URL=url)
        env["WARDEN_SIDECAR_ALLOW_PLAIN_HTTP"] = "false"
        assert load_config(env=env).control_plane_url == url


def test_neither_source_is_refused() -> None:
    env = _env(WARDEN_SIDECAR_TOKEN="t", WARDEN_SIDECAR_CONTROL_PLANE_URL="")
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(env=env)


def test_a_malformed_pinned_key_is_a_config_error() -> None:
    config = load_config(
        env=_env(WARDEN_SIDECAR_TOKEN="t", WARDEN_SIDECAR_BUNDLE_PUBLIC_KEYS="k1:not-base64!")
    )
    with pytest.raises(ConfigError, match="bundle_public_keys"):
        bundle_client(config)
