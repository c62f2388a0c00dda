"""Which base-table columns each view column comes from, by PostgreSQL's own parser.

Best effort over the JSON parse tree pglast (libpg_query) gives for
``pg_get_viewdef``: column references resolved through FROM items (tables,
aliases, joins, subqueries in FROM, CTEs, UNION arms), expressions contribute
every column they reference, and a view over a view is followed to the base
tables. Anything not understood (a function in FROM, a scalar subquery, a
whole-row reference) contributes nothing, so a view column's ``sources`` may
be incomplete, and an unparsable definition gives ``[]`` everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from pglast.parser import ParseError, parse_sql_json

# A relation's columns, each with the set of base columns it carries
# ("schema.table.column").
Columns = dict[str, set[str]]
# (schema or None, name) -> the relation's columns, or None when unknown.
Resolver = Callable[[str | None, str], Columns | None]


def view_sources(definition: str, resolve: Resolver) -> list[list[str]] | None:
    """Per output column, in order: its sorted sources; None if unparsable."""
    try:
        tree = json.loads(parse_sql_json(definition))
        statements = tree.get("stmts", [])
        if len(statements) != 1 or "SelectStmt" not in statements[0]["stmt"]:
            return None
        outputs = _select(statements[0]["stmt"]["SelectStmt"], resolve, {})
    except (ParseError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return [sorted(sources) for _, sources in outputs]


def _select(
    node: dict[str, Any], resolve: Resolver, ctes: dict[str, Columns]
) -> list[tuple[str, set[str]]]:
    ctes = dict(ctes)
    for cte in (node.get("withClause") or {}).get("ctes", []):
        body = cte["CommonTableExpr"]
        query = body.get("ctequery", {}).get("SelectStmt")
        if query is not None:
            names = [c["String"]["sval"] for c in body.get("aliascolnames", [])]
            ctes[body["ctename"]] = _named(_select(query, resolve, ctes), names)
    if node.get("op", "SETOP_NONE") != "SETOP_NONE":
        left = _select(node["larg"], resolve, ctes)
        right = _select(node["rarg"], resolve, ctes)
        return [(name, lsrc | rsrc) for (name, lsrc), (_, rsrc) in zip(left, right, strict=False)]
    scope: dict[str, Columns] = {}
    for item in node.get("fromClause", []):
        _from_item(item, resolve, ctes, scope)
    outputs: list[tuple[str, set[str]]] = []
    for target in node.get("targetList", []):
        res = target["ResTarget"]
        value = res.get("val", {})
        name = res.get("name") or _implicit_name(value)
        sources: set[str] = set()
        for ref in _column_refs(value):
            sources |= _lookup(ref, scope)
        outputs.append((name, sources))
    return outputs


def _named(outputs: list[tuple[str, set[str]]], names: list[str]) -> Columns:
    columns: Columns = {}
    for i, (name, sources) in enumerate(outputs):
        columns[names[i] if i < len(names) else name] = sources
    return columns


def _from_item(
    item: dict[str, Any], resolve: Resolver, ctes: dict[str, Columns], scope: dict[str, Columns]
) -> None:
    if "RangeVar" in item:
        rv = item["RangeVar"]
        schema, name = rv.get("schemaname"), rv["relname"]
        columns = ctes.get(name) if schema is None and name in ctes else resolve(schema, name)
        alias = (rv.get("alias") or {}).get("aliasname") or name
        scope[alias] = columns or {}
    elif "JoinExpr" in item:
        join = item["JoinExpr"]
        _from_item(join["larg"], resolve, ctes, scope)
        _from_item(join["rarg"], resolve, ctes, scope)
    elif "RangeSubselect" in item:
        sub = item["RangeSubselect"]
        query = sub.get("subquery", {}).get("SelectStmt")
        alias = sub.get("alias") or {}
        if query is not None and alias.get("aliasname"):
            names = [c["String"]["sval"] for c in alias.get("colnames", [])]
            scope[alias["aliasname"]] = _named(_select(query, resolve, ctes), names)


def _implicit_name(value: dict[str, Any]) -> str:
    ref = value.get("ColumnRef")
    if ref and "String" in ref["fields"][-1]:
        return str(ref["fields"][-1]["String"]["sval"])
    return "?column?"


def _column_refs(node: Any) -> Iterator[list[str]]:
    """Every column reference in an expression, not descending into subqueries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ColumnRef":
                fields = value.get("fields", [])
                if fields and all("String" in f for f in fields):
                    yield [f["String"]["sval"] for f in fields]
            elif key != "SubLink":
                yield from _column_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _column_refs(value)


def _lookup(ref: list[str], scope: dict[str, Columns]) -> set[str]:
    column = ref[-1]
    if len(ref) >= 2:
        return set(scope.get(ref[-2], {}).get(column, set()))
    owners = [columns[column] for columns in scope.values() if column in columns]
    return set(owners[0]) if len(owners) == 1 else set()
