"""The audit event contract: what a sidecar may put in an event, and how it is stored.

A sidecar appends one JSON object per event to its spool and ships batches to the
control plane (``POST /api/v1/sidecar/audit``). This module is the one written
form of those objects, on both sides of that wire: the sidecar's event builders
stamp ``"v": SCHEMA_VERSION`` and emit only the keys of ``FIELDS``; the control
plane's intake (``audit.sink.intake``) derives its key maps, its type checks and
its hash (``CHAINED_FIELDS``) from here. Standard library only: the sidecar
never imports Django (docs/audit.md, "The event contract").

Versioning: ``SCHEMA_VERSION`` is "major.minor". A minor bump adds optional keys
(an older control plane keeps them in ``extra`` and counts them as unknown); a
major bump changes or removes a key, and a control plane that does not know that
major refuses the batch, so the sidecar's shipper reports it instead of silently
filling its spool. An event without ``v`` is major 1 (sidecars deployed before
the version was stamped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = "1.2"  # 1.1: would_have_masked, provisional_columns; 1.2: mcp.call, tool
VERSION_KEY = "v"

# The value types of the contract, as JSON spells them (a boolean is none of the
# numbers, although Python's bool is an int).
TEXT = "string"
INTEGER = "integer"
NUMBER = "number"
TEXT_LIST = "list of strings"
LIST = "list"
OBJECT = "object"


@dataclass(frozen=True, slots=True)
class EventField:
    """One key of a sidecar event.

    ``column`` is the ``audit_event`` column the value becomes; ``None`` keeps it
    in the row's ``extra``. A ``claim`` is a key the control plane never trusts
    (it settles the datasource and the sidecar from the token): read, not stored.
    """

    name: str
    value_type: str
    column: str | None = None
    required: bool = False
    nullable: bool = True
    claim: bool = False
    doc: str = ""

    @property
    def classes(self) -> frozenset[type]:
        """The classes ``json.loads`` gives a value of this field (``NoneType`` if
        nullable); a list of strings must also hold only strings (``accepts``)."""
        classes = _CLASSES[self.value_type]
        return classes | {type(None)} if self.nullable else classes

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is of this field's declared type (``None`` if nullable)."""
        if value is None:
            return self.nullable
        return value_has_type(value, self.value_type)


_CLASSES: Mapping[str, frozenset[type]] = {
    TEXT: frozenset({str}),
    INTEGER: frozenset({int}),
    NUMBER: frozenset({int, float}),
    TEXT_LIST: frozenset({list}),
    LIST: frozenset({list}),
    OBJECT: frozenset({dict}),
}


def value_has_type(value: Any, kind: str) -> bool:
    """Whether a decoded JSON value is of contract type ``kind`` (never ``None``)."""
    if value.__class__ not in _CLASSES[kind]:
        return False
    return kind != TEXT_LIST or (isinstance(value, list) and _all_text(value))


def _all_text(items: list[Any]) -> bool:
    return all(item.__class__ is str for item in items)


