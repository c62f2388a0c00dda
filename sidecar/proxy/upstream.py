"""Log in to the upstream database with the sidecar's own credential.

The upstream only ever sees the sidecar's role; the client's token stops at the
sidecar. Supports SCRAM-SHA-256, MD5 and cleartext, TCP or a Unix socket, and
returns the server's ParameterStatus values and BackendKeyData so the session
can replay them to the client and map cancel requests.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from sidecar.proxy import messages as m
from sidecar.proxy.scram import ScramClient, ScramError, md5_password
from sidecar.proxy.state import parse_name_array, parse_row, probe_query


class UpstreamError(Exception):
    """The upstream refused the login or went away; ``fields`` has its ErrorResponse."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def from_dsn(cls, dsn: str, *, password: str | None = None) -> UpstreamTarget:
        """Parse ``postgresql://user:pw@host:port/db``; ``?host=/dir`` selects a Unix socket."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("upstream_dsn must be a postgresql:// URL")
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        port = int(query.get("port", [str(parts.port or 5432)])[0])
        user = unquote(parts.username or "")
        if not user:
            raise ValueError("upstream_dsn must name a user")
        database = unquote(parts.path.lstrip("/")) or user
        pw = password if password is not None else unquote(parts.password or "")
        return cls(host=host, port=port, user=user, password=pw, database=database)

    @property
    def socket_path(self) -> str | None:
        if self.host.startswith("/"):
            return str(Path(self.host) / f".s.PGSQL.{self.port}")
        return None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        path = self.socket_path
        if path:
            return await asyncio.open_unix_connection(path)
        return await asyncio.open_connection(self.host, self.port)


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
    session.writer.write(probe_query())
    row: tuple[str, str, str] | None = None
    while True:
        kind, body = await _read_message(session.reader)
        if kind == b"D":
            row = parse_row(body)
        elif kind == b"E":
            fields = m.error_fields(body)
            raise UpstreamError(f"the session state probe failed: {fields.get('M', '')}", fields)
        elif kind == b"Z":
            break
    schemas = parse_name_array(row[0]) if row is not None else None
    if schemas is None:
        raise UpstreamError("the session state probe gave no usable answer")
    session.search_path = schemas


async def _connect(target: UpstreamTarget, client_params: dict[str, str]) -> UpstreamSession:
    reader, writer = await target.open()
    session = UpstreamSession(reader=reader, writer=writer)
    try:
        params = {**client_params, "user": target.user, "database": target.database}
        writer.write(m.startup_message(params))
        scram: ScramClient | None = None
        while True:
            kind, body = await _read_message(reader)
            if kind == b"R":
                code = m.unpack_i32(body)
                if code == 0:
                    continue
                if code == 3:
                    writer.write(m.frame(b"p", target.password.encode() + b"\x00"))
                elif code == 5:
                    reply = md5_password(target.password, target.user, body[4:8])
                    writer.write(m.frame(b"p", reply + b"\x00"))
                elif code == 10:
                    mechanisms = body[4:].split(b"\x00")
                    if b"SCRAM-SHA-256" not in mechanisms:
                        raise UpstreamError("upstream offers no supported SASL mechanism")
                    scram = ScramClient(target.password)
                    first = scram.first()
                    payload = b"SCRAM-SHA-256\x00" + m.pack_i32(len(first)) + first
                    writer.write(m.frame(b"p", payload))
                elif code == 11 and scram is not None:
                    writer.write(m.frame(b"p", scram.final(body[4:])))
                elif code == 12 and scram is not None:
                    scram.verify(body[4:])
                else:
                    raise UpstreamError(f"upstream asks for unsupported authentication {code}")
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
                fields = m.error_fields(body)
                raise UpstreamError(fields.get("M", "upstream refused the login"), fields)
            elif kind in (b"N", b"v"):
                continue
            else:
                raise UpstreamError(f"unexpected upstream message {kind!r} during login")
    except (UpstreamError, ScramError, ValueError, KeyError):
        writer.close()
        raise


async def send_cancel(target: UpstreamTarget, pid: int, secret: int) -> None:
    """Forward a cancel request on a fresh connection, as libpq does."""
    try:
        _, writer = await asyncio.wait_for(target.open(), 5.0)
    except (OSError, TimeoutError):
        return
    writer.write(struct.pack("!iiii", 16, m.CANCEL_REQUEST, pid, secret))
    try:
        await writer.drain()
    finally:
        writer.close()
