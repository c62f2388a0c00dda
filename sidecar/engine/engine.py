"""The Engine: bundle + identity + SQL text in, Decision out, with a bounded cache.

Order of evaluation for one request:

1. the identity must be in the bundle and not expired (else block);
2. the text is parsed by PostgreSQL's parser; extended-protocol text must hold
   exactly one statement; with ``standard_conforming_strings`` off, text
   containing a backslash is refused (we do not lex the legacy escapes);
3. each statement is analysed (``analysis``: names resolved under the
   session's confirmed search_path) and its facts for the identity computed
   once (``facts.StatementFacts``); the safety floor (``floor.*``), masking
   invariants (``mask.*``) and session-state rules (``session.*``) are hard
   blocks that no guardrail lifts (``policy``, ``rules``), and so is a
   function that is not on the list unless a guardrail that applies to the
   statement names it;
4. guardrails, enabled and ordered by position (``guardrails``): the first
   whose conditions all match some statement decides. An ``allow`` guardrail
   cannot lift a statement the engine does not understand above ``review``;
   text the parser refuses is refused as the server would refuse it (42601,
   the parser's message and position), in every environment;
5. otherwise the defaults (``rules``: ``default.*``) and the risk thresholds
   decide, the most severe wins.

This module is the orchestrator: it runs those in order, places the masking
rewrite, and caches.

A text that may change the session state is marked ``barrier``: the proxy has
the server confirm the state before it lets the next statement be decided.

Masking is applied to every allowed or held statement by rewrite; a request
no policy touches goes upstream byte for byte. Decisions are cached per
bundle: first by exact text, then by the text's tokens with each literal's
value replaced by its kind (the cached template is re-applied to the new
literals at token positions).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from pglast import parser as pg

from sidecar import collector
from sidecar.engine import guardrails, policy, rules, scanning
from sidecar.engine.analysis import (
    Analysis,
    RangeRef,
    RawStatement,
    analyse_statement,
    parse_statements,
)
from sidecar.engine.bundle import Bundle, Identity, Masking
from sidecar.engine.decision import (
    SEVERITY,
    ClientError,
    Decision,
    Reason,
    SessionContext,
    StatementAnalysis,
)
from sidecar.engine.facts import (
    UNPARSEABLE,
    Context,
    GuardrailFacts,
    StatementFacts,
    context_for,
    statement_facts,
)
from sidecar.engine.masking import (
    Token,
    masking_subquery,
    quote_ident,
    relation_span,
    scan_tokens,
)
from sidecar.engine.rules import Default

REWRITABLE = frozenset(
    {
        "SelectStmt",
        "InsertStmt",
        "UpdateStmt",
        "DeleteStmt",
        "MergeStmt",
        "ExplainStmt",
        "PrepareStmt",
        "DeclareCursorStmt",
        "CreateTableAsStmt",
        "CopyStmt",
    }
)
_TEMPLATE_KINDS = frozenset({"select", "insert", "update", "delete"})
_CONST_TOKENS = frozenset(
    {
        "ICONST",
        "FCONST",
        "SCONST",
        "BCONST",
        "XCONST",
        "USCONST",
        "TRUE_P",
        "FALSE_P",
        "NULL_P",
        "ASCII_45",
        "PARAM",
    }
)


def _max_action(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b


# Texts longer than this get no template and stay out of the caches: each would
# keep megabytes, and such a text is rarely sent twice (the proxy judges them in a
# worker thread from the same size: sidecar.proxy.session.LARGE_STATEMENT).
LARGE_TEXT = 64 * 1024
_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_PAREN_DEPTH = {"ASCII_40": 1, "ASCII_41": -1}
_LITERAL_TOKENS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})
# Where a literal or a comment could start: a quote (every string and bit-string
# form has one), a dollar quote, a comment, a number (a digit, or a point and a
# digit, not inside a name or a $n parameter). Text without any holds none.
_MAY_HOLD_LITERAL = re.compile(r"'|\$[^0-9]|--|/\*|(?<![\w$])\.?[0-9]")


def _redact(text: str, legacy_escapes: bool = False) -> tuple[str, str]:
    """(redacted text, fingerprint): literals and comments removed, safe for the audit trail.

    ``legacy_escapes``: the text has a backslash and the session reads strings with
    standard_conforming_strings off, where ``'a\\'b'`` is one literal that the scanner
    (which lexes with it on) would end early and partly keep (a review's finding:
    a blocked UPDATE's name and SSN reached the trail). Nothing of such text is kept.

    ``pglast.normalize`` replaces the literals of plannable statements with ``$n``
    but leaves those of utility statements (``PREPARE ... AS``, ``CREATE TABLE
    ... AS``) and every comment, so a second pass over the tokens replaces what
    is left. Text the scanner cannot read is not stored at all.
    """
    if legacy_escapes:
        redacted = f"<statement with backslash escapes: {len(text.encode())} bytes>"
        return redacted, hashlib.sha256(redacted.encode("utf-8")).hexdigest()
    try:
        normalized = pg.normalize(text)
    except Exception:
        normalized = ""  # the scan decides what of the text may be kept
    if normalized and _MAY_HOLD_LITERAL.search(normalized) is None:
        # Parsed, and no quote, dollar quote, comment or number is left to replace:
        # the scan would find nothing (a bulk INSERT's values all became $n).
        redacted = normalized.strip()
    else:
        redacted = _redact_scanned(normalized or text, text)
    return redacted, hashlib.sha256(redacted.encode("utf-8")).hexdigest()


def _redact_scanned(normalized: str, text: str) -> str:
    """``normalized`` with the literals and comments normalize left replaced."""
    try:
        tokens = scanning.scan(normalized)
        params = [int(normalized[t.start + 1 : t.end + 1]) for t in tokens if t.name == "PARAM"]
        number = max(params, default=0)
        parts: list[str] = []
        last = 0
        for token in tokens:
            if token.name in _LITERAL_TOKENS:
                number += 1
                parts.append(normalized[last : token.start] + f"${number}")
            elif token.name in _COMMENT_TOKENS:
                parts.append(normalized[last : token.start].rstrip(" \t"))
            else:
                continue
            last = token.end + 1
        parts.append(normalized[last:])
        return "".join(parts).strip()
    except Exception:
        return f"<unparseable statement: {len(text.encode('utf-8'))} bytes>"


def _parse_error(exc: Exception) -> str:
    """The parser's message without the text it quotes (which may be a literal)."""
    message = str(exc.args[0] if exc.args else exc).split("\n")[0]
    message = re.sub(r' at or near ".*"$', "", message)
    location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
    return message if location is None else f"{message} at character {location + 1}"


def _token_start(token: Token) -> int:
    return token.start


def _syntax_error(exc: Exception, sql: str) -> ClientError:
    """The error the server would answer: the parser's message, its position (the
    parser gives none at the end of the input, where the server points past it)."""
    message = str(exc.args[0] if exc.args else exc).split("\n")[0]
    location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
    if location is None and message.endswith("at end of input"):
        location = len(sql)
    return ClientError("42601", message, None if location is None else location + 1)


def _statement_analysis(f: StatementFacts, fingerprint: str, redacted: str) -> StatementAnalysis:
    """What the decision reports about one statement (the rewrite is added later)."""
    a = f.analysis
    writes = a.writes
    return StatementAnalysis(
        kind=a.kind,
        category=a.category,
        tables_read=tuple(sorted({r.key for r in a.ranges if r.role in ("read", "copy")})),
        tables_written=tuple(sorted({r.key for r in a.ranges if r.role in ("write", "into")})),
        columns_read=f.columns_read,
        functions=tuple(dict.fromkeys(a.functions)),
        classifications=f.classifications,
        masked_columns=f.masked_columns,
        has_effective_where=(
            None
            if not any(w.has_effective_where is not None for w in writes)
            else not any(w.has_effective_where is False for w in writes)
        ),
        row_bound=a.row_bound,
        rewritten_sql=None,
        fingerprint=fingerprint,
        redacted_sql=redacted,
        data_modifying_cte=a.data_modifying_cte,
        explain_analyze=a.explain_analyze,
        copy=a.copy,
        session=dict(a.details) or None,
        provisional_columns=f.provisional_columns,
        would_have_masked=f.would_have_masked,
    )


@dataclass(slots=True)
class _Splice:
    start: int
    end: int
    text: str
    first_token: int
    last_token: int


@dataclass(slots=True)
class _Template:
    """A decision for one single-statement text, re-applicable to other literals.

    It is found by the text's ``_literal_shape``, so a text uses it exactly when
    only its literals (and comments) differ. Splices and LIMIT are located by
    structural index: the position among the tokens that are neither literals
    nor comments. ``statements`` memoises the per-hit StatementAnalysis by LIMIT
    value: everything else in it is the same for every match.
    """

    decision: Decision
    splices: tuple[tuple[int, int, str], ...]  # (first, last structural index, text)
    limit_index: int | None  # structural index of LIMIT when the bound is a literal
    statements: dict[int | None, StatementAnalysis] = field(default_factory=dict)


@dataclass(slots=True)
class _State:
    bundle: Bundle
    exact: OrderedDict[tuple[Any, ...], Decision] = field(default_factory=OrderedDict)
    normalised: OrderedDict[tuple[Any, ...], _Template] = field(default_factory=OrderedDict)
    sqlglot_schema: Any = None
    # Per identity: what holds for each of its statements under this bundle.
    contexts: dict[str, Context] = field(default_factory=dict)


_NOT_STRUCTURE = _CONST_TOKENS | _COMMENT_TOKENS
_STATEMENT_MEMO = 64  # distinct LIMIT values remembered per template


# Tokens whose content PostgreSQL's parser, not its scanner, checks: a U&'...' string
# or U&"..." name with a bad escape scans fine and then fails to parse.
_PARSER_CHECKED = frozenset({"USCONST", "UIDENT", "UESCAPE"})


def _literal_shape(sql: str, tokens: list[Any]) -> tuple[str, ...] | None:
    """The template key of a scanned text: the text itself, but each literal's
    kind (``ICONST``, ``SCONST``...) in place of its value; None when a value
    could decide whether the text parses at all (``_PARSER_CHECKED``).

    Two texts with the same key differ only in their literals' values, and so
    parse alike and redact to the same text (comments and spacing included,
    which the audit trail's redacted text and fingerprint keep).
    """
    parts: list[str] = []
    last = 0
    for t in tokens:
        if t.name in _PARSER_CHECKED:
            return None
        if t.name in _CONST_TOKENS:
            parts.append(sql[last : t.start])
            parts.append(t.name)
            last = t.end + 1
    parts.append(sql[last:])
    return tuple(parts)


class Engine:
    """Decides statements for one bundle; thread-safe; ``replace_bundle`` swaps atomically."""

    def __init__(
        self, bundle: Bundle, cache_size: int = 4096, *, hash_available: bool = True
    ) -> None:
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # Whether the protected database has Warden's keyed hash function (the
        # runner checks at start); without it hash-masked columns are refused.
        self._hash_available = hash_available
        self._installed_extensions: frozenset[str] = frozenset()
        self._state = _State(bundle)

    @property
    def bundle(self) -> Bundle:
        return self._state.bundle

    def replace_bundle(self, bundle: Bundle) -> None:
        """Swap the bundle; the caches go with the old one, so nothing stale survives."""
        self._state = _State(bundle)

    def set_hash_available(self, available: bool) -> None:
        """Record whether the database has Warden's keyed hash; decisions depend on it."""
        if available != self._hash_available:
            self._hash_available = available
            self._state = _State(self._state.bundle)

    def set_installed_extensions(self, names: frozenset[str]) -> None:
        """Record the database's extensions: ``CREATE EXTENSION IF NOT EXISTS`` of one
        of them changes nothing (the server answers with a notice), so it is judged
        as a utility statement rather than DDL."""
        if names != self._installed_extensions:
            self._installed_extensions = names
            self._state = _State(self._state.bundle)

    def cache_info(self) -> dict[str, int]:
        state = self._state
        return {"exact": len(state.exact), "normalised": len(state.normalised)}

    # -- entry point ------------------------------------------------------------
    def decide(
        self,
        *,
        identity: str,
        sql: str,
        session: SessionContext | None = None,
        protocol: str = "simple",
        now: float | None = None,
        explain: bool = False,
    ) -> Decision:
        state = self._state  # one read: a concurrent replace_bundle cannot mix bundles
        bundle = state.bundle
        session = session or SessionContext()
        who = bundle.identities.get(identity)
        if who is None:
            return self._refusal(
                bundle,
                identity,
                sql,
                "default.unknown_identity",
                f"identity {identity!r} is not allowed on this datasource",
            )
        if who.expires_at is not None and who.expires_at <= (time.time() if now is None else now):
            return self._refusal(
                bundle,
                identity,
                sql,
                "default.identity_expired",
                f"identity {identity!r} has expired",
            )
        if protocol not in ("simple", "extended"):
            raise ValueError(f"protocol must be 'simple' or 'extended', not {protocol!r}")
        scs = session.standard_conforming_strings
        path = session.search_path
        key = (identity, protocol, scs, explain, path, sql)
        cached = state.exact.get(key)
        if cached is not None:
            with contextlib.suppress(KeyError):  # evicted meanwhile by another thread
                state.exact.move_to_end(key)
            return cached
        norm_key: tuple[Any, ...] | None = None
        large = len(sql) > LARGE_TEXT
        if scs and not explain and not large:
            # One raw scan gives both the template key and the token offsets an
            # instantiation needs; a text the scanner rejects is judged in full.
            try:
                tokens = scanning.scan(sql)
            except Exception:
                tokens = None
            shape = None if tokens is None else _literal_shape(sql, tokens)
            if tokens is not None and shape is not None:
                norm_key = (identity, protocol, path, shape)
                template = state.normalised.get(norm_key)
                if template is not None:
                    decision = self._instantiate(template, sql, tokens)
                    if decision is not None:
                        self._remember(state.exact, key, decision)
                        return decision
        try:
            with collector.paused() if large else contextlib.nullcontext():
                decision, new_template = self._judge(
                    state, who, sql, session, protocol, explain, now
                )
        except Exception:  # never fail open, never crash the proxy
            return self._refusal(
                bundle, identity, sql, "default.engine_error", "Warden could not judge this text"
            )
        if decision.break_glass or large:
            # A grant expires on its own clock: decided afresh each time. A large text
            # is rarely sent twice, and would hold megabytes in the caches.
            return decision
        self._remember(state.exact, key, decision)
        if new_template is not None and norm_key is not None:
            self._remember(state.normalised, norm_key, new_template)
        return decision

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        with self._lock:
            cache[key] = value
            while len(cache) > self._cache_size:
                cache.popitem(last=False)

    def _refusal(self, bundle: Bundle, identity: str, sql: str, rule: str, msg: str) -> Decision:
        redacted, fingerprint = _redact(sql)
        statement = StatementAnalysis(
            "unknown", "unknown", (), (), (), (), (), (), None, None, None, fingerprint, redacted
        )
        return Decision(
            action="block",
            reasons=(Reason(rule, msg),),
            risk=100,
            statements=(statement,),
            upstream_sql=sql,
            message=f"Warden blocked this statement: {msg} (rule {rule})",
            critical=True,
            identity=identity,
            revision=bundle.revision,
        )

    # -- the cached template path ---------------------------------------------------
    def _instantiate(self, template: _Template, sql: str, tokens: list[Any]) -> Decision | None:
        # The hot path of a proxy under load (same statement, new literals), so it
        # works on pglast's raw scan and str offsets: no per-token objects of our
        # own, no re-encoding, and the StatementAnalysis is memoised per LIMIT.
        # ``tokens`` matched the template's key, so the structure is the template's.
        kept = (
            [t for t in tokens if t.name not in _NOT_STRUCTURE]
            if template.splices or template.limit_index is not None
            else []
        )
        d = template.decision
        row_bound = d.statements[0].row_bound
        if template.limit_index is not None:
            limit = kept[template.limit_index]
            bound = None
            for t in tokens[tokens.index(limit) + 1 :]:
                if t.name not in _COMMENT_TOKENS:
                    bound = t
                    break
            if bound is None or bound.name != "ICONST":
                return None
            try:
                row_bound = int(sql[bound.start : bound.end + 1])
            except ValueError:  # e.g. 0x1F or 1_000: let a full decision read it
                return None
        upstream = sql
        rewritten = None
        if template.splices:
            parts: list[str] = []
            last = 0
            for first, end, text in template.splices:
                parts.append(sql[last : kept[first].start])
                parts.append(text)
                last = kept[end].end + 1
            parts.append(sql[last:])
            upstream = rewritten = "".join(parts)
        statement = template.statements.get(row_bound)
        if statement is None or statement.rewritten_sql != rewritten:
            statement = replace(d.statements[0], row_bound=row_bound, rewritten_sql=rewritten)
            if rewritten is None and len(template.statements) < _STATEMENT_MEMO:
                template.statements[row_bound] = statement
        return Decision(
            action=d.action,
            reasons=d.reasons,
            risk=d.risk,
            statements=(statement,),
            upstream_sql=upstream,
            message=d.message,
            critical=d.critical,
            identity=d.identity,
            revision=d.revision,
            barrier=d.barrier,
            redact_errors=d.redact_errors,
            break_glass=d.break_glass,
            hint=d.hint,
            cached=True,
        )

    # -- full analysis --------------------------------------------------------------
    def _judge(
        self,
        state: _State,
        who: Identity,
        sql: str,
        session: SessionContext,
        protocol: str,
        explain: bool,
        now: float | None = None,
    ) -> tuple[Decision, _Template | None]:
        bundle = state.bundle
        hard: list[Reason] = []
        defaults: list[Default] = []
        floor = "allow"  # the least an allow-guardrail can leave (unknown -> review)

        reason = rules.backslash_escapes(sql, session)
        legacy = reason is not None  # its literals cannot be told apart: nothing kept
        if reason is not None:
            hard.append(reason)
        error: ClientError | None = None
        try:
            raws = parse_statements(sql)
            parse_error: str | None = None
        except Exception as exc:
            raws = []
            parse_error = _parse_error(exc)
            error = _syntax_error(exc, sql)
        ctx = state.contexts.get(who.name)
        if ctx is None or ctx.who is not who:
            ctx = state.contexts[who.name] = context_for(bundle, who, self._hash_available)
        multi = len(raws) > 1

        analyses: list[Analysis] = []
        statements: list[StatementAnalysis] = []
        risks: list[int] = []
        splices: list[_Splice] = []
        tokens: list[Token] | None = None
        raw_bytes = sql.encode("utf-8")
        facts: list[GuardrailFacts] = []
        barriers: list[bool] = []
        hash_missing = False
        redact_errors = False

        if parse_error is not None:
            redacted, fingerprint = _redact(sql, legacy)
            statements.append(
                StatementAnalysis(
                    "unparseable",
                    "unparseable",
                    (),
                    (),
                    (),
                    (),
                    (),
                    (),
                    None,
                    None,
                    None,
                    fingerprint,
                    redacted,
                )
            )
            hard.append(rules.unparseable(parse_error))
            risks.append(min(100, bundle.criticality * 6 + 50 + policy.IDENTITY_RISK[who.kind]))
            facts.append(UNPARSEABLE)
        reason = rules.extended_multi_statement(protocol, len(raws))
        if reason is not None:
            hard.append(reason)
            error = rules.EXTENDED_MULTI_STATEMENT_ERROR

        for raw in raws:
            try:
                a = analyse_statement(bundle, raw, session.search_path)
            except Exception:  # a tree shape we did not foresee: fail closed
                a = Analysis(raw.node_type, "unknown", "unknown", raw.node_type)
                hard.append(rules.ANALYSIS_FAILED)
            if (
                a.details.get("if_not_exists")
                and a.details.get("extension") in self._installed_extensions
            ):
                # Installed when last looked (the sidecar looks every minute): a no-op.
                a.category = "utility"
            analyses.append(a)
            if raw.node_type not in REWRITABLE:
                for ref in a.ranges:
                    if ref.role == "read":
                        ref.role = "ddl"
            f = statement_facts(ctx, raw, a)
            redact_errors = redact_errors or bool(f.masked)
            hash_missing = hash_missing or f.needs_hash

            # -- defaults, then the hard rules ---------------------------------------
            for default_rule in rules.STATEMENT_DEFAULTS:
                outcome = default_rule(f, ctx)
                if outcome is not None:
                    defaults.append(outcome)
            if rules.review_floor(f):
                floor = "review"
            found = policy.statement_rules(a, bundle)
            hard.extend(found.hard)
            for rule_id, msg in policy.masking_violations(a, f.masked, ctx.masks_anything):
                hard.append(Reason(rule_id, msg))

            # -- masking rewrite ----------------------------------------------------
            masking = f.reads_masked and raw.node_type in REWRITABLE
            ambiguous = [
                r
                for r in a.ranges
                if r.schema is None
                and r.table is not None
                and r.role in ("read", "write", "copy", "ddl")
                and len(bundle.tables_by_name.get(r.relname, ())) > 1
            ]
            if masking or ambiguous:
                if tokens is None:
                    tokens = scan_tokens(sql)
                try:
                    placed = self._splices(a, tokens, f.masked) if masking else []
                    splices.extend(placed)
                    splices.extend(self._pins(ambiguous, tokens, placed, raw_bytes))
                except Exception:
                    hard.append(rules.REWRITE_NOT_PLACED)

            redacted, fingerprint = _redact(
                raw_bytes[raw.start : raw.end].decode("utf-8", "replace"), legacy
            )
            statements.append(_statement_analysis(f, fingerprint, redacted))
            risks.append(
                policy.statement_risk(
                    a,
                    bundle,
                    who,
                    f.unmasked_levels,
                    f.masked_levels,
                    f.missing_where,
                    f.unbounded,
                    found.dangerous,
                )
            )
            facts.append(f)
            barrier = found.barrier
            for name in found.unlisted:
                reason = rules.unlisted_function(f, ctx, name, multi)
                if reason is None:
                    barrier = True  # allowed by a guardrail that names it
                else:
                    hard.append(reason)
            for barrier_rule in rules.BARRIER_RULES:
                reason = barrier_rule(f, barrier)
                if reason is not None:
                    hard.append(reason)
            barriers.append(barrier and f.runs)

        hard, used_grants = self._break_glass(bundle, who, hard, now)
        reason = rules.barrier_not_last(barriers)
        if reason is not None:
            hard.append(reason)
        barrier = any(barriers)
        reason = rules.hash_unavailable(hash_missing)
        if reason is not None:
            hard.append(reason)

        # -- rewrite the text -------------------------------------------------------------
        upstream = sql
        if splices and not hard:
            try:
                upstream, statements, spans = self._apply(sql, raws, statements, splices)
                verified = self._verify(
                    bundle, who, upstream, len(raws), spans, session.search_path
                )
            except Exception:
                verified = False
            if not verified:
                hard.append(rules.REWRITE_NOT_VERIFIED)
                upstream = sql
                statements = [replace(s, rewritten_sql=None) for s in statements]

        if explain and raws and parse_error is None:
            statements = self._with_lineage(state, sql, raws, statements)

        # -- decide -------------------------------------------------------------------------
        risk = max(risks) if risks else 0
        reasons: list[Reason] = list(hard)
        action = "block" if hard else "allow"
        guardrail = guardrails.first_applying(bundle, who, facts)
        hint = ""
        if guardrail is not None:
            if SEVERITY[guardrail.action] < SEVERITY[floor]:
                # The allow rule did not decide: what it could not lift did, and the
                # decision names that (a hold never names an allow rule).
                action = _max_action(action, floor)
                unknown = rules.UNKNOWN_STATEMENT
                reasons.extend(d.reason for d in defaults if d.reason.rule == unknown)
            else:
                action = _max_action(action, guardrail.action)
                reasons.append(Reason(guardrail.name, guardrail.message))
        else:
            for default in defaults:
                action = _max_action(action, default.action)
                reasons.append(default.reason)
            default_risk = rules.risk_threshold(bundle, risk)
            if default_risk is not None:
                action = _max_action(action, default_risk.action)
                reasons.append(default_risk.reason)
        message = ""
        if action != "allow":
            first = next((r for r in reasons), Reason("default", "policy"))
            verb = (
                "blocked this statement"
                if action == "block"
                else "is holding this statement for review"
            )
            message = f"Warden {verb}: {first.message} (rule {first.rule})"
            if guardrail is not None and first.rule == guardrail.name and guardrail.message:
                hint = guardrail.message  # the rule's own words: what to do instead
        if action == "block":
            upstream = sql
        decision = Decision(
            action=action,
            reasons=tuple(reasons),
            risk=risk,
            statements=tuple(statements),
            upstream_sql=upstream,
            message=message,
            critical=risk >= bundle.critical_at,
            identity=who.name,
            revision=bundle.revision,
            barrier=barrier,
            redact_errors=redact_errors,
            break_glass=used_grants,
            error=error,
            hint=hint,
        )
        template = (
            self._template(sql, analyses, splices, decision, hard)
            if not explain and len(sql) <= LARGE_TEXT
            else None
        )
        return decision, template

    # -- helpers -------------------------------------------------------------------------------
    def _break_glass(
        self, bundle: Bundle, who: Identity, hard: list[Reason], now: float | None
    ) -> tuple[list[Reason], tuple[str, ...]]:
        """Lift the safety-floor reasons an active break-glass grant for ``who`` names.
        The grants used go into the decision, and so into the audit event."""
        if not bundle.break_glass or not any(r.rule.startswith("floor.") for r in hard):
            return hard, ()
        moment = time.time() if now is None else now
        grants = [g for g in bundle.break_glass if g.identity == who.name and g.expires_at > moment]
        kept: list[Reason] = []
        used: dict[str, None] = {}
        for reason in hard:
            grant = next((g for g in grants if reason.rule in g.rules), None)
            if grant is None:
                kept.append(reason)
            else:
                used[grant.id] = None
        return kept, tuple(used)

    def _splices(
        self, a: Analysis, tokens: list[Token], masked_tables: dict[str, dict[str, Masking]]
    ) -> list[_Splice]:
        out: list[_Splice] = []
        for ref in a.ranges:
            if ref.table is None or ref.role not in ("read", "copy"):
                continue
            masked = masked_tables.get(ref.table.key)
            if not masked:
                continue
            start, end, first, last = relation_span(tokens, ref.location, ref.inh)
            sub = masking_subquery(
                ref.table, masked, only=not ref.inh, hashing=self._hash_available
            )
            if ref.role == "copy":
                # COPY t [(cols)] TO ... -> COPY (SELECT cols FROM (masked) AS t) TO ...
                columns = a.copy["columns"] if a.copy else []
                if last + 1 < len(tokens) and tokens[last + 1].name == "ASCII_40":
                    depth = 0
                    for i in range(last + 1, len(tokens)):
                        depth += _PAREN_DEPTH.get(tokens[i].name, 0)
                        if depth == 0:
                            last = i
                            break
                    end = tokens[last].end
                cols = ", ".join(quote_ident(c) for c in columns) if columns else "*"
                text = f"(SELECT {cols} FROM {sub} AS {quote_ident(ref.relname)})"
            elif first > 0 and tokens[first - 1].name == "TABLE":
                first -= 1
                start = tokens[first].start
                text = f"SELECT * FROM {sub} AS {quote_ident(ref.relname)}"
            else:
                text = sub if ref.alias else f"{sub} AS {quote_ident(ref.relname)}"
            out.append(_Splice(start, end, text, first, last))
        return out

    def _pins(
        self, refs: list[RangeRef], tokens: list[Token], placed: list[_Splice], raw: bytes
    ) -> list[_Splice]:
        """Qualify unqualified names that exist in several schemas of the snapshot with
        the schema the engine resolved them to, so the server reads the table that was
        decided even if its search_path changes before the statement runs (a trigger,
        or a portal, PREPARE or COPY that looks names up when it executes)."""
        out: list[_Splice] = []
        for ref in refs:
            if ref.location < 0:
                raise ValueError("an ambiguous name without a location")
            if any(p.start <= ref.location < p.end for p in placed):
                continue  # inside a masking subquery's span, which names the schema
            assert ref.table is not None
            index = bisect.bisect_left(tokens, ref.location, key=_token_start)
            if index == len(tokens) or tokens[index].start != ref.location:
                raise ValueError(f"no token starts at byte {ref.location}")
            last = (
                index + 2
                if index + 2 < len(tokens) and tokens[index + 1].name == "UESCAPE"
                else index
            )
            start, end = tokens[index].start, tokens[last].end
            text = quote_ident(ref.table.schema) + "." + raw[start:end].decode("utf-8")
            out.append(_Splice(start, end, text, index, last))
        return out

    def _apply(
        self,
        sql: str,
        raws: list[RawStatement],
        statements: list[StatementAnalysis],
        splices: list[_Splice],
    ) -> tuple[str, list[StatementAnalysis], list[tuple[int, int]]]:
        raw = sql.encode("utf-8")
        ordered = sorted(splices, key=lambda s: s.start)
        parts: list[bytes] = []
        spans: list[tuple[int, int]] = []
        last = 0
        size = 0
        for s in ordered:
            if s.start < last:
                raise ValueError("overlapping splices")
            parts.append(raw[last : s.start])
            size += s.start - last
            text = s.text.encode("utf-8")
            spans.append((size, size + len(text)))
            parts.append(text)
            size += len(text)
            last = s.end
        parts.append(raw[last:])
        upstream = b"".join(parts).decode("utf-8")
        out = []
        for raw_stmt, statement in zip(raws, statements[-len(raws) :], strict=True):
            inside = [s for s in ordered if raw_stmt.start <= s.start < raw_stmt.end]
            if not inside:
                out.append(statement)
                continue
            pieces: list[bytes] = []
            last = raw_stmt.start
            for s in inside:
                pieces.append(raw[last : s.start])
                pieces.append(s.text.encode("utf-8"))
                last = s.end
            pieces.append(raw[last : raw_stmt.end])
            rewritten_text = b"".join(pieces).decode("utf-8")
            out.append(replace(statement, rewritten_sql=rewritten_text))
        return upstream, out, spans

    def _verify(
        self,
        bundle: Bundle,
        who: Identity,
        upstream: str,
        count: int,
        spans: list[tuple[int, int]],
        search_path: tuple[str, ...] | None,
    ) -> bool:
        """Fail closed: the rewritten text must parse into as many statements, and every
        read of a masked table in it must lie inside one of the masking subqueries."""
        try:
            raws = parse_statements(upstream)
        except Exception:
            return False
        if len(raws) != count:
            return False
        for raw in raws:
            a = analyse_statement(bundle, raw, search_path)
            for ref in a.ranges:
                if (
                    ref.role in ("read", "copy")
                    and ref.table is not None
                    and bundle.masked_columns_for(who, ref.table)
                    and not any(start <= ref.location < end for start, end in spans)
                ):
                    return False
        return True

    def _with_lineage(
        self,
        state: _State,
        sql: str,
        raws: list[RawStatement],
        statements: list[StatementAnalysis],
    ) -> list[StatementAnalysis]:
        from sidecar.engine.lineage import column_lineage, schema_for

        if state.sqlglot_schema is None:
            state.sqlglot_schema = schema_for(state.bundle)
        raw = sql.encode("utf-8")
        out = []
        for raw_stmt, statement in zip(raws, statements, strict=True):
            lineage = None
            if raw_stmt.node_type == "SelectStmt":
                text = raw[raw_stmt.start : raw_stmt.end].decode("utf-8")
                result = column_lineage(text, state.bundle, state.sqlglot_schema)
                lineage = tuple(result) if result is not None else None
            out.append(replace(statement, lineage=lineage))
        return out

    def _template(
        self,
        sql: str,
        analyses: list[Analysis],
        splices: list[_Splice],
        decision: Decision,
        hard: list[Reason],
    ) -> _Template | None:
        """A literal-independent form of ``decision``, or None when literals matter."""
        if len(analyses) != 1:
            return None
        a = analyses[0]
        if a.kind not in _TEMPLATE_KINDS or a.set_config_params or a.literal_sensitive:
            return None
        try:
            tokens = scan_tokens(sql)
            raw_tokens = scanning.scan(sql)
        except Exception:
            return None
        # Splices and LIMIT were located on scan_tokens (comments dropped, byte
        # offsets); the template is keyed on structural indices, which are the
        # same in both scans because both drop comments and literals alike.
        index = [i for i, t in enumerate(tokens) if t.name not in _CONST_TOKENS]
        structural = sum(1 for t in raw_tokens if t.name not in _NOT_STRUCTURE)
        if structural != len(index):
            return None
        position = {token_index: i for i, token_index in enumerate(index)}
        mapped = []
        applied = splices if decision.statements[0].rewritten_sql is not None else []
        for s in sorted(applied, key=lambda s: s.start):
            if s.first_token not in position or s.last_token not in position:
                return None
            mapped.append((position[s.first_token], position[s.last_token], s.text))
        limit_index = None
        limits = [i for i, t in enumerate(tokens) if t.name == "LIMIT"]
        if a.row_bound is None and limits:
            # A LIMIT whose bound the analysis did not read (ALL, NULL, a
            # bigint-sized FCONST...): another literal there may be a real bound.
            return None
        if a.row_bound is not None:
            if len(limits) != 1 or limits[0] not in position:
                return None
            limit_index = position[limits[0]]
        return _Template(decision, tuple(mapped), limit_index)
