"""The seam between the wire protocol and the policy: one call per statement.

The proxy knows nothing about rules. It asks a ``Policy`` for a ``Verdict`` on
each statement text and for the ``Identity`` a client names at login; the
runner adapts the engine to this interface. Identities are read from the inner
bundle's documented ``identities`` list, so authentication does not depend on
the engine's internal types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from sidecar.engine.vocabulary import ACTIONS
from sidecar.proxy.scram import ScramError, Verifier

ALLOW, REVIEW, BLOCK = ACTIONS  # the engine's actions, least severe first


NO_FACTS: Mapping[str, Any] = MappingProxyType({})


def frozen(value: Any) -> Any:
    """``value`` made read-only all the way down: dicts become read-only mappings
    (``MappingProxyType``), lists tuples. For what a shared ``Verdict`` holds; built
    once per decision the policy caches, never per statement."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    return value


# Statements that act on prepared statements or cursors by name. The proxy keeps
# its books on them when it decides them, so they must run then: they are never
# a prepared statement's fast path nor bound to a named portal to run later.
BY_NAME_KINDS = frozenset(
    {"prepare", "deallocate", "discard", "execute", "declare_cursor", "fetch", "close_cursor"}
)


class Verdict(NamedTuple):
    """What the proxy needs from a decision.

    ``audit`` holds the statement facts for the trail (kind, redacted text,
    fingerprint, tables, classifications, masked columns), computed once per
    decision so the per-statement event only adds timing and outcome.

    For ``review``: ``approval`` is what an approval request carries (redacted
    statement, fingerprint, kind, risk, reasons, tables, classifications; never
    literals), ``hold_seconds`` how long the bundle lets the sidecar wait for a
    decision, and ``upstream_sql`` what runs once approved. ``approval_id`` is
    set on the copy the session keeps after an approval, for the audit trail.

    ``kinds`` are the statement kinds (``select``, ``prepare``, ``execute``...),
    for the few session-level rules that depend on them; ``multi`` says the text
    holds more than one statement. ``barrier``: running it may change the session
    state statements are read under, so the proxy has the server confirm the
    state before it lets the next statement be decided. ``executes`` and
    ``cursors`` name the prepared statements and cursors it acts on.

    Immutable (a tuple, the cheapest immutable object to build, once per statement
    text): one verdict is shared by every session that sends the same text, so what
    it holds is immutable too: frozensets, tuples, and read-only mappings for
    ``audit`` and ``approval`` (``frozen``). A session that needs another verdict
    makes one (``_replace``). ``audit_fragment`` is ``audit`` already encoded, when
    the policy has it.
    """

    action: str
    message: str
    upstream_sql: str
    audit: Mapping[str, Any] = NO_FACTS
    audit_fragment: str | None = None
    approval: Mapping[str, Any] | None = None
    hold_seconds: float = 0.0
    approval_id: str | None = None
    kinds: frozenset[str] = frozenset()
    multi: bool = False
    barrier: bool = False
    executes: frozenset[str] = frozenset()  # names run by SQL EXECUTE
    # DECLARE/FETCH/MOVE/CLOSE: (operation, cursor name or None for CLOSE ALL, WITH HOLD)
    cursors: tuple[tuple[str, str | None, bool], ...] = ()
    redact_errors: bool = False  # the server's error details may carry masked values
    # An allowed statement with none of the above: a prepared statement the proxy may
    # bind and run on its fast path, into any portal.
    plain: bool = False
    # (sqlstate, message, position): a refusal the server would have answered the
    # same way (a syntax error), sent as the server's error rather than Warden's.
    error: tuple[str, str, int | None] | None = None
    # (schema.table.column, classification) of the columns it reads masked only
    # provisionally: the session tells the client once per column (a NOTICE).
    provisional: tuple[tuple[str, str], ...] = ()
    # PostgreSQL's HINT for a refusal: the deciding rule's own words (None: the
    # session's general one).
    hint: str | None = None

    def audit_json(self) -> str:
        """The audit facts as the members of a JSON object (no braces)."""
        if self.audit_fragment is not None:
            return self.audit_fragment
        return json.dumps(dict(self.audit), separators=(",", ":"), default=str)[1:-1]


@dataclass(frozen=True, slots=True)
class Credential:
    id: str
    verifier: Verifier
    expires_at: datetime | None
    # The token's first characters (bundle format 1.2; agents' and services'
    # tokens): how the MCP server finds whose bearer token it was given.
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    kind: str
    teams: tuple[str, ...]
    owner: str | None
    expires_at: datetime | None
    credentials: tuple[Credential, ...]

    def usable_credentials(self, now: datetime) -> list[Credential]:
        if self.expires_at is not None and self.expires_at <= now:
            return []
        return [c for c in self.credentials if c.expires_at is None or c.expires_at > now]


class Policy(Protocol):
    """What the proxy calls. Implementations must not raise for a bad statement:
    they return a ``block`` verdict. Anything they do raise is treated as block.

    ``generation`` changes whenever the rules change (a new bundle): a verdict
    kept past that point, such as a prepared statement's, must be decided again.
    """

    @property
    def generation(self) -> int: ...

    def decide(
        self,
        *,
        identity: str,
        sql: str,
        standard_conforming_strings: bool,
        search_path: tuple[str, ...] | None,
        in_transaction: bool,
        protocol: str,
    ) -> Verdict: ...

    def identity(self, name: str) -> Identity | None: ...


def _parse_time(value: object) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO time, got {value!r}")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def identities_from_bundle(inner: Mapping[str, Any]) -> dict[str, Identity]:
    """Index the bundle's identities by name. A credential whose verifier does not
    parse is skipped (it can never authenticate), which fails closed."""
    out: dict[str, Identity] = {}
    for raw in inner.get("identities") or []:
        creds: list[Credential] = []
        for c in raw.get("credentials") or []:
            try:
                verifier = Verifier.parse(str(c.get("scram_sha_256", "")))
            except ScramError:
                continue
            creds.append(
                Credential(
                    id=str(c.get("id", "")),
                    verifier=verifier,
                    expires_at=_parse_time(c.get("expires_at")),
                    prefix=str(c.get("prefix") or ""),
                )
            )
        out[str(raw["name"])] = Identity(
            name=str(raw["name"]),
            kind=str(raw.get("kind", "")),
            teams=tuple(raw.get("teams") or ()),
            owner=raw.get("owner"),
            expires_at=_parse_time(raw.get("expires_at")),
            credentials=tuple(creds),
        )
    return out
