"""The driver set: psycopg 3's and asyncpg's public APIs against one database.

    python -m compat.drivers --conninfo "host=... port=... user=... password=... dbname=..." \
        --out results.jsonl

Each check is a function that raises on any difference from what PostgreSQL
does; it runs under a timeout of its own, and its outcome is appended to
``--out`` as one JSON line (``{"id", "outcome", "detail"}``, outcome ``ok``,
``fail`` or ``error``) as soon as it ends. Checks marked *by design* test a
difference Warden keeps on purpose (docs/compatibility.md): they are run and
reported, and ``compat.run`` leaves them out of the ratio.

Every check makes the tables it needs under a name of its own, in a scratch
database that is dropped after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import decimal
import io
import json
import signal
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

CHECK_SECONDS = 30
BY_DESIGN: set[str] = set()
SYNC_CHECKS: list[tuple[str, Callable[[str], None]]] = []
ASYNC_CHECKS: list[tuple[str, Callable[[str], Awaitable[None]]]] = []


def check(by_design: bool = False) -> Callable[[Any], Any]:
    def register(fn: Any) -> Any:
        name = fn.__name__.removeprefix("check_")
        if asyncio.iscoroutinefunction(fn):
            ASYNC_CHECKS.append((f"asyncpg.{name}", fn))
        else:
            SYNC_CHECKS.append((f"psycopg.{name}", fn))
        if by_design:
            BY_DESIGN.add(("asyncpg." if asyncio.iscoroutinefunction(fn) else "psycopg.") + name)
        return fn

    return register


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def connect(dsn: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, **kw)


# --- psycopg 3 ---------------------------------------------------------------------


@check()
def check_connect_and_parameters(dsn: str) -> None:
    with connect(dsn) as conn:
        expect(conn.info.parameter_status("client_encoding") == "UTF8", "client_encoding")
        expect(conn.info.parameter_status("integer_datetimes") == "on", "integer_datetimes")
        expect(conn.info.server_version >= 140000, "server_version")
        row = conn.execute(
            "SELECT current_database(), current_setting('server_version')"
        ).fetchone()
        expect(row is not None and row[0] == conn.info.dbname, "current_database")
        expect(conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "idle")


VALUES: list[Any] = [
    42,
    2**40,
    3.5,
    decimal.Decimal("12345.678901"),
    "naïve text ✓",
    b"\x00\x01\xffbinary",
    True,
    None,
    dt.date(2024, 2, 29),
    dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    dt.timedelta(days=3, seconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    [1, 2, 3],
]


@check()
def check_types_round_trip_text_and_binary(dsn: str) -> None:
    with connect(dsn) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            for value in VALUES:
                row = cur.execute("SELECT %s", [value]).fetchone()
                expect(row is not None and row[0] == value, f"{value!r} (binary={binary})")
            row = cur.execute("SELECT %s::text[]", [["a", None, "c"]]).fetchone()
            expect(row is not None and row[0] == ["a", None, "c"], f"text[] (binary={binary})")
            row = cur.execute("SELECT %s::jsonb", [Jsonb({"k": [1, "x"]})]).fetchone()
            expect(row is not None and row[0] == {"k": [1, "x"]}, "jsonb")


@check()
def check_executemany_returning(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE em (id serial PRIMARY KEY, v text)")
        cur = conn.cursor()
        cur.executemany(
            "INSERT INTO em (v) VALUES (%s) RETURNING id, v",
            [(f"v{i}",) for i in range(20)],
            returning=True,
        )
        got = []
        while True:
            got.extend(cur.fetchall())
            if not cur.nextset():
                break
        expect([v for _, v in got] == [f"v{i}" for i in range(20)], f"returned {got[:3]}...")
        expect(conn.execute("SELECT count(*) FROM em").fetchone() == (20,), "count")


@check()
def check_pipeline_mode(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE pl (id int PRIMARY KEY, v text)")
        with conn.pipeline() as p:
            curs = []
            for i in range(50):
                conn.execute("INSERT INTO pl VALUES (%s, %s)", [i, f"v{i}"])
                curs.append(conn.execute("SELECT v FROM pl WHERE id = %s", [i]))
            p.sync()
            expect(
                [c.fetchone() for c in curs] == [(f"v{i}",) for i in range(50)],
                "pipeline results",
            )
        expect(conn.execute("SELECT count(*) FROM pl").fetchone() == (50,), "count")


@check()
def check_pipeline_error_recovery(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE ple (id int PRIMARY KEY)")
        try:
            with conn.pipeline() as p:
                conn.execute("INSERT INTO ple VALUES (%s)", [1])
                p.sync()
                conn.execute("INSERT INTO ple VALUES (%s)", [1])
                conn.execute("INSERT INTO ple VALUES (%s)", [2])
        except pg_errors.UniqueViolation:
            pass
        else:
            raise AssertionError("no UniqueViolation from the pipeline")
        with conn.pipeline():
            cur = conn.execute("SELECT count(*) FROM ple")
        expect(cur.fetchone() == (1,), "after the error")


@check()
def check_pipeline_in_transaction(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE plt (id int)")
        with conn.pipeline(), conn.transaction():
            for i in range(10):
                conn.execute("INSERT INTO plt VALUES (%s)", [i])
        with conn.transaction():
            with conn.pipeline():
                conn.execute("INSERT INTO plt VALUES (%s)", [100])
            conn.execute("SAVEPOINT s1")
            conn.execute("INSERT INTO plt VALUES (%s)", [101])
            conn.execute("ROLLBACK TO SAVEPOINT s1")
        expect(conn.execute("SELECT count(*) FROM plt").fetchone() == (11,), "count")


@check()
def check_prepared_explicit(dsn: str) -> None:
    with connect(dsn) as conn:
        for i in range(10):
            row = conn.execute(
                "SELECT %s::int * 2, %s::text", [i, f"t{i}"], prepare=True
            ).fetchone()
            expect(row == (i * 2, f"t{i}"), f"prepared run {i}: {row}")


@check()
def check_prepared_automatic(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.prepare_threshold = 2
        for i in range(8):
            row = conn.execute("SELECT %s::int + 1", [i]).fetchone()
            expect(row == (i + 1,), f"run {i}: {row}")


@check()
def check_prepared_cache_eviction(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.prepare_threshold = 0
        conn.prepared_max = 2
        for rnd in range(3):
            for q in range(5):
                row = conn.execute(f"SELECT %s::int + {q}", [rnd]).fetchone()
                expect(row == (rnd + q,), f"round {rnd} query {q}: {row}")


@check()
def check_prepared_after_deallocate_all(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.prepare_threshold = 0
        expect(conn.execute("SELECT %s::int", [1]).fetchone() == (1,), "first")
        conn.execute("DEALLOCATE ALL")
        expect(conn.execute("SELECT %s::int", [2]).fetchone() == (2,), "after DEALLOCATE ALL")


@check()
def check_sql_prepare_execute(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("PREPARE twice(int) AS SELECT $1 * 2")
        expect(conn.execute("EXECUTE twice(21)").fetchone() == (42,), "EXECUTE")
        conn.execute("DEALLOCATE twice")


@check()
def check_copy_in_text(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE cit (id int, v text, d date)")
        with conn.cursor().copy("COPY cit (id, v, d) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"tab\there {i}", dt.date(2024, 1, 1)))
        rows = conn.execute("SELECT count(*), max(v) FROM cit").fetchone()
        expect(rows == (1000, "tab\there 999"), f"{rows}")


@check()
def check_copy_in_binary(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE cib (id int, v text, n numeric, j jsonb)")
        with conn.cursor().copy("COPY cib FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "numeric", "jsonb"])
            for i in range(1000):
                copy.write_row((i, f"v{i}", decimal.Decimal(i) / 4, Jsonb({"i": i})))
        row = conn.execute("SELECT count(*), sum(n), max(j->>'i') FROM cib").fetchone()
        expect(row == (1000, decimal.Decimal("124875"), "999"), f"{row}")


@check()
def check_copy_in_csv_blocks(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE cic (id int, v text)")
        data = "".join(f'{i},"quoted, {i}"\n' for i in range(5000)).encode()
        with conn.cursor().copy("COPY cic FROM STDIN (FORMAT csv)") as copy:
            for start in range(0, len(data), 7919):  # blocks that split rows
                copy.write(data[start : start + 7919])
        expect(conn.execute("SELECT count(*) FROM cic").fetchone() == (5000,), "count")


@check()
def check_copy_out_text(dsn: str) -> None:
    with connect(dsn) as conn:
        with conn.cursor().copy(
            "COPY (SELECT i, 'r' || i FROM generate_series(1, 2000) AS i) TO STDOUT"
        ) as copy:
            rows = list(copy.rows())
        expect(len(rows) == 2000 and rows[-1] == ("2000", "r2000"), f"{rows[-1:]}")


@check()
def check_copy_out_binary(dsn: str) -> None:
    with connect(dsn) as conn:
        with conn.cursor().copy(
            "COPY (SELECT i, i::numeric / 2, now()::date FROM generate_series(1, 2000) AS i) "
            "TO STDOUT (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "numeric", "date"])
            rows = list(copy.rows())
        expect(len(rows) == 2000 and rows[9][:2] == (10, decimal.Decimal(5)), f"{rows[9]}")


@check()
def check_copy_out_raw_blocks(dsn: str) -> None:
    with connect(dsn) as conn:
        out = io.BytesIO()
        with conn.cursor().copy(
            "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 500)) TO STDOUT"
        ) as copy:
            for block in copy:
                out.write(block)
        expect(len(out.getvalue()) == 500 * 1001, f"{len(out.getvalue())} bytes")


@check()
def check_copy_failure_keeps_the_connection(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE cif (id int)")
        try:
            with conn.cursor().copy("COPY cif FROM STDIN") as copy:
                copy.write_row((1,))
                raise RuntimeError("client gives up")
        except RuntimeError:
            pass
        except psycopg.Error:
            pass
        expect(conn.execute("SELECT count(*) FROM cif").fetchone() == (0,), "nothing copied")
        try:
            with conn.cursor().copy("COPY cif FROM STDIN") as copy:
                copy.write(b"not a number\n")
        except pg_errors.InvalidTextRepresentation:
            pass
        else:
            raise AssertionError("bad COPY data was accepted")
        expect(conn.execute("SELECT 1").fetchone() == (1,), "usable")


@check()
def check_server_side_cursor(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10) as conn, conn.cursor("ssc") as cur:
        cur.itersize = 100
        cur.execute("SELECT i FROM generate_series(1, 1000) AS i")
        expect(cur.fetchone() == (1,), "fetchone")
        expect(len(cur.fetchmany(10)) == 10, "fetchmany")
        expect(sum(1 for _ in cur) == 989, "iteration")


@check()
def check_server_side_cursor_scroll(dsn: str) -> None:
    with (
        psycopg.connect(dsn, connect_timeout=10) as conn,
        conn.cursor("scroller", scrollable=True) as cur,
    ):
        cur.execute("SELECT i FROM generate_series(1, 100) AS i")
        cur.scroll(50)
        expect(cur.fetchone() == (51,), "relative")
        cur.scroll(9, mode="absolute")
        expect(cur.fetchone() == (10,), "absolute")
        cur.scroll(-5)
        expect(cur.fetchone() == (6,), "backwards")


@check()
def check_server_side_cursor_with_hold(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        cur = conn.cursor("holder", withhold=True)
        cur.execute("SELECT i FROM generate_series(1, 10) AS i")
        conn.commit()
        expect(len(cur.fetchall()) == 10, "after commit")
        cur.close()


@check()
def check_sql_declare_fetch(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute("DECLARE c CURSOR FOR SELECT i FROM generate_series(1, 20) AS i")
        expect(len(conn.execute("FETCH 5 FROM c").fetchall()) == 5, "FETCH 5")
        conn.execute("MOVE 5 IN c")
        expect(conn.execute("FETCH NEXT FROM c").fetchone() == (11,), "after MOVE")
        conn.execute("CLOSE c")
        conn.rollback()


def _cancel_after(conn: psycopg.Connection[Any], use_safe: bool) -> threading.Timer:
    timer = threading.Timer(0.5, conn.cancel_safe if use_safe else conn.cancel)
    timer.start()
    return timer


@check()
def check_cancel_safe(dsn: str) -> None:
    with connect(dsn) as conn:
        timer = _cancel_after(conn, True)
        start = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(10)")
        except pg_errors.QueryCanceled:
            pass
        else:
            raise AssertionError("not cancelled")
        finally:
            timer.cancel()
        expect(time.monotonic() - start < 5, "cancelled late")
        expect(conn.execute("SELECT 1").fetchone() == (1,), "usable after cancel")


@check()
def check_cancel_legacy(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute("CREATE TEMP TABLE t (i int)")
        timer = _cancel_after(conn, False)
        try:
            conn.execute("SELECT pg_sleep(10)")
        except pg_errors.QueryCanceled:
            pass
        else:
            raise AssertionError("not cancelled")
        finally:
            timer.cancel()
        conn.rollback()
        expect(conn.execute("SELECT 1").fetchone() == (1,), "usable after cancel")


@check()
def check_async_cancel(dsn: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            task = asyncio.create_task(conn.execute("SELECT pg_sleep(10)"))
            await asyncio.sleep(0.5)
            await conn.cancel_safe()
            try:
                await task
            except pg_errors.QueryCanceled:
                pass
            else:
                raise AssertionError("not cancelled")
            cur = await conn.execute("SELECT 1")
            expect(await cur.fetchone() == (1,), "usable")

    asyncio.run(run())


def _notices(conn: psycopg.Connection[Any]) -> list[tuple[Any, Any, Any]]:
    """(severity, sqlstate, message) of each notice: a Diagnostic is valid only while
    its handler runs."""
    got: list[tuple[Any, Any, Any]] = []
    conn.add_notice_handler(
        lambda d: got.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
    )
    return got


@check()
def check_notice_from_a_statement(dsn: str) -> None:
    with connect(dsn) as conn:
        got = _notices(conn)
        conn.execute("DROP TABLE IF EXISTS no_such_table_here")
        expect(any(n[:2] == ("NOTICE", "00000") for n in got), f"notices: {got}")


@check()
def check_notice_raised_in_do(dsn: str) -> None:
    with connect(dsn) as conn:
        got = _notices(conn)
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from DO'; END $$")
        expect([n[2] for n in got] == ["hello from DO"], f"notices: {got}")


@check()
def check_notice_raised_in_a_function(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute(
            "CREATE FUNCTION warn_me(t text) RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE WARNING 'careful: %', t; RETURN 1; END $$"
        )
        got = _notices(conn)
        expect(conn.execute("SELECT warn_me('x')").fetchone() == (1,), "result")
        expect([(n[0], n[2]) for n in got] == [("WARNING", "careful: x")], f"notices: {got}")


@check()
def check_listen_notify(dsn: str) -> None:
    with connect(dsn) as listener, connect(dsn) as sender:
        listener.execute("LISTEN compat_channel")
        sender.execute("NOTIFY compat_channel, 'first'")
        sender.execute("SELECT pg_notify('compat_channel', 'second')")
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
        expect(got == ["first", "second"], f"notifications: {got}")
        listener.execute("UNLISTEN *")
        sender.execute("NOTIFY compat_channel, 'third'")
        late = [n.payload for n in listener.notifies(timeout=0.5)]
        expect(late == [], f"after UNLISTEN: {late}")


@check()
def check_transactions_and_savepoints(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE tx (id int)")
        with conn.transaction():
            conn.execute("INSERT INTO tx VALUES (1)")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO tx VALUES (2)")
                    raise RuntimeError("roll back the savepoint")
            except RuntimeError:
                pass
            with conn.transaction():
                conn.execute("INSERT INTO tx VALUES (3)")
        expect(
            conn.execute("SELECT array_agg(id ORDER BY id) FROM tx").fetchone() == ([1, 3],), "rows"
        )
        conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY")
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        conn.execute("COMMIT")


@check()
def check_syntax_error_as_postgresql(dsn: str) -> None:
    with connect(dsn) as conn:
        try:
            conn.execute("SELEC 1")
        except pg_errors.SyntaxError as exc:
            expect(exc.diag.statement_position == "1", f"position {exc.diag.statement_position}")
        else:
            raise AssertionError("no syntax error")
        expect(conn.execute("SELECT 1").fetchone() == (1,), "usable")


@check()
def check_errors_keep_the_session(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE uv (id int PRIMARY KEY)")
        conn.execute("INSERT INTO uv VALUES (1)")
        conn.commit()
        try:
            conn.execute("INSERT INTO uv VALUES (1)")
        except pg_errors.UniqueViolation as exc:
            expect(exc.diag.constraint_name == "uv_pkey", "constraint name")
        else:
            raise AssertionError("no unique violation")
        try:
            conn.execute("SELECT 1")
        except pg_errors.InFailedSqlTransaction:
            pass
        else:
            raise AssertionError("the transaction is not failed")
        conn.rollback()
        expect(conn.execute("SELECT count(*) FROM uv").fetchone() == (1,), "rolled back")


@check()
def check_multi_statement_simple_protocol(dsn: str) -> None:
    with connect(dsn) as conn:
        cur = conn.execute("SELECT 1; SELECT 2")
        expect(cur.fetchone() == (1,), "first")
        expect(bool(cur.nextset()) and cur.fetchone() == (2,), "second")


@check()
def check_multi_statement_extended_protocol(dsn: str) -> None:
    with connect(dsn) as conn:
        try:
            conn.execute("SELECT %s::int; SELECT 2", [1])
        except pg_errors.SyntaxError:
            pass
        else:
            raise AssertionError("PostgreSQL refuses this with 42601")


@check()
def check_client_encoding_latin9(dsn: str) -> None:
    with connect(dsn, client_encoding="LATIN9") as conn:
        expect(conn.info.encoding == "iso8859-15", conn.info.encoding)
        expect(conn.execute("SELECT '€uro œ', %s", ["Ÿ"]).fetchone() == ("€uro œ", "Ÿ"), "text")


@check()
def check_session_settings(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET DateStyle = 'ISO, DMY'")
        conn.execute("SET application_name = 'compat'")
        expect(conn.execute("SHOW TimeZone").fetchone() == ("Asia/Tokyo",), "TimeZone")
        expect(conn.info.parameter_status("application_name") == "compat", "reported")
        conn.execute("RESET ALL")
        conn.execute("DISCARD ALL")


@check()
def check_temporary_tables(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute("CREATE TEMP TABLE tt (i int) ON COMMIT DROP")
        conn.execute("INSERT INTO tt SELECT generate_series(1, 5)")
        expect(conn.execute("SELECT sum(i) FROM tt").fetchone() == (15,), "sum")
        conn.commit()


@check()
def check_large_statement(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE big (id int, v text)")
        values = ",".join(f"({i}, 'value number {i} {'x' * 30}')" for i in range(20000))
        conn.execute(f"INSERT INTO big VALUES {values}")
        expect(conn.execute("SELECT count(*) FROM big").fetchone() == (20000,), "count")


@check()
def check_async_pipeline_and_notifies(dsn: str) -> None:
    async def run() -> None:
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other,
        ):
            async with conn.pipeline():
                curs = [await conn.execute("SELECT %s::int", [i]) for i in range(20)]
            expect([(await c.fetchone()) for c in curs] == [(i,) for i in range(20)], "results")
            await conn.execute("LISTEN async_chan")
            await other.execute("NOTIFY async_chan, 'hi'")
            got = [n.payload async for n in conn.notifies(timeout=5, stop_after=1)]
            expect(got == ["hi"], f"{got}")

    asyncio.run(run())


@check(by_design=True)
def check_backend_pid_is_the_servers(dsn: str) -> None:
    with connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        expect(
            row == (conn.info.backend_pid,),
            f"BackendKeyData pid {conn.info.backend_pid}, pg_backend_pid() {row}",
        )


@check(by_design=True)
def check_terminate_own_backend(dsn: str) -> None:
    with connect(dsn) as victim, connect(dsn) as killer:
        row = killer.execute(
            "SELECT pg_terminate_backend(%s)", [victim.info.backend_pid]
        ).fetchone()
        expect(row == (True,), f"pg_terminate_backend: {row}")


# --- asyncpg ------------------------------------------------------------------------


def asyncpg_params(dsn: str) -> dict[str, Any]:
    d = conninfo_to_dict(dsn)
    return {
        "host": d["host"],
        "port": int(d["port"]),
        "user": d["user"],
        "password": d.get("password"),
        "database": d["dbname"],
        "ssl": False,
    }


@contextlib.asynccontextmanager
async def aconnect(dsn: str, **kw: Any) -> AsyncIterator[Any]:
    """An asyncpg connection, closed when the block ends."""
    import asyncpg

    conn = await asyncpg.connect(**asyncpg_params(dsn), timeout=10, **kw)
    try:
        yield conn
    finally:
        await conn.close()


@check()
async def check_fetch_and_codecs(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        row = await conn.fetchrow(
            "SELECT $1::int, $2::text, $3::numeric, $4::timestamptz, $5::uuid, $6::int[], "
            "$7::bytea, $8::interval, $9::jsonb",
            7,
            "ünïcode",
            decimal.Decimal("1.25"),
            dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            uuid.UUID(int=5),
            [1, 2],
            b"\x00\xff",
            dt.timedelta(hours=1),
            '{"a": 1}',
        )
        expect(row is not None and row[0] == 7 and row[1] == "ünïcode", f"{row}")
        expect(row[2] == decimal.Decimal("1.25") and row[5] == [1, 2], f"{row}")
        expect(await conn.fetchval("SELECT count(*) FROM generate_series(1, 10)") == 10, "fetchval")


@check()
async def check_prepared_statement(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        stmt = await conn.prepare("SELECT $1::int * 3 AS tripled")
        expect([a.name for a in stmt.get_attributes()] == ["tripled"], "attributes")
        for i in range(10):
            expect(await stmt.fetchval(i) == i * 3, f"run {i}")


@check()
async def check_statement_cache(dsn: str) -> None:
    async with aconnect(dsn, statement_cache_size=3) as conn:
        for rnd in range(3):
            for q in range(6):
                expect(await conn.fetchval(f"SELECT $1::int + {q}", rnd) == rnd + q, f"{rnd}/{q}")


@check()
async def check_statement_cache_after_alter(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.execute("CREATE TABLE sca (id int)")
        await conn.execute("INSERT INTO sca VALUES (1)")
        expect(len(await conn.fetch("SELECT * FROM sca")) == 1, "before")
        await conn.execute("ALTER TABLE sca ADD COLUMN extra text")
        rows = await conn.fetch("SELECT * FROM sca")
        expect(len(rows) == 1 and len(rows[0]) == 2, f"after ALTER: {rows}")


@check()
async def check_executemany(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.execute("CREATE TABLE aem (id int, v text)")
        await conn.executemany(
            "INSERT INTO aem VALUES ($1, $2)", [(i, f"v{i}") for i in range(100)]
        )
        expect(await conn.fetchval("SELECT count(*) FROM aem") == 100, "count")


@check()
async def check_copy_records_binary(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.execute("CREATE TABLE acr (id int, v text, at timestamptz)")
        now = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
        result = await conn.copy_records_to_table(
            "acr", records=[(i, f"v{i}", now) for i in range(2000)]
        )
        expect(result == "COPY 2000", result)
        expect(await conn.fetchval("SELECT count(*) FROM acr") == 2000, "count")


@check()
async def check_copy_to_table_text_and_csv(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.execute("CREATE TABLE act (id int, v text)")
        text = "".join(f"{i}\tv{i}\n" for i in range(500)).encode()
        await conn.copy_to_table("act", source=io.BytesIO(text))
        csv = "".join(f'{i},"c, {i}"\n' for i in range(500, 1000)).encode()
        await conn.copy_to_table("act", source=io.BytesIO(csv), format="csv")
        expect(await conn.fetchval("SELECT count(*) FROM act") == 1000, "count")


@check()
async def check_copy_from_table_and_query(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.execute(
            "CREATE TABLE acf AS SELECT i AS id, 'v' || i AS v FROM generate_series(1, 300) i"
        )
        out = io.BytesIO()
        await conn.copy_from_table("acf", output=out)
        expect(out.getvalue().count(b"\n") == 300, "text rows")
        binary = io.BytesIO()
        await conn.copy_from_query(
            "SELECT * FROM acf WHERE id > $1", 100, output=binary, format="binary"
        )
        expect(binary.getvalue().startswith(b"PGCOPY\n\xff\r\n\x00"), "binary signature")


@check()
async def check_cursors(dsn: str) -> None:
    async with aconnect(dsn) as conn, conn.transaction():
        total = 0
        async for record in conn.cursor("SELECT i FROM generate_series(1, 500) i", prefetch=50):
            total += record[0]
        expect(total == 125250, f"sum {total}")
        cur = await conn.cursor("SELECT i FROM generate_series(1, 100) i")
        expect([r[0] for r in await cur.fetch(3)] == [1, 2, 3], "fetch")
        await cur.forward(10)
        expect(await cur.fetchrow() == (14,), "after forward")


@check()
async def check_cancel_by_timeout(dsn: str) -> None:
    import asyncpg

    async with aconnect(dsn) as conn:
        start = time.monotonic()
        try:
            await conn.fetch("SELECT pg_sleep(10)", timeout=0.5)
        except (TimeoutError, asyncpg.QueryCanceledError):
            pass
        else:
            raise AssertionError("not cancelled")
        expect(time.monotonic() - start < 5, "cancelled late")
        expect(await conn.fetchval("SELECT 1") == 1, "usable")


@check()
async def check_log_listener_notices(dsn: str) -> None:
    got: list[Any] = []
    async with aconnect(dsn) as conn:
        conn.add_log_listener(lambda _conn, message: got.append(message))
        await conn.execute("DROP TABLE IF EXISTS no_such_table_either")
        await asyncio.sleep(0.1)
        expect(any(m.sqlstate == "00000" for m in got), f"{got}")


@check()
async def check_listen_notify_listener(dsn: str) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    async with aconnect(dsn) as listener, aconnect(dsn) as sender:
        await listener.add_listener("apg_chan", lambda *args: got.put_nowait(args[3]))
        await sender.execute("NOTIFY apg_chan, 'ping'")
        expect(await asyncio.wait_for(got.get(), 5) == "ping", "payload")
        await listener.remove_listener("apg_chan", lambda *args: None)


@check()
async def check_pool_reset(dsn: str) -> None:
    """asyncpg resets a connection it takes back: ``SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL;``. The next user gets the same session, clean."""
    import asyncpg

    pool = await asyncpg.create_pool(**asyncpg_params(dsn), min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.execute("SET statement_timeout = '123s'")
            await conn.execute("SELECT pg_advisory_lock(4242)")
            # Left listening on purpose: the reset's UNLISTEN * clears it.
            await conn.add_listener("pool_chan", lambda *a: None)
        async with pool.acquire() as conn:
            expect(conn.get_server_pid() == pid, "a new session: the reset failed")
            expect(await conn.fetchval("SHOW statement_timeout") == "0", "RESET ALL")
            locked = await conn.fetchval(
                "SELECT count(*) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            expect(locked == 0, "advisory lock kept")
    finally:
        await pool.close()


@check()
async def check_pool_concurrency(dsn: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(**asyncpg_params(dsn), min_size=2, max_size=4)
    try:

        async def one(i: int) -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT $1::int * 2", i))

        results = await asyncio.gather(*(one(i) for i in range(40)))
        expect(results == [i * 2 for i in range(40)], "results")
    finally:
        await pool.close()


@check()
async def check_transactions_nested(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.execute("CREATE TABLE atx (id int)")
        async with conn.transaction(isolation="repeatable_read"):
            await conn.execute("INSERT INTO atx VALUES (1)")
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO atx VALUES (2)")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
        expect(await conn.fetchval("SELECT array_agg(id) FROM atx") == [1], "rows")


@check()
async def check_errors(dsn: str) -> None:
    import asyncpg

    async with aconnect(dsn) as conn:
        try:
            await conn.execute("SELEC 1")
        except asyncpg.PostgresSyntaxError as exc:
            expect(exc.position == "1", f"position {exc.position}")
        else:
            raise AssertionError("no syntax error")
        try:
            await conn.fetch("SELECT 1/0")
        except asyncpg.DivisionByZeroError:
            pass
        else:
            raise AssertionError("no division by zero")
        expect(await conn.fetchval("SELECT 1") == 1, "usable")


@check()
async def check_type_codec(dsn: str) -> None:
    async with aconnect(dsn) as conn:
        await conn.set_type_codec(
            "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        expect(await conn.fetchval("SELECT $1::json", {"a": [1]}) == {"a": [1]}, "json codec")


# --- running ------------------------------------------------------------------------


class CheckTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise CheckTimeout(f"no answer within {CHECK_SECONDS} s")


def describe(exc: BaseException) -> str:
    """The exception's class, SQLSTATE and first line: what a refusal says."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}{f' [{state}]' if state else ''}: {text[0] if text else ''}"


