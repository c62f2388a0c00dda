"""A sidecar's batch into its own chain, checked against the event contract.

The contract is ``sidecar/events.py`` (docs/audit.md, "The event contract"):
the key maps below, the types and the versions are read from it.

- An event without ``"v"`` is major version 1 as sidecars deployed before the
  version was stamped write it: a malformed field is stored empty and named in
  ``extra.invalid_fields``, never a reason to refuse the batch.
- An event with ``"v"`` of major version 1 is held to the contract's types: a
  key whose value contradicts its declared type refuses the batch
  (``EventRejected``, naming the event and the key, never the value).
- Keys the contract does not declare (a newer minor version's) are kept in
  ``extra`` as before, counted in the answer (``unknown_keys``) and logged by
  name the first time a sidecar sends them.
- Any other major version refuses the batch, naming the version: a sidecar
  newer than its control plane learns it at its first upload, instead of
  filling its spool with events nobody reads.

A refused batch stores nothing (the sidecar sends it again once fixed; event
ids make the retry idempotent).
"""

from __future__ import annotations

import logging
import math
import operator
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, NoReturn

from django.db import transaction
from django.utils import timezone

from audit.models import EventSource, datasource_chain, sidecar_chain
from audit.sink.chain import micros
from audit.sink.lookups import BatchContext, lookups
from audit.sink.retention import retention_horizon
from audit.sink.trail import (
    _ALL_STR,
    _PLAIN,
    _carries_values,
    _chain_append,
    _clean_text,
    _scrub,
)
from sidecar.events import (
    EVENT_TYPES,
    FIELDS,
    FIELDS_BY_NAME,
    REQUIRED_FIELDS,
    SCHEMA_MAJOR,
    SCHEMA_VERSION,
    TEXT_LIST,
    VERSION_KEY,
    json_type_name,
    parse_version,
)

logger = logging.getLogger(__name__)


class EventRejected(ValueError):
    """A batch the control plane refuses: answer ``status`` with ``message``.

    ``code`` is stable for machines (``unsupported_version``, ``invalid_version``,
    ``type_mismatch``, ``missing_field``, ``invalid_event``); ``message`` names
    the event (by its index in the batch), the key or the version, never a value.
    """

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Event keys that become columns, in the order ``_sidecar_row`` unpacks them; the
# columns they become, and every other key's place, are the contract's.
_TEXT_KEYS = (
    "type",
    "identity",
    "identity_kind",
    "owner",
    "client_addr",
    "application_name",
    "kind",
    "statement",
    "fingerprint",
    "action",
    "outcome",
)
_ARRAY_KEYS = ("tables", "columns_read", "classifications", "masked_columns")
# ``id`` and ``ts`` are read apart; numbers are checked one by one.
_OWN_KEYS = ("id", "ts", "rows", "duration_ms", "risk")
_TEXT_COLUMNS = {key: FIELDS_BY_NAME[key].column for key in _TEXT_KEYS}
_ARRAY_COLUMNS = {key: FIELDS_BY_NAME[key].column for key in _ARRAY_KEYS}
if {*_TEXT_KEYS, *_ARRAY_KEYS, *_OWN_KEYS} != {f.name for f in FIELDS if f.column}:
    raise ImportError("audit.sink.intake and sidecar/events.py disagree on the event's columns")
# Claims the token settles (the datasource, the sidecar) or that are ours to assign,
# and the schema version: checked above, then of no use in a row this control plane
# stores in its own schema (kept, it cost PostgreSQL ~5 us per event in ``extra``).
_IGNORED = {*_OWN_KEYS, VERSION_KEY, *(f.name for f in FIELDS if f.claim)}
# Every key that is not ``extra``'s (one set test per key instead of three).
_COLUMN_KEYS = frozenset(_IGNORED) | frozenset(_TEXT_COLUMNS) | frozenset(_ARRAY_COLUMNS)
# Declared by the contract and kept in ``extra`` as they come (after the scrub).
_KNOWN_EXTRA = frozenset(f.name for f in FIELDS) - _COLUMN_KEYS
_SIDECAR_TYPES = EVENT_TYPES
_MIN_TS = 946_684_800  # 2000-01-01: anything earlier is a broken clock
_FUTURE_SLACK_SECONDS = 86_400


