"""The canonical form of an audit event and its chain hash (see docs/audit.md).

``hash = sha256(prev_hash + canonical_event(row))`` where ``prev_hash`` is the 64
hex characters of the previous event's hash in the same chain (``GENESIS`` for
the first) and ``canonical_event`` is the JSON of every stored column except
``id``, ``prev_hash`` and ``hash`` (``CHAINED_FIELDS``, declared with the event
contract in ``sidecar/events.py``): keys sorted, no whitespace, UTF-8, times as
integer microseconds since the Unix epoch (UTC). Ingestion stores every float
in ``extra`` that is a whole number as an integer (``jsonb`` does not keep
``1e+16`` and ``10000000000000000`` apart, so a stored value must read back as
what was hashed). The same function serves ingestion and verification, so they
cannot disagree.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import operator
import re
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.events import CHAINED_FIELDS

__all__ = [
    "CHAINED_FIELDS",  # every column the hash covers, in COPY's order: the contract's
    "GENESIS",
    "canonical_doc",
    "canonical_event",
    "chain_hash",
    "from_micros",
    "micros",
]

GENESIS = "0" * 64

# The row's chained values in one C call (a dict comprehension was a tenth of sealing).
_chained_values = operator.itemgetter(*CHAINED_FIELDS)


def micros(at: datetime.datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    delta = at - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=value
    )


# One encoder for every call: json.dumps with options builds a new one each time.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_event(row: Mapping[str, Any]) -> bytes:
    """The bytes the chain hash covers for one event (a row's column values)."""
    doc = dict(zip(CHAINED_FIELDS, _chained_values(row), strict=True))
    doc["occurred_at"] = micros(doc["occurred_at"])
    doc["received_at"] = micros(doc["received_at"])
    return canonical_doc(doc)


def canonical_doc(doc: Mapping[str, Any], extra_json: bytes | None = None) -> bytes:
    """``canonical_event`` of a mapping that holds exactly the chained fields, its
    times already in microseconds (ingestion builds its rows so: no copy to make).

    ``extra_json``, when given, is ``orjson.dumps(doc["extra"])``, which a caller
    that needs it anyway saves this function from writing again.
    """
    try:
        fast = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # ints beyond 64 bits, lone surrogates, odd keys: the reference says
        return _CANONICAL.encode(doc).encode("utf-8")
    if _floats_spelled_alike(doc, extra_json):
        return fast
    return _CANONICAL.encode(doc).encode("utf-8")


# orjson writes every value as json.dumps does (same escapes, key order and digits)
# except the spelling of some floats: 1e-05 as 0.00001, 1.5e-07 as 1.5e-7. The
# chained columns hold floats in two places only, ``duration_ms`` and ``extra``
# (the others are text, integers and text arrays), so those two are what is
# looked at: scanning the whole event for a float's spelling cost more than
# encoding it (an event id such as "…284e-7841…" looks like an exponent).
_FLOAT_SPELLING = re.compile(rb"[:,\[]-?(?:0\.0000|[0-9]+(?:\.[0-9]+)?[eE])")


def _floats_spelled_alike(doc: Mapping[str, Any], extra_json: bytes | None) -> bool:
    duration = doc["duration_ms"]
    if duration.__class__ is float and duration and not 1e-4 <= abs(duration) < 1e16:
        return False  # an exponent, or below 1e-4 (NaN too: the reference refuses it)
    if extra_json is None:
        extra_json = orjson.dumps(doc["extra"])
    if b"e-" in extra_json or b"e+" in extra_json or b"0.0000" in extra_json:
        # A string that merely looks like a number only costs the reference encoder.
        # The bracket: a bare number (not an object) has nothing before it.
        return _FLOAT_SPELLING.search(b"[" + extra_json) is None
    return True


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical).hexdigest()
