"""The values a held statement carries: what a grant is bound to, what a reviewer sees.

A reviewer approves one statement with its values, not its shape: a grant for
``SET status = 'refunded' WHERE id > 499`` must not run ``WHERE id > 0``. So
the approval request carries ``values_digest``, a SHA-256 over the text's
tokens (comments and spacing left out, so a changing trace comment does not
matter) and, for the extended protocol, the Bind's parameter values with their
formats; and ``values``, each literal and parameter value at its placeholder of
the redacted text, for the reviewer to read.

A value stays redacted, labelled with the classification, where the reviewer's
card would otherwise show classified data: where it is compared with or written
into a classified column. The rule errs on the side of redacting (an allowlist):
in a statement that touches a table with classified columns, a value is shown
only when the expression it belongs to (its predicate between AND/OR/NOT, its
assignment, its VALUES slot) names columns and none of them is classified, and
the value is not inside a subquery, a CTE or an INSERT's SELECT, where it could
reach a classified column by a path this reading does not follow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pglast import parser as pg

from sidecar.engine import scanning
from sidecar.engine.bundle import Bundle, Table

# What the control plane accepts (``approvals.services``): the card shows the first
# MAX_VALUES values, each cut at MAX_VALUE_CHARS.
MAX_VALUES = 500
MAX_VALUE_CHARS = 2000

_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_CONSTANT_KEYWORDS = frozenset({"TRUE_P", "FALSE_P", "NULL_P"})
_LITERALS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})
# Statement nodes: a value under a second one is inside a subquery or a CTE.
_STATEMENTS = frozenset(
    {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CommonTableExpr"}
)
# Where an expression ends: its own clause of a statement.
_CLAUSES = frozenset(
    {
        "whereClause",
        "havingClause",
        "limitCount",
        "limitOffset",
        "quals",
        "joinCondition",
        "sortClause",
        "groupClause",
        "distinctClause",
        "returningList",
        "targetList",
        "valuesLists",
        "fromClause",
        "args",  # of a BoolExpr (checked with its parent)
    }
)
UNKNOWN = "classified data"
_UNWRAPPED = {"onConflictClause": "OnConflictClause"}


def values_digest(
    text: str, params: Iterable[tuple[int, bytes | None]] = (), tables: Iterable[str] = ()
) -> str:
    """SHA-256 over the tokens of ``text`` (without comments), the Bind's (format,
    value) pairs and the tables the text resolved to: equal exactly when the same
    statement runs with the same values on the same tables (the same unqualified
    name is another table under another search_path). A text the scanner cannot
    read is digested as it is."""
    digest = hashlib.sha256(b"warden.values.v2\x00")
    for table in sorted(tables):
        digest.update(b"\x02" + table.encode("utf-8", "surrogatepass"))
    try:
        tokens = scanning.scan(text)
    except Exception:
        digest.update(b"raw\x00" + text.encode("utf-8", "surrogatepass"))
    else:
        for token in tokens:
            if token.name not in _COMMENTS:
                digest.update(text[token.start : token.end + 1].encode("utf-8", "surrogatepass"))
                digest.update(b"\x00")
    for position, (fmt, value) in enumerate(params):
        length = -1 if value is None else len(value)
        digest.update(f"\x01{position}:{fmt}:{length}:".encode())
        if value is not None:
            digest.update(value)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StatementValues:
    """The literal values of one statement, by placeholder of its redacted text, and
    the labels of its parameters ($n the client binds): None where shown."""

    literals: tuple[dict[str, Any], ...]
    param_labels: dict[int, str | None]


class _Node:
    __slots__ = ("body", "children", "index", "key", "parent", "type")

    def __init__(
        self, type_: str, body: dict[str, Any], parent: _Node | None, key: str, index: int
    ) -> None:
        self.type = type_
        self.body = body
        self.parent = parent
        self.key = key  # the field of ``parent`` holding it
        self.index = index  # its position in that field's list (-1: not in a list)
        self.children: list[_Node] = []


def _nodes(tree: Any, parent: _Node | None, key: str, index: int, out: list[_Node]) -> None:
    if isinstance(tree, list):
        for position, item in enumerate(tree):
            _nodes(item, parent, key, position, out)
        return
    if not isinstance(tree, dict):
        return
    if len(tree) == 1:
        ((type_, body),) = tree.items()
        if type_[:1].isupper() and isinstance(body, dict):
            node = _Node(type_, body, parent, key, index)
            out.append(node)
            if parent is not None:
                parent.children.append(node)
            for field, value in body.items():
                _nodes(value, node, field, -1, out)
            return
    # A field of a struct type (``relation``, ``onConflictClause``) is not wrapped in
    # its type's name: a node all the same, typed where the reading needs it.
    typed = "RangeVar" if "relname" in tree else _UNWRAPPED.get(key, "")
    node = _Node(typed, tree, parent, key, index)
    out.append(node)
    if parent is not None:
        parent.children.append(node)
    for field, value in tree.items():
        _nodes(value, node, field, -1, out)


def _subtree(node: _Node) -> Iterable[_Node]:
    stack = [node]
    while stack:
        here = stack.pop()
        yield here
        stack.extend(here.children)


class _Reader:
    """Resolves column names of one statement to classifications, with the bundle."""

    def __init__(
        self, bundle: Bundle, nodes: list[_Node], search_path: tuple[str, ...] | None
    ) -> None:
        self.bundle = bundle
        self.tables: list[Table] = []
        self.aliases: set[str] = set()
        for node in nodes:
            if node.type != "RangeVar":
                continue
            table = bundle.resolve_table(
                node.body.get("schemaname"), str(node.body.get("relname", "")), search_path
            )
            if table is not None:
                self.tables.append(table)
                self.aliases.add(table.name)
                alias = (node.body.get("alias") or {}).get("aliasname")
                if alias:
                    self.aliases.add(str(alias))

    def classified(self, table: Table) -> set[str]:
        found = set()
        for column in table.columns:
            label = self.bundle.column_classifications.get(f"{table.key}.{column.name}")
            if label:
                found.add(label)
        return found

    def touched(self) -> set[str]:
        """The classifications of every table the statement names."""
        found: set[str] = set()
        for table in self.tables:
            found |= self.classified(table)
        return found

    def column(self, name: str) -> set[str]:
        found = set()
        for table in self.tables:
            label = self.bundle.column_classifications.get(f"{table.key}.{name}")
            if label:
                found.add(label)
        return found

    def column_ref(self, body: dict[str, Any]) -> set[str]:
        names = [f["String"]["sval"] for f in body.get("fields", ()) if "String" in f]
        if any("A_Star" in f for f in body.get("fields", ())) or (
            len(names) == 1 and names[0] in self.aliases
        ):
            return self.touched() or set()  # a star or a whole row
        return self.column(names[-1]) if names else set()


def _owner(node: _Node) -> _Node:
    """The expression ``node`` belongs to: climb to its predicate, assignment or slot."""
    while node.parent is not None:
        parent = node.parent
        if parent.type == "BoolExpr" or parent.type in _STATEMENTS:
            return node
        if parent.type == "ResTarget":
            return parent
        if parent.type == "List" and parent.key == "valuesLists":
            return node
        if node.key in _CLAUSES and node.key != "args":
            return node
        node = parent
    return node


def _nested(node: _Node, top: _Node) -> bool:
    """Inside a statement other than the top one (a subquery, a CTE, INSERT ... SELECT);
    the SELECT holding an INSERT's VALUES lists is the INSERT's own."""
    walk = node.parent
    while walk is not None and walk is not top:
        if walk.type in _STATEMENTS:
            values_of_insert = (
                walk.type == "SelectStmt"
                and walk.parent is top
                and top.type == "InsertStmt"
                and bool(walk.body.get("valuesLists"))
            )
            if not values_of_insert:
                return True
        walk = walk.parent
    return False


def _target_column(owner: _Node, top: _Node, reader: _Reader) -> set[str] | None:
    """The classification of the column an assignment or a VALUES slot writes (None:
    the owner writes no column; {UNKNOWN}: it writes one this cannot name)."""
    if owner.type == "ResTarget" and owner.parent is not None:
        holder = owner.parent
        if holder.type in {"UpdateStmt", "OnConflictClause"} and owner.key == "targetList":
            return reader.column(str(owner.body.get("name", "")))
        return None
    row = owner.parent
    if row is None or row.type != "List" or row.key != "valuesLists" or top.type != "InsertStmt":
        return None
    cols = [c["ResTarget"].get("name") for c in top.body.get("cols", ()) if "ResTarget" in c]
    if cols:
        return reader.column(str(cols[owner.index])) if owner.index < len(cols) else {UNKNOWN}
    table = reader.tables[0] if reader.tables else None
    if table is None or owner.index >= len(table.columns):
        return {UNKNOWN} if reader.touched() else set()
    return reader.column(table.columns[owner.index].name)


def _label(node: _Node, top: _Node, reader: _Reader) -> str | None:
    """The classification a value at ``node`` stays redacted under; None: shown."""
    touched = reader.touched()
    if not touched or (node.parent is top and node.key in {"limitCount", "limitOffset"}):
        return None  # nothing classified here; a row count compares with no column
    if _nested(node, top):
        return ", ".join(sorted(touched))
    owner = _owner(node)
    found: set[str] = set()
    named = False
    target = _target_column(owner, top, reader)
    if target is not None:
        named = True
        found |= target
    for member in _subtree(owner):
        if member.type == "ColumnRef":
            named = True
            found |= reader.column_ref(member.body)
    if not named:
        return ", ".join(sorted(touched))
    return ", ".join(sorted(found)) if found else None


def _placeholders(original: str, redacted: str) -> dict[int, tuple[int, str]] | None:
    """Placeholder number -> (offset in ``original``, literal text): the redacted text's
    $n that stand for literals, matched token by token (None: they do not line up)."""
    try:
        mine = [t for t in scanning.scan(original) if t.name not in _COMMENTS]
        theirs = [t for t in scanning.scan(redacted) if t.name not in _COMMENTS]
    except Exception:
        return None
    out: dict[int, tuple[int, str]] = {}
    i = 0
    for token in theirs:
        if i >= len(mine):
            return None
        text = redacted[token.start : token.end + 1]
        here = mine[i]
        mine_text = original[here.start : here.end + 1]
        if token.name == "PARAM" and here.name != "PARAM":
            start = here.start
            if mine_text == "-" and i + 1 < len(mine) and mine[i + 1].name in _LITERALS:
                i += 1
                here = mine[i]
            elif here.name not in _LITERALS and here.name not in _CONSTANT_KEYWORDS:
                return None
            out[int(text[1:])] = (start, original[start : here.end + 1])
        elif text != mine_text:
            return None
        i += 1
    return out if i == len(mine) else None


def _char_offsets(text: str) -> list[int]:
    """Byte offset (the parser's locations) -> character offset, for non-ASCII text."""
    offsets = []
    for position, char in enumerate(text):
        offsets.extend([position] * len(char.encode("utf-8", "surrogatepass")))
    offsets.append(len(text))
    return offsets


def statement_values(
    bundle: Bundle,
    text: str,
    redacted: Sequence[str],
    search_path: tuple[str, ...] | None = None,
) -> list[StatementValues] | None:
    """Each statement's values, by placeholder of its redacted text; None when the
    text cannot be read this way (the request then shows no values)."""
    try:
        stmts = json.loads(pg.parse_sql_json(text)).get("stmts", [])
    except Exception:
        return None
    if len(stmts) != len(redacted):
        return None
    ascii_only = text.isascii()
    chars = None if ascii_only else _char_offsets(text)
    raw = text.encode("utf-8", "surrogatepass")
    out = []
    for entry, redacted_sql in zip(stmts, redacted, strict=True):
        start = int(entry.get("stmt_location", 0))
        length = entry.get("stmt_len") or len(raw) - start
        piece = raw[start : start + int(length)].decode("utf-8", "surrogatepass")
        begin = start if chars is None else chars[start]
        nodes: list[_Node] = []
        _nodes(entry.get("stmt"), None, "", -1, nodes)
        if not nodes:
            return None
        top = nodes[0]
        reader = _Reader(bundle, nodes, search_path)
        # SET (a, b) = (...) repeats the row under each column's target: every copy
        # of a value counts, so one written into a classified column stays redacted.
        by_location: dict[int, list[_Node]] = {}
        params: dict[int, str | None] = {}
        for node in nodes:
            location = node.body.get("location")
            if node.type == "A_Const" and isinstance(location, int):
                char = location if chars is None else chars[location]
                by_location.setdefault(char - begin, []).append(node)
            elif node.type == "ParamRef":
                number = int(node.body.get("number", 0))
                label = _label(node, top, reader)
                if number not in params or label is not None:
                    params[number] = label
        slots = _placeholders(piece.strip(), redacted_sql)
        if slots is None:
            return None
        lead = len(piece) - len(piece.lstrip())
        literals: list[dict[str, Any]] = []
        for number in sorted(slots):
            if len(literals) >= MAX_VALUES:
                break
            offset, value = slots[number]
            copies = by_location.get(offset + lead)
            if copies:
                labels = {found for const in copies if (found := _label(const, top, reader))}
                label = ", ".join(sorted(labels)) if labels else None
            else:  # a literal the tree does not place (a utility statement's)
                label = ", ".join(sorted(reader.touched())) or None
            if label is not None:
                literals.append({"n": number, "classification": label})
            else:
                literals.append({"n": number, "value": _cut(value)})
        out.append(StatementValues(tuple(literals), params))
    return out


def _cut(value: str) -> str:
    if len(value) <= MAX_VALUE_CHARS:
        return value
    return f"{value[: MAX_VALUE_CHARS - 40]}… ({len(value)} characters in all)"


def fallback_label(bundle: Bundle, tables: Iterable[str]) -> str | None:
    """The label every value gets when the text cannot be read value by value: the
    classifications of the tables it names (None: none of them is classified)."""
    found: set[str] = set()
    for key in tables:
        table = bundle.tables.get(key)
        for column in table.columns if table is not None else ():
            label = bundle.column_classifications.get(f"{key}.{column.name}")
            if label:
                found.add(label)
    return ", ".join(sorted(found)) if found else None
