"""A backup of the control plane restores with its audit trail intact (docs/operations.md,
"Backups"): events through the real intake and the control plane's own, ``pg_dump`` of
the database to a file, ``pg_restore`` into a new database, and ``manage.py
audit_verify`` run against the copy as an operator would. The chains, their heads and
the anchors are ordinary rows and functions, so the copy verifies, with every event."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from audit.services import audit_events_ingest
from audit.sink.trail import audit_chains_anchor
from tests.audit.conftest import statement_event
from tests.dsn import database_url

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def _client(name: str) -> str:
    """``pg_dump``/``pg_restore`` at least as new as the server (pg_dump refuses older)."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        server_major = int(cursor.fetchone()[0]) // 10000

    def recent_enough(path: str | None) -> bool:
        if path is None or not Path(path).exists():
            return False
        version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
        major = re.search(r"\) (\d+)", version.stdout)
        return major is not None and int(major.group(1)) >= server_major

    if recent_enough(found := shutil.which(name)):
        return str(found)
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # the embedded server's own
    except ImportError:
        POSTGRES_BIN_PATH = None
    if POSTGRES_BIN_PATH and recent_enough(found := str(Path(POSTGRES_BIN_PATH) / name)):
        return found
    pytest.skip(f"no {name} for PostgreSQL {server_major} (Debian: postgresql-client)")


def test_a_restored_dump_keeps_every_chain_verifiable(sidecar: Any, tmp_path: Path) -> None:
    for batch in range(3):
        audit_events_ingest(
            sidecar_id=sidecar.obj.pk,
            datasource_id=sidecar.datasource.pk,
            events=[statement_event(rows=batch * 10 + n) for n in range(20)],
        )
    audit_chains_anchor()  # the sidecar chain's head, written into its datasource's
    before = StringIO()
    call_command("audit_verify", stdout=before)
    counted = re.match(r"OK: (\d+) events in (\d+) chain", before.getvalue())
    assert counted and int(counted.group(1)) > 60 and int(counted.group(2)) >= 3, before

    dump = tmp_path / "warden.dump"
    source = database_url()
    subprocess.run(
        [_client("pg_dump"), "--format=custom", "--file", str(dump), "--dbname", source],
        check=True,
        timeout=120,
    )
    copy = f"{connection.settings_dict['NAME']}_restored"
    with psycopg.connect(database_url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{copy}"')
    try:
        subprocess.run(
            [_client("pg_restore"), "--exit-on-error", "--no-owner", "--dbname",
             database_url(copy), str(dump)],
            check=True, timeout=120,
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
        out = subprocess.run(
            [sys.executable, "manage.py", "audit_verify"],
            cwd=ROOT,
            env={**env, "WARDEN_DEV": "1", "DATABASE_URL": database_url(copy)},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == before.getvalue().strip()  # every event, every chain
    finally:
        with psycopg.connect(database_url("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
