"""What the rules read about one statement, for one identity: computed once, then frozen.

``statement_facts`` turns an ``Analysis`` (identity-independent) into the
``StatementFacts`` the rules, the guardrail matcher and the risk score read:
the columns it references, their classifications, which of its tables are
masked for the identity (``Bundle.masked_columns_for`` runs here, once per
table per statement; only the check of the rewritten text, a different
statement, asks again), whether it is a write without an effective WHERE or
an unbounded read of classified data.

This is the per-statement hot path of a cache miss: plain loops and slots,
no per-call closures.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.engine import vocabulary
from sidecar.engine.analysis import Analysis, RangeRef, RawStatement
from sidecar.engine.bundle import Bundle, Identity, Masking
from sidecar.engine.masking import uses_hash
from sidecar.engine.policy import function_base


@dataclass(frozen=True, slots=True)
class Context:
    """Whose statements they are, under which bundle: the same for every text the
    identity sends until the bundle changes (``Engine`` keeps one per identity)."""

    bundle: Bundle
    who: Identity
    production: bool
    hash_available: bool  # the database has Warden's keyed hash function
    masks_anything: bool  # some masking rule applies to this identity at all


def context_for(bundle: Bundle, who: Identity, hash_available: bool) -> Context:
    return Context(
        bundle,
        who,
        bundle.environment == "production",
        hash_available,
        any(not (m.exempt_teams & who.teams) for m in bundle.masking.values()),
    )


@dataclass(frozen=True, slots=True)
class GuardrailFacts:
    """What a guardrail's statement conditions are matched against."""

    unparseable: bool
    kind: str
    category: str
    # ``kind``, and the kind of every write the statement runs inside it (effective_kinds).
    kinds: tuple[str, ...]
    # Collections a guardrail's sets are tested against (``isdisjoint``, iteration),
    # so plain tuples: no set is built per statement.
    tables: tuple[str, ...]  # "schema.table" and bare names, as a guardrail may write either
    classifications: tuple[str, ...]  # of the columns it references, sorted
    functions: tuple[str, ...]  # as called and without their schema
    missing_where: bool
    unbounded: bool  # reads classified columns with neither WHERE nor LIMIT


# Text PostgreSQL's parser refuses: nothing is known about it but that.
UNPARSEABLE = GuardrailFacts(
    True,
    vocabulary.UNPARSEABLE,
    vocabulary.UNPARSEABLE,
    (vocabulary.UNPARSEABLE,),
    (),
    (),
    (),
    False,
    False,
)


def effective_kinds(a: Analysis, runs: bool) -> tuple[str, ...]:
    """The statement's own kind and those of the writes it runs inside it: a CTE's
    DELETE, a MERGE's actions, an INSERT's ON CONFLICT DO UPDATE, the statement of a
    PREPARE, an EXPLAIN ANALYZE or a COPY (query). A guardrail on ``delete`` must
    hold ``WITH d AS (DELETE ...) SELECT ...`` as it holds the DELETE (a review's
    finding: it matched the outer kind alone, ``select``). DROP OWNED drops
    objects: it is a ``drop`` as well; COPY ... FROM inserts, an ``insert`` as well.
    A plain EXPLAIN runs nothing."""
    kinds = {a.kind}
    if runs:
        kinds.update(w.kind for w in a.writes)
        kinds.update(a.write_actions)
    if a.kind == "drop_owned":
        kinds.add("drop")
    if a.kind == vocabulary.COPY_FROM:
        kinds.add("insert")  # COPY t FROM inserts rows
    return tuple(sorted(kinds))


@dataclass(frozen=True, slots=True)
class StatementFacts(GuardrailFacts):
    """One analysed statement as the identity's rules see it."""

    raw: RawStatement
    analysis: Analysis
    runs: bool  # its functions run now (a plain EXPLAIN runs nothing)
    columns_read: tuple[str, ...]  # schema.table.column referenced (over-approximated), sorted
    # table key -> its columns masked for the identity, for every table the
    # statement names whose columns are masked (any role).
    masked: dict[str, dict[str, Masking]]
    masked_columns: tuple[str, ...]  # referenced columns of read/copied tables that are masked
    # Of those, the ones masked only provisionally (an unreviewed finding).
    provisional_columns: tuple[str, ...]
    # Referenced provisional columns left unmasked for a service ("would have masked").
    would_have_masked: tuple[str, ...]
    masked_levels: tuple[str, ...]
    unmasked_levels: tuple[str, ...]
    reads_masked: bool  # a read or copied table has masked columns: the text is rewritten
    needs_hash: bool  # reads a hash-masked column while the database lacks the hash


_READ_ROLES = ("read", "copy")


