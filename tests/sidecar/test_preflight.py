"""``python -m sidecar check --config FILE``: what ``run`` would refuse, said before it
(``sidecar/preflight.py``). The offline checks and the upstream's; the control plane's
are in ``tests/sidecar/bundle/test_pinning.py`` (they need a running one)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from sidecar.preflight import check
from tests.livesrv import free_port

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "tests" / "fixtures" / "bundles" / "demo-production.json"  # datasource "demo"


def _write(tmp_path: Path, **values: object) -> Path:
    config = {
        "upstream_dsn": f"postgresql://nobody@127.0.0.1:{free_port()}/crm",
        "state_dir": str(tmp_path / "state"),
        "datasource": "demo",
        "bundle_file": str(BUNDLE),
        **values,
    }
    path = tmp_path / "sidecar.json"
    path.write_text(json.dumps(config))
    return path


def _check(path: Path, *, offline: bool) -> tuple[int, list[str]]:
    lines: list[str] = []
    return check(str(path), offline=offline, emit=lines.append), lines


def test_an_offline_configuration_passes_and_names_the_bundle_it_would_enforce(
    tmp_path: Path,
) -> None:
    status, lines = _check(_write(tmp_path), offline=True)
    assert status == 0, lines
    assert all(line.startswith("ok: ") for line in lines), lines
    assert any("6 identities" in line for line in lines), lines
    assert not (tmp_path / "state").exists()  # checking writes nothing


def test_what_run_would_refuse_fails_the_check_with_a_reason(tmp_path: Path) -> None:
    status, lines = _check(_write(tmp_path, datasource="crm-prod"), offline=True)
    assert status == 2
    assert "error: bundle_file" in "\n".join(lines) and "not 'crm-prod'" in "\n".join(lines)
    (tmp_path / "a-file").write_text("")
    status, lines = _check(_write(tmp_path, state_dir=str(tmp_path / "a-file" / "s")), offline=True)
    assert status == 2 and any("is not a directory" in line for line in lines), lines
    status, lines = _check(
        _write(tmp_path, bundle_file="", control_plane_url="http://127.0.0.1:9", token="wsc_x",
               bundle_public_keys="k1:not-base64"),
        offline=True,
    )  # fmt: skip
    assert status == 2 and any(line.startswith("error: bundle_public_keys") for line in lines)
    status, lines = _check(_write(tmp_path, listen_prot=6432), offline=True)
    assert (status, lines) == (2, ["error: unknown config keys: listen_prot"])


def test_online_it_logs_in_to_the_upstream_and_refuses_a_privileged_role(tmp_path: Path) -> None:
    closed = _write(tmp_path)
    status, lines = _check(closed, offline=False)
    assert status == 2 and lines[-1].startswith("error: upstream: cannot connect"), lines
    # The tests' server as its administrator: a superuser, which run refuses.
    parts = urlsplit(os.environ["DATABASE_URL"])
    admin = urlunsplit(parts._replace(path="/postgres"))
    status, lines = _check(_write(tmp_path, upstream_dsn=admin), offline=False)
    text = "\n".join(lines)
    assert status == 2 and "error: upstream: the role is privileged (SUPERUSER" in text, text
    assert "warning: upstream: hash masking is not usable" in text
    # The server's default: masked JSON paths would be JIT-compiled first.
    assert "warning: upstream: jit is on for role postgres" in text, text
    status, lines = _check(
        _write(tmp_path, upstream_dsn=admin, allow_privileged_upstream=True), offline=False
    )
    assert status == 0 and "warning: upstream: privileged role allowed" in "\n".join(lines)
    # A database whose sessions run without JIT (as the guide's role does): no warning.
    name = f"warden_preflight_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'ALTER DATABASE "{name}" SET jit = off')
    try:
        no_jit = urlunsplit(parts._replace(path=f"/{name}"))
        status, lines = _check(
            _write(tmp_path, upstream_dsn=no_jit, allow_privileged_upstream=True), offline=False
        )
        assert status == 0 and not any("jit is on" in line for line in lines), lines
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}"')


def test_the_command_line_exits_2_and_keeps_the_decision_mode() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", "/nonexistent.toml"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "error: cannot read config file" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--bundle", str(BUNDLE)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "--bundle needs --identity and --sql" in out.stderr


CANARY = "Zq7canary"  # in every password below; no output may contain it


def test_no_check_prints_a_password_or_passes_an_unparsed_dsn_to_libpq(tmp_path: Path) -> None:
    from sidecar.proxy.upstream import INVALID_DSN

    key = "k1:" + base64.b64encode(bytes(32)).decode()
    # A "/" in the password ends the URL's host early: urllib then reads the password's
    # first half as the port and says so, quoting it; libpq would quote it too.
    config = _write(
        tmp_path,
        upstream_dsn=f"postgresql://u:{CANARY}/ret@127.0.0.1:{free_port()}/db",
        bundle_file="",
        control_plane_url=f"http://cp:{CANARY}2@127.0.0.1:{free_port()}",
        token="wsc_x",
        bundle_public_keys=key,
    )
    status, lines = _check(config, offline=False)
    text = "\n".join(lines)
    assert status == 2 and f"error: {INVALID_DSN}" in lines, text
    assert not any(line.startswith("error: upstream:") for line in lines), text  # not tried
    assert "error: control plane http://127.0.0.1:" in text, text  # shown without cp:…@
    assert CANARY.lower() not in text.lower()
    # The same DSN stops `run` with the same words, before anything starts.
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and INVALID_DSN in out.stderr, out.stderr
    assert CANARY.lower() not in (out.stdout + out.stderr).lower()
    # A control plane URL that does not parse is refused by the loader, unquoted.
    bad_url = _write(tmp_path, bundle_file="", control_plane_url=f"http://cp:{CANARY}/x@h",
                     token="wsc_x", bundle_public_keys=key)  # fmt: skip
    status, lines = _check(bad_url, offline=True)
    assert status == 2 and lines == [
        "error: control_plane_url is not a valid URL; percent-encode special characters in it"
    ]
    # A DSN that parses, with the password in it, connects and fails without naming it.
    status, lines = _check(
        _write(tmp_path, upstream_dsn=f"postgresql://u:{CANARY}@127.0.0.1:{free_port()}/db"),
        offline=False,
    )
    assert status == 2 and lines[-1].startswith("error: upstream: cannot connect"), lines
    assert CANARY.lower() not in "\n".join(lines).lower()
