"""The guardrail matcher: which of the bundle's guardrails applies to a text.

A guardrail applies when its identity conditions (environment, identity kind,
team, several statements or one) hold and all its statement conditions hold
for at least one statement of the text. The first that applies, by position,
decides (``first_applying``). A function the built-in list does not know is
allowed only by a non-blocking guardrail that names it and applies to the
statement calling it (``names_function``).
"""

from __future__ import annotations

import dataclasses

from sidecar.engine.bundle import Bundle, Conditions, Guardrail, Identity
from sidecar.engine.facts import GuardrailFacts
from sidecar.engine.policy import function_base
from sidecar.engine.vocabulary import SEVERITY


def _applies_to_identity(bundle: Bundle, c: Conditions, who: Identity, multi: bool) -> bool:
    if c.environments and bundle.environment not in c.environments:
        return False
    if c.identity_kinds and who.kind not in c.identity_kinds:
        return False
    if c.teams and c.teams.isdisjoint(who.teams):
        return False
    return c.multi_statement is None or c.multi_statement == multi


def _matches_statement(c: Conditions, f: GuardrailFacts) -> bool:
    kinds = c.statement_kinds
    if kinds and f.kind not in kinds and f.category not in kinds:
        return False
    if c.tables and c.tables.isdisjoint(f.tables):
        return False
    if c.classifications and not any(
        cls == want or cls.startswith(want + ".")
        for cls in f.classifications
        for want in c.classifications
    ):
        return False
    if c.functions and c.functions.isdisjoint(f.functions):
        return False
    if c.missing_where is not None and c.missing_where != f.missing_where:
        return False
    if c.unbounded_classified_read is not None and c.unbounded_classified_read != f.unbounded:
        return False
    return c.unparseable is None or c.unparseable == f.unparseable


def first_applying(bundle: Bundle, who: Identity, facts: list[GuardrailFacts]) -> Guardrail | None:
    """The guardrail that decides: the enabled one, lowest position first, whose
    conditions all hold for ``who`` and some statement of the text. A statement that
    runs writes of other kinds inside it (``GuardrailFacts.kinds``: a CTE's DELETE, a
    MERGE's actions) is also judged as each of those kinds, and the most severe of
    the guardrails so found decides: an allow or a review for the outer kind must
    not lift a block of the inner one, nor an allow of one lift a review of the
    other (a review's finding, for the outer kind alone; a second one, for any kind
    matching an allow)."""
    multi = len(facts) > 1
    deciding = _first(bundle, who, facts, multi)
    for f in facts:
        for kind in f.kinds:
            if kind == f.kind:
                continue
            inner = _first(bundle, who, [dataclasses.replace(f, kind=kind)], multi)
            if inner is not None and (
                deciding is None or SEVERITY[inner.action] > SEVERITY[deciding.action]
            ):
                deciding = inner
    return deciding


def _first(
    bundle: Bundle, who: Identity, facts: list[GuardrailFacts], multi: bool
) -> Guardrail | None:
    for g in bundle.guardrails:
        c = g.conditions
        if not _applies_to_identity(bundle, c, who, multi):
            continue
        for f in facts:
            if _matches_statement(c, f):
                return g
    return None


def names_function(
    bundle: Bundle, who: Identity, name: str, fact: GuardrailFacts, multi: bool
) -> bool:
    """True when a guardrail that does not block names the function (as called or
    without its schema) and applies to the statement calling it (all its
    conditions, as for deciding)."""
    base = function_base(name)
    for g in bundle.guardrails:
        c = g.conditions
        if (
            g.action != "block"
            and c.functions
            and (name in c.functions or base in c.functions)
            and _applies_to_identity(bundle, c, who, multi)
            and _matches_statement(c, fact)
        ):
            return True
    return False


def first_allows(bundle: Bundle, who: Identity, fact: GuardrailFacts, multi: bool) -> bool:
    """True when the first guardrail that applies to this statement allows it."""
    for g in bundle.guardrails:
        c = g.conditions
        if _applies_to_identity(bundle, c, who, multi) and _matches_statement(c, fact):
            return g.action == "allow"
    return False
