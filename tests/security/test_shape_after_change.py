"""A statement's shape outliving the rules it was decided under.

A text that differs from one decided before only in its literals' values
(``WHERE id = 7``, an ORM's ``WHERE "email" = 'a@b.c'``: the shapes of most
OLTP reads) is given that shape's verdict without the engine: by the policy,
and on the native relay by the relay itself, which keeps such verdicts per
session and compares the next text's bytes with the shape's. An attacker who
may read a column warms that up, and keeps reading after the rules change to
mask it. If the kept verdict were given again, the next read of the shape
would run as first allowed: raw SSNs. It must be judged under the new rules.

On the native relay the test also checks, from the sidecar's metrics, that the
relay did serve the shape before the change: otherwise the attack would not have
reached the code it is aimed at. (A change of the session's state, which the
relay checks as well, is ``tests/sidecar/proxy/test_native_relay.py``'s: with
names pinned to the schema they were resolved in, no text allowed as sent
reads differently under another search_path.)
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest

from tests.security.conftest import (
    PUBLIC_MASKED,
    publish,
)
from tests.security.wire import RawClient, Reply, public_ssns_in, q
from tests.sidecar.proxy.conftest import SSNS, Sidecar


def _served_by_relay(sidecar: Sidecar) -> int:
    found = re.search(
        r'warden_sidecar_shape_decisions_total\{path="relay"\} (\d+)', sidecar.metrics()
    )
    return int(found.group(1)) if found else 0


def _warm(client: RawClient, read: str, expected: list[str]) -> None:
    """The shape read with ids 1..6, each answered as ``expected`` says."""
    for n in range(1, 7):
        reply = client.exchange(q(read.format(n, n)))
        assert not reply.errors, reply.errors
        assert reply.column() == [expected[n - 1]]


def _assert_relay_served(sidecar: Sidecar, relay: str, before: int) -> None:
    if relay == "native":
        assert _served_by_relay(sidecar) - before >= 3, "the relay never served the shape"


def _only_masked(reply: Reply, expected: str) -> None:
    assert public_ssns_in(reply.raw) == set(), "the kept verdict ran: raw SSNs came back"
    assert not reply.errors, reply.errors
    assert reply.column() == [expected]


@pytest.mark.parametrize(
    "condition", ["id = {}", "id = {} AND name <> 'nobody {}'"], ids=["integer", "and-string"]
)
def test_a_shape_served_before_the_rules_changed_is_judged_under_the_new_ones(
    relay: str, exempt_then_masked: tuple[Sidecar, dict[str, Any]], condition: str
) -> None:
    """Exempt, alice reads ``public.customers.ssn`` by id: allowed as sent, so the
    shape is kept. The new bundle masks her: the next id must come back masked."""
    sidecar, masked = exempt_then_masked
    tag = "t" + secrets.token_hex(4)
    read = f"SELECT ssn AS {tag} FROM public.customers WHERE " + condition
    before = _served_by_relay(sidecar)
    with RawClient(sidecar) as client:
        _warm(client, read, SSNS)
        _assert_relay_served(sidecar, relay, before)
        publish(sidecar, masked)
        _only_masked(client.exchange(q(read.format(7, 7))), PUBLIC_MASKED[6])
        _only_masked(client.exchange(q(read.format(8, 8))), PUBLIC_MASKED[7])
