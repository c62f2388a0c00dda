"""docs/security.md names the test behind each claim: every file and test it names
exists, so a renamed or deleted test cannot leave a claim without its witness."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"

# `tests/x/test_y.py`, `tests/x/test_y.py::test_z`, or a bare `test_y.py` /
# `test_y.py::test_z` read relative to the last full path named before it.
_NAMED = re.compile(r"`((?:tests/[\w/]+/)?test_\w+\.py)(?:::(test_\w+))?|`(tests/[\w/]+/)`")
# `test_z` alone, in parentheses after a file: one of that file's tests.
_LISTED = re.compile(r"\(([^()]*)\)")


def _tests_in(path: Path) -> set[str]:
    return set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE))


def _resolve(name: str, last_dir: Path | None) -> Path:
    if name.startswith("tests/"):
        return ROOT / name
    if last_dir is not None and (last_dir / name).exists():
        return last_dir / name
    candidates = sorted((ROOT / "tests").rglob(name))
    assert len(candidates) == 1, f"{name}: ambiguous or missing ({candidates})"
    return candidates[0]


def test_every_test_named_in_the_security_model_exists() -> None:
    text = DOC.read_text()
    last_dir: Path | None = None
    checked = 0
    for match in _NAMED.finditer(text):
        if match.group(3):  # a directory: the files named next are in it
            last_dir = ROOT / match.group(3)
            continue
        path = _resolve(match.group(1), last_dir)
        assert path.exists(), f"docs/security.md names {match.group(1)}, which does not exist"
        last_dir = path.parent
        tests = _tests_in(path)
        wanted = [match.group(2)] if match.group(2) else []
        following = text[match.end() : match.end() + 400]
        listed = _LISTED.match(following.lstrip(" `"))
        if listed:
            wanted += re.findall(r"`(test_\w+?)(?:_\*)?`", listed.group(1))
        for name in wanted:
            if following.find(name + "_*") >= 0:
                assert any(t.startswith(name) for t in tests), f"{path.name}: no {name}*"
            else:
                assert name in tests, f"docs/security.md names {path.name}::{name}: not there"
            checked += 1
    assert checked > 30  # the parser still finds the claims


def test_every_test_function_the_security_model_names_exists_somewhere() -> None:
    everywhere: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        everywhere |= _tests_in(path)
    named = set(re.findall(r"(?<![\w.:])(test_\w+?)(?:_\*)?`", DOC.read_text()))
    assert len(named) > 20
    missing = sorted(
        n for n in named if n not in everywhere and not any(t.startswith(n) for t in everywhere)
    )
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
