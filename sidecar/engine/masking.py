"""Masking by rewrite: masking expressions and the splice into the original text.

Every reference to a table with columns masked for the identity is replaced,
at the parser's token positions, by a subquery selecting each column in table
order under its own name, masked columns wrapped in their strategy's
expression and cast back to the column's type. Whatever the statement then
does with a value (functions, casts, JSON, whole-row references, predicates,
error messages, COPY, cursors) sees only the masked value. Everything outside
the spliced spans is kept byte for byte.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from typing import NamedTuple

from sidecar.engine.bundle import Masking, Table
from sidecar.engine.paths import Step, element_type, structured_kind
from sidecar.engine.scanning import scan_bytes
from sidecar.engine.vocabulary import KEEP_LAST

# Hash masking runs in the protected database, in a schema only Warden's installer
# creates (``python -m sidecar install-masking``): a SECURITY DEFINER function keyed
# by a table only its owner reads, so no key ever travels in statement text.
# Clients may not reference the schema at all.
RESERVED_SCHEMA = "warden_masking"
HMAC_FUNCTION = f"{RESERVED_SCHEMA}.hmac"

# The free_text strategy: every match of these PostgreSQL regular expressions
# (advanced syntax, applied in order, all matches) inside the value is replaced by
# its label, the rest of the text is kept (docs/masking.md, "Free text"). Over-
# masking is accepted: there is no Luhn check in SQL, so any run of 13 to 19
# digits is a card, any run of 9 to 15 a phone number. No backslash anywhere: the
# text must mean the same whatever the session's standard_conforming_strings.
FREE_TEXT_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+([.][A-Za-z0-9-]+)*[.][A-Za-z]{2,}",
        "[email]",
    ),
    ("[[:<:]][0-9]([ -]?[0-9]){12,18}[[:>:]]", "[card]"),
    ("[[:<:]][0-9]{3}-[0-9]{2}-[0-9]{4}[[:>:]]", "[national id]"),
    (
        "[[:<:]][A-Za-z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-Da-d][[:>:]]",
        "[national id]",
    ),
    ("[+]?[(]?[[:<:]][0-9]([ .()-]{0,2}[0-9]){8,14}[[:>:]]", "[phone]"),
)

_TEXT = re.compile(r"^(text|citext|name|character varying|varchar|character|char|bpchar)\b")
_INT = {"smallint": 14, "int2": 14, "integer": 28, "int": 28, "int4": 28, "bigint": 60, "int8": 60}
_NUMERIC = re.compile(r"^(numeric|decimal|real|double precision|float4|float8|float|money)\b")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def uses_hash(type_name: str, masking: Masking) -> bool:
    """True when masking a column of this type calls the database's keyed hash."""
    if masking.paths:
        # A path's value is masked as text (JSON leaves) or as the array's element type.
        return any(m.strategy == "hash" for _, m in masking.paths)
    return masking.strategy == "hash" and _type_family(type_name) in _HASHABLE


_HASHABLE = frozenset({"text", "json", "jsonb", "int", "numeric", "uuid", "bytea"})


def _type_family(type_name: str) -> str:
    t = type_name.strip().lower()
    if t.endswith("[]"):
        return "other"
    if _TEXT.match(t):
        return "text"
    base = t.split("(")[0].strip()
    if base in _INT:
        return "int"
    if _NUMERIC.match(t):
        return "numeric"
    if base == "date":
        return "date"
    if base.startswith("timestamp"):
        return "timestamp"
    if base in ("json", "jsonb", "uuid", "bytea", "inet", "boolean", "bool"):
        return base
    return "other"


def hmac_expression(value: str, key: bytes) -> str:
    """The lower-case hex HMAC-SHA-256 of ``value`` (a text expression) under ``key``,
    in plain SQL: what ``warden_masking.hmac`` computes from its stored pads
    (``sidecar/masking_db.py``). Only for a throw-away key (the control plane's mask
    preview): a real key must never be written into statement text."""
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\x00")
    inner = bytes(b ^ 0x36 for b in block).hex()
    outer = bytes(b ^ 0x5C for b in block).hex()
    cat = "OPERATOR(pg_catalog.||)"
    # decode(hex), not a '\x...' literal: no backslash, whatever standard_conforming_strings.
    return (
        f"pg_catalog.encode(pg_catalog.sha256(pg_catalog.decode('{outer}', 'hex') {cat} "
        f"pg_catalog.sha256(pg_catalog.decode('{inner}', 'hex') {cat} "
        f"pg_catalog.convert_to({value}, 'UTF8'))), 'hex')"
    )