def statement_facts(ctx: Context, raw: RawStatement, a: Analysis) -> StatementFacts:
    bundle = ctx.bundle
    runs = not (raw.node_type == "ExplainStmt" and not a.explain_analyze)
    columns = referenced_columns(a)
    columns_read = tuple(sorted(columns))
    column_classes = bundle.column_classifications
    labels = {column_classes[c] for c in columns_read if c in column_classes}
    paths = bundle.path_classifications
    if paths:  # a column classified inside holds every one of its paths' classifications
        labels.update(x for c in columns_read if c in paths for x in paths[c].values())
    classes = tuple(sorted(labels))

    masked: dict[str, dict[str, Masking]] = {}
    masked_read: dict[str, dict[str, Masking]] = {}
    spared: set[str] = set()
    if ctx.masks_anything:  # else every masking rule exempts this identity
        seen: set[str] = set()
        spares = bool(bundle.provisional) and bundle.spares_provisional(ctx.who)
        for ref in a.ranges:
            table = ref.table
            if table is None:
                continue
            key = table.key
            if key not in seen:
                seen.add(key)
                cols = bundle.masked_columns_for(ctx.who, table)
                if cols:
                    masked[key] = cols
            if ref.role in _READ_ROLES:
                if key in masked:
                    masked_read[key] = masked[key]
                if spares:
                    spared.update(f"{key}.{c}" for c in bundle.spared_columns_for(ctx.who, table))
    masked_columns = tuple(
        sorted(f"{t}.{c}" for t, cols in masked_read.items() for c in cols if f"{t}.{c}" in columns)
    )
    provisional = bundle.provisional
    provisional_columns = (
        tuple(c for c in masked_columns if c in provisional) if provisional else ()
    )
    would_have_masked = tuple(sorted(spared & columns)) if spared else ()
    needs_hash = not ctx.hash_available and any(
        f"{key}.{c.name}" in columns and uses_hash(c.type, cols[c.name])
        for key, cols in masked_read.items()
        for c in bundle.tables[key].columns
        if c.name in cols
    )
    levels = bundle.classification_levels
    masked_levels = tuple(levels[column_classes[c]] for c in masked_columns)
    unmasked_levels = tuple(
        levels[column_classes[c]]
        for c in columns_read
        if c in column_classes and c not in masked_columns
    )
    missing_where = runs and any(w.has_effective_where is False for w in a.writes)
    unbounded = bool(classes) and a.judged_type == "SelectStmt" and not (a.has_where or a.has_limit)
    return StatementFacts(
        unparseable=False,
        kind=a.kind,
        category=a.category,
        kinds=effective_kinds(a, runs),
        tables=(*[r.key for r in a.ranges], *[r.relname for r in a.ranges]),
        classifications=classes,
        functions=(*map(function_base, a.functions), *a.functions),
        missing_where=missing_where,
        unbounded=unbounded,
        raw=raw,
        analysis=a,
        runs=runs,
        columns_read=columns_read,
        masked=masked,
        masked_columns=masked_columns,
        provisional_columns=provisional_columns,
        would_have_masked=would_have_masked,
        masked_levels=masked_levels,
        unmasked_levels=unmasked_levels,
        reads_masked=bool(masked_read),
        needs_hash=needs_hash,
    )


# -- referenced columns ------------------------------------------------------------------


def _all_of(refs: list[RangeRef], out: set[str]) -> None:
    for r in refs:
        assert r.table is not None
        key = r.table.key
        out.update(f"{key}.{c}" for c in r.table.column_names())


def _named(refs: list[RangeRef], column: str, out: set[str]) -> bool:
    hit = False
    for r in refs:
        assert r.table is not None
        if column in r.table.names:
            out.add(f"{r.table.key}.{column}")
            hit = True
    return hit


def referenced_columns(a: Analysis) -> set[str]:
    """schema.table.column for every column reference (over-approximated when ambiguous)."""
    tables = [r for r in a.ranges if r.table is not None and r.role != "into"]
    by_alias: dict[str, list[RangeRef]] = {}
    for r in tables:
        by_alias.setdefault(r.alias or r.relname, []).append(r)
        by_alias.setdefault(r.relname, []).append(r)
    for alias, locations in a.join_aliases.items():  # (a JOIN b ON ...) AS x: x.col
        by_alias.setdefault(alias, []).extend(r for r in tables if r.location in locations)
    for write in a.writes:  # RETURNING old.col and the like name the written row
        if write.target.table is not None:
            for name in write.returning_aliases:
                by_alias.setdefault(name, []).append(write.target)
    out: set[str] = set()
    stars = iter(a.star_scopes)
    for parts in a.colrefs:
        if parts == ("*",):
            # RETURNING * and the like have no SELECT scope: all tables then.
            scope = next(stars, None)
            _all_of([r for r in (tables if scope is None else scope) if r.table is not None], out)
        elif len(parts) == 1:
            if not _named(tables, parts[0], out) and parts[0] in by_alias:
                _all_of(by_alias[parts[0]], out)  # whole-row reference
        else:
            qualifier, column = parts[-2], parts[-1]
            refs = by_alias.get(qualifier, [])
            if len(parts) >= 3:
                refs = [r for r in refs if r.table and r.table.schema == parts[-3]] or refs
            if column == "*":
                _all_of(refs, out)
            else:
                _named(refs, column, out)
    for column in a.using_cols:
        _named(tables, column, out)
    for left, right in a.natural_joins:
        sides = (
            [r for r in tables if r.location in left],
            [r for r in tables if r.location in right],
        )
        both = [*sides[0], *sides[1]]
        if not sides[0] or not sides[1]:  # a side the snapshot does not know: all of the other
            _all_of(both, out)
            continue
        left_names = {c for r in sides[0] if r.table for c in r.table.column_names()}
        right_names = {c for r in sides[1] if r.table for c in r.table.column_names()}
        for column in left_names & right_names:
            _named(both, column, out)
    if a.whole_locations:
        # An alias list renames a relation's columns: no name traces to them (a
        # review's finding: ``SELECT d FROM customers AS x(a, b, c, d)`` read ssn past
        # a guardrail on its classification), so all of them count as read.
        _all_of([r for r in tables if r.location in a.whole_locations], out)
    if a.copy is not None and a.copy["relation"] and a.copy["direction"] == "to":
        copy_refs = [r for r in tables if r.role == "copy"]
        if a.copy["columns"]:
            for column in a.copy["columns"]:
                _named(copy_refs, column, out)
        else:
            _all_of(copy_refs, out)
    return out
