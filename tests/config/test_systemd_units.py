"""The service units in deploy/systemd (docs/operations.md, "Service units").

``systemd-analyze verify`` loads each as systemd would, drop-ins included, and must say
nothing at all: it exits 0 on an unknown key or a bad value and only warns, so any
output fails. The units name their programs under /opt/warden; verify requires those
to exist, so they are copied with the paths pointed at a scratch virtualenv whose
commands are this checkout's. Then what every unit must keep: a user of its own,
the read-only system, a restart policy, settings from a file and no secret inline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
SERVICES = ["warden-web.service", "warden-worker.service", "warden-beat.service",
            "warden-sidecar@.service"]  # fmt: skip
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian: the systemd package)"
)


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of the [Service] section, every value of a repeated key."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def _installed_copy(tmp_path: Path, units: Path = UNITS) -> Path:
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("uvicorn", "celery"):
        (venv / name).symlink_to(Path(sys.executable).parent / name)
    sidecar = venv / "warden-sidecar"  # what pip install ./sidecar puts there
    sidecar.write_text(f'#!/bin/sh\nexec {sys.executable} -m sidecar "$@"\n')
    sidecar.chmod(0o755)
    target = tmp_path / "units"
    shutil.copytree(units, target)
    for unit in target.rglob("*.service"):
        text = unit.read_text()
        text = text.replace("/opt/warden/sidecar-venv/", f"{venv.parent}/")
        text = text.replace("/opt/warden/venv/", f"{venv.parent}/")
        unit.write_text(text.replace("/opt/warden/app", str(ROOT)))
    return target


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    names = [n.replace("@.", "@crm-prod.") for n in SERVICES]
    return subprocess.run(
        [str(ANALYZE), "verify", "--man=no", *names],
        cwd=directory,
        # The copy alone, drop-ins (warden-web.service.d/tls.conf) included.
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@needs_analyze
def test_systemd_analyze_verify_accepts_every_unit_without_a_word(tmp_path: Path) -> None:
    out = _verify(_installed_copy(tmp_path / "ok"))
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    # The check can fail: a misspelt key is only a warning to systemd, and one here.
    broken = _installed_copy(tmp_path / "broken")
    web = broken / "warden-web.service"
    web.write_text(web.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    out = _verify(broken)
    assert "Unknown key 'ProtectSystm'" in out.stdout + out.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_each_unit_runs_unprivileged_read_only_restarting_with_no_secret_inline(
    name: str,
) -> None:
    unit = directives((UNITS / name).read_text())
    assert unit["User"] and unit["User"][0] not in {"root", "0"}
    assert unit["ProtectSystem"] == ["strict"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["EnvironmentFile"]
    assert unit["ExecStart"][0].startswith("/opt/warden/")
    for assignment in unit.get("Environment", []):
        key, _, value = assignment.partition("=")
        if re.search(r"(SECRET|PASSWORD|TOKEN|KEY|DATABASE_URL|REDIS_URL)$", key):
            pytest.fail(f"{name}: {key} is set inline; give it as a credential and {key}_FILE")
        assert "%d/" in value or not key.endswith("_FILE"), f"{name}: {key} not a credential"


def test_the_units_run_the_documented_commands() -> None:
    web = directives((UNITS / "warden-web.service").read_text())
    assert web["ExecStart"] == [
        "/opt/warden/venv/bin/uvicorn config.asgi:application --no-access-log"
    ]
    sidecar = directives((UNITS / "warden-sidecar@.service").read_text())
    assert sidecar["ExecStart"] == [
        "/opt/warden/sidecar-venv/bin/warden-sidecar run --config /etc/warden/sidecar/%i.toml"
    ]
    # The sidecar's state (bundle cache, audit spool) is where systemd lets it write.
    assert sidecar["StateDirectory"] == ["warden-sidecar/%i"]
    assert "WARDEN_SIDECAR_STATE_DIR=%S/warden-sidecar/%i" in sidecar["Environment"]
    beat = directives((UNITS / "warden-beat.service").read_text())
    assert "--schedule %S/warden-beat/celerybeat-schedule" in beat["ExecStart"][0]
    assert beat["StateDirectory"] == ["warden-beat"]


def test_the_example_sidecar_configuration_loads() -> None:
    config = load_config(
        ROOT / "deploy" / "sidecar.toml.example", env={"WARDEN_SIDECAR_TOKEN": "wsc_example"}
    )
    assert config.datasource == "crm-prod" and config.control_plane_url.startswith("https://")
