"""Audit event ids: random version-4 UUIDs, unique across refills of the random pool."""

from __future__ import annotations

import uuid

from sidecar.proxy.session import _EventIds


def test_event_ids_are_unique_rfc4122_version_4_uuids() -> None:
    ids = _EventIds()
    # 256 ids per 4 KiB pool: this crosses several refills.
    issued = [ids() for _ in range(1000)]
    assert len(set(issued)) == len(issued)
    for value in issued:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_separate_generators_do_not_repeat_each_other() -> None:
    first, second = _EventIds(), _EventIds()
    assert {first() for _ in range(300)}.isdisjoint({second() for _ in range(300)})
