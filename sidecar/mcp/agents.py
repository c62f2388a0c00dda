"""Who is calling, and the connection each MCP session holds through the proxy.

A bearer token is resolved without trying every verifier: the bundle's credentials
carry the token's non-secret prefix (format 1.2), so the candidates are the few
whose prefix matches; the proxy's SCRAM sign-in, with its sign-in limits, is the
real check. A session's connection is its own: opened as the identity, never
shared between identities or tokens, closed when the session ends, when it has
been idle too long, or when its token leaves the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sidecar.proxy.policy import Credential, Identity
from sidecar.proxy.server import LoginThrottle, SignInPair, sign_in_address

log = logging.getLogger("warden.sidecar.mcp")

PREFIX_LENGTH = 10  # what the control plane stores and shows of a token (AccessToken.prefix)
BEARER_KINDS = frozenset({"agent", "service"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# An IP address, v4 or v6, as the proxy's options carry it (no space, no backslash).
_NOT_ADDRESS = re.compile(r"[^0-9A-Fa-f.:]+")


def application_name(client: str) -> str:
    """``mcp:<client name>``: the name the MCP client gave in its ``clientInfo``, cut
    to a short safe charset, so the audit explorer can tell (and filter) MCP calls."""
    name = _UNSAFE.sub("-", client).strip("-")[:40]
    return f"mcp:{name or 'unknown'}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


NOT_VALID = "the access token is not valid here"


class SignInFailed(Exception):
    """The bearer token signs in as nobody (or is refused for now): HTTP 401."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An agent that proved its token: the identity, the credential it used."""

    identity: Identity
    credential: Credential
    digest: str  # SHA-256 of the token: the key of its sessions, never the token
    token: str = field(repr=False)
    client_addr: str = "local"


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1000
    max_result_bytes: int = 1024 * 1024
    statement_timeout_ms: int = 30_000
    calls_per_minute: int = 120
    concurrent_calls: int = 4
    idle_seconds: float = 900.0


class AgentSession:
    """One MCP session: its own connection through the proxy, one call at a time."""

    def __init__(self, caller: Caller, connection: psycopg.AsyncConnection[Any], app: str) -> None:
        self.caller = caller
        self.connection = connection
        self.application_name = app
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Closed here, or ended by the proxy (a revoked token, an answer too large):
        the next call opens a new session either way."""
        return self._closed or self.connection.closed

    async def close(self) -> None:
        """End the proxied session: the proxy closes its upstream connection with it,
        so nothing of this session (settings, prepared statements) outlives it."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.connection.close()


