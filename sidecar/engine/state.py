"""Session state: what a statement is judged under, and what may change it.

Three settings decide how PostgreSQL reads a statement: ``client_encoding``
(which bytes are characters), ``standard_conforming_strings`` (what a
backslash means in a string) and ``search_path`` (which table an unqualified
name is). The engine judges every statement under the values the server has
confirmed (``SessionContext``), and marks as a **barrier** every statement that
may change them: ``SET``/``RESET`` of those names, ``RESET ALL``, ``DISCARD``,
``set_config`` of a tracked name, ``DO``, ``CALL``, and calls of functions
outside the inert categories. The proxy holds whatever follows a barrier until
the server confirms the new state, then has it judged under that.

The changes themselves are allowlisted: ``standard_conforming_strings`` may
only be set to on; ``client_encoding`` only to an encoding whose text the
sidecar reads exactly as the server does (``sidecar.encodings``); and
``search_path`` only to ``''``, ``pg_catalog`` first, ``"$user"`` and schemas
of the snapshot, never the reserved masking schema.
"""

from __future__ import annotations

from sidecar import encodings
from sidecar.engine.bundle import Bundle
from sidecar.engine.masking import RESERVED_SCHEMA

TRACKED_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings", "search_path"})
_SCS_ON = frozenset({"on", "true", "yes", "1", "t", "y"})


def parse_search_path(value: str) -> tuple[str, ...] | None:
    """A search_path string split as PostgreSQL's SplitIdentifierString does, or None
    when the server would refuse it (unterminated quote, empty element)."""
    names: list[str] = []
    i, n = 0, len(value)
    while i < n and value[i].isspace():
        i += 1
    if i == n:
        return ()
    while True:
        if i < n and value[i] == '"':
            end = i + 1
            name = []
            while True:
                close = value.find('"', end)
                if close < 0:
                    return None
                name.append(value[end:close])
                if close + 1 < n and value[close + 1] == '"':
                    name.append('"')
                    end = close + 2
                    continue
                i = close + 1
                break
            ident = "".join(name)
            if not ident:
                return None
        else:
            start = i
            while i < n and value[i] != "," and not value[i].isspace():
                i += 1
            ident = value[start:i].lower()
            if not ident:
                return None
        names.append(ident)
        while i < n and value[i].isspace():
            i += 1
        if i == n:
            return tuple(names)
        if value[i] != ",":
            return None
        i += 1
        while i < n and value[i].isspace():
            i += 1


def search_path_refusal(schemas: tuple[str, ...], bundle: Bundle) -> str | None:
    """Why ``schemas`` may not become the search_path, or None when it may."""
    allowed = {t.schema for t in bundle.tables.values()} - {RESERVED_SCHEMA}
    for index, schema in enumerate(schemas):
        if schema == "pg_catalog":
            if index != 0:
                # Listed after another schema, pg_catalog would let a same-named
                # function there shadow a built-in the engine allowed by name.
                return "pg_catalog may only come first in the search_path"
            continue
        if schema in ("", "$user"):
            continue
        if schema not in allowed:
            return f"the schema {schema!r} is not in the datasource's schema snapshot"
    return None


def setting_refusal(name: str, values: list[str | None], bundle: Bundle) -> str | None:
    """Why setting a tracked ``name`` to ``values`` (SET arguments, or set_config's
    value as one item) is refused, or None. None in ``values`` is a computed value."""
    if any(v is None for v in values):
        return f"{name} may only be set to a constant"
    given = [v for v in values if v is not None]
    if name == "standard_conforming_strings":
        if len(given) != 1 or given[0].lower() not in _SCS_ON:
            return (
                "standard_conforming_strings may only be set to on (it changes how every "
                "later statement is read)"
            )
        return None
    if name == "client_encoding":
        if len(given) != 1:
            return "client_encoding takes one encoding name"
        return encodings.refusal(given[0])
    if name == "search_path":
        return search_path_refusal(tuple(given), bundle)
    return None


def set_config_refusal(value: str | None, name: str, bundle: Bundle) -> str | None:
    """Like ``setting_refusal`` for ``set_config(name, value, ...)``, whose value for
    search_path is one list string."""
    if value is None:
        return f"{name} may only be set to a constant"
    if name == "search_path":
        schemas = parse_search_path(value)
        if schemas is None:
            return "the search_path value is not a valid list of schema names"
        return search_path_refusal(schemas, bundle)
    return setting_refusal(name, [value], bundle)
