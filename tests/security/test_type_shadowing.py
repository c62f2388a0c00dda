"""A type of the session's own temporary schema in place of pg_catalog's (a review's finding).

PostgreSQL looks an unqualified type name up in the session's temporary schema
first, before pg_catalog and whatever search_path says. The mask expressions cast
the raw value to ``text`` (``(ssn)::text``) before masking it, so alice (masked)
could create ``pg_temp.text``, a domain whose CHECK sees every value cast to it:
calling ``pg_notify(VALUE)`` sent her every raw SSN and e-mail as a notification
while the rows themselves came back masked, and casting VALUE to an integer put
each one in an error message. Masking now casts to ``pg_catalog.text``.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.sidecar.proxy.conftest import EMAILS, SSNS, Sidecar

NOTIFY = (
    "CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK "
    "(pg_catalog.concat(pg_catalog.pg_notify('leak', VALUE)) IS NOT NULL)"
)
IN_ERROR = "CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK ((VALUE)::pg_catalog.int4 > 0)"
READ = "SELECT id, ssn, email FROM public.customers WHERE id <= 5 ORDER BY id"


def _raw(text: str) -> set[str]:
    return {value for value in SSNS + EMAILS if value in text}


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_temporary_text_domain_sees_no_raw_value(sidecar: Sidecar, protocol: str) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("LISTEN leak")
        conn.execute(NOTIFY)
        rows = conn.execute(READ, prepare=protocol == "extended").fetchall()
        conn.execute("SELECT 1")  # notifications arrive with the next exchange
        heard = [n.payload for n in conn.notifies(timeout=1, stop_after=100)]
    assert len(rows) == 5
    assert not _raw(repr(rows))
    assert not _raw(" ".join(heard)), heard


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_temporary_text_domain_puts_no_raw_value_in_an_error(
    sidecar: Sidecar, protocol: str
) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute(IN_ERROR)
        try:
            conn.execute(READ, prepare=protocol == "extended").fetchall()
            said = ""
        except psycopg.Error as exc:
            said = f"{exc} {exc.diag.message_detail} {exc.diag.context}"
    assert not _raw(said), said
