"""Finding 1, as a property: the state a statement is decided under is the server's.

Random interleavings of everything that changes how the server reads the next
statement (client_encoding, standard_conforming_strings, search_path; by SET
and set_config; simple and extended protocol, with and without Sync; changes
reverted by ROLLBACK or by an error ending an implicit transaction), sent in
ONE write on a fresh connection, with probe statements in between that return
the server's own view:

    SELECT current_setting('standard_conforming_strings') AS s<k>,
           current_setting('client_encoding') AS e<k>,
           pg_catalog.current_schemas(true)::text AS p<k>

For every probe that ran, its audit event's ``session_state`` (what the sidecar
judged it under) must equal what the server answered. Any difference is a
parser/state differential: the sidecar read a statement differently from the
server, which is the root of findings 1 to 3.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.security.conftest import session_state, statement_events
from tests.security.wire import SYNC, RawClient, extended, q
from tests.sidecar.proxy.conftest import Sidecar, wait_for

ENCODINGS = ["UTF8", "LATIN1", "LATIN9", "WIN1252", "EUC_JP", "SJIS", "BIG5"]
FORMS = ["simple", "extended-sync", "extended-nosync"]
_probe_ids = itertools.count(1)

Op = tuple[str, str, str, str]  # (kind, value, spelling, form)

OPS = st.one_of(
    st.tuples(
        st.just("encoding"),
        st.sampled_from(ENCODINGS),
        st.sampled_from(["set", "set_config"]),
        st.sampled_from(FORMS),
    ),
    st.tuples(
        st.just("scs"),
        st.sampled_from(["on", "off"]),
        st.sampled_from(["set", "set_config"]),
        st.sampled_from(FORMS),
    ),
    st.tuples(
        st.just("path"),
        st.sampled_from(["public", "staging", "reset"]),
        st.sampled_from(["set", "set_config"]),
        st.sampled_from(FORMS),
    ),
    st.tuples(
        st.just("txn"), st.sampled_from(["BEGIN", "ROLLBACK"]), st.just(""), st.just("simple")
    ),
    st.tuples(st.just("error"), st.just(""), st.just(""), st.sampled_from(FORMS)),
    st.tuples(st.just("probe"), st.just(""), st.just(""), st.sampled_from(FORMS)),
    st.tuples(st.just("probe"), st.just(""), st.just(""), st.sampled_from(FORMS)),
)


def _sql(op: Op, k: int | None) -> str:
    kind, value, spelling, _ = op
    if kind == "probe":
        return (
            f"SELECT current_setting('standard_conforming_strings') AS s{k}, "
            f"current_setting('client_encoding') AS e{k}, "
            f"pg_catalog.current_schemas(true)::text AS p{k}"
        )
    if kind == "encoding":
        if spelling == "set":
            return f"SET client_encoding TO '{value}'"
        return f"SELECT set_config('client_encoding', '{value}', false)"
    if kind == "scs":
        if spelling == "set":
            return f"SET standard_conforming_strings = {value}"
        return f"SELECT set_config('standard_conforming_strings', '{value}', false)"
    if kind == "path":
        if value == "reset":
            return "RESET search_path"
        if spelling == "set":
            return f"SET search_path = {value}"
        return f"SELECT set_config('search_path', '{value}', false)"
    if kind == "txn":
        return value
    return "SELECT 1/0"


def _schemas(text: str) -> list[str]:
    inner = text.strip().removeprefix("{").removesuffix("}")
    return [s.strip('"') for s in inner.split(",") if s]


def _batch(ops: list[Op]) -> tuple[bytes, list[int]]:
    parts: list[bytes] = []
    probes: list[int] = []
    open_batch = False
    for op in ops:
        k = None
        if op[0] == "probe":
            k = next(_probe_ids)
            probes.append(k)
        sql = _sql(op, k)
        form = op[3]
        if form == "simple":
            if open_batch:
                parts.append(SYNC)
                open_batch = False
            parts.append(q(sql))
        else:
            parts.append(extended(sql, sync=form == "extended-sync"))
            open_batch = form == "extended-nosync"
    if open_batch:
        parts.append(SYNC)
    return b"".join(parts), probes


def _check(sidecar: Sidecar, ops: list[Op]) -> None:
    note(f"ops={ops}")
    data, _ = _batch(ops)
    with RawClient(sidecar) as client:
        reply = client.exchange(data)
    answered: dict[int, dict[str, Any]] = {}
    for result in reply.results:
        match = re.fullmatch(r"s(\d+)", (result.columns or [""])[0])
        if match is None or not result.rows:
            continue
        k = int(match.group(1))
        s, e, p = (v.decode("ascii") if v is not None else "" for v in result.rows[0])
        answered[k] = {
            "standard_conforming_strings": s,
            "client_encoding": e,
            "search_path": _schemas(p),
        }
    if not answered:
        return
    found = wait_for(lambda: all(statement_events(sidecar, f"s{k}") for k in answered), timeout=8)
    assert found, "a probe that ran has no audit event"
    for k, server in answered.items():
        event = statement_events(sidecar, f"s{k}")[-1]
        state = session_state(event)
        decided = {
            "standard_conforming_strings": state.get("standard_conforming_strings"),
            "client_encoding": state.get("client_encoding"),
            "search_path": list(state.get("search_path") or []),
        }
        assert decided == server, f"probe s{k}: decided under {decided}, the server: {server}"


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=10))
def test_decided_state_equals_the_servers(sidecar: Sidecar, ops: list[Op]) -> None:
    """Attack class: any sequence that makes the sidecar's idea of the session state
    differ from the server's, so the next statement means two different things."""
    _check(sidecar, [*ops, ("probe", "", "", "simple")])
