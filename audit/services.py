"""Write paths of the audit app: configuration history and the audit trail.

The trail: ``audit_events_ingest`` takes a sidecar's batch, ``audit_control_event``
one control-plane decision; both append through ``_chain_append``, which locks the
chain's head row, drops event ids already stored (``audit_event_key``), assigns
``seq`` and the hash in order, COPYs the rows and moves the head, all in one
transaction (with the ``audit_access_daily`` rollup). ``audit_verify`` walks the
chains; ``audit_retention_enforce`` drops expired partitions and anchors the chains.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import itertools
import json
import logging
import math
import operator
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DatabaseError, connection, models, transaction
from django.utils import timezone

from audit.chain import (
    CHAINED_FIELDS,
    GENESIS,
    canonical_doc,
    canonical_event,
    chain_hash,
    from_micros,
    micros,
)
from audit.context import current_request_id
from audit.models import (
    CONTROL_PLANE_CHAIN,
    DEFAULT_RETENTION_DAYS,
    AuditRetention,
    AuditVerification,
    ChangeAction,
    ChangeRecord,
    EventSource,
    datasource_chain,
)

logger = logging.getLogger(__name__)

# Never copied into history: secrets and derived credentials.
_NEVER_RECORDED = {"digest", "scram_verifier", "password"}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    return value


def object_snapshot(obj: models.Model) -> dict[str, Any]:
    """A JSON-ready dict of obj's fields; relations by their natural name.

    Foreign keys and many-to-many fields are recorded as the related object's
    ``str()`` so that "from what to what" stays readable after renames.
    Timestamps that change on every save are left out.
    """
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.name in _NEVER_RECORDED or field.name in {"id", "created_at", "updated_at"}:
            continue
        if isinstance(field, models.ForeignKey):
            related = getattr(obj, field.name)
            data[field.name] = str(related) if related is not None else None
        else:
            data[field.name] = _plain(field.value_from_object(obj))
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            data[field.name] = sorted(str(o) for o in getattr(obj, field.name).all())
    return data


def change_record_create(
    *,
    actor: Any,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    object_id: Any = None,
) -> ChangeRecord | None:
    """Record one change; an update that changed nothing records nothing."""
    if action == ChangeAction.UPDATE and before == after:
        return None
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    record = ChangeRecord(
        actor=actor if is_user else None,
        actor_name=(actor.get_username() if is_user else "system")[:150],
        request_id=current_request_id(),
        action=action,
        content_type=ContentType.objects.get_for_model(obj, for_concrete_model=True),
        object_id=str(object_id if object_id is not None else obj.pk),
        object_repr=str(obj)[:200],
        before=before,
        after=after,
    )
    record.full_clean()
    record.save()
    _policy_change_event(record, obj)
    return record


def _policy_change_event(record: ChangeRecord, obj: models.Model) -> None:
    """Every recorded policy change is also a ``policy.change`` event in the trail.

    Field names only, never the values (history keeps those, with its own rules).
    """
    from governance.models import Datasource

    datasource = obj if isinstance(obj, Datasource) else getattr(obj, "datasource", None)
    if datasource is not None and not isinstance(datasource, Datasource):
        datasource = None
    audit_control_event(
        action="policy.change",
        actor=record.actor,
        actor_name=record.actor_name,
        datasource=datasource,
        target=f"{record.content_type.model}:{record.object_id} {record.object_repr}"[:300],
        outcome=record.action,
        detail={
            "change_record": record.pk,
            "model": record.content_type.model,
            "fields": [name for name, _b, _a in record.changes],
            "request_id": record.request_id,
        },
    )


# --- the audit trail: ingestion ----------------------------------------------------------

# Event keys that become columns; everything else a sidecar sends goes to ``extra``.
_TEXT_COLUMNS = {
    "type": "type",
    "identity": "identity_name",
    "identity_kind": "identity_kind",
    "owner": "identity_owner",
    "client_addr": "client_addr",
    "application_name": "application_name",
    "kind": "statement_kind",
    "statement": "statement",
    "fingerprint": "fingerprint",
    "action": "action",
    "outcome": "outcome",
}
_ARRAY_COLUMNS = {
    "tables": "tables",
    "columns_read": "columns",
    "classifications": "classifications",
    "masked_columns": "masked_columns",
}
# Kept in ``extra`` as they come (after the scrub below).
_KNOWN_EXTRA = {
    "reasons",
    "revision",
    "error_sqlstate",
    "statements",
    "tables_read",
    "tables_written",
    "functions",
}
# Claims the token settles (the datasource, the sidecar) or that are ours to assign.
_IGNORED = {"id", "ts", "datasource", "sidecar", "rows", "duration_ms", "risk"}
# Every key that is not ``extra``'s (one set test per key instead of three).
_COLUMN_KEYS = frozenset(_IGNORED) | frozenset(_TEXT_COLUMNS) | frozenset(_ARRAY_COLUMNS)
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
_SIDECAR_TYPES = frozenset(
    {"statement", "session_start", "session_end", "login_failed", "login_throttled"}
)
_MIN_TS = 946_684_800  # 2000-01-01: anything earlier is a broken clock
_FUTURE_SLACK_SECONDS = 86_400


@functools.lru_cache(maxsize=4096)
def _carries_values(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _SAFE_NESTED and any(word in lowered for word in _VALUE_CARRYING)


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


def _as_text(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return None


_TEXT_KEYS = tuple(_TEXT_COLUMNS)
_ARRAY_KEYS = tuple(_ARRAY_COLUMNS)
_text_values = operator.itemgetter(*_TEXT_KEYS)
_array_values = operator.itemgetter(*_ARRAY_KEYS)
_INT64 = 2**63
_INT32 = 2**31  # risk is an integer column
# ``error_sqlstate`` would fall to the value-carrying test ("sql"): a five-character
# SQLSTATE is kept, anything else in its place is named invalid.
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


def _sidecar_row(
    event: dict[str, Any], *, received_us: int, context: dict[str, Any]
) -> dict[str, Any]:
    """One sidecar event as column values (see the contract in docs/audit.md).

    The row holds exactly the chained columns but ``seq`` (``_seal`` adds it), its
    times as microseconds since the epoch: it is what the hash covers, as it is.
    """
    extra: dict[str, Any] = {}
    invalid: list[str] = []
    ts = event["ts"]
    if _MIN_TS <= ts <= received_us / 1_000_000 + _FUTURE_SLACK_SECONDS:
        occurred_us = round(ts * 1_000_000)
    else:
        # A broken clock must not put the event in year 1970 or 3000; keep the claim.
        occurred_us = received_us
        extra["claimed_ts"] = _scrub(ts)
    try:
        texts = _text_values(event)
    except KeyError:
        texts = tuple(map(event.get, _TEXT_KEYS))
    if not all(map(isinstance, texts, _ALL_STR)):
        texts = _texts_repaired(texts, invalid)
    (kind, identity, identity_kind, owner, addr, app) = texts[:6]
    (statement_kind, statement, fp, action, outcome) = texts[6:]
    if kind not in _SIDECAR_TYPES:
        # A sidecar cannot speak for the control plane (``policy.change`` …).
        extra["claimed_type"] = kind[:64]
        kind = "sidecar.unknown"
    try:
        arrays = _array_values(event)
    except KeyError:
        arrays = tuple(map(event.get, _ARRAY_KEYS))
    lists = []
    for key, items in zip(_ARRAY_KEYS, arrays, strict=True):
        if items.__class__ is list and all(map(isinstance, items, _ALL_STR)):
            lists.append(items)
        else:
            if items is not None:
                invalid.append(key)
            lists.append([])
    tables, columns, classifications, masked = lists
    rows, risk, duration = event.get("rows"), event.get("risk"), event.get("duration_ms")
    if rows is not None and not (rows.__class__ is int and -_INT64 < rows < _INT64):
        invalid.append("rows")
        rows = None
    if risk is not None and not (risk.__class__ is int and -_INT32 <= risk < _INT32):
        invalid.append("risk")
        risk = None
    if duration is not None:
        duration = _as_duration(duration)
        if duration is None:
            invalid.append("duration_ms")
    for key in event.keys() - _COLUMN_KEYS:
        value = event[key]
        if key in _KNOWN_EXTRA:
            if key == "error_sqlstate" and not _is_sqlstate(value):
                invalid.append(key)
                continue
        elif _carries_values(key):
            continue
        if value is None or value.__class__ in _PLAIN:
            extra[key] = value
        elif value.__class__ is list and all(map(isinstance, value, _ALL_STR)):
            extra[key] = value  # the usual list (tables_read, functions): nothing to scrub
        else:
            extra[key] = _scrub(value)
    if invalid:
        extra["invalid_fields"] = sorted(invalid)
    return {
        "event_id": _clean_text(event["id"]),
        "occurred_at": occurred_us,
        "received_at": received_us,
        "chain": context["chain"],
        "source": _SIDECAR_SOURCE,
        "type": kind,
        "actor": "",
        "identity_name": identity,
        "identity_kind": identity_kind,
        "identity_owner": owner,
        "datasource_id": context["datasource_id"],
        "environment": context["environment"],
        "sidecar_id": context["sidecar_name"],
        "client_addr": addr,
        "application_name": app,
        "statement_kind": statement_kind,
        "statement": statement,
        "fingerprint": fp,
        "tables": tables,
        "columns": columns,
        "classifications": classifications,
        "masked_columns": masked,
        "action": action,
        "outcome": outcome,
        "rows": rows,
        "duration_ms": duration,
        "risk": risk,
        "extra": extra,
    }


_SIDECAR_SOURCE = EventSource.SIDECAR.value


def _is_sqlstate(value: Any) -> bool:
    return value is None or (value.__class__ is str and _SQLSTATE.fullmatch(value) is not None)


def _texts_repaired(texts: tuple[Any, ...], invalid: list[str]) -> tuple[str, ...]:
    """The text fields with numbers spelled out and anything else emptied (and named)."""
    repaired = []
    for key, value in zip(_TEXT_KEYS, texts, strict=True):
        text = _as_text(value)
        if text is None:
            invalid.append(key)
            text = ""
        repaired.append(text)
    return tuple(repaired)


def _as_duration(value: Any) -> float | None:
    if value.__class__ is float:
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int too large for a double
            return None
    return None


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


def _chain_append(chain: str, rows: list[dict[str, Any]]) -> int:
    """Append rows (event ids not seen before) to ``chain``; return how many were new.

    Must run inside a transaction: the head row stays locked until it commits,
    so concurrent appends to one chain queue up and seq stays gap-free.
    """
    if not rows:
        return 0
    months = {}
    for row in rows:
        day = _utc_day(row["occurred_at"] // _DAY_US)
        months.setdefault((day.year, day.month, row["environment"]), row["occurred_at"])
    for (_y, _m, env), at in months.items():
        audit_partition_ensure(at=from_micros(at), environment=env)
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
            "SELECT seq, hash FROM audit_chain_head WHERE chain = %s FOR NO KEY UPDATE", [chain]
        )
        head_seq, head_hash = cursor.fetchone()
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
        cursor.execute(
            "UPDATE audit_chain_head SET seq = %s, hash = %s WHERE chain = %s",
            [new_seq, new_hash, chain],
        )
        _rollups_add(cursor, fresh)
    return len(fresh)


_DAY_US = 86_400 * 1_000_000


@functools.lru_cache(maxsize=1024)
def _utc_day(number: int) -> datetime.date:
    """The UTC date of day ``number`` since the epoch (an event time // ``_DAY_US``)."""
    return datetime.date(1970, 1, 1) + datetime.timedelta(days=number)


def _rollups_add(cursor: Any, rows: Iterable[dict[str, Any]]) -> None:
    """Count the rows into both daily rollups, in one pass.

    ``audit_access_daily``: allowed statements per (UTC day, identity, datasource,
    classification); ``audit_activity_daily``: statements per (UTC day,
    environment, outcome)."""
    access: dict[tuple[datetime.date, str, int, str], list[Any]] = {}
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
        for classification in set(row["classifications"]):
            key = (day, row["identity_name"], row["datasource_id"], classification)
            entry = access.get(key)
            if entry is None:
                access[key] = [row["identity_kind"], 1]
            else:
                entry[1] += 1
    # Sorted by key: one order for every writer, so concurrent batches cannot deadlock.
    _rollup_add(
        cursor,
        _ACCESS_DAILY_ADD,
        [(k[0], k[1], access[k][0], k[2], k[3], access[k][1]) for k in sorted(access)],
    )
    _rollup_add(cursor, _ACTIVITY_DAILY_ADD, [(*k, activity[k]) for k in sorted(activity)])


def _rollup_add_sql(table: str, columns: dict[str, str], key: tuple[str, ...]) -> str:
    """An upsert adding rows (one array per column, the last being ``events``) into a rollup."""
    arrays = ", ".join(f"%s::{kind}[]" for kind in columns.values())
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET events = {table}.events + EXCLUDED.events"
    )


