"""A raw PostgreSQL protocol client for attacks that libpq will not send.

``RawClient`` logs in through SCRAM (as ``tests.sidecar.proxy.test_garbage.login``
does) and then sends any bytes, several messages in ONE ``sendall``, so the
sidecar sees them in one read and has to decide the later ones before the
server has answered the earlier ones. It reads until a given number of
ReadyForQuery messages and returns every message in a ``Reply``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field

from sidecar.proxy import messages as m
from sidecar.proxy.scram import ScramClient
from tests.sidecar.proxy.conftest import ALICE_TOKEN, SSNS, Sidecar

SYNC = m.frame(b"S", b"")


def _bytes(sql: str | bytes, encoding: str) -> bytes:
    return sql if isinstance(sql, bytes) else sql.encode(encoding)


def q(sql: str | bytes, encoding: str = "utf-8") -> bytes:
    """A simple-protocol Query message."""
    return m.query(_bytes(sql, encoding))


def parse(sql: str | bytes, name: str = "", encoding: str = "utf-8") -> bytes:
    return m.build_parse(name.encode(), _bytes(sql, encoding), b"\x00\x00")


def bind(statement: str = "", portal: str = "") -> bytes:
    # No parameter formats, no parameters, no result formats (all text).
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00"
    return m.frame(b"B", body + struct.pack("!hhh", 0, 0, 0))


def describe(portal: str = "") -> bytes:
    return m.frame(b"D", b"P" + portal.encode() + b"\x00")


def execute(portal: str = "") -> bytes:
    return m.frame(b"E", portal.encode() + b"\x00" + struct.pack("!i", 0))


def extended(
    sql: str | bytes, *, name: str = "", sync: bool = True, encoding: str = "utf-8"
) -> bytes:
    """Parse/Bind/Describe/Execute of one statement, with a Sync unless told not to."""
    out = parse(sql, name, encoding) + bind(name) + describe() + execute()
    return out + (SYNC if sync else b"")


def bind_execute(statement: str, *, sync: bool = True) -> bytes:
    """Bind/Describe/Execute of an already prepared statement."""
    return bind(statement) + describe() + execute() + (SYNC if sync else b"")


def ready_count(data: bytes) -> int:
    """How many ReadyForQuery a batch of frontend messages will be answered with."""
    count = 0
    pos = 0
    while pos + 5 <= len(data):
        kind = data[pos : pos + 1]
        length = struct.unpack("!i", data[pos + 1 : pos + 5])[0]
        if kind in (b"Q", b"S"):
            count += 1
        pos += 1 + length
    return count


@dataclass
class Result:
    """One result set: the column names of a RowDescription and its DataRows."""

    columns: list[str] | None
    rows: list[tuple[bytes | None, ...]] = field(default_factory=list)

    def text(self, encoding: str = "utf-8") -> list[tuple[str | None, ...]]:
        return [tuple(None if v is None else v.decode(encoding) for v in row) for row in self.rows]


@dataclass
class Reply:
    """Every backend message received for a batch, in order."""

    messages: list[tuple[bytes, bytes]]

    @property
    def raw(self) -> bytes:
        """All message bodies: rows, notices, errors (with DETAIL/CONTEXT), statuses."""
        return b"\n".join(body for _, body in self.messages)

    @property
    def results(self) -> list[Result]:
        out: list[Result] = []
        current: Result | None = None
        for kind, body in self.messages:
            if kind == b"T":
                current = Result(_row_description(body))
                out.append(current)
            elif kind == b"D":
                if current is None:
                    current = Result(None)
                    out.append(current)
                current.rows.append(_data_row(body))
            elif kind in (b"C", b"E", b"Z", b"I", b"s"):
                current = None
        return out

    def split(self) -> list[Reply]:
        """One Reply per ReadyForQuery: per Query message, or per Sync-terminated batch."""
        out: list[Reply] = []
        current: list[tuple[bytes, bytes]] = []
        for kind, body in self.messages:
            current.append((kind, body))
            if kind == b"Z":
                out.append(Reply(current))
                current = []
        if current:
            out.append(Reply(current))
        return out

    @property
    def rows(self) -> list[tuple[bytes | None, ...]]:
        return [row for r in self.results for row in r.rows]

    def text_rows(self, encoding: str = "utf-8") -> list[tuple[str | None, ...]]:
        return [row for r in self.results for row in r.text(encoding)]

    def column(self, encoding: str = "utf-8") -> list[str | None]:
        """The first column of every data row."""
        return [row[0] for row in self.text_rows(encoding)]

    @property
    def errors(self) -> list[dict[str, str]]:
        return [m.error_fields(body) for kind, body in self.messages if kind == b"E"]

    @property
    def notices(self) -> list[dict[str, str]]:
        return [m.error_fields(body) for kind, body in self.messages if kind == b"N"]

    @property
    def sqlstates(self) -> list[str]:
        return [e.get("C", "") for e in self.errors]

    @property
    def parameters(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, body in self.messages:
            if kind == b"S":
                name, _, value = body.rstrip(b"\x00").partition(b"\x00")
                out[name.decode()] = value.decode("utf-8", "replace")
        return out

    @property
    def tags(self) -> list[str]:
        return [body.rstrip(b"\x00").decode() for kind, body in self.messages if kind == b"C"]

    def warden_refusals(self) -> list[dict[str, str]]:
        """Errors that are Warden's own refusals: 42501 with a message naming Warden."""
        return [e for e in self.errors if e.get("C") == "42501" and "Warden" in e.get("M", "")]


