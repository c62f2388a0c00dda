"""Checks for custom detector patterns before they reach a sidecar's scanner.

A detector's regexes run inside every sidecar on sampled values, so a pattern
that backtracks catastrophically would stall the scanner. Python's ``re``
cannot be interrupted from another thread, so every pattern the user typed is
compiled and run in a short-lived child process with a hard timeout: on probe
strings built to trigger exponential backtracking (``pattern_problems``), and
on the user's own sample strings (``detector_try``). The sidecar still
compiles them defensively.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from governance.models import DETECTOR_REGEX_MAX_LENGTH

PROBE_TIMEOUT_SECONDS = 2.0
MAX_SAMPLES = 20
MAX_SAMPLE_LENGTH = 200
_PROBE_REPEAT = 40

# Runs in the child: compiles each pattern and searches each string with it.
_CHILD = r"""
import json, re, sys
job = json.load(sys.stdin)
out = []
for pattern, strings in job:
    compiled = re.compile(pattern)
    out.append([compiled.search(s) is not None for s in strings])
json.dump(out, sys.stdout)
"""


class PatternTimeout(Exception):
    """A pattern did not finish on the probe or sample strings in time."""


def _probe_strings(pattern: str) -> list[str]:
    """Long runs of characters the pattern mentions (and common ones), each followed by
    characters that make the match fail at the end: the classic ReDoS trigger."""
    chars = {c for c in pattern if c.isprintable() and c not in "()[]{}|*+?^$\\"}
    chars |= set("a0 @._-")
    strings = []
    for ch in sorted(chars):
        for tail in ("!", "\x00", "\n"):
            strings.append(ch * _PROBE_REPEAT + tail)
    strings.append("ab" * _PROBE_REPEAT + "!")
    strings.append("a0" * _PROBE_REPEAT + "!")
    return strings


def _run(job: list[tuple[str, list[str]]], timeout: float) -> list[list[bool]]:
    try:
        completed = subprocess.run(  # noqa: S603 - our own interpreter, a fixed script
            [sys.executable, "-I", "-S", "-c", _CHILD],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise PatternTimeout from exc
    result: list[list[bool]] = json.loads(completed.stdout)
    return result


def pattern_problems(pattern: str) -> list[str]:
    """Why ``pattern`` is refused as a detector regex (empty when it is fine)."""
    if len(pattern) > DETECTOR_REGEX_MAX_LENGTH:
        return [f"At most {DETECTOR_REGEX_MAX_LENGTH} characters."]
    if "\x00" in pattern:
        return ["NUL characters are not allowed."]
    try:
        re.compile(pattern)
    except re.error as exc:
        return [f"Not a valid regular expression: {exc}."]
    try:
        _run([(pattern, _probe_strings(pattern))], PROBE_TIMEOUT_SECONDS)
    except PatternTimeout:
        return [
            "This pattern takes too long on a probe string (catastrophic backtracking, e.g. a "
            "nested repetition such as (a+)+). Simplify it."
        ]
    return []


@dataclass(frozen=True)
class SampleResult:
    sample: str
    name_match: bool | None
    value_match: bool | None


def detector_try(*, name_regex: str, value_regex: str, samples: list[str]) -> list[SampleResult]:
    """Which samples each pattern matches; nothing is stored. Raises ``PatternTimeout``."""
    samples = [s[:MAX_SAMPLE_LENGTH] for s in samples[:MAX_SAMPLES]]
    job: list[tuple[str, list[str]]] = []
    if name_regex:
        job.append((name_regex, samples))
    if value_regex:
        job.append((value_regex, samples))
    results: list[Any] = _run(job, PROBE_TIMEOUT_SECONDS) if job else []
    names = results.pop(0) if name_regex else [None] * len(samples)
    values = results.pop(0) if value_regex else [None] * len(samples)
    return [
        SampleResult(sample=s, name_match=n, value_match=v)
        for s, n, v in zip(samples, names, values, strict=True)
    ]