class Throttle:
    """Per identity: calls in the last minute and calls in flight."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._calls: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}

    def admit(self, name: str) -> str | None:
        """None and the call counted, or why it is refused (nothing counted)."""
        now = time.monotonic()
        calls = self._calls.setdefault(name, deque())
        while calls and now - calls[0] >= 60.0:
            calls.popleft()
        if len(calls) >= self.limits.calls_per_minute:
            wait = max(1, int(60.0 - (now - calls[0])) + 1)
            return (
                f"rate limit: at most {self.limits.calls_per_minute} calls a minute for "
                f"{name}; try again in {wait} s"
            )
        if self._in_flight.get(name, 0) >= self.limits.concurrent_calls:
            return (
                f"too many calls at once: at most {self.limits.concurrent_calls} for {name}; "
                "wait for one to finish"
            )
        calls.append(now)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        return None

    def done(self, name: str) -> None:
        left = self._in_flight.get(name, 1) - 1
        if left > 0:
            self._in_flight[name] = left
        else:
            self._in_flight.pop(name, None)


class Agents:
    """Bearer tokens to callers, callers to sessions, and the sessions' connections.

    ``identities`` gives the bundle's identities in force (the policy's); ``socket``
    is the proxy's private listener (the directory and port libpq expects);
    ``database`` the name clients ask the proxy for.
    """

    def __init__(
        self,
        *,
        identities: Callable[[], Mapping[str, Identity]],
        socket: tuple[str, int],
        database: str,
        limits: Limits,
    ) -> None:
        self._identities = identities
        self.socket = socket
        self.database = database
        self.limits = limits
        self.sessions: dict[tuple[str, str], AgentSession] = {}
        self._index_of: Mapping[str, Identity] | None = None
        self._by_prefix: dict[str, list[tuple[Identity, Credential]]] = {}
        # Tokens the proxy accepted: digest -> (identity, credential id). Checked
        # against the bundle in force at every call, so a revoked one is dropped.
        self._proven: dict[str, tuple[str, str]] = {}
        # Connections opened to prove a token, kept for the session that follows.
        self._spare: dict[str, tuple[float, psycopg.AsyncConnection[Any]]] = {}
        # Tokens whose prefix names nobody: counted per address like the proxy's
        # failed sign-ins, so guessing costs the guesser.
        self._unknown = LoginThrottle()
        self._opening: dict[tuple[str, str], asyncio.Lock] = {}

    # ---- who is calling --------------------------------------------------------

    def _candidates(self, prefix: str) -> list[tuple[Identity, Credential]]:
        identities = self._identities()
        if identities is not self._index_of:  # a new bundle: index it again
            index: dict[str, list[tuple[Identity, Credential]]] = {}
            for identity in identities.values():
                if identity.kind not in BEARER_KINDS:
                    continue
                for credential in identity.credentials:
                    if credential.prefix:
                        index.setdefault(credential.prefix, []).append((identity, credential))
            self._by_prefix = index
            self._index_of = identities
        return self._by_prefix.get(prefix, [])

    def current(self, caller: Caller) -> Caller | None:
        """``caller`` as the bundle in force has it, or None once its identity or its
        credential is gone or expired (a revoked token)."""
        identity = self._identities().get(caller.identity.name)
        if identity is None:
            return None
        for credential in identity.usable_credentials(datetime.now(UTC)):
            if credential.id == caller.credential.id:
                return Caller(identity, credential, caller.digest, caller.token, caller.client_addr)
        return None

    async def sign_in(self, token: str, client_addr: str) -> Caller:
        """The caller this bearer token is, proven by a sign-in through the proxy the
        first time (its connection is kept for the session that follows); raises
        ``SignInFailed``."""
        digest = token_digest(token)
        proven = self._proven.get(digest)
        if proven is not None:
            identity = self._identities().get(proven[0])
            now = datetime.now(UTC)
            for credential in identity.usable_credentials(now) if identity else []:
                if credential.id == proven[1]:
                    assert identity is not None
                    return Caller(identity, credential, digest, token, client_addr)
            await self.forget(digest)
        candidates = [
            (i, c)
            for i, c in self._candidates(token[:PREFIX_LENGTH])
            if c in i.usable_credentials(datetime.now(UTC))
        ]
        if len(candidates) > 1:  # a shared prefix (rare): the verifier decides
            candidates = [(i, c) for i, c in candidates if c.verifier.matches_password(token)]
        if len(token) <= PREFIX_LENGTH or not candidates:
            pair = SignInPair("", sign_in_address(client_addr), False)
            wait = self._unknown.blocked_for(pair)
            if wait > 0:
                raise SignInFailed(
                    f"too many failed sign-ins from this address; try again in {wait:.0f} s"
                )
            self._unknown.failed(pair)
            raise SignInFailed(NOT_VALID)
        identity, credential = candidates[0]
        caller = Caller(identity, credential, digest, token, client_addr)
        connection = await self._connect(caller, application_name(""))
        self._spare[digest] = (time.monotonic(), connection)
        self._proven[digest] = (identity.name, credential.id)
        return caller

    async def _connect(self, caller: Caller, app: str) -> psycopg.AsyncConnection[Any]:
        """Sign in to the proxy's private listener as the caller: SCRAM against the
        bundle's verifiers, the sign-in limits of the caller's address, and a hold for
        approval that answers at once (``warden.hold_wait=0``)."""
        directory, port = self.socket
        # (Colons kept: an IPv6 address is counted under its /64 by the sign-in limits,
        # and the audit trail shows it as it is.)
        addr = _NOT_ADDRESS.sub("", caller.client_addr)[:64] or "local"
        try:
            return await psycopg.AsyncConnection.connect(
                host=directory,
                port=port,
                dbname=self.database,
                user=caller.identity.name,
                password=caller.token,
                application_name=app,
                options=f"-c warden.hold_wait=0 -c warden.client_addr={addr}",
                autocommit=True,
                connect_timeout=10,
            )
        except psycopg.OperationalError as exc:
            raise SignInFailed(_sign_in_message(exc)) from None

    async def forget(self, digest: str) -> None:
        """A token no longer valid: its proof, spare connection and sessions go."""
        self._proven.pop(digest, None)
        spare = self._spare.pop(digest, None)
        if spare is not None:
            with contextlib.suppress(Exception):
                await spare[1].close()
        for key in [k for k in self.sessions if k[0] == digest]:
            session = self.sessions.pop(key)
            await session.close()

    # ---- sessions -------------------------------------------------------------

    async def session(self, caller: Caller, key: str, client: str) -> AgentSession:
        """The caller's session ``key`` (the MCP session id, or the client's name where
        the protocol has no sessions), opened on first use."""
        full = (caller.digest, key)
        existing = self.sessions.get(full)
        if existing is not None and not existing.closed:
            return existing
        lock = self._opening.setdefault(full, asyncio.Lock())
        async with lock:
            existing = self.sessions.get(full)
            if existing is not None and not existing.closed:
                return existing
            app = application_name(client)
            spare = self._spare.pop(caller.digest, None)
            connection = spare[1] if spare is not None else await self._connect(caller, app)
            try:
                # Settings any client may make (the proxy decides and audits them): the
                # name the explorer filters MCP by, the statement timeout, and reads in
                # read-only transactions (execute opens a read-write one).
                settings = {
                    "application_name": app,
                    "statement_timeout": str(self.limits.statement_timeout_ms),
                    "default_transaction_read_only": "on",
                }
                for name, value in settings.items():
                    await connection.execute(
                        sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)),
                        prepare=False,
                    )
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    await connection.close()
                raise
            session = AgentSession(caller, connection, app)
            self.sessions[full] = session
        self._opening.pop(full, None)
        return session

    async def end(self, caller: Caller, key: str) -> None:
        session = self.sessions.pop((caller.digest, key), None)
        if session is not None:
            await session.close()

    async def reap(self) -> None:
        """Close sessions idle past the limit, connections kept too long unused, and
        sessions whose token left the bundle; forever, every few seconds."""
        while True:
            await asyncio.sleep(min(5.0, self.limits.idle_seconds))
            await self.reap_once()

    async def reap_once(self) -> None:
        now = time.monotonic()
        for digest, (since, connection) in list(self._spare.items()):
            if now - since > 60.0:
                del self._spare[digest]
                with contextlib.suppress(Exception):
                    await connection.close()
        for key, session in list(self.sessions.items()):
            idle = now - session.last_used > self.limits.idle_seconds
            if (idle and not session.lock.locked()) or self.current(session.caller) is None:
                self.sessions.pop(key, None)
                await session.close()

    async def close(self) -> None:
        for digest in list(self._proven):
            await self.forget(digest)
        for session in list(self.sessions.values()):
            await session.close()
        self.sessions.clear()


def _sign_in_message(exc: psycopg.OperationalError) -> str:
    """The proxy's reason for refusing a sign-in, as the agent may read it: a wrong
    token reads as an unknown one (the proxy's own words name the identity whose
    token prefix was sent, which the sender need not know)."""
    text = str(exc).strip().splitlines()
    for line in text:
        if "FATAL:" in line:
            reason = line.split("FATAL:", 1)[1].strip()
            if reason.startswith("password authentication failed"):
                return NOT_VALID
            if reason.startswith("Warden: too many failed sign-ins"):
                # "... as 'name' from this address; try again in N s": not the name.
                return "too many failed sign-ins from this address;" + reason.rpartition(";")[2]
            return reason
    return text[-1] if text else "sign-in refused"


def socket_for(directory: Path, port: int = 5432) -> str:
    """The path libpq connects to for ``host=directory port=port``."""
    return str(directory / f".s.PGSQL.{port}")
