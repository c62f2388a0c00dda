"""The listening side: startup packets, TLS, client authentication, cancel requests.

Each accepted connection runs one coroutine through the startup phase (SSL and
GSSENC negotiation, a sanitised StartupMessage, SCRAM-SHA-256 against the
bundle's verifiers, the upstream login) and then hands both transports to a
``Session``, whose callbacks carry the rest of the connection. The sidecar
issues its own BackendKeyData per client and maps it to the upstream backend,
so a CancelRequest reaches the right query and nobody can cancel by guessing
upstream pids. When several worker processes serve one port (``CancelRoute``),
the key's process id also names the worker that issued it, and a CancelRequest
that reaches another worker is handed to that one; the failed sign-ins each
worker counts are then kept by the parent process (``SignInLimits``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from sidecar import encodings
from sidecar.proxy import messages as m
from sidecar.proxy.approvals import ApprovalGate
from sidecar.proxy.audit_event import (
    application_name,
    login_event,
    session_event,
    sign_in_name,
)
from sidecar.proxy.hold import Estimator
from sidecar.proxy.policy import Credential, Identity, Policy
from sidecar.proxy.scram import ScramError, ScramServer, Verifier, stored_key
from sidecar.proxy.session import AuditSink, ClientProtocol, Session, UpstreamProtocol
from sidecar.proxy.upstream import UpstreamError, UpstreamTarget, connect, send_cancel

if TYPE_CHECKING:
    from sidecar.metrics import Metrics

log = logging.getLogger("warden.sidecar.proxy")

# Startup parameters forwarded to the upstream. Anything else a client sends is
# dropped: a startup GUC (search_path, role, session_replication_role...) could
# change what a statement the engine approved actually does.
FORWARDED_PARAMS = {
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
}
_FALSY = {"", "0", "false", "off", "no"}

# Warden's own settings, the only ones the startup ``options`` parameter may carry
# (``-c warden.hold_wait=0``, as libpq sends ``PGOPTIONS``); nothing in ``options``
# reaches the upstream. ``warden.hold_wait``: the longest the client will wait for a
# reviewer, in seconds; it can only shorten the bundle's hold time, so any client may
# set it. ``warden.client_addr`` is taken only on the private listener, from the
# sidecar's own MCP server: the address its agent connected from, for the sign-in
# limits and the audit trail.
CLIENT_OPTIONS = frozenset({"warden.hold_wait"})
INTERNAL_OPTIONS = frozenset({"warden.client_addr"})
MAX_HOLD_WAIT = 3600


def _split_options(raw: str) -> list[str]:
    """The server's reading of ``options``: words split at whitespace, a backslash
    taking the next character literally (``pg_split_opts``)."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for char in raw:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(char)
    if word:
        words.append("".join(word))
    return words


def warden_options(raw: str, *, internal: bool = False) -> dict[str, str]:
    """The Warden settings a startup ``options`` value gives (``-c name=value``,
    ``-cname=value`` or ``--name=value``); raises ``_Refused`` for anything else, so
    no setting reaches the upstream this way."""
    words = _split_options(raw)
    allowed = CLIENT_OPTIONS | INTERNAL_OPTIONS if internal else CLIENT_OPTIONS
    found: dict[str, str] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c" and index + 1 < len(words):
            index += 1
            setting = words[index]
        elif (word.startswith("-c") and len(word) > 2) or word.startswith("--"):
            setting = word[2:]
        else:
            setting = ""
        name, equals, value = setting.partition("=")
        name = name.lower().replace("-", "_")
        if not equals or name not in allowed:
            raise _Refused(
                "42501",
                "Warden: the startup 'options' parameter may only set "
                + ", ".join(sorted(CLIENT_OPTIONS)),
            )
        found[name] = value
        index += 1
    wait = found.get("warden.hold_wait")
    if wait is not None and not (wait.isdigit() and int(wait) <= MAX_HOLD_WAIT):
        raise _Refused(
            "22023", f"Warden: warden.hold_wait must be whole seconds from 0 to {MAX_HOLD_WAIT}"
        )
    return found


