"""The approval hold: a statement that needs review waits while the control plane is asked.

When the policy's verdict is ``review`` (and an approvals service is
configured), the session stops handling that client's messages and starts a
``Hold``: ``rule`` opens an approval request (or consumes a grant) through the
``ApprovalGate``, long-polls it up to the bundle's ``hold_seconds``, and
answers with a ``Ruling``: approved (the statement runs, with the request's id
in its audit event) or a refusal with its SQLSTATE, message and audit outcome.
Anything that goes wrong while asking is a refusal (fail closed). The session
then rewrites the held message accordingly (``Session._hold_approved`` /
``_hold_refusal``, which keep its books on prepared statements and portals)
and handles the messages that queued behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.proxy import messages as m
from sidecar.proxy.approvals import ApprovalGate, ApprovalState, ApprovalUnavailable
from sidecar.proxy.policy import Verdict

if TYPE_CHECKING:
    from sidecar.proxy.session import _Prepared

log = logging.getLogger("warden.sidecar.proxy")

# Documented Warden SQLSTATEs (docs in sidecar/proxy/__init__.py): 42501 for a
# block (and a denied approval), WR001 for a statement that needs approval and
# did not get it in time, 57014 for a hold the client cancelled.
SQLSTATE_BLOCKED = "42501"
SQLSTATE_HELD = "WR001"
SQLSTATE_CANCELED = "57014"

# What the control plane accepts of ``values`` (as ``sidecar.engine.values``).
MAX_VALUES = 500
MAX_VALUE_CHARS = 2000

SPOOL_FULL = "Warden: the audit spool is full; statements are refused until it drains"


class Hold:
    """A statement waiting for an approval; the session's later messages wait behind it.

    A Query (``bind`` None), or a Bind of prepared statement ``name`` into
    ``portal``: an extended-protocol statement is prepared at once and held at
    each Bind, when the values it runs with are known.
    """

    __slots__ = (
        "bind",
        "generation",
        "name",
        "portal",
        "prepared",
        "request_id",
        "task",
        "text",
        "verdict",
    )

    def __init__(
        self,
        verdict: Verdict,
        name: bytes = b"",
        bind: bytes | None = None,
        portal: bytes = b"",
        text: str | None = None,
    ) -> None:
        self.verdict = verdict
        self.name = name
        self.bind = bind
        self.portal = portal
        self.text = text  # a Query's text (a Bind's is its prepared statement's)
        # The policy generation ``verdict`` came from: an approval given after the
        # bundle changed has the statement judged again (Session._hold_judged_again).
        self.generation = -1
        self.request_id: str | None = None
        self.task: asyncio.Task[None] | None = None
        # The prepared statement a Bind runs, re-prepared upstream if its SQL changed.
        self.prepared: _Prepared | None = None

    @property
    def simple(self) -> bool:
        return self.bind is None


@dataclass(frozen=True, slots=True)
class Ruling:
    """How a hold ends: ``approved`` (the request's state) or a refusal."""

    approved: ApprovalState | None = None
    sqlstate: str = SQLSTATE_HELD
    message: str = ""
    outcome: str = "held"  # the audit event's outcome: held, denied, blocked
    # The request a refusal is about (pending, denied, expired...): its id, state and
    # URL go in the error's DETAIL, so a program can follow it (``detail``).
    request: ApprovalState | None = None

    @property
    def detail(self) -> str | None:
        """``approval_request=<id> state=<state> url=<url>``: for programs (the MCP
        server's ``execute``) and people alike; None when no request was opened."""
        if self.request is None:
            return None
        r = self.request
        return f"approval_request={r.id} state={r.state} url={r.url}"

    hint: str | None = None  # PostgreSQL's HINT: where the approval request is


def first_rule(verdict: Verdict) -> str:
    """The rule that asked for review, for the client's message."""
    reasons = (verdict.approval or {}).get("reasons") or []
    first = reasons[0] if reasons else {}
    return str(first.get("rule") or "review") if isinstance(first, Mapping) else "review"


# The approval facts' labels of the extended protocol's parameters (None: shown),
# used here and never sent.
PARAM_LABELS = "param_labels"


class Estimator(Protocol):
    """Runs the planner on a held statement before its request is opened."""

    async def estimate(
        self,
        sql: str,
        params: Sequence[tuple[int, bytes | None]],
        types: Sequence[int],
        search_path: tuple[str, ...] | None,
    ) -> dict[str, Any]:
        """``{"rows": {table: n}, "top": node, "error": ""}``; never raises."""
        ...


def approval_request(
    identity: str,
    hold: Hold,
    base_event: Mapping[str, Any],
    codec: str | None = None,
    params: Sequence[tuple[int, bytes | None]] = (),
    types: Sequence[int] = (),
) -> dict[str, Any]:
    """The body of the approval request: the verdict's facts, who and where, and the
    values it runs with (a Bind's parameters added to its text's literals)."""
    assert hold.verdict.approval is not None
    facts = dict(hold.verdict.approval)
    labels = facts.pop(PARAM_LABELS, None) or {}
    if hold.bind is not None:
        # The declared types too: the same bytes are another value under another type
        # (binary 499 as int8 is 2.5e-321 as float8).
        digest = hashlib.sha256(b"warden.params.v2\x00")
        digest.update(str(facts.get("values_digest", "")).encode())
        for position, (fmt, value) in enumerate(params):
            oid = types[position] if position < len(types) else 0
            length = -1 if value is None else len(value)
            digest.update(f"\x01{position}:{oid}:{fmt}:{length}:".encode())
            digest.update(value or b"")
        facts["values_digest"] = digest.hexdigest()
        shown = list(facts.get("values") or ())
        for number, (fmt, value) in enumerate(params, start=1):
            label = labels.get(number, labels.get(0))
            if label is not None:
                shown.append({"statement": 0, "n": number, "classification": label})
            else:
                oid = types[number - 1] if number <= len(types) else 0
                text = _param_text(fmt, value, codec, oid)
                shown.append({"statement": 0, "n": number, "value": text})
        facts["values"] = sorted(shown, key=lambda v: (v["statement"], v["n"]))[:MAX_VALUES]
    return {
        "identity": identity,
        **facts,
        "client_addr": str(base_event.get("client_addr") or ""),
        "application_name": str(base_event.get("application_name") or ""),
    }


# Binary parameters of these types (OIDs) are shown as their value, others in hex.
_BINARY_INTEGERS = {21: 2, 23: 4, 20: 8, 26: 4}  # int2, int4, int8, oid: bytes
_BINARY_FLOATS = {700: "!f", 701: "!d"}
_BINARY_TEXTS = frozenset({25, 1043, 1042, 19})  # text, varchar, bpchar, name


def _param_text(fmt: int, value: bytes | None, codec: str | None, oid: int = 0) -> str:
    """A parameter as the reviewer reads it: text as sent, a binary one decoded where
    its type is a number, a boolean or text, else in hex; NULL."""
    if value is None:
        return "NULL"
    if fmt == 0 or oid in _BINARY_TEXTS:
        text = value.decode(codec or "utf-8", "replace")
        text = "'" + text.replace("'", "''") + "'"
    elif _BINARY_INTEGERS.get(oid) == len(value):
        text = str(int.from_bytes(value, "big", signed=oid != 26))
    elif oid in _BINARY_FLOATS and struct.calcsize(_BINARY_FLOATS[oid]) == len(value):
        text = repr(struct.unpack(_BINARY_FLOATS[oid], value)[0])
    elif oid == 16 and len(value) == 1:
        text = "true" if value != b"\x00" else "false"
    else:
        text = "\\x" + value.hex() + " (binary)"
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[: MAX_VALUE_CHARS - 40]}… ({len(text)} characters in all)"
    return text


