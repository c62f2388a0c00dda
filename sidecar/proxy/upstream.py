"""Log in to the upstream database with the sidecar's own credential.

The upstream only ever sees the sidecar's role; the client's token stops at the
sidecar. Supports SCRAM-SHA-256, MD5 and cleartext, TCP or a Unix socket, and
returns the server's ParameterStatus values and BackendKeyData so the session
can replay them to the client and map cancel requests. ``require_auth`` limits
the methods the server may ask for, as in libpq 16; without it a cleartext
password is never sent to a host that is not loopback unless ``sslmode``
requires TLS. A SCRAM login always needs the server's signature.

TLS follows libpq's ``sslmode`` from the DSN's query parameters (``sslmode``,
``sslrootcert``, ``sslcert``, ``sslkey``, ``sslpassword``), with one deliberate
difference: without ``sslmode`` a TCP host that is not loopback gets
``require``, never libpq's ``prefer``, so the sidecar's credential and every
statement cannot silently cross the network in plain text. Loopback hosts get
``prefer``; Unix sockets never use TLS (PostgreSQL does not offer it there).
Cancel requests follow the same rules, as libpq 17's cancel API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sidecar.proxy import messages as m
from sidecar.proxy.scram import ScramClient, ScramError, md5_password
from sidecar.proxy.state import LOGIN_PROBE_SQL, parse_name_array, parse_row

log = logging.getLogger("warden.sidecar.proxy")

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Modes in which the connection fails rather than continue without TLS.
TLS_REQUIRED = frozenset({"require", "verify-ca", "verify-full"})
# What a DSN that does not parse is reported as, wherever the sidecar reports it: the
# parser's own words quote the part of the URL it choked on, which for a password with
# a "/", "?", "#" or "@" in it is part of the password.
INVALID_DSN = "upstream_dsn is not a valid URL; percent-encode special characters in the password"

# libpq TLS parameters the sidecar's client does not implement: refused rather
# than ignored, since ignoring one (a CRL, say) would weaken the connection silently.
_UNSUPPORTED_TLS_PARAMS = (
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
    "sslcompression",
)

# libpq 16's require_auth methods (gss and sspi name methods the sidecar cannot use).
AUTH_METHODS = frozenset({"password", "md5", "scram-sha-256", "none"})
_FOREIGN_AUTH_METHODS = frozenset({"gss", "sspi"})


class UpstreamError(Exception):
    """The upstream refused the login or went away; ``fields`` has its ErrorResponse."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class _Retryable(UpstreamError):
    """A failure libpq retries once with the other transport in ``allow`` and ``prefer``
    mode; ``over_tls`` says whether it happened while TLS was in use or negotiated."""

    over_tls = True


class _LoginRefused(_Retryable):
    """An ErrorResponse during the login."""

    def __init__(self, message: str, fields: dict[str, str], *, over_tls: bool) -> None:
        super().__init__(message, fields)
        self.over_tls = over_tls


class _HandshakeFailed(_Retryable):
    """The TLS handshake failed, or the answer to SSLRequest was not S or N."""


class _NoTls(UpstreamError):
    """The server answered N to SSLRequest where TLS is required."""


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address literal (a name that merely resolves to one
    does not count)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _local(host: str) -> bool:
    """A Unix socket (an empty host, a directory, an abstract name) or a loopback host:
    nothing of the connection crosses the network."""
    return not host or host.startswith(("/", "@")) or is_loopback(host)


def default_sslmode(host: str) -> str:
    """The ``sslmode`` a DSN without one gets: ``require`` for a TCP host that is not
    loopback, ``prefer`` (libpq's default) otherwise. On a Unix socket (an empty host or
    a directory) ``sslmode`` has no effect, as with libpq."""
    return "prefer" if _local(host) else "require"


def verifies_server(sslmode: str, rootcert: str | None) -> bool:
    """Whether TLS under ``sslmode`` authenticates the server (checks its certificate
    against ``sslrootcert``: ``verify-ca``, ``verify-full``, and ``require`` given one)."""
    return sslmode in ("verify-ca", "verify-full") or (sslmode == "require" and bool(rootcert))


