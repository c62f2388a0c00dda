"""One client session after login: every statement is decided before upstream sees it.

The two directions are plain ``asyncio.Protocol`` callbacks with no per-message
coroutine, because the sidecar sits on the latency path of every query. Client
messages are split and the statement-bearing ones (Query, Parse, FunctionCall)
go through the policy; everything else is forwarded as the bytes it arrived
as. Upstream messages are forwarded in byte ranges; only the few that carry
state (ReadyForQuery, ParameterStatus, CommandComplete, ErrorResponse) are
looked at, and DataRows are never re-framed.

Refusals. A refused statement is replaced upstream by a statement that fails
at parse analysis (``SELECT "<marker>"``), and the upstream's error for it is
swapped for the sidecar's own ErrorResponse on the way back. The database
therefore does exactly what PostgreSQL does on an error: a transaction block
becomes failed (``E``), an implicit extended-protocol transaction is rolled
back, messages are discarded until Sync, and exactly one ReadyForQuery follows.
Nothing of the refused text reaches the database.

Beside it: ``sidecar.proxy.hold`` asks the control plane about a statement held
for review (the session rewrites the held message by the answer), and
``sidecar.proxy.audit_event`` builds every audit event the session records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from sidecar import collector, encodings
from sidecar.proxy import hold as holds
from sidecar.proxy import messages as m
from sidecar.proxy import state as st
from sidecar.proxy.approvals import ApprovalGate, ApprovalState
from sidecar.proxy.audit_event import (
    STAMP,
    application_name,
    encode_base,
    event_id,
    now_us,
    statement_line,
)
from sidecar.proxy.hold import (
    SPOOL_FULL,
    SQLSTATE_BLOCKED,
    SQLSTATE_HELD,
    Estimator,
    Hold,
    Ruling,
)
from sidecar.proxy.policy import (
    ALLOW,
    BLOCK,
    BY_NAME_KINDS,
    REVIEW,
    Identity,
    Policy,
    Verdict,
    frozen,
)

if TYPE_CHECKING:
    from sidecar.metrics import Metrics

log = logging.getLogger("warden.sidecar.proxy")

_HINT = "Ask the data owner or your security team if you need this access."

# Client bytes queued behind a held statement before the sidecar stops reading
# from that client (it keeps reading below this, so a disconnect ends the wait).
HOLD_BUFFER_LIMIT = 256 * 1024
# Pause bits for the client transport's reading.
_PAUSED_BY_UPSTREAM = 1
_PAUSED_BY_HOLD = 2

_Q, _P, _B, _E, _S, _C, _X, _F = (ord(c) for c in "QPBESCXF")
# Statement messages above this many bytes are judged in a worker thread while the
# session waits, so one large statement does not hold up the event loop every
# session shares (the engine's cost grows with the text: ~1 s per MB of multi-row
# INSERT). What still holds the interpreter lock in one piece is the engine's
# decoding of the parser's JSON tree (json.loads, ~60-80 ms per MB).
LARGE_STATEMENT = 64 * 1024
# Forwarded as they are: COPY data, done and fail; Describe; Flush.
_FORWARDED = frozenset(b"dcfDH")
_UP_ROWS = frozenset(b"Dd")
# (G CopyInResponse: the server copies in; see _COPY_IN.)
_UP_STATEFUL = frozenset(b"ZSCEsI3G")
# Also ParseComplete, only between a re-prepare's CloseComplete and its ParseComplete.
_UP_STATEFUL_REPREPARE = _UP_STATEFUL | frozenset(b"1")
# While the sidecar's own state probe is answered: every message is looked at.
_UP_ALL = frozenset(range(256))
_NO_ROWS: frozenset[int] = frozenset()
_unpack_i32 = struct.Struct("!i").unpack_from  # bound once: called for every message

# Statements that can run a statement prepared with SQL PREPARE (EXECUTE p,
# EXPLAIN ANALYZE EXECUTE p, CREATE TABLE t AS EXECUTE p).
_RUNS_SQL_PREPARED = frozenset({"execute", "explain_analyze", "create_table_as"})
_DEALLOCATED_ALL = (b"DEALLOCATE ALL\x00", b"DISCARD ALL\x00")
# SQL statements that create or drop prepared statements under a name the
# protocol may also use: after one, the protocol statements are prepared again
# before their next Bind, so the server holds exactly what the sidecar decided.
_TOUCHES_PREPARED = frozenset({"prepare", "deallocate", "discard"})


class AuditSink(Protocol):
    """The audit spool as the session uses it (``sidecar.shipper.AuditSpool``).

    With ``strict`` true each statement's intent is journaled before it may run:
    ``journal`` returns (ticket, journal seq), ``durable`` is the highest ticket on
    disk, ``when_durable`` calls back once a ticket is, and ``resolved`` says the
    statement's outcome was appended."""

    strict: bool
    durable: int
    write_error: str | None

    def append(self, event: dict[str, Any]) -> None: ...

    def append_line(self, line: str, kind: object = None) -> None: ...

    @property
    def accepting(self) -> bool: ...

    def journal(self, line: str) -> tuple[int, int]: ...

    def resolved(self, seq: int) -> None: ...

    def when_durable(self, ticket: int, callback: Callable[[], None]) -> None: ...


_UNSEEN_PORTAL = Verdict(
    action=ALLOW,
    message="",
    upstream_sql="",
    # A portal the sidecar did not see prepared, e.g. a cursor opened by a
    # DECLARE statement (which was itself decided when it ran).
    audit=frozen({"kind": "execute_portal"}),
)


class _PythonExec:
    """An Execute (or simple Query) whose outcome the audit trail is waiting for.

    ``_Exec`` below: this class without the native relay, its native twin
    (``_relay.Exec``, the same attributes and defaults) with it."""

    __slots__ = ("base", "error", "event", "is_query", "journal", "rows", "started", "verdict")

    def __init__(self, verdict: Verdict | None, is_query: bool, base: str = "") -> None:
        self.verdict = verdict
        self.is_query = is_query
        # With strict durability: the event id its intent was journaled under, and
        # the journal file holding it.
        self.event: str | None = None
        self.journal = 0
        # The session's event fields as the statement was decided, for one that may
        # change the state (it completes after the server reported the new one); else
        # "": the session's current fields are the same.
        self.base = base
        self.rows: int | None = None
        self.error: str | None = None
        self.started = time.perf_counter_ns()


def _unknown_statement(name: bytes) -> Verdict:
    shown = name.decode("utf-8", "replace") or "(unnamed)"
    return Verdict(
        action=BLOCK,
        message=f"Warden: prepared statement {shown!r} was not prepared through this "
        "connection's Parse messages, so Warden holds no decision for it (run a statement "
        "prepared with SQL PREPARE with EXECUTE)",
        upstream_sql="",
        audit=frozen({"kind": "unknown_prepared_statement"}),
    )


def _state_sensitive(data: bytes, start: int, end: int) -> bool:
    """Text that means something else if the state changed: a backslash (read
    differently with standard_conforming_strings off) or a non-ASCII byte (read
    differently in another client encoding). Server-side code such as a trigger
    can change either while earlier statements are still running."""
    return data.find(b"\\", start, end) >= 0 or not data[start:end].isascii()


def _acts_by_name(verdict: Verdict) -> bool:
    return bool(
        verdict.barrier
        or verdict.executes
        or verdict.cursors
        or not verdict.kinds.isdisjoint(BY_NAME_KINDS)
    )


def _named_portal_refusal(verdict: Verdict) -> Verdict:
    return Verdict(
        action=BLOCK,
        message="Warden: a statement that changes session settings, or acts on prepared "
        "statements or cursors by name, may only be bound to the unnamed portal",
        upstream_sql="",
        audit_fragment=verdict.audit_json(),
    )


def _portal_verdict(verdict: Verdict) -> Verdict:
    """What a portal bound to ``verdict`` keeps for its Execute. A COPY FROM STDIN is
    marked as a barrier so that its Execute comes to ``_on_execute`` on either relay
    (the native one runs a portal's Execute itself unless it is one), where the
    session starts its copy hold (``_CopyHold``); it sends no probe for it."""
    if "copy_from" in verdict.kinds and not verdict.barrier:
        return verdict._replace(barrier=True)
    return verdict


def _copy_not_alone(verdict: Verdict) -> Verdict:
    return Verdict(
        action=BLOCK,
        message="Warden: COPY ... FROM STDIN runs only on its own, not with other "
        "statements in one query",
        upstream_sql="",
        audit_fragment=verdict.audit_json(),
    )


_SYNC = object()

# The native relay (``_relay.c``): hot messages whose verdicts this module already
# holds, relayed in C; everything else comes back to the Session's own methods. It
# is built by ``sidecar.proxy.build_relay`` and optional: without it, Python relays.
try:
    from sidecar.proxy import _relay  # type: ignore[attr-defined]
except ImportError:
    _relay = None
else:
    _relay.configure(_SYNC, STAMP, Verdict)


def _uvloop_tcp() -> type | None:
    """uvloop's plain TCP transport class (not in its type stubs); None without uvloop,
    which is pinned: then no socket is written past its transport."""
    try:
        import uvloop.loop
    except ImportError:
        return None
    return getattr(uvloop.loop, "TCPTransport", None)


_UvloopTCP = _uvloop_tcp()


def _direct_fd(transport: object) -> int:
    """The socket the native relay may send to itself when the transport holds nothing
    (``_relay.c``, ``send_to``): only uvloop's plain TCP transport's, whose own write
    would send at once too. -1 for any other: TLS (the bytes must be encrypted), asyncio's
    own loop, a test's stand-in."""
    if _UvloopTCP is None or type(transport) is not _UvloopTCP:
        return -1
    sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
    return -1 if sock is None else int(sock.fileno())


if TYPE_CHECKING:
    _Exec = _PythonExec
else:
    _Exec = _PythonExec if _relay is None else _relay.Exec

NATIVE_RELAY_AVAILABLE = _relay is not None


class _Probe:
    """The sidecar's state probe, in ``pending`` after the barrier it follows.

    Shaped like a refused ``_Exec`` (no verdict) so the reply bookkeeping passes
    over it. ``extended``: the Flush form inside a batch, else a simple Query.
    """

    __slots__ = ("error", "extended", "replies", "row", "rows")
    is_query = False
    verdict = None

    def __init__(self, extended: bool) -> None:
        self.extended = extended
        self.replies = 0
        self.row: tuple[str, ...] | None = None
        self.error: str | None = None
        self.rows: int | None = None


class _Barrier:
    """A barrier's wait: the client's later messages queue until the probe answers."""

    __slots__ = ()
    task = None


