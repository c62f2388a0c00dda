"""What the import-linter contracts (pyproject.toml, run by ``make test``) cannot say:
no import cycle between the control plane's rooms.

A room is an app, except that ``audit`` is two rooms: its sink (``audit.sink``,
``audit.models``, ``audit.report_models``, ``audit.context``: events, chain, intake, history), which
every app writes to, and the rest of the app (reporting, pages, tasks, the
re-exports kept for old import paths), which may read every app. ``config``
wires everything together and is left out.
"""

from __future__ import annotations

import grimp

APPS = ("gateway", "governance", "approvals", "audit")


SINK = ("audit.sink", "audit.models", "audit.report_models", "audit.context")


def _room(module: str) -> str:
    if any(module == m or module.startswith(m + ".") for m in SINK):
        return "audit.sink"
    return module.split(".")[0]


def _room_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph(*APPS, cache_dir=None)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = _room(module), _room(imported)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def test_no_import_cycle_between_rooms():
    assert _cycles(_room_graph()) == []


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
