"""Finding 6: a statement prepared with SQL PREPARE, run by a protocol Bind after
the rules changed.

The sidecar re-decides protocol-prepared statements (Parse) when the bundle
changes, and refuses SQL ``EXECUTE`` of SQL-prepared ones. But SQL PREPARE and
protocol Parse share one namespace on the server: a statement made by
``PREPARE px AS ...`` can be run with ``Bind(statement="px")``, which the
sidecar does not know and forwards. An attacker prepares while exempt from
masking, waits for the policy to mask them, then Binds. Would leak: the raw SSN
the new policy masks. (And the mirror image: Parse "px" with the protocol, then
SQL ``EXECUTE px`` after the change.)
"""

from __future__ import annotations

from typing import Any

from tests.security.conftest import (
    assert_refused_fields,
    publish,
)
from tests.security.wire import SYNC, RawClient, bind_execute, parse, public_ssns_in, q
from tests.sidecar.proxy.conftest import SSNS, Sidecar


def test_sql_prepare_then_protocol_bind_after_the_change(
    exempt_then_masked: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Attack: ``PREPARE px`` (simple Query) while exempt; the bundle now masks alice;
    ``Bind(statement "px")``/Execute/Sync on the same connection. Must be refused
    (42501 or 26000) and never return the raw SSN. SQL ``EXECUTE px`` too."""
    sidecar, masked = exempt_then_masked
    with RawClient(sidecar) as client:
        prepared = client.exchange(q("PREPARE px AS SELECT ssn FROM public.customers WHERE id = 1"))
        assert not prepared.errors, prepared.errors
        # Positive control: exempt, the statement returns the raw value.
        assert client.exchange(q("EXECUTE px")).column() == [SSNS[0]]

        publish(sidecar, masked)

        reply = client.exchange(bind_execute("px"))
        assert public_ssns_in(reply.raw) == set(), "Bind of the SQL-prepared statement leaked"
        assert reply.errors, f"not refused: {reply.tags}"
        assert reply.errors[0].get("C") in ("42501", "26000"), reply.errors

        again = client.exchange(q("EXECUTE px"))
        assert public_ssns_in(again.raw) == set()
        assert again.errors, f"not refused: {again.tags}"
        assert_refused_fields(again.errors[0])
        assert client.exchange(q("SELECT 1")).column() == ["1"]


def test_protocol_parse_then_sql_execute_after_the_change(
    exempt_then_masked: tuple[Sidecar, dict[str, Any]],
) -> None:
    """Mirror image: ``Parse("px2")`` while exempt; after the change, SQL
    ``EXECUTE px2`` (and ``EXPLAIN ANALYZE EXECUTE``, ``CREATE TABLE AS EXECUTE``)
    must not run the statement decided under the old rules."""
    sidecar, masked = exempt_then_masked
    with RawClient(sidecar) as client:
        made = client.exchange(
            parse("SELECT ssn FROM public.customers WHERE id = 1", name="px2"),
            bind_execute("px2", sync=False),
            SYNC,
        )
        assert made.column() == [SSNS[0]], made.errors

        publish(sidecar, masked)

        for run in ("EXECUTE px2", "CREATE TEMP TABLE px2_copy AS EXECUTE px2"):
            reply = client.exchange(q(run))
            assert public_ssns_in(reply.raw) == set(), f"{run} leaked the raw SSN"
        copied = client.exchange(q("SELECT * FROM px2_copy"))
        assert public_ssns_in(copied.raw) == set(), "CREATE TABLE AS EXECUTE copied the raw SSN"
        assert client.exchange(q("SELECT 1")).column() == ["1"]
