"""The masking rule form's preview is what the engine's expression gives on PostgreSQL.

Each case runs the sidecar's own ``mask_expression`` (as the engine splices it, with
``warden_masking.hmac`` left out: the control plane has no such function) directly on
the test database and compares with the preview; the hash strategy is compared with
an HMAC-SHA-256 computed here, under the key the test hands the preview.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from psycopg import sql

from governance.masking_preview import SAMPLES, masking_preview, samples_for
from governance.models import Classification
from sidecar.engine.bundle import Masking
from sidecar.engine.masking import mask_expression

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("policy_once")]

CASES = [
    ("pii.email", "email", {}),
    ("pii.phone", "partial", {"keep_last": 4}),
    ("financial.card", "partial", {"keep_last": 2}),
    ("pii.ssn", "redact", {}),
    ("pii.dob", "year_only", {}),
    ("pii.dob", "partial", {"keep_last": 3}),  # no meaning for a date: NULL, as the engine does
    ("pii.free_text", "free_text", {}),
    ("secret.token", "null", {}),
    ("network.ip", "redact", {}),
    ("x.custom", "year_only", {}),
]


def _engine_output(type_name: str, values: tuple[str, ...], masking: Masking) -> list[Any]:
    expression = mask_expression('"v"', type_name, masking)
    assert "warden_masking" not in expression
    query = sql.Composed(
        [
            sql.SQL("SELECT ("),
            sql.SQL(expression),
            sql.SQL(")::text FROM (SELECT (raw)::"),
            sql.SQL(type_name),
            sql.SQL(" AS v, n FROM unnest("),
            sql.Literal(list(values)),
            sql.SQL("::text[]) WITH ORDINALITY AS u(raw, n)) AS t ORDER BY n"),
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(cursor.connection))
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.parametrize(("classification", "strategy", "params"), CASES)
def test_preview_equals_the_engine_expression(
    classification: str, strategy: str, params: dict[str, int]
) -> None:
    preview = masking_preview(classification=classification, strategy=strategy, params=params)
    type_name, values = samples_for(classification, strategy)
    masking = Masking(classification, strategy, params, frozenset())
    assert [row.original for row in preview.rows] == list(values)
    assert [row.masked for row in preview.rows] == _engine_output(type_name, values, masking)
    # Nothing shown raw: every masked value differs from its sample.
    assert all(row.masked != row.original for row in preview.rows)


def test_hash_preview_uses_the_given_throwaway_key_never_a_stored_one() -> None:
    key = b"k" * 32
    preview = masking_preview(classification="pii.email", strategy="hash", params={}, key=key)
    _type, values = SAMPLES["pii.email"]
    expected = [hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for v in values]
    assert [row.masked for row in preview.rows] == expected
    assert "throw-away key" in preview.notes[0]
    # Without a key, each preview draws its own: the digests change every time.
    one = masking_preview(classification="pii.email", strategy="hash", params={})
    two = masking_preview(classification="pii.email", strategy="hash", params={})
    assert one.rows[0].masked != two.rows[0].masked


def test_preview_endpoint(client: Client, security_user: Any, reviewer_user: Any) -> None:
    url = reverse("governance:masking_preview")
    email = Classification.objects.get(name="pii.email")
    phone = Classification.objects.get(name="pii.phone")
    client.force_login(reviewer_user)
    assert client.post(url, {"classification": email.pk, "strategy": "email"}).status_code == 403
    client.force_login(security_user)
    body = client.post(url, {"classification": email.pk, "strategy": "email"}).content.decode()
    assert "***@example.org" in body and "ann.lee@example.org" in body
    body = client.post(
        url, {"classification": phone.pk, "strategy": "partial", "param_keep_last": "2"}
    ).content.decode()
    assert "*************32" in body
    missing = client.post(url, {"classification": phone.pk, "strategy": "partial"})
    assert b"is required for the partial strategy" in missing.content
    bad = client.post(
        url, {"classification": phone.pk, "strategy": "partial", "param_keep_last": "40"}
    )
    assert b"less than or equal to 16" in bad.content
    empty = client.post(url, {}).content.decode()
    assert "Choose a classification and a strategy" in empty


def test_a_database_error_is_shown_not_raised() -> None:
    # The form bounds keep_last; past them PostgreSQL refuses the expression.
    preview = masking_preview(
        classification="pii.email", strategy="partial", params={"keep_last": 10**19}
    )
    assert preview.rows == []
    assert preview.error.startswith("PostgreSQL could not compute the preview: ")
    assert "pg_catalog.repeat" in preview.error


def test_one_preview_at_a_time_per_person(
    client: Client, security_user: Any, admin_user: Any, monkeypatch: Any
) -> None:
    from django.core.cache import cache

    from governance import masking_preview as module

    monkeypatch.setattr(module, "TURN_WAIT_SECONDS", 0.2)
    url = reverse("governance:masking_preview")
    email = Classification.objects.get(name="pii.email")
    form = {"classification": email.pk, "strategy": "email"}
    key = f"masking-preview:{security_user.pk}"
    cache.add(key, 1, timeout=10)  # a preview of this person still running
    try:
        client.force_login(security_user)
        busy = client.post(url, form)
        assert busy.status_code == 200 and b'id="mask-preview-error"' in busy.content
        assert b"previous preview is still running" in busy.content
        client.force_login(admin_user)  # someone else's preview is not held up
        assert b"***@example.org" in client.post(url, form).content
    finally:
        cache.delete(key)
    client.force_login(security_user)
    assert b"***@example.org" in client.post(url, form).content
    assert cache.get(key) is None  # the turn is given back
