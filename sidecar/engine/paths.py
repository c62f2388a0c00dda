"""Paths inside a JSON or array column: the one syntax the scanner, the control plane
and the engine share.

A path names where, inside one column's value, classified data sits:

- ``profile.email``: key ``email`` of the object under key ``profile``;
- ``[]``: every element of an array (the column itself, for ``text[]``; the top-level
  JSON array for a JSON column), so a finding on ``tags text[]`` reads ``tags[]``;
- ``contacts[].phone``: key ``phone`` of every object in the array under ``contacts``.

Grammar: a path is one or more steps; a step is a key or ``[]``; keys after the first
step are preceded by ``.``. Inside a key, ``\\``, ``.``, ``[`` and ``]`` are written
``\\\\``, ``\\.``, ``\\[`` and ``\\]``, so any non-empty key without control characters
can be named (``a\\.b`` is the key ``a.b``). The empty path is the whole column.
``format_path(parse_path(p)) == p`` for every valid ``p``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_PATH_LENGTH = 200  # ColumnClassification.path's length
EACH = "[]"
_ESCAPED = "\\.[]"


class PathError(ValueError):
    """Not a valid path; the message says why (it quotes no value, only the path)."""


class Step(NamedTuple):
    """A key of an object (``key`` set) or every element of an array (``key`` None)."""

    key: str | None

    @property
    def each(self) -> bool:
        return self.key is None


ELEMENTS = Step(None)

# A key that names a field rather than carries a value: an identifier of at most 63
# characters with few digits. Keys can be data too ({"by_email": {"ann@x.org": ...}}),
# and a path is stored, signed into bundles and written into rewritten statements:
# the scanner proposes paths only through such names, and the intake takes no other.
_NAME_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
_MAX_KEY_DIGITS = 4


def name_key(key: str) -> bool:
    """``key`` looks like a field's name, not like a value (``_NAME_KEY``)."""
    return (
        _NAME_KEY.fullmatch(key) is not None and sum(ch.isdigit() for ch in key) <= _MAX_KEY_DIGITS
    )


def escape_key(key: str) -> str:
    return "".join("\\" + ch if ch in _ESCAPED else ch for ch in key)


def format_path(steps: tuple[Step, ...] | list[Step]) -> str:
    out = []
    for i, step in enumerate(steps):
        if step.each:
            out.append(EACH)
        else:
            out.append(("." if i else "") + escape_key(step.key or ""))
    return "".join(out)


def parse_path(path: str) -> tuple[Step, ...]:
    """The steps of ``path``; raises ``PathError``. The empty path has no steps."""
    if len(path) > MAX_PATH_LENGTH:
        raise PathError(f"path longer than {MAX_PATH_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise PathError("path contains a control character")
    steps: list[Step] = []
    i, n = 0, len(path)
    while i < n:
        if path.startswith(EACH, i):
            steps.append(ELEMENTS)
            i += 2
            continue
        if steps:
            if path[i] != ".":
                raise PathError(f"path {path!r}: expected '.' or '[]' at character {i}")
            i += 1
        key: list[str] = []
        while i < n and path[i] not in ".[":
            ch = path[i]
            if ch == "]":
                raise PathError(f"path {path!r}: unescaped ']' at character {i}")
            if ch == "\\":
                if i + 1 >= n or path[i + 1] not in _ESCAPED:
                    raise PathError(f"path {path!r}: bad escape at character {i}")
                key.append(path[i + 1])
                i += 2
                continue
            key.append(ch)
            i += 1
        if not key:
            raise PathError(f"path {path!r}: empty key at character {i}")
        if i < n and path[i] == "[" and not path.startswith(EACH, i):
            raise PathError(f"path {path!r}: unescaped '[' at character {i}")
        steps.append(Step("".join(key)))
    return tuple(steps)


def structured_kind(type_name: str) -> str | None:
    """``json``, ``jsonb`` or ``array`` for a column type a path can point into, else None
    (a domain's name does not say what it is over: no path applies to it)."""
    t = type_name.strip().lower()
    if t.endswith("]"):
        return "array"
    if t in ("json", "jsonb"):
        return t
    return None


def element_type(type_name: str) -> str:
    """``text`` for ``text[]``, ``character varying(32)`` for ``character varying(32)[][]``."""
    t = type_name.strip()
    while t.endswith("]"):
        t = t[: t.rindex("[")].rstrip()
    return t


def path_applies(type_name: str, steps: tuple[Step, ...]) -> bool:
    """Whether ``steps`` can point into a column of ``type_name``: any path into JSON;
    into an array, ``[]`` first, then a path into its elements when they are JSON."""
    if not steps:
        return False
    kind = structured_kind(type_name)
    if kind in ("json", "jsonb"):
        return True
    if kind == "array":
        if not steps[0].each:
            return False
        rest = steps[1:]
        return not rest or structured_kind(element_type(type_name)) in ("json", "jsonb")
    return False
