"""Configuration history as diffs: every field a create set, an update changed or a
delete removed, and a schema snapshot as tables and columns, not JSON."""

from __future__ import annotations

from types import SimpleNamespace

from governance.templatetags.warden import counter_label, history_changes

OLD = {"tables": [{"schema": "public", "name": "customers",
                   "columns": [{"name": "id", "type": "integer"},
                               {"name": "fax", "type": "text"}]},
                  {"schema": "public", "name": "legacy", "columns": []}]}  # fmt: skip
NEW = {"tables": [{"schema": "public", "name": "customers",
                   "columns": [{"name": "id", "type": "bigint"},
                               {"name": "email", "type": "text"}]},
                  {"schema": "public", "name": "orders", "columns": []}],
       "scanned_at": "2026-12-01T10:00:00Z"}  # fmt: skip


def _rows(before: dict | None, after: dict | None) -> list[dict]:
    return history_changes(SimpleNamespace(before=before, after=after))


def test_create_update_and_delete_each_show_their_fields() -> None:
    created = _rows(None, {"name": "r", "enabled": True, "message": "", "updated_at": "x"})
    assert created == [
        {"field": "enabled", "before": "", "after": "yes"},
        {"field": "name", "before": "", "after": "r"},
    ]  # empty values and timestamps are not news
    updated = _rows({"name": "r", "conditions": {"tables": ["a"]}},
                    {"name": "r", "conditions": {"tables": ["a", "b"]}})  # fmt: skip
    assert updated == [{"field": "conditions.tables", "before": "a", "after": "a, b"}]
    deleted = _rows({"name": "r", "enabled": False}, None)
    assert deleted == [
        {"field": "enabled", "before": "no", "after": ""},
        {"field": "name", "before": "r", "after": ""},
    ]


def test_a_schema_snapshot_reads_as_tables_and_columns() -> None:
    (row,) = _rows({"schema_snapshot": OLD}, {"schema_snapshot": NEW})
    assert row["field"] == "schema_snapshot"
    assert [(c["kind"], c["what"], c["name"], c.get("detail")) for c in row["schema"]] == [
        ("added", "table", "public.orders", None),
        ("added", "column", "public.customers.email", None),
        ("changed", "column", "public.customers.id", "integer → bigint"),
        ("dropped", "column", "public.customers.fax", None),
        ("dropped", "table", "public.legacy", None),
    ]
    (first,) = _rows(None, {"schema_snapshot": OLD})  # a new datasource: all added
    assert {c["kind"] for c in first["schema"]} == {"added"}
    (same,) = _rows({"schema_snapshot": NEW}, {"schema_snapshot": {**NEW, "scanned_at": "y"}})
    assert same["schema"][0]["detail"] == "scanned again; no table or column changed"


def test_sidecar_counters_read_as_words() -> None:
    assert counter_label("statements_allow") == "Statements allowed"
    assert counter_label("bundle_rejected_signature") == "Bundles rejected (bad signature)"
    assert counter_label("brand_new_counter") == "Brand new counter"


def test_a_guardrails_tables_condition_is_not_taken_for_a_snapshot() -> None:
    rows = _rows({"conditions": {"tables": []}}, {"conditions": {"tables": ["public.a"]}})
    assert rows == [{"field": "conditions.tables", "before": "(none)", "after": "public.a"}]


def test_a_recorded_date_time_shows_in_the_one_format() -> None:
    (row,) = _rows({"expires_at": None}, {"expires_at": "2026-12-06T14:05:09.123+00:00"})
    assert row["after"] == (
        '<time datetime="2026-12-06T14:05:09Z" data-when="minutes">2026-12-06 14:05 UTC</time>'
    )
