"""The audit trail's write path: scrub, seal (seq and hash) and COPY events into a chain.

``_chain_append`` locks the chain's head row, drops event ids already stored
(``audit_event_key``), assigns ``seq`` and the hash in order, COPYs the rows and
moves the head, all in the caller's transaction (with the daily rollups).
``audit_control_event`` is one control-plane decision; a sidecar's batch comes
through ``audit.sink.intake`` into the sidecar's own chain, whose head is
anchored into the datasource's chain (``chain.anchored`` events: inline when one
is due and the datasource's head is free, else by ``audit_chains_anchor``).
Imports no other app: a datasource is passed in.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson
import psycopg
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import (
    CONTROL_PLANE_CHAIN,
    SIDECAR_CHAINS_LIKE,
    EventSource,
    datasource_chain,
)
from audit.sink.chain import CHAINED_FIELDS, GENESIS, canonical_doc, chain_hash, from_micros, micros
from audit.sink.kinds import CONTROL_LABELS
from audit.sink.lookups import lookups

logger = logging.getLogger("audit.services")  # the name operators' log routing knows

# Keys whose values could be raw statement text or data: dropped at any depth,
# known or not, so a buggy or hostile producer cannot put literals in the trail.
_VALUE_CARRYING = (
    "sql",
    "param",
    "value",
    "literal",
    "bind",
    "arg",
    "password",
    "secret",
    "token",
    "data",
    "query",
    "text",
    "sample",
    "row",
    "result",
)
# The engine's own per-statement redacted text is the one "sql" allowed.
_SAFE_NESTED = {"redacted_sql", "tables_read", "tables_written", "columns_read"}

# ``all(map(isinstance, items, _ALL_STR))``: the per-item test without a Python loop.
_ALL_STR = itertools.repeat(str)


def _judge_key(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _SAFE_NESTED and any(word in lowered for word in _VALUE_CARRYING)


_judged_keys = functools.lru_cache(maxsize=4096)(_judge_key)
# Keys are the sender's to make long: only short ones are remembered, so the cache
# holds at most 4,096 names of this length, not 4,096 of a request body's.
_KEPT_KEY_LENGTH = 64


def _carries_values(key: str) -> bool:
    return _judged_keys(key) if len(key) <= _KEPT_KEY_LENGTH else _judge_key(key)


def _scrub(value: Any) -> Any:
    """Drop value-carrying keys at any depth; make numbers read back from jsonb as sent.

    Non-finite floats become None, and whole floats integers (jsonb keeps
    ``1e+16`` as ``10000000000000000``; the hash must cover what is read back).
    """
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else str(k)
            if not _carries_values(key):
                out[key] = v if v is None or v.__class__ in _PLAIN else _scrub(v)
        return out
    if isinstance(value, list):
        if all(map(isinstance, value, _ALL_STR)):
            return value  # the usual list (tables, functions): nothing to scrub
        return [v if v is None or v.__class__ in _PLAIN else _scrub(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value
    return value


_PLAIN = {str, int, bool}


def _clean_text(value: str) -> str:
    """Text PostgreSQL will store as given: no NUL, no lone surrogate."""
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _clean_deep(value: Any) -> Any:
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {_clean_text(str(k)): _clean_deep(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_deep(v) for v in value]
    return value


def _seal(rows: list[dict[str, Any]], head_seq: int, head_hash: str) -> tuple[int, str, bytes]:
    """Assign seq, prev_hash and hash in order; return the new head and the rows as
    COPY text, built in the same pass (each row's ``extra`` is encoded once, for
    the hash and for the copy)."""
    seq, prev = head_seq, head_hash
    lines = []
    for row in rows:
        seq += 1
        row["seq"] = seq
        try:
            extra_json: bytes | None = orjson.dumps(row["extra"])
        except TypeError:  # an int beyond 64 bits or a lone surrogate: see below
            extra_json = None
        try:
            canonical = canonical_doc(row, extra_json)
            if extra_json is None:  # the standard encoder takes big ints
                extra_json = _COPY_JSON.encode(row["extra"]).encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            canonical = b""
        if not canonical or b"\\u0000" in canonical:
            # Rare: NUL, lone surrogates or NaN somewhere. Clean the row, then hash.
            for name in CHAINED_FIELDS:
                row[name] = _clean_deep(row[name])
            row["extra"] = _scrub(row["extra"])
            canonical = canonical_doc(row)
            extra_json = _COPY_JSON.encode(row["extra"]).encode("utf-8")
        row["prev_hash"] = prev
        row["hash"] = prev = chain_hash(prev, canonical)
        lines.append(_copy_line(row, extra_json.decode("utf-8")))
    lines.append("")
    return seq, prev, "\n".join(lines).encode("utf-8")


_COPY_COLUMNS = (*CHAINED_FIELDS, "prev_hash", "hash")
_COPY_SQL = "COPY audit_event ({}) FROM STDIN".format(", ".join(f'"{c}"' for c in _COPY_COLUMNS))
_ARRAY_FIELDS = {"tables", "columns", "classifications", "masked_columns"}
_TIME_FIELDS = {"occurred_at", "received_at"}
_COPY_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_COPY_TABS = len(_COPY_COLUMNS) - 1
_NULL = "\\N"


def _copy_escape(text: str) -> str:
    """COPY's text format escapes backslash, tab, newline and carriage return."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return (
            text.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return text


