"""PostgreSQL protocol 3.0 message framing: builders and small parsers.

Everything here is a pure function over bytes, so the session code can stay a
state machine and these pieces can be checked on their own. Only the fields the
sidecar needs are parsed; everything else is forwarded as the bytes it arrived as.
"""

from __future__ import annotations

import struct

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Sanity limits, as PostgreSQL applies them (pqcomm.c): control messages are small;
# anything larger is refused and that connection closed, so one bad client cannot
# make the sidecar buffer gigabytes.
MAX_STARTUP_LENGTH = 10_000
SMALL_MESSAGE_LIMIT = 10_000
SMALL_TYPES = frozenset(b"CDEHSXcfp")

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")
_I16 = struct.Struct("!h")
_U32 = struct.Struct("!I")


class ProtocolViolation(Exception):
    """The peer sent something that is not valid protocol; its connection is closed."""


def frame(kind: bytes, payload: bytes) -> bytes:
    return kind + _I32.pack(len(payload) + 4) + payload


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


def error_response(
    *,
    sqlstate: str,
    message: str,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate)]
    fields.append(b"M" + cstr(message))
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    if position is not None:
        fields.append(b"P" + cstr(str(position)))
    return frame(b"E", b"".join(fields) + b"\x00")


def notice_response(message: str) -> bytes:
    """A NoticeResponse: clients show it as it arrives (psql prints it at once),
    whatever they are waiting for."""
    fields = b"SNOTICE\x00VNOTICE\x00C00000\x00M" + cstr(message)
    return frame(b"N", fields + b"\x00")


def error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse payload, keyed by their one-letter code."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        code = chr(payload[pos])
        end = payload.index(0, pos + 1)
        out[code] = payload[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return out


# Fields of an ErrorResponse that name things rather than carry values. DETAIL,
# HINT, CONTEXT and the internal query can quote a row, a key or a parameter.
_NAMING_FIELDS = frozenset(b"SVCMPsctdnFLR")


def error_without_values(payload: bytes) -> bytes:
    """An ErrorResponse with only the fields that cannot carry a row's values."""
    kept = []
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        end = payload.index(0, pos + 1)
        if payload[pos] in _NAMING_FIELDS:
            kept.append(payload[pos : end + 1])
        pos = end + 1
    kept.append(b"D" + cstr("Warden withheld the details: they may contain masked values"))
    return frame(b"E", b"".join(kept) + b"\x00")


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)


def auth_request(code: int, data: bytes = b"") -> bytes:
    return frame(b"R", _I32.pack(code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return frame(b"K", struct.pack("!ii", pid, secret))


def negotiate_protocol_version(minor: int, unrecognised: list[str]) -> bytes:
    body = struct.pack("!ii", minor, len(unrecognised)) + b"".join(cstr(o) for o in unrecognised)
    return frame(b"v", body)


def query(sql: bytes) -> bytes:
    return frame(b"Q", sql + b"\x00")


def parse_startup(payload: bytes) -> dict[str, str]:
    """Key/value pairs of a StartupMessage body (after the protocol version)."""
    params: dict[str, str] = {}
    parts = payload.split(b"\x00")
    # The list ends with an empty name (the terminating NUL) and the split remainder.
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolViolation("startup packet is not NUL-terminated")
    items = parts[:-2]
    if len(items) % 2:
        raise ProtocolViolation("startup packet has a name without a value")
    for i in range(0, len(items), 2):
        try:
            params[items[i].decode()] = items[i + 1].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    return params


def startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in params.items())
    body += b"\x00"
    return _I32.pack(len(body) + 4) + body


def parse_parse(payload: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a Parse payload into (statement name, query text, parameter-type tail)."""
    name_end = payload.index(0)
    sql_end = payload.index(0, name_end + 1)
    return payload[:name_end], payload[name_end + 1 : sql_end], payload[sql_end + 1 :]


def build_parse(name: bytes, sql: bytes, tail: bytes) -> bytes:
    return frame(b"P", name + b"\x00" + sql + b"\x00" + tail)


def parse_bind_names(payload: bytes) -> tuple[bytes, bytes]:
    """(portal, statement) of a Bind payload; the rest is forwarded untouched."""
    portal_end = payload.index(0)
    stmt_end = payload.index(0, portal_end + 1)
    return payload[:portal_end], payload[portal_end + 1 : stmt_end]


def parse_bind_params(message: bytes) -> list[tuple[int, bytes | None]]:
    """(format, value) of each parameter of a framed Bind message (value None: NULL).
    Raises ``ValueError`` on a malformed one."""
    try:
        pos = message.index(0, 5) + 1
        pos = message.index(0, pos) + 1
        (count,) = _I16.unpack_from(message, pos)
        formats = [_I16.unpack_from(message, pos + 2 + 2 * i)[0] for i in range(count)]
        pos += 2 + 2 * count
        (n,) = _I16.unpack_from(message, pos)
        pos += 2
        if count not in (0, 1, n):
            raise ValueError("Bind: parameter format count mismatch")
        params: list[tuple[int, bytes | None]] = []
        for i in range(n):
            (length,) = _I32.unpack_from(message, pos)
            pos += 4
            fmt = formats[i] if count == n else (formats[0] if count else 0)
            if length < 0:
                params.append((fmt, None))
                continue
            if pos + length > len(message):
                raise ValueError("Bind: parameter value past the end of the message")
            params.append((fmt, message[pos : pos + length]))
            pos += length
    except struct.error as exc:
        raise ValueError(f"Bind: {exc}") from None
    return params


def parse_param_types(tail: bytes) -> list[int]:
    """The parameter type OIDs of a Parse's tail (0: unspecified)."""
    try:
        (count,) = _I16.unpack_from(tail, 0)
        return [_U32.unpack_from(tail, 2 + 4 * i)[0] for i in range(count)]
    except struct.error:
        return []


def command_rows(tag: bytes) -> int | None:
    """Rows affected or returned, from a CommandComplete tag such as ``SELECT 3``."""
    head, _, last = tag.rstrip(b"\x00").rpartition(b" ")
    if head and last.isdigit():
        return int(last)
    return None


def unpack_i32(data: bytes | bytearray | memoryview, pos: int = 0) -> int:
    return int(_I32.unpack_from(data, pos)[0])


def unpack_i16(data: bytes | bytearray | memoryview, pos: int = 0) -> int:
    return int(_I16.unpack_from(data, pos)[0])


def pack_i32(value: int) -> bytes:
    return _I32.pack(value)
