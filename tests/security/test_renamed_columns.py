"""A column alias list does not hide what a statement reads (a review's finding).

Guardrails on classifications, the unbounded-classified-read check and the audit
trail's account of what was read trace each column name to a table's column.
``SELECT d FROM customers AS x(a, b, c, d)`` reads ssn under the name ``d``; a join
alias list renames the same way, and a NATURAL join compares columns no name
points at. sec (exempt from masking) is blocked from reading pii.ssn by a
guardrail here, bob (an agent) from unbounded reads of classified columns: each
of these read raw SSNs past them. A relation whose columns are renamed or merged
now counts as read whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.security.conftest import Upstream, guardrail, security_bundle
from tests.sidecar.proxy.conftest import BOB_TOKEN, SEC_TOKEN, SSNS, Sidecar, start_sidecar

NO_SSN_FOR_SECURITY = guardrail(
    "no-ssn-for-security", "block", 1, teams=["security"], classifications=["pii.ssn"]
)
NO_UNBOUNDED_FOR_AGENTS = guardrail(
    "no-unbounded-for-agents", "block", 2, identity_kinds=["agent"], unbounded_classified_read=True
)

READS = {
    "alias_list": "SELECT d FROM public.customers AS x(a, b, c, d) WHERE a = 21",
    "join_alias_list": (
        "SELECT f FROM (public.notes n RIGHT JOIN public.customers c ON false) "
        "AS j(a, b, c, d, e, f) WHERE c = 21"
    ),
    "partial_alias_list": "SELECT ssn FROM public.customers AS x(a) WHERE a = 21",
    # A join's alias without a column list: its relations' columns under its name.
    "join_alias": (
        "SELECT x.ssn FROM (public.notes n RIGHT JOIN public.customers c ON true) AS x "
        "WHERE x.id = 21"
    ),
    "join_alias_whole_row": (
        "SELECT x FROM (public.notes n RIGHT JOIN public.customers c ON true) AS x WHERE x.id = 21"
    ),
    "natural_join_shared_column": (
        "SELECT c.id FROM public.customers c NATURAL JOIN staging.customers s WHERE c.id = 21"
    ),
    "natural_join": (
        "SELECT id FROM public.customers NATURAL JOIN (VALUES ('021-55-1021')) AS v(ssn)"
    ),
}


@pytest.fixture(scope="module")
def guarded(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    bundle = security_bundle(upstream.name)
    bundle["guardrails"] = [
        NO_SSN_FOR_SECURITY,
        NO_UNBOUNDED_FOR_AGENTS,
        *[{**g, "position": g["position"] + 2} for g in bundle["guardrails"]],
    ]
    proc = start_sidecar(
        tmp_path_factory.mktemp("guarded"),
        upstream.app_dsn,
        security_bundle(upstream.name, guardrails=bundle["guardrails"]),
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("read", READS)
def test_a_renamed_column_is_read_as_what_it_is(guarded: Sidecar, read: str) -> None:
    with (
        psycopg.connect(guarded.dsn("sec", SEC_TOKEN), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as blocked,
    ):
        conn.execute(READS[read]).fetchall()
    assert "no-ssn-for-security" in str(blocked.value)


def test_an_unbounded_read_through_an_alias_list_is_unbounded(guarded: Sidecar) -> None:
    with (
        psycopg.connect(guarded.dsn("bob", BOB_TOKEN), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as blocked,
    ):
        conn.execute("SELECT d FROM public.customers AS x(a, b, c, d)").fetchall()
    assert "no-unbounded-for-agents" in str(blocked.value)


def test_the_guardrail_does_not_block_what_reads_no_ssn(guarded: Sidecar) -> None:
    """Nor what shares no classified column: a NATURAL join compares the columns its
    sides share, not all of theirs (public.notes and public.customers share id)."""
    with psycopg.connect(guarded.dsn("sec", SEC_TOKEN), autocommit=True) as conn:
        rows = conn.execute("SELECT id FROM public.customers WHERE id = 21").fetchall()
        joined = conn.execute(
            "SELECT id FROM public.customers NATURAL JOIN public.notes WHERE id = 21"
        ).fetchall()
    assert rows == [(21,)] and not any(ssn in repr(rows) for ssn in SSNS)
    assert joined == []