def _as_text(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return None


_text_values = operator.itemgetter(*_TEXT_KEYS)
_CLAIMS = tuple(f.name for f in FIELDS if f.claim)
_array_values = operator.itemgetter(*_ARRAY_KEYS)
_INT64 = 2**63
_INT32 = 2**31  # risk is an integer column
# ``error_sqlstate`` would fall to the value-carrying test ("sql"): a five-character
# SQLSTATE is kept, anything else in its place is named invalid.
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


def _sidecar_row(
    event: dict[str, Any],
    *,
    received_us: int,
    context: Mapping[str, Any],
    unknown: Counter[str] | None = None,
    index: int = 0,
    oldest_ts: float = _MIN_TS,
) -> dict[str, Any]:
    """One sidecar event (number ``index`` of its batch) as column values, checked
    against the contract on the way (see docs/audit.md); raises ``EventRejected``.

    ``unknown`` counts the keys the contract does not declare (a newer sidecar's),
    by name: they are kept in ``extra`` all the same, unless they could carry values.

    The row holds exactly the chained columns but ``seq`` (``_seal`` adds it), its
    times as microseconds since the epoch: it is what the hash covers, as it is.

    The contract's checks ride on the mapping's own tests (one pass per event: a
    separate pass cost ~4 us per event): a value the mapping would have to repair
    sends the event to ``_event_check``, which refuses it with the precise reason,
    or lets it through when it is of its declared type all the same (an integer
    beyond its column) and is repaired as in an unversioned event.
    """
    if event.__class__ is not dict:
        _event_check(index, event)
    version = event.get(VERSION_KEY, _MISSING)
    strict = version is not _MISSING
    ident, ts = event.get("id"), event.get("ts")
    if (
        (strict and (version.__class__ is not str or _majors.get(version) != SCHEMA_MAJOR))
        or ident.__class__ is not str
        or not 0 < len(ident) <= _ID_MAX
        or not (ts.__class__ is float or ts.__class__ is int)
    ):
        _event_check(index, event)
    if strict:
        for name in _CLAIMS:
            claim = event.get(name)
            if claim is not None and claim.__class__ is not str:
                _event_check(index, event)
    extra: dict[str, Any] = {}
    invalid: list[str] = []
    if oldest_ts <= ts <= received_us / 1_000_000 + _FUTURE_SLACK_SECONDS:
        occurred_us = round(ts * 1_000_000)
    else:
        # A broken clock must not put the event in year 1970 or 3000, nor a sender
        # (a clock, or a token's holder) in a month retention has expired: dropped
        # at its next run, unseen, after making a table for each month named (every
        # audit read and write waits for each). Stored when received; the claim kept.
        occurred_us = received_us
        extra["claimed_ts"] = _scrub(ts)
    try:
        texts = _text_values(event)
    except KeyError:
        texts = tuple(map(event.get, _TEXT_KEYS))
        if strict and "type" not in event:
            _event_check(index, event)  # required in a versioned event: refused
    if not all(map(isinstance, texts, _ALL_STR)):
        if strict or (texts[0].__class__ is not str and "type" in event):
            _event_check(index, event)  # refused, or of its declared type (null)
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
                if strict:
                    _event_check(index, event)
                invalid.append(key)
            lists.append([])
    tables, columns, classifications, masked = lists
    rows, risk, duration = event.get("rows"), event.get("risk"), event.get("duration_ms")
    if rows is not None and not (rows.__class__ is int and -_INT64 < rows < _INT64):
        if strict:
            _event_check(index, event)
        invalid.append("rows")
        rows = None
    if risk is not None and not (risk.__class__ is int and -_INT32 <= risk < _INT32):
        if strict:
            _event_check(index, event)
        invalid.append("risk")
        risk = None
    if duration is not None:
        duration = _as_duration(duration)
        if duration is None:
            if strict:
                _event_check(index, event)
            invalid.append("duration_ms")
    for key in event.keys() - _COLUMN_KEYS:
        value = event[key]
        if key not in _KNOWN_EXTRA and unknown is not None:
            unknown[key] += 1
        if key in _KNOWN_EXTRA:
            if strict and value.__class__ not in _DECLARED[key]:
                _event_check(index, event)
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
            if strict and key in _TEXT_LISTS:
                _event_check(index, event)
            extra[key] = _scrub(value)
    if invalid:
        extra["invalid_fields"] = sorted(invalid)
    return {
        "event_id": _clean_text(ident),
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


# --- the contract's checks ---------------------------------------------------------------

# Each declared key: the classes its value may have (``NoneType`` when nullable).
_DECLARED = {f.name: f.classes for f in FIELDS}
_TEXT_LISTS = frozenset(f.name for f in FIELDS if f.value_type == TEXT_LIST)
_MISSING = object()
_ID_MAX = 64  # the event id column's idempotency key
_ID_TS_TYPE = (
    "every event needs a string id (at most 64 characters), a numeric ts "
    "and, if it has one, a string type."
)
# Version strings seen: their major (a batch's events all carry the same few).
_majors: dict[str, int] = {}


def _major(index: int, version: Any) -> int:
    major = _majors.get(version) if version.__class__ is str else None
    if major is None:
        try:
            major, _minor = parse_version(version)
        except ValueError:
            raise EventRejected(
                "invalid_version",
                f'events[{index}]: "{VERSION_KEY}" must be a "major.minor" string '
                f"(this control plane speaks {SCHEMA_VERSION}).",
            ) from None
        if len(_majors) < 64:
            _majors[version] = major
    return major


def _expected(name: str) -> str:
    field = FIELDS_BY_NAME[name]
    return f"{field.value_type}{' or null' if field.nullable else ''}"


def _type_mismatch(index: int, key: str, found: str) -> NoReturn:
    raise EventRejected(
        "type_mismatch", f"events[{index}]: {key!r} must be {_expected(key)}, not {found}."
    )


def _event_check(index: int, event: Any) -> None:
    """Refuse what intake cannot take from event ``index``; see the module's docstring."""
    if event.__class__ is not dict:
        raise EventRejected("invalid_event", f"events[{index}]: an event is a JSON object.")
    version = event.get(VERSION_KEY, _MISSING)
    if version is _MISSING:
        ident, ts = event.get("id"), event.get("ts")
        if not (
            ident.__class__ is str
            and 0 < len(ident) <= _ID_MAX
            and (ts.__class__ is int or ts.__class__ is float)
            and event.get("type", "").__class__ is str
        ):
            raise EventRejected("missing_field", f"events[{index}]: {_ID_TS_TYPE}")
        return
    major = _major(index, version)
    if major != SCHEMA_MAJOR:
        raise EventRejected(
            "unsupported_version",
            f"events[{index}]: audit event schema version {version[:16]} is not supported: "
            f"this control plane accepts major version {SCHEMA_MAJOR} (it knows "
            f"{SCHEMA_VERSION}). Upgrade the control plane before its sidecars.",
        )
    for key, value in event.items():
        classes = _DECLARED.get(key)
        if classes is None:
            continue  # a newer minor version's key: kept and counted
        if value.__class__ not in classes:
            _type_mismatch(index, key, json_type_name(value))
        if value and key in _TEXT_LISTS and not all(map(isinstance, value, _ALL_STR)):
            _type_mismatch(index, key, "a list holding something else")
    if not event.keys() >= REQUIRED_FIELDS:
        missing = sorted(REQUIRED_FIELDS - event.keys())
        raise EventRejected("missing_field", f"events[{index}]: {missing[0]!r} is required.")
    if not 0 < len(event["id"]) <= _ID_MAX:
        raise EventRejected("invalid_event", f"events[{index}]: {_ID_TS_TYPE}")


# --- the batch ---------------------------------------------------------------------------

_CONTEXT_TTL_SECONDS = 30.0
_sidecar_contexts: dict[tuple[int, int], tuple[float, BatchContext]] = {}


def _sidecar_context(sidecar_id: int, datasource_id: int) -> BatchContext:
    """Chain, environment and sidecar name for a batch, cached briefly per process."""
    key = (sidecar_id, datasource_id)
    cached = _sidecar_contexts.get(key)
    if cached is not None and time.monotonic() - cached[0] < _CONTEXT_TTL_SECONDS:
        return cached[1]
    context = lookups().batch_context(sidecar_id, datasource_id)
    _sidecar_contexts[key] = (time.monotonic(), context)
    return context


def batch_context(
    *, sidecar_id: int, datasource_id: int, environment: str, sidecar_name: str
) -> BatchContext:
    """The context of a batch whose datasource's environment and sidecar's name the
    caller knows (``audit_events_ingest(context=...)``)."""
    return {
        "chain": sidecar_chain(datasource_id, sidecar_id),
        "datasource_id": datasource_id,
        "environment": environment,
        "sidecar_name": sidecar_name,
    }


# Unknown keys already logged, per sidecar (bounded: names only, never values).
_unknown_logged: set[tuple[str, str]] = set()
_UNKNOWN_LOGGED_LIMIT = 10_000
# Unknown keys received since the process started, by name: for an operator's
# metrics surface, when the control plane has one. Names cut to 64 characters and at
# most 1,000 of them: a sender makes up as many keys as it likes, and as long.
UNKNOWN_KEYS_RECEIVED: Counter[str] = Counter()
_UNKNOWN_COUNTED_LIMIT = 1_000
_KEY_NAME_LENGTH = 64


def _unknown_keys_note(sidecar_name: str, unknown: Counter[str]) -> None:
    for key, count in unknown.items():
        name = key[:_KEY_NAME_LENGTH]
        if name in UNKNOWN_KEYS_RECEIVED or len(UNKNOWN_KEYS_RECEIVED) < _UNKNOWN_COUNTED_LIMIT:
            UNKNOWN_KEYS_RECEIVED[name] += count
    room = _UNKNOWN_LOGGED_LIMIT - len(_unknown_logged)
    names = {k[:_KEY_NAME_LENGTH] for k in unknown}
    new = sorted(n for n in names if (sidecar_name, n) not in _unknown_logged)[: max(room, 0)]
    if new:
        _unknown_logged.update((sidecar_name, k) for k in new)
        logger.warning(
            "sidecar %s sends audit event keys this control plane does not know "
            "(kept in extra; is the sidecar newer?): %s",
            sidecar_name,
            ", ".join(new),
        )


def audit_events_ingest(
    *,
    sidecar_id: int,
    datasource_id: int,
    events: list[dict[str, Any]],
    context: BatchContext | None = None,
) -> dict[str, Any]:
    """Store a sidecar's batch in its own chain (anchored into its datasource's from
    time to time); idempotent by event id.

    ``datasource_id`` comes from the sidecar's token, never from the events;
    ``context`` (``batch_context``) spares the lookup of its environment and the
    sidecar's name. Raises ``EventRejected`` (nothing stored) for a batch the
    contract refuses; see the module's docstring. Returns ``{"accepted": new
    events, "duplicates": ids seen before}``, plus ``"unknown_keys": {key: events
    carrying it}`` when some event carried keys the contract does not declare.
    """
    if context is None:
        context = _sidecar_context(sidecar_id, datasource_id)
    now = timezone.now()
    received_us = micros(now)
    oldest_ts = max(_MIN_TS, retention_horizon(context["environment"], now).timestamp())
    unknown: Counter[str] = Counter()
    # Checked and mapped in one pass; a refusal raises before anything is stored.
    rows = [
        _sidecar_row(
            e,
            received_us=received_us,
            context=context,
            unknown=unknown,
            index=i,
            oldest_ts=oldest_ts,
        )
        for i, e in enumerate(events)
    ]
    with transaction.atomic():
        # The sidecar's own chain: sidecars of one datasource commit in parallel.
        anchor_into = datasource_chain(context["datasource_id"])
        accepted = _chain_append(context["chain"], rows, anchor_into=anchor_into, writer=sidecar_id)
    result: dict[str, Any] = {"accepted": accepted, "duplicates": len(events) - accepted}
    if unknown:
        result["unknown_keys"] = {k[:64]: n for k, n in sorted(unknown.items())}
        _unknown_keys_note(context["sidecar_name"], unknown)
    return result
