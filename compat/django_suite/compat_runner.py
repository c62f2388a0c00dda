"""A DiscoverRunner that appends every test's outcome to ``COMPAT_RESULTS`` (JSON lines).

Written as each test ends, so a run stopped by its timeout still counts what ran.
One line per outcome: ``{"id", "outcome", "detail"}`` with ``outcome`` one of
``ok``, ``fail``, ``error``, ``skip``, ``xfail``, ``xpass``; ``detail`` is the
exception's last line (the message a refusal carries), cut to 400 characters.
"""

from __future__ import annotations

import json
import os
import traceback
import unittest
from typing import Any

from django.test.runner import DiscoverRunner


def _last_line(test: Any, err: Any) -> str:
    try:
        lines = traceback.format_exception_only(err[0], err[1])
    except Exception:
        return ""
    text = "".join(lines).strip()
    return text[-400:]


class RecordingResult(unittest.TextTestResult):
    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        path = os.environ.get("COMPAT_RESULTS")
        if not path:
            return
        line = json.dumps({"id": test.id(), "outcome": outcome, "detail": detail})
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "ok")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "fail", _last_line(test, err))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", _last_line(test, err))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip", str(reason)[:200])

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "xpass")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "fail" if failed else "error", _last_line(test, err))


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self) -> Any:
        return RecordingResult