def run_sync(name: str, fn: Callable[[str], None], dsn: str) -> tuple[str, str]:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CHECK_SECONDS)
    try:
        fn(dsn)
        return "ok", ""
    except AssertionError as exc:
        return "fail", f"AssertionError: {exc}"
    except BaseException as exc:  # a check's error, whatever it is, is its outcome
        if isinstance(exc, KeyboardInterrupt):
            raise
        return "error", describe(exc)
    finally:
        signal.alarm(0)


def run_async(name: str, fn: Callable[[str], Awaitable[None]], dsn: str) -> tuple[str, str]:
    async def bounded() -> None:
        await asyncio.wait_for(fn(dsn), CHECK_SECONDS)

    try:
        asyncio.run(bounded())
        return "ok", ""
    except AssertionError as exc:
        return "fail", f"AssertionError: {exc}"
    except Exception as exc:
        return "error", describe(exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conninfo", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--only", default="", help="run the checks whose id contains this")
    args = parser.parse_args()
    # asyncpg warns when a pooled connection goes back still listening: pool_reset
    # does that on purpose.
    warnings.filterwarnings("ignore", message=".*active notification listener")
    # The checks share one database: each creates tables under names no other uses.
    checks: list[tuple[str, Any, bool]] = [(n, f, False) for n, f in SYNC_CHECKS]
    checks += [(n, f, True) for n, f in ASYNC_CHECKS]
    for name, fn, is_async in checks:
        if args.only and args.only not in name:
            continue
        started = time.monotonic()
        outcome, detail = (run_async if is_async else run_sync)(name, fn, args.conninfo)
        record = {
            "id": name,
            "outcome": outcome,
            "detail": detail[-400:],
            "by_design": name in BY_DESIGN,
            "seconds": round(time.monotonic() - started, 3),
        }
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"{name:<55} {outcome}{'  ' + detail.splitlines()[-1] if detail else ''}")


if __name__ == "__main__":
    main()