class _CopyHold:
    """The session's hold around COPY FROM STDIN (the two instances below).

    While it copies in, the server takes CopyData, CopyDone and CopyFail, ignores a
    Sync or a Flush, and answers anything else with an error. A Sync counted as one
    waiting for its ReadyForQuery, which never comes, put every later reply down to
    the item before its own (a review's finding: errors went unredacted, and the
    session came to believe the server skipped to a Sync while it was idle, and let
    a Query through as the client wrote it). So whether a message reaches a server
    that copies is settled before it is handled:

    - ``_COPY_START``, from the forwarding of a statement that may start a copy: the
      client's later messages wait until the server answers it, with a
      CopyInResponse (then ``_COPY_IN``) or an error (then as usual);
    - ``_COPY_IN``, until the client's CopyDone or CopyFail or the server's error:
      CopyData goes through, a Sync or a Flush is dropped (the server would ignore
      it: nothing is counted that the server does not see), anything else ends the
      session.
    """

    __slots__ = ("name",)
    task = None

    def __init__(self, name: str) -> None:
        self.name = name


_COPY_START = _CopyHold("copy start")
_COPY_IN = _CopyHold("copy in")


def _unrunnable_portal(message: str, kind: str) -> Verdict:
    """The refusal of an Execute of a portal the session cannot vouch for."""
    return Verdict(
        action=BLOCK,
        message=message,
        upstream_sql="",
        audit=frozen({"kind": kind}),
        barrier=True,  # only so that an Execute of it leaves the fast path
    )


_STALE_PORTAL = _unrunnable_portal(
    "Warden: this portal was bound in a batch that failed, and the server may not hold "
    "what Warden decided for it; bind it again",
    "stale_portal",
)


def _name_in_use(what: str, name: bytes, kind: str) -> Verdict:
    """The refusal of a Parse or Bind the server would refuse: ``name`` is in use."""
    return Verdict(
        action=BLOCK,
        message=f"Warden: {what} {name.decode('utf-8', 'replace')!r} already exists; close "
        "it first",
        upstream_sql="",
        audit=frozen({"kind": kind}),
    )


_UNBOUND_PORTAL = _unrunnable_portal(
    "Warden: this portal was not bound through this session, or its cursor was declared "
    "under earlier rules; bind it (or declare the cursor) again",
    "unbound_portal",
)


class _Prepared:
    """A prepared statement: its verdict, the policy generation that gave it, and
    what is needed to decide it again (client text, Parse tail) after a bundle change.

    ``upstream`` is the SQL the upstream server holds under this name, once known;
    ``reparse`` the sidecar's latest re-prepare of it not yet confirmed.
    """

    __slots__ = ("generation", "reparse", "state", "tail", "text", "upstream", "verdict")

    def __init__(
        self, verdict: Verdict, generation: int, text: str, tail: bytes, state: st.SessionState
    ) -> None:
        self.verdict = verdict
        self.generation = generation
        # The session state it was decided under: the server analyses a prepared
        # statement again when the search_path changes, so the sidecar decides again.
        self.state = state
        self.text = text
        self.tail = tail
        self.upstream: str | None = verdict.upstream_sql
        self.reparse: _Closing | None = None


class _Closing:
    """A Close in flight, kept in ``pending`` so its CloseComplete can be told apart.

    With ``prepared`` set it is the sidecar's own Close of a re-prepare: that
    CloseComplete and the ParseComplete that follows are swallowed. Shaped like a
    refused ``_Exec`` (no verdict) so the reply bookkeeping can pass over it.
    """

    __slots__ = ("error", "generation", "name", "prepared", "rows", "sql")
    is_query = False
    verdict = None

    def __init__(
        self, prepared: _Prepared | None, sql: str = "", generation: int = -1, name: bytes = b""
    ) -> None:
        self.prepared = prepared
        self.sql = sql
        self.generation = generation
        self.name = name  # a client's Close of a statement: its name
        self.error: str | None = None
        self.rows: int | None = None


def _forget_upstream(prepared: _Prepared) -> None:
    """What the server holds under the statement's name is unknown: its next Bind
    prepares it again. A re-prepare still on its way no longer vouches for it either
    (its confirmation would restore what was just forgotten)."""
    prepared.upstream = None
    prepared.generation = -1
    prepared.reparse = None


# With the native relay built, the attributes it reads on every message are native
# fields of its SessionCore (ordinary attributes to Python); without it, a plain object.
_SessionBase: Any = object if _relay is None else _relay.SessionCore


