"""Schema drift: what changed between two schema snapshots of one datasource.

Pure functions over the snapshot dicts (names and types only, never values), so
the report service, the datasource page and the tests agree on one definition.
"""

from __future__ import annotations

from typing import Any

DRIFT_KEYS = ("new_tables", "dropped_tables", "new_columns", "dropped_columns", "changed_columns")


def _columns(snapshot: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``schema.table`` -> {column: type}, in table order."""
    return {
        f"{t['schema']}.{t['name']}": {c["name"]: c["type"] for c in t.get("columns", [])}
        for t in snapshot.get("tables", [])
    }


def snapshot_drift(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, list[Any]]:
    """New and dropped tables; new, dropped and retyped columns of tables in both."""
    before, after = _columns(previous), _columns(current)
    drift: dict[str, list[Any]] = {key: [] for key in DRIFT_KEYS}
    for table in after:
        if table not in before:
            drift["new_tables"].append(table)
            continue
        old, new = before[table], after[table]
        for column, type_ in new.items():
            path = f"{table}.{column}"
            if column not in old:
                drift["new_columns"].append(path)
            elif old[column] != type_:
                drift["changed_columns"].append({"column": path, "from": old[column], "to": type_})
        drift["dropped_columns"].extend(f"{table}.{c}" for c in old if c not in new)
    drift["dropped_tables"] = [t for t in before if t not in after]
    return drift


def drift_is_empty(drift: dict[str, Any]) -> bool:
    return not any(drift.get(key) for key in DRIFT_KEYS)
