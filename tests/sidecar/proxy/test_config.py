"""Sidecar configuration: file, environment overrides, clear errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ConfigError, load_config
from tests.sidecar.proxy.conftest import build_bundle, one_relay


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        'upstream_dsn = "postgresql://warden@db/app"\nbundle_file = "b.json"\n'
        'state_dir = "state"\nlisten_port = 7000\ndatasource = "app"\n'
    )
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = load_config(
        path,
        env={
            "WARDEN_SIDECAR_LISTEN_PORT": "7001",
            "WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE": str(secret),
            "WARDEN_SIDECAR_CLEARTEXT_OVER_TLS": "true",
        },
    )
    assert config.listen_port == 7001
    assert config.upstream_password == "s3cret"
    assert config.cleartext_over_tls is True
    assert config.bundle_file == "b.json"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('bundle_file = "b"\nstate_dir = "s"\n', {}, "upstream_dsn"),
        ('upstream_dsn = "x"\nbundle_file = "b"\nstate_dir = "s"\nbogus = 1\n', {}, "bogus"),
        (
            'upstream_dsn = "x"\nbundle_file = "b"\nstate_dir = "s"\ndatasource = "d"\n',
            {"WARDEN_SIDECAR_LISTEN_PORT": "many"},
            "listen_port",
        ),
        (
            'upstream_dsn = "x"\nbundle_file = "b"\nstate_dir = "s"\ndatasource = "d"\n'
            'tls_cert = "c"\n',
            {},
            "tls_key",
        ),
        ('upstream_dsn = "x"\nbundle_file = ', {}, "malformed"),
        (
            'upstream_dsn = "x"\nbundle_file = "b"\nstate_dir = "s"\ndatasource = "d"\n',
            {"WARDEN_SIDECAR_WORKERS": "0"},
            "workers must be between 1 and 64",
        ),
        (
            'upstream_dsn = "x"\nbundle_file = "b"\nstate_dir = "s"\ndatasource = "d"\n'
            "bundle_file_interval = 0\n",
            {},
            "bundle_file_interval must be a positive number",
        ),
        (
            'upstream_dsn = "x"\nbundle_file = "b"\nstate_dir = "s"\ndatasource = "d"\n',
            {"WARDEN_SIDECAR_BUNDLE_FILE_INTERVAL": "soon"},
            "bundle_file_interval must be a number",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)


def test_the_bundle_file_is_read_every_bundle_file_interval(tmp_path: Path) -> None:
    from sidecar.metrics import Metrics
    from sidecar.runner import _first_file_bundle

    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(build_bundle("app")))
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'upstream_dsn = "postgresql://warden@db/app"\nbundle_file = "{bundle}"\n'
        'state_dir = "state"\ndatasource = "app"\n'
    )
    assert load_config(path, env={}).bundle_file_interval == 1.0  # the default
    config = load_config(path, env={"WARDEN_SIDECAR_BUNDLE_FILE_INTERVAL": "0.25"})
    assert config.bundle_file_interval == 0.25

    async def first() -> Any:
        return await _first_file_bundle(config, Metrics(), asyncio.Event())

    source = asyncio.run(first())
    assert source is not None and source.interval == 0.25
    assert source.current()["datasource"]["name"] == "app"


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