def _array_literal(items: list[str]) -> str:
    """A text[] literal: every item double-quoted, backslashes and quotes escaped."""
    if not items:
        return "{}"
    body = '","'.join(items)
    if "\\" not in body and body.count('"') == 2 * (len(items) - 1):
        return '{"' + body + '"}'  # the usual case: nothing inside needs escaping
    quoted = (
        '"' + (i.replace("\\", "\\\\").replace('"', '\\"') if ("\\" in i or '"' in i) else i) + '"'
        for i in items
    )
    return "{" + ",".join(quoted) + "}"


@functools.lru_cache(maxsize=4096)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


def _timestamp_text(us: int) -> str:
    """A timestamptz literal (UTC) for microseconds since the epoch; a batch's events
    share their seconds, so the calendar arithmetic is mostly a cache hit."""
    second, fraction = divmod(us, 1_000_000)
    return f"{_second_text(second)}.{fraction:06d}+00"


def _copy_line(row: dict[str, Any], extra_json: str) -> str:
    """One row in COPY's text format, in ``_COPY_COLUMNS`` order.

    Nearly every row needs no escaping: it is written whole and checked whole
    (one tab per column boundary, no other backslash than the NULL markers, no
    line break); a row that fails the check is escaped value by value."""
    datasource_id, rows, duration, risk = (
        row["datasource_id"],
        row["rows"],
        row["duration_ms"],
        row["risk"],
    )
    nulls = (datasource_id is None) + (rows is None) + (duration is None) + (risk is None)
    line = (
        f"{row['event_id']}\t{_timestamp_text(row['occurred_at'])}\t"
        f"{_timestamp_text(row['received_at'])}\t{row['chain']}\t{row['seq']}\t"
        f"{row['source']}\t{row['type']}\t{row['actor']}\t{row['identity_name']}\t"
        f"{row['identity_kind']}\t{row['identity_owner']}\t"
        f"{_NULL if datasource_id is None else datasource_id}\t{row['environment']}\t"
        f"{row['sidecar_id']}\t{row['client_addr']}\t{row['application_name']}\t"
        f"{row['statement_kind']}\t{row['statement']}\t{row['fingerprint']}\t"
        f"{_array_literal(row['tables'])}\t{_array_literal(row['columns'])}\t"
        f"{_array_literal(row['classifications'])}\t{_array_literal(row['masked_columns'])}\t"
        f"{row['action']}\t{row['outcome']}\t{_NULL if rows is None else rows}\t"
        f"{_NULL if duration is None else repr(duration)}\t{_NULL if risk is None else risk}\t"
        f"{extra_json}\t{row['prev_hash']}\t{row['hash']}"
    )
    if (
        line.count("\\") == nulls
        and line.count("\t") == _COPY_TABS
        and "\n" not in line
        and "\r" not in line
    ):
        return line
    fields = []
    for name in _COPY_COLUMNS:
        value = extra_json if name == "extra" else row[name]
        if value is None:
            fields.append("\\N")
        elif name in _TIME_FIELDS:
            fields.append(_timestamp_text(value))
        elif name in _ARRAY_FIELDS:
            fields.append(_copy_escape(_array_literal(value)))
        elif isinstance(value, str):
            fields.append(_copy_escape(value))
        else:
            fields.append(repr(value) if isinstance(value, float) else str(value))
    return "\t".join(fields)


