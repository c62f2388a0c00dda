"""Writes that read a masked column of the table they write (a review's finding).

The target of an UPDATE, DELETE or MERGE is not rewritten, so a write whose
expressions name a masked column of its target reads the raw value: into a column
anyone may read, into RETURNING, into an error message, or as a yes/no answer. The
engine refuses such a write (``mask.write_oracle``); to tell the target's column
from a sub-select's own, it looked for the name among the columns of the
sub-select's tables, and did not see that a column alias list (``AS x(a, b, c, d)``,
on the table or on a join around it) renames them. So ``ssn`` inside ``(SELECT ssn
FROM customers AS x(a, b, c, d))`` counted as the sub-select's, while PostgreSQL
resolves it to the target's. Every carrier below read raw SSNs as alice (masked)
through the real sidecar, in both protocols.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.security.conftest import Upstream
from tests.sidecar.proxy.conftest import SSNS, Sidecar

ATTACKS = {
    "returning": (
        "UPDATE public.customers SET name = name WHERE id = 1 "
        "RETURNING (SELECT ssn FROM public.customers AS x(a, b, c, d) LIMIT 1)"
    ),
    "into_a_readable_column": (
        "UPDATE public.customers SET name = (SELECT ssn FROM notes x(a, b) "
        "RIGHT JOIN public.customers y(e, f, g, h) ON true LIMIT 1) WHERE id > 0"
    ),
    "error_message": (
        "UPDATE public.customers SET name = name WHERE id = 7 "
        "AND (SELECT ssn::int FROM public.customers x(a, b, c, d) LIMIT 1) = 1"
    ),
    "yes_or_no": (
        "UPDATE public.customers SET name = name WHERE id = 7 AND EXISTS "
        "(SELECT 1 FROM public.customers x(a, b, c, d) WHERE ssn LIKE '007-%')"
    ),
    "join_alias": (
        "UPDATE public.customers SET name = name WHERE id = 1 RETURNING (SELECT ssn FROM "
        "(notes n RIGHT JOIN public.customers y ON false) AS j(a, b, c, d, e, f) LIMIT 1)"
    ),
    "merge": (
        "MERGE INTO public.customers t USING (VALUES (1)) v(id) ON t.id = v.id WHEN MATCHED "
        "THEN UPDATE SET name = (SELECT ssn FROM public.customers x(a, b, c, d) LIMIT 1)"
    ),
    # PostgreSQL 18 names the written row old and new in RETURNING (a second
    # review's finding). The engine reads PostgreSQL 18's grammar: on an older
    # server the statement would fail at the server instead of leaking, but it must
    # be refused before it gets there.
    "returning_old": "UPDATE public.customers SET name = name WHERE id = 1 RETURNING old.ssn",
    "returning_with_alias": (
        "UPDATE public.customers SET name = name WHERE id = 1 RETURNING WITH (OLD AS o) o.ssn"
    ),
    "delete_returning": (
        "DELETE FROM public.customers WHERE id = -1 "
        "RETURNING (SELECT ssn FROM public.customers AS x(a, b, c, d) LIMIT 1)"
    ),
}


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_renamed_sub_select_does_not_hide_the_targets_column(
    sidecar: Sidecar, upstream: Upstream, attack: str, protocol: str
) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")  # nothing an attack might write outlives the test
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute(ATTACKS[attack], prepare=protocol == "extended")
        conn.execute("ROLLBACK")
    assert "mask.write_oracle" in str(refused.value) or "masked" in str(refused.value)
    assert not any(ssn in str(refused.value) for ssn in SSNS)
    with psycopg.connect(upstream.admin_dsn) as admin:
        names = {row[0] for row in admin.execute("SELECT name FROM public.customers")}
    assert not names & set(SSNS)


def test_a_sub_select_of_its_own_table_still_runs(sidecar: Sidecar) -> None:
    """The check still tells a sub-select's own column from the target's where it
    can: a write reading an unmasked column of another table runs."""
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")
        row = conn.execute(
            "UPDATE public.customers SET name = name WHERE id = 1 "
            "RETURNING (SELECT count(*) FROM notes n WHERE n.id > 0)"
        ).fetchone()
        conn.execute("ROLLBACK")
    assert row is not None
