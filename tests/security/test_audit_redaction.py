"""Finding 7: audit fidelity. The trail keeps redacted statements, never literals.

A statement's ``statement`` in the audit event is the engine's redacted text
(literals replaced by ``$n``). Today statements that wrap a query (PREPARE,
CREATE TABLE AS) are recorded verbatim, so a value a user typed, such as the
SSN they looked up, lands in the audit spool and in the control plane. Would
leak: the literal, to everyone who can read the audit trail.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from tests.security.conftest import Upstream
from tests.security.wire import SYNC, RawClient, extended, q
from tests.sidecar.proxy.conftest import Sidecar, wait_for

# Each case: (name, literal, messages). The literal is an SSN-shaped value.
CASES: dict[str, Callable[[str, str], list[bytes]]] = {
    "prepare": lambda t, v: [
        q(f"PREPARE px2_{t} AS SELECT id FROM customers WHERE ssn = '{v}'"),
        q(f"DEALLOCATE px2_{t}"),
    ],
    "prepare-extended": lambda t, v: [
        extended(f"PREPARE pe_{t} AS SELECT id FROM customers WHERE ssn = '{v}'", sync=False),
        SYNC,
    ],
    "create-table-as": lambda t, v: [
        q(f"CREATE TABLE t_{t} AS SELECT id FROM customers WHERE ssn = '{v}'")
    ],
    "create-table-as-masked": lambda t, v: [
        q(f"CREATE TABLE tm_{t} AS SELECT id FROM public.customers WHERE ssn = '{v}'")
    ],
    "explain": lambda t, v: [q(f"EXPLAIN SELECT id FROM customers WHERE ssn = '{v}'")],
    "explain-analyze": lambda t, v: [
        q(f"EXPLAIN ANALYZE SELECT id FROM public.customers WHERE ssn = '{v}'")
    ],
    "declare": lambda t, v: [
        q("BEGIN"),
        q(f"DECLARE c_{t} CURSOR FOR SELECT id FROM customers WHERE ssn = '{v}'"),
        q("COMMIT"),
    ],
    "copy": lambda t, v: [q(f"COPY (SELECT id FROM customers WHERE ssn = '{v}') TO STDOUT")],
    "escape-string": lambda t, v: [q(f"SELECT id FROM customers WHERE ssn = E'{v}'")],
    "dollar-quoted": lambda t, v: [q(f"SELECT id FROM customers WHERE ssn = $q${v}$q$")],
    "do-block": lambda t, v: [q(f"DO $$BEGIN PERFORM 1 WHERE '{v}' = '{v}'; END$$")],
    "create-view": lambda t, v: [
        q(f"CREATE VIEW v_{t} AS SELECT id FROM public.customers WHERE ssn = '{v}'")
    ],
}


def _events_for(sidecar: Sidecar, application: str) -> list[dict[str, Any]]:
    return [
        e
        for e in sidecar.events()
        if e.get("type") == "statement" and e.get("application_name") == application
    ]


@pytest.mark.parametrize("case", CASES)
def test_literals_never_reach_the_audit_trail(
    sidecar: Sidecar, upstream: Upstream, case: str
) -> None:
    """Attack (on the trail's readers' behalf): a user's literal, an SSN they searched
    for, written into the audit event's ``statement`` and the spool."""
    tag = secrets.token_hex(3)
    literal = f"9{secrets.randbelow(100):02d}-{secrets.randbelow(100):02d}-3333"
    application = f"audit_{case}_{tag}"
    messages = CASES[case](tag, literal)
    try:
        with RawClient(sidecar, params={"application_name": application}) as client:
            client.exchange(*messages)
        events = wait_for(lambda: _events_for(sidecar, application), timeout=8)
        assert events, "no audit event for the statement"
        statements = [str(e.get("statement")) for e in events]
        assert not [s for s in statements if literal in s], statements
        spool = sidecar.state_dir / "spool"
        lines = [
            line
            for path in sorted(spool.glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if literal in line
        ]
        assert lines == [], "the literal is in the audit spool"
    finally:
        with upstream.admin() as conn:
            for name in (f"t_{tag}", f"tm_{tag}"):
                conn.execute(f"DROP TABLE IF EXISTS staging.{name}, public.{name}")
            conn.execute(f"DROP VIEW IF EXISTS staging.v_{tag}, public.v_{tag}")
