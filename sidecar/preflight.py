"""``warden-sidecar check --config FILE``: is this sidecar's configuration usable?

What ``run`` would find out at start, found out before it, one line per check:

- offline (always): the file and the environment load (``sidecar.config``), the pinned
  bundle keys parse, the upstream DSN's TLS files are readable, the listener's
  certificate loads, ``state_dir`` is (or can be made) writable, and the bundle that
  would be enforced first — the offline ``bundle_file``, or the control plane's bundle
  cached in ``state_dir`` — loads in the engine, names this datasource and has not
  expired past the grace period;
- online (unless ``--offline``): the upstream accepts the sidecar's role, which is not
  privileged (``docs/deploy.md``), and says whether hash masking is installed; the
  control plane accepts the token and serves a bundle that verifies against the pinned
  keys. Nothing is written: the fetched bundle is not cached, nothing is reported.

Exit status 0 when nothing failed (warnings allowed), 2 otherwise.

Nothing it prints carries a credential: an upstream DSN that does not parse is reported
without the parser's words (``INVALID_DSN``: they quote part of the URL, which is part of
the password when the password holds a ``/``) and is then not handed to libpq either
(its errors quote DSN fragments too); URLs are shown without user and password; and
every line is scrubbed of the passwords and the token as a last resort.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sidecar.config import ConfigError, SidecarConfig, load_config

Level = Literal["ok", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    message: str
    # Which check this is, for the checks that depend on it ("upstream_dsn").
    subject: str = ""

    def line(self) -> str:
        return f"{self.level}: {self.message}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _writable_dir(path: Path) -> Finding:
    """``state_dir`` itself when it exists, else the nearest ancestor (run creates it)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Finding("error", f"state_dir {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        return Finding("error", f"state_dir {path}: {probe} is not writable by this user")
    if probe != path:
        return Finding("ok", f"state_dir {path} will be created")
    return Finding("ok", f"state_dir {path} is writable")


def _file_bundle(config: SidecarConfig) -> Finding:
    from sidecar.bundle import BundleRejected
    from sidecar.engine import BundleError, load_bundle
    from sidecar.runner import FileBundleSource

    try:
        source = FileBundleSource(
            Path(config.bundle_file),
            datasource=config.datasource,
            grace_seconds=config.bundle_grace_hours * 3600,
        )
        load_bundle(source.current())
    except (OSError, ValueError, BundleRejected, BundleError) as exc:
        return Finding("error", f"bundle_file {config.bundle_file}: {_first_line(exc)}")
    document = source.current()
    return Finding(
        "ok",
        f"bundle_file {config.bundle_file}: revision {str(document.get('revision'))[:12]}, "
        f"{len(document.get('identities') or [])} identities",
    )


def _cached_bundle(config: SidecarConfig) -> Finding:
    from sidecar.bundle import CACHE_FILE, BundleRejected, envelope_verify, parse_public_keys

    path = Path(config.state_dir) / CACHE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Finding("ok", "no cached bundle yet: run waits for the control plane's")
    except OSError as exc:
        return Finding("error", f"cached bundle {path}: {_first_line(exc)}")
    try:
        keys = parse_public_keys(config.bundle_public_keys)
        verified = envelope_verify(raw, keys, datasource=config.datasource)
    except (ValueError, BundleRejected) as exc:
        return Finding(
            "warning", f"cached bundle {path} is not usable ({_first_line(exc)}): run waits "
            "for a new one from the control plane",
        )  # fmt: skip
    return Finding("ok", f"cached bundle: revision {verified.revision[:12]}")


def offline_checks(config: SidecarConfig) -> list[Finding]:
    from sidecar.proxy.upstream import INVALID_DSN, UpstreamTarget
    from sidecar.runner import bundle_client

    findings = [Finding("ok", f"configuration loads (datasource {config.datasource})")]
    if config.control_plane_url:
        try:
            bundle_client(config)
            findings.append(Finding("ok", "bundle_public_keys parse"))
        except ConfigError as exc:
            findings.append(Finding("error", str(exc)))
    try:
        UpstreamTarget.from_dsn(config.upstream_dsn, password=config.upstream_password)
        findings.append(Finding("ok", "upstream_dsn parses (TLS files readable)"))
    except (OSError, ValueError) as exc:
        reason = _first_line(exc)
        message = reason if reason == INVALID_DSN else f"upstream_dsn: {reason}"
        findings.append(Finding("error", message, subject="upstream_dsn"))
    if config.tls_cert and config.tls_key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls_cert, config.tls_key
            )
            findings.append(Finding("ok", "tls_cert and tls_key load"))
        except (OSError, ssl.SSLError) as exc:
            findings.append(Finding("error", f"tls_cert/tls_key: {_first_line(exc)}"))
    findings.append(_writable_dir(Path(config.state_dir)))
    findings.append(_file_bundle(config) if config.bundle_file else _cached_bundle(config))
    return findings