def mask_expression(
    column: str,
    type_name: str,
    masking: Masking,
    hashing: bool = True,
    hmac: Callable[[str], str] | None = None,
) -> str:
    """A PostgreSQL expression masking ``column`` (quoted identifier) that keeps its type.

    NULL stays NULL, so masking changes values, never row counts. A strategy
    that has no meaning for a type falls back to redact, and redact falls back
    to NULL, so an unexpected type is never shown raw. Hashing calls the keyed
    function in the reserved schema; no key appears in the text. Without that
    function (``hashing`` false) a hashed column is NULL: the engine refuses any
    statement that reads one, and a column nobody reads must still not be raw.
    ``hmac`` builds the keyed hash of a text expression instead of that call (the
    preview's ``hmac_expression`` with a throw-away key); whole columns only.
    """
    if masking.paths:
        if hmac is not None:
            raise ValueError("hmac is for whole-column masks")
        return structured_expression(column, type_name, masking, hashing)
    keyed = hmac or (lambda value: f"{HMAC_FUNCTION}({value})")
    family = _type_family(type_name)
    strategy = masking.strategy
    if strategy == "hash" and not hashing:
        strategy = "null"
    # Every function and operator is schema-qualified, and text functions get text:
    # a same-named function elsewhere on the search_path with a closer argument type
    # (say public.length(varchar)) would otherwise run on the raw value. So is every
    # type a raw value is cast to: PostgreSQL looks a type name up in the session's
    # temporary schema before pg_catalog, and a domain pg_temp.text whose CHECK calls
    # pg_notify(VALUE), or casts VALUE to int, handed out every raw value the mask
    # was given (a review's finding). (The keyword types, int and bit(n), are
    # pg_catalog's by the grammar; the last cast, to the column's type, sees only
    # the masked value.)
    c = column
    t = f"({c})::pg_catalog.text"
    cat = "OPERATOR(pg_catalog.||)"
    expr: str | None = None
    if strategy == "hash":
        digest = keyed(t)
        if family in ("text", "json", "jsonb"):
            expr = digest if family == "text" else f"pg_catalog.to_jsonb({digest})"
        elif family == "int":
            bits = _INT[type_name.strip().lower().split("(")[0].strip()]
            expr = f"('x' {cat} pg_catalog.substr({digest}, 1, {bits // 4}))::bit({bits})::bigint"
        elif family == "numeric":
            expr = f"('x' {cat} pg_catalog.substr({digest}, 1, 13))::bit(52)::bigint"
        elif family == "uuid":
            expr = f"pg_catalog.substr({digest}, 1, 32)::pg_catalog.uuid"
        elif family == "bytea":
            hexed = f"pg_catalog.encode({c}, 'hex')"
            expr = f"pg_catalog.decode({keyed(hexed)}, 'hex')"
        else:
            strategy = "redact"
    elif strategy == "partial" and family == "text":
        # The loader holds keep_last within KEEP_LAST's bounds (bundle.schema.json).
        keep = int(masking.params.get(KEEP_LAST.name, KEEP_LAST.default))
        length = f"pg_catalog.length({t})"
        expr = (
            f"CASE WHEN {length} OPERATOR(pg_catalog.<=) {keep} "
            f"THEN pg_catalog.repeat('*', {length}) "
            f"ELSE pg_catalog.repeat('*', {length} OPERATOR(pg_catalog.-) {keep}) "
            f"{cat} pg_catalog.right({t}, {keep}) END"
        )
    elif strategy == "email" and family == "text":
        expr = (
            f"CASE WHEN {c} IS NULL THEN NULL "
            f"WHEN pg_catalog.strpos({t}, '@') OPERATOR(pg_catalog.>) 0 "
            f"THEN '***@' {cat} pg_catalog.split_part({t}, '@', 2) ELSE '***' END"
        )
    elif strategy == "free_text" and family == "text":
        expr = t
        for pattern, label in FREE_TEXT_PATTERNS:
            expr = f"pg_catalog.regexp_replace({expr}, '{pattern}', '{label}', 'g')"
    elif strategy == "year_only" and family in ("date", "timestamp"):
        expr = (
            f"pg_catalog.make_date(pg_catalog.date_part('year', {c})::int, 1, 1)"
            if family == "date"
            else f"pg_catalog.date_trunc('year', {c})"
        )
    elif strategy != "null":
        strategy = "redact"
    if expr is None and strategy == "redact":
        constant = {
            "text": "'***'",
            "int": "0",
            "numeric": "0",
            "json": "'\"***\"'",
            "jsonb": "'\"***\"'",
            "uuid": "'00000000-0000-0000-0000-000000000000'",
            "bytea": "'\\x'::pg_catalog.bytea",
        }.get(family)
        if constant is not None:
            expr = f"CASE WHEN {c} IS NULL THEN NULL ELSE {constant} END"
    if expr is None:
        expr = "NULL"
    return f"({expr})::{type_name}"