def _no_delay(transport: asyncio.BaseTransport) -> None:
    # Every reply is one small write that the peer is waiting for; Nagle's
    # algorithm would hold it back for the previous segment's ACK. asyncio and
    # uvloop set this on plain TCP already; this also covers TLS transports.
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def fake_salt_key(state_dir: Path) -> bytes:
    """The sidecar's key for unknown identities' SCRAM salts, made once and kept in
    its state directory (readable by it alone). A key per process showed a name a
    new salt on each worker and after each restart, where a real identity's salt
    never changes: asking a few times told which names exist (a review's finding)."""
    path = state_dir / "scram-unknown-salt.key"
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = state_dir / f".scram-unknown-salt.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        try:
            os.link(fresh, path)  # whole or not at all; the first worker's wins
        except FileExistsError:
            pass
        finally:
            fresh.unlink()
        key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path} is not a 32-byte key; remove it and restart the sidecar")
    return key


def _still_usable(identity: Identity | None, credential: str, now: datetime) -> bool:
    """Whether ``identity`` (None: gone from the bundle) still holds ``credential``
    (the id of the token a session signed in with), unexpired."""
    return identity is not None and any(
        c.id == credential for c in identity.usable_credentials(now)
    )


class SignInPair(NamedTuple):
    """Whose failed sign-ins are counted together."""

    identity: str  # the name signed in as
    # The client's address; of an IPv6 address its /64, which one host or network
    # holds whole (a guesser would otherwise take a fresh address for every guess).
    address: str
    # The name is an identity of the bundle. Made-up names are counted in a table of
    # their own: filling it, which costs a guesser nothing, cannot push a real
    # identity's count out (a review's finding).
    known: bool


