"""The service units in deploy/systemd (docs/operations.md, "Service units").

``systemd-analyze verify`` loads each as systemd would, drop-ins included, and must say
nothing at all: it exits 0 on an unknown key or a bad value and only warns, so any
output fails. The units name their programs under /opt/warden; verify requires those
to exist, so they are copied with the paths pointed at a scratch virtualenv whose
commands are this checkout's. Then what every unit must keep: a user of its own,
the read-only system, a restart policy, settings from a file and no secret inline;
every file its process reads itself a credential (docs/operations.md makes the files
under /etc/warden root-only), and the sidecar's paths those of the registration page
(governance/sidecar_setup.py).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from governance.sidecar_setup import (
    CONFIG_SUFFIX,
    SIDECAR_CONFIG_DIR,
    SIDECAR_PROGRAM,
    SIDECAR_STATE_DIR,
    install_commands,
    sidecar_paths,
)
from sidecar.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
OPERATIONS = ROOT / "docs" / "operations.md"
INSTANCE = "crm-prod"  # the sidecar instance docs/operations.md installs
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
        f"{SIDECAR_PROGRAM} run --config ${{CREDENTIALS_DIRECTORY}}/config"
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


def documented_files() -> dict[str, tuple[int, str, str]]:
    """What the shell blocks of docs/operations.md make under /etc/warden: path ->
    (mode, owner, group), from ``install [-d] [-o U] [-g G] -m MODE ...`` and
    ``(umask 077; ... > PATH)`` lines (owner and group root unless given)."""
    made: dict[str, tuple[int, str, str]] = {}
    for block in re.findall(r"```sh\n(.*?)```", OPERATIONS.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            umask = re.match(r"\(umask 077; .* > (\S+)\)$", line.strip())
            if umask:
                made[umask.group(1)] = (0o600, "root", "root")
                continue
            words = shlex.split(line, comments=True)
            if not words or words[0] != "install":
                continue
            options = {"-o": "root", "-g": "root", "-m": "0755"}
            paths = []
            words = iter(words[1:])
            for word in words:
                if word in options:
                    options[word] = next(words)
                elif not word.startswith("-"):
                    paths.append(word)
            mode = (int(options["-m"], 8), options["-o"], options["-g"])
            targets = paths if "-d" in line.split() else paths[-1:]
            for target in targets:
                if target.startswith("/etc/warden"):
                    made[target] = mode
    return made


def _readable(path: str, user: str, group: str, made: dict[str, tuple[int, str, str]]) -> bool:
    """Whether ``user`` (in ``group``) may read ``path`` as the docs make it and every
    directory above it (what the docs do not make is taken to be root's, 0755)."""
    parts = Path(path).parts
    for depth in range(2, len(parts) + 1):
        here = str(Path(*parts[:depth]))
        mode, owner, owning_group = made.get(here, (0o755, "root", "root"))
        need = 0o4 if depth == len(parts) else 0o1  # read the file, search the directories
        shift = 6 if owner == user else 3 if owning_group == group else 0
        if not (mode >> shift) & need:
            return False
    return True


def files_read_unreadable(text: str, made: dict[str, tuple[int, str, str]]) -> list[str]:
    """The files a unit's process opens itself (its command's arguments, the paths in its
    environment) that are neither its credentials, nor its state directory, nor the
    installed code, nor readable by its user as the docs make them."""
    unit = directives(text)
    user, group = unit["User"][0], unit["Group"][0]
    credentials = {value.split(":", 1)[0] for value in unit.get("LoadCredential", [])}
    states = unit.get("StateDirectory", [])
    words = shlex.split(unit["ExecStart"][0])[1:]
    words += [v.partition("=")[2] for v in unit.get("Environment", [])]
    bad = []
    for word in words:
        for prefix in ("%d/", "${CREDENTIALS_DIRECTORY}/"):
            if word.startswith(prefix):
                assert word.removeprefix(prefix) in credentials, f"{word}: no such credential"
                break
        else:
            if word.startswith("%S/"):
                assert any(word[3:].startswith(s) for s in states), f"{word}: not its state"
            elif word.startswith("/") and not word.startswith("/opt/warden/"):
                path = word.replace("%i", INSTANCE)
                if not _readable(path, user, group, made):
                    bad.append(path)
    return bad


@pytest.mark.parametrize("name", SERVICES)
def test_what_a_unit_reads_is_a_credential_and_every_credential_is_a_root_only_file(
    name: str,
) -> None:
    made = documented_files()
    text = (UNITS / name).read_text()
    assert files_read_unreadable(text, made) == []
    for value in directives(text)["LoadCredential"]:
        source = value.split(":", 1)[1].replace("%i", INSTANCE)
        assert source in made, f"{name}: docs/operations.md never makes {source}"
        mode, owner, _ = made[source]
        assert (mode & 0o077, owner) == (0, "root"), f"{source} is not root-only: {mode:o}"


def test_the_check_can_fail_a_unit_reading_a_root_only_file_itself() -> None:
    # The sidecar unit as it was: run as warden-sidecar, reading its 0600 root config.
    text = (
        (UNITS / "warden-sidecar@.service")
        .read_text()
        .replace("--config ${CREDENTIALS_DIRECTORY}/config", "--config /etc/warden/sidecar/%i.toml")
    )
    made = documented_files()
    assert made["/etc/warden/sidecar/crm-prod.toml"] == (0o600, "root", "root")
    assert files_read_unreadable(text, made) == ["/etc/warden/sidecar/crm-prod.toml"]
    # Made readable by its group (and the directory searchable), it would pass.
    made["/etc/warden"] = made["/etc/warden/sidecar"] = (0o750, "root", "warden-sidecar")
    made["/etc/warden/sidecar/crm-prod.toml"] = (0o640, "root", "warden-sidecar")
    assert files_read_unreadable(text, made) == []


def test_the_sidecar_unit_the_docs_and_the_registration_page_use_the_same_paths() -> None:
    unit = directives((UNITS / "warden-sidecar@.service").read_text())
    paths = sidecar_paths("%i")
    assert sorted(unit["LoadCredential"]) == sorted(
        [f"config:{paths.config}", f"token:{paths.token}",
         f"upstream-password:{paths.password}"]
    )  # fmt: skip
    assert unit["ExecStart"][0].split()[0] == SIDECAR_PROGRAM
    assert (
        f"WARDEN_SIDECAR_STATE_DIR=%S/{Path(paths.state_dir).relative_to('/var/lib')}"
        in (unit["Environment"])
    )
    assert paths.state_dir.startswith(SIDECAR_STATE_DIR + "/")
    docs = OPERATIONS.read_text()
    # The page's lines, for the instance the docs install, are the docs' lines.
    assert install_commands(INSTANCE) in docs
    assert f"systemctl enable --now warden-sidecar@{INSTANCE}" in docs
    assert SIDECAR_PROGRAM in docs and f"{SIDECAR_STATE_DIR}/{INSTANCE}" in docs
    example = load_config(
        ROOT / "deploy" / "sidecar.toml.example", env={"WARDEN_SIDECAR_TOKEN": "x"}
    )
    assert example.state_dir == sidecar_paths(example.datasource).state_dir
    example_text = (ROOT / "deploy" / "sidecar.toml.example").read_text()
    assert f"{SIDECAR_CONFIG_DIR}/<instance>{CONFIG_SUFFIX}" in example_text


def test_warden_manage_runs_as_the_worker_with_its_credentials() -> None:
    """``deploy/warden-manage`` (docs/operations.md): manage.py as the services run."""
    script = (ROOT / "deploy" / "warden-manage").read_text()
    worker = directives((UNITS / "warden-worker.service").read_text())
    assert sorted(re.findall(r"--property=LoadCredential=(\S+)", script)) == sorted(
        worker["LoadCredential"]
    )
    assert f"--property=EnvironmentFile={worker['EnvironmentFile'][0]}" in script
    assert f"--uid={worker['User'][0]} --gid={worker['Group'][0]}" in script
    for assignment in worker["Environment"]:  # the same variables, at the same files
        key, _, value = assignment.partition("=")
        expected = value.replace("%d/", "$credentials/")
        assert f'--setenv={key}="{expected}"' in script or f"--setenv={assignment}" in script
    out = subprocess.run(["sh", "-n", str(ROOT / "deploy" / "warden-manage")], check=False)
    assert out.returncode == 0
