"""The session state the server has confirmed, and the probe that asks for it.

A statement is judged under ``client_encoding``, ``standard_conforming_strings``
and the effective ``search_path``. The sidecar never infers them from what a
client asked for: after a statement that may change them (a barrier, see
``sidecar.engine.state``) it asks the server with ``PROBE_SQL`` and holds the
client's next messages until the answer arrives. The probe is the sidecar's
own statement: its replies never reach the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.proxy import messages as m

# Read-only, schema-qualified, types included (neither a client's search_path nor a
# type of its temporary schema can redirect it), and
# answered even inside an open transaction.
PROBE_SQL = (
    b"SELECT pg_catalog.current_schemas(true)::pg_catalog.text, "
    b"pg_catalog.current_setting('client_encoding'), "
    b"pg_catalog.current_setting('standard_conforming_strings')"
)


@dataclass(frozen=True, slots=True)
class SessionState:
    """One confirmed state; a new object on every change, so identity means "unchanged"."""

    client_encoding: str
    standard_conforming_strings: bool
    search_path: tuple[str, ...] | None  # current_schemas(true); None: not yet known

    def to_audit(self) -> dict[str, Any]:
        return {
            "client_encoding": self.client_encoding,
            "standard_conforming_strings": "on" if self.standard_conforming_strings else "off",
            "search_path": None if self.search_path is None else list(self.search_path),
        }


# What makes a role too privileged to stand between clients and the database: it
# would turn any statement the engine misjudges into files, programs, other roles
# or all data. pg_has_role(..., 'MEMBER') follows inherited membership too.
PRIVILEGED_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_read_all_data",
    "pg_write_all_data",
)
PRIVILEGES_SQL = (
    "SELECT pg_catalog.concat_ws(',', "
    "CASE WHEN r.rolsuper THEN 'SUPERUSER' END, "
    "CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, "
    "CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, "
    + ", ".join(
        f"CASE WHEN pg_catalog.pg_has_role(r.oid, '{role}', 'MEMBER') THEN '{role}' END"
        for role in PRIVILEGED_ROLES
    )
    + ") FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
)
# The probe at login: the state, and what the sidecar's own role may do.
LOGIN_PROBE_SQL = PROBE_SQL + b", (" + PRIVILEGES_SQL.encode() + b")"


def probe_synced(name: bytes) -> bytes:
    """The probe between message cycles, as its own extended-protocol cycle ending in
    Sync: unlike a simple Query it leaves the client's unnamed statement alone."""
    return _probe_messages(name) + m.frame(b"S", b"")


def probe_extended(name: bytes) -> bytes:
    """The probe inside an extended-protocol batch, without ending it: a statement and
    portal of the sidecar's own, executed, closed, then a Flush so the answer comes
    back before the client's Sync (which waits behind the probe)."""
    return _probe_messages(name) + m.frame(b"H", b"")


def _probe_messages(name: bytes) -> bytes:
    return (
        m.build_parse(name, PROBE_SQL, b"\x00\x00")
        + m.frame(b"B", name + b"\x00" + name + b"\x00" + b"\x00\x00\x00\x00\x00\x00")
        + m.frame(b"E", name + b"\x00" + b"\x00\x00\x00\x00")
        + m.frame(b"C", b"P" + name + b"\x00")
        + m.frame(b"C", b"S" + name + b"\x00")
    )


# Replies to the extended probe: ParseComplete, BindComplete, DataRow,
# CommandComplete, CloseComplete, CloseComplete.
EXTENDED_REPLIES = 6


def parse_row(body: bytes, columns: int = 3) -> tuple[str, ...] | None:
    """The probe's DataRow: (schemas array text, client_encoding, scs[, privileges])."""
    try:
        count = m.unpack_i16(body, 0)
        pos = 2
        values = []
        for _ in range(count):
            size = m.unpack_i32(body, pos)
            pos += 4
            if size < 0:
                return None
            values.append(body[pos : pos + size].decode("utf-8"))
            pos += size
    except (IndexError, UnicodeDecodeError, ValueError):
        return None
    if len(values) != columns:
        return None
    return tuple(values)


def parse_name_array(text: str) -> tuple[str, ...] | None:
    """A one-dimensional ``name[]`` in PostgreSQL's text form, e.g. ``{pg_catalog,"a b"}``."""
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        return None
    body = text[1:-1]
    out: list[str] = []
    i, n = 0, len(body)
    if n == 0:
        return ()
    while i <= n:
        if i < n and body[i] == '"':
            i += 1
            item = []
            while i < n and body[i] != '"':
                if body[i] == "\\" and i + 1 < n:
                    i += 1
                item.append(body[i])
                i += 1
            if i >= n:
                return None
            i += 1
            out.append("".join(item))
        else:
            end = body.find(",", i)
            end = n if end < 0 else end
            out.append(body[i:end])
            i = end
        if i == n:
            return tuple(out)
        if body[i] != ",":
            return None
        i += 1
    return tuple(out)
