"""``make run``: Warden on one machine with nothing but Python.

Starts (or reuses) the embedded PostgreSQL and Redis under ``var/`` unless
``DATABASE_URL``/``REDIS_URL`` are set, migrates, seeds the demo and the demo
database ``warden_demo`` (idempotent), then runs the web server (uvicorn on
``config.asgi``, the one ASGI application), a Celery worker with embedded beat,
and the demo sidecar on 127.0.0.1:6432 (``WARDEN_SIDECAR_PORT``) with its MCP server on
127.0.0.1:6433 (``WARDEN_MCP_PORT``) for the demo agent. It prints
where to go and how to sign in. Ctrl-C or SIGTERM stops every child, then the embedded services;
the next ``make run`` finds the same data again.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from config.devstack import BASE_DIR, VAR_DIR, services

STOP_TIMEOUT = 20.0


def _secret_key() -> str:
    """A per-machine SECRET_KEY kept in var/, so sessions survive a restart."""
    path = VAR_DIR / "secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEMO_DIR = VAR_DIR / "demo-sidecar"


def demo_processes(env: dict[str, str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """The demo sidecar in front of the demo database: (name, argv, extra env) triples.

    They start after the web server is ready and stop with everything else.
    ``manage.py demo_sidecar`` wrote the config; the token stays in its own file.
    """
    argv = [sys.executable, "-m", "sidecar", "run", "--config", str(DEMO_DIR / "sidecar.json")]
    return [("sidecar", argv, {"WARDEN_SIDECAR_TOKEN_FILE": str(DEMO_DIR / "sidecar-token")})]


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if path.exists():
            return True
        time.sleep(0.2)
    return False


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(  # noqa: S603 - our own manage.py with fixed arguments
        [sys.executable, str(BASE_DIR / "manage.py"), *args], env=env, check=True
    )


def _start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Own session per child: signals come from us, in order, not from the
    # terminal to everyone at once (a second SIGINT makes Celery cold-stop).
    print(f"[run] starting {name}", flush=True)
    return subprocess.Popen(argv, env=env, cwd=BASE_DIR, start_new_session=True)  # noqa: S603


def _stop(children: list[tuple[str, subprocess.Popen]]) -> None:
    for _name, proc in reversed(children):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, proc in reversed(children):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"[run] {name} did not stop in time; killing it", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Children of the child (Celery's pool and beat) share its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def _sidecar_port() -> str:
    return os.environ.get("WARDEN_SIDECAR_PORT", "6432")


def _mcp_port() -> str:
    return os.environ.get("WARDEN_MCP_PORT", "6433")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def main() -> int:
    host = os.environ.get("WARDEN_HOST", "127.0.0.1")
    port = os.environ.get("WARDEN_PORT", "8000")
    for name, value in (
        ("WARDEN_PORT", port),
        ("WARDEN_SIDECAR_PORT", _sidecar_port()),
        ("WARDEN_MCP_PORT", _mcp_port()),
    ):
        if not value.isdigit() or not 0 < int(value) < 65536:
            print(f"{name} must be a TCP port number, got {value!r}", file=sys.stderr)
            return 2
    url = f"http://{host}:{port}"
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    children: list[tuple[str, subprocess.Popen]] = []
    try:
        with services() as service_env:
            try:
                return _serve(service_env, host, port, url, children)
            except _Stop:
                print("\n[run] stopping…", flush=True)
                return 0
            finally:
                # No second signal may interrupt the shutdown itself; children
                # stop before the embedded PostgreSQL and Redis they use.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                _stop(children)
    except _Stop:
        return 0


def _serve(
    service_env: dict[str, str],
    host: str,
    port: str,
    url: str,
    children: list[tuple[str, subprocess.Popen]],
) -> int:
    env = {**os.environ, **service_env}
    # WARDEN_DEV allows the generated secrets under var/; DEBUG stays off unless asked
    # for (DEBUG=1 make run), so the demo shows Warden's error pages, not Django's
    # debug pages with settings and tracebacks. WhiteNoise serves static files either way.
    env.setdefault("WARDEN_DEV", "1")
    env.setdefault("SECRET_KEY", _secret_key())
    env.setdefault("WARDEN_BASE_URL", url)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # migrate, seed_demo and demo_sidecar, in one process (Django loads once).
    _manage(
        env,
        "demo_prepare",
        "--control-plane",
        url,
        "--listen-port",
        _sidecar_port(),
        "--mcp-port",
        _mcp_port(),
    )
    children.append(
        (
            "web",
            _start(
                "web",
                [
                    sys.executable, "-m", "uvicorn", "config.asgi:application",
                    "--host", host, "--port", port, "--no-access-log",
                ],
                env,
            ),
        )
    )  # fmt: skip
    children.append(
        (
            "worker",
            _start(
                "worker",
                [
                    sys.executable, "-m", "celery", "-A", "config", "worker", "-B",
                    "--loglevel", "INFO", "--concurrency", "1",
                    "--schedule", str(VAR_DIR / "celerybeat-schedule"),
                ],
                env,
            ),
        )
    )  # fmt: skip
    if not _wait_ready(url, children[0][1]):
        print("[run] the web server did not become ready; stopping", file=sys.stderr)
        return 1
    ready_file = DEMO_DIR / "ready.json"
    ready_file.unlink(missing_ok=True)  # written by the sidecar once it serves
    for name, argv, extra in demo_processes(env):
        children.append((name, _start(name, argv, {**env, **extra})))
    if not _wait_file(ready_file, children[-1][1]):
        print("[run] the demo sidecar did not start serving; stopping", file=sys.stderr)
        return 1
    creds_path = Path(VAR_DIR) / "demo-credentials.json"
    creds = json.loads(creds_path.read_text()) if creds_path.exists() else {}
    demo = json.loads((DEMO_DIR / "identity.json").read_text())
    agent = json.loads((DEMO_DIR / "agent.json").read_text())
    mcp_url = f"http://127.0.0.1:{_mcp_port()}/mcp"
    dbname = os.environ.get("WARDEN_DEMO_DATABASE") or "warden_demo"
    print(
        "\n"
        f"  Warden is running at {url}/\n"
        f"  Sign in as admin / {creds.get('admin', '?')} "
        "(you will set up a TOTP authenticator first: admins need MFA)\n"
        f"  or as security / {creds.get('security', '?')} (edits policy), "
        f"reviewer / {creds.get('reviewer', '?')}, auditor / {creds.get('auditor', '?')}.\n"
        f"  alice / {creds.get('alice', '?')} is the demo identity alice's own sign-in: "
        "her held statements wait under My requests.\n"
        f"  API docs: {url}/api/docs/   (credentials kept in {creds_path})\n"
        "\n"
        f"  The demo sidecar guards database {dbname} on 127.0.0.1:{_sidecar_port()}; "
        f"connect as the demo identity {demo['identity']}:\n"
        f"    PGPASSWORD={demo['token']} psql "
        f'"host=127.0.0.1 port={_sidecar_port()} dbname={dbname} user={demo["identity"]}"\n'
        "  and try:\n"
        "    SELECT full_name, email, phone, ssn, birth_date FROM customers LIMIT 3;  -- masked\n"
        "    DROP TABLE customers;  -- blocked by a guardrail (42501)\n"
        "\n"
        f"  AI agents: the sidecar's MCP server is at {mcp_url} (streamable HTTP);\n"
        f"  connect an MCP client as the demo agent {agent['identity']} (owned by alice), e.g.\n"
        f"    claude mcp add --transport http warden {mcp_url} "
        f'--header "Authorization: Bearer {agent["token"]}"\n'
        "  Its writes wait for a reviewer in the inbox (docs/mcp.md).\n"
        "\n"
        "  Press Ctrl-C to stop.\n",
        flush=True,
    )
    while True:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"[run] {name} exited with {proc.returncode}; stopping", flush=True)
                return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
