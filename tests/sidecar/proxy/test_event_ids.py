"""Audit event ids: time-ordered version-7 UUIDs, unique across refills of the random pool."""

from __future__ import annotations

import json
import time
import uuid

from sidecar.proxy.audit_event import _EventIds
from tests.sidecar.proxy.conftest import one_relay


def test_event_ids_are_unique_rfc9562_version_7_uuids() -> None:
    ids = _EventIds()
    # 256 ids per 4 KiB pool: this crosses several refills.
    issued = [ids() for _ in range(1000)]
    assert len(set(issued)) == len(issued)
    for value in issued:
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_ids_carry_their_millisecond_and_sort_by_it() -> None:
    ids = _EventIds()
    before = int(time.time() * 1000)
    now = ids()
    after = int(time.time() * 1000)
    assert before <= int(now.replace("-", "")[:12], 16) <= after
    # Ids of later milliseconds sort after earlier ones, as text and as UUIDs.
    stamps = [1_700_000_000.000, 1_700_000_000.001, 1_700_000_000.500, 1_800_000_000.0]
    issued = [ids(at) for at in stamps]
    assert issued == sorted(issued)
    assert [uuid.UUID(i) for i in issued] == sorted(uuid.UUID(i) for i in issued)
    assert [int(i.replace("-", "")[:12], 16) for i in issued] == [int(at * 1000) for at in stamps]


def test_separate_generators_do_not_repeat_each_other() -> None:
    first, second = _EventIds(), _EventIds()
    assert {first() for _ in range(300)}.isdisjoint({second() for _ in range(300)})


def test_statement_lines_carry_the_microsecond_as_a_json_number() -> None:
    from sidecar.proxy.audit_event import now_us, statement_line
    from sidecar.proxy.policy import Verdict

    verdict = Verdict("allow", "", "SELECT 1", audit_fragment="")
    for stamp in (1_700_000_000_000_000, 1_700_000_000_000_001, 1_765_000_123_456_789, now_us()):
        line = statement_line("e", stamp, verdict, "allowed", 1, 500, None, None, '"identity":"a"')
        event = json.loads(line)
        assert event["duration_ms"] == 0.5
        assert f'"ts":{stamp // 1_000_000}.{stamp % 1_000_000:06d},' in line
        assert abs(event["ts"] * 1_000_000 - stamp) <= 1  # a double holds ~16 digits
        assert event["rows"] == 1 and event["identity"] == "a"
    for took, shown in ((0, "0.000"), (7, "0.007"), (1_234_567, "1234.567")):
        line = statement_line("e", 1, verdict, "allowed", None, took, None, None, '"a":1')
        assert f'"duration_ms":{shown},' in line
    ids = _EventIds()
    assert int(ids.at_ms(1_700_000_000_123).replace("-", "")[:12], 16) == 1_700_000_000_123


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
