"""PII inside JSON and array columns: sampled values walked into per-path leaf samples.

A JSON/JSONB column's sampled values, and an array column's elements (sampled as a
JSON array, see ``sampling``), are walked: object keys and array elements become
path steps (``sidecar.engine.paths``: ``profile.email``, ``[]``,
``contacts[].phone``), and the scalar leaves found under each path form one sample
the ordinary detectors judge, with the path's last key as the name hint (``email``
for ``profile.email``; the column's own name for ``[]``).

Bounded, so that one wide or deep document cannot make a scan slow:

- ``JSON_VALUE_MAX`` bytes per sampled value (larger values are not read at all);
- ``MAX_ELEMENTS`` elements per array (an array column's first ones, in SQL;
  every JSON array's first ones, here);
- ``MAX_DEPTH`` steps below the column;
- ``MAX_PATHS`` distinct paths per column (the first ones met; leaves of other
  paths are not collected);
- ``MAX_LEAVES`` leaves per value.

Strings are text leaves, numbers number leaves (each cut to ``VALUE_MAX``
characters); booleans and nulls are skipped. Keys that are empty or hold control
characters cannot be named by a path and are skipped. Nothing here logs or
returns a value outside the samples handed to the detectors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.engine.paths import ELEMENTS, MAX_PATH_LENGTH, Step, format_path, name_key
from sidecar.scanner.detectors import NUMBER, TEXT

JSON_VALUE_MAX = 16_384
MAX_ELEMENTS = 50
MAX_DEPTH = 8
MAX_PATHS = 64
MAX_LEAVES = 1_000
VALUE_MAX = 512


@dataclass(slots=True)
class PathSample:
    """The leaves found under one path: their values (as text) and their family."""

    path: str
    name: str  # the name hint: the path's last key, else the column's name
    values: list[str] = field(default_factory=list)
    numbers_only: bool = True

    @property
    def family(self) -> str:
        return NUMBER if self.numbers_only else TEXT


def _name(steps: tuple[Step, ...], column: str) -> str:
    for step in reversed(steps):
        if step.key is not None:
            return step.key
    return column


def path_samples(column: str, values: Iterable[str]) -> list[PathSample]:
    """Per-path leaf samples of one column's sampled JSON texts, in the order met."""
    samples: dict[tuple[Step, ...], PathSample] = {}
    for text in values:
        if len(text) > JSON_VALUE_MAX:
            continue
        try:
            document = json.loads(text)
        except ValueError:
            continue
        _walk(document, (), column, samples, [MAX_LEAVES])
    return list(samples.values())


def _walk(
    node: Any,
    steps: tuple[Step, ...],
    column: str,
    samples: dict[tuple[Step, ...], PathSample],
    budget: list[int],
    depth: int = 0,
    opaque: bool = False,
) -> None:
    """Collect the leaves under ``node`` at ``steps``. ``opaque``: below a key that is
    not a field's name, where every leaf counts for ``steps``, the last path that
    only names fields (so the finding masks that whole value)."""
    if budget[0] <= 0:
        return
    if isinstance(node, dict):
        if depth >= MAX_DEPTH:
            return
        for key, value in node.items():
            # Only through a key that names a field: a key can be a value itself (an
            # e-mail address or an id keying a map), and a path leaves the sidecar
            # (a review's finding: paths carried raw addresses and SSNs).
            if not opaque and name_key(key):
                _walk(value, (*steps, Step(key)), column, samples, budget, depth + 1)
            elif steps:
                _walk(value, steps, column, samples, budget, depth + 1, opaque=True)
        return
    if isinstance(node, list):
        if depth >= MAX_DEPTH:
            return
        for value in node[:MAX_ELEMENTS]:
            inner = steps if opaque else (*steps, ELEMENTS)
            _walk(value, inner, column, samples, budget, depth + 1, opaque)
        return
    if node is None or isinstance(node, bool) or not steps:
        return  # a scalar at the top is the whole column: not a path
    if isinstance(node, str):
        leaf, number = node[:VALUE_MAX], False
    elif isinstance(node, int | float):
        leaf, number = str(node)[:VALUE_MAX], True
    else:
        return
    sample = samples.get(steps)
    if sample is None:
        if len(samples) >= MAX_PATHS:
            return
        path = format_path(steps)
        if len(path) > MAX_PATH_LENGTH:
            return
        sample = samples[steps] = PathSample(path, _name(steps, column))
    budget[0] -= 1
    if leaf:
        sample.values.append(leaf)
        sample.numbers_only = sample.numbers_only and number