class Session(_SessionBase):
    """Both directions of one proxied connection."""

    def __init__(
        self,
        *,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        identity: Identity,
        policy: Policy,
        audit: AuditSink,
        metrics: Metrics,
        parameters: dict[str, str],
        status: bytes,
        base_event: dict[str, Any],
        max_message: int,
        max_statement: int = 8 * 1024 * 1024,
        on_close: Callable[[Session], None],
        approvals: ApprovalGate | None = None,
        search_path: tuple[str, ...] | None = None,
        native_relay: bool = True,
        estimator: Estimator | None = None,
        hold_wait: float | None = None,
        answer_limit: int = 0,
    ) -> None:
        self.client = client
        # The client asked to wait at most this long for a reviewer (startup option
        # ``warden.hold_wait``): it only shortens the bundle's hold time.
        self.hold_wait = hold_wait
        self.upstream = upstream
        self.identity = identity
        self.policy = policy
        # The longest text quick_query decides: one the policy keeps in its cache, so
        # that when the answer is "not quick", client_data's second decision is a
        # cache hit, not a second run of the engine (a policy without a cache: none).
        self._quick_limit: int = getattr(policy, "CACHE_TEXT_LIMIT", 0)
        # The policy's decision that names the shape it served a text from
        # (EnginePolicy), and the shapes quick_query keeps for the native relay.
        self._decide_with_shape: Callable[..., Any] | None = getattr(
            policy, "decide_with_shape", None
        )
        self._shapes: tuple[tuple[Any, ...], ...] = ()
        self.audit = audit
        self.metrics = metrics
        # The decision-latency histogram, which the native relay counts into (Metrics
        # makes it once).
        self._decisions = metrics.decisions
        self.base_event = base_event
        self.max_message = max_message
        self.max_statement = max_statement
        self.on_close = on_close
        self.approvals = approvals
        self.estimator = estimator
        self.hold: Hold | _Barrier | _CopyHold | None = None
        self._held_data = bytearray()
        self._paused = 0
        self.status = status
        encoding = parameters.get("client_encoding", "UTF8")
        self.state = st.SessionState(
            encoding, parameters.get("standard_conforming_strings", "on") == "on", search_path
        )
        # A SQL_ASCII client's text is checked by the server in the database's encoding.
        self._server_encoding = parameters.get("server_encoding", "UTF8")
        self.codec: str | None = encodings.codec_for(encoding, self._server_encoding)
        # A barrier ran since the server last confirmed the state outside a
        # transaction: an error or the transaction's end may still undo it, so
        # every statement cycle is followed by a probe until then.
        self.dirty = False
        self._probing: _Probe | None = None
        # The server is skipping this batch's messages until its Sync (an error came
        # back before the client sent the Sync): what they prepare does not exist.
        self._discarding = False
        base_event["session_state"] = self.state.to_audit()
        self.statements: dict[bytes, _Prepared] = {}
        self.portals: dict[bytes, Verdict | None] = {}
        self.pending: deque[Any] = deque()
        # A partial message and the size it needs to be whole: chunks are appended,
        # not re-copied on every read, so a large message costs linear time.
        self.cbuf = bytearray()
        self._cneed = 0
        self.ubuf = b""
        self.uskip = 0
        # How upstream_data reads replies: (messages looked at, DataRow-like messages
        # passed through unread, the handler). See _set_up_mode.
        self._up_mode: tuple[frozenset[int], frozenset[int], Callable[..., bytes | None]] = (
            _UP_STATEFUL,
            _UP_ROWS,
            self._on_upstream,
        )
        # The prepared statement whose re-prepare's ParseComplete comes next.
        self._reparsing: _Closing | None = None
        # SQL PREPARE: the generation of the oldest statement this session may
        # still hold that way (None: none), and how many PREPAREs were decided.
        self._sql_prepared: int | None = None
        # SQL cursors this session declared: name -> (policy generation, WITH HOLD).
        self._cursors: dict[str, tuple[int, bool]] = {}
        # Statement names a client closed whose CloseComplete has not come: the server
        # may still hold them (the Close skipped after an error in its batch).
        self._maybe_held: set[bytes] = set()
        self._sql_prepared_state = self.state
        self._sql_prepares = 0
        self._sql_prepares_at_deallocate = -1
        # Columns masked only provisionally that this session was told about (once each).
        self._told_provisional: set[str] = set()
        self.closed = False
        nonce = secrets.token_hex(6)
        self._marker = f"warden refused {nonce} ".encode()
        self._refusal_name = f"warden_refusal_{nonce}".encode()
        self._probe_name = f"warden_probe_{nonce}".encode()
        # Strict durability: the last intent ticket this session journaled, and the
        # upstream writes waiting for the journal to reach theirs.
        self._strict = bool(getattr(audit, "strict", False))
        self._need = 0
        self._gated: deque[tuple[int, bytes]] = deque()
        self._gate_armed = False
        self._background: asyncio.Task[None] | None = None
        self._refusals: dict[int, bytes] = {}
        self._refusal_seq = 0
        self.started = time.time()
        self._base_json = encode_base(self.base_event)
        self.keepalive: tuple[object, ...] = ()
        # The pending item of the statement that may start, or runs, a copy (_CopyHold).
        self._copy_item: object | None = None
        # The id of the credential (token) the client signed in with: the server ends
        # the session once the bundle no longer holds it unexpired (revalidate).
        self.credential = ""
        # Where the transports deliver data: the native relay when it is built and
        # enabled (it hands whatever it does not relay back to the methods below).
        self.native_relay = native_relay and _relay is not None
        self.client_entry: Callable[[bytes], None] = self.client_data
        self.upstream_entry: Callable[[bytes], None] = self.upstream_data
        self._client_fd = self._upstream_fd = -1
        # Bytes the upstream may send in answer to one client write (0: no bound), and
        # what it sent since the last one. For the sidecar's own MCP server, whose
        # driver holds a whole result (a write's RETURNING rows, one row of any width)
        # in memory before it can look at its size.
        self.answer_limit = answer_limit
        self._answered = 0
        if answer_limit:
            self.native_relay = False
            self.client_entry = self._client_data_answered
            self.upstream_entry = self._upstream_data_bounded
        if self.native_relay:
            self.client_entry = partial(_relay.client, self)
            self.upstream_entry = partial(_relay.upstream, self)
            self._client_fd = _direct_fd(client)
            self._upstream_fd = _direct_fd(upstream)
        # The spool's native buffer, which the relay writes a statement's event into
        # (None: the relay calls audit.append_line, as the Python path does), and
        # below the dict the relay counts them in: both taken from ``audit`` and
        # ``metrics`` here, which are a session's for its whole life.
        lines = getattr(audit, "lines", None)
        self._spool_lines = (
            lines if _relay is not None and type(lines) is _relay.SpoolLines else None
        )
        self._recorded = getattr(metrics, "statements", None)

    # ---- client -> upstream -------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self.hold is _COPY_IN:
            self._copy_data(data)
            return
        if self.hold is not None:
            self._held_data += data
            if len(self._held_data) > HOLD_BUFFER_LIMIT:
                self._pause_client(_PAUSED_BY_HOLD)
            return
        if self.cbuf:
            self.cbuf += data
            if len(self.cbuf) < self._cneed:
                return
            data = bytes(self.cbuf)
            self.cbuf = bytearray()
        out: list[bytes] = []
        pos = 0
        n = len(data)
        try:
            while n - pos >= 5:
                kind = data[pos]
                length = _unpack_i32(data, pos + 1)[0]
                if (
                    length < 4
                    or length > self.max_message
                    or (kind in m.SMALL_TYPES and length > m.SMALL_MESSAGE_LIMIT)
                ):
                    raise m.ProtocolViolation(f"invalid message length {length}")
                end = pos + 1 + length
                if end > n:
                    break
                start, pos = pos, end
                # A branch that may hold the client (an approval, a barrier) breaks
                # out once it has; the rest of the data waits in _held_data.
                # Ordered by frequency: simple queries, then a prepared statement's run.
                if kind == _Q:
                    if length > LARGE_STATEMENT:
                        if self._large(kind, length, data, start, end, out):
                            break
                        continue
                    if (
                        self.pending
                        and not self._discarding  # skipped by the server anyway
                        and _state_sensitive(data, start + 5, end)
                    ):
                        pos = start  # judged once the probe has answered
                        out.append(self._probe_before(False))
                        break
                    message = self._on_query(data[start + 5 : end])
                    out.append(data[start:end] if message is None else message)
                    if self.hold is not None:
                        break
                elif kind == _B:
                    # The hot path of prepared statements inline; the rest in _on_bind.
                    portal, stmt = m.parse_bind_names(data[start + 5 : end])
                    prepared = self.statements.get(stmt)
                    if (
                        prepared is not None
                        and prepared.generation == self.policy.generation
                        and prepared.state is self.state
                        and prepared.verdict.plain
                        and not self._discarding
                        and not portal  # a named one: _on_bind checks the name is free
                    ):
                        self.portals[portal] = prepared.verdict
                        out.append(data[start:end])
                    else:
                        self._on_bind(data, start, end, portal, stmt, prepared, out)
                        if self.hold is not None:
                            break
                elif kind == _E:
                    portal = data[start + 5 : data.index(0, start + 5, end)]  # within it
                    verdict = self.portals.get(portal) or self._unbound_portal(portal)
                    if verdict.barrier or self.dirty:  # _STALE_PORTAL is one too
                        self._on_execute(data, start, end, verdict, out)
                        if self.hold is not None:
                            break
                    else:
                        self.pending.append(
                            self._exec(verdict, False) if self._strict else _Exec(verdict, False)
                        )
                        out.append(data[start:end])
                elif kind == _S:
                    self._discarding = False
                    self.pending.append(_SYNC)
                    out.append(data[start:end])
                    if self.dirty:
                        # The batch may have failed and undone a barrier's change.
                        out.append(self._probe_after(False))
                        break
                elif kind == _P:
                    if length > LARGE_STATEMENT:
                        if self._large(kind, length, data, start, end, out):
                            break
                        continue
                    if (
                        self.pending
                        and not self._discarding
                        and _state_sensitive(data, start + 5, end)
                    ):
                        pos = start
                        out.append(self._probe_before(True))
                        break
                    message = self._on_parse(data[start + 5 : end])
                    out.append(data[start:end] if message is None else message)
                    if self.hold is not None:
                        break
                elif kind in _FORWARDED:
                    out.append(data[start:end])
                elif kind == _C:
                    what, name = data[start + 5], data[start + 6 : end - 1]
                    (self.statements if what == _S else self.portals).pop(name, None)
                    if what == _S and name:
                        # Until its CloseComplete, the server may still hold it.
                        self._maybe_held.add(name)
                    if not self._discarding:  # else skipped: no CloseComplete comes
                        self.pending.append(_Closing(None, name=name if what == _S else b""))
                    out.append(data[start:end])
                elif kind == _F:
                    out.append(self._on_function_call())
                    if self.hold is not None:
                        break
                elif kind == _X:
                    self._write(b"".join(out) + data[start:end])
                    self.close()
                    return
                else:
                    raise m.ProtocolViolation(f"unexpected message type {chr(kind)!r}")
        except (m.ProtocolViolation, ValueError, IndexError) as exc:
            self._violation(out, exc)
            return
        if out:
            sending = out[0] if len(out) == 1 else b"".join(out)
            if self._strict and (self._need > self.audit.durable or self._gated):
                self._gate(sending)  # strict durability: after the intents are on disk
            else:
                self.upstream.write(sending)
        if pos < n:
            if self.hold is not None:
                self._held_data = bytearray(data[pos:])
                if len(self._held_data) > HOLD_BUFFER_LIMIT:
                    self._pause_client(_PAUSED_BY_HOLD)
            else:
                self.cbuf = bytearray(data[pos:])
                self._cneed = 5 if n - pos < 5 else 1 + _unpack_i32(data, pos + 1)[0]

    def _violation(self, out: list[bytes], exc: Exception) -> None:
        """End the session on a client's protocol violation: what was decided before
        it is sent, then FATAL 08P01."""
        log.warning("closing %s: protocol violation (%s)", self._who(), exc)
        if out:
            self._write(b"".join(out))
        self.client.write(
            m.error_response(severity="FATAL", sqlstate="08P01", message=f"protocol: {exc}")
        )
        self.close()

    def _on_bind(
        self,
        data: bytes,
        pos: int,
        end: int,
        portal: bytes,
        stmt: bytes,
        prepared: _Prepared | None,
        out: list[bytes],
    ) -> None:
        if prepared is None:
            # Not prepared through this connection's Parse messages (SQL PREPARE, or
            # a statement the server kept when the sidecar saw it closed): the
            # sidecar has no decision for what the server holds under that name.
            self.portals[portal] = None
            out.append(self._refuse_in_batch(_unknown_statement(stmt)))
            return
        if prepared.generation != self.policy.generation or prepared.state is not self.state:
            # Decided under rules or a session state that have changed: decide again.
            refusal = self._redecide(stmt, prepared, out)
            if refusal is not None:
                self.portals[portal] = None
                out.append(refusal)
                return
        if portal and (self.portals.get(portal) is not None or self._cursor(portal) is not None):
            # The server refuses a Bind into a portal name in use (42P03) and keeps that
            # portal, or the cursor of that name, for a later Execute: refused here, as
            # the server would, the books unchanged (a review's finding: the cursor ran
            # under this Bind's verdict).
            out.append(
                self._refuse_in_batch(_name_in_use("portal or cursor", portal, "portal_exists"))
            )
            return
        verdict = prepared.verdict
        if portal and not verdict.plain and _acts_by_name(verdict):
            # In a named portal it could run later (Execute, or SQL FETCH of the
            # portal), after the sidecar has settled its books or the state. Refused
            # before any hold: an approval would not make it safe there.
            self.portals[portal] = None
            out.append(self._refuse_in_batch(_named_portal_refusal(verdict)))
            return
        if verdict.action == REVIEW:
            # Each run needs its own approval, of the values it binds.
            hold = Hold(verdict, stmt, data[pos:end], portal)
            hold.prepared = prepared
            self._hold_start(hold)
            return
        self.portals[portal] = _STALE_PORTAL if self._discarding else _portal_verdict(verdict)
        out.append(data[pos:end])

    def _unbound_portal(self, portal: bytes) -> Verdict:
        """The verdict on an Execute of a portal no Bind of this session opened (or one
        whose Bind was refused): a cursor SQL DECLARE opened under the rules in force,
        which was decided when it was declared, else a refusal. (It was allowed
        whatever it was: a cursor declared while the identity was exempt, executed
        after the masking bundle arrived, returned raw values; and a portal name
        whose Bind the server refused ran the cursor of that name; a review's
        findings.)"""
        if portal not in self.portals:
            declared = self._cursor(portal)
            if declared is not None and declared[0] == self.policy.generation:
                return _UNSEEN_PORTAL
        return _UNBOUND_PORTAL

    def _cursor(self, portal: bytes) -> tuple[int, bool] | None:
        """The SQL cursor of the protocol portal name ``portal``, if one is declared."""
        return self._cursors.get(portal.decode(self.codec or "utf-8", "replace"))

    def _on_execute(
        self, data: bytes, pos: int, end: int, verdict: Verdict, out: list[bytes]
    ) -> None:
        if verdict is _STALE_PORTAL or verdict is _UNBOUND_PORTAL:
            out.append(self._refuse_in_batch(verdict))
            return
        self.pending.append(self._exec(verdict, False, self._base_json))
        out.append(data[pos:end])
        if "copy_from" in verdict.kinds:
            self._copy_start()  # the server wants the data next, not a probe
        elif verdict.barrier or self.dirty:
            out.append(self._probe_after(True))

    def _exec(self, verdict: Verdict, is_query: bool, base: str = "") -> _Exec:
        """A statement about to be forwarded. With strict durability its intent (the
        event as it reads if the outcome is never known) is journaled first, and the
        bytes that carry it wait for the journal's fsync (``_gate``)."""
        item = _Exec(verdict, is_query, base)
        if self._strict:
            now = now_us()
            item.event = event_id.at_ms(now // 1000)
            line = statement_line(
                item.event, now, verdict, "unknown", None, None, None, None,
                base or self._base_json,
            )  # fmt: skip
            self._need, item.journal = self.audit.journal(line)
        return item

    def _write(self, data: bytes) -> None:
        if self._strict and (self._need > self.audit.durable or self._gated):
            self._gate(data)
        else:
            self.upstream.write(data)

    def _gate(self, data: bytes) -> None:
        self._gated.append((self._need, data))
        if not self._gate_armed:
            self._gate_armed = True
            self.audit.when_durable(self._gated[0][0], self._release_gate)

    def _release_gate(self) -> None:
        """The journal caught up: send what waited for it, in order."""
        self._gate_armed = False
        if self.closed:
            self._gated.clear()
            return
        durable = self.audit.durable
        while self._gated and self._gated[0][0] <= durable:
            self.upstream.write(self._gated.popleft()[1])
        if self._gated and self.audit.write_error is not None:
            # The journal cannot be written: what waited for it never runs.
            log.error("closing %s: the audit trail cannot be written", self._who())
            self._gated.clear()
            self.terminate("58030", "Warden: the audit trail cannot be written; nothing more runs")
            return
        if self._gated:
            self._gate_armed = True
            self.audit.when_durable(self._gated[0][0], self._release_gate)

    def _large(
        self, kind: int, length: int, data: bytes, start: int, end: int, out: list[bytes]
    ) -> bool:
        """A Query or Parse too large to judge on the event loop without stalling every
        other session: refused above max_statement_bytes, else judged in a worker
        thread while this session waits (True: stop reading the client)."""
        if length > self.max_statement:
            out.append(self._refuse_oversized(kind, length))
            return False
        self._decide_later(data[start:end])
        return True

    def _refuse_oversized(self, kind: int, length: int) -> bytes:
        verdict = Verdict(
            action=BLOCK,
            message=f"Warden: this statement is {length} bytes; statements above "
            f"{self.max_statement} bytes are refused (max_statement_bytes)",
            upstream_sql="",
            audit=frozen({"kind": "oversized", "bytes": length}),
        )
        if kind == _Q:
            self.pending.append(_Exec(None, True))
            return m.query(self._refuse(verdict))
        return self._refuse_in_batch(verdict)

    def _decide_later(self, message: bytes) -> None:
        """Hold the session while a large Query or Parse is judged off the event loop."""
        hold = _Barrier()
        self.hold = hold
        task = asyncio.get_running_loop().create_task(self._decide_large(hold, message))
        self._background = task  # kept referenced until done

    async def _decide_large(self, hold: _Barrier, message: bytes) -> None:
        kind, payload = message[0], message[5:]
        generation, state = self.policy.generation, self.state
        in_transaction, started = self.status != b"I", time.perf_counter()
        try:
            if kind == _Q:
                if not payload or payload[-1] != 0:
                    raise m.ProtocolViolation("Query is not NUL-terminated")
                raw = payload[:-1]
                protocol = "simple"
            else:
                name, raw, tail = m.parse_parse(payload)
                protocol = "extended"
            text = self._decode(raw)
            while True:
                verdict = await asyncio.to_thread(
                    self._ask_policy_large, text, protocol, state, in_transaction, raw
                )
                # New rules arrived while it was judged, and a Query runs as soon as
                # it is released: judged again under them. (A Parse keeps the
                # generation it was judged under, and its Bind judges it again.)
                if kind != _Q or self.policy.generation == generation or self.closed:
                    break
                generation = self.policy.generation
            if self.closed or self.hold is not hold:
                return
            self.hold = None
            verdict = self._session_rules(verdict, generation, started)
            if verdict.provisional:
                self._tell_provisional(verdict)
            if kind == _Q:
                sent = self._query_decided(payload, text, verdict)
            else:
                sent = self._parse_decided(name, text, tail, generation, verdict)
        except (m.ProtocolViolation, ValueError, IndexError) as exc:
            self.terminate("08P01", f"protocol: {exc}")
            return
        except Exception:  # never let a failure run the statement
            log.exception("judging a large statement failed for %s", self._who())
            self.terminate("XX000", "Warden could not judge this statement; the session ended")
            return
        self._write(message if sent is None else sent)
        self._release_queued()

    def _refuse_in_batch(self, verdict: Verdict) -> bytes:
        """A failing Parse of a name nobody uses, standing in for a refused extended
        message: the server errors and discards the batch up to Sync. The session
        knows that now, not only once the error arrives: a Parse or Bind after it in
        the batch must not be booked as done (a review's finding: a refused Bind, then
        a Parse of the unnamed statement that the server skipped, and a Bind of it in
        the next batch ran the statement the server still held)."""
        self._discarding = True
        return m.build_parse(self._refusal_name, self._refuse(verdict), b"\x00\x00")

    def _probe_after(self, extended: bool) -> bytes:
        """Ask the server for the session state after what was just forwarded, and
        hold the client's next messages until it answers (``_probe_answered``).
        ``extended``: inside an extended-protocol batch (the Flush form), else
        between message cycles (the form with its own Sync)."""
        if self._discarding:
            return b""  # the server skips it all up to the Sync, the barrier too
        self.dirty = True
        return self._probe(extended)

    def _probe_before(self, extended: bool) -> bytes:
        """Confirm the state before deciding a message that depends on it while
        earlier statements are still running (see ``_state_sensitive``)."""
        return self._probe(extended)

    def _probe(self, extended: bool) -> bytes:
        self.pending.append(_Probe(extended))
        self.hold = _Barrier()
        name = self._probe_name
        return st.probe_extended(name) if extended else st.probe_synced(name)

    def _decode(self, raw: bytes) -> str | None:
        codec = self.codec
        if codec == "utf-8":  # the usual case, without a call: strict UTF-8 round-trips
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if codec is None:
            return None
        return encodings.decode(raw, codec)

    def _decide(self, text: str | None, protocol: str, raw: bytes = b"") -> Verdict:
        """The verdict on one text; ``raw``, its bytes, only for the refusal of text
        that is not valid in the client encoding (``text`` None)."""
        generation = self.policy.generation
        started = time.perf_counter()
        if text is None:
            verdict = self._ask_policy(text, protocol, self.state, self.status != b"I", raw)
        else:
            try:
                verdict = self._policy_verdict(text, protocol)
            except Exception:  # the same refusal as _ask_policy's, which logs it
                verdict = self._ask_policy(text, protocol, self.state, self.status != b"I")
        if verdict.provisional:
            self._tell_provisional(verdict)
        if verdict.plain and self._sql_prepared is None and self.audit.accepting:
            # Nothing of the session's own books applies to a plain allowed statement.
            self.metrics.decisions.observe(time.perf_counter() - started)
            return verdict
        return self._session_rules(verdict, generation, started)

    def _policy_verdict(self, text: str, protocol: str) -> Verdict:
        """The policy's verdict on ``text`` in this session's state (it may raise)."""
        verdict: Verdict = self._ask(self.policy.decide, text, protocol)
        return verdict

    def _ask(self, decide: Callable[..., Any], text: str, protocol: str) -> Any:
        """``decide`` (the policy's) asked about ``text`` in this session's state."""
        state = self.state
        return decide(
            identity=self.identity.name,
            sql=text,
            standard_conforming_strings=state.standard_conforming_strings,
            search_path=state.search_path,
            in_transaction=self.status != b"I",
            protocol=protocol,
        )

    def _tell_provisional(self, verdict: Verdict) -> None:
        """The first time this session reads a column masked only provisionally (a
        scanner finding nobody has reviewed yet), say so with a NoticeResponse, which
        clients show as it arrives, so a person who sees a masked value knows why.
        Never in the middle of an upstream message (a large row streamed through,
        ``uskip``): the notice then waits for a later statement reading the column."""
        if verdict.action != ALLOW or self.uskip:
            return
        for column, classification in verdict.provisional:
            if column in self._told_provisional:
                continue
            self._told_provisional.add(column)
            self.client.write(
                m.notice_response(
                    f"Warden masked {column} provisionally ({classification}, not yet reviewed)"
                )
            )

    def _ask_policy(
        self,
        text: str | None,
        protocol: str,
        state: st.SessionState,
        in_transaction: bool,
        raw: bytes = b"",
    ) -> Verdict:
        """The policy's verdict on one text; touches no session state, so it may run in
        a worker thread (``_decide_later``)."""
        if text is None:
            return self._undecodable(raw, state.client_encoding)
        try:
            return self.policy.decide(
                identity=self.identity.name,
                sql=text,
                standard_conforming_strings=state.standard_conforming_strings,
                search_path=state.search_path,
                in_transaction=in_transaction,
                protocol=protocol,
            )
        except Exception as exc:
            # Only the exception's type: its message could quote the statement.
            log.error("policy failed (%s); statement refused", type(exc).__name__)
            return Verdict(
                action="block",
                message="Warden: the policy engine could not decide on this statement",
                upstream_sql="",
                audit=frozen({"kind": "error"}),
            )

    def _ask_policy_large(
        self,
        text: str | None,
        protocol: str,
        state: st.SessionState,
        in_transaction: bool,
        raw: bytes,
    ) -> Verdict:
        """``_ask_policy`` in a worker thread, with the garbage collector paused."""
        with collector.paused():
            return self._ask_policy(text, protocol, state, in_transaction, raw)

    def _undecodable(self, raw: bytes, encoding: str) -> Verdict:
        """The refusal of a text that is not valid in the session's client encoding:
        it names the encoding and where the text stops being valid in it."""
        codec = self.codec
        if codec is None:
            message = f"Warden: {encodings.refusal(encoding)}"
        else:
            read_as = ""
            if encodings.canonical(encoding) == "SQL_ASCII":
                read_as = f" (read as the database's encoding {self._server_encoding})"
            message = (
                f"Warden: statement text is not valid in the client encoding {encoding}"
                f"{read_as}: {encodings.describe_invalid(raw, codec)}"
            )
        return Verdict(
            action="block",
            message=message,
            upstream_sql="",
            audit=frozen({"kind": "undecodable"}),
        )

    def _session_rules(self, verdict: Verdict, generation: int, started: float) -> Verdict:
        """The rules that depend on this session's own books (prepared statements,
        cursors, a transaction that changed settings), after the policy's verdict."""
        if (self._sql_prepared is not None or "prepare" in verdict.kinds) and (
            verdict.action != "block"
        ):
            verdict = self._sql_prepared_rule(verdict, generation)
        if verdict.executes and verdict.action != BLOCK:
            verdict = self._protocol_execute_rule(verdict, generation)
        if verdict.cursors and verdict.action != BLOCK:
            verdict = self._cursor_rule(verdict, generation)
        if self.dirty and verdict.multi and verdict.action != BLOCK:
            # An error or a transaction's end inside the text could undo a change
            # the rest of the text would then be read without.
            verdict = Verdict(
                action=BLOCK,
                message="Warden: this session changed its settings inside an open "
                "transaction; send one statement at a time until the transaction ends",
                upstream_sql="",
                audit_fragment=verdict.audit_json(),
            )
        if not verdict.kinds.isdisjoint(_TOUCHES_PREPARED) and verdict.action != BLOCK:
            for prepared in self.statements.values():
                _forget_upstream(prepared)
        self.metrics.decisions.observe(time.perf_counter() - started)
        if verdict.action == ALLOW and not self.audit.accepting:
            return Verdict(
                action="block",
                message=SPOOL_FULL,
                upstream_sql="",
                audit_fragment=verdict.audit_json(),
            )
        return verdict

    def _protocol_execute_rule(self, verdict: Verdict, generation: int) -> Verdict:
        """SQL EXECUTE of a statement prepared through Parse runs what the server holds,
        which is current only while its decision is (a Bind would decide it again), and
        only a statement allowed outright: one that needs review runs only at a Bind."""
        for name in verdict.executes:
            prepared = self.statements.get(name.encode(self.codec or "utf-8"))
            if prepared is not None and prepared.verdict.action != ALLOW:
                # Prepared at once but held at each Bind (it needs approval): SQL
                # EXECUTE would run it with no Bind to hold.
                return Verdict(
                    action=BLOCK,
                    message=f"Warden: prepared statement {name!r} needs approval; run it "
                    "through the protocol's Bind, where Warden holds it for a reviewer",
                    upstream_sql="",
                    audit=frozen({"kind": "execute_needs_approval"}),
                )
            if prepared is not None and (
                prepared.generation != generation
                or prepared.state is not self.state
                or prepared.upstream is None
            ):
                return Verdict(
                    action=BLOCK,
                    message=f"Warden: prepared statement {name!r} was decided under earlier "
                    "rules or settings; bind it through the protocol (Warden decides it "
                    "again) or prepare it again",
                    upstream_sql="",
                    audit=frozen({"kind": "stale_prepared_statement"}),
                )
            if prepared is not None and prepared.verdict.barrier:
                verdict = verdict._replace(barrier=True, plain=False)
        return verdict

    def _cursor_rule(self, verdict: Verdict, generation: int) -> Verdict:
        """Keep the books on SQL cursors (a cursor is planned when it is declared, under
        the rules of that moment) and refuse reading one declared under earlier rules,
        or a protocol portal of the same name that is stale."""
        codec = self.codec or "utf-8"
        for op, name, hold in verdict.cursors:
            if op == "declare" and name is not None:
                self._cursors[name] = (generation, hold)
            elif op == "close":
                if name is None:
                    self._cursors.clear()
                else:
                    self._cursors.pop(name, None)
            elif op == "fetch" and name is not None:
                declared = self._cursors.get(name)
                portal = self.portals.get(name.encode(codec))
                if (declared is not None and declared[0] != generation) or (
                    portal is _STALE_PORTAL
                ):
                    return Verdict(
                        action=BLOCK,
                        message=f"Warden: cursor {name!r} was opened under earlier rules; "
                        "close it and open it again",
                        upstream_sql="",
                        audit=frozen({"kind": "stale_cursor"}),
                    )
        return verdict

    def _sql_prepared_rule(self, verdict: Verdict, generation: int) -> Verdict:
        """Statements prepared with SQL PREPARE are not decided again when the rules
        change (the sidecar does not know their names), so once the rules have
        changed, running one is refused until the session deallocates them all."""
        kinds = verdict.kinds
        if self._sql_prepared is not None:
            stale = self._sql_prepared != generation or self._sql_prepared_state is not self.state
            if stale and not kinds.isdisjoint(_RUNS_SQL_PREPARED):
                return Verdict(
                    action="block",
                    message="Warden: the access rules or the session's settings changed after "
                    "this session prepared statements with SQL PREPARE, and those are not "
                    "checked again; run DEALLOCATE ALL (or DISCARD ALL) and PREPARE them again",
                    upstream_sql="",
                    audit=frozen({"kind": "stale_sql_prepare"}),
                )
            if "deallocate" in kinds or "discard" in kinds:
                self._sql_prepares_at_deallocate = self._sql_prepares
        if "prepare" in kinds:
            self._sql_prepares += 1
            if self._sql_prepared is None:
                self._sql_prepared = generation
                self._sql_prepared_state = self.state
        return verdict

    # _on_query and _on_parse return the message to send upstream, or None when
    # the client's own bytes go through unchanged (the common, unmasked case).

    def quick_query(self, raw: bytes) -> Verdict | None:
        """The native relay's question for a simple Query alone in its buffer (``raw``:
        its text's bytes), asked only while the session relays plainly with nothing
        pending: the verdict, when it lets the client's own bytes go upstream as they
        are. Otherwise None, with nothing changed, and the message goes to
        ``client_data`` as usual. The same steps as ``_on_query`` and ``_decide`` for
        that one case; the relay then makes the pending item as ``_on_query`` does
        (``_exec`` under strict durability, else an ``_Exec``), appends it and writes,
        and counts how long this call took in ``metrics.decisions`` (a verdict of
        None is timed by ``client_data``'s own decision instead).

        A text the policy does not cache (longer than ``_quick_limit``) is never asked
        here. A break-glass verdict is not cached either: when one is not quick it is
        decided twice, a rare case and bounded by that length."""
        # The relay's own checks again: each is one attribute load, and a verdict
        # given here is acted on without the rest of client_data.
        if (
            len(raw) > self._quick_limit
            or self.hold is not None
            or self.pending
            or self.cbuf
            or self.dirty
            or self._discarding
        ):
            return None
        text = self._decode(raw)
        if text is None:
            return None
        shape = None
        try:
            if self._decide_with_shape is None:
                verdict = self._policy_verdict(text, "simple")
            else:
                verdict, shape = self._ask(self._decide_with_shape, text, "simple")
        except Exception:
            return None  # client_data asks again, and refuses as _ask_policy does
        if (
            not verdict.plain
            or verdict.provisional
            or verdict.upstream_sql != text
            or self._sql_prepared is not None
            or not self.audit.accepting
        ):
            return None
        if shape is not None:
            self._keep_shape(shape, verdict)
        return verdict  # the relay records how long this call took

    # The shapes kept for the relay, most recent first: a session that alternates
    # between a few statements keeps them all.
    KEPT_SHAPES = 8

    def _keep_shape(self, shape: tuple[Any, ...], verdict: Verdict) -> None:
        """Keep ``verdict``, the one the policy keeps for its text's ``shape`` (the same
        text but for the values of its simple literals; ``EnginePolicy.
        decide_with_shape``), for the native relay, which gives the next text of that
        shape the same verdict without this call, as the policy would: while the
        policy's generation and this session's state (``SessionState``, a new object
        on every change) stay the ones it was given under. The relay compares bytes
        with the shape's pieces as ``shape.fits_pieces`` does, so only sessions whose
        texts are UTF-8 keep shapes."""
        if self.codec != "utf-8":
            return
        generation, fixed, kinds = shape
        state = self.state
        entry = (
            generation,
            state,
            self._quick_limit,  # in bytes here: never more characters than that
            tuple(part.encode() for part in fixed),
            kinds.encode(),
            verdict,
        )
        kept = [e for e in self._shapes if e[0] == generation and e[1] is state]
        self._shapes = (entry, *kept[: self.KEPT_SHAPES - 1])

    def _on_query(self, payload: bytes) -> bytes | None:
        if not payload or payload[-1] != 0:
            raise m.ProtocolViolation("Query is not NUL-terminated")
        raw = payload[:-1]
        text = self._decode(raw)
        verdict = self._decide(text, "simple", raw)
        if verdict.plain and not self.dirty and not self._discarding:
            self.pending.append(self._exec(verdict, True) if self._strict else _Exec(verdict, True))
            if verdict.upstream_sql == text:
                return None
            return m.query(verdict.upstream_sql.encode(self.codec or "utf-8"))
        return self._query_decided(payload, text, verdict)

    def _query_decided(self, payload: bytes, text: str | None, verdict: Verdict) -> bytes | None:
        if self._discarding:
            # Inside a failed extended batch the server ignores a Query too: no reply
            # will come for it. Recorded as skipped, and not sent at all: were the
            # session wrong about the skipping, the client's own text (not the
            # masked one) would run.
            if verdict.action == ALLOW:
                self._record(verdict, "error", None, 0, "skipped")
                return b""
            return m.query(self._refuse(verdict))
        if verdict.action in (ALLOW, REVIEW) and "copy_from" in verdict.kinds and verdict.multi:
            # Its copy would run in the middle of the text, between statements whose
            # replies and state changes the session follows: COPY on its own.
            verdict = _copy_not_alone(verdict)
        if verdict.action == ALLOW:
            self.pending.append(self._exec(verdict, True, self._base_json))
            message = None
            if verdict.upstream_sql != text:
                message = m.query(verdict.upstream_sql.encode(self.codec or "utf-8"))
            if "copy_from" in verdict.kinds:
                self._copy_start()  # the server wants the data next, not a probe
                return message
            if verdict.barrier or self.dirty:
                # (COPY FROM STDIN: the server wants the data next, not a probe; the
                # next cycle is probed as usual.)
                return (message or m.query(payload[:-1])) + self._probe_after(False)
            return message
        if verdict.action == REVIEW and verdict.approval and self.approvals:
            assert text is not None  # undecodable text is blocked
            self._hold_start(Hold(verdict, text=text))
            return b""
        self.pending.append(_Exec(None, True))
        refusal = m.query(self._refuse(verdict))
        # In a transaction, the refusal's error undoes what a barrier changed there.
        return refusal + self._probe_after(False) if self.dirty else refusal

    def _on_parse(self, payload: bytes) -> bytes | None:
        name, raw, tail = m.parse_parse(payload)
        text = self._decode(raw)
        # Read before deciding: a verdict is never newer than the generation it carries.
        generation = self.policy.generation
        return self._parse_decided(
            name, text, tail, generation, self._decide(text, "extended", raw)
        )

    def _parse_decided(
        self, name: bytes, text: str | None, tail: bytes, generation: int, verdict: Verdict
    ) -> bytes | None:
        held = self.statements.get(name) if name else None
        if held is not None and held.upstream is not None:
            # The server holds this name and will refuse the Parse (42P05), keeping the
            # statement it has, while a Bind in a later batch, sent before that error
            # arrives, would be judged by this Parse's verdict (a review's finding: a
            # masked identity read the failing row of an UPDATE it had prepared under
            # the name). Refused here, as the server would, the books unchanged.
            return self._refuse_in_batch(
                _name_in_use("prepared statement", name, "statement_exists")
            )
        if verdict.action == ALLOW:
            assert text is not None  # undecodable text is blocked
            self._remember_prepared(name, _Prepared(verdict, generation, text, tail, self.state))
            if verdict.upstream_sql == text:
                return None
            sql = verdict.upstream_sql.encode(self.codec or "utf-8")
            return m.build_parse(name, sql, tail)
        if verdict.action == REVIEW and verdict.approval and self.approvals:
            # Prepared now, held at each Bind: only then are the values it runs with
            # known, and a grant is bound to them. Preparing runs nothing.
            assert text is not None
            self._remember_prepared(name, _Prepared(verdict, generation, text, tail, self.state))
            return m.build_parse(name, verdict.upstream_sql.encode(self.codec or "utf-8"), tail)
        self.statements.pop(name, None)
        return m.build_parse(name, self._refuse(verdict), b"\x00\x00")

    def _remember_prepared(self, name: bytes, prepared: _Prepared) -> None:
        """Record what a Parse prepares. While the server skips to Sync it will not
        prepare it: the record then says "uncertain", so the next Bind prepares again."""
        self.statements[name] = prepared
        pending = self.pending
        if self._discarding or name in self._maybe_held or (pending and pending[-1] is not _SYNC):
            # Or the server may yet skip it: a Close of the name is unconfirmed, or
            # something sent before it in this batch (an Execute) may fail, and the
            # server keep the statement it had under the name for a Bind in a later
            # batch (a review's finding, with the unnamed statement and a DELETE
            # held for approval). Its next Bind prepares it again.
            self._maybe_held.discard(name)
            _forget_upstream(prepared)

    def _redecide(self, name: bytes, prepared: _Prepared, out: list[bytes]) -> bytes | None:
        """Decide a prepared statement again under the current rules, before a Bind.

        Allowed: its verdict is replaced, and when its SQL for upstream changed the
        statement is re-prepared there first (appended to ``out``). Review: the Bind
        is held as for any reviewed statement. Otherwise the marker statement that
        refuses the Bind is returned; the statement stays stale, so every later Bind
        of it is refused too and its old SQL never runs.
        """
        generation = self.policy.generation
        verdict = self._decide(prepared.text, "extended")
        prepared.state = self.state
        if verdict.action == ALLOW or (
            verdict.action == REVIEW and verdict.approval and self.approvals
        ):
            prepared.verdict = verdict
            # A Bind that will be held is re-prepared once approved (_hold_approved).
            held_later = verdict.action == REVIEW
            if held_later or verdict.upstream_sql == prepared.upstream:
                prepared.generation = generation
            else:
                out.append(self._reprepare(name, prepared, generation))
            return None
        return m.build_parse(self._refusal_name, self._refuse(verdict), b"\x00\x00")

    def _reprepare(self, name: bytes, prepared: _Prepared, generation: int) -> bytes:
        """Close and Parse ``name`` again upstream with the statement's current SQL.

        The statement counts as current only once the upstream's ParseComplete for
        it arrives: until then every Bind of it re-prepares again, so no Bind can
        reach the old SQL whatever happens to the messages in between.
        """
        sql = prepared.verdict.upstream_sql
        prepared.generation = -1
        # Unknown until confirmed: the server already runs this Parse's SQL for every
        # Bind sent after it, whatever it last confirmed, so no verdict may match the
        # old SQL and skip re-preparing (a client that sends no Sync keeps the
        # confirmation back for as long as it likes).
        prepared.upstream = None
        closing = _Closing(prepared, sql, generation)
        prepared.reparse = closing
        self.pending.append(closing)
        return m.frame(b"C", b"S" + name + b"\x00") + m.build_parse(
            name, sql.encode(self.codec or "utf-8"), prepared.tail
        )

    def _on_function_call(self) -> bytes:
        # FunctionCall names a function by OID with no SQL text for the engine to
        # judge, so it is refused; the substitute Query yields the same E then Z.
        verdict = Verdict(
            action="block",
            message="Warden: the FunctionCall protocol message is not allowed "
            "(call the function from SQL so policy can judge it)",
            upstream_sql="",
            audit=frozen({"kind": "function_call"}),
        )
        self.metrics.decisions.observe(0.0)
        self.pending.append(_Exec(None, True))
        refusal = m.query(self._refuse(verdict))
        return refusal + self._probe_after(False) if self.dirty else refusal

    def _refuse(
        self,
        verdict: Verdict,
        *,
        sqlstate: str | None = None,
        message: str | None = None,
        outcome: str | None = None,
        approval_id: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> bytes:
        """Record the refusal and return the marker statement that stands in for it.

        Its HINT fits it: the approval request's address for a hold, the deciding
        guardrail's own words, else the general one (a syntax error has none: it is
        the server's own error)."""
        held = verdict.action == REVIEW
        error = verdict.error if message is None and sqlstate is None else None
        self._refusal_seq += 1
        if error is not None:
            # The server's own answer (a syntax error): no Warden hint, its position.
            self._refusals[self._refusal_seq] = m.error_response(
                sqlstate=error[0], message=error[1], position=error[2]
            )
        else:
            if message is None:
                message = (
                    f"{verdict.message} (this statement needs approval, but approval could "
                    "not be requested: no approvals service is configured; it did not run)"
                    if held
                    else verdict.message
                )
            if sqlstate is None:
                sqlstate = SQLSTATE_HELD if held else SQLSTATE_BLOCKED
            self._refusals[self._refusal_seq] = m.error_response(
                sqlstate=sqlstate,
                message=message,
                detail=detail,
                hint=hint or verdict.hint or _HINT,
            )
        if len(self._refusals) > 10_000:  # a client that never reads its results
            self._refusals.pop(next(iter(self._refusals)))
        self._record(
            verdict,
            outcome or ("held" if held else "blocked"),
            None,
            0,
            sqlstate if held else None,
            approval_id,
        )
        return b'SELECT "' + self._marker + str(self._refusal_seq).encode() + b'"'

    # ---- approval holds -------------------------------------------------------

    def _hold_start(self, hold: Hold) -> None:
        """Stop handling this client's messages until the approval exchange is over."""
        # Held as soon as decided, with nothing awaited in between: the verdict is
        # the current generation's.
        hold.generation = self.policy.generation
        self.hold = hold
        hold.task = asyncio.get_running_loop().create_task(self._hold_run(hold))
        hold.task.add_done_callback(lambda task: self._hold_done(hold, task))

    def _hold_done(self, hold: Hold, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            return
        if self.closed:  # the client went away while held
            self._record(hold.verdict, "held", None, 0, "connection_closed", hold.request_id)
            return
        self._hold_end(hold, holds.canceled(hold))

    async def _hold_run(self, hold: Hold) -> None:
        audit = self.audit
        ruling = await holds.rule(
            self.approvals,
            hold,
            identity=self.identity.name,
            base_event=self.base_event,
            accepting=lambda: audit.accepting,
            who=self._who(),
            tell=lambda text: self.client.write(m.notice_response(text)),
            codec=self.codec,
            estimator=self.estimator,
            search_path=self.state.search_path,
            max_wait=self.hold_wait,
        )
        self._hold_end(hold, ruling)

    def _hold_end(self, hold: Hold, ruling: Ruling) -> None:
        """Send what the held message became under ``ruling``."""
        if ruling.approved is None:
            message = self._hold_refusal(
                hold, ruling.sqlstate, ruling.message, ruling.outcome, ruling.detail, ruling.hint
            )
            self._hold_release(hold, message)
            return
        if hold.generation != self.policy.generation and not self.closed:
            refusal = self._hold_judged_again(hold, ruling.approved)
            if refusal is not None:
                self._hold_release(hold, refusal)
                return
        message = self._hold_approved(hold, ruling.approved)
        # (Not when nothing is sent: the server skipping to a Sync, see _hold_approved.)
        copy = bool(message) and hold.simple and "copy_from" in hold.verdict.kinds
        self._hold_release(hold, message, hold.verdict.barrier, copy)

    def _hold_judged_again(self, hold: Hold, state: ApprovalState) -> bytes | None:
        """An approval that came after the bundle changed: the held verdict is from
        rules no longer in force (an emergency block may have arrived meanwhile), so
        the statement is judged again under the current ones. Allowed, it runs. Still
        reviewed with the very facts the reviewer was shown (statement, tables,
        classifications, risk, reasons), the approval stands. Either way the new
        verdict runs, its SQL for upstream included. Reviewed with other facts (a
        higher risk, another rule, another table), it needs a new approval; blocked,
        it is refused: the message standing in for the held one. None: run
        ``hold.verdict``, now the current rules' verdict."""
        generation = self.policy.generation
        prepared = hold.prepared
        if hold.simple:
            # (A Query's hold always has its text: _query_decided holds decoded ones.)
            verdict = self._decide(hold.text, "simple")
        else:
            assert prepared is not None
            verdict = self._decide(prepared.text, "extended")
        if hold.portal and not verdict.plain and _acts_by_name(verdict):
            verdict = _named_portal_refusal(verdict)  # as _on_bind refuses it
        elif verdict.action == ALLOW or (
            verdict.action == REVIEW and verdict.approval == hold.verdict.approval
        ):
            hold.verdict = verdict
            if prepared is not None:
                # _hold_approved re-prepares it upstream when its SQL changed.
                prepared.verdict, prepared.generation = verdict, generation
            return None
        # A prepared statement keeps its old generation: every later Bind of it is
        # judged again under the rules in force.
        if verdict.action == REVIEW and verdict.approval:
            refusal = self._refuse(
                verdict,
                sqlstate=SQLSTATE_HELD,
                message=f"Warden: the rules changed while this statement waited; request "
                f"{state.id} approved it under the old ones, and under the new ones it "
                f"needs approval again (rule {holds.first_rule(verdict)}) — run it again to "
                "request one",
                outcome="held",
                approval_id=state.id,
            )
        else:
            refusal = self._refuse(
                verdict,
                approval_id=state.id,
                detail=f"approval request {state.id} was approved, but the rules changed "
                "while the statement waited and the rules in force now refuse it",
            )
        if hold.simple:
            self.pending.append(_Exec(None, True))
            return m.query(refusal)
        self.portals[hold.portal] = None
        return m.build_parse(self._refusal_name, refusal, b"\x00\x00")

    def _hold_refusal(
        self,
        hold: Hold,
        sqlstate: str,
        message: str,
        outcome: str,
        detail: str | None = None,
        hint: str | None = None,
    ) -> bytes:
        """The marker statement standing in for a held message that will not run."""
        marker = self._refuse(
            hold.verdict,
            sqlstate=sqlstate,
            message=message,
            outcome=outcome,
            approval_id=hold.request_id,
            detail=detail,
            hint=hint,
        )
        if hold.simple:
            self.pending.append(_Exec(None, True))
            return m.query(marker)
        # A failing Parse of a statement name nobody uses stands in for the Bind:
        # the server errors, discards up to Sync, and keeps the client's prepared
        # statement.
        self.portals[hold.portal] = None
        return m.build_parse(self._refusal_name, marker, b"\x00\x00")

    def _hold_approved(self, hold: Hold, state: ApprovalState) -> bytes:
        """The held statement as it runs now: the engine's upstream text, as for allow."""
        verdict = hold.verdict._replace(approval_id=state.id)
        sql = verdict.upstream_sql.encode(self.codec or "utf-8")
        if hold.simple:
            if self._discarding:
                # A failed extended batch's error came while it was held: the server
                # skips to a Sync, this Query too (as in _query_decided).
                self._record(verdict, "error", None, 0, "skipped", state.id)
                return b""
            self.pending.append(self._exec(verdict, True, self._base_json))
            return m.query(sql)
        assert hold.bind is not None
        self.portals[hold.portal] = _STALE_PORTAL if self._discarding else _portal_verdict(verdict)
        prepared = hold.prepared
        if (
            prepared is not None
            and prepared.upstream != verdict.upstream_sql
            and self.statements.get(hold.name) is prepared
        ):
            generation = prepared.generation
            return self._reprepare(hold.name, prepared, generation) + hold.bind
        return hold.bind

    def _hold_release(
        self, hold: Hold, message: bytes, barrier: bool = False, copy: bool = False
    ) -> None:
        """Send what the held message became, then the messages that queued behind it
        (after the state probe, when that message may have changed the state)."""
        if self.hold is not hold or self.closed:
            return
        self.hold = None
        if copy:
            self._write(message)
            self._copy_start()  # the server wants the data next, not a probe
            return
        if hold.simple and (barrier or self.dirty):
            message += self._probe_after(False)
        self._write(message)
        self._release_queued()

    def _release_queued(self) -> None:
        """Handle the client messages queued behind a hold or a barrier, if none is left."""
        if self.hold is not None:
            return
        queued, self._held_data = bytes(self._held_data), bytearray()
        if queued:
            self.client_data(queued)
        if self.hold is None and not self.closed:
            self._resume_client(_PAUSED_BY_HOLD)

    def _copy_start(self) -> None:
        """The statement just queued (``pending[-1]``) may start a copy: hold."""
        self.hold = _COPY_START
        self._copy_item = self.pending[-1]

    def _copy_end(self) -> None:
        """The copy ended, or never started: the client's messages are ordinary again."""
        self._copy_item = None
        self.hold = None
        self._release_queued()

    def _copy_in(self) -> None:
        """The server copies in (CopyInResponse): the client's messages that waited
        are handled as the copy's, and the client is read again."""
        self.hold = _COPY_IN
        queued, self._held_data = bytes(self._held_data), bytearray()
        if queued:
            self._copy_data(queued)
        if not self.closed:
            self._resume_client(_PAUSED_BY_HOLD)

    def _copy_data(self, data: bytes) -> None:
        """The client's messages while the server copies in (see ``_CopyHold``)."""
        if self.cbuf:
            self.cbuf += data
            if len(self.cbuf) < self._cneed:
                return
            data = bytes(self.cbuf)
            self.cbuf = bytearray()
        out: list[bytes] = []
        pos, n = 0, len(data)
        try:
            while n - pos >= 5:
                kind = data[pos]
                length = _unpack_i32(data, pos + 1)[0]
                if (
                    length < 4
                    or length > self.max_message
                    or (kind in m.SMALL_TYPES and length > m.SMALL_MESSAGE_LIMIT)
                ):
                    raise m.ProtocolViolation(f"invalid message length {length}")
                end = pos + 1 + length
                if end > n:
                    break
                if kind == 0x64:  # d CopyData
                    out.append(data[pos:end])
                elif kind in (0x63, 0x66):  # c CopyDone, f CopyFail: the copy ends
                    out.append(data[pos:end])
                    pos = end
                    self.hold = None
                    self._copy_item = None
                    break
                elif kind not in (_S, 0x48):  # a Sync or a Flush (H) the server would ignore
                    raise m.ProtocolViolation(
                        f"message type {chr(kind)!r} while copying in (only CopyData, "
                        "CopyDone and CopyFail)"
                    )
                pos = end
        except m.ProtocolViolation as exc:
            self._violation(out, exc)
            return
        if out:
            self._write(b"".join(out))
        rest = data[pos:]
        if self.hold is None:
            if rest:
                self.client_data(rest)
        elif rest:
            self.cbuf = bytearray(rest)
            self._cneed = 5 if len(rest) < 5 else 1 + _unpack_i32(rest, 1)[0]

    def cancel_hold(self) -> bool:
        """A CancelRequest for this session: end a hold; False when nothing is held."""
        hold = self.hold
        if hold is None or hold.task is None or hold.task.done():
            return False
        hold.task.cancel()
        return True

    def _pause_client(self, reason: int) -> None:
        if not self._paused:
            self.client.pause_reading()
        self._paused |= reason

    def _resume_client(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused:
            self.client.resume_reading()

    def _record(
        self,
        verdict: Verdict,
        outcome: str,
        rows: int | None,
        duration_us: int | None,
        sqlstate: str | None,
        approval_id: str | None = None,
        base: str = "",
        event: str | None = None,
        journal: int = 0,
    ) -> None:
        """Append one statement event; only the per-execution fields are encoded here.
        ``event``/``journal``: the id and journal file of its intent (strict mode)."""
        now = now_us()
        line = statement_line(
            event or event_id.at_ms(now // 1000), now, verdict, outcome, rows, duration_us,
            sqlstate, approval_id, base or self._base_json,
        )  # fmt: skip
        self.audit.append_line(line)
        if journal:
            self.audit.resolved(journal)
        self.metrics.recorded(verdict.action)

    # ---- upstream -> client -------------------------------------------------

    def _client_data_answered(self, data: bytes) -> None:
        self._answered = 0
        self.client_data(data)

    def _upstream_data_bounded(self, data: bytes) -> None:
        self._answered += len(data)
        if self._answered <= self.answer_limit:
            self.upstream_data(data)
            return
        # Ended at a message boundary, so that the client reads the reason: the rest of
        # a row already on its way goes first (upstream_data let it start only if it
        # fitted whole), nothing after it does.
        if self.uskip:
            self.upstream_data(data[: self.uskip])
        self._answer_too_large()

    def _answer_too_large(self) -> None:
        self.terminate(
            "54000",
            f"Warden: the answer to one statement passed {self.answer_limit} bytes, the "
            "limit of the MCP server's sessions; the session ended",
        )

    def upstream_data(self, data: bytes) -> None:
        if self.ubuf:
            data = self.ubuf + data
            self.ubuf = b""
        n = len(data)
        pos = 0
        if self.uskip:
            if self.uskip >= n:
                self.uskip -= n
                self.client.write(data)
                return
            pos = self.uskip
            self.uskip = 0
        start = 0
        parts: list[bytes] = []
        stateful, rows, handler = self._up_mode
        too_large = False
        while n - pos >= 5:
            kind = data[pos]
            end = pos + 1 + _unpack_i32(data, pos + 1)[0]
            if kind in rows:
                if end > n:  # stream a large row through instead of buffering it
                    if self.answer_limit and self._answered + end - n > self.answer_limit:
                        too_large = True  # none of it relayed: _answer_too_large below
                        break
                    self.uskip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                break
            if kind in stateful:
                replacement = handler(kind, data, pos, end)
                if replacement is not None:
                    parts.append(data[start:pos])
                    parts.append(replacement)
                    start = end
                stateful, rows, handler = self._up_mode
            pos = end
        if pos < n:
            self.ubuf = data[pos:]
        if start == 0 and not parts:
            if pos:
                self.client.write(data[:pos] if pos < n else data)
        else:
            parts.append(data[start:pos])
            self.client.write(b"".join(parts))
        if too_large:
            self._answer_too_large()

    def _set_up_mode(self) -> None:
        if self._probing is not None:
            self._up_mode = (_UP_ALL, _NO_ROWS, self._on_probe)
        elif self._reparsing is not None:
            self._up_mode = (_UP_STATEFUL_REPREPARE, _UP_ROWS, self._on_upstream)
        else:
            self._up_mode = (_UP_STATEFUL, _UP_ROWS, self._on_upstream)

    def _on_upstream(self, kind: int, data: bytes, pos: int, end: int) -> bytes | None:
        pending = self.pending
        if kind == 0x47:  # G CopyInResponse
            if self.hold is not _COPY_START:
                # A copy the session did not see start: its count of replies and its
                # reading of the client's messages can no longer be trusted.
                self.terminate("08P01", "Warden lost track of a COPY; the session ended")
                return b""
            self._copy_in()
            return None
        if kind == 0x43:  # C CommandComplete
            if (
                self._sql_prepared is not None
                and data[pos + 5 : end] in _DEALLOCATED_ALL
                and self._sql_prepares == self._sql_prepares_at_deallocate
            ):
                # Every SQL-prepared statement is gone, and none was decided since.
                self._sql_prepared = None
            if pending and pending[0] is not _SYNC:
                head = pending[0]
                rows = m.command_rows(data[pos + 5 : end])
                if rows is not None:
                    head.rows = (head.rows or 0) + rows
                if not head.is_query:
                    self._finish(pending.popleft(), "allowed")
                    if pending and type(pending[0]) is _Probe:
                        self._next_probe()
                if head is self._copy_item and self.hold is _COPY_START:
                    self._copy_end()  # done without copying in (a server-side COPY)
        elif kind == 0x33:  # 3 CloseComplete
            if pending and type(pending[0]) is _Closing:
                closing = pending.popleft()
                self._maybe_held.discard(closing.name)
                if closing.prepared is not None:  # the sidecar's own: the client sent no Close
                    self._reparsing = closing
                    self._set_up_mode()
                    return b""
        elif kind == 0x31:  # 1 ParseComplete, watched only after a re-prepare's Close
            closing = self._reparsing
            self._reparsing = None
            self._set_up_mode()
            if closing is not None and closing.prepared is not None:
                prepared = closing.prepared
                if prepared.reparse is closing:  # else a later re-prepare is on its way
                    prepared.reparse = None
                    prepared.upstream = closing.sql
                    prepared.generation = closing.generation
                return b""
        elif kind == 0x5A:  # Z ReadyForQuery
            if self._reparsing is not None:
                self._reprepare_failed()
            self.status = data[pos + 5 : pos + 6]
            if self._cursors and self.status == b"I":
                # The transaction ended: only WITH HOLD cursors are still open.
                self._cursors = {k: v for k, v in self._cursors.items() if v[1]}
            while pending:
                head = pending.popleft()
                if head is _SYNC:
                    break
                self._finish(head, "error" if head.error or not head.is_query else "allowed")
                if head.is_query:
                    break
            if not pending:
                self._refusals.clear()
            elif type(pending[0]) is _Probe:
                self._next_probe()
        elif kind == 0x45:  # E ErrorResponse
            if self._reparsing is not None:
                # A re-prepare's Parse that failed: the statement is gone upstream.
                self._reprepare_failed()
            replacement = None
            at = data.find(self._marker, pos, end) if self._refusals else -1
            if at >= 0:
                digits = at + len(self._marker)
                stop = digits
                while stop < end and 0x30 <= data[stop] <= 0x39:
                    stop += 1
                if stop > digits:
                    replacement = self._refusals.pop(int(data[digits:stop]), None)
            sqlstate = m.error_fields(data[pos + 5 : end]).get("C", "")
            failed: Any = pending[0] if pending else _SYNC
            if failed is _SYNC or not failed.is_query:
                # Extended protocol: the server now skips to Sync, so the Executes
                # queued behind this one will not run either, nor the Parse, Bind
                # and Close messages between them: what the server holds under each
                # name is no longer certain, up to the Sync that ends the skipping.
                self._invalidate_batch()
                self._discarding = _SYNC not in pending
            if failed is not _SYNC:
                failed.error = sqlstate
                verdict = failed.verdict
                if replacement is None and verdict is not None and verdict.redact_errors:
                    # A failing row or a duplicate key in DETAIL is a raw value of a
                    # masked column: only the error's type and message go back.
                    replacement = m.error_without_values(data[pos + 5 : end])
                if not failed.is_query:
                    self._finish(pending.popleft(), "error")
                    # Every message up to the Sync is skipped by the server, a Query
                    # included, and the sidecar's own probe.
                    skipped_probe = False
                    while pending and pending[0] is not _SYNC:
                        skipped = pending.popleft()
                        skipped.error = "skipped"
                        if type(skipped) is _Probe:
                            skipped_probe = True
                        else:
                            self._finish(skipped, "error")
                    if skipped_probe:
                        self._probe_skipped()
            copy = self._copy_item
            if copy is not None and (failed is copy or copy not in pending):
                # The copy did not start, or the server left it: its own error says so,
                # or an earlier one in its extended batch made the server skip it (an
                # earlier statement's error alone does not: the COPY still runs).
                self._copy_end()
            return replacement
        elif kind == 0x53:  # S ParameterStatus
            self._on_parameter_status(data[pos + 5 : end - 1])
        elif (
            kind in (0x73, 0x49)  # s PortalSuspended, I EmptyQueryResponse
            and pending
            and pending[0] is not _SYNC
            and not pending[0].is_query
        ):
            self._finish(pending.popleft(), "allowed")
            if pending and type(pending[0]) is _Probe:
                self._next_probe()
        return None

    def _on_parameter_status(self, body: bytes) -> None:
        name, _, value = body.partition(b"\x00")
        if name == b"standard_conforming_strings":
            self._track(standard_conforming_strings=value == b"on")
        elif name == b"client_encoding":
            self._track(client_encoding=value.decode("ascii", "replace"))
        elif name == b"application_name":
            self.base_event["application_name"] = application_name(value.decode("utf-8", "replace"))
            self._base_json = encode_base(self.base_event)

    def _track(self, **changes: Any) -> None:
        """A state the server reports. Changed with no barrier sent (``dirty``): code on
        the server (a trigger, a function) did it while the sidecar may already have
        decided what follows under the old state, so the session ends."""
        if self._set_state(**changes) and not self.dirty:
            log.warning("session state of %s changed by server-side code", self._who())
            self.terminate(
                "08006",
                "Warden: code on the server (a trigger or function) changed this session's "
                "settings; the session ended",
            )

    def _set_state(self, **changes: Any) -> bool:
        state = dataclasses.replace(self.state, **changes)
        if state == self.state:
            return False  # keep the object: prepared statements compare it by identity
        self.state = state
        self.codec = encodings.codec_for(state.client_encoding, self._server_encoding)
        self.base_event["session_state"] = state.to_audit()
        self._base_json = encode_base(self.base_event)
        return True

    def rules_changed(self) -> None:
        """The rules changed: a portal (or a cursor by its protocol name) bound under the
        old ones, still open in a transaction, is refused rather than read. Prepared
        statements and SQL cursors are checked by their generation when used."""
        for portal in self.portals:
            self.portals[portal] = _STALE_PORTAL

    def _invalidate_batch(self) -> None:
        """After an error in an extended-protocol batch: prepare every statement again
        before its next Bind (Close, then Parse of the text Warden decided), and refuse
        the portals, so nothing runs that the server kept and Warden did not decide."""
        for prepared in self.statements.values():
            _forget_upstream(prepared)
        for portal in self.portals:
            self.portals[portal] = _STALE_PORTAL

    # ---- the state probe ------------------------------------------------------

    def _next_probe(self) -> None:
        """Start reading the probe's replies (at the head of ``pending``): every earlier
        reply is through."""
        if self._probing is None:
            self._probing = self.pending[0]
            self._set_up_mode()

    def _on_probe(self, kind: int, data: bytes, pos: int, end: int) -> bytes:
        """One reply to the probe: swallowed; the DataRow read, the end recognised."""
        probe = self._probing
        assert probe is not None
        if kind == 0x44:  # D DataRow
            probe.row = st.parse_row(data[pos + 5 : end])
        elif kind == 0x45:  # E ErrorResponse
            probe.error = m.error_fields(data[pos + 5 : end]).get("C", "")
            if probe.extended:
                # The batch the client is waiting on has now failed because of the
                # sidecar's own statement; nothing honest can be said to the client.
                self._probe_end(probe)
                self.terminate(
                    "08006", "Warden could not confirm the session state; the session ended"
                )
                return b""
        elif kind == 0x4E:  # N NoticeResponse: not one of the replies counted
            return b""
        elif kind == 0x53:  # S ParameterStatus: the client sees it too
            self._on_parameter_status(data[pos + 5 : end - 1])
            return data[pos:end]
        elif kind == 0x5A:  # Z ReadyForQuery: the simple probe's end
            self.status = data[pos + 5 : pos + 6]
            self._probe_end(probe)
            self._probe_answered(probe)
            return b""
        if probe.extended:
            probe.replies += 1
            if probe.replies == st.EXTENDED_REPLIES:
                self._probe_end(probe)
                self._probe_answered(probe)
        return b""

    def _probe_end(self, probe: _Probe) -> None:
        if self.pending and self.pending[0] is probe:
            self.pending.popleft()
        self._probing = None
        self._set_up_mode()

    def _probe_answered(self, probe: _Probe) -> None:
        row = probe.row
        if row is not None and probe.error is None:
            schemas = st.parse_name_array(row[0])
            self._track(
                client_encoding=row[1],
                standard_conforming_strings=row[2] == "on",
                search_path=schemas,
            )
            if self.closed:
                return
            if schemas is not None and not probe.extended and self.status == b"I":
                self.dirty = False  # outside a transaction nothing can undo it
        elif self.status != b"E":
            # Only an aborted transaction (which runs nothing but its end) may
            # leave the state unconfirmed; anything else ends the session.
            self.terminate("08006", "Warden could not confirm the session state; the session ended")
            return
        self._release_barrier()

    def _probe_skipped(self) -> None:
        """The probe was discarded with its batch: the state is still unconfirmed, and
        the batch's Sync (a barrier while ``dirty``) will ask again."""
        self._release_barrier()

    def _release_barrier(self) -> None:
        if isinstance(self.hold, _Barrier) and not self.closed:
            self.hold = None
            self._release_queued()

    def _reprepare_failed(self) -> None:
        closing = self._reparsing
        if closing is not None:
            self._reparsing = None
            self._set_up_mode()
            if closing.prepared is not None:
                _forget_upstream(closing.prepared)

    def _finish(self, item: _Exec, outcome: str) -> None:
        verdict = item.verdict
        if verdict is None:  # a refusal, recorded when it was decided
            return
        took = (time.perf_counter_ns() - item.started) // 1000  # microseconds
        approval_id = verdict.approval_id
        if approval_id is not None and outcome == "allowed":
            outcome = "approved"
        # _record inline: this runs once for every statement that reached the server.
        now = now_us()
        line = statement_line(
            item.event or event_id.at_ms(now // 1000), now, verdict, outcome, item.rows, took,
            item.error, approval_id, item.base or self._base_json,
        )  # fmt: skip
        self.audit.append_line(line)
        if item.journal:
            self.audit.resolved(item.journal)
        self.metrics.recorded(verdict.action)

    # ---- lifetime -----------------------------------------------------------

    def upstream_lost(self) -> None:
        if self.closed:
            return
        log.warning("upstream connection lost for %s", self._who())
        self.terminate("08006", "Warden: the connection to the upstream database was lost")

    def terminate(self, sqlstate: str, message: str) -> None:
        """End the session from the sidecar's side, telling the client why."""
        if not self.closed:
            self.client.write(
                m.error_response(severity="FATAL", sqlstate=sqlstate, message=message)
            )
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        hold, self.hold = self.hold, None
        if hold is not None and hold.task is not None:
            hold.task.cancel()  # records the held statement as ended by the disconnect
        for item in self.pending:
            if item is not _SYNC:
                item.error = item.error or "connection_closed"
                self._finish(item, "error")
        self.pending.clear()
        self.client.close()
        self.upstream.close()
        self.on_close(self)

    def _who(self) -> str:
        return f"{self.identity.name}@{self.base_event.get('client_addr')}"


class ClientProtocol(asyncio.Protocol):
    """Transport callbacks for the client side; flow control pauses the upstream."""

    def __init__(self, session: Session) -> None:
        self.session = session
        # The loop looks data_received up once (uvloop, at set_protocol): bound
        # straight to the session (or the native relay), each read skips one Python call.
        self.data_received = session.client_entry  # type: ignore[method-assign,assignment]

    def data_received(self, data: bytes) -> None:
        self.session.client_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()

    def pause_writing(self) -> None:
        self.session.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.session.upstream.resume_reading()


class UpstreamProtocol(asyncio.Protocol):
    """Transport callbacks for the upstream side; flow control pauses the client."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.data_received = session.upstream_entry  # type: ignore[method-assign,assignment]

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost()

    def pause_writing(self) -> None:
        self.session._pause_client(_PAUSED_BY_UPSTREAM)

    def resume_writing(self) -> None:
        self.session._resume_client(_PAUSED_BY_UPSTREAM)