_ACCESS_DAILY_ADD = _rollup_add_sql(
    "audit_access_daily",
    {
        "day": "date",
        "identity_name": "text",
        "identity_kind": "text",
        "datasource_id": "int",
        "classification": "text",
        "events": "bigint",
    },
    key=("day", "identity_name", "datasource_id", "classification"),
)
_ACTIVITY_DAILY_ADD = _rollup_add_sql(
    "audit_activity_daily",
    {"day": "date", "environment": "text", "outcome": "text", "events": "bigint"},
    key=("day", "environment", "outcome"),
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
                                classification, events)
SELECT (occurred_at AT TIME ZONE 'UTC')::date, identity_name, min(identity_kind),
       datasource_id, c, count(*)
FROM audit_event, unnest(classifications) AS c
WHERE type = 'statement' AND action = 'allow' AND datasource_id IS NOT NULL
  AND occurred_at >= %s
GROUP BY 1, 2, 4, 5
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


_CONTEXT_TTL_SECONDS = 30.0
_sidecar_contexts: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}


def _sidecar_context(sidecar_id: int, datasource_id: int) -> dict[str, Any]:
    """Chain, environment and sidecar name for a batch, cached briefly per process."""
    key = (sidecar_id, datasource_id)
    cached = _sidecar_contexts.get(key)
    if cached is not None and time.monotonic() - cached[0] < _CONTEXT_TTL_SECONDS:
        return cached[1]
    from governance.models import Datasource, Sidecar

    datasource = Datasource.objects.select_related("environment").get(pk=datasource_id)
    name = Sidecar.objects.filter(pk=sidecar_id).values_list("name", flat=True).first()
    context = {
        "chain": datasource_chain(datasource_id),
        "datasource_id": datasource_id,
        "environment": datasource.environment.name,
        "sidecar_name": name or str(sidecar_id),
    }
    _sidecar_contexts[key] = (time.monotonic(), context)
    return context