def _upstream(config: SidecarConfig) -> list[Finding]:
    import psycopg

    from sidecar import masking_db
    from sidecar.proxy.state import PRIVILEGES_SQL
    from sidecar.scanner.scan import connect_kwargs

    try:
        kwargs = connect_kwargs(config.upstream_dsn, password=config.upstream_password)
        with psycopg.connect(config.upstream_dsn, **kwargs) as conn:
            row = conn.execute("SELECT current_user, current_database()").fetchone()
            privileged = conn.execute(PRIVILEGES_SQL).fetchone()
            masking = masking_db.status(conn)
            jit = conn.execute("SELECT current_setting('jit', true)").fetchone()
    except psycopg.Error as exc:
        return [Finding("error", f"upstream: cannot connect: {_first_line(exc)}")]
    assert row is not None
    findings = [Finding("ok", f"upstream: connected as {row[0]} to database {row[1]}")]
    found = [p for p in str(privileged[0] if privileged else "").split(",") if p]
    if found and not config.allow_privileged_upstream:
        findings.append(
            Finding(
                "error",
                f"upstream: the role is privileged ({', '.join(found)}); run refuses to start. "
                "Give the sidecar an unprivileged role (docs/deploy.md)",
            )
        )
    elif found:
        findings.append(Finding("warning", f"upstream: privileged role allowed ({found})"))
    if jit is not None and jit[0] == "on":
        # Masked JSON and array paths are planned at a cost that passes every JIT
        # threshold: compiled first, hundreds of milliseconds a statement.
        findings.append(
            Finding(
                "warning",
                f"upstream: jit is on for role {row[0]}: reads of masked JSON or array paths "
                f"are JIT-compiled first (about 0.5 s each); ALTER ROLE {row[0]} SET jit = off "
                "(docs/deploy.md)",
            )
        )
    if masking.usable:
        findings.append(Finding("ok", "upstream: hash masking is usable"))
    else:
        findings.append(
            Finding(
                "warning",
                f"upstream: hash masking is not usable ({masking.detail}): hash-masked "
                "columns are refused until `install-masking` (docs/masking.md)",
            )
        )
    return findings


async def _control_plane(config: SidecarConfig) -> Finding:
    from sidecar.bundle import BUNDLE_PATH, BundleRejected, envelope_verify, parse_public_keys
    from sidecar.http import ControlPlane, HttpError, url_for_display

    plane = ControlPlane(config.control_plane_url, config.token or "")
    try:
        response = await plane.call(
            "GET", BUNDLE_PATH, headers={"Accept": "application/json"}, timeout=15
        )
    except HttpError as exc:
        return Finding("error", f"control plane {url_for_display(config.control_plane_url)}: {exc}")
    if response.status in (401, 403):
        return Finding("error", f"control plane: the token is refused (HTTP {response.status})")
    if response.status != 200:
        return Finding("error", f"control plane: HTTP {response.status} for {BUNDLE_PATH}")
    try:
        verified = envelope_verify(
            response.body,
            parse_public_keys(config.bundle_public_keys),
            datasource=config.datasource,
        )
    except (ValueError, BundleRejected) as exc:
        return Finding("error", f"control plane: its bundle is refused: {_first_line(exc)}")
    return Finding(
        "ok",
        f"control plane: bundle revision {verified.revision[:12]} verifies (key {verified.key_id})",
    )


def online_checks(config: SidecarConfig, *, upstream: bool = True) -> list[Finding]:
    """``upstream``: False when its DSN did not parse, so libpq never sees it."""
    findings = _upstream(config) if upstream else []
    if config.control_plane_url:
        findings.append(asyncio.run(_control_plane(config)))
    return findings


def _secrets(config: SidecarConfig) -> list[str]:
    """What must never be printed: the passwords (given, and in the DSN) and the tokens."""
    from urllib.parse import unquote, urlsplit

    found = [config.upstream_password, config.token, config.audit_token, config.mcp_token]
    for url in (config.upstream_dsn, config.control_plane_url):
        try:
            password = urlsplit(url or "").password
        except ValueError:
            continue
        found += [password, unquote(password or "")]
    # Longest first, so a secret containing another is replaced whole.
    return sorted({s for s in found if s and len(s) >= 4}, key=len, reverse=True)


def _scrubbed(line: str, secrets: list[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, "***")
    return line


def check(path: str | None, *, offline: bool, emit: Callable[[str], Any] = print) -> int:
    """Run the checks, ``emit`` one line each; 0 when none failed, else 2."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        emit(f"error: {exc}")
        return 2
    findings = offline_checks(config)
    if not offline:
        parsed = not any(f.subject == "upstream_dsn" and f.level == "error" for f in findings)
        findings += online_checks(config, upstream=parsed)
    secrets = _secrets(config)
    for finding in findings:
        emit(_scrubbed(finding.line(), secrets))
    return 2 if any(f.level == "error" for f in findings) else 0
