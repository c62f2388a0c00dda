"""Finding 1, the class: a session setting that may change must be applied before the
next statement is judged.

``search_path`` decides what an unqualified name means. The database's default
here is ``staging, public``: unqualified ``customers`` is ``staging.customers``,
which is not classified. ``public.customers.ssn`` is, and alice sees it masked.
An attacker switches the path to ``public`` and, in the same pipeline or write,
reads ``SELECT ssn FROM customers``: if the sidecar judges that statement with
the path it believed before the switch, it sees an unclassified table and
nothing is masked, while the server reads public.customers. Would leak: every
raw public SSN.

The fixed sidecar allows ``search_path`` to change only to '' / pg_catalog /
schemas in the snapshot, applies each change (and each revert: ROLLBACK, an
error ending an implicit transaction, RESET, SET LOCAL at commit) before it
judges the next statement, and records in each statement's audit event the
``session_state`` it was decided under.
"""

from __future__ import annotations

import secrets

import psycopg
import pytest

from tests.security.conftest import (
    PUBLIC_MASKED,
    SHADOW_SSNS,
    STAGING_SSNS,
    assert_decided_under,
    assert_warden_refused,
    wait_event,
)
from tests.security.wire import SYNC, RawClient, Reply, extended, public_ssns_in, q
from tests.sidecar.proxy.conftest import Sidecar

SET_CONFIG_PUBLIC = "SELECT set_config('search_path', 'public', false)"


def _tag() -> str:
    return "t" + secrets.token_hex(4)


def _read(tag: str) -> str:
    return f"SELECT ssn AS {tag} FROM customers ORDER BY id"


def _result_of(reply: Reply, tag: str) -> list[str | None]:
    for result in reply.results:
        if result.columns == [tag]:
            return [row[0] for row in result.text()]
    raise AssertionError(f"no result for the read ({tag}): {reply.errors}")


def _assert_public_masked(sidecar: Sidecar, reply: Reply, tag: str) -> None:
    assert public_ssns_in(reply.raw) == set(), "raw public SSNs came back"
    assert not reply.warden_refusals(), f"the allowed change was refused: {reply.errors}"
    assert _result_of(reply, tag) == PUBLIC_MASKED
    assert_decided_under(wait_event(sidecar, tag), "public")


def _assert_staging(sidecar: Sidecar, reply: Reply, tag: str) -> None:
    assert public_ssns_in(reply.raw) == set(), "raw public SSNs came back"
    assert _result_of(reply, tag) == STAGING_SSNS
    assert_decided_under(wait_event(sidecar, tag), "staging")


def test_psycopg_pipeline(sidecar: Sidecar) -> None:
    """Attack: libpq pipeline mode, set_config then the unqualified read, one flush."""
    tag = _tag()
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            first = conn.execute(SET_CONFIG_PUBLIC)
            second = conn.execute(_read(tag))
        assert first.fetchone() == ("public",)
        rows = [r[0] for r in second.fetchall()]
    assert public_ssns_in(repr(rows)) == set(), "raw public SSNs came back"
    assert rows == PUBLIC_MASKED
    assert_decided_under(wait_event(sidecar, tag), "public")


@pytest.mark.parametrize(
    "change",
    [
        SET_CONFIG_PUBLIC,
        "SET search_path = public",
        "SET search_path TO 'public'",
        "SET SESSION search_path = public, staging",
        "SELECT pg_catalog.set_config('SEARCH_PATH', 'public', false)",
    ],
)
def test_two_queries_in_one_write(sidecar: Sidecar, change: str) -> None:
    """Attack: ``Q <switch to public>`` and ``Q SELECT ssn FROM customers`` in ONE write."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(q(change), q(_read(tag)))
    _assert_public_masked(sidecar, reply, tag)


@pytest.mark.parametrize("sync_between", [False, True], ids=["no-sync", "sync-between"])
def test_extended_pipeline(sidecar: Sidecar, sync_between: bool) -> None:
    """Attack: Parse/Bind/Execute of set_config, then of the read, one write (with and
    without a Sync between them)."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            extended(SET_CONFIG_PUBLIC, sync=sync_between), extended(_read(tag), sync=False), SYNC
        )
    _assert_public_masked(sidecar, reply, tag)


def test_sequential_set_then_read(sidecar: Sidecar) -> None:
    """Attack without any race: SET search_path = public, wait for the answer, then
    read. The sidecar must resolve names with the path the server confirmed."""
    tag = _tag()
    with RawClient(sidecar) as client:
        first = client.exchange(q("SET search_path = public"))
        assert not first.errors, first.errors
        reply = client.exchange(q(_read(tag)))
    _assert_public_masked(sidecar, reply, tag)