def _row_description(body: bytes) -> list[str]:
    count = struct.unpack("!h", body[:2])[0]
    pos = 2
    names = []
    for _ in range(count):
        end = body.index(0, pos)
        names.append(body[pos:end].decode("utf-8", "replace"))
        pos = end + 1 + 18
    return names


def _data_row(body: bytes) -> tuple[bytes | None, ...]:
    count = struct.unpack("!h", body[:2])[0]
    pos = 2
    values: list[bytes | None] = []
    for _ in range(count):
        length = struct.unpack("!i", body[pos : pos + 4])[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(body[pos : pos + length])
            pos += length
    return tuple(values)


class LoginRefused(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.fields = fields


class RawClient:
    """A logged-in raw protocol connection to the sidecar."""

    def __init__(
        self,
        sidecar: Sidecar,
        user: str = "alice",
        token: str = ALICE_TOKEN,
        params: dict[str, str] | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", sidecar.port), timeout=timeout)
        self.buffer = bytearray()  # grown in place: a large row arrives in many reads
        self.startup_parameters: dict[str, str] = {}
        startup = {"user": user, "database": sidecar.database, **(params or {})}
        self.sock.sendall(m.startup_message(startup))
        scram = ScramClient(token)
        try:
            while True:
                kind, body = self._recv()
                if kind == b"R":
                    code = struct.unpack("!i", body[:4])[0]
                    if code == 10:
                        first = scram.first()
                        payload = b"SCRAM-SHA-256\x00" + m.pack_i32(len(first)) + first
                        self.sock.sendall(m.frame(b"p", payload))
                    elif code == 11:
                        self.sock.sendall(m.frame(b"p", scram.final(body[4:])))
                    elif code == 12:
                        scram.verify(body[4:])
                elif kind == b"S":
                    name, _, value = body.rstrip(b"\x00").partition(b"\x00")
                    self.startup_parameters[name.decode()] = value.decode("utf-8", "replace")
                elif kind == b"Z":
                    return
                elif kind == b"E":
                    raise LoginRefused(m.error_fields(body))
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(m.frame(b"X", b""))
        self.sock.close()

    def _recv(self) -> tuple[bytes, bytes]:
        while len(self.buffer) < 5:
            self._fill()
        length = struct.unpack("!i", self.buffer[1:5])[0]
        while len(self.buffer) < 1 + length:
            self._fill()
        kind, body = bytes(self.buffer[:1]), bytes(self.buffer[5 : 1 + length])
        del self.buffer[: 1 + length]
        return kind, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the sidecar closed the connection")
        self.buffer += chunk

    def send(self, *messages: bytes) -> None:
        """Every message in ONE write."""
        self.sock.sendall(b"".join(messages))

    def read(self, ready: int) -> Reply:
        """Messages until ``ready`` ReadyForQuery (inclusive). A FATAL ends the read early."""
        out: list[tuple[bytes, bytes]] = []
        seen = 0
        while seen < ready:
            try:
                kind, body = self._recv()
            except (ConnectionError, OSError) as exc:
                out.append((b"!", str(exc).encode()))
                break
            out.append((kind, body))
            if kind == b"Z":
                seen += 1
        return Reply(out)

    def exchange(self, *messages: bytes) -> Reply:
        """Send ``messages`` in one write and read every answer (one per Query and Sync)."""
        data = b"".join(messages)
        self.send(data)
        return self.read(ready_count(data))


def public_ssns_in(data: bytes | str) -> set[str]:
    """The raw (unmasked) public SSNs found anywhere in ``data``."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return {s for s in SSNS if s in text}
