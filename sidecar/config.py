"""Sidecar configuration: a TOML or JSON file, overridden by environment variables.

Every key can be set as ``WARDEN_SIDECAR_<KEY>`` (upper case), and secrets also
from ``WARDEN_SIDECAR_<KEY>_FILE``. A missing or malformed value raises
``ConfigError`` naming the key at start-up, not later. The upstream password
may live in the DSN or, better, in ``upstream_password`` (file or env).
Policy comes from the control plane (``control_plane_url`` + ``token`` +
``bundle_public_keys``) or, as an explicit offline mode, from ``bundle_file``:
exactly one of the two. Either way ``datasource`` names the one datasource whose
bundles this sidecar accepts (a bundle naming another is rejected).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import tomllib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.http import INVALID_URL, url_for_display


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    upstream_dsn: str
    state_dir: str
    # The datasource this sidecar enforces: a bundle naming any other is rejected.
    datasource: str
    bundle_file: str = ""  # offline mode only: a local bundle JSON instead of the control plane
    control_plane_url: str = ""  # e.g. http://127.0.0.1:8000; bundles, audit and heartbeats
    token: str | None = None  # the sidecar's own token (wsc_...), from the control plane
    bundle_public_keys: str = ""  # pinned "<key id>:<base64>" items, comma-separated
    bundle_wait: int = 55  # long-poll seconds
    bundle_max_backoff: int = 30
    # How long past its expires_at the last bundle is still enforced while no newer
    # one can be had; after that new sessions are refused (live ones continue).
    bundle_grace_hours: float = 72.0
    # Offline mode: seconds between reads of bundle_file (a changed file is enforced
    # at the next read; a rejected one is read again then).
    bundle_file_interval: float = 1.0
    heartbeat_interval: int = 10  # seconds between heartbeats
    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    # Processes serving the one port (SO_REUSEPORT); 1 serves from this process alone.
    workers: int = 1
    database: str = ""  # the name clients connect to; default: the upstream's
    upstream_password: str | None = None
    sidecar_id: str = "sidecar"
    tls_cert: str | None = None
    tls_key: str | None = None
    cleartext_over_tls: bool = False
    metrics_listen: str | None = None  # "host:port"; port 0 picks a free one
    ready_file: str | None = None  # written with the bound ports once serving
    max_message_bytes: int = 256 * 1024 * 1024  # any message (COPY data included)
    # Query and Parse messages: larger ones are refused with an error, the session kept.
    max_statement_bytes: int = 8 * 1024 * 1024
    # The upstream role must not be a superuser, BYPASSRLS, CREATEROLE or a member of
    # the file, program or all-data roles; true allows it (logged at every start).
    allow_privileged_upstream: bool = False
    # control_plane_url, audit_url and approvals_url in plain http:// to a host that
    # is not loopback carry the sidecar's token, every identity's verifier (in the
    # bundle) and the approvals in clear: refused unless this is true.
    allow_plain_http: bool = False
    spool_max_bytes: int = 512 * 1024 * 1024
    spool_full_policy: str = "refuse"
    # strict: each statement's intent is fsynced (group commit) before it may run, so
    # a crash loses no record; batched: records are fsynced every 0.1 s; auto: strict
    # when the bundle's environment is production.
    audit_durability: str = "auto"
    audit_url: str | None = None  # POST target for audit batches (control plane)
    audit_token: str | None = None
    # Approvals API for held statements; default: <control_plane_url>/api/v1/sidecar/approvals.
    # With neither, a held statement is refused (approval cannot be requested).
    approvals_url: str | None = None
    approvals_timeout: int = 10  # seconds for one approvals API call (plus any long-poll wait)
    # Relay the hot messages (a prepared statement's Bind/Execute/Sync, the server's
    # rows and completions) in C when the native relay is built; false: Python only.
    native_relay: bool = True
    log_level: str = "INFO"
    # Classify columns by sampling the upstream (at start, on schedule, on request).
    scan_enabled: bool = True
    # The MCP server (docs/mcp.md; needs the sidecar's ``mcp`` extra): "host:port" of
    # its streamable HTTP listener in this process (port 0 picks a free one; TLS with
    # tls_cert/tls_key); empty: none. ``mcp_token``: the agent's access token for
    # ``python -m sidecar mcp`` (stdio).
    mcp_listen: str | None = None
    mcp_token: str | None = None
    mcp_max_rows: int = 1000  # rows a query returns at most (the result says truncated)
    mcp_max_result_bytes: int = 1024 * 1024  # JSON size of a result's rows at most
    # The most the database may send in answer to one statement of an MCP session
    # (the driver holds it whole); 0: 8 x mcp_max_result_bytes, at least 64 MiB.
    mcp_answer_bytes: int = 0
    mcp_statement_timeout_ms: int = 30_000  # statement_timeout of every MCP session
    mcp_calls_per_minute: int = 120  # per identity, all its MCP sessions together
    mcp_concurrent_calls: int = 4  # per identity, in flight at once
    mcp_session_idle_seconds: int = 900  # an HTTP session unused this long is closed


# Each worker long-polls the control plane and holds its own upstream connections;
# far past the number of cores that only costs.
MAX_WORKERS = 64

_SECRETS = {"upstream_password", "audit_token", "upstream_dsn", "token", "mcp_token"}


def _plain_http_over_network(url: str) -> bool:
    """``url`` is http:// to a host other than ``localhost`` or a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True
    # 0.0.0.0 and :: reach this host (a control plane told to listen on every
    # address, as `make run` with WARDEN_HOST=0.0.0.0 names itself).
    return not (ip.is_loopback or ip.is_unspecified)