@pytest.mark.parametrize("how", ["simple", "extended"])
def test_reset_goes_back_to_staging(sidecar: Sidecar, how: str) -> None:
    """The reverse: after switching to public, ``RESET search_path`` and the read in one
    write. The read is staging's (unclassified, unmasked) and the event says so."""
    tag = _tag()
    with RawClient(sidecar) as client:
        assert not client.exchange(q("SET search_path = public")).errors
        if how == "simple":
            reply = client.exchange(q("RESET search_path"), q(_read(tag)))
        else:
            reply = client.exchange(
                extended("RESET search_path", sync=False), extended(_read(tag), sync=False), SYNC
            )
    _assert_staging(sidecar, reply, tag)


@pytest.mark.parametrize(
    "change",
    [
        "SET search_path = pg_temp",
        "SET search_path = shadow",
        "SET search_path = shadow, public",
        "SET search_path = public, shadow",
        "SELECT set_config('search_path', 'shadow', false)",
        "SELECT set_config('search_path', 'public, ' || 'x', false)",
        "SELECT set_config('search_path', lower('PUBLIC'), false)",
    ],
)
def test_search_path_outside_the_snapshot_is_refused(sidecar: Sidecar, change: str) -> None:
    """Attack: point unqualified names at a schema the bundle knows nothing about
    (``shadow`` exists in the database, readable by the sidecar's role), or at a value
    the sidecar cannot know (computed). Would leak: whatever the sidecar cannot judge."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(q(change), q(_read(tag)))
        after = client.exchange(q("SELECT pg_catalog.current_schemas(false)::text"))
    text = reply.raw.decode("latin-1")
    assert public_ssns_in(text) == set(), "raw public SSNs came back"
    assert not [s for s in SHADOW_SSNS if s in text], "rows of a schema outside the snapshot"
    refusals = reply.split()[0].warden_refusals()
    assert refusals, f"not refused: {reply.split()[0].errors or reply.split()[0].tags}"
    assert after.column() == ["{staging,public}"]


@pytest.mark.parametrize(
    "change", ["SET search_path = ''", "SET search_path = pg_catalog", "SET search_path = staging"]
)
def test_search_path_inside_the_snapshot_is_allowed(sidecar: Sidecar, change: str) -> None:
    """Not over-blocking: '' / pg_catalog / a snapshot schema may be set."""
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        psycopg.ClientCursor(conn).execute(change)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_error_in_the_implicit_transaction_reverts_the_change(sidecar: Sidecar) -> None:
    """Revert: set_config(public) and ``SELECT 1/0`` in one extended batch (no Sync
    between): the error rolls the implicit transaction back and the server's path is
    staging again. The read after the Sync must be judged under staging."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            extended(SET_CONFIG_PUBLIC, sync=False),
            extended("SELECT 1/0", sync=False),
            SYNC,
            extended(_read(tag), sync=False),
            SYNC,
        )
    assert "22012" in reply.sqlstates
    _assert_staging(sidecar, reply, tag)


def test_rollback_reverts_the_change(sidecar: Sidecar) -> None:
    """Revert: BEGIN; SET search_path = public; ROLLBACK; read, as four Q in one write."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            q("BEGIN"), q("SET search_path = public"), q("ROLLBACK"), q(_read(tag))
        )
    _assert_staging(sidecar, reply, tag)


def test_rollback_to_savepoint_reverts_the_change(sidecar: Sidecar) -> None:
    """Revert: a change made after a savepoint is undone by ROLLBACK TO it."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            q("BEGIN"),
            q("SAVEPOINT a"),
            q("SET search_path = public"),
            q("ROLLBACK TO SAVEPOINT a"),
            q(_read(tag)),
            q("COMMIT"),
        )
    _assert_staging(sidecar, reply, tag)


def test_commit_keeps_the_change(sidecar: Sidecar) -> None:
    """Not reverted: BEGIN; SET search_path = public; COMMIT; read → public, masked."""
    tag = _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            q("BEGIN"), q("SET search_path = public"), q("COMMIT"), q(_read(tag))
        )
    _assert_public_masked(sidecar, reply, tag)


def test_set_local_applies_until_commit(sidecar: Sidecar) -> None:
    """SET LOCAL: public inside the transaction (masked), staging after COMMIT."""
    inside, outside = _tag(), _tag()
    with RawClient(sidecar) as client:
        reply = client.exchange(
            q("BEGIN"),
            q("SET LOCAL search_path = public"),
            q(_read(inside)),
            q("COMMIT"),
            q(_read(outside)),
        )
    _assert_public_masked(sidecar, reply, inside)
    _assert_staging(sidecar, reply, outside)


def test_refused_change_leaves_the_session_usable(sidecar: Sidecar) -> None:
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            psycopg.ClientCursor(conn).execute("SET search_path = shadow")
        assert_warden_refused(info.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