# Partitions known to exist, per process: (month start, environment).
_partitions_seen: set[tuple[datetime.date, str]] = set()


def audit_partition_ensure(*, at: datetime.datetime, environment: str) -> None:
    """Make sure the month of ``at`` (and its leaf for ``environment``) exists.

    Runs in a savepoint: if it cannot be made the event still lands, in a DEFAULT
    partition, so ingestion never refuses an event for want of a partition.
    """
    key = (at.astimezone(datetime.UTC).date().replace(day=1), environment)
    if key in _partitions_seen:
        return
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT audit_partition_ensure(%s, %s)", [at, environment])
    except DatabaseError:
        logger.exception("audit partition for %s/%s could not be ensured", key[0], environment)
        return
    # Remembered only once it is committed: a rolled-back creation must be retried.
    transaction.on_commit(lambda: _partitions_seen.add(key))


def _partitions_ensure(rows: list[dict[str, Any]]) -> None:
    months = {}
    for row in rows:
        day = _utc_day(row["occurred_at"] // _DAY_US)
        months.setdefault((day.year, day.month, row["environment"]), row["occurred_at"])
    for (_y, _m, env), at in months.items():
        audit_partition_ensure(at=from_micros(at), environment=env)


# How often a sidecar chain's head is written into its datasource's chain while
# events arrive. Events after the last anchor are vouched for by the head row
# alone (a superuser who truncates them and rewinds the head goes unseen), so
# this is the window; each anchor is one more event in the datasource's chain, at
# most 2,880 a day per sidecar however busy, and one per batch for a sidecar that
# sends fewer than one batch per interval.
ANCHOR_INTERVAL = datetime.timedelta(seconds=30)
ANCHOR_TYPE = "chain.anchored"


def _chain_append(
    chain: str, rows: list[dict[str, Any]], *, anchor_into: str = "", writer: int = 0
) -> int:
    """Append rows (event ids not seen before) to ``chain``; return how many were new.

    Must run inside a transaction: the head row stays locked until it commits,
    so concurrent appends to one chain queue up and seq stays gap-free.

    ``anchor_into`` names the chain this one is anchored into (a sidecar chain's
    datasource chain): when an anchor is due and that chain's head is not locked
    by someone else, the new head is written there as a ``chain.anchored`` event
    in the same transaction. Its head is never waited for: sidecars of one
    datasource would queue on it again. ``writer`` (the sidecar's id) keys the
    rows this batch adds to the daily rollups, for the same reason.
    """
    if not rows:
        return 0
    _partitions_ensure(rows)
    connection.ensure_connection()
    # A cursor that binds on the server: Django's binds on the client, which spent
    # more Python quoting the batch's event ids than building them. Its errors are
    # Django's all the same (callers catch DatabaseError; a broken connection is
    # then known to be one and closed).
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(
            "INSERT INTO audit_chain_head (chain, seq, hash) VALUES (%s, 0, %s) "
            "ON CONFLICT (chain) DO NOTHING",
            [chain, GENESIS],
        )
        cursor.execute(
            "SELECT seq, hash, anchored_at FROM audit_chain_head WHERE chain = %s "
            "FOR NO KEY UPDATE",
            [chain],
        )
        head_seq, head_hash, anchored_at = cursor.fetchone()
        cursor.execute(
            "INSERT INTO audit_event_key (event_id) SELECT unnest(%s::text[]) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            # The array literal built here: psycopg's list dumper is per-item Python.
            # Sent as text and cast on the server.
            [_array_literal([r["event_id"] for r in rows])],
        )
        fresh_ids = {r[0] for r in cursor.fetchall()}
        fresh: list[dict[str, Any]] = []
        for row in rows:
            if row["event_id"] in fresh_ids:
                fresh_ids.discard(row["event_id"])  # a repeat inside the batch is a duplicate
                fresh.append(row)
        if not fresh:
            return 0
        new_seq, new_hash, copy_text = _seal(fresh, head_seq, head_hash)
        with cursor.copy(_COPY_SQL) as copy:
            copy.write(copy_text)
        _rollups_add(cursor, fresh, writer)
        now = timezone.now()
        if (
            anchor_into
            and (anchored_at is None or now - anchored_at >= ANCHOR_INTERVAL)
            and _anchor_append(
                cursor,
                into=anchor_into,
                chain=chain,
                seq=new_seq,
                hash_=new_hash,
                datasource_id=fresh[-1]["datasource_id"],
                environment=fresh[-1]["environment"],
                wait=False,
            )
        ):
            cursor.execute(
                "UPDATE audit_chain_head SET seq = %s, hash = %s, anchored_seq = %s, "
                "anchored_at = %s WHERE chain = %s",
                [new_seq, new_hash, new_seq, now, chain],
            )
        else:
            cursor.execute(
                "UPDATE audit_chain_head SET seq = %s, hash = %s WHERE chain = %s",
                [new_seq, new_hash, chain],
            )
    return len(fresh)


def _anchor_append(
    cursor: Any,
    *,
    into: str,
    chain: str,
    seq: int,
    hash_: str,
    datasource_id: int | None,
    environment: str,
    wait: bool,
) -> bool:
    """Append a ``chain.anchored`` event naming ``chain``'s head (seq, hash) to
    ``into``; with ``wait=False`` give up (False) when ``into``'s head is locked.

    The anchor is an event of ``into`` like any other, hashed into that chain, so
    rewriting or truncating ``chain`` below an anchored seq breaks verification
    unless ``into`` is rewritten from the anchor on as well."""
    if wait:
        cursor.execute(
            "INSERT INTO audit_chain_head (chain, seq, hash) VALUES (%s, 0, %s) "
            "ON CONFLICT (chain) DO NOTHING",
            [into, GENESIS],
        )
    cursor.execute(
        "SELECT seq, hash FROM audit_chain_head WHERE chain = %s "
        + ("FOR NO KEY UPDATE" if wait else "FOR NO KEY UPDATE SKIP LOCKED"),
        [into],
    )
    head = cursor.fetchone()
    if head is None:
        return False  # locked by another batch or a control event (or no head yet)
    now = micros(timezone.now())
    row = _control_row(
        chain=into,
        action=ANCHOR_TYPE,
        actor_name="system",
        datasource_id=datasource_id,
        environment=environment,
        at=now,
        extra={"chain": chain, "seq": seq, "hash": hash_},
    )
    _partitions_ensure([row])
    into_seq, into_hash, copy_text = _seal([row], head[0], head[1])
    with cursor.copy(_COPY_SQL) as copy:
        copy.write(copy_text)
    cursor.execute(
        "UPDATE audit_chain_head SET seq = %s, hash = %s WHERE chain = %s",
        [into_seq, into_hash, into],
    )
    return True


def _control_row(
    *,
    chain: str,
    action: str,
    actor_name: str,
    datasource_id: int | None,
    environment: str,
    at: int,
    extra: dict[str, Any],
    client_addr: str = "",
    outcome: str = "",
) -> dict[str, Any]:
    """A control-plane event's row: the chained columns, its times in microseconds."""
    return {
        "event_id": uuid.uuid4().hex,
        "occurred_at": at,
        "received_at": at,
        "chain": chain,
        "source": EventSource.CONTROL_PLANE.value,
        "type": action,
        "actor": actor_name[:150],
        "identity_name": "",
        "identity_kind": "",
        "identity_owner": "",
        "datasource_id": datasource_id,
        "environment": environment,
        "sidecar_id": "",
        "client_addr": client_addr,
        "application_name": "",
        "statement_kind": "",
        "statement": "",
        "fingerprint": "",
        "tables": [],
        "columns": [],
        "classifications": [],
        "masked_columns": [],
        "action": "",
        "outcome": outcome,
        "rows": None,
        "duration_ms": None,
        "risk": None,
        "extra": extra,
    }


def audit_chains_anchor() -> int:
    """Anchor every sidecar chain whose head moved since its last anchor; return how many.

    Intake anchors inline while events arrive, but skips when the datasource's
    head is busy and cannot anchor the last batch of a sidecar that then goes
    quiet: this closes that window (run from beat, before verification). Each
    chain in its own transaction; the datasource's head is locked first, then
    the sidecar's (intake takes them the other way round but never waits for
    the datasource's, so the two cannot deadlock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT chain FROM audit_chain_head WHERE chain LIKE %s AND seq > anchored_seq "
            "ORDER BY chain",
            [SIDECAR_CHAINS_LIKE],
        )
        chains = [name for (name,) in cursor.fetchall()]
    anchored = 0
    for chain in chains:
        into = chain.rsplit("/", 1)[0]
        with (
            transaction.atomic(),
            connection.wrap_database_errors,
            psycopg.Cursor(connection.connection) as cursor,
        ):
            cursor.execute(
                "INSERT INTO audit_chain_head (chain, seq, hash) VALUES (%s, 0, %s) "
                "ON CONFLICT (chain) DO NOTHING",
                [into, GENESIS],
            )
            cursor.execute(
                "SELECT 1 FROM audit_chain_head WHERE chain = %s FOR NO KEY UPDATE", [into]
            )
            cursor.execute(
                "SELECT seq, hash, anchored_seq FROM audit_chain_head WHERE chain = %s "
                "FOR NO KEY UPDATE",
                [chain],
            )
            seq, hash_, anchored_seq = cursor.fetchone()
            if seq <= anchored_seq:
                continue
            cursor.execute(
                "SELECT datasource_id, environment FROM audit_event WHERE chain = %s AND seq = %s",
                [chain, seq],
            )
            found = cursor.fetchone()
            datasource_id, environment = found if found else (None, "")
            _anchor_append(
                cursor,
                into=into,
                chain=chain,
                seq=seq,
                hash_=hash_,
                datasource_id=datasource_id,
                environment=environment,
                wait=True,
            )
            cursor.execute(
                "UPDATE audit_chain_head SET anchored_seq = %s, anchored_at = now() "
                "WHERE chain = %s",
                [seq, chain],
            )
            anchored += 1
    return anchored


_DAY_US = 86_400 * 1_000_000


@functools.lru_cache(maxsize=1024)
def _utc_day(number: int) -> datetime.date:
    """The UTC date of day ``number`` since the epoch (an event time // ``_DAY_US``)."""
    return datetime.date(1970, 1, 1) + datetime.timedelta(days=number)


def _rollups_add(cursor: Any, rows: Iterable[dict[str, Any]], writer: int = 0) -> None:
    """Count the rows into both daily rollups, in one pass.

    ``audit_access_daily``: allowed statements that read classified data, per (UTC
    day, identity, datasource, set of classifications read, masked or not): one
    statement counts once whatever number of classifications it read;
    ``audit_activity_daily``: statements per (UTC day, environment, outcome); both
    per ``writer`` too, so that batches of different sidecars never upsert the
    same row (the second would wait for the first's commit). Readers sum over
    writers."""
    access: dict[tuple[datetime.date, str, int, str, bool], list[Any]] = {}
    activity: Counter[tuple[datetime.date, str, str]] = Counter()
    for row in rows:
        if row["type"] != "statement":
            continue
        day = _utc_day(row["occurred_at"] // _DAY_US)
        activity[day, row["environment"], row["outcome"]] += 1
        if row["action"] != "allow" or not row["classifications"]:
            continue
        if row["datasource_id"] is None:
            continue
        labels = _LABEL_SEPARATOR.join(sorted(set(row["classifications"])))
        key = (day, row["identity_name"], row["datasource_id"], labels, bool(row["masked_columns"]))
        entry = access.get(key)
        if entry is None:
            access[key] = [row["identity_kind"], 1]
        else:
            entry[1] += 1
    # Sorted by key: one order for every writer, so concurrent batches cannot deadlock.
    _rollup_add(
        cursor,
        _ACCESS_DAILY_ADD,
        [
            (k[0], k[1], access[k][0], k[2], k[3], k[4], writer, access[k][1])
            for k in sorted(access)
        ],
    )
    _rollup_add(cursor, _ACTIVITY_DAILY_ADD, [(*k, writer, activity[k]) for k in sorted(activity)])


def _rollup_add_sql(table: str, columns: dict[str, str], key: tuple[str, ...]) -> str:
    """An upsert adding rows (one array per column, the last being ``events``) into a rollup."""
    arrays = ", ".join(f"%s::{kind}[]" for kind in columns.values())
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET events = {table}.events + EXCLUDED.events"
    )


# A set of classifications travels as one text (unnest would flatten a text[][]),
# joined by a character no classification name holds.
_LABEL_SEPARATOR = "\x1f"
_ACCESS_DAILY_ADD = (
    "INSERT INTO audit_access_daily (day, identity_name, identity_kind, datasource_id, "
    "classifications, masked, writer, events) "
    "SELECT day, identity_name, identity_kind, datasource_id, "
    "string_to_array(labels, chr(31)), masked, writer, events "
    "FROM unnest(%s::date[], %s::text[], %s::text[], %s::int[], %s::text[], %s::boolean[], "
    "%s::int[], %s::bigint[]) "
    "AS u(day, identity_name, identity_kind, datasource_id, labels, masked, writer, events) "
    "ON CONFLICT (day, identity_name, datasource_id, classifications, masked, writer) "
    "DO UPDATE SET events = audit_access_daily.events + EXCLUDED.events"
)
_ACTIVITY_DAILY_ADD = _rollup_add_sql(
    "audit_activity_daily",
    {"day": "date", "environment": "text", "outcome": "text", "writer": "int", "events": "bigint"},
    key=("day", "environment", "outcome", "writer"),
)


def _rollup_add(cursor: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        # Array literals built here, as for the event ids: psycopg's list dumper is
        # per-item Python, and these lists run to hundreds of items.
        columns = zip(*rows, strict=True)
        cursor.execute(sql, [_array_literal([str(v) for v in column]) for column in columns])


# The rollups recomputed from the events themselves, from a day on (see below).
_ACCESS_DAILY_FROM_EVENTS = """
INSERT INTO audit_access_daily (day, identity_name, identity_kind, datasource_id,
                                classifications, masked, events)
SELECT (occurred_at AT TIME ZONE 'UTC')::date, identity_name, min(identity_kind),
       datasource_id,
       ARRAY(SELECT c FROM unnest(classifications) AS c GROUP BY c ORDER BY c COLLATE "C"),
       cardinality(masked_columns) > 0, count(*)
FROM audit_event
WHERE type = 'statement' AND action = 'allow' AND datasource_id IS NOT NULL
  AND cardinality(classifications) > 0 AND occurred_at >= %s
GROUP BY 1, 2, 4, 5, 6
"""
_ACTIVITY_DAILY_FROM_EVENTS = """
INSERT INTO audit_activity_daily (day, environment, outcome, events)
SELECT (occurred_at AT TIME ZONE 'UTC')::date, environment, outcome, count(*)
FROM audit_event
WHERE type = 'statement' AND occurred_at >= %s
GROUP BY 1, 2, 3
"""


def audit_rollups_rebuild(*, since: datetime.date) -> None:
    """Recount both daily rollups from the stored events, for every UTC day from ``since``.

    For a rollup that missed events (those stored by processes still running the
    code from before a rollup existed, during a deployment), or after a restore.
    The rollups are locked first: a batch that is being ingested either committed
    its counts before (and its events are read) or adds them after.
    """
    start = datetime.datetime.combine(since, datetime.time(), tzinfo=datetime.UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE audit_access_daily, audit_activity_daily IN EXCLUSIVE MODE")
        cursor.execute("DELETE FROM audit_access_daily WHERE day >= %s", [since])
        cursor.execute("DELETE FROM audit_activity_daily WHERE day >= %s", [since])
        cursor.execute(_ACCESS_DAILY_FROM_EVENTS, [start])
        cursor.execute(_ACTIVITY_DAILY_FROM_EVENTS, [start])


def audit_control_event(
    *,
    action: str,
    actor: Any = None,
    datasource: Any = None,
    target: str = "",
    outcome: str = "",
    detail: dict[str, Any] | None = None,
    client_addr: str = "",
    actor_name: str = "",
) -> None:
    """Record a decision a person (or the control plane) took, in the audit trail.

    ``action`` is dotted, e.g. ``approval.approved``, ``auth.sign_in_failed``,
    ``token.issued``; ``detail`` must never hold a secret or a raw classified
    value (keys that could carry one are dropped anyway). The event joins the
    datasource's chain when it concerns one, else the ``control-plane`` chain,
    inside the caller's transaction: a change that rolls back leaves no event.
    ``action`` must be declared in ``audit.sink.kinds`` (the explorer lists those).
    """
    if action not in CONTROL_LABELS:
        raise ValueError(f"{action!r} is not a declared audit event type (audit/sink/kinds.py).")
    if not actor_name:
        is_user = actor is not None and getattr(actor, "is_authenticated", False)
        actor_name = actor.get_username() if is_user else "system"
    datasource_id = getattr(datasource, "pk", None) if datasource is not None else None
    environment = ""
    if datasource_id is not None:
        environment = datasource.environment.name
        chain = datasource_chain(datasource_id)
    else:
        chain = CONTROL_PLANE_CHAIN
    extra: dict[str, Any] = {"target": target} if target else {}
    if detail:
        extra["detail"] = _scrub(detail)
    row = _control_row(
        chain=chain,
        action=action,
        actor_name=actor_name,
        datasource_id=datasource_id,
        environment=environment,
        at=micros(timezone.now()),
        extra=extra,
        client_addr=client_addr or "",
        outcome=outcome,
    )
    with transaction.atomic():
        _chain_append(chain, [row])


def audit_partitions_prepare(
    *,
    environments: Iterable[str] | None = None,
    months_ahead: int = 2,
    now: datetime.datetime | None = None,
) -> int:
    """Create this month and the next ``months_ahead`` for the control plane's own
    events and every environment (``environments``: by default governance's)."""
    if environments is None:
        environments = lookups().environments()
    now = now or timezone.now()
    environments = ["", *(name for name in environments if name)]
    month = now.astimezone(datetime.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    made = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for _ in range(months_ahead + 1):
            for env in environments:
                cursor.execute("SELECT audit_partition_ensure(%s, %s)", [month, env])
                made += 1
            month = (month + datetime.timedelta(days=32)).replace(day=1)
    return made