async def rule(
    gate: ApprovalGate | None,
    hold: Hold,
    *,
    identity: str,
    base_event: Mapping[str, Any],
    accepting: Callable[[], bool],
    who: str,
    tell: Callable[[str], None] = lambda _text: None,
    codec: str | None = None,
    estimator: Estimator | None = None,
    search_path: tuple[str, ...] | None = None,
    max_wait: float | None = None,
) -> Ruling:
    """Ask for ``identity`` (the session's fields in ``base_event``), wait up to the
    bundle's hold time, and say how the hold ends; raises only when cancelled.
    ``accepting``: whether the audit spool still takes events. ``tell``: says to the
    client, at once, that the statement waits and where its request is. ``estimator``
    runs the planner on the statement (under the session's ``search_path``) so the
    request shows how many rows it would touch. ``max_wait``: the client asked to wait
    at most this long (startup option ``warden.hold_wait``); it only shortens the wait."""
    try:
        assert gate is not None  # only held when there is a gate
        params = m.parse_bind_params(hold.bind) if hold.bind is not None else []
        types = m.parse_param_types(hold.prepared.tail) if hold.prepared else []
        request = approval_request(identity, hold, base_event, codec, params, types)
        if estimator is not None:
            request["estimate"] = await estimator.estimate(
                hold.verdict.upstream_sql, params, types, search_path
            )
        wait = hold.verdict.hold_seconds
        if max_wait is not None:
            wait = min(wait, max_wait)
        state = await _ask(gate, hold, request, tell, wait)
    except ApprovalUnavailable as exc:
        log.warning("approval for %s could not be requested: %s", who, exc)
        return unavailable(hold, str(exc))
    except Exception:  # never let a bug in the exchange run the statement
        log.exception("approval exchange failed for %s", who)
        return unavailable(hold, "internal error")
    if state.state == "approved":
        if not accepting():
            return Ruling(sqlstate=SQLSTATE_BLOCKED, message=SPOOL_FULL, outcome="blocked")
        return Ruling(approved=state)
    asked_by = first_rule(hold.verdict)
    if state.state == "denied":
        reviewer = state.decided_by or "a reviewer"
        reason = state.reason or "no reason given"
        message = f"Warden: request {state.url} was denied by {reviewer}: {reason}"
        hint = f"The decision and its reason: {state.url}"
        return Ruling(
            sqlstate=SQLSTATE_BLOCKED, message=message, outcome="denied", hint=hint, request=state
        )
    if state.state == "pending":
        message = (
            f"Warden: this statement needs approval (rule {asked_by}); request {state.url} "
            "is pending — run it again once it is approved"
        )
    else:  # expired, cancelled
        message = (
            f"Warden: this statement needs approval (rule {asked_by}); request {state.url} "
            f"is {state.state} — run it again to request a new approval"
        )
    hint = f"Follow the approval request at {state.url}"
    return Ruling(sqlstate=SQLSTATE_HELD, message=message, outcome="held", hint=hint, request=state)