def audit_events_ingest(
    *, sidecar_id: int, datasource_id: int, events: list[dict[str, Any]]
) -> dict[str, int]:
    """Store a sidecar's batch in its datasource's chain; idempotent by event id.

    ``datasource_id`` comes from the sidecar's token, never from the events.
    Every event needs a string ``id`` and a numeric ``ts`` (the API checks);
    anything malformed past that is kept as well as it can be, never refused.
    Returns ``{"accepted": new events, "duplicates": ids seen before}``.
    """
    context = _sidecar_context(sidecar_id, datasource_id)
    received_us = micros(timezone.now())
    rows = [_sidecar_row(e, received_us=received_us, context=context) for e in events]
    with transaction.atomic():
        accepted = _chain_append(context["chain"], rows)
    return {"accepted": accepted, "duplicates": len(events) - accepted}


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
    """
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
    now = micros(timezone.now())
    extra: dict[str, Any] = {"target": target} if target else {}
    if detail:
        extra["detail"] = _scrub(detail)
    row: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "occurred_at": now,
        "received_at": now,
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
        "client_addr": client_addr or "",
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
    with transaction.atomic():
        _chain_append(chain, [row])


# --- the audit trail: partitions, verification, retention ------------------------------


def audit_partitions_prepare(*, months_ahead: int = 2, now: datetime.datetime | None = None) -> int:
    """Create this month and the next ``months_ahead`` for every environment (beat task)."""
    from governance.models import Environment

    now = now or timezone.now()
    environments = ["", *Environment.objects.values_list("name", flat=True)]
    month = now.astimezone(datetime.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    made = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for _ in range(months_ahead + 1):
            for env in environments:
                cursor.execute("SELECT audit_partition_ensure(%s, %s)", [month, env])
                made += 1
            month = (month + datetime.timedelta(days=32)).replace(day=1)
    return made


@dataclass
class VerifyResult:
    """What ``audit_verify`` found: ``first_broken`` is {chain, seq, event_id, reason}."""

    ok: bool
    checked: int
    first_broken: dict[str, Any] | None = None
    chains: int = 0


_VERIFY_PAGE = 5000
_VERIFY_COLUMNS = ", ".join(f'"{c}"' for c in (*CHAINED_FIELDS, "prev_hash", "hash"))


def _row_dict(values: tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip((*CHAINED_FIELDS, "prev_hash", "hash"), values, strict=True))
    if isinstance(row["extra"], str):  # Django's psycopg setup leaves jsonb as text
        row["extra"] = json.loads(row["extra"])
    return row


def _verify_chain(
    cursor: Any,
    chain: str,
    head: tuple[int, str] | None,
    anchor: tuple[int, str] | None,
    since: datetime.datetime | None,
) -> tuple[int, dict[str, Any] | None]:
    """Walk one chain in seq order; return (events checked, first broken link or None)."""
    checked = 0
    prev_seq: int | None = None
    prev_hash = ""
    anchor_seq, anchor_hash = anchor if anchor else (0, GENESIS)
    start_seq = 0
    if since is not None:
        cursor.execute(
            "SELECT min(seq) FROM audit_event WHERE chain = %s AND occurred_at >= %s",
            [chain, since],
        )
        first = cursor.fetchone()[0]
        if first is None:
            return 0, None  # nothing since then
        start_seq = first - 1

    def broken(seq: int, event_id: str, reason: str) -> tuple[int, dict[str, Any]]:
        return checked, {"chain": chain, "seq": seq, "event_id": event_id, "reason": reason}

    after = start_seq
    while True:
        cursor.execute(
            f"SELECT {_VERIFY_COLUMNS} FROM audit_event WHERE chain = %s AND seq > %s "
            "ORDER BY seq LIMIT %s",
            [chain, after, _VERIFY_PAGE],
        )
        page = cursor.fetchall()
        if not page:
            break
        for values in page:
            row = _row_dict(values)
            seq, event_id = row["seq"], row["event_id"]
            if chain_hash(row["prev_hash"], canonical_event(row)) != row["hash"]:
                return broken(seq, event_id, "the event does not match its hash (edited)")
            if prev_seq is not None and seq == prev_seq:
                return broken(seq, event_id, "two events hold this seq (reordered or forged)")
            expected_prev = seq - 1
            if prev_seq == expected_prev:
                if row["prev_hash"] != prev_hash:
                    return broken(seq, event_id, "prev_hash is not the previous event's hash")
            elif prev_seq is None and since is not None:
                pass  # starting mid-chain: this event's own link is taken on trust
            elif expected_prev == 0:
                if row["prev_hash"] != GENESIS:
                    return broken(seq, event_id, "the first event does not start from genesis")
            elif expected_prev <= anchor_seq:
                # The missing events were dropped by retention: the anchor vouches.
                if expected_prev == anchor_seq and row["prev_hash"] != anchor_hash:
                    return broken(seq, event_id, "prev_hash is not the retention anchor's hash")
            else:
                missing = (prev_seq or 0) + 1
                return broken(seq, event_id, f"seq {missing} is missing (deleted)")
            prev_seq, prev_hash = seq, row["hash"]
            checked += 1
        after = page[-1][CHAINED_FIELDS.index("seq")]
    if head is None:
        if checked:
            return broken(prev_seq or 0, "", "events exist but the chain has no head")
        return checked, None
    head_seq, head_hash = head
    if prev_seq is None:
        if since is not None or (head_seq <= anchor_seq and head_hash == anchor_hash):
            return checked, None  # nothing since then, or everything was dropped by retention
        if head_seq == 0:
            return checked, None
        return broken(head_seq, "", f"the chain head is at seq {head_seq} but no event is stored")
    if prev_seq == head_seq and prev_hash == head_hash:
        return checked, None
    if prev_seq < head_seq:
        if head_seq == anchor_seq and head_hash == anchor_hash:
            return checked, None  # the tail was dropped by retention
        return broken(
            head_seq,
            "",
            f"the chain head is at seq {head_seq} but the last stored event is seq {prev_seq} "
            "(events deleted at the end)",
        )
    return broken(prev_seq, "", "the last event does not match the chain head")


def audit_verify(
    *, chain: str | None = None, since: datetime.datetime | None = None
) -> VerifyResult:
    """Recompute every hash and link of one chain (or all) and report the first break.

    ``since`` starts each chain at its first event at or after that time (its link
    to the event before is taken on trust). Events dropped by retention are
    vouched for by the chain's anchor (the last seq and hash dropped).
    """
    with connection.cursor() as cursor:
        if chain is None:
            cursor.execute("SELECT chain, seq, hash FROM audit_chain_head ORDER BY chain")
        else:
            cursor.execute(
                "SELECT chain, seq, hash FROM audit_chain_head WHERE chain = %s", [chain]
            )
        heads = {c: (s, h) for c, s, h in cursor.fetchall()}
        cursor.execute("SELECT chain, seq, hash FROM audit_chain_anchor")
        anchors = {c: (s, h) for c, s, h in cursor.fetchall()}
        chains = [chain] if chain is not None else sorted(heads)
        total = 0
        for name in chains:
            checked, first_broken = _verify_chain(
                cursor, name, heads.get(name), anchors.get(name), since
            )
            total += checked
            if first_broken is not None:
                return VerifyResult(False, total, first_broken, len(chains))
    return VerifyResult(True, total, None, len(chains))


def audit_verify_run() -> AuditVerification:
    """Verify every chain, keep the result for the overview, and alert when broken."""
    started = timezone.now()
    result = audit_verify()
    run = AuditVerification.objects.create(
        ok=result.ok,
        checked=result.checked,
        chains=result.chains,
        first_broken=result.first_broken,
        finished_at=timezone.now(),
    )
    # auto_now_add stamped the end; the run began earlier.
    AuditVerification.objects.filter(pk=run.pk).update(started_at=started)
    run.started_at = started
    if not result.ok:
        _alert_broken_chain(result.first_broken or {})
    return run


def _alert_broken_chain(first_broken: dict[str, Any]) -> None:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.mail import send_mail
    from django.db.models import Q

    from governance.models import Role

    where = (
        f"chain {first_broken.get('chain')} at seq {first_broken.get('seq')} "
        f"(event {first_broken.get('event_id') or '-'}): {first_broken.get('reason')}"
    )
    logger.error("audit trail verification FAILED: %s", where)
    admins = (
        get_user_model()
        .objects.filter(Q(is_superuser=True) | Q(membership__role=Role.ADMIN), is_active=True)
        .exclude(email="")
        .values_list("email", flat=True)
        .distinct()
    )
    recipients = sorted(set(admins))
    if recipients:
        send_mail(
            subject="[Warden] audit trail verification failed",
            message=(
                "The audit trail's hash chain no longer verifies. First broken link: "
                f"{where}.\n\nRun `manage.py audit_verify` for details; treat this as a "
                "possible tampering incident."
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=recipients,
            fail_silently=True,
        )


def _retention_days() -> tuple[dict[str, int], int]:
    days = dict(AuditRetention.objects.values_list("environment", "days"))
    default = days.get("", DEFAULT_RETENTION_DAYS)
    return days, default


MIN_RETENTION_DAYS = 31


@transaction.atomic
def audit_retention_set(*, actor: Any, environment: str, days: int | None) -> AuditRetention | None:
    """Keep ``environment``'s events (``""``: the control plane's own) for ``days``; ``None``
    goes back to the default. Admins only, and recorded in history and in the trail: a
    shorter retention deletes events at the next hourly run, so it is never a silent edit.
    """
    from governance.permissions import Role, user_role

    if user_role(actor) != Role.ADMIN:
        raise PermissionDenied("Only admins may change how long the audit trail is kept.")
    if days is not None and days < MIN_RETENTION_DAYS:
        # A month partition is the unit dropped: less would drop the current month.
        raise ValidationError({"days": f"Keep events at least {MIN_RETENTION_DAYS} days."})
    row = AuditRetention.objects.select_for_update().filter(environment=environment).first()
    before = object_snapshot(row) if row is not None else None
    if days is None:
        if row is not None:
            pk = row.pk
            row.delete()
            change_record_create(
                actor=actor,
                action=ChangeAction.DELETE,
                obj=row,
                before=before,
                after=None,
                object_id=pk,
            )
        return None
    if row is None:
        row = AuditRetention(environment=environment)
    row.days = days
    row.full_clean()
    row.save()
    change_record_create(
        actor=actor,
        action=ChangeAction.UPDATE if before is not None else ChangeAction.CREATE,
        obj=row,
        before=before,
        after=object_snapshot(row),
    )
    return row


def audit_retention_enforce(*, now: datetime.datetime | None = None) -> list[str]:
    """Drop every expired environment-month partition; anchor the chains first.

    A leaf (one environment's month) expires when its month ended more than that
    environment's retention ago; a month's DEFAULT leaf (control-plane events and
    any environment without a leaf) waits for the longest retention configured.
    Returns the names of the tables dropped.
    """
    now = now or timezone.now()
    days, default = _retention_days()
    longest = max([default, *days.values()])
    dropped: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT month.relname, leaf.relname, pg_get_expr(leaf.relpartbound, leaf.oid) "
            "FROM pg_inherits top "
            "JOIN pg_class month ON month.oid = top.inhrelid "
            "JOIN pg_inherits sub ON sub.inhparent = month.oid "
            "JOIN pg_class leaf ON leaf.oid = sub.inhrelid "
            "WHERE top.inhparent = 'audit_event'::regclass AND month.relname ~ '^audit_event_y' "
            "ORDER BY 1, 2"
        )
        leaves: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for month_name, leaf_name, bound in cursor.fetchall():
            leaves[month_name].append((leaf_name, bound))
        for month_name, month_leaves in sorted(leaves.items()):
            year, month = int(month_name[13:17]), int(month_name[18:20])
            month_end = datetime.datetime(
                year + month // 12, month % 12 + 1, 1, tzinfo=datetime.UTC
            )
            kept = 0
            for leaf_name, bound in month_leaves:
                if bound == "DEFAULT":
                    keep_days = longest
                else:
                    env = leaf_name[len(month_name) + 1 :]
                    keep_days = days.get(env, default)
                if month_end > now - datetime.timedelta(days=keep_days):
                    kept += 1
                    continue
                _anchor_and_drop(cursor, leaf_name, now)
                dropped.append(leaf_name)
            if kept == 0:
                cursor.execute(f'DROP TABLE "{month_name}"')
                dropped.append(month_name)
        # The rollup outlives no event it counts: kept as long as the longest retention.
        for rollup in ("audit_access_daily", "audit_activity_daily"):
            cursor.execute(
                f"DELETE FROM {rollup} WHERE day < %s",
                [(now - datetime.timedelta(days=longest)).date()],
            )
    if dropped:
        logger.info("audit retention dropped %s", ", ".join(dropped))
    return dropped


def _anchor_and_drop(cursor: Any, table: str, now: datetime.datetime) -> None:
    """Record the last (seq, hash) of each chain in ``table``, then drop it whole."""
    cursor.execute(
        "INSERT INTO audit_chain_anchor (chain, seq, hash, dropped_at) "
        f'SELECT DISTINCT ON (chain) chain, seq, hash, %s FROM "{table}" '
        "ORDER BY chain, seq DESC "
        "ON CONFLICT (chain) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, "
        "dropped_at = EXCLUDED.dropped_at WHERE audit_chain_anchor.seq < EXCLUDED.seq",
        [now],
    )
    cursor.execute(f'DROP TABLE "{table}"')
