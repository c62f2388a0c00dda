"""The upstream database's catalog: relations, columns, types, view definitions, sizes.

Read from ``pg_catalog`` in two queries (relations, then their columns), so a
schema of thousands of columns costs two round trips. System schemas, TOAST
and temporary schemas, and partitions (their parent stands for them) are left
out. ``row_estimate`` is ``pg_class.reltuples`` (the sum of the partitions'
for a partitioned table); None when the table was never analysed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from sidecar.scanner.detectors import ARRAY, DATE, JSON, NETWORK, NUMBER, TEXT, TIMESTAMP
from sidecar.scanner.viewsources import Columns, view_sources

KINDS = {
    "r": "table",
    "p": "partitioned_table",
    "v": "view",
    "m": "materialized_view",
    "f": "foreign_table",
}

RELATIONS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind,
       CASE WHEN c.relkind = 'p' THEN (
           SELECT sum(greatest(ch.reltuples, 0)) FROM pg_inherits i
           JOIN pg_class ch ON ch.oid = i.inhrelid WHERE i.inhparent = c.oid)
       ELSE c.reltuples END,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
ORDER BY n.nspname, c.relname
"""

COLUMNS_SQL = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod),
       coalesce(b.typname, t.typname), coalesce(b.typcategory, t.typcategory),
       e.typname, e.typcategory
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
LEFT JOIN pg_type e ON e.oid = coalesce(b.typelem, t.typelem)
    AND coalesce(b.typcategory, t.typcategory) = 'A'
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""


def type_family(typname: str, category: str) -> str:
    """Which detectors may look at a column: text, date, timestamp, network (``inet``,
    and ``cidr``, which can hold host addresses), number (the integer and numeric types
    wide enough for an SSN, a card or a phone number: ``integer`` holds every 9-digit
    SSN), bool, json, array or other."""
    if category == "A":
        return ARRAY
    if typname in ("json", "jsonb"):
        return JSON
    if category == "S":
        return TEXT
    if typname == "date":
        return DATE
    if typname in ("timestamp", "timestamptz"):
        return TIMESTAMP
    if typname in ("inet", "cidr"):
        return NETWORK
    if typname in ("int4", "int8", "numeric"):
        return NUMBER
    if typname == "bool":
        return "bool"
    return "other"


@dataclass(slots=True)
class Column:
    name: str
    type: str
    family: str
    sources: list[str] | None = None  # views only
    element: str | None = None  # an array's element type family

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.sources is not None:
            data["sources"] = self.sources
        return data


@dataclass(slots=True)
class Relation:
    schema: str
    name: str
    kind: str
    row_estimate: int | None
    definition: str | None = None
    columns: list[Column] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_view(self) -> bool:
        return self.kind in ("view", "materialized_view")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": self.schema,
            "name": self.name,
            "kind": self.kind,
            "columns": [c.to_json() for c in self.columns],
        }
        if self.row_estimate is not None:
            data["row_estimate"] = self.row_estimate
        if self.definition is not None:
            data["definition"] = self.definition
        return data


@dataclass(slots=True)
class Catalog:
    relations: list[Relation]
    search_path: list[str]

    def snapshot(self) -> dict[str, Any]:
        return {"tables": [r.to_json() for r in self.relations if r.columns]}


def read_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    """Relations and columns, plus each view column's sources (best effort)."""
    search_path = [str(s) for s in conn.execute("SELECT current_schemas(false)").fetchone()[0]]  # type: ignore[index]
    by_oid: dict[int, Relation] = {}
    for oid, schema, name, relkind, reltuples, definition in conn.execute(RELATIONS_SQL):
        estimate = None if reltuples is None or reltuples < 0 else int(reltuples)
        by_oid[oid] = Relation(
            schema=schema,
            name=name,
            kind=KINDS[relkind],
            row_estimate=estimate,
            definition=definition.strip() if definition else None,
        )
    if by_oid:
        rows = conn.execute(COLUMNS_SQL, [list(by_oid)])
        for oid, name, formatted, typname, category, elem_name, elem_category in rows:
            column = Column(name, formatted, type_family(typname, category))
            if elem_name is not None:
                column.element = type_family(elem_name, elem_category)
            by_oid[oid].columns.append(column)
    catalog = Catalog(relations=list(by_oid.values()), search_path=search_path)
    _attach_view_sources(catalog)
    return catalog


def _attach_view_sources(catalog: Catalog) -> None:
    by_key = {(r.schema, r.name): r for r in catalog.relations}
    memo: dict[tuple[str, str], Columns] = {}
    visiting: set[tuple[str, str]] = set()

    def columns_of(relation: Relation) -> Columns:
        key = (relation.schema, relation.name)
        if key in memo:
            return memo[key]
        if not relation.is_view or relation.definition is None:
            result = {c.name: {f"{relation.key}.{c.name}"} for c in relation.columns}
        elif key in visiting:  # a cycle cannot happen in PostgreSQL; be safe anyway
            return {}
        else:
            visiting.add(key)
            per_column = view_sources(relation.definition, resolve) or []
            visiting.discard(key)
            result = {
                c.name: set(per_column[i]) if i < len(per_column) else set()
                for i, c in enumerate(relation.columns)
            }
            for i, column in enumerate(relation.columns):
                column.sources = per_column[i] if i < len(per_column) else []
        memo[key] = result
        return result

    def resolve(schema: str | None, name: str) -> Columns | None:
        for candidate in [schema] if schema else catalog.search_path:
            relation = by_key.get((candidate, name))
            if relation is not None:
                return columns_of(relation)
        return None

    for relation in catalog.relations:
        if relation.is_view:
            columns_of(relation)
