"""A function in place of a built-in (a review's finding).

The function allowlist judges a call by its name as written, and PostgreSQL picks,
among every function of that name on the search_path, the one whose argument types
fit best: ``SELECT upper('a'::varchar)`` runs ``public.upper(varchar)`` before
``pg_catalog.upper(text)``. Every identity signs in as the same database role, so
sec (exempt from masking) defined ``public.upper(varchar)`` returning every SSN, and
alice (masked) read them all by calling ``upper``, a name the allowlist lets through.
Defining a function, procedure or aggregate under a built-in's name, renaming one
to it, or defining an operator is now refused to everyone.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.security.conftest import Upstream
from tests.sidecar.proxy.conftest import SEC_TOKEN, SSNS, Sidecar

SHADOWS = {
    "function": (
        "CREATE FUNCTION public.upper(varchar) RETURNS text LANGUAGE sql AS "
        "$$ SELECT string_agg(ssn, ',') FROM public.customers $$"
    ),
    "aggregate": (
        "CREATE AGGREGATE public.max(varchar) "
        "(sfunc = pg_catalog.textcat, stype = text, initcond = '')"
    ),
    "operator": (
        "CREATE OPERATOR public.= (leftarg = varchar, rightarg = varchar, "
        "function = pg_catalog.texteq)"
    ),
    "rename": "ALTER FUNCTION public.harmless(varchar) RENAME TO upper",
    # Moving one in from a schema no path names (a second reading's finding).
    "set_schema": "ALTER FUNCTION pg_temp.upper(varchar) SET SCHEMA public",
}


@pytest.fixture
def harmless(upstream: Upstream) -> Iterator[None]:
    """A function of sec's, with a name of its own, to rename."""
    with upstream.admin() as admin:
        admin.execute(
            "CREATE FUNCTION public.harmless(varchar) RETURNS text LANGUAGE sql AS "
            "$$ SELECT string_agg(ssn, ',') FROM public.customers $$"
        )
        admin.execute(f"ALTER FUNCTION public.harmless(varchar) OWNER TO {upstream.role}")
    yield
    with upstream.admin() as admin:
        for signature in ("harmless(varchar)", "upper(varchar)"):
            admin.execute(f"DROP FUNCTION IF EXISTS public.{signature}")
        admin.execute("DROP AGGREGATE IF EXISTS public.max(varchar)")
        admin.execute("DROP OPERATOR IF EXISTS public.= (varchar, varchar)")


@pytest.mark.parametrize("shadow", SHADOWS)
def test_nobody_defines_a_function_in_place_of_a_built_in(
    sidecar: Sidecar, harmless: None, shadow: str
) -> None:
    with (
        psycopg.connect(sidecar.dsn("sec", SEC_TOKEN), autocommit=True) as sec,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        sec.execute(SHADOWS[shadow])
    assert "mask.builtin_shadow" in str(refused.value) or "in place of" in str(refused.value)
    with psycopg.connect(sidecar.dsn(), autocommit=True) as alice:
        said = alice.execute("SELECT upper('a'::varchar), max(ssn) FROM public.customers")
        row = said.fetchone()
    assert row is not None and row[0] == "A"
    assert not any(ssn in repr(row) for ssn in SSNS)
