"""Production, started the way docs/deploy.md says, and a sidecar in front of a database.

No ``WARDEN_DEV``: a generated secret key and bundle signing key, every
``SECURE_*`` setting the deploy guide lists for TLS, two uvicorn workers
serving HTTPS themselves with a certificate from a throw-away CA, a Celery
worker and beat. The sidecar is registered over the API, trusts the CA through
``SSL_CERT_FILE`` (the control plane's certificate is not publicly trusted, so
it could not work otherwise), and reaches the protected database as the
unprivileged role of the guide's SQL. Then, with no policy configured by hand:
its scanner classifies the email column, the worker recompiles the bundle, and
psql sees the column masked; the safety floor refuses a server file read.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from config.devstack import embedded_redis
from governance.signing import signing_key_generate
from tests.dsn import database_url
from tests.pki import ca, issue, write_pem
from tests.stack import ROOT, _stop, free_port

CUSTOMERS = 40
# The deploy guide's role, word for word but for its name and database.
ROLE_SQL = """
CREATE ROLE {role} LOGIN PASSWORD '{password}'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOREPLICATION;
GRANT CONNECT ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
ALTER ROLE {role} SET jit = off;
"""


@dataclass
class Deployment:
    url: str
    ca_file: Path
    api_token: str
    env: dict[str, str]
    crm_database: str
    crm_role: str
    crm_password: str
    work: Path

    def api(self, method: str, path: str, payload: Any = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}/api/v1/{path}",
            data=None if payload is None else json.dumps(payload).encode(),
            method=method,
            headers={
                "Authorization": f"Token {self.api_token}",
                "Content-Type": "application/json",
            },
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return json.loads(response.read() or b"null")


def _admin(sql: str, database: str = "postgres") -> None:
    with psycopg.connect(database_url(database), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all at once (each shuts down on its own time), then wait for each."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes:
        _stop(proc)


def _wait(what: str, check: Any, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception as exc:
            value, error = None, exc
        else:
            error = None
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            raise AssertionError(f"{what}: not within {timeout} s ({error!r})\n{tails}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("deploy")
    # A Redis of its own, as a deployment has: a Celery worker another test left on
    # the suite's Redis would otherwise take this control plane's tasks and run them
    # against its own database.
    with embedded_redis(work / "redis", persist=False) as redis_url:
        yield from _deployment(work, redis_url)


def _deployment(work: Path, redis_url: str) -> Iterator[Deployment]:
    suffix = secrets.token_hex(3)
    control_db, crm_db, role = (f"warden_deploy_{suffix}", f"warden_crm_{suffix}", f"crm_{suffix}")
    role_password = secrets.token_urlsafe(18)
    _admin(f'CREATE DATABASE "{control_db}"')
    _admin(f'CREATE DATABASE "{crm_db}"')
    _admin(
        "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text NOT NULL);"
        "INSERT INTO customers SELECT i, 'Customer ' || i, 'person' || i || '@example.com'"
        f" FROM generate_series(1, {CUSTOMERS}) AS i;"
        + ROLE_SQL.format(role=role, password=role_password, database=f'"{crm_db}"'),
        crm_db,
    )

    authority = ca("Warden deploy test CA")
    ca_file = work / "ca.pem"
    write_pem(work, "ca", *authority)[0].rename(ca_file)
    server_cert, server_key = write_pem(
        work,
        "server",
        *issue(
            authority,
            "127.0.0.1",
            sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        ),
    )
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WARDEN_", "DJANGO_", "SECURE_")) and k not in {"DEBUG", "SECRET_KEY"}
    }
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=database_url(control_db),
        REDIS_URL=redis_url,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        CSRF_TRUSTED_ORIGINS=url,
        WARDEN_BASE_URL=url,
        SESSION_COOKIE_SECURE="true",
        CSRF_COOKIE_SECURE="true",
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        WARDEN_BUNDLE_SIGNING_KEY=signing_key_generate("deploy-1"),
        WARDEN_VAR_DIR=str(work / "var"),
        DJANGO_SUPERUSER_PASSWORD=secrets.token_urlsafe(18),
        PYTHONUNBUFFERED="1",
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # The guide's first two steps do not depend on each other (the database; files
        # under STATIC_ROOT): run side by side, as a deploy script may.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            steps = [
                pool.submit(_manage, env, "migrate", "--no-input"),
                pool.submit(_manage, env, "collectstatic", "--no-input"),
            ]
            for step in steps:
                step.result()
        uvicorn = [
            sys.executable, "-m", "uvicorn", "config.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
            "--ssl-certfile", str(server_cert), "--ssl-keyfile", str(server_key),
        ]  # fmt: skip
        celery = [sys.executable, "-m", "celery", "-A", "config"]
        processes += [
            _start(uvicorn, env, work / "uvicorn.log"),
            _start([*celery, "worker", "--concurrency", "1"], env, work / "worker.log"),
            _start([*celery, "beat", "-s", str(work / "beat-schedule")], env, work / "beat.log"),
        ]
        # While they start (WhiteNoise reads STATIC_ROOT at start: after collectstatic).
        _manage(env, "createsuperuser", "--no-input", "--username=ops", "--email=ops@example.com")
        api_token = _manage(env, "mint_api_token", "ops", "--name", "deploy").strip()
        deployment = Deployment(url, ca_file, api_token, env, crm_db, role, role_password, work)
        _wait("the control plane answers over HTTPS", lambda: deployment.api("GET", "teams/"),
              60, [work / "uvicorn.log"])  # fmt: skip
        yield deployment
    finally:
        _stop_all(processes)
        for database in (crm_db, control_db):
            _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _admin(f'DROP ROLE IF EXISTS "{role}"')


def test_the_deploy_check_reports_nothing(deployment: Deployment) -> None:
    out = _manage(deployment.env, "check", "--deploy", "--fail-level", "WARNING")
    assert "System check identified no issues (1 silenced)." in out, out


def test_a_sidecar_in_production_masks_and_refuses(deployment: Deployment) -> None:
    d, work = deployment, deployment.work
    # The certificate is the local CA's: without it, nobody gets in.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{d.url}/healthz", timeout=10)

    d.api("POST", "teams/", {"name": "Analysts", "slug": "analysts"})
    ana = d.api("POST", "identities/", {"name": "ana", "kind": "human", "teams": ["analysts"]})
    d.api("POST", "datasources/", {
        "name": "crm", "environment": "production", "connect_teams": ["analysts"],
    })  # fmt: skip
    registered = d.api("POST", "sidecars/", {"datasource": "crm", "name": "crm-1"})
    ana_token = d.api("POST", f"identities/{ana['id']}/tokens/", {"name": "laptop"})["token"]
    keys = d.api("GET", "sidecar/keys")["keys"]
    (work / "sidecar-token").write_text(registered["token"])
    upstream = _with_credentials(database_url(d.crm_database), d.crm_role, d.crm_password)
    (work / "sidecar.toml").write_text(
        f'upstream_dsn = "{upstream}"\n'
        f'state_dir = "{work / "sidecar-state"}"\n'
        'datasource = "crm"\n'
        'listen_host = "127.0.0.1"\nlisten_port = 0\n'
        f'control_plane_url = "{d.url}"\n'
        f'bundle_public_keys = "{",".join(k["key_id"] + ":" + k["public_key"] for k in keys)}"\n'
        f'ready_file = "{work / "sidecar-ready.json"}"\n'
    )
    sidecar_env = {k: v for k, v in os.environ.items() if not k.startswith(("WARDEN_", "SSL_CERT"))}
    sidecar_env.update(
        SSL_CERT_FILE=str(d.ca_file), WARDEN_SIDECAR_TOKEN_FILE=str(work / "sidecar-token")
    )
    log = work / "sidecar.log"
    sidecar = _start(
        [sys.executable, "-m", "sidecar", "run", "--config", str(work / "sidecar.toml")],
        sidecar_env,
        log,
    )
    logs = [log, work / "worker.log", work / "uvicorn.log"]
    try:
        ready = _wait("the sidecar serves", lambda: _ready(work / "sidecar-ready.json"), 60, logs)
        dsn = (
            f"host=127.0.0.1 port={ready['port']} dbname={d.crm_database} user=ana "
            f"password={ana_token} sslmode=disable"
        )

        def emails_seen() -> list[str]:
            done = subprocess.run(
                ["psql", dsn, "-AtXc", "SELECT email FROM customers ORDER BY id"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.split()

        # The scan at start finds the emails; the worker recompiles; the sidecar
        # takes the new bundle: masked with no policy written by anyone.
        seen = _wait(
            "psql sees the emails masked",
            lambda: (rows := emails_seen()) and "person1@example.com" not in rows and rows,
            90,
            logs,
        )
        assert len(seen) == CUSTOMERS
        assert not any(f"person{i}@example.com" in seen for i in range(1, CUSTOMERS + 1))

        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("SELECT pg_read_file('/etc/hostname')")
            assert "Warden" in str(refused.value)
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (CUSTOMERS,)
            # The guide's role setting: masked rewrites are not JIT-compiled first.
            assert conn.execute("SHOW jit").fetchone() == ("off",)

        # The sidecar reports in over HTTPS.
        _wait(
            "the sidecar's heartbeat",
            lambda: d.api("GET", f"sidecars/{registered['id']}/")["last_heartbeat_at"],
            30,
            logs,
        )
    finally:
        _stop(sidecar)


def _ready(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    host = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{password}@{host}"
