"""What an operator copies to start a newly registered sidecar: a config file and a command.

The config is the sidecar's own TOML (``sidecar.config``: every key it names is
one ``load_config`` knows) with what the control plane knows filled in: the
datasource, where the control plane is, the bundle keys to pin. Secrets are never
in it: the token and the upstream role's password are read from files named by
``WARDEN_SIDECAR_TOKEN_FILE`` and ``WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE`` in the
command, so the file can be kept in configuration management and the secrets in
a secret store.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from django.conf import settings

from governance.models import Sidecar
from governance.signing import published_public_keys

CONFIG_DIR = "/etc/warden"
STATE_DIR = "/var/lib/warden-sidecar"
# What the form suggests when the operator does not say which database it guards.
EXAMPLE_UPSTREAM = "postgresql://warden_sidecar@db.internal:5432/{datasource}"
LISTEN_PORT = 6432


@dataclass(frozen=True)
class SidecarSetup:
    config_path: str
    token_path: str
    password_path: str
    config: str
    command: str
    upstream_given: bool


def _toml(value: str | int) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)


def sidecar_setup(*, sidecar: Sidecar, upstream_dsn: str = "") -> SidecarSetup:
    """The config file and the command that start ``sidecar`` (see the module docstring)."""
    name = sidecar.name
    config_path = f"{CONFIG_DIR}/{name}.toml"
    token_path = f"{CONFIG_DIR}/{name}.token"
    password_path = f"{CONFIG_DIR}/{name}.upstream-password"
    upstream = upstream_dsn or EXAMPLE_UPSTREAM.format(datasource=sidecar.datasource.name)
    keys = ",".join(f"{kid}:{public}" for kid, public in published_public_keys().items())
    lines = [
        f"# Warden sidecar {name} for datasource {sidecar.datasource.name}.",
        f"# Start it with: python -m sidecar run --config {config_path}",
        f"# (the token comes from {token_path}, named by WARDEN_SIDECAR_TOKEN_FILE).",
        f"datasource = {_toml(sidecar.datasource.name)}",
        f"sidecar_id = {_toml(name)}",
        f"control_plane_url = {_toml(settings.WARDEN_BASE_URL)}",
        "# The keys bundles are signed with (GET /api/v1/sidecar/keys): pinned here.",
        f"bundle_public_keys = {_toml(keys)}",
        "# The database it guards, as a role of its own that is not privileged",
        "# (docs/deploy.md); its password is read from WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE.",
        f"upstream_dsn = {_toml(upstream)}",
        f"state_dir = {_toml(f'{STATE_DIR}/{name}')}",
        "# Clients connect here, as their identity, with their access token as password.",
        f"listen_host = {_toml('0.0.0.0')}",  # noqa: S104 - a proxy serves the network
        f"listen_port = {_toml(LISTEN_PORT)}",
    ]
    command = " \\\n  ".join(
        [
            f"WARDEN_SIDECAR_TOKEN_FILE={shlex.quote(token_path)}",
            f"WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE={shlex.quote(password_path)}",
            f"python -m sidecar run --config {shlex.quote(config_path)}",
        ]
    )
    return SidecarSetup(
        config_path=config_path,
        token_path=token_path,
        password_path=password_path,
        config="\n".join(lines) + "\n",
        command=command,
        upstream_given=bool(upstream_dsn),
    )
