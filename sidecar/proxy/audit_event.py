"""The proxy's audit events: the one place that builds them.

Every event the proxy records is built here: a statement's (``statement_line``,
once per statement that ran or was refused, and its intent under strict
durability), a session's start and end (``session_event``), a failed or
throttled sign-in (``login_event``), and the facts a decision contributes
(``audit_facts``, encoded once per distinct decision by the runner's policy).
The contract they follow (keys, types, the schema version stamped as ``v``) is
``sidecar.events``; the control plane reads them with the same module.

A statement event is written as text, not as a dict passed to ``json.dumps``:
the fields shared by every statement of a session (``encode_base``) and of a
decision (``Verdict.audit_fragment``) are encoded once, and only the timing and
the outcome are formatted per statement. The text is the same JSON a dict of
these fields in this order would encode to.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from sidecar import events
from sidecar.engine import free_text
from sidecar.proxy.policy import Verdict

# The schema version every event carries (sidecar.events.SCHEMA_VERSION), as the
# first member of its JSON object.
VERSION = events.SCHEMA_VERSION
STAMP = f'"{events.VERSION_KEY}":{json.dumps(VERSION)},'


class _EventIds:
    """Time-ordered UUID strings (version 7, RFC 9562): 48 bits of Unix milliseconds,
    then 74 random bits from the OS CSPRNG, read 4 KiB at a time.

    Time order is for the control plane: the trail's two indexes on the event id
    (the idempotency key and the lookup) then grow at their right edge instead of
    taking a random page per event, which cost PostgreSQL ~20 us per event at
    ingestion (bench/README.md). One ``os.urandom`` call per event was a system
    call on every statement; slicing a pooled buffer keeps the randomness without it.
    """

    __slots__ = ("_head", "_ms", "_tails")

    def __init__(self) -> None:
        self._tails: list[str] = []
        self._ms = -1
        self._head = ""

    def __call__(self, now: float | None = None) -> str:
        return self.at_ms(int((time.time() if now is None else now) * 1000))

    def at_ms(self, now_ms: int) -> str:
        """The id of an event at ``now_ms`` (Unix milliseconds)."""
        # Once per statement: the random tails are made 256 at a time, and the
        # time head once per millisecond (a busy session sends several per ms).
        tails = self._tails
        if not tails:
            tails = self._tails = _random_tails()
        if now_ms != self._ms:
            t = f"{now_ms:012x}"
            self._head = f"{t[:8]}-{t[8:]}-7"
            self._ms = now_ms
        return self._head + tails.pop()


def _random_tails() -> list[str]:
    """The random 74 bits of 256 version-7 UUIDs, from one 4 KiB read: what follows
    the version digit, with the variant bits set (``10xx``)."""
    h = os.urandom(4096).hex()
    variant = "89ab"
    return [
        f"{h[i + 13 : i + 16]}-{variant[int(h[i + 16], 16) & 3]}{h[i + 17 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, len(h), 32)
    ]


event_id = _EventIds()


# What of a client's application_name the trail keeps: PostgreSQL's own 63 bytes,
# scrubbed (``free_text``). The name is the client's free text, set at start or by
# SET or set_config, and repeated in every event of its session: a review found an
# address and SSNs (set_config('application_name', ssn, false)) carried that way.
_APPLICATION_NAME_BYTES = 63


def application_name(value: str) -> str:
    """``value`` as the audit trail keeps it (``_APPLICATION_NAME_BYTES``)."""
    return free_text.scrub(
        value.encode("utf-8")[:_APPLICATION_NAME_BYTES].decode("utf-8", "ignore")
    )


def encode_base(base_event: Mapping[str, Any]) -> str:
    """A session's own fields (who, where, the session state) as the members of a JSON
    object, without braces: encoded once per session and per change, not per event."""
    return json.dumps(base_event, separators=(",", ":"), default=str)[1:-1]


def now_us() -> int:
    """The wall clock in Unix microseconds, for ``statement_line`` and ``event_id.at_ms``:
    integers all the way, because formatting a float with ``:.6f`` on every statement
    cost more than the rest of the timestamp's work (bench/README.md)."""
    return time.time_ns() // 1000


def statement_line(
    event: str,
    now: int,
    verdict: Verdict,
    outcome: str,
    rows: int | None,
    duration_us: int | None,
    sqlstate: str | None,
    approval_id: str | None,
    base: str,
) -> str:
    """One statement event, encoded: ``now`` is ``now_us()``, ``duration_us`` how long
    it ran in microseconds (written as milliseconds), ``base`` the session's
    ``encode_base``. Integers throughout: a float's rounding and shortest repr cost
    more than the rest of the line."""
    duration = "null" if duration_us is None else f"{duration_us // 1000}.{duration_us % 1000:03d}"
    extra = verdict.audit_fragment
    if extra is None:
        extra = verdict.audit_json()
    error = "" if sqlstate is None else f'"error_sqlstate":{json.dumps(sqlstate)},'
    approval = "" if approval_id is None else f'"approval_request":{json.dumps(approval_id)},'
    return (
        f'{{{STAMP}"id":"{event}","type":"statement",'
        f'"ts":{now // 1_000_000}.{now % 1_000_000:06d},'
        f'"action":"{verdict.action}","outcome":"{outcome}",'
        f'"rows":{"null" if rows is None else rows},'
        f'"duration_ms":{duration},'
        f"{error}{approval}{base}{',' if extra else ''}{extra}}}"
    )


