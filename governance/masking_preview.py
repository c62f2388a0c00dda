"""What a masking rule would show, before it is saved: built-in sample values of its
classification, masked by the engine's own expression on the control plane's PostgreSQL.

The expression is ``sidecar.engine.masking.mask_expression``, the very function that
builds what the sidecar splices into statements, run in a read-only transaction on
its own connection that is rolled back. Nothing is read from any table: the samples
are literals chosen per classification, never real data. The ``hash`` strategy's
keyed function lives only in protected databases (``warden_masking.hmac``,
docs/masking.md), so the preview computes the same HMAC-SHA-256 in plain SQL
(``hmac_expression``) under a throw-away random key: the digests look like the real
ones but match nothing the sidecar would produce, and the real key is never used.

The query runs with ``search_path = pg_catalog``, so no function or type of another
schema can stand in for the built-ins the expression names. A database error is
shown in the panel (``Preview.error``), not raised. The form asks again as it
changes, so one person's previews run one at a time (``owner``): a request waits
briefly for the previous one rather than opening a second connection.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.core.cache import cache
from django.db import connection
from psycopg import sql

from sidecar.engine.bundle import Masking
from sidecar.engine.masking import hmac_expression, mask_expression

# Per built-in classification: the column type the samples are stored as, and the
# samples (plausible, made up; reserved documentation ranges where there are any).
SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pii.email": ("text", ("ann.lee@example.org", "j.smith+news@mail.example.com")),
    "pii.phone": ("text", ("+1 415 555 0132", "020 7946 0958")),
    "pii.name": ("text", ("Ann Lee", "José García")),
    "pii.address": ("text", ("221B Baker Street, London NW1 6XE",)),
    "pii.dob": ("date", ("1984-07-19", "2001-02-03")),
    "pii.ssn": ("text", ("123-45-6789", "078-05-1120")),
    "pii.national_id": ("text", ("AB 12 34 56 C", "123-45-6789")),
    "pii.free_text": (
        "text",
        ("Call Ann on +1 415 555 0132 or ann.lee@example.org; card 4111 1111 1111 1111.",),
    ),
    "financial.card": ("text", ("4111 1111 1111 1111", "5500-0000-0000-0004")),
    "financial.iban": ("text", ("DE89 3704 0044 0532 0130 00", "GB29 NWBK 6016 1331 9268 19")),
    "secret.token": ("text", ("tok_live_5f2b9c0e7d4a1368",)),
    "secret.password": ("text", ("correct horse battery staple",)),
    "network.ip": ("inet", ("192.0.2.10", "2001:db8::1")),
    "health.record": ("text", ("Diagnosis: type 2 diabetes, metformin 500 mg",)),
    "general.internal": ("text", ("Q3 roadmap draft",)),
    "general.public": ("text", ("Opening hours 9:00-17:00",)),
}
# A custom classification: a text value, and a date for the year_only strategy.
GENERIC_SAMPLES: tuple[str, tuple[str, ...]] = ("text", ("Sample value 12345", "ABC-987654"))
DATE_SAMPLES: tuple[str, tuple[str, ...]] = ("date", ("1984-07-19", "2001-02-03"))

STATEMENT_TIMEOUT_MS = 2000
# How long a preview waits for the same person's previous one, and how long the
# turn is held at most (a crashed request's turn lapses).
TURN_WAIT_SECONDS = 3.0
TURN_HOLD_SECONDS = 10


@dataclass(frozen=True)
class PreviewRow:
    original: str
    masked: str | None  # None: the mask gives SQL NULL


@dataclass(frozen=True)
class Preview:
    classification: str
    type_name: str
    strategy: str
    rows: list[PreviewRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""


def samples_for(classification: str, strategy: str) -> tuple[str, tuple[str, ...]]:
    """The type and sample values shown for ``classification`` under ``strategy``."""
    if classification in SAMPLES:
        return SAMPLES[classification]
    return DATE_SAMPLES if strategy == "year_only" else GENERIC_SAMPLES


def _connect() -> psycopg.Connection[Any]:
    """A connection of its own: the request's transaction is never touched, and this one
    is read-only and rolled back."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    conn = psycopg.connect(**params, autocommit=False)
    conn.read_only = True
    return conn


def _take_turn(owner: str) -> bool:
    """Wait (briefly) until no other preview of ``owner`` runs; True once it is ours."""
    deadline = time.monotonic() + TURN_WAIT_SECONDS
    while not cache.add(f"masking-preview:{owner}", 1, timeout=TURN_HOLD_SECONDS):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def masking_preview(
    *,
    classification: str,
    strategy: str,
    params: dict[str, Any],
    key: bytes | None = None,
    owner: str | None = None,
) -> Preview:
    """Mask the samples of ``classification`` with ``strategy`` and ``params`` as the
    engine would. ``key``: the hash key (tests); by default a new random one each time.
    ``owner``: whose preview it is (one at a time each); None runs it at once."""
    if owner is None:
        return _preview(classification, strategy, params, key)
    if not _take_turn(owner):
        return Preview(
            classification=classification,
            type_name="",
            strategy=strategy,
            error="Your previous preview is still running; change the form again to retry.",
        )
    try:
        return _preview(classification, strategy, params, key)
    finally:
        cache.delete(f"masking-preview:{owner}")


def _preview(
    classification: str, strategy: str, params: dict[str, Any], key: bytes | None
) -> Preview:
    type_name, values = samples_for(classification, strategy)
    masking = Masking(
        classification=classification,
        strategy=strategy,
        params=dict(params),
        exempt_teams=frozenset(),
    )
    throwaway = key if key is not None else secrets.token_bytes(32)
    expression = mask_expression(
        '"v"', type_name, masking, hmac=lambda value: hmac_expression(value, throwaway)
    )
    # Composed, not format()ted: the expression holds braces and percent signs (regular
    # expressions), and the samples go in as a literal, so there are no placeholders.
    query = sql.Composed(
        [
            sql.SQL("SELECT s.raw, ("),
            sql.SQL(expression),
            sql.SQL(")::text FROM (SELECT u.raw, u.n, (u.raw)::"),
            sql.SQL(type_name),
            sql.SQL(" AS v FROM pg_catalog.unnest("),
            sql.Literal(list(values)),
            sql.SQL("::text[]) WITH ORDINALITY AS u(raw, n)) AS s ORDER BY s.n"),
        ]
    )
    notes = []
    if strategy == "hash":
        notes.append(
            "Hashed with a throw-away key for this preview: real digests differ, and each "
            "preview draws a new key."
        )
    try:
        with _connect() as conn:
            try:
                conn.execute(
                    sql.SQL("SET LOCAL statement_timeout = {}").format(
                        sql.Literal(STATEMENT_TIMEOUT_MS)
                    )
                )
                conn.execute("SET LOCAL search_path = pg_catalog")
                rows = conn.execute(query).fetchall()
            finally:
                conn.rollback()
    except psycopg.Error as exc:
        primary = exc.diag.message_primary if exc.diag is not None else None
        return Preview(
            classification=classification,
            type_name=type_name,
            strategy=strategy,
            notes=notes,
            error=f"PostgreSQL could not compute the preview: {primary or type(exc).__name__}.",
        )
    return Preview(
        classification=classification,
        type_name=type_name,
        strategy=strategy,
        rows=[PreviewRow(original=raw, masked=masked) for raw, masked in rows],
        notes=notes,
    )