def json_type_name(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words: for messages that must not show it."""
    if value is None:
        return "null"
    if value.__class__ is bool:
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


FIELDS: tuple[EventField, ...] = (
    EventField(VERSION_KEY, TEXT, nullable=False, doc='schema version, "major.minor"'),
    EventField("id", TEXT, "event_id", required=True, nullable=False, doc="unique, ≤ 64 chars"),
    EventField("type", TEXT, "type", required=True, nullable=False, doc="one of EVENT_TYPES"),
    EventField("ts", NUMBER, "occurred_at", required=True, nullable=False, doc="Unix seconds"),
    EventField("identity", TEXT, "identity_name", doc="login events: the name tried"),
    EventField("identity_kind", TEXT, "identity_kind"),
    EventField("owner", TEXT, "identity_owner"),
    EventField("datasource", TEXT, claim=True, doc="the sidecar's datasource name"),
    EventField("sidecar", TEXT, claim=True, doc="the sidecar's id"),
    EventField("client_addr", TEXT, "client_addr"),
    EventField("application_name", TEXT, "application_name"),
    EventField("kind", TEXT, "statement_kind", doc="statement kinds, comma-separated"),
    EventField("statement", TEXT, "statement", doc="the engine's redacted text only"),
    EventField("fingerprint", TEXT, "fingerprint"),
    EventField("action", TEXT, "action", doc="the engine's verdict: allow, block, review"),
    EventField("outcome", TEXT, "outcome", doc="allowed, blocked, held, error, unknown …"),
    EventField("tables", TEXT_LIST, "tables"),
    EventField("columns_read", TEXT_LIST, "columns"),
    EventField("classifications", TEXT_LIST, "classifications"),
    EventField("masked_columns", TEXT_LIST, "masked_columns"),
    EventField("rows", INTEGER, "rows"),
    EventField("duration_ms", NUMBER, "duration_ms"),
    EventField("risk", INTEGER, "risk"),
    # Kept in ``extra``:
    EventField("error_sqlstate", TEXT, doc="a five-character SQLSTATE"),
    EventField("reasons", LIST, doc="objects: the rule and its message"),
    EventField("revision", TEXT, doc="the bundle revision that decided"),
    EventField("statements", LIST, doc="per-statement facts when there are several"),
    EventField("tables_read", TEXT_LIST),
    EventField("tables_written", TEXT_LIST),
    EventField("functions", TEXT_LIST),
    EventField("break_glass", TEXT_LIST, doc="ids of the grants the statement used"),
    EventField(
        "would_have_masked",
        TEXT_LIST,
        doc="provisional columns read raw by a service (masked once reviewed)",
    ),
    EventField(
        "provisional_columns",
        TEXT_LIST,
        doc="masked columns masked only provisionally (not yet reviewed)",
    ),
    EventField("approval_request", TEXT, doc="the approval request a held statement opened"),
    EventField("session_state", OBJECT, doc="client_encoding, search_path …"),
    EventField("bytes", INTEGER, doc="the size of an oversized message"),
    # 1.2: an MCP tool call (``mcp.call``, sidecar/mcp/): which tool the agent called.
    EventField("tool", TEXT, doc="the MCP tool an mcp.call event records"),
)
FIELDS_BY_NAME: Mapping[str, EventField] = {f.name: f for f in FIELDS}
REQUIRED_FIELDS = frozenset(f.name for f in FIELDS if f.required)

# The types a sidecar may send; anything else is stored as ``sidecar.unknown``
# (a sidecar cannot speak for the control plane). ``mcp.call`` (1.2): one call of an
# MCP tool; the statement it ran has its own ``statement`` event beside it.
EVENT_TYPES = frozenset(
    {"statement", "session_start", "session_end", "login_failed", "login_throttled", "mcp.call"}
)

# Every ``audit_event`` column the chain hash covers, in the order COPY writes
# them (docs/audit.md, "The hash chain"). Changing it breaks every stored chain.
CHAINED_FIELDS = (
    "event_id",
    "occurred_at",
    "received_at",
    "chain",
    "seq",
    "source",
    "type",
    "actor",
    "identity_name",
    "identity_kind",
    "identity_owner",
    "datasource_id",
    "environment",
    "sidecar_id",
    "client_addr",
    "application_name",
    "statement_kind",
    "statement",
    "fingerprint",
    "tables",
    "columns",
    "classifications",
    "masked_columns",
    "action",
    "outcome",
    "rows",
    "duration_ms",
    "risk",
    "extra",
)


def parse_version(value: Any) -> tuple[int, int]:
    """(major, minor) of a ``v`` value; ``ValueError`` unless it is "major.minor"."""
    if value.__class__ is not str:
        raise ValueError('the schema version must be a "major.minor" string')
    major, dot, minor = value.partition(".")
    if not (dot and major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
        raise ValueError('the schema version must be a "major.minor" string')
    return int(major), int(minor)


SCHEMA_MAJOR, SCHEMA_MINOR = parse_version(SCHEMA_VERSION)
