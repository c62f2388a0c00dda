"""Issue 19's "Done when", end to end: a brand-new production datasource with no
masking rule and nobody clicking anything serves none of the raw values of its PII,
secret and financial columns after its first scan, JSON paths, free text and an
integer SSN column included, and every finding the scanner was unsure of waits in
the review queue.

The parts are real: uvicorn serving the control plane, a Celery worker compiling
bundles, the sidecar process (``python -m sidecar run``) whose scanner samples the
upstream database at start and reports, and psycopg clients through the sidecar.
The table is small (six rows): small tables count as evidence too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance import selectors, services
from governance.models import ColumnClassification, Environment, ScanRun
from tests.integration.conftest import SidecarProcess, pinned_key, upstream_dbname
from tests.stack import Server

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PEOPLE = [
    # email, phone, ssn (integer), card, token, notes (free text), profile (jsonb)
    (
        "ada.lovelace@analytical.example",
        "+44 20 7946 0958",
        123456789,
        "4111111111111111",
        "sk_live_9fQ2rX7mLp3Vz8KcT1aB6nWd",
        "Call Ada on +44 20 7946 0958 about the invoice",
        {"profile": {"email": "ada.l@home.example", "city": "London"}},
    ),
    (
        "alan.turing@bletchley.example",
        "+1 415 555 0132",
        234567890,
        "5500005555555559",
        "sk_live_H3kP8sQ1vN6yT4rW2zX9cB5m",
        "Alan asked to be reached at alan.t@home.example after 6pm",
        {"profile": {"email": "alan.t@home.example", "city": "Wilmslow"}},
    ),
    (
        "grace.hopper@navy.example",
        "+1 202 555 0188",
        345678901,
        "340000000000009",
        "sk_live_Z7xC4vB1nM8qW5eR2tY6uI9o",
        "Grace: card 4012888888881881 was declined, retry tomorrow",
        {"profile": {"email": "grace@cobol.example", "city": "Arlington"}},
    ),
    (
        "edsger.dijkstra@tue.example",
        "+31 40 247 9111",
        456789012,
        "6011000990139424",
        "sk_live_Q9wE3rT6yU1iO4pA7sD2fG5h",
        "Edsger prefers letters; email edsger@ewd.example only if urgent",
        {"profile": {"email": "edsger@ewd.example", "city": "Nuenen"}},
    ),
    (
        "barbara.liskov@mit.example",
        "+1 617 555 0145",
        567890123,
        "3530111333300000",
        "sk_live_L2kJ5hG8fD1sA4zX7cV0bN3m",
        "Barbara's assistant: +1 617 555 0199, ask for the substitution memo",
        {"profile": {"email": "liskov@clu.example", "city": "Cambridge"}},
    ),
    (
        "donald.knuth@stanford.example",
        "+1 650 555 0173",
        678901234,
        "4000056655665556",
        "sk_live_T8rE5wQ2aS9dF6gH3jK1lZ4x",
        "Donald pays bounties by cheque; contact knuth@taocp.example",
        {"profile": {"email": "knuth@taocp.example", "city": "Stanford"}},
    ),
]


def _raw_values() -> set[str]:
    """Every sensitive value and every sensitive piece of a value, as text."""
    raw: set[str] = set()
    for email, phone, ssn, card, token, notes, profile in PEOPLE:
        raw |= {email, phone, str(ssn), card, token, profile["profile"]["email"]}
        raw |= {word.strip(",.;:") for word in notes.split() if "@" in word}
    raw |= {"+44 20 7946 0958", "4012888888881881", "+1 617 555 0199"}
    return raw


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _fresh_upstream(upstream_db: str) -> None:
    with psycopg.connect(upstream_db, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE people (id int PRIMARY KEY, contact text, mobile text, ssn bigint,"
            " card text, api_token text, notes text, profile jsonb, status text)"
        )
        for i, (email, phone, ssn, card, token, notes, profile) in enumerate(PEOPLE, 1):
            conn.execute(
                "INSERT INTO people VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'active')",
                (i, email, phone, ssn, card, token, notes, json.dumps(profile)),
            )


def test_a_new_production_datasource_serves_no_raw_pii_after_its_first_scan(
    control_plane: Server,
    celery_worker: Any,
    upstream_db: str,
    admin_user: Any,
    tmp_path: Path,
) -> None:
    team = services.team_create(actor=admin_user, name="Analysts")
    datasource = services.datasource_create(
        actor=admin_user,
        name="fresh-prod",
        environment=Environment.objects.get(name="production"),
        connect_teams=[team],
    )
    analyst = services.identity_create(actor=admin_user, name="ana", kind="human", teams=[team])
    _, token = services.token_issue(actor=admin_user, identity=analyst, name="it")
    _fresh_upstream(upstream_db)
    _, sidecar_token = services.sidecar_register(actor=admin_user, datasource=datasource, name="sc")
    sidecar = SidecarProcess(
        config={
            "upstream_dsn": upstream_db,
            "listen_port": 0,
            "control_plane_url": control_plane.url,
            "token": sidecar_token,
            "bundle_public_keys": pinned_key(),
            "bundle_wait": 30,
            "bundle_max_backoff": 1,
            "heartbeat_interval": 1,
        },
        state_dir=tmp_path / "sidecar",
    )
    raw = _raw_values()
    try:
        _wait(lambda: ScanRun.objects.filter(datasource=datasource).exists(), 90, "the first scan")

        def served() -> str | None:
            """Everything the analyst reads of the table, in every way below, as text;
            None while the table is refused (not yet in the bundle's snapshot)."""
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=sidecar.port,
                    dbname=upstream_dbname(),
                    user="ana",
                    password=token,
                    autocommit=True,
                ) as conn:
                    rows = conn.execute("SELECT * FROM people ORDER BY id").fetchall()
                    paths = conn.execute(
                        "SELECT profile->'profile'->>'email', profile #>> '{profile,email}',"
                        " row_to_json(p)::text FROM people p"
                    ).fetchall()
            except psycopg.Error:
                return None
            return repr(rows) + repr(paths)

        def protected() -> str | None:
            text = served()
            return text if text is not None and not any(v in text for v in raw) else None

        text = _wait(protected, 60, "every sensitive value to be masked through the sidecar")
        # The default masks keep the columns usable: an address's domain, a card's
        # last four digits, free text around what was in it, a JSON document's
        # other keys.
        assert "active" in text and "London" in text
        assert "'***@analytical.example'" in text and "'************1111'" in text
        assert "Call Ada on [phone] about the invoice" in text
        leaked = sorted(v for v in raw if v in (served() or ""))
        assert not leaked, leaked

        # Nobody clicked anything: no rule, no confirmation; the unsure ones wait for one.
        found = ColumnClassification.objects.filter(datasource=datasource)
        assert not found.filter(status="confirmed").exists()
        unsure = found.filter(confidence__lt=0.9)
        queue = set(selectors.review_queue(user=admin_user).values_list("pk", flat=True))
        assert unsure.exists() and set(unsure.values_list("pk", flat=True)) <= queue
        by_column = {(c.column_name, c.path): c.classification.name for c in found}
        for column in ("contact", "mobile", "ssn", "card", "api_token", "notes"):
            assert any(key[0] == column for key in by_column), (column, by_column)
        assert ("profile", "profile.email") in by_column, by_column
    finally:
        sidecar.stop()
