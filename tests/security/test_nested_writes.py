"""A guardrail on a kind of write holds that write wherever it runs (a review's finding).

The bundle's ``delete-needs-review`` guardrail (``statement_kinds: [delete]``) held
``DELETE FROM notes WHERE id = 1``, but matched only the outer statement's kind, so
every one of these ran at once: a DELETE inside a CTE (of a ``select``), a MERGE
whose action deletes, the DELETE of a PREPARE, of an EXPLAIN ANALYZE, of a COPY
(query). ``no-drop`` (``drop``, ``truncate``) let ``DROP OWNED`` through. Each must
be held (or blocked) as the plain statement is, and nothing deleted.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.security.conftest import Upstream, guardrail, security_bundle
from tests.sidecar.proxy.conftest import Sidecar, start_sidecar

HELD_DELETES = {
    "cte": "WITH d AS (DELETE FROM public.notes WHERE id = 1 RETURNING id) SELECT * FROM d",
    "merge": (
        "MERGE INTO public.notes t USING (VALUES (1)) v(id) ON t.id = v.id WHEN MATCHED THEN DELETE"
    ),
    "prepare": "PREPARE drop_one AS DELETE FROM public.notes WHERE id = 1",
    "explain_analyze": "EXPLAIN ANALYZE DELETE FROM public.notes WHERE id = 1",
    "copy_query": "COPY (DELETE FROM public.notes WHERE id = 1 RETURNING id) TO STDOUT",
    "plain": "DELETE FROM public.notes WHERE id = 1",
}


@pytest.fixture
def one_note(upstream: Upstream) -> int:
    with upstream.admin() as admin:
        admin.execute("TRUNCATE public.notes RESTART IDENTITY")
        admin.execute("INSERT INTO public.notes (body) VALUES ('keep me')")
    return 1


def _notes(upstream: Upstream) -> int:
    with upstream.admin() as admin:
        row = admin.execute("SELECT count(*) FROM public.notes").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("statement", HELD_DELETES)
def test_a_delete_inside_another_statement_is_held_as_a_delete(
    sidecar: Sidecar, upstream: Upstream, one_note: int, statement: str
) -> None:
    with (
        psycopg.connect(sidecar.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.DatabaseError) as held,
    ):
        if statement == "copy_query":
            with conn.cursor().copy(HELD_DELETES[statement]) as copy:
                list(copy)
        else:
            conn.execute(HELD_DELETES[statement])
    assert "delete-needs-review" in str(held.value), held.value
    assert _notes(upstream) == one_note


def test_drop_owned_is_a_drop(sidecar: Sidecar, upstream: Upstream) -> None:
    with (
        psycopg.connect(sidecar.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as blocked,
    ):
        conn.execute("DROP OWNED BY CURRENT_USER")
    assert "no-drop" in str(blocked.value) or "Dropping objects" in str(blocked.value)
    assert not [tag for tag in upstream.ddl_tags() if tag == "DROP OWNED"]


def test_a_merge_that_only_inserts_is_not_a_delete(sidecar: Sidecar, upstream: Upstream) -> None:
    """The kinds are the actions a statement takes, not all it could name: a MERGE
    whose only action inserts is not held by the delete rule."""
    with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN")  # rolled back: nothing left for the next test
        conn.execute(
            "MERGE INTO public.notes t USING (VALUES (1000, 'merged')) v(id, body) "
            "ON t.id = v.id WHEN NOT MATCHED THEN INSERT (id, body) VALUES (v.id, v.body)"
        )
        merged = conn.execute("SELECT count(*) FROM public.notes WHERE id = 1000").fetchone()
        conn.execute("ROLLBACK")
    assert merged == (1,)


@pytest.fixture(scope="module")
def updates_allowed(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sidecar]:
    """Updates allowed first, deletes blocked next: the order a policy author writes."""
    rules = [
        guardrail("allow-updates", "allow", 1, statement_kinds=["update"]),
        guardrail("no-deletes", "block", 2, statement_kinds=["delete"]),
        guardrail("review-inserts", "review", 3, statement_kinds=["insert"]),
        guardrail("allow-the-rest", "allow", 4),
    ]
    proc = start_sidecar(
        tmp_path_factory.mktemp("updates"),
        upstream.app_dsn,
        security_bundle(upstream.name, guardrails=rules),
    )
    try:
        yield proc
    finally:
        proc.stop()


def test_an_allowed_kind_does_not_lift_another_kind_it_carries(
    updates_allowed: Sidecar, upstream: Upstream, one_note: int
) -> None:
    """A review of the fix above found that it let an allow guardrail match any kind a
    statement runs: the UPDATE in a CTE matched allow-updates, first, and the DELETE
    around it ran past no-deletes. Each kind is judged as its own statement now, and
    the most severe answer decides."""
    with psycopg.connect(updates_allowed.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as blocked:
            conn.execute(
                "WITH u AS (UPDATE public.notes SET body = body WHERE id = 0 RETURNING id) "
                "DELETE FROM public.notes WHERE id = 1"
            )
        assert "no-deletes" in str(blocked.value)
        with pytest.raises(psycopg.DatabaseError) as held:
            conn.execute(
                "WITH i AS (INSERT INTO public.notes (body) VALUES ('x') RETURNING id) "
                "UPDATE public.notes SET body = body WHERE id = 0"
            )
        assert "review-inserts" in str(held.value)
        conn.execute("UPDATE public.notes SET body = body WHERE id = 0")  # still allowed
    assert _notes(upstream) == one_note


def test_copy_from_is_an_insert(
    updates_allowed: Sidecar, upstream: Upstream, one_note: int
) -> None:
    """A second reading's finding: a guardrail on insert did not hold COPY ... FROM."""
    with (
        psycopg.connect(updates_allowed.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.DatabaseError) as held,
        conn.cursor().copy("COPY public.notes (body) FROM STDIN") as copy,
    ):
        copy.write_row(("copied",))
    assert "review-inserts" in str(held.value)
    assert _notes(upstream) == one_note