async def _ask(
    gate: ApprovalGate,
    hold: Hold,
    request: Mapping[str, Any],
    tell: Callable[[str], None],
    wait: float,
) -> ApprovalState:
    """Open the request, wait up to ``wait`` seconds, consume the grant."""
    state = await gate.open(request)
    hold.request_id = state.id
    if state.state == "approved":  # a grant existed; this POST consumed one use
        return state
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    if state.state == "pending" and wait >= 1:
        tell(
            f"Warden is holding this statement for approval: {state.url}; "
            f"waiting up to {int(wait)} s"
        )
    while state.state == "pending":
        seconds = int(deadline - loop.time())
        if seconds < 1:
            return state
        asked = loop.time()
        state = await gate.wait(state.id, seconds)
        if state.state == "pending" and loop.time() - asked < 0.5:
            await asyncio.sleep(0.5)  # a control plane that ignores ``wait``
    if state.state != "approved":
        return state
    # Approved while waiting: the run itself consumes one use of the grant.
    consumed = await gate.open(request)
    hold.request_id = consumed.id
    return consumed


def unavailable(hold: Hold, why: str) -> Ruling:
    """Approval could not be requested: the statement does not run."""
    message = (
        f"Warden: this statement needs approval (rule {first_rule(hold.verdict)}), but "
        f"approval could not be requested ({why}); the statement did not run"
    )
    return Ruling(sqlstate=SQLSTATE_HELD, message=message, outcome="held")


def canceled(hold: Hold) -> Ruling:
    """The client cancelled the hold (a CancelRequest)."""
    where = f" of request {hold.request_id}" if hold.request_id else ""
    message = f"Warden: canceled while waiting for approval{where}; the statement did not run"
    return Ruling(sqlstate=SQLSTATE_CANCELED, message=message, outcome="held")