def session_event(
    kind: str, base_event: Mapping[str, Any], started: float | None = None
) -> dict[str, Any]:
    """``session_start`` (the session's fields as it starts) or, with the time it
    ``started``, ``session_end`` and how long it lasted."""
    now = time.time()
    event = {events.VERSION_KEY: VERSION, **base_event}
    event.update(id=event_id(now), type=kind, ts=round(now, 6))
    if started is not None:
        event["duration_ms"] = round((time.time() - started) * 1000, 3)
    return event


# Warden's token prefixes (identity, API, sidecar): a name that starts with one is a
# secret typed in the wrong field, and an append-only trail cannot forget it.
_TOKEN_PREFIXES = ("wdn_", "wda_", "wds_")
_TOKEN_SHOWN = 10  # a credential's prefix, as the control plane shows it


def sign_in_name(name: str) -> str:
    if name.startswith(_TOKEN_PREFIXES) and len(name) > _TOKEN_SHOWN:
        return name[:_TOKEN_SHOWN] + "… (a token, not a name)"
    return name[:64]


def login_event(
    kind: str, name: str, *, datasource: str, sidecar: str, client_addr: str
) -> dict[str, Any]:
    """``login_failed`` or ``login_throttled``: the name the client gave, shortened,
    never the attempted token (nor one pasted into the user name: only its prefix,
    which the control plane shows to find it by)."""
    now = time.time()
    return {
        events.VERSION_KEY: VERSION,
        "id": event_id(now),
        "type": kind,
        "ts": round(now, 6),
        "identity": sign_in_name(name),
        "datasource": datasource,
        "sidecar": sidecar,
        "client_addr": client_addr,
    }


# Members of a statement's facts left out when they have no value, rather than
# written as null: most statements have none of them, and the nulls were a tenth
# of every event, in the spool, on the wire and in the trail (docs/audit.md). The
# control plane reads a missing optional member as null.
OMITTED_WHEN_NONE = ("statements", "break_glass", "would_have_masked", "provisional_columns")


def audit_facts(decision: Any) -> dict[str, Any]:
    """What the audit trail keeps of an engine decision: never the literals, never
    upstream_sql (which can carry the masking key), only the engine's redacted text
    and facts. The members every event of a statement deciding this way carries."""
    statements = [
        {
            "kind": st.kind,
            "category": st.category,
            # Names as the client wrote them: a relation or function the snapshot does
            # not know may be a value typed in double quotes (free_text).
            "tables_read": [free_text.scrub_name(t) for t in st.tables_read],
            "tables_written": [free_text.scrub_name(t) for t in st.tables_written],
            "columns_read": list(st.columns_read),
            "functions": [free_text.scrub_name(f) for f in st.functions],
            "classifications": list(st.classifications),
            "masked_columns": list(st.masked_columns),
            "fingerprint": st.fingerprint,
            # A value typed in double quotes is an identifier, not a literal, and the
            # engine's redaction keeps it (a review's finding: WHERE email =
            # "ann@example.org"). Scrubbed here, last, where every decision passes
            # (the engine's templates splice literals by offset into its text).
            "redacted_sql": free_text.scrub_quoted(st.redacted_sql),
        }
        for st in decision.statements
    ]
    facts = {
        "kind": ",".join(s["kind"] for s in statements) or None,
        "statement": "; ".join(s["redacted_sql"] for s in statements) or None,
        "fingerprint": statements[0]["fingerprint"] if len(statements) == 1 else None,
        "tables": sorted({t for s in statements for t in s["tables_read"] + s["tables_written"]}),
        "classifications": sorted({c for s in statements for c in s["classifications"]}),
        "masked_columns": sorted({c for s in statements for c in s["masked_columns"]}),
        # Per-statement detail only when there is more than one; a single
        # statement's facts are the top-level ones (keeps events small).
        "statements": statements if len(statements) > 1 else None,
        "tables_read": sorted({t for s in statements for t in s["tables_read"]}),
        "tables_written": sorted({t for s in statements for t in s["tables_written"]}),
        "columns_read": sorted({c for s in statements for c in s["columns_read"]}),
        "functions": sorted({f for s in statements for f in s["functions"]}),
        "reasons": [r.to_json() for r in decision.reasons],
        "risk": decision.risk,
        "revision": decision.revision,
        # The break-glass grants this statement used: audited on every use.
        "break_glass": list(decision.break_glass) or None,
        # Unreviewed findings (docs/classification.md, "Protection before review"):
        # what a service read raw that others read masked, and what was masked only
        # provisionally.
        "would_have_masked": sorted({c for st in decision.statements for c in st.would_have_masked})
        or None,
        "provisional_columns": sorted(
            {c for st in decision.statements for c in st.provisional_columns}
        )
        or None,
    }
    for name in OMITTED_WHEN_NONE:
        if facts[name] is None:
            del facts[name]
    return facts
