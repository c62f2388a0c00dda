"""Statement analysis for PostgreSQL, using PostgreSQL's own parser (pglast).

``parse_statements`` splits a text exactly as the server does and
``analyse_statement`` walks one statement's JSON parse tree to find what the
policy needs: its kind (by allowlist), the tables read and written, the
columns read (projections and predicates), the functions called, whether
each write has an effective WHERE, row bounds, data-modifying CTEs, EXPLAIN
ANALYZE, COPY direction and target, session settings, and the column
references that would let a write act as an oracle on a classified column.
Locations in the tree are byte offsets into the UTF-8 text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pglast import parser as pg

from sidecar.engine import vocabulary
from sidecar.engine.bundle import Bundle, Table
from sidecar.engine.masking import RESERVED_SCHEMA

# Statement node -> (kind, category); the vocabulary the control plane offers too.
KINDS = vocabulary.NODE_KINDS
_UNKNOWN = (vocabulary.UNKNOWN, vocabulary.UNKNOWN)
# Statements whose effect is code or definitions the rewrite cannot see into.
OPAQUE_CODE = frozenset(
    {"CreateFunctionStmt", "RuleStmt", "CreateTrigStmt", "CreatePolicyStmt", "ViewStmt"}
)
# DDL that does not read the values of the tables it names.
VALUE_BLIND_DDL = frozenset(
    {"DropStmt", "TruncateStmt", "CommentStmt", "IndexStmt", "VacuumStmt", "LockStmt"}
)
_WRITES = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}
_CURSOR_OPT_HOLD = 0x0020  # PostgreSQL's DECLARE ... WITH HOLD bit


@dataclass(slots=True)
class RangeRef:
    """One reference to a relation in a statement."""

    schema: str | None
    relname: str
    alias: str | None
    location: int  # byte offset of the (first) name token
    inh: bool
    role: str  # read | write | copy | into | ddl
    table: Table | None  # the snapshot table, when known

    @property
    def key(self) -> str:
        if self.table is not None:
            return self.table.key
        return f"{self.schema or 'public'}.{self.relname}"


@dataclass(slots=True)
class WriteInfo:
    kind: str
    target: RangeRef
    has_effective_where: bool | None
    oracle_refs: list[tuple[str, ...]] = field(default_factory=list)
    returns_whole_row: bool = False
    # Names RETURNING may give the target's row besides its own (PostgreSQL 18):
    # old and new, and those RETURNING WITH (OLD AS o, NEW AS n) chooses.
    returning_aliases: frozenset[str] = frozenset()


@dataclass(slots=True)
class RawStatement:
    node_type: str
    body: dict[str, Any]
    start: int  # byte offsets into the whole text
    end: int
    # The parse tree holds the reserved schema's name somewhere (maybe as a literal).
    may_name_reserved: bool = False


@dataclass(slots=True)
class Analysis:
    """Everything the policy reads about one statement (before identity-specific work)."""

    node_type: str
    kind: str
    category: str
    judged_type: str  # node type of the statement that actually runs (EXPLAIN ANALYZE inner)
    ranges: list[RangeRef] = field(default_factory=list)
    cte_refs: int = 0
    colrefs: list[tuple[str, ...]] = field(default_factory=list)
    colref_outer: list[bool] = field(default_factory=list)  # parallel to colrefs
    star_scopes: list[list[RangeRef] | None] = field(default_factory=list)  # one per bare *
    using_cols: list[str] = field(default_factory=list)
    # Locations of relations whose columns go by other names or are merged (an alias
    # list on them or on a join around them, a NATURAL join): a name cannot be traced
    # to one of their columns, so every column of theirs counts as read.
    whole_locations: set[int] = field(default_factory=set)
    # A join's alias -> the locations of the relations under it: ``x.card`` in
    # ``(payments p JOIN orders o ON ...) AS x`` names a column of theirs.
    join_aliases: dict[str, set[int]] = field(default_factory=dict)
    # Each NATURAL join's two sides, as the locations of their relations: the
    # columns the sides share are compared, so they are read.
    natural_joins: list[tuple[set[int], set[int]]] = field(default_factory=list)
    # The name a CREATE FUNCTION/PROCEDURE/AGGREGATE or a rename gives a routine
    # (without its schema), and whether the statement defines an operator.
    defines_routine: str | None = None
    defines_operator: bool = False
    functions: list[str] = field(default_factory=list)
    set_config_params: list[str | None] = field(default_factory=list)
    # (name, value) of each set_config call; None where not a constant.
    set_config_calls: list[tuple[str | None, str | None]] = field(default_factory=list)
    reserved_schema: bool = False  # the text names Warden's masking schema
    table_functions: list[str] = field(default_factory=list)
    writes: list[WriteInfo] = field(default_factory=list)
    # Kinds of what the writes do beyond their own kind: a MERGE's actions, an
    # INSERT's ON CONFLICT DO UPDATE (facts.effective_kinds).
    write_actions: list[str] = field(default_factory=list)
    data_modifying_cte: bool = False
    literal_sensitive: bool = False
    explain_analyze: bool = False
    row_bound: int | None = None
    has_limit: bool = False
    has_where: bool = False
    copy: dict[str, Any] | None = None
    setting: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def parse_statements(sql: str) -> list[RawStatement]:
    """Split and parse ``sql``; raises ``pglast.parser.ParseError`` when PostgreSQL would."""
    text = pg.parse_sql_json(sql)
    reserved = f'"{RESERVED_SCHEMA}"' in text
    tree = json.loads(text)
    total = len(sql.encode("utf-8")) if not sql.isascii() else len(sql)
    out: list[RawStatement] = []
    for raw in tree.get("stmts", []):
        start = raw.get("stmt_location", 0)
        length = raw.get("stmt_len")
        end = total if length is None or length == 0 else start + length
        ((node_type, body),) = raw["stmt"].items()
        out.append(RawStatement(node_type, body, start, end, reserved))
    return out


def _names(items: list[Any]) -> list[str]:
    return [next(iter(i.values())).get("sval", "") for i in items if isinstance(i, dict)]


def _const_int(node: Any) -> int | None:
    if isinstance(node, dict) and "A_Const" in node:
        const = node["A_Const"]
        if "ival" in const:
            return int(const["ival"].get("ival", 0))
    return None


def _const_text(node: Any) -> str | None:
    """The text of a string constant (also under a cast to text), else None."""
    if isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    if isinstance(node, dict) and "A_Const" in node:
        value = node["A_Const"].get("sval")
        if isinstance(value, dict):
            return str(value.get("sval", ""))
    return None


def _names_schema(node: Any, schema: str, parent: str = "") -> bool:
    """True when an identifier (not a string literal) in the tree is ``schema``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if value == schema and (
                    (key == "sval" and parent == "String")
                    or key in ("schemaname", "catalogname", "schema")
                ):
                    return True
            elif _names_schema(value, schema, key):
                return True
    elif isinstance(node, list):
        return any(_names_schema(item, schema, parent) for item in node)
    return False


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _shape(node: Any) -> Any:
    """The tree without locations and with every constant's value erased."""
    if isinstance(node, dict):
        if "A_Const" in node:
            return "<const>"
        return {k: _shape(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return node


def _has(node: Any, key: str) -> bool:
    if isinstance(node, dict):
        return any(k == key or _has(v, key) for k, v in node.items())
    if isinstance(node, list):
        return any(_has(v, key) for v in node)
    return False


def always_true(node: Any, notes: list[str] | None = None) -> bool:
    """True when a WHERE cannot filter anything: constant, tautology, OR with one.

    A column-free condition is constant for the whole statement, so it counts
    as no WHERE whatever its value (this keeps the verdict independent of
    literals, which the normalised cache relies on). ``notes`` receives
    "literal" when the verdict did depend on a literal.
    """
    if not isinstance(node, dict):
        return False
    if not _has(node, "ColumnRef"):
        return True
    if "BoolExpr" in node:
        expr = node["BoolExpr"]
        if expr["boolop"] == "OR_EXPR":
            return any(always_true(a, notes) for a in expr["args"])
        if expr["boolop"] == "AND_EXPR":
            return all(always_true(a, notes) for a in expr["args"])
        return False
    if "A_Expr" in node:
        expr = node["A_Expr"]
        op = _names(expr.get("name", []))
        left, right = expr.get("lexpr"), expr.get("rexpr")
        if expr["kind"] == "AEXPR_OP" and op in (["="], [">="], ["<="]):
            if notes is not None and _shape(left) == _shape(right) and _has(left, "A_Const"):
                notes.append("literal")  # id + 1 = id + 1 vs id + 1 = id + 2
            return _strip(left) == _strip(right)
        if expr["kind"] in ("AEXPR_LIKE", "AEXPR_ILIKE") and isinstance(right, dict):
            const = right.get("A_Const", {}).get("sval", {}).get("sval")
            if const is not None and notes is not None:
                notes.append("literal")
            return const is not None and const != "" and set(const) == {"%"}
    if "BooleanTest" in node:
        test = node["BooleanTest"]
        return test["booltesttype"] in ("IS_TRUE", "IS_NOT_FALSE") and always_true(
            test["arg"], notes
        )
    return False


def _direct_locations(items: list[Any]) -> set[int]:
    """Locations of the relations named directly in a FROM list (through joins)."""
    out: set[int] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        if "RangeVar" in item:
            out.add(item["RangeVar"].get("location", -1))
        elif "JoinExpr" in item:
            join = item["JoinExpr"]
            out |= _direct_locations([join.get("larg"), join.get("rarg")])
    return out


# A MERGE action's command -> the statement kind it acts as.
_MERGE_ACTIONS = {"CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_INSERT": "insert"}


_ROUTINE_OBJECTS = frozenset(
    {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_AGGREGATE", "OBJECT_ROUTINE"}
)


def _routine_defined(result: Analysis, node_type: str, body: dict[str, Any]) -> None:
    """``defines_routine``, ``defines_operator``: what the statement names a routine or
    makes an operator (``policy.masking_violations``, ``mask.builtin_shadow``)."""
    if node_type == "CreateFunctionStmt":
        names = _names(body.get("funcname", []))
        result.defines_routine = names[-1] if names else None
    elif node_type == "DefineStmt":
        if body.get("kind") == "OBJECT_OPERATOR":
            result.defines_operator = True
        elif body.get("kind") == "OBJECT_AGGREGATE":
            names = _names(body.get("defnames", []))
            result.defines_routine = names[-1] if names else None
    elif node_type == "RenameStmt" and body.get("renameType") in _ROUTINE_OBJECTS:
        result.defines_routine = body.get("newname")
    elif node_type == "AlterObjectSchemaStmt" and body.get("objectType") in _ROUTINE_OBJECTS:
        # Moving a function into another schema puts its name on that schema's
        # search paths: the same as defining it there.
        names = _names(body.get("object", {}).get("ObjectWithArgs", {}).get("objname", []))
        result.defines_routine = names[-1] if names else None
    elif node_type == "AlterObjectSchemaStmt" and body.get("objectType") == "OBJECT_OPERATOR":
        result.defines_operator = True


def _returning_aliases(body: dict[str, Any]) -> frozenset[str]:
    """``old``, ``new`` and the names ``RETURNING WITH (OLD AS o, NEW AS n)`` gives them:
    each names the written row (a review's finding: ``RETURNING old.ssn`` was not
    taken for the target's column). All of them, whatever the options rename."""
    clause = body.get("returningClause")
    options = clause.get("options", []) if isinstance(clause, dict) else []
    named = {o.get("ReturningOption", {}).get("value") for o in options}
    return frozenset({"old", "new"} | {name for name in named if isinstance(name, str)})


def _returning(body: dict[str, Any]) -> list[Any]:
    """RETURNING items (PostgreSQL 18 wraps them in a returningClause)."""
    clause = body.get("returningClause")
    if isinstance(clause, dict):
        return list(clause.get("exprs", []))
    return list(body.get("returningList", []))


class _Walker:
    """Collects relations, column references and calls from one statement tree."""

    def __init__(
        self, bundle: Bundle, result: Analysis, search_path: tuple[str, ...] | None = None
    ) -> None:
        self.bundle = bundle
        self.r = result
        self.search_path = search_path
        # Relations a bare * expands to, innermost last; None: every table
        # (RETURNING *, which also covers UPDATE ... FROM and DELETE ... USING).
        self.scope: list[list[RangeRef] | None] = []

    # -- generic traversal -------------------------------------------------
    def visit(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item, ctes)
        elif isinstance(node, dict):
            if len(node) == 1:
                ((key, value),) = node.items()
                if key[:1].isupper():
                    handler = getattr(self, "v_" + key, None)
                    if handler is not None:
                        handler(value, ctes)
                    else:
                        self.fields(value, ctes)
                    return
            self.fields(node, ctes)

    def v_A_Const(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        """A constant holds no name, call or reference: nothing to walk into (a
        multi-row INSERT is mostly constants)."""

    def v_ParamRef(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        """A parameter ($n): nothing to walk into either."""

    def v_List(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        # A VALUES row: its constants and parameters skipped without a call each.
        for item in body.get("items", ()):
            if (
                isinstance(item, dict)
                and len(item) == 1
                and ("A_Const" in item or "ParamRef" in item)
            ):
                continue
            self.visit(item, ctes)

    def fields(
        self, body: dict[str, Any], ctes: frozenset[str], skip: tuple[str, ...] = ()
    ) -> None:
        for key, value in body.items():
            if key in skip or not isinstance(value, dict | list):
                continue
            if (
                key in ("relation", "rel", "view")
                and isinstance(value, dict)
                and "relname" in value
            ):
                self.add_range(value, "ddl", ctes)
            else:
                self.visit(value, ctes)

    def add_range(self, rv: dict[str, Any], role: str, ctes: frozenset[str]) -> RangeRef | None:
        schema = rv.get("schemaname")
        name = rv["relname"]
        if schema is None and name in ctes and role == "read":
            self.r.cte_refs += 1
            return None
        alias = rv.get("alias", {}).get("aliasname")
        if rv.get("alias", {}).get("colnames"):
            self.r.whole_locations.add(rv.get("location", -1))
        ref = RangeRef(
            schema,
            name,
            alias,
            rv.get("location", -1),
            rv.get("inh", False),
            role,
            self.bundle.resolve_table(schema, name, self.search_path),
        )
        self.r.ranges.append(ref)
        return ref

    def with_clause(self, body: dict[str, Any], ctes: frozenset[str]) -> frozenset[str]:
        wc = body.get("withClause")
        if not wc:
            return ctes
        items = [c["CommonTableExpr"] for c in wc.get("ctes", [])]
        names = [c["ctename"] for c in items]
        recursive = bool(wc.get("recursive"))
        for index, cte in enumerate(items):
            # A non-recursive CTE does not see itself or later ones: inside its
            # body, its own name is the real table.
            visible = ctes | frozenset(names if recursive else names[:index])
            query = cte.get("ctequery", {})
            if next(iter(query), None) in _WRITES:
                self.r.data_modifying_cte = True
            self.visit(query, visible)
        return ctes | frozenset(names)

    # -- node handlers -------------------------------------------------------
    def v_RangeVar(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        self.add_range(body, "read", ctes)

    def v_ColumnRef(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        parts = tuple(
            "*" if "A_Star" in f else f.get("String", {}).get("sval", "") for f in body["fields"]
        )
        self.r.colrefs.append(parts)
        top = self.scope[-1] if self.scope else None
        # An unqualified name inside a nested SELECT belongs to that SELECT when
        # one of its own tables has the column under that name; otherwise it may be
        # the outer (written) table's, which matters for the write-oracle check. A
        # table whose columns an alias list renames shows nothing: PostgreSQL looks
        # the name up among the new names (a review's finding: ``(SELECT ssn FROM
        # customers AS x(a, b, c, d))`` reads the written table's ssn). The FROM list
        # is walked before the rest of its SELECT, so those are in whole_locations.
        renamed = self.r.whole_locations
        self.r.colref_outer.append(
            top is None
            or len(parts) > 1
            or not any(
                r.table is not None and r.location not in renamed and parts[0] in r.table.names
                for r in top
            )
        )
        if parts == ("*",):
            top = self.scope[-1] if self.scope else None
            self.r.star_scopes.append(None if top is None else list(top))

    def v_FuncCall(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        names = _names(body.get("funcname", []))
        name = ".".join(names)
        self.r.functions.append(name)
        if names and names[-1] == "set_config":
            args = body.get("args", [])
            param = _const_text(args[0]) if args else None
            self.r.set_config_params.append(param)
            value = _const_text(args[1]) if len(args) > 1 else None
            self.r.set_config_calls.append((param, value))
        self.fields(body, ctes, skip=("funcname",))

    def v_RangeFunction(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        for item in body.get("functions", []):
            items = item.get("List", {}).get("items", []) if isinstance(item, dict) else item
            for sub in items:
                if isinstance(sub, dict) and "FuncCall" in sub:
                    self.r.table_functions.append(".".join(_names(sub["FuncCall"]["funcname"])))
                elif isinstance(sub, dict) and sub and not next(iter(sub)).startswith("ColumnDef"):
                    self.r.table_functions.append("<expression>")
        self.fields(body, ctes)

    def v_JoinExpr(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        self.r.using_cols.extend(_names(body.get("usingClause", [])))
        under = _direct_locations([body.get("larg"), body.get("rarg")])
        alias = body.get("alias") or {}
        if alias.get("colnames"):
            self.r.whole_locations |= under
        elif alias.get("aliasname"):
            self.r.join_aliases.setdefault(alias["aliasname"], set()).update(under)
        if body.get("isNatural"):
            self.r.natural_joins.append(
                (_direct_locations([body.get("larg")]), _direct_locations([body.get("rarg")]))
            )
        self.fields(body, ctes, skip=("usingClause",))

    def v_SelectStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        ctes = self.with_clause(body, ctes)
        into = body.get("intoClause")
        if into:
            self.add_range(into["rel"], "into", ctes)
        # A bare * expands to the relations of this SELECT's own FROM, not to
        # every table of the statement: find those first.
        start = len(self.r.ranges)
        self.visit(body.get("fromClause"), ctes)
        direct = _direct_locations(body.get("fromClause", []))
        self.scope.append([r for r in self.r.ranges[start:] if r.location in direct])
        self.fields(body, ctes, skip=("withClause", "intoClause", "fromClause"))
        self.scope.pop()

    def _oracle(self, info: WriteInfo, parts: list[Any], ctes: frozenset[str]) -> None:
        start = len(self.r.colrefs)
        for part in parts:
            if part:
                self.visit(part, ctes)
        info.oracle_refs.extend(
            parts
            for parts, outer in zip(
                self.r.colrefs[start:], self.r.colref_outer[start:], strict=True
            )
            if outer
        )

    def _write(self, kind: str, body: dict[str, Any], ctes: frozenset[str]) -> WriteInfo | None:
        self.scope.append(None)  # popped by the v_*Stmt handler
        target = self.add_range(body["relation"], "write", ctes)
        if target is None:  # unreachable: role write never resolves to a CTE
            return None
        where = body.get("whereClause")
        effective: bool | None = None
        if kind in ("update", "delete"):
            notes: list[str] = []
            effective = where is not None and not always_true(where, notes)
            if notes:
                self.r.literal_sensitive = True
        info = WriteInfo(kind, target, effective, returning_aliases=_returning_aliases(body))
        self.r.writes.append(info)
        for item in _returning(body):
            val = item.get("ResTarget", {}).get("val", {})
            if "ColumnRef" in val:
                fields = val["ColumnRef"]["fields"]
                names = {target.alias, target.relname}
                if any("A_Star" in f for f in fields) or (
                    len(fields) == 1 and fields[0].get("String", {}).get("sval") in names
                ):
                    info.returns_whole_row = True
        return info

    def v_InsertStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        ctes = self.with_clause(body, ctes)
        info = self._write("insert", body, ctes)
        self.visit(body.get("selectStmt"), ctes)
        if info is not None:
            self._oracle(info, [body.get("onConflictClause"), _returning(body)], ctes)
        conflict = body.get("onConflictClause") or {}
        if conflict.get("action") == "ONCONFLICT_UPDATE":
            self.r.write_actions.append("update")
        self.scope.pop()

    def v_UpdateStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        ctes = self.with_clause(body, ctes)
        info = self._write("update", body, ctes)
        self.visit(body.get("fromClause"), ctes)
        if info is not None:
            parts = [body.get("targetList"), body.get("whereClause"), _returning(body)]
            self._oracle(info, parts, ctes)
        self.scope.pop()

    def v_DeleteStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        ctes = self.with_clause(body, ctes)
        info = self._write("delete", body, ctes)
        self.visit(body.get("usingClause"), ctes)
        if info is not None:
            self._oracle(info, [body.get("whereClause"), _returning(body)], ctes)
        self.scope.pop()

    def v_MergeStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        ctes = self.with_clause(body, ctes)
        info = self._write("merge", body, ctes)
        for clause in body.get("mergeWhenClauses", []):
            command = clause.get("MergeWhenClause", {}).get("commandType", "")
            action = _MERGE_ACTIONS.get(command)
            if action is not None:
                self.r.write_actions.append(action)
        self.visit(body.get("sourceRelation"), ctes)
        if info is not None:
            parts = [
                body.get("joinCondition"),
                body.get("mergeWhenClauses"),
                _returning(body),
            ]
            self._oracle(info, parts, ctes)
        self.scope.pop()

    def v_TruncateStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        for rel in body.get("relations", []):
            self.add_range(rel["RangeVar"], "write", ctes)

    def v_CopyStmt(self, body: dict[str, Any], ctes: frozenset[str]) -> None:
        direction = "from" if body.get("is_from") else "to"
        relation = body.get("relation")
        if relation is not None:
            self.add_range(relation, "write" if direction == "from" else "copy", ctes)
        self.visit(body.get("query"), ctes)
        self.visit(body.get("whereClause"), ctes)
        filename = body.get("filename")
        target = "program" if body.get("is_program") else ("file" if filename else "client")
        self.r.copy = {
            "direction": direction,
            "target": target,
            "relation": relation is not None,
            "columns": _names(body.get("attlist", [])),
        }


def analyse_statement(
    bundle: Bundle, raw: RawStatement, search_path: tuple[str, ...] | None = None
) -> Analysis:
    """Analyse one parsed statement against the bundle's schema snapshot, resolving
    unqualified names under ``search_path`` (the session's; default the bundle's)."""
    node_type, body = raw.node_type, raw.body
    kind, category = KINDS.get(node_type, _UNKNOWN)
    result = Analysis(node_type, kind, category, node_type)
    walker = _Walker(bundle, result, search_path)
    result.reserved_schema = raw.may_name_reserved and _names_schema(body, RESERVED_SCHEMA)
    judged_type, judged = node_type, body
    if node_type == "ExplainStmt":
        options = _names_defelem(body.get("options", []))
        inner = body["query"]
        ((judged_type, judged),) = inner.items()
        if options.get("analyze", False):
            result.explain_analyze = True
            result.kind = vocabulary.EXPLAIN_ANALYZE
            result.category = KINDS.get(judged_type, _UNKNOWN)[1]
        walker.visit(inner, frozenset())
    elif node_type == "PrepareStmt":
        ((judged_type, judged),) = body["query"].items()
        result.category = KINDS.get(judged_type, _UNKNOWN)[1]
        walker.visit(body["query"], frozenset())
    elif node_type == "CreateTableAsStmt":
        if body.get("objtype") == "OBJECT_MATVIEW":
            result.kind = vocabulary.CREATE_MATERIALIZED_VIEW
        walker.add_range(body["into"]["rel"], "into", frozenset())
        walker.visit(body["query"], frozenset())
    elif node_type == "VariableSetStmt":
        result.setting = {
            "kind": body.get("kind"),
            "name": (body.get("name") or "").lower(),
            "values": [_setting_value(a) for a in body.get("args", [])],
            "local": bool(body.get("is_local")),
        }
        result.details["setting"] = {
            "kind": result.setting["kind"].removeprefix("VAR_").lower(),
            "name": result.setting["name"],
            "local": result.setting["local"],
        }
    elif node_type in ("DeclareCursorStmt", "FetchStmt", "ClosePortalStmt"):
        # Cursors share their names with protocol portals: the proxy tracks both.
        op = {"DeclareCursorStmt": "declare", "FetchStmt": "fetch"}.get(node_type, "close")
        result.details["cursor"] = {
            "op": op,
            "name": body.get("portalname"),
            "hold": bool(body.get("options", 0) & _CURSOR_OPT_HOLD),
        }
        if node_type == "DeclareCursorStmt":
            ((judged_type, judged),) = body["query"].items()
            result.category = KINDS.get(judged_type, _UNKNOWN)[1]
            walker.visit(body["query"], frozenset())
    elif node_type == "CreateExtensionStmt":
        result.details["extension"] = body.get("extname", "")
        result.details["if_not_exists"] = bool(body.get("if_not_exists"))
        walker.visit({node_type: body}, frozenset())
    elif node_type == "TransactionStmt":
        result.details["transaction"] = body.get("kind", "").removeprefix("TRANS_STMT_").lower()
    elif node_type == "SelectStmt" and body.get("intoClause"):
        result.kind, result.category = vocabulary.SELECT_INTO, "ddl"
        walker.visit({node_type: body}, frozenset())
    else:
        walker.visit({node_type: body}, frozenset())
    result.judged_type = judged_type
    _routine_defined(result, node_type, body)
    # EXECUTE p, EXPLAIN ANALYZE EXECUTE p, CREATE TABLE t AS EXECUTE p: which statement
    # runs is the session's business (the proxy knows what it prepared under the name).
    executed: dict[str, Any] | None = None
    if judged_type == "ExecuteStmt":
        executed = judged
    elif node_type == "CreateTableAsStmt" and "ExecuteStmt" in body.get("query", {}):
        executed = body["query"]["ExecuteStmt"]
    if executed is not None:
        result.details["execute"] = executed.get("name", "")
    if result.copy is not None:
        inbound = result.copy["direction"] == "from"
        result.kind = vocabulary.COPY_FROM if inbound else vocabulary.COPY_TO
        result.category = "write" if inbound else "read"
    if result.writes and result.category == "read":
        result.category = "write"
    if judged_type == "SelectStmt" and len(result.set_config_calls) == 1:
        given, value = result.set_config_calls[0]
        setting = _pg_settings_row(judged) if given is None else None
        if setting is not None:
            result.set_config_calls = [(setting, value)]
            result.set_config_params = [setting]
    if judged_type == "SelectStmt":
        limit = judged.get("limitCount")
        result.has_limit = limit is not None and judged.get("limitOption") != "LIMIT_OPTION_DEFAULT"
        result.row_bound = _const_int(limit) if result.has_limit else None
        result.has_where = judged.get("whereClause") is not None
    return result


def _column_name(node: Any) -> str | None:
    fields = node.get("ColumnRef", {}).get("fields", []) if isinstance(node, dict) else []
    names = _names(fields)
    return names[0] if len(names) == 1 else None


def _pg_settings_row(select: dict[str, Any]) -> str | None:
    """The setting pg_dump's ``SELECT set_config(name, v, false) FROM pg_settings
    WHERE name = 'x'`` changes: ``x`` (the one row the condition leaves), else None."""
    sources = select.get("fromClause", [])
    targets = select.get("targetList", [])
    if len(sources) != 1 or len(targets) != 1 or "RangeVar" not in sources[0]:
        return None
    relation = sources[0]["RangeVar"]
    if relation.get("relname") != "pg_settings" or relation.get("schemaname") not in (
        None,
        "pg_catalog",
    ):
        return None
    call = targets[0].get("ResTarget", {}).get("val", {}).get("FuncCall")
    if call is None or _names(call.get("funcname", []))[-1:] != ["set_config"]:
        return None
    args = call.get("args", [])
    where = select.get("whereClause", {}).get("A_Expr") if select.get("whereClause") else None
    if (
        not args
        or _column_name(args[0]) != "name"
        or where is None
        or where.get("kind") != "AEXPR_OP"
        or _names(where.get("name", [])) != ["="]
        or _column_name(where.get("lexpr")) != "name"
    ):
        return None
    return _const_text(where.get("rexpr"))


def _names_defelem(options: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for option in options:
        elem = option.get("DefElem", {})
        arg = elem.get("arg")
        value: Any = True
        if isinstance(arg, dict):
            if "Boolean" in arg:
                value = bool(arg["Boolean"].get("boolval", False))
            elif "String" in arg:
                value = arg["String"].get("sval", "").lower() not in ("false", "off", "0", "no")
            elif "Integer" in arg:
                value = bool(arg["Integer"].get("ival", 0))
        out[elem.get("defname", "")] = value
    return out


def _setting_value(arg: Any) -> str | None:
    if isinstance(arg, dict) and "A_Const" in arg:
        const = arg["A_Const"]
        for key in ("sval", "ival", "fval", "boolval"):
            if key in const:
                inner = const[key]
                return str(next(iter(inner.values()), "0" if key == "ival" else ""))
    if isinstance(arg, dict) and "TypeCast" in arg:
        return _setting_value(arg["TypeCast"].get("arg"))
    return None