def refuses_cleartext(host: str, server_verified: bool) -> bool:
    """Whether a cleartext password is refused to ``host`` when ``require_auth`` does not
    allow it by name: over the network (not loopback, not a Unix socket) unless TLS
    authenticates the server. Whoever sits on that path (stripping TLS under
    ``prefer``, or answering it with a certificate of their own under ``require``)
    would simply ask for the password in clear and get the sidecar's."""
    return not _local(host) and not server_verified


def libpq_defaults(dsn: str) -> dict[str, str]:
    """Keyword arguments that give a libpq (psycopg) connection to ``dsn`` this client's
    defaults: ``sslmode`` when the DSN names none (libpq would use ``PGSSLMODE`` or
    ``prefer``), and ``require_auth=!password,!md5`` when the DSN names no
    ``require_auth`` and ``refuses_cleartext`` holds for one of its hosts."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Error:
        return {}  # psycopg.connect reports it
    hosts = [host.strip() for host in str(params.get("host") or "").split(",")]
    defaults: dict[str, str] = {}
    rootcert = str(params.get("sslrootcert") or "") or None
    sslmode = str(params.get("sslmode") or "")
    if not sslmode:
        if rootcert == "system":
            sslmode = "verify-full"  # libpq: system implies it
        else:
            modes = {default_sslmode(host) for host in hosts}
            sslmode = defaults["sslmode"] = "require" if "require" in modes else "prefer"
    verified = verifies_server(sslmode, rootcert)
    if not params.get("require_auth") and any(refuses_cleartext(h, verified) for h in hosts):
        defaults["require_auth"] = "!password,!md5"
    return defaults


def _require_auth(value: str | None) -> frozenset[str] | None:
    """The methods libpq 16's ``require_auth`` allows: a list of methods, or a list of
    methods each prefixed with ``!`` to allow all others (the two cannot be mixed)."""
    if value is None:
        return None
    # As libpq reads it, so that the libpq connections given the same DSN agree: no
    # spaces stripped, no method named twice.
    names = value.split(",")
    negated = {name.startswith("!") for name in names}
    if len(negated) != 1:
        raise ValueError("upstream_dsn: require_auth cannot mix methods and !methods")
    methods = [name.removeprefix("!") for name in names]
    if set(methods) - AUTH_METHODS - _FOREIGN_AUTH_METHODS:
        raise ValueError(
            "upstream_dsn: require_auth takes password, md5, scram-sha-256, none, gss or "
            "sspi, optionally each with !, separated by commas without spaces"
        )
    if len(set(methods)) != len(methods):
        raise ValueError("upstream_dsn: require_auth names a method twice")
    allowed = AUTH_METHODS - set(methods) if negated == {True} else set(methods) & AUTH_METHODS
    if not allowed:
        raise ValueError(
            "upstream_dsn: require_auth allows none of the methods the sidecar can use "
            "(password, md5, scram-sha-256, none)"
        )
    return frozenset(allowed)


def _query_params(query: str) -> dict[str, str]:
    """A URI's query parameters as libpq reads them: percent-decoded (``+`` stays a
    plus), the last of a repeated name wins, empty values are ignored."""
    params: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name and value:
            params[unquote(name)] = unquote(value)
    return params


def tls_context(
    sslmode: str,
    *,
    rootcert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    """The client context for ``sslmode``, as libpq builds it.

    With ``rootcert`` (a CA file, or ``system`` for the platform's trusted roots)
    the server's chain is verified in every mode that uses TLS (so ``require``
    with a root certificate behaves like ``verify-ca``); the host name is checked
    only under ``verify-full``. Without one nothing is verified: encrypted, but
    not authenticated. TLS 1.2 at least (libpq's default minimum).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if rootcert is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            if rootcert == "system":
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=rootcert)
            context.check_hostname = sslmode == "verify-full"
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"upstream_dsn: cannot load sslrootcert {rootcert}: {_reason(exc)}"
        ) from None
    if cert:
        try:
            context.load_cert_chain(cert, key, password=password or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"upstream_dsn: cannot load sslcert {cert} / sslkey {key or cert}: {_reason(exc)}"
            ) from None
    return context