def sign_in_address(address: str) -> str:
    """The address a sign-in is counted under (``SignInPair.address``)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a Unix socket's peer, or the MCP server's name for its client
    if not isinstance(ip, ipaddress.IPv6Address):
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class LoginThrottle:
    """Failed sign-ins per (identity, client address). After ``FREE`` failures each
    further attempt of that pair is refused until a delay that doubles with every
    failure (to ``CAP``) has passed; the count is forgotten once the pair has had no
    failure for ``WINDOW`` seconds. (It was forgotten a minute after the first one: an
    attacker who waited out each delay started again with five free guesses, about
    eleven a minute without end; a review's finding.) Keyed by the pair, so an
    attacker elsewhere cannot lock a service account out; bounded in memory."""

    FREE = 5
    WINDOW = 900.0
    BASE = 1.0
    CAP = 300.0
    MAX_PAIRS = 10_000

    def __init__(self) -> None:
        # pair -> [failures, last failure, refused until], by SignInPair.known; each
        # table holds up to MAX_PAIRS.
        self._tables: dict[bool, dict[SignInPair, list[float]]] = {True: {}, False: {}}

    def blocked_for(self, pair: SignInPair, now: float | None = None) -> float:
        entry = self._tables[pair.known].get(pair)
        if entry is None:
            return 0.0
        return max(0.0, entry[2] - (time.monotonic() if now is None else now))

    def failed(self, pair: SignInPair, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        table = self._tables[pair.known]
        entry = table.get(pair)
        if entry is None or self._forgotten(entry, now):
            if len(table) >= self.MAX_PAIRS:
                self._make_room(table, now)
            entry = table[pair] = [0.0, now, 0.0]
        entry[0] += 1
        entry[1] = now
        over = entry[0] - self.FREE
        if over > 0:
            entry[2] = now + min(self.CAP, self.BASE * 2 ** (over - 1))

    def _forgotten(self, entry: list[float], now: float) -> bool:
        return now - entry[1] > self.WINDOW and now >= entry[2]

    def _make_room(self, table: dict[SignInPair, list[float]], now: float) -> None:
        """Bounded in memory: forget the pairs whose count has lapsed, then those with
        the fewest failures, oldest first. (It forgot those whose delay ended first:
        made-up names, each failing a few times, pushed out a pair of many failures
        once its delay had run out, and its guesser began again with five free
        guesses; a review's finding. Made-up names now fill a table of their own, and
        in the identities' table a pair's count goes only after every pair with
        fewer: the guesser would need that many identity and network pairs.)"""
        for pair in [pair for pair, entry in table.items() if self._forgotten(entry, now)]:
            del table[pair]
        if len(table) < self.MAX_PAIRS * 0.9:
            return
        for pair in sorted(table, key=lambda pair: (table[pair][0], table[pair][1]))[
            : self.MAX_PAIRS // 10
        ]:
            del table[pair]

    def succeeded(self, pair: SignInPair) -> None:
        self._tables[pair.known].pop(pair, None)

    def attempt(self, pair: SignInPair, now: float | None = None) -> float:
        """Just before a guess is judged: how long ``pair`` must still wait (nothing is
        counted then), else 0 with the guess counted as a failure already, which its
        success undoes (``succeeded``). Checking and counting in one step is what keeps
        guesses judged side by side, on any worker, within the limits."""
        now = time.monotonic() if now is None else now
        wait = self.blocked_for(pair, now)
        if wait == 0:
            self.failed(pair, now)
        return wait


class SignInLimitsUnavailable(Exception):
    """The shared sign-in limits could not be asked: the login is refused (fail closed)."""


class SignInLimits(Protocol):
    """Where failed sign-ins are counted: this process's ``LoginThrottle``, or the one
    the parent of several workers holds for all of them (``sidecar.workers``)."""

    async def blocked_for(self, pair: SignInPair) -> float: ...

    async def failed(self, pair: SignInPair) -> None: ...

    async def succeeded(self, pair: SignInPair) -> None: ...

    async def attempt(self, pair: SignInPair) -> float: ...


class LocalSignInLimits:
    """A ``LoginThrottle`` of this process: the only one when a single process serves."""

    def __init__(self) -> None:
        self.throttle = LoginThrottle()

    async def blocked_for(self, pair: SignInPair) -> float:
        return self.throttle.blocked_for(pair)

    async def failed(self, pair: SignInPair) -> None:
        self.throttle.failed(pair)

    async def succeeded(self, pair: SignInPair) -> None:
        self.throttle.succeeded(pair)

    async def attempt(self, pair: SignInPair) -> float:
        return self.throttle.attempt(pair)


@dataclass(frozen=True, slots=True)
class CancelRoute:
    """This process is worker ``index`` of ``count`` serving one port.

    The kernel gives a CancelRequest's connection to any worker, but only the one
    that issued the key knows its upstream backend: every key it issues has a
    process id equal to ``index`` modulo ``count``, and ``forward(owner, body)``
    hands a request for another worker's key to that worker, which checks the
    whole key itself. The secret stays 31 random bits.
    """

    index: int = 0
    count: int = 1
    forward: Callable[[int, bytes], Awaitable[None]] | None = None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    database: str
    datasource: str
    sidecar_id: str
    upstream: UpstreamTarget
    tls: ssl.SSLContext | None = None
    cleartext_over_tls: bool = False
    max_message: int = 256 * 1024 * 1024
    max_statement: int = 8 * 1024 * 1024
    # A superuser or otherwise privileged upstream role is refused unless allowed.
    allow_privileged_upstream: bool = False
    auth_timeout: float = 30.0
    native_relay: bool = True  # the C relay of hot messages, when built (sidecar/proxy/_relay.c)
    # The most the upstream may send in answer to one message of a session on the
    # private listener (the MCP server's), which holds whole results in memory.
    internal_answer_bytes: int = 64 * 1024 * 1024


# The iteration count an unknown name's made-up verifier has (the control plane's).
FAKE_ITERATIONS = 4096
# Cleartext sign-ins whose key derivation may be under way or waiting at once.
MAX_DERIVING = 16


def _proven_by(creds: list[Credential], password: str, fake_salt: bytes) -> Credential | None:
    """The credential a cleartext ``password`` proves, if any: one derivation per salt
    and count (the control plane gives an identity's tokens one salt). For a name with
    none, one derivation with its made-up salt all the same, so that the answer takes
    as long as for a real identity and does not tell which names exist."""
    if not creds:
        stored_key(password, fake_salt, FAKE_ITERATIONS)
        return None
    derived: dict[tuple[bytes, int], bytes] = {}
    for credential in creds:
        verifier = credential.verifier
        shape = (verifier.salt, verifier.iterations)
        key = derived.get(shape)
        if key is None:
            key = derived[shape] = stored_key(password, *shape)
        if hmac.compare_digest(key, verifier.stored_key):
            return credential
    return None


class _Refused(Exception):
    """Fail the startup with a FATAL ErrorResponse carrying this SQLSTATE."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class _Throttled(_Refused):
    """A sign-in refused by the limits, before its token is judged (not a failure)."""


class ProxyServer:
    def __init__(
        self,
        *,
        settings: ProxySettings,
        policy: Policy,
        audit: AuditSink,
        metrics: Metrics,
        approvals: ApprovalGate | None = None,
        sign_in_limits: SignInLimits | None = None,
        cancel_route: CancelRoute | None = None,
        estimator: Estimator | None = None,
        fake_salt_key: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.audit = audit
        self.metrics = metrics
        self.approvals = approvals
        self.estimator = estimator
        self.sessions: set[Session] = set()
        self._cancel_keys: dict[tuple[int, int], tuple[int, int]] = {}
        self._cancel_sessions: dict[tuple[int, int], Session] = {}
        # The key of the salt shown for an identity the bundle does not hold: the
        # sidecar's own (``fake_salt_key``), so that every worker and every restart
        # shows one salt per name, as the bundle's verifiers do for a real identity.
        self._fake_salt_key = fake_salt_key or secrets.token_bytes(32)
        # Cleartext sign-ins' key derivations: two threads, at most MAX_DERIVING at once.
        self._deriver = concurrent.futures.ThreadPoolExecutor(2, "warden-derive")
        self._deriving = 0
        self._limits = sign_in_limits or LocalSignInLimits()
        self._route = cancel_route or CancelRoute()
        self._server: asyncio.AbstractServer | None = None
        self._internal: asyncio.AbstractServer | None = None

    async def start_internal(self, path: str) -> None:
        """Listen on a Unix socket only this process's user can reach (the caller puts
        it in a directory of mode 0700): the sidecar's MCP server signs its agents in
        here, through exactly the checks every client gets, and may say which address
        its agent came from (``INTERNAL_OPTIONS``)."""
        self._internal = await asyncio.start_unix_server(
            lambda r, w: self._handle(r, w, internal=True), path, limit=2**16
        )

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        # reuse_port: the other workers listen on the same port, and the kernel
        # spreads new connections over them.
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=2**16, reuse_port=reuse_port or None
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._internal is not None:
            self._internal.close()
        for session in list(self.sessions):
            session.close()

    def policy_changed(self) -> None:
        """A new bundle: portals bound under the old rules may not run under the new."""
        for session in list(self.sessions):
            session.rules_changed()
        self.revalidate()

    def revalidate(self) -> None:
        """After a bundle change, and every few seconds: end sessions whose identity,
        or the very credential they signed in with, is gone or expired. (Another token
        of the identity does not keep alive the session of one that was revoked: a
        leaked token is revoked and replaced exactly so.)"""
        now = datetime.now(UTC)
        for session in list(self.sessions):
            current = self.policy.identity(session.identity.name)
            if not _still_usable(current, session.credential, now):
                log.info("ending session of %s: credential revoked", session.identity.name)
                session.terminate(
                    "28000", f'Warden: identity "{session.identity.name}" is no longer allowed'
                )

    # ---- startup ------------------------------------------------------------

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, internal: bool = False
    ) -> None:
        peer = writer.get_extra_info("peername")
        client_addr = peer[0] if isinstance(peer, tuple) else "local"
        try:
            await asyncio.wait_for(
                self._startup(reader, writer, client_addr, internal), self.settings.auth_timeout
            )
        except _Refused as exc:
            self._fatal(writer, exc.sqlstate, str(exc))
        except m.ProtocolViolation as exc:
            log.warning("startup protocol violation from %s: %s", client_addr, exc)
            self._fatal(writer, "08P01", f"protocol: {exc}")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ssl.SSLError):
            writer.close()
        except Exception:
            log.exception("unexpected error during startup from %s", client_addr)
            self._fatal(writer, "XX000", "Warden: internal error during login")

    def _audit_login(self, kind: str, name: str, client_addr: str) -> None:
        settings = self.settings
        self.audit.append(
            login_event(
                kind,
                name,
                datasource=settings.datasource,
                sidecar=settings.sidecar_id,
                client_addr=client_addr,
            )
        )

    def _fatal(self, writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
        if not writer.is_closing():
            writer.write(m.error_response(severity="FATAL", sqlstate=sqlstate, message=message))
            writer.close()

    async def _read_startup(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        header = await reader.readexactly(8)
        length, code = struct.unpack("!ii", header)
        if length < 8 or length > m.MAX_STARTUP_LENGTH:
            raise m.ProtocolViolation(f"invalid startup packet length {length}")
        return code, await reader.readexactly(length - 8)

    async def _startup(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client_addr: str,
        internal: bool = False,
    ) -> None:
        tls = False
        while True:
            code, body = await self._read_startup(reader)
            if code == m.SSL_REQUEST and not tls:
                if self.settings.tls is None:
                    writer.write(b"N")
                    continue
                writer.write(b"S")
                await writer.drain()
                if reader._buffer:  # type: ignore[attr-defined]
                    # Bytes sent in the clear after SSLRequest would be
                    # injected into the TLS session (CVE-2021-23222).
                    raise m.ProtocolViolation("data received before the TLS handshake")
                await writer.start_tls(self.settings.tls)
                tls = True
                continue
            if code == m.GSSENC_REQUEST:
                writer.write(b"N")
                continue
            if code == m.CANCEL_REQUEST:
                await self._cancel(body)
                writer.close()
                return
            break
        major, minor = code >> 16, code & 0xFFFF
        if major != 3:
            raise _Refused("0A000", f"unsupported frontend protocol {major}.{minor}")
        params = m.parse_startup(body)
        if minor != 0 or any(k.startswith("_pq_.") for k in params):
            unknown = [k for k in params if k.startswith("_pq_.")]
            writer.write(m.negotiate_protocol_version(0, unknown))
        identity_name = params.get("user", "")
        if not identity_name:
            raise _Refused("28000", "no user name given: connect as your Warden identity")
        options = warden_options(params.get("options", ""), internal=internal)
        client_addr = options.get("warden.client_addr", client_addr)[:64] or client_addr
        if params.get("replication", "false").lower() not in _FALSY:
            raise _Refused("42501", "Warden: replication connections are not allowed")
        # Parameter names are case-insensitive to the server, as they are here.
        encoding = next((v for k, v in params.items() if k.lower() == "client_encoding"), None)
        refusal = encodings.refusal(encoding) if encoding else None
        if refusal is not None:
            raise _Refused("42501", f"Warden: {refusal}")
        database = params.get("database") or identity_name
        if database != self.settings.database:
            raise _Refused(
                "3D000", f'database "{database}" is not served here; use "{self.settings.database}"'
            )
        if (expired := self.metrics.policy_usable()) is not None:
            raise _Refused("08006", expired)  # past its expiry and grace: no new sessions
        known = self.policy.identity(identity_name) is not None
        pair = SignInPair(identity_name, sign_in_address(client_addr), known)
        await self._check_limits(pair, client_addr)
        judged = False

        async def judging() -> None:
            nonlocal judged
            await self._check_limits(pair, client_addr, judging=True)
            judged = True  # counted as a failure already, until it succeeds

        try:
            identity, credential = await self._authenticate(
                reader, writer, identity_name, tls, judging
            )
        except _Refused as exc:
            if exc.sqlstate == "28P01" and not isinstance(exc, _Throttled):
                # Counted before the client hears of it: its next attempt, on any
                # worker, must find this failure (a judged guess was counted already).
                if not judged:
                    with contextlib.suppress(SignInLimitsUnavailable):
                        await self._limits.failed(pair)
                self.metrics.logins["failed"] += 1
                self._audit_login("login_failed", identity_name, client_addr)
            raise
        # Unrecorded, the earlier failures only stay counted: stricter, not looser.
        with contextlib.suppress(SignInLimitsUnavailable):
            await self._limits.succeeded(pair)
        forwarded = {k: v for k, v in params.items() if k.lower() in FORWARDED_PARAMS}
        try:
            up = await connect(self.settings.upstream, forwarded)
        except UpstreamError as exc:
            log.warning("upstream login failed for %s: %s", identity.name, exc)
            raise _Refused(
                exc.fields.get("C", "08006"), f"Warden: the upstream database refused: {exc}"
            ) from exc
        if up.privileges and not self.settings.allow_privileged_upstream:
            up.writer.close()
            log.error(
                "upstream role is privileged (%s): sessions refused; see docs/deploy.md",
                ", ".join(up.privileges),
            )
            raise _Refused(
                "42501",
                "Warden: the sidecar's upstream role is privileged "
                f"({', '.join(up.privileges)}); an administrator must give it an "
                "unprivileged role (docs/deploy.md) or set allow_privileged_upstream",
            )
        # The bundle may have changed while the upstream login was in flight; a
        # revocation in that window must not let the session through.
        current = self.policy.identity(identity.name)
        if current is None or not _still_usable(current, credential, datetime.now(UTC)):
            up.writer.close()
            raise _Refused("28000", f'Warden: identity "{identity.name}" is no longer allowed')
        hold_wait = options.get("warden.hold_wait")
        self._begin_session(
            reader,
            writer,
            up,
            current,
            params,
            client_addr,
            credential,
            None if hold_wait is None else float(hold_wait),
            self.settings.internal_answer_bytes if internal else 0,
        )

    async def _check_limits(
        self, pair: SignInPair, client_addr: str, judging: bool = False
    ) -> None:
        """Refuse the sign-in of ``pair`` (identity, address) while its failures hold
        it back; fail closed when the limits cannot be asked. ``judging``: the guess is
        about to be judged, and is counted as a failure in the same step (``attempt``);
        its success undoes that."""
        try:
            if judging:
                wait = await self._limits.attempt(pair)
            else:
                wait = await self._limits.blocked_for(pair)
        except SignInLimitsUnavailable as exc:
            log.error("sign-in refused: the sign-in limits cannot be checked (%s)", exc)
            raise _Refused(
                "57P03", "Warden: sign-ins cannot be checked right now; try again shortly"
            ) from exc
        if wait > 0:
            self.metrics.logins["throttled"] += 1
            self._audit_login("login_throttled", pair.identity, client_addr)
            raise _Throttled(
                "28P01",
                f"Warden: too many failed sign-ins as {pair.identity!r} from this address; "
                f"try again in {math.ceil(wait)} s",
            )

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        name: str,
        tls: bool,
        recheck: Callable[[], Awaitable[None]],
    ) -> tuple[Identity, str]:
        """The identity that signed in, and the id of the credential it proved.
        ``recheck`` asks the sign-in limits again just before the token is judged:
        connections opened side by side all pass the check at startup, and would
        each have a guess judged before any failure was counted (a review's finding)."""
        identity = self.policy.identity(name)
        now = datetime.now(UTC)
        creds = identity.usable_credentials(now) if identity else []
        failed = _Refused("28P01", f'password authentication failed for user "{name}"')
        if tls and self.settings.cleartext_over_tls:
            writer.write(m.auth_request(3))
            password = await self._read_password(reader)
            if self._deriving >= MAX_DERIVING:
                # Each waits for a thread of its own pool: a flood of sign-ins (fresh
                # made-up names, so no limit holds them) must not queue without end,
                # nor hold up the threads that judge large statements.
                raise _Refused("53300", "Warden: too many sign-ins are being checked; retry")
            await recheck()
            text = password.rstrip(b"\x00").decode("utf-8", "replace")
            # Thousands of HMAC rounds a guess: in a thread (hashlib lets go of the
            # interpreter lock), not on the event loop every session shares.
            self._deriving += 1
            try:
                used = await asyncio.get_running_loop().run_in_executor(
                    self._deriver, _proven_by, creds, text, self._fake_salt(name)
                )
            finally:
                self._deriving -= 1
            if used is None:
                raise failed
            assert identity is not None
            writer.write(m.auth_request(0))
            self.metrics.credential_used(used.id)
            return identity, used.id
        # One salt per exchange: verify against the credentials sharing the salt (and
        # iterations) most of them have: the control plane gives every token of an
        # identity the same one, so all of them work. Unknown users get a stable fake
        # salt so the exchange does not reveal which identities exist.
        if creds:
            groups: dict[tuple[bytes, int], list[Verifier]] = {}
            for c in creds:
                groups.setdefault((c.verifier.salt, c.verifier.iterations), []).append(c.verifier)
            (salt, iterations), group = max(groups.items(), key=lambda item: len(item[1]))
        else:
            group = []
            salt = self._fake_salt(name)
            iterations = FAKE_ITERATIONS
        scram = ScramServer(group, salt=salt, iterations=iterations)
        writer.write(m.auth_request(10, b"SCRAM-SHA-256\x00\x00"))
        initial = await self._read_password(reader)
        try:
            mech_end = initial.index(0)
            if initial[:mech_end] != b"SCRAM-SHA-256":
                raise _Refused("28000", "Warden accepts only the SCRAM-SHA-256 mechanism")
            size = m.unpack_i32(initial, mech_end + 1)
            first_msg = initial[mech_end + 5 : mech_end + 5 + size]
            writer.write(m.auth_request(11, scram.first(first_msg)))
            final = await self._read_password(reader)
            await recheck()
            server_final = scram.final(final)
        except (ScramError, ValueError, struct.error) as exc:
            log.info("authentication failed for %r: %s", sign_in_name(name), exc)
            raise failed from exc
        assert identity is not None
        used = next((c for c in creds if c.verifier is scram.matched), None)
        if used is None:  # the exchange succeeded: one of the group's verifiers matched
            raise failed
        writer.write(m.auth_request(12, server_final))
        writer.write(m.auth_request(0))
        self.metrics.credential_used(used.id)
        return identity, used.id

    def _fake_salt(self, name: str) -> bytes:
        """The salt an unknown name is answered with: the same for the name on every
        worker and across restarts, so asking again does not tell it is made up."""
        return hmac.new(self._fake_salt_key, name.encode(), hashlib.sha256).digest()[:16]

    async def _read_password(self, reader: asyncio.StreamReader) -> bytes:
        header = await reader.readexactly(5)
        length = m.unpack_i32(header, 1)
        if header[:1] != b"p" or length < 4 or length > m.SMALL_MESSAGE_LIMIT:
            raise m.ProtocolViolation("expected a password message")
        return await reader.readexactly(length - 4)

    def _begin_session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: Any,
        identity: Identity,
        params: dict[str, str],
        client_addr: str,
        credential: str,
        hold_wait: float | None = None,
        answer_limit: int = 0,
    ) -> None:
        pid, secret = self._new_cancel_key()
        self._cancel_keys[(pid, secret)] = (up.backend_pid, up.backend_secret)
        base_event: dict[str, Any] = {
            "identity": identity.name,
            "identity_kind": identity.kind,
            "owner": identity.owner,
            "datasource": self.settings.datasource,
            "sidecar": self.settings.sidecar_id,
            "client_addr": client_addr,
            "application_name": application_name(params.get("application_name", "")),
        }
        greeting = b"".join(m.parameter_status(k, v) for k, v in up.parameters.items())
        greeting += m.backend_key_data(pid, secret) + m.ready_for_query(up.status)

        def on_close(session: Session) -> None:
            self.sessions.discard(session)
            self._cancel_keys.pop((pid, secret), None)
            self._cancel_sessions.pop((pid, secret), None)
            self.metrics.connection_closed()
            # The name the client ended with (SET application_name is reported back).
            base_event["application_name"] = session.base_event.get("application_name", "")
            self.audit.append(session_event("session_end", base_event, session.started))

        session = Session(
            client=writer.transport,  # type: ignore[arg-type]
            upstream=up.writer.transport,
            identity=identity,
            policy=self.policy,
            audit=self.audit,
            metrics=self.metrics,
            parameters=up.parameters,
            status=up.status,
            base_event=dict(base_event),
            max_message=self.settings.max_message,
            max_statement=self.settings.max_statement,
            on_close=on_close,
            approvals=self.approvals,
            estimator=self.estimator,
            search_path=up.search_path,
            native_relay=self.settings.native_relay,
            hold_wait=hold_wait,
            answer_limit=answer_limit,
        )
        self._cancel_sessions[(pid, secret)] = session
        # StreamWriter.__del__ closes its transport, so the stream objects used for
        # the startup phase must live as long as the session.
        session.keepalive = (reader, writer, up.reader, up.writer)
        session.credential = credential
        self.sessions.add(session)
        self.metrics.connection_opened()
        # With the session state it starts in.
        self.audit.append(session_event("session_start", session.base_event))
        leftover_client = bytes(reader._buffer)  # type: ignore[attr-defined]
        leftover_upstream = bytes(up.reader._buffer)
        writer.transport.set_protocol(ClientProtocol(session))
        up.writer.transport.set_protocol(UpstreamProtocol(session))
        for transport in (writer.transport, up.writer.transport):
            _no_delay(transport)
        writer.write(greeting)
        if leftover_upstream:
            session.upstream_data(leftover_upstream)
        if leftover_client:
            session.client_data(leftover_client)

    def _new_cancel_key(self) -> tuple[int, int]:
        index, count = self._route.index, self._route.count
        while True:
            # A process id in [0, 2**31) naming this worker (CancelRoute); with one
            # worker, 31 random bits as before.
            pid = secrets.randbelow(2**31 // count) * count + index
            key = (pid, secrets.randbits(31))
            if key not in self._cancel_keys:
                return key

    async def _cancel(self, body: bytes) -> None:
        if len(body) != 8:
            return
        route = self._route
        owner = struct.unpack("!i", body[:4])[0] % route.count
        if owner != route.index and route.forward is not None:
            self.metrics.cancel_requests["forwarded"] += 1
            await route.forward(owner, body)
            return
        self.metrics.cancel_requests["own"] += 1
        await self.cancel_own(body)

    async def cancel_own(self, body: bytes) -> None:
        """A CancelRequest's body for a key this worker issued, if it did: never
        forwarded again, and a key it does not hold (wrong secret) cancels nothing."""
        if len(body) != 8:
            return
        pid, secret = struct.unpack("!ii", body)
        session = self._cancel_sessions.get((pid, secret))
        if session is not None and session.cancel_hold():
            return  # the statement waiting for approval is what the client cancels
        target = self._cancel_keys.get((pid, secret))
        if target is not None:
            await send_cancel(self.settings.upstream, *target)
