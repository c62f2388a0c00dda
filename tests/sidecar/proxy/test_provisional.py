"""Provisional protection through the real sidecar: a column classified by an
unreviewed finding is masked for people, with a NOTICE once per column per session,
and read raw by a service, whose audit event records that it would have been masked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from sidecar.engine import compute_revision
from tests.sidecar.proxy.conftest import (
    ALICE_TOKEN,
    Sidecar,
    build_bundle,
    identity,
    start_sidecar,
    wait_for,
)

SVC_TOKEN = "wdn_svc_" + "d4" * 16
NOTICE = "Warden masked public.customers.email provisionally (pii.email, not yet reviewed)"


def _bundle(database: str, **datasource: Any) -> dict[str, Any]:
    base = build_bundle(database)
    columns = [
        {**c, "provisional": True} if c["column"] == "email" else c
        for c in base["column_classifications"]
    ]
    bundle = {
        **base,
        "datasource": {**base["datasource"], **datasource},
        "identities": [*base["identities"], identity("svc", SVC_TOKEN, kind="service")],
        "column_classifications": columns,
    }
    bundle["revision"] = compute_revision(bundle)
    return bundle


@pytest.fixture(scope="module")
def provisional(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    name = urlsplit(upstream).path.lstrip("/")
    proc = start_sidecar(tmp_path_factory.mktemp("provisional"), upstream, _bundle(name))
    yield proc
    proc.stop()


def _connect(sidecar: Sidecar, user: str, token: str) -> tuple[psycopg.Connection[Any], list[str]]:
    notices: list[str] = []
    conn = psycopg.connect(sidecar.dsn(user=user, token=token), autocommit=True)
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    return conn, notices


def test_a_person_is_told_once_per_session(provisional: Sidecar) -> None:
    conn, notices = _connect(provisional, "alice", ALICE_TOKEN)
    with conn:
        row = conn.execute("SELECT email, ssn FROM customers WHERE id = 1").fetchone()
        assert row == ("***@example.com", "*******1001")
        assert notices == [NOTICE]  # ssn is reviewed: no notice for it
        conn.execute("SELECT email FROM customers WHERE id = %s", [2]).fetchone()  # extended
        conn.execute("SELECT count(*) FROM customers WHERE email LIKE 'user%'").fetchone()
        conn.execute("SELECT name FROM customers WHERE id = 3").fetchone()
        assert notices == [NOTICE]
    again, notices = _connect(provisional, "alice", ALICE_TOKEN)
    with again:
        again.execute("SELECT name FROM customers WHERE id = 3").fetchone()
        assert notices == []  # does not read the column
        again.execute("SELECT * FROM customers WHERE id = 3").fetchone()
        assert notices == [NOTICE]  # a new session is told again


def test_a_service_reads_it_raw_and_the_audit_says_it_would_have_been_masked(
    provisional: Sidecar,
) -> None:
    conn, notices = _connect(provisional, "svc", SVC_TOKEN)
    with conn:
        conn.execute("SET application_name = 'provisional-svc'")
        row = conn.execute("SELECT email, ssn FROM customers WHERE id = 1").fetchone()
    assert row == ("user1@example.com", "*******1001")
    assert notices == []

    def event() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in provisional.events()
                if e.get("type") == "statement"
                and e.get("identity") == "svc"
                and "email" in str(e.get("statement"))
            ),
            None,
        )

    found = wait_for(event, timeout=20)
    assert found is not None, provisional.log()[-2000:]
    assert found["would_have_masked"] == ["public.customers.email"]
    assert found["masked_columns"] == ["public.customers.ssn"]
    assert "provisional_columns" not in found  # absent when empty (docs/audit.md)


def test_a_persons_audit_event_names_the_provisional_mask(provisional: Sidecar) -> None:
    conn, _ = _connect(provisional, "alice", ALICE_TOKEN)
    with conn:
        conn.execute("SELECT email FROM customers WHERE id = 4 AND name IS NOT NULL")

    def event() -> dict[str, Any] | None:
        return next(
            (e for e in provisional.events() if "IS NOT NULL" in str(e.get("statement"))),
            None,
        )

    found = wait_for(event, timeout=20)
    assert found is not None, provisional.log()[-2000:]
    assert found["provisional_columns"] == ["public.customers.email"]
    assert "would_have_masked" not in found


def test_the_datasource_switch_masks_it_for_services(upstream: str, tmp_path: Path) -> None:
    name = urlsplit(upstream).path.lstrip("/")
    sidecar = start_sidecar(tmp_path, upstream, _bundle(name, mask_services_provisionally=True))
    try:
        conn, notices = _connect(sidecar, "svc", SVC_TOKEN)
        with conn:
            row = conn.execute("SELECT email FROM customers WHERE id = 1").fetchone()
        assert row == ("***@example.com",)
        assert notices == [NOTICE]
    finally:
        sidecar.stop()
