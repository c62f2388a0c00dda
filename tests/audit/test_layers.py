"""The audit sink imports no other app, and governance and audit import each other in no cycle.

Read from the source (every ``import``, also those inside functions), so a lazy
import cannot hide a dependency. ``lint-imports`` checks the same layering for
``make test`` (pyproject.toml); this keeps the audit app's part of it next to
its tests, with the lazy imports counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OTHER_APPS = ("governance", "approvals", "gateway", "config", "audit.reporting")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph(*packages: str) -> dict[str, set[str]]:
    modules = {
        _module_name(path): path
        for package in packages
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_sink_and_the_models_import_no_other_app() -> None:
    sources = [*(ROOT / "audit" / "sink").rglob("*.py"), ROOT / "audit" / "models.py"]
    for path in sources:
        foreign = {m for m in _imports(path) if any(_is_in(m, app) for app in OTHER_APPS)}
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_governance_and_audit_import_each_other_in_no_cycle() -> None:
    graph = _graph("governance", "audit", "approvals")
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(component)
    mixed = [
        sorted(c)
        for c in cycles
        if any(_is_in(m, "audit") for m in c) and any(not _is_in(m, "audit") for m in c)
    ]
    assert not mixed, f"import cycles between audit and other apps: {mixed}"