# --- masking inside JSON and array columns ----------------------------------------------


class _Node:
    """The classified paths of one column as a tree: a masked value, or where to descend."""

    __slots__ = ("each", "keys", "masking")

    def __init__(self) -> None:
        self.masking: Masking | None = None
        self.keys: dict[str, _Node] = {}
        self.each: _Node | None = None


def _path_tree(paths: tuple[tuple[tuple[Step, ...], Masking], ...]) -> _Node:
    root = _Node()
    for steps, masking in paths:
        node = root
        for step in steps:
            if node.masking is not None:
                break  # a path above this one already masks the whole value
            if step.key is None:
                node.each = node.each or _Node()
                node = node.each
            else:
                node = node.keys.setdefault(step.key, _Node())
        else:
            # The shorter path masks everything below it; equal paths: the first wins.
            if node.masking is None:
                node.masking = masking
                node.keys, node.each = {}, None
    return root


def _literal(value: str) -> str:
    """A string constant that reads the same whatever ``standard_conforming_strings`` is."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


_EQ = "OPERATOR(pg_catalog.=)"
_TYPEOF = "pg_catalog.jsonb_typeof"


def _json_leaf(value: str, masking: Masking, hashing: bool) -> str:
    """A JSON value masked as its text (a string's content, else its JSON text), back to
    JSON: a string, or JSON null for ``null``. A JSON null stays null."""
    text = f"({value} OPERATOR(pg_catalog.#>>) '{{}}'::pg_catalog.text[])"
    masked = mask_expression(text, "text", masking, hashing)
    return (
        f"CASE WHEN {value} IS NULL OR {_TYPEOF}({value}) {_EQ} 'null' THEN {value} "
        f"ELSE COALESCE(pg_catalog.to_jsonb({masked}), 'null'::pg_catalog.jsonb) END"
    )


def _json_rebuild(value: str, node: _Node, depth: int, hashing: bool) -> str:
    """``value`` (jsonb) with every path of ``node`` masked. Keys and elements the tree
    does not name are kept; a key a row lacks stays absent; a value of another JSON type
    than the path expects (a string where an object was expected) is kept as it is."""
    if node.masking is not None:
        return _json_leaf(value, node.masking, hashing)
    alias = f"warden_p{depth}"
    branches = []
    if node.keys:
        cases = " ".join(
            f"WHEN {alias}.key {_EQ} {_literal(key)} "
            f"THEN {_json_rebuild(f'{alias}.value', child, depth + 1, hashing)}"
            for key, child in sorted(node.keys.items())
        )
        rebuilt = (
            f"COALESCE((SELECT pg_catalog.jsonb_object_agg({alias}.key, "
            f"CASE {cases} ELSE {alias}.value END) "
            f"FROM pg_catalog.jsonb_each({value}) AS {alias}), '{{}}'::pg_catalog.jsonb)"
        )
        branches.append(f"WHEN {_TYPEOF}({value}) {_EQ} 'object' THEN {rebuilt}")
    if node.each is not None:
        element = _json_rebuild(f"{alias}.value", node.each, depth + 1, hashing)
        rebuilt = (
            f"COALESCE((SELECT pg_catalog.jsonb_agg({element} ORDER BY {alias}.ordinality) "
            f"FROM pg_catalog.jsonb_array_elements({value}) WITH ORDINALITY "
            f"AS {alias}(value, ordinality)), '[]'::pg_catalog.jsonb)"
        )
        branches.append(f"WHEN {_TYPEOF}({value}) {_EQ} 'array' THEN {rebuilt}")
    if not branches:
        return value
    return f"CASE {' '.join(branches)} ELSE {value} END"


def _structured_value(value: str, type_name: str, node: _Node, depth: int, hashing: bool) -> str:
    kind = structured_kind(type_name)
    if kind == "jsonb":
        return _json_rebuild(value, node, depth, hashing)
    if kind == "json":
        rebuilt = _json_rebuild(f"({value})::pg_catalog.jsonb", node, depth, hashing)
        return f"({rebuilt})::pg_catalog.json"
    if kind == "array" and node.each is not None:
        alias = f"warden_p{depth}"
        element = _structured_value(
            f"{alias}.element", element_type(type_name), node.each, depth + 1, hashing
        )
        return (
            f"CASE WHEN {value} IS NULL THEN NULL ELSE ARRAY(SELECT {element} "
            f"FROM pg_catalog.unnest({value}) WITH ORDINALITY AS {alias}(element, ordinality) "
            f"ORDER BY {alias}.ordinality) END"
        )
    if node.masking is not None:
        return mask_expression(value, type_name, node.masking, hashing)
    return "NULL"  # the loader refuses such a path; never show a value it could not place


def structured_expression(column: str, type_name: str, masking: Masking, hashing: bool) -> str:
    """The value of a JSON or array ``column`` rebuilt with each of ``masking.paths``
    masked by its own strategy, cast back to the column's type. NULL stays NULL; rows
    without a path keep their value; a multi-dimensional array comes back flattened."""
    tree = _path_tree(masking.paths)
    return f"({_structured_value(column, type_name, tree, 1, hashing)})::{type_name}"


def masking_subquery(
    table: Table, masked: dict[str, Masking], only: bool, hashing: bool = True
) -> str:
    """``(SELECT col, mask(col)::type AS col, ... FROM [ONLY] schema.table)``."""
    items = []
    for column in table.columns:
        ident = quote_ident(column.name)
        masking = masked.get(column.name)
        if masking is None:
            items.append(ident)
        else:
            items.append(f"{mask_expression(ident, column.type, masking, hashing)} AS {ident}")
    source = f"{quote_ident(table.schema)}.{quote_ident(table.name)}"
    return f"(SELECT {', '.join(items)} FROM {'ONLY ' if only else ''}{source})"


class Token(NamedTuple):
    """One token of ``scan_tokens``. A tuple: a large statement has hundreds of
    thousands of them, and a tuple is the cheapest immutable object to build."""

    start: int  # byte offsets, end exclusive
    end: int
    name: str
    keyword: bool


_COMMENTS = ("SQL_COMMENT", "C_COMMENT")


def scan_tokens(sql: str) -> list[Token]:
    """PostgreSQL's scan of ``sql`` with UTF-8 byte offsets (end exclusive), comments
    left out.

    Linear in the text (``scanning.scan_bytes``, not pglast's scan, which is
    quadratic in a text with non-ASCII characters), and each token is built once
    (``tuple.__new__``, without the NamedTuple constructor's argument handling).
    """
    # Comments never hold a splice point; dropping them lets a name written as
    # ``public/**/./**/customers`` be spliced like any other.
    new = tuple.__new__
    return [
        new(Token, (start, end + 1, name, kind != "NO_KEYWORD"))
        for start, end, name, kind in scan_bytes(sql)
        if name not in _COMMENTS
    ]


def _start(token: Token) -> int:
    return token.start


def _is_name(token: Token) -> bool:
    return token.name in ("IDENT", "UIDENT") or token.keyword


def relation_span(tokens: list[Token], location: int, inh: bool) -> tuple[int, int, int, int]:
    """(first, last) token index of a relation reference starting at ``location``.

    Returns (start_byte, end_byte, first_index, last_index). The span covers a
    preceding ``ONLY`` (when ``inh`` is false) and a trailing ``*``.
    """
    # Tokens are in order: a binary search, or a statement with many references
    # would cost references x tokens.
    index = bisect.bisect_left(tokens, location, key=_start)
    if index == len(tokens) or tokens[index].start != location:
        raise ValueError(f"no token starts at byte {location}")  # no splice placed
    first = index
    last = index
    while (
        last + 2 < len(tokens)
        and tokens[last + 1].name == "ASCII_46"
        and _is_name(tokens[last + 2])
    ):
        last += 2
    if last + 2 < len(tokens) and tokens[last + 1].name == "UESCAPE":
        last += 2
    if inh and last + 1 < len(tokens) and tokens[last + 1].name == "ASCII_42":
        last += 1
    if not inh and first > 0 and tokens[first - 1].name == "ONLY":
        first -= 1
    return tokens[first].start, tokens[last].end, first, last