def _warn_if_weak(sslmode: str, rootcert: str | None) -> None:
    """Say so at start when the connection to a remote database is not protected."""
    if sslmode in ("disable", "allow", "prefer"):
        log.warning(
            "upstream_dsn has sslmode=%s: the connection to the database may run in plain "
            "text; use sslmode=verify-full with sslrootcert",
            sslmode,
        )
    elif rootcert is None:
        log.warning(
            "upstream_dsn has sslmode=%s and no sslrootcert: encrypted, but the server is "
            "not authenticated; use sslmode=verify-full with sslrootcert",
            sslmode,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    password: str
    database: str
    sslmode: str = "prefer"
    # The authentication the server may ask for (``require_auth``); None: anything
    # but what ``refuses_cleartext`` refuses.
    auth_methods: frozenset[str] | None = None
    # TLS checks the server's certificate (``verifies_server``).
    server_verified: bool = False
    # Built once from the DSN (so a missing or bad file is a start-up error);
    # None on a Unix socket or with sslmode=disable.
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dsn(cls, dsn: str, *, password: str | None = None) -> UpstreamTarget:
        """Parse ``postgresql://user:pw@host:port/db?sslmode=...``; ``?host=/dir`` selects
        a Unix socket. Only the DSN decides TLS (``PGSSLMODE`` and friends are not read)."""
        try:
            parts = urlsplit(dsn)
            query = _query_params(parts.query)
            host = query.get("host", parts.hostname or "127.0.0.1")
            port = int(query.get("port", str(parts.port or 5432)))
        except ValueError:
            raise ValueError(INVALID_DSN) from None
        if "@" in parts.path + parts.fragment:  # a password's "/" or "#" ended the host early
            raise ValueError(INVALID_DSN)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("upstream_dsn must be a postgresql:// URL")
        user = unquote(parts.username or "")
        if not user:
            raise ValueError("upstream_dsn must name a user")
        database = unquote(parts.path.lstrip("/")) or user
        pw = password if password is not None else unquote(parts.password or "")
        for name in _UNSUPPORTED_TLS_PARAMS:
            if name in query:
                raise ValueError(f"upstream_dsn: {name} is not supported by the sidecar")
        if query.get("sslnegotiation", "postgres") != "postgres":
            raise ValueError("upstream_dsn: only sslnegotiation=postgres is supported")
        if query.get("gssencmode") == "require":
            raise ValueError("upstream_dsn: GSSAPI encryption is not supported; use sslmode")
        auth_methods = _require_auth(query.get("require_auth"))
        rootcert = query.get("sslrootcert")
        sslmode = query.get("sslmode") or (
            "verify-full" if rootcert == "system" else default_sslmode(host)
        )
        if sslmode not in SSL_MODES:
            raise ValueError(f"upstream_dsn: sslmode must be one of {', '.join(SSL_MODES)}")
        if sslmode in ("verify-ca", "verify-full") and not rootcert:
            raise ValueError(
                f"upstream_dsn: sslmode={sslmode} needs sslrootcert (a CA file, or 'system' "
                "for the platform's trusted roots)"
            )
        if rootcert == "system" and sslmode != "verify-full":
            # As libpq 16+: trusting every public CA without checking the name is useless.
            raise ValueError("upstream_dsn: sslrootcert=system requires sslmode=verify-full")
        if query.get("sslkey") and not query.get("sslcert"):
            raise ValueError("upstream_dsn: sslkey needs sslcert")
        context: ssl.SSLContext | None = None
        if not host.startswith("/") and sslmode != "disable":
            context = tls_context(
                sslmode,
                rootcert=rootcert,
                cert=query.get("sslcert"),
                key=query.get("sslkey"),
                password=query.get("sslpassword"),
            )
        if not host.startswith("/") and not is_loopback(host):
            _warn_if_weak(sslmode, rootcert)
        return cls(
            host=host,
            port=port,
            user=user,
            password=pw,
            database=database,
            sslmode=sslmode,
            auth_methods=auth_methods,
            server_verified=verifies_server(sslmode, rootcert),
            tls=context,
        )

    @property
    def socket_path(self) -> str | None:
        if self.host.startswith("/"):
            return str(Path(self.host) / f".s.PGSQL.{self.port}")
        return None

    def check_auth(self, method: str) -> None:
        """Refuse to answer the server's request for ``method`` unless ``require_auth``
        allows it; without ``require_auth``, ``refuses_cleartext`` decides."""
        if self.auth_methods is not None:
            if method not in self.auth_methods:
                allowed = ", ".join(sorted(self.auth_methods)) or "nothing"
                asked = "no authentication" if method == "none" else f"{method} authentication"
                raise UpstreamError(
                    f"the upstream database asked for {asked}, and upstream_dsn's "
                    f"require_auth allows {allowed}"
                )
        elif method in ("password", "md5") and refuses_cleartext(self.host, self.server_verified):
            # MD5 too: whoever sits on the path relays the real server's salt and logs in
            # with the answer (or cracks an answer to a salt of its own).
            what = "in clear text" if method == "password" else "as an MD5 answer"
            raise UpstreamError(
                f"the upstream database asked for the password {what} over a connection "
                f"that does not authenticate the server (sslmode={self.sslmode}); refused: "
                "use SCRAM, sslmode=verify-full with sslrootcert, or "
                f"require_auth={method} in upstream_dsn to allow it"
            )

    @property
    def tls_required(self) -> bool:
        return self.sslmode in TLS_REQUIRED and self.socket_path is None

    def attempts(self) -> tuple[str, ...]:
        """The login attempts, in libpq's order: each ``plain`` (no TLS), ``try`` (TLS
        if the server offers it) or ``tls`` (TLS or fail). ``allow`` tries plain text
        first and TLS if the server refuses it, ``prefer`` the reverse."""
        if self.tls is None:
            return ("plain",)
        if self.sslmode == "allow":
            return ("plain", "tls")
        if self.sslmode == "prefer":
            return ("try", "plain")
        return ("tls",)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection under this target's transport rules, as its first login attempt
        makes it (TLS negotiated where that attempt asks for it)."""
        reader, writer, _ = await _open(self, self.attempts()[0])
        return reader, writer


async def _open(
    target: UpstreamTarget, how: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """Connect; unless ``how`` is ``plain``, send SSLRequest and on ``S`` wrap the
    connection in TLS. Returns the streams and whether they are encrypted."""
    path = target.socket_path
    if path:
        reader, writer = await asyncio.open_unix_connection(path)
        return reader, writer, False
    reader, writer = await asyncio.open_connection(target.host, target.port)
    if how == "plain" or target.tls is None:
        return reader, writer, False
    try:
        writer.write(struct.pack("!ii", 8, m.SSL_REQUEST))
        await writer.drain()
        answer = await reader.readexactly(1)
        if answer == b"N":
            if how == "tls":
                raise _NoTls(
                    f"the upstream database does not offer TLS, and sslmode={target.sslmode} "
                    "requires it (enable ssl on the server, or choose sslmode in upstream_dsn)"
                )
            return reader, writer, False
        if answer != b"S":
            raise _HandshakeFailed(f"the upstream answered the TLS request with {answer!r}")
        if reader._buffer:  # type: ignore[attr-defined]
            # Bytes that arrived in the clear after 'S' would be taken as coming
            # from inside the TLS session (CVE-2021-23222).
            raise UpstreamError("the upstream sent unencrypted data after accepting TLS")
        try:
            await writer.start_tls(target.tls, server_hostname=target.host)
        except ssl.SSLError as exc:
            raise _HandshakeFailed(
                f"TLS to the upstream database failed (sslmode={target.sslmode}): {_reason(exc)}"
            ) from None
    except BaseException:
        writer.close()
        raise
    return reader, writer, True


@dataclass(slots=True)
class UpstreamSession:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: dict[str, str] = field(default_factory=dict)
    backend_pid: int = 0
    backend_secret: int = 0
    status: bytes = b"I"
    # The effective schemas (current_schemas(true)) the session starts with.
    search_path: tuple[str, ...] | None = None
    encrypted: bool = False
    # What makes the sidecar's upstream role privileged (SUPERUSER, BYPASSRLS, ...).
    privileges: tuple[str, ...] = ()


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    kind, length = header[:1], m.unpack_i32(header, 1)
    if length < 4 or length > 1_000_000:
        raise UpstreamError(f"upstream sent an implausible message length {length}")
    return kind, await reader.readexactly(length - 4)


async def connect(
    target: UpstreamTarget, client_params: dict[str, str], *, timeout: float = 10.0
) -> UpstreamSession:
    """Open and authenticate one upstream connection, up to its first ReadyForQuery."""
    try:
        return await asyncio.wait_for(_connect(target, client_params), timeout)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        raise UpstreamError(
            f"cannot reach the upstream database: {exc.__class__.__name__}"
        ) from exc


async def _probe_state(session: UpstreamSession) -> None:
    """Ask the new session's effective search_path, which the engine resolves names
    under: the role's and database's defaults may differ from the bundle's."""
    session.writer.write(m.query(LOGIN_PROBE_SQL))
    row: tuple[str, ...] | None = None
    while True:
        kind, body = await _read_message(session.reader)
        if kind == b"D":
            row = parse_row(body, 4)
        elif kind == b"E":
            fields = m.error_fields(body)
            raise UpstreamError(f"the session state probe failed: {fields.get('M', '')}", fields)
        elif kind == b"Z":
            break
    schemas = parse_name_array(row[0]) if row is not None else None
    if schemas is None:
        raise UpstreamError("the session state probe gave no usable answer")
    session.search_path = schemas
    session.privileges = tuple(p for p in row[3].split(",") if p) if row is not None else ()


async def _connect(target: UpstreamTarget, client_params: dict[str, str]) -> UpstreamSession:
    """Log in, retrying once with the other transport where libpq does: ``allow`` with
    TLS after a refused plain-text login, ``prefer`` without TLS after a failed
    handshake or a refused login over TLS. When both fail, the TLS attempt's error is
    the one reported."""
    attempts = target.attempts()
    failed: list[_Retryable] = []
    for number, how in enumerate(attempts):
        try:
            return await _login(target, client_params, how)
        except _Retryable as exc:
            failed.append(exc)
            if number + 1 == len(attempts) or (how == "try" and not exc.over_tls):
                break
        except _NoTls:
            if not failed:
                raise
            break
    raise next((e for e in failed if e.over_tls), failed[0])


def _login_refused(body: bytes, encrypted: bool) -> _LoginRefused:
    """The server's ErrorResponse ``body`` during the login, as the error it raises."""
    fields = m.error_fields(body)
    return _LoginRefused(fields.get("M", "upstream refused the login"), fields, over_tls=encrypted)


async def _authenticate(
    target: UpstreamTarget,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    encrypted: bool,
) -> None:
    """Answer the server's authentication requests until AuthenticationOk. Nothing else
    is taken before it (an impostor that sends ReadyForQuery straight away has not
    authenticated, whatever came first), and after a SCRAM exchange it counts only
    once the server has proved it holds the verifier."""
    scram: ScramClient | None = None
    asked = False  # the server asked for some authentication
    while True:
        kind, body = await _read_message(reader)
        if kind == b"E":
            raise _login_refused(body, encrypted)
        if kind in (b"N", b"v"):
            continue
        if kind != b"R":
            raise UpstreamError(f"upstream sent {kind!r} before authenticating the login")
        code = m.unpack_i32(body)
        if code == 0:
            if scram is not None and not scram.verified:
                # A genuine server proves it knows the verifier (SASLFinal) before
                # AuthenticationOk; skipping it is how an impostor that does not would
                # get in (libpq checks this only on request).
                raise UpstreamError(
                    "the upstream database ended SCRAM authentication without proving it "
                    "knows the password"
                )
            if not asked:
                target.check_auth("none")
            return
        asked = True
        if scram is not None and code not in (11, 12):
            raise UpstreamError(
                f"upstream asked for authentication {code} during SCRAM authentication"
            )
        if code == 3:
            target.check_auth("password")
            writer.write(m.frame(b"p", target.password.encode() + b"\x00"))
        elif code == 5:
            target.check_auth("md5")
            reply = md5_password(target.password, target.user, body[4:8])
            writer.write(m.frame(b"p", reply + b"\x00"))
        elif code == 10 and scram is None:
            target.check_auth("scram-sha-256")
            if b"SCRAM-SHA-256" not in body[4:].split(b"\x00"):
                raise UpstreamError("upstream offers no supported SASL mechanism")
            scram = ScramClient(target.password)
            first = scram.first()
            writer.write(m.frame(b"p", b"SCRAM-SHA-256\x00" + m.pack_i32(len(first)) + first))
        elif code == 11 and scram is not None:
            try:
                # The key derivation is the server's to make expensive: off the loop.
                final = await asyncio.to_thread(scram.final, body[4:])
            except ScramError as exc:
                raise UpstreamError(f"SCRAM authentication failed: {exc}") from None
            writer.write(m.frame(b"p", final))
        elif code == 12 and scram is not None:
            try:
                scram.verify(body[4:])
            except ScramError as exc:
                raise UpstreamError(f"SCRAM authentication failed: {exc}") from None
        else:
            raise UpstreamError(f"upstream asks for unsupported authentication {code}")


async def _login(
    target: UpstreamTarget, client_params: dict[str, str], how: str
) -> UpstreamSession:
    reader, writer, encrypted = await _open(target, how)
    session = UpstreamSession(reader=reader, writer=writer, encrypted=encrypted)
    try:
        params = {**client_params, "user": target.user, "database": target.database}
        writer.write(m.startup_message(params))
        await _authenticate(target, reader, writer, encrypted)
        # Authenticated (AuthenticationOk, and only then): the session's parameters,
        # its cancel key, and ReadyForQuery.
        while True:
            kind, body = await _read_message(reader)
            if kind == b"R":
                raise UpstreamError("upstream asked for authentication after AuthenticationOk")
            elif kind == b"S":
                name, _, rest = body.partition(b"\x00")
                session.parameters[name.decode()] = rest.rstrip(b"\x00").decode()
            elif kind == b"K":
                session.backend_pid, session.backend_secret = struct.unpack("!ii", body[:8])
            elif kind == b"Z":
                session.status = body[:1]
                await _probe_state(session)
                return session
            elif kind == b"E":
                raise _login_refused(body, encrypted)
            elif kind in (b"N", b"v"):
                continue
            else:
                raise UpstreamError(f"unexpected upstream message {kind!r} during login")
    except BaseException:
        writer.close()
        raise


async def send_cancel(target: UpstreamTarget, pid: int, secret: int) -> None:
    """Forward a cancel request on a fresh connection under the same transport rules
    as the login (TLS first where the login tries it first; never plain text where the
    login requires TLS), as libpq 17's cancel API does."""
    try:
        _reader, writer = await asyncio.wait_for(target.open(), 5.0)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, UpstreamError) as exc:
        log.warning("cancel request not forwarded to the upstream: %s", _reason(exc))
        return
    writer.write(struct.pack("!iiii", 16, m.CANCEL_REQUEST, pid, secret))
    try:
        await asyncio.wait_for(writer.drain(), 5.0)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 5.0)
