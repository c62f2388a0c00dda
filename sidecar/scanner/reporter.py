"""When the running sidecar scans, and how its report reaches the control plane.

Triggers: once at start; every ``scan.interval_seconds`` of the bundle (0 = never
on schedule); and on request, when the bundle's ``scan.requested`` changes to a
new id or a heartbeat reply carries ``scan_requested``. One scan runs at a time,
in a separate worker process with its own database connection (``scan_executor``),
so neither the proxy's event loop nor its interpreter lock ever waits on the
detectors; triggers that arrive meanwhile are coalesced into the next scan (a
request outranks a schedule). A worker that dies is replaced at the next scan.
A failed scan is logged without values and simply runs again at the next
trigger.

Each report is written to ``<state_dir>/scan-report.json`` (findings, never
values) and POSTed to ``/api/v1/sidecar/schema``. While the control plane is
down the last report is kept and retried with exponential backoff; a newer
report replaces it. A control plane that refuses the report's new keys (HTTP
400) gets the original shape instead (findings without share and detector, no
``scan``). The id of the last request answered is kept in
``<state_dir>/scan-state.json``, so a request made while the sidecar was down is
answered by the scan at start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from sidecar.scanner.scan import ScanError, ScanReport, ScanSettings, run_scan

log = logging.getLogger("warden.sidecar.scanner")

SCHEMA_PATH = "/api/v1/sidecar/schema"
MIN_BACKOFF = 1.0
MAX_BACKOFF = 300.0
_LEGACY_FINDING_KEYS = ("schema", "table", "column", "classification", "confidence")

# POST a report body; returns the HTTP status (raises OSError-like errors when unreachable).
Post = Callable[[dict[str, Any]], Awaitable[int]]
Scan = Callable[[ScanSettings, str | None, str], ScanReport]


def legacy_body(body: dict[str, Any]) -> dict[str, Any]:
    """The report in the shape control planes before the ``scan`` contract accept.
    Findings inside a JSON or array column (with a ``path``) are left out: such a
    control plane would take them for the whole column."""
    return {
        "snapshot": body["snapshot"],
        "findings": [
            {k: f[k] for k in _LEGACY_FINDING_KEYS} for f in body["findings"] if "path" not in f
        ],
    }


def without_definitions(body: dict[str, Any]) -> dict[str, Any]:
    """The report without view definitions (the bulkiest optional part); ``body`` itself
    when it has none."""
    tables = body["snapshot"]["tables"]
    if not any("definition" in t for t in tables):
        return body
    slim = [{k: v for k, v in t.items() if k != "definition"} for t in tables]
    return {**body, "snapshot": {**body["snapshot"], "tables": slim}}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:  # the report names tables, columns and findings
        out.write(json.dumps(data))
    tmp.replace(path)


class ScanReporter:
    def __init__(
        self,
        *,
        bundle: Callable[[], dict[str, Any]],
        scan: Scan,
        post: Post | None,
        state_dir: Path,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        executor: Callable[[], concurrent.futures.Executor] | None = None,
    ) -> None:
        self._bundle = bundle
        self._scan = scan
        # None: a thread of this process (tests, the CLI); else a factory, so a
        # broken worker process can be replaced.
        self._executor_factory = executor
        self._executor: concurrent.futures.Executor | None = None
        self._post = post
        self._state_dir = state_dir
        self._on_status = on_status or (lambda _status: None)
        self._wake = asyncio.Event()
        self._pending: tuple[str, str | None] | None = None
        self._answered = self._load_answered()
        self._seen: set[str] = {self._answered} if self._answered else set()
        self.last_report: ScanReport | None = None
        self.reported_id: str | None = None
        self.failures = 0
        self._delivery: asyncio.Task[None] | None = None
        self._delivering: ScanReport | None = None
        self._last_scan = 0.0  # event-loop time the last scan ended
        requested = ScanSettings.from_bundle(bundle()).requested
        if requested and requested != self._answered:
            self._seen.add(requested)
            self._pending = ("request", requested)
        else:
            self._pending = ("start", None)

    # -- triggers --

    def request(self, scan_id: str) -> None:
        """Scan now for request ``scan_id`` (ignored when already seen)."""
        if not scan_id or scan_id in self._seen:
            return
        if len(self._seen) > 1000:  # ids are never reused; keep memory bounded
            self._seen.clear()
        self._seen.add(scan_id)
        self._pending = ("request", scan_id)
        self._wake.set()

    def bundle_changed(self, document: dict[str, Any]) -> None:
        """A bundle subscriber: a new ``scan.requested`` id is a request; a new
        interval takes effect at once."""
        requested = ScanSettings.from_bundle(document).requested
        if requested:
            self.request(requested)
        self._wake.set()

    # -- the loop --

    async def run(self) -> None:
        try:
            while True:
                if self._pending is None:
                    await self._wait_for_trigger()
                trigger = self._pending or ("schedule", None)
                self._pending = None
                await self._scan_once(*trigger)
        finally:
            if self._delivery is not None:
                self._delivery.cancel()
            if self._executor is not None:
                _stop_executor(self._executor)

    async def _wait_for_trigger(self) -> None:
        """Until a request, or the interval since the last scan has passed. The interval
        is re-read whenever the bundle changes; the clock is not reset by it."""
        loop = asyncio.get_running_loop()
        while self._pending is None:
            interval = ScanSettings.from_bundle(self._bundle()).interval_seconds
            self._wake.clear()
            if interval <= 0:
                await self._wake.wait()
                continue
            remaining = self._last_scan + interval - loop.time()
            if remaining <= 0:
                self._pending = ("schedule", None)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _scan_once(self, trigger: str, scan_id: str | None) -> None:
        settings = ScanSettings.from_bundle(self._bundle())
        try:
            report = await self._run_scan(settings, scan_id, trigger)
        except Exception as exc:
            self.failures += 1
            # An unexpected error's message is not ours and could quote a value.
            reason = str(exc) if isinstance(exc, ScanError) else type(exc).__name__
            log.error("scan failed, retrying at the next trigger: %s", reason)
            if scan_id is not None:
                # The request stays open: the next heartbeat reply asks again.
                self._seen.discard(scan_id)
            return
        finally:
            # The interval runs from the end of a scan: a scan slower than its
            # interval is not followed by another at once.
            self._last_scan = asyncio.get_running_loop().time()
        self.last_report = report
        try:
            _write_json(self._state_dir / "scan-report.json", report.body())
        except OSError as exc:
            log.warning("cannot write scan-report.json: %s", exc)
        self._status()
        if self._post is not None:
            if self._delivery is not None and not self._delivery.done():
                self._delivery.cancel()  # a newer report replaces the undelivered one
                if self._delivering is not None and self._delivering.summary["trigger"] == (
                    "request"
                ):
                    # That request is still open on the control plane: asked
                    # again, it is scanned again.
                    self._seen.discard(str(self._delivering.summary["id"]))
            self._delivering = report
            self._delivery = asyncio.create_task(self._deliver(report))

    async def _run_scan(
        self, settings: ScanSettings, scan_id: str | None, trigger: str
    ) -> ScanReport:
        if self._executor_factory is None:
            return await asyncio.to_thread(self._scan, settings, scan_id, trigger)
        if self._executor is None:
            self._executor = self._executor_factory()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self._scan, settings, scan_id, trigger
            )
        except BrokenProcessPool:
            _stop_executor(self._executor)
            self._executor = None  # a fresh worker at the next scan
            raise

    async def _deliver(self, report: ScanReport) -> None:
        """Until delivered: network errors and 5xx are retried with backoff; a 413 gets
        the report without view definitions, a 400 the older shape; a report the
        control plane still refuses after that is dropped (the next scan is another)."""
        assert self._post is not None
        body = report.body()
        delay = MIN_BACKOFF
        while True:
            try:
                status = await self._post(body)
            except Exception as exc:
                status = 0
                log.warning("scan report not delivered (%s); retrying in %.0f s", exc, delay)
            else:
                if 200 <= status < 300:
                    self._delivered(report)
                    return
                if status == 413 and body is not (smaller := without_definitions(body)):
                    log.warning("scan report too large; sending it without view definitions")
                    body = smaller
                    continue
                if status == 400 and "scan" in body:
                    log.warning("control plane refused the scan report; sending the older shape")
                    body = legacy_body(body)
                    continue
                if status in (400, 413, 422):
                    log.error("control plane refused the scan report (HTTP %s); dropped", status)
                    return
                log.warning("scan report answered HTTP %s; retrying in %.0f s", status, delay)
            await asyncio.sleep(delay)
            delay = min(MAX_BACKOFF, delay * 2)

    def _delivered(self, report: ScanReport) -> None:
        scan_id = str(report.summary["id"])
        self.reported_id = scan_id
        log.info("scan %s reported to the control plane", scan_id)
        if report.summary["trigger"] == "request":
            self._answered = scan_id
            try:
                _write_json(self._state_dir / "scan-state.json", {"answered_request": scan_id})
            except OSError as exc:
                log.warning("cannot write scan-state.json: %s", exc)
        self._status()

    def _load_answered(self) -> str | None:
        try:
            data = json.loads((self._state_dir / "scan-state.json").read_text())
        except (OSError, ValueError):
            return None
        answered = data.get("answered_request") if isinstance(data, dict) else None
        return answered if isinstance(answered, str) else None

    def _status(self) -> None:
        report = self.last_report
        if report is None:
            return
        self._on_status(
            {
                **report.summary,
                "findings": len(report.findings),
                "errors": len(report.errors),
                "detectors_timed_out": list(report.detectors_timed_out),
                "reported": self.reported_id == report.summary["id"],
                "at": time.time(),
            }
        )


def scanner_for(dsn: str, password: str | None) -> Scan:
    """The scan with the sidecar's upstream credential (picklable, for a worker process)."""
    return functools.partial(_scan_with, dsn, password)


def _scan_with(
    dsn: str, password: str | None, settings: ScanSettings, scan_id: str | None, trigger: str
) -> ScanReport:
    return run_scan(dsn, password=password, settings=settings, scan_id=scan_id, trigger=trigger)


def scan_executor(log_level: str) -> concurrent.futures.Executor:
    """One worker process, started fresh ("spawn": no copy of the proxy's threads or
    sockets), logging like the sidecar, alive between scans."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(log_level, os.getpid()),
    )


def _stop_executor(executor: concurrent.futures.Executor) -> None:
    """Stop at once: a scan still running in the worker would otherwise hold up the
    sidecar's exit until it finished (it only reads, so cutting it short is safe)."""
    processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


def _worker_init(log_level: str, parent: int) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # A sidecar killed outright (SIGKILL, OOM) cannot stop its pool: the worker would
    # wait for scans forever. It follows its parent instead. (Not PR_SET_PDEATHSIG,
    # which follows the thread that happened to start the process.)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)
