"""The canonical form is byte for byte what the reference encoder (json.dumps, as
docs/audit.md describes it) writes, whichever encoder ingestion used to get there."""

from __future__ import annotations

import datetime
import json
import random
import struct
from typing import Any

import orjson
import pytest
from django.test import Client

from audit.chain import CHAINED_FIELDS, canonical_doc, canonical_event, micros
from audit.models import AuditEvent
from audit.services import audit_verify
from gateway.audit_intake import _audit_json, _has_long_number
from tests.audit.conftest import statement_event

REFERENCE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
AT = datetime.datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(CHAINED_FIELDS, "")
    row.update(occurred_at=AT, received_at=AT, seq=7, rows=None, duration_ms=1.25, extra={})
    row.update(tables=[], columns=[], classifications=[], masked_columns=[])
    row.update(overrides)
    return row


def _reference(row: dict[str, Any]) -> bytes:
    doc = {name: row[name] for name in CHAINED_FIELDS}
    doc["occurred_at"] = micros(doc["occurred_at"])
    doc["received_at"] = micros(doc["received_at"])
    return REFERENCE.encode(doc).encode("utf-8")


# Floats whose spelling differs between encoders (exponents, below 1e-4), and ones that do not.
AWKWARD_FLOATS = [1e-05, 1.5e-07, 4.475256750485355e-05, 1e16, 1.2345678901234568e17]
AWKWARD_FLOATS += [0.0001, 1e15, 9999999999999998.0, -0.0, 5e-324, 1.7976931348623157e308]


@pytest.mark.parametrize("value", AWKWARD_FLOATS)
def test_awkward_floats_are_spelled_as_the_reference_does(value: float) -> None:
    row = _row(duration_ms=value, extra={"n": [value, {"deep": -value}]})
    assert canonical_event(row) == _reference(row)
    # Ingestion's way: times already in microseconds, extra's JSON written once.
    doc = {**row, "occurred_at": micros(AT), "received_at": micros(AT)}
    assert canonical_doc(doc, orjson.dumps(doc["extra"])) == _reference(row)
    only_extra = _row(duration_ms=1.25, extra=row["extra"])
    doc = {**only_extra, "occurred_at": micros(AT), "received_at": micros(AT)}
    assert canonical_doc(doc, orjson.dumps(doc["extra"])) == _reference(only_extra)


def test_random_floats_texts_and_big_ints_match_the_reference() -> None:
    rng = random.Random(7)
    texts = ["plain", 'q"uote', "back\\slash", "tab\t\n\r\x01\x1f\x7f", "ünï 🚀 \u2028", "e-1:1e5"]
    for _ in range(3000):
        bits = struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        value = bits if bits == bits and abs(bits) != float("inf") else 0.5
        scaled = 10 ** rng.uniform(-12, 22) * rng.choice([1, -1])
        row = _row(
            statement=rng.choice(texts),
            duration_ms=rng.choice([value, scaled, round(scaled, 3)]),
            extra={rng.choice(texts): [value, scaled, rng.choice([-(2**63), 2**64 + 1])]},
        )
        assert canonical_event(row) == _reference(row)


def test_lone_surrogates_still_refuse_as_the_reference_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        canonical_event(_row(statement="bad \ud800"))


pytestmark = pytest.mark.django_db


def test_awkward_numbers_survive_the_copy_and_the_chain(client: Client, sidecar: Any) -> None:
    numbers = [1e-05, 1.5e-07, 4.475256750485355e-05, 1e16, 2**64 + 1, -(2**63), 0.1]
    event = statement_event(duration_ms=1.5e-07, reasons=[{"code": "n", "n": numbers}])
    answer = client.post(
        "/api/v1/sidecar/audit",
        data=json.dumps({"events": [event]}),
        content_type="application/json",
        headers={"authorization": f"Bearer {sidecar.token}"},
    )
    assert answer.json()["accepted"] == 1
    stored = AuditEvent.objects.get(event_id=event["id"])
    assert stored.duration_ms == 1.5e-07
    assert stored.extra["reasons"][0]["n"] == [*numbers[:3], 10**16, *numbers[4:]]
    assert audit_verify(chain=stored.chain).ok


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 12345678901234567890}',
        b'{"a":-9223372036854775809}',
        b'{"a": [1,\n\t 18446744073709551617]}',
        b"[12345678901234567890]",
        b'{"a": {"b" :  1234567890123456789012345}}',
    ],
)
def test_a_number_beyond_64_bits_takes_the_exact_parser(body: bytes) -> None:
    # orjson alone would read these as floats and lose digits. repr tells 1 from 1.0.
    assert _has_long_number(body)
    assert repr(_audit_json(body)) == repr(json.loads(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 123456789012345678, "b": -123456789012345678}',
        b'{"fingerprint": "1234567890123456789012345", "ts": 1795459200.123456}',
        b'{"a": 1.5e-07, "b": [0.1, 10000000000000000.0]}',
    ],
)
def test_ordinary_numbers_and_digit_strings_take_the_fast_parser(body: bytes) -> None:
    assert not _has_long_number(body)
    assert repr(_audit_json(body)) == repr(json.loads(body))
