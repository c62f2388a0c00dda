"""What an operator copies to start a newly registered sidecar: its files, its config
and the commands that install and start it.

The sidecar runs as an instance of ``deploy/systemd/warden-sidecar@.service`` named
after it. This module is the one place its paths are spelled: the unit and
docs/operations.md use the same ones (tests/governance/test_sidecar_setup.py checks
both). The config, the token and the upstream role's password are files readable by
root only; systemd hands them to the sidecar as credentials, so the config can be kept
in configuration management and the secrets in a secret store, and no secret is ever
in the config itself. The config is the sidecar's own TOML (``sidecar.config``: every
key it names is one ``load_config`` knows) with what the control plane knows filled
in: the datasource, where the control plane is, the bundle keys to pin.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from django.conf import settings

from governance.models import Sidecar
from governance.signing import published_public_keys

# Where an instance's files are (root-only: the unit loads them as credentials).
SIDECAR_CONFIG_DIR = "/etc/warden/sidecar"
CONFIG_SUFFIX = ".toml"
TOKEN_SUFFIX = ".token"  # noqa: S105 - a file name
PASSWORD_SUFFIX = ".upstream-password"  # noqa: S105 - a file name
# Its bundle cache and audit spool: <SIDECAR_STATE_DIR>/<instance>, which the unit's
# StateDirectory= makes for the user warden-sidecar.
SIDECAR_STATE_DIR = "/var/lib/warden-sidecar"
# The sidecar's own virtualenv (pip install ./sidecar) and its command.
SIDECAR_PROGRAM = "/opt/warden/sidecar-venv/bin/warden-sidecar"
SIDECAR_UNIT = "warden-sidecar@.service"
# What the form suggests when the operator does not say which database it guards.
EXAMPLE_UPSTREAM = "postgresql://warden_sidecar@db.internal:5432/{datasource}"
LISTEN_PORT = 6432


@dataclass(frozen=True)
class SidecarPaths:
    config: str
    token: str
    password: str
    state_dir: str


def sidecar_paths(instance: str) -> SidecarPaths:
    """The files of ``warden-sidecar@<instance>``."""
    base = f"{SIDECAR_CONFIG_DIR}/{instance}"
    return SidecarPaths(
        config=base + CONFIG_SUFFIX,
        token=base + TOKEN_SUFFIX,
        password=base + PASSWORD_SUFFIX,
        state_dir=f"{SIDECAR_STATE_DIR}/{instance}",
    )


def install_commands(instance: str) -> str:
    """The files of an instance made empty and root-only, before anything is put in them
    (docs/operations.md quotes these lines)."""
    paths = sidecar_paths(instance)
    return "\n".join(
        [
            f"install -d -m 0700 {SIDECAR_CONFIG_DIR}",
            *(f"install -m 0600 /dev/null {p}" for p in (paths.token, paths.password)),
            f"install -m 0600 /dev/null {paths.config}",
        ]
    )


def start_command(instance: str) -> str:
    return f"systemctl enable --now warden-sidecar@{instance}"


def plain_command(instance: str) -> str:
    """Without systemd: the same files, read by the user that runs it."""
    paths = sidecar_paths(instance)
    return " \\\n  ".join(
        [
            f"WARDEN_SIDECAR_TOKEN_FILE={shlex.quote(paths.token)}",
            f"WARDEN_SIDECAR_UPSTREAM_PASSWORD_FILE={shlex.quote(paths.password)}",
            f"warden-sidecar run --config {shlex.quote(paths.config)}",
        ]
    )


@dataclass(frozen=True)
class SidecarSetup:
    instance: str
    config_path: str
    token_path: str
    password_path: str
    config: str
    install: str
    start: str
    command: str
    upstream_given: bool


def _toml(value: str | int) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return str(value) if isinstance(value, int) else json.dumps(value, ensure_ascii=False)


def _plain_http_lines(url: str) -> list[str]:
    """For a control plane served over plain http: the sidecar refuses that unless told
    (its token, the verifiers in the bundle and the approvals would cross the network
    in clear), so say so, and leave the choice commented out."""
    if not url.startswith("http://"):
        return []
    return [
        "# The control plane is served over plain http: the sidecar refuses it to a",
        "# host that is not loopback. Serve it over https, or accept the risk:",
        "# allow_plain_http = true",
    ]


def sidecar_setup(*, sidecar: Sidecar, upstream_dsn: str = "") -> SidecarSetup:
    """The files and commands that start ``sidecar`` (see the module docstring)."""
    name = sidecar.name
    paths = sidecar_paths(name)
    upstream = upstream_dsn or EXAMPLE_UPSTREAM.format(datasource=sidecar.datasource.name)
    keys = ",".join(f"{kid}:{public}" for kid, public in published_public_keys().items())
    lines = [
        f"# Warden sidecar {name} for datasource {sidecar.datasource.name}:",
        f"# {paths.config}, run by warden-sidecar@{name}.service. The token and",
        "# the upstream password come from their own files (the unit's credentials).",
        f"datasource = {_toml(sidecar.datasource.name)}",
        f"sidecar_id = {_toml(name)}",
        f"control_plane_url = {_toml(settings.WARDEN_BASE_URL)}",
        *_plain_http_lines(settings.WARDEN_BASE_URL),
        "# The keys bundles are signed with (GET /api/v1/sidecar/keys): pinned here.",
        f"bundle_public_keys = {_toml(keys)}",
        "# The database it guards, as a role of its own that is not privileged",
        "# (docs/deploy.md); no password here: it is read from its own file.",
        f"upstream_dsn = {_toml(upstream)}",
        "# The unit sets this itself (WARDEN_SIDECAR_STATE_DIR); without systemd, here.",
        f"state_dir = {_toml(paths.state_dir)}",
        "# Clients connect here, as their identity, with their access token as password.",
        f"listen_host = {_toml('0.0.0.0')}",  # noqa: S104 - a proxy serves the network
        f"listen_port = {_toml(LISTEN_PORT)}",
    ]
    return SidecarSetup(
        instance=name,
        config_path=paths.config,
        token_path=paths.token,
        password_path=paths.password,
        config="\n".join(lines) + "\n",
        install=install_commands(name),
        start=start_command(name),
        command=plain_command(name),
        upstream_given=bool(upstream_dsn),
    )