def _coerce(name: str, raw: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        value = str(raw).strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{name} must be a boolean, got {raw!r}")
    if isinstance(default, float):
        try:
            number = float(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {raw!r}")
        return number
    if isinstance(default, int):
        try:
            return int(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    return None if raw is None else str(raw)


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> SidecarConfig:
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from exc
        try:
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {p} is malformed: {exc}") from exc
    known = {f.name: f for f in fields(SidecarConfig)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    for name in known:
        env_name = f"WARDEN_SIDECAR_{name.upper()}"
        if name in _SECRETS and env.get(f"{env_name}_FILE"):
            try:
                data[name] = Path(env[f"{env_name}_FILE"]).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{env_name}_FILE: cannot read: {exc}") from exc
        elif env_name in env:
            data[name] = env[env_name]
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name in data:
            values[name] = _coerce(name, data[name], None if f.default is MISSING else f.default)
        elif f.default is MISSING:
            raise ConfigError(f"missing required config key {name}")
    config = SidecarConfig(**values)
    if config.spool_full_policy not in ("refuse", "drop"):
        raise ConfigError("spool_full_policy must be 'refuse' or 'drop'")
    if config.audit_durability not in ("auto", "strict", "batched"):
        raise ConfigError("audit_durability must be 'auto', 'strict' or 'batched'")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("tls_cert and tls_key must be given together")
    if bool(config.bundle_file) == bool(config.control_plane_url):
        raise ConfigError(
            "set exactly one of control_plane_url (normal) and bundle_file (offline mode)"
        )
    for name in ("control_plane_url", "audit_url", "approvals_url"):
        url = getattr(config, name)
        # The parser's own error quotes the URL's text; never say more than this.
        if url and url_for_display(url) == f"({INVALID_URL})":
            raise ConfigError(f"{name} is not a valid URL; percent-encode special characters in it")
        if url and _plain_http_over_network(url) and not config.allow_plain_http:
            raise ConfigError(
                f"{name} is plain http:// to a host that is not loopback: the sidecar's "
                "token, the bundle's credential verifiers and the approvals would cross "
                "the network in clear; use https://, or set allow_plain_http = true"
            )
    if config.control_plane_url:
        if not config.control_plane_url.startswith(("http://", "https://")):
            raise ConfigError("control_plane_url must be an http(s) URL")
        if not config.token:
            raise ConfigError("token is required with control_plane_url")
        if not config.bundle_public_keys:
            raise ConfigError("bundle_public_keys is required with control_plane_url")
    if not config.datasource.strip():
        raise ConfigError("datasource must name the datasource this sidecar enforces")
    if config.bundle_grace_hours < 0:
        raise ConfigError("bundle_grace_hours must not be negative")
    if config.bundle_file_interval <= 0:
        raise ConfigError("bundle_file_interval must be a positive number of seconds")
    if not 1 <= config.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be between 1 and {MAX_WORKERS}")
    if config.heartbeat_interval < 1:
        raise ConfigError("heartbeat_interval must be at least 1 second")
    if config.mcp_answer_bytes and config.mcp_answer_bytes < 2 * config.mcp_max_result_bytes:
        # A read keeps up to mcp_max_result_bytes and stops: the rows in flight when it
        # cancels still arrive, and must not end the session.
        raise ConfigError("mcp_answer_bytes must be at least twice mcp_max_result_bytes")
    if config.mcp_listen and ":" not in config.mcp_listen:
        raise ConfigError('mcp_listen must be "host:port"')
    for name in (
        "mcp_max_rows",
        "mcp_max_result_bytes",
        "mcp_statement_timeout_ms",
        "mcp_calls_per_minute",
        "mcp_concurrent_calls",
        "mcp_session_idle_seconds",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config.mcp_listen and config.workers > 1:
        raise ConfigError("mcp_listen needs workers = 1 (the MCP server runs in one process)")
    return config
