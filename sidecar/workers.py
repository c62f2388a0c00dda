"""Several worker processes serving one sidecar's port, so it can use every core.

With ``workers = N`` above 1, ``python -m sidecar run`` becomes a small parent
process that serves no client itself. It reserves the listening port (bound with
``SO_REUSEPORT``, never listening, so the kernel gives it no connection and no
other program the port), starts N workers (``multiprocessing`` "spawn": fresh
interpreters, nothing inherited from a running event loop), each running the
whole sidecar of ``sidecar.runner.serve`` on that port, and restarts a worker
that dies. On SIGTERM it stops them all, then itself.

What must be one for the whole sidecar and how it stays one:

- **Failed sign-ins** are counted in the parent (``SharedState`` holds the one
  ``LoginThrottle``): every worker asks it before a SCRAM exchange and reports
  each failure before answering the client, over a Unix socket in a directory
  only the sidecar's user can enter. A worker that cannot get an answer refuses
  the sign-in, and a worker whose link to the parent breaks stops (fail closed).
- **Cancel requests**: each worker issues BackendKeyData whose process id names
  it (``CancelRoute``); a CancelRequest landing on another worker is handed over
  that worker's control socket to the one that issued the key.
- **The audit spool**: one per worker, worker 0's where a single process keeps it
  (``<state_dir>/spool``), worker i's in ``<state_dir>/spool/worker-<i>``; a
  spool of a worker index no longer configured is shipped by worker 0.
- **The control plane sees one sidecar**: only worker 0 sends heartbeats (with
  every worker's counters, gathered over their control sockets: totals in
  ``counters``, each worker's own in ``status.workers``) and runs the scanner.
  Each worker fetches and verifies bundles itself.
- **Metrics and readiness**: the parent serves ``metrics_listen`` with every
  worker's metrics, labelled ``worker="<i>"``, and writes ``ready_file`` once
  every worker serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.config import ConfigError, SidecarConfig
from sidecar.proxy.server import (
    CancelRoute,
    LoginThrottle,
    SignInLimitsUnavailable,
    SignInPair,
)

if TYPE_CHECKING:
    from sidecar.metrics import Metrics
    from sidecar.proxy.server import ProxyServer

log = logging.getLogger("warden.sidecar.workers")

SHARED_SOCKET = "shared.sock"
# How long a worker waits for the parent's answer before refusing the sign-in.
SHARED_TIMEOUT = 2.0
# A worker that dies sooner than this after its start is restarted after a delay
# that doubles (to RESTART_MAX_DELAY), so a worker that cannot start does not spin.
RESTART_SETTLED = 30.0
RESTART_MAX_DELAY = 30.0
# The exit status of a worker that refused to start (a privileged upstream role...):
# restarting it would only repeat the refusal, so the sidecar stops.
EXIT_REFUSED = 2


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """What the parent tells worker ``index`` of ``count`` (picklable: passed to spawn)."""

    index: int
    count: int
    run_dir: str  # the parent's private directory of Unix sockets
    port: int  # the port every worker listens on

    def control_socket(self, index: int) -> str:
        return str(Path(self.run_dir) / f"worker-{index}.sock")


def spool_directory(state_dir: str | Path, index: int) -> Path:
    """Worker 0's spool is where a single process keeps it; the others' beside it."""
    spool = Path(state_dir) / "spool"
    return spool if index == 0 else spool / f"worker-{index}"


def orphan_spools(state_dir: str | Path, count: int) -> list[Path]:
    """Spools of worker indexes no longer configured (the sidecar ran with more)."""
    found = []
    for path in (Path(state_dir) / "spool").glob("worker-*"):
        suffix = path.name.removeprefix("worker-")
        if path.is_dir() and suffix.isdigit() and int(suffix) >= count:
            found.append(path)
    return sorted(found)


# ---- the parent -------------------------------------------------------------------


class SharedState:
    """What every worker must see alike, held in the parent: failed sign-ins.

    One JSON object per line on a Unix socket, each request with an ``id`` its
    answer repeats: ``blocked`` (seconds the pair still backs off), ``failed``,
    ``succeeded``, and the worker's ``ready`` and scan ``status``.
    """

    def __init__(self, on_ready: Callable[[int, dict[str, Any]], None]) -> None:
        self.throttle = LoginThrottle()
        self.on_ready = on_ready

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op in ("blocked", "attempt", "failed", "succeeded"):
            name, address, known = request["pair"]
            pair = SignInPair(str(name), str(address), bool(known))
            if op == "blocked":
                return {"wait": self.throttle.blocked_for(pair)}
            if op == "attempt":  # checked and counted in one answer: see attempt()
                return {"wait": self.throttle.attempt(pair)}
            if op == "failed":
                self.throttle.failed(pair)
            else:
                self.throttle.succeeded(pair)
            return {}
        if op in ("ready", "status"):
            self.on_ready(int(request["worker"]), request)
            return {}
        raise ValueError(f"unknown request {op!r}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                request = json.loads(line)
                try:
                    reply = {"id": request.get("id"), **self.answer(request)}
                except (IndexError, KeyError, TypeError, ValueError) as exc:
                    reply = {"id": request.get("id"), "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()


@dataclass
class _Child:
    slot: WorkerSlot
    process: BaseProcess | None = None
    started: float = 0.0
    delay: float = 1.0
    ready: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) the port with SO_REUSEPORT, for the workers to listen on.

    First without SO_REUSEPORT: a port another program holds, or another sidecar
    with workers (whose group would otherwise take this one in and split the
    clients between two sidecars), is refused before any worker starts. It also
    picks the port when ``port`` is 0. The reservation keeps it ours meanwhile."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
        address = probe.getsockname()
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


class Supervisor:
    """The parent: starts the workers, restarts the ones that die, stops them all."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.stopping = False
        self.refused = False
        self.metrics_port: int | None = None
        self.children: list[_Child] = []
        self.changed = asyncio.Event()

    def _on_ready(self, index: int, message: dict[str, Any]) -> None:
        child = self.children[index]
        if message.get("op") == "ready":
            child.ready = {"pid": int(message["pid"]), "port": int(message["port"])}
        elif isinstance(message.get("scan"), dict):
            child.ready["scan"] = message["scan"]
        self.changed.set()

    def _start(self, child: _Child) -> None:
        child.ready = {}
        child.started = time.monotonic()
        process = self.context.Process(
            target=worker_main,
            args=(self.config, child.slot),
            name=f"warden-sidecar-worker-{child.slot.index}",
        )
        process.start()
        child.process = process
        log.info("worker %d started (pid %s)", child.slot.index, process.pid)

    def _write_ready(self, port: int) -> None:
        if not self.config.ready_file:
            return
        data: dict[str, Any] = {
            "port": port,
            "pid": os.getpid(),
            "workers": [{"index": c.slot.index, "pid": c.ready.get("pid")} for c in self.children],
        }
        if self.metrics_port is not None:
            data["metrics_port"] = self.metrics_port
        scan = self.children[0].ready.get("scan")
        if scan is not None:
            data["scan"] = scan
        target = Path(self.config.ready_file)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(target)

    async def _watch(self, port: int) -> None:
        """Restart dead workers; rewrite the readiness file while every one serves."""
        while not self.stopping:
            for child in self.children:
                process = child.process
                if process is None or process.exitcode is None:
                    continue
                code = process.exitcode
                if code == EXIT_REFUSED and not child.ready:
                    log.error("worker %d refused to start; stopping", child.slot.index)
                    self.refused = True
                    self.stopping = True
                    return
                # At once after a long run; a worker that keeps dying waits longer each time.
                settled = time.monotonic() - child.started > RESTART_SETTLED
                delay = 0.0 if settled else child.delay
                child.delay = 1.0 if settled else min(child.delay * 2, RESTART_MAX_DELAY)
                log.error(
                    "worker %d (pid %s) exited with %s; restarting in %.0f s",
                    child.slot.index,
                    process.pid,
                    code,
                    delay,
                )
                child.process = None
                child.ready = {}
                child.restarts += 1
                asyncio.get_running_loop().call_later(delay, self._restart, child)
            if self.changed.is_set():
                self.changed.clear()
                if all(c.ready for c in self.children):
                    self._write_ready(port)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)

    def _restart(self, child: _Child) -> None:
        if not self.stopping and child.process is None:
            self._start(child)

    async def _stop_workers(self, timeout: float = 10.0) -> None:
        live = [c.process for c in self.children if c.process is not None]
        for process in live:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in live:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker pid %s did not stop in %.0f s; killing it", process.pid, timeout)
                process.kill()
                await asyncio.to_thread(process.join, 5.0)

    async def render_metrics(self) -> str:
        texts = await asyncio.gather(
            *(control_request(c.slot.control_socket(c.slot.index), b"M") for c in self.children),
            return_exceptions=True,
        )
        gathered = [
            (c.slot.index, text.decode())
            for c, text in zip(self.children, texts, strict=True)
            if isinstance(text, bytes)
        ]
        serving = sum(bool(c.ready) for c in self.children)
        head = [
            "# HELP warden_sidecar_workers Worker processes: configured, and serving now.",
            "# TYPE warden_sidecar_workers gauge",
            f'warden_sidecar_workers{{state="configured"}} {len(self.children)}',
            f'warden_sidecar_workers{{state="serving"}} {serving}',
            "# HELP warden_sidecar_worker_restarts_total Workers restarted after they died.",
            "# TYPE warden_sidecar_worker_restarts_total counter",
            f"warden_sidecar_worker_restarts_total {sum(c.restarts for c in self.children)}",
        ]
        return "\n".join(head) + "\n" + merge_expositions(gathered)

    async def run(self, stop: asyncio.Event) -> int:
        from sidecar.metrics import serve_exposition

        config = self.config
        reserved = reserve_port(config.listen_host, config.listen_port)
        port = reserved.getsockname()[1]
        run_dir = tempfile.mkdtemp(prefix="warden-sidecar-")  # mode 0700: ours alone
        shared = SharedState(self._on_ready)
        server = await asyncio.start_unix_server(
            shared.handle, str(Path(run_dir) / SHARED_SOCKET), limit=2**16
        )
        metrics_server = None
        try:
            if config.metrics_listen:
                host, _, mport = config.metrics_listen.rpartition(":")
                metrics_server = await serve_exposition(
                    self.render_metrics, host or "127.0.0.1", int(mport)
                )
                sockets: Any = getattr(metrics_server, "sockets", ())
                self.metrics_port = sockets[0].getsockname()[1]
            self.children = [
                _Child(WorkerSlot(index=i, count=config.workers, run_dir=run_dir, port=port))
                for i in range(config.workers)
            ]
            for child in self.children:
                self._start(child)
            watch = asyncio.create_task(self._watch(port))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({watch, stopped}, return_when=asyncio.FIRST_COMPLETED)
            self.stopping = True
            watch.cancel()
            stopped.cancel()
            await self._stop_workers()
        finally:
            server.close()
            if metrics_server is not None:
                metrics_server.close()
            reserved.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        return EXIT_REFUSED if self.refused else 0


def merge_expositions(texts: list[tuple[int, str]]) -> str:
    """Several workers' metrics as one exposition: each family's HELP and TYPE once,
    then its samples from every worker with a ``worker`` label."""
    families: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for index, text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                family = line.split(" ", 3)[2]
                if family not in samples:
                    families.setdefault(family, []).append(line)
                continue
            if not line:
                continue
            name, brace, rest = line.partition("{")
            label = f'worker="{index}"'
            if brace:
                labelled = (
                    f"{name}{{{label},{rest}"
                    if not rest.startswith("}")
                    else f"{name}{{{label}{rest}"
                )
            else:
                name, _, value = line.partition(" ")
                labelled = f"{name}{{{label}}} {value}"
            samples.setdefault(family, []).append(labelled)
        for name in families:
            samples.setdefault(name, [])
    lines: list[str] = []
    for name, head in families.items():
        lines += head
        lines += samples[name]
    return "\n".join(lines) + "\n"


def supervise(config: SidecarConfig) -> int:
    """Run the parent until SIGTERM or SIGINT; its exit status."""

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await Supervisor(config).run(stop)

    try:
        return asyncio.run(run())
    except ConfigError as exc:
        log.error("not starting: %s", exc)
        return EXIT_REFUSED


# ---- a worker ---------------------------------------------------------------------


async def control_request(path: str, request: bytes, timeout: float = 2.0) -> bytes:
    """One request on a worker's control socket; its whole answer."""

    async def ask() -> bytes:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(request)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return await reader.read()
        finally:
            writer.close()

    return await asyncio.wait_for(ask(), timeout)


class SharedLink:
    """A worker's connection to the parent's ``SharedState``; the ``SignInLimits`` of
    ``ProxyServer``. When it breaks, ``lost`` is set and the worker stops."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lost = asyncio.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=2**16)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                reply = json.loads(line)
                future = self._waiting.pop(reply.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (ConnectionError, ValueError) as exc:
            log.error("the link to the parent process failed: %s", exc)
        self.lost.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SignInLimitsUnavailable("the parent process is gone"))
        self._waiting.clear()

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._writer is None or self.lost.is_set():
            raise SignInLimitsUnavailable("no link to the parent process")
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self._writer.write(json.dumps({"id": ident, **request}).encode() + b"\n")
            reply = await asyncio.wait_for(future, SHARED_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            raise SignInLimitsUnavailable(f"the parent process did not answer ({exc!r})") from exc
        finally:
            self._waiting.pop(ident, None)
        if "error" in reply:
            raise SignInLimitsUnavailable(str(reply["error"]))
        return reply

    async def blocked_for(self, pair: SignInPair) -> float:
        return float((await self.ask({"op": "blocked", "pair": list(pair)}))["wait"])

    async def failed(self, pair: SignInPair) -> None:
        await self.ask({"op": "failed", "pair": list(pair)})

    async def succeeded(self, pair: SignInPair) -> None:
        await self.ask({"op": "succeeded", "pair": list(pair)})

    async def attempt(self, pair: SignInPair) -> float:
        return float((await self.ask({"op": "attempt", "pair": list(pair)}))["wait"])


@dataclass
class Worker:
    """What ``sidecar.runner.serve`` needs to run as worker ``slot.index``: the link to
    the parent and this worker's control socket (cancel requests handed over by the
    other workers, metrics for the parent, counters for worker 0's heartbeat)."""

    slot: WorkerSlot
    link: SharedLink
    metrics: Metrics | None = None
    server: ProxyServer | None = None
    counters: Callable[[], dict[str, int]] | None = None
    _control: asyncio.AbstractServer | None = None

    @property
    def index(self) -> int:
        return self.slot.index

    def cancel_route(self) -> CancelRoute:
        async def forward(owner: int, body: bytes) -> None:
            with contextlib.suppress(OSError, TimeoutError):
                await control_request(self.slot.control_socket(owner), b"C" + body)

        return CancelRoute(index=self.slot.index, count=self.slot.count, forward=forward)

    async def start_control(self, metrics: Metrics) -> None:
        self.metrics = metrics
        path = self.slot.control_socket(self.slot.index)
        Path(path).unlink(missing_ok=True)  # left by this index's previous process
        self._control = await asyncio.start_unix_server(self._handle_control, path)

    async def _handle_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            op = await reader.readexactly(1)
            if op == b"C":
                body = await reader.readexactly(8)
                if self.server is not None:
                    await self.server.cancel_own(body)
            elif op == b"M" and self.metrics is not None:
                writer.write(self.metrics.render().encode())
            elif op == b"H":
                counters = self.counters() if self.counters is not None else {}
                writer.write(json.dumps({"worker": self.slot.index, **counters}).encode())
            elif op == b"L" and self.metrics is not None:
                writer.write(json.dumps(self.metrics.credentials_used).encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def ready(self, port: int) -> None:
        await self.link.ask(
            {"op": "ready", "worker": self.slot.index, "pid": os.getpid(), "port": port}
        )

    def scan_status(self, status: dict[str, Any]) -> None:
        async def send() -> None:
            with contextlib.suppress(SignInLimitsUnavailable):
                await self.link.ask({"op": "status", "worker": self.slot.index, "scan": status})

        asyncio.get_running_loop().create_task(send())

    async def fleet_logins(self, own: dict[str, float]) -> dict[str, float]:
        """Worker 0's heartbeat: when each credential last signed in on any worker."""
        answers = await asyncio.gather(
            *(
                control_request(self.slot.control_socket(i), b"L")
                for i in range(self.slot.count)
                if i != self.slot.index
            ),
            return_exceptions=True,
        )
        merged = dict(own)
        for answer in answers:
            if not isinstance(answer, bytes) or not answer:
                continue
            with contextlib.suppress(ValueError):
                decoded = json.loads(answer)
                for cid, at in decoded.items() if isinstance(decoded, dict) else ():
                    if isinstance(cid, str) and isinstance(at, int | float):
                        merged[cid] = max(merged.get(cid, 0.0), float(at))
        return merged

    async def fleet_counters(
        self, own: dict[str, int]
    ) -> tuple[dict[str, int], list[dict[str, int]]]:
        """Worker 0's heartbeat: totals over the workers that answer, and each one's own.

        Bundle rejections and the privileged-role flag are the most any worker
        reports, not a sum: every worker judges the same bundles and role."""
        others = await asyncio.gather(
            *(
                control_request(self.slot.control_socket(i), b"H")
                for i in range(self.slot.count)
                if i != self.slot.index
            ),
            return_exceptions=True,
        )
        each = [{"worker": self.slot.index, **own}]
        for answer in others:
            if isinstance(answer, bytes) and answer:
                with contextlib.suppress(ValueError):
                    each.append(json.loads(answer))
        totals: dict[str, int] = {}
        for counters in each:
            for name, value in counters.items():
                if name == "worker" or not isinstance(value, int):
                    continue
                if name.startswith("bundle_rejected_") or name == "privileged_upstream":
                    totals[name] = max(totals.get(name, 0), value)
                else:
                    totals[name] = totals.get(name, 0) + value
        totals["workers"] = self.slot.count
        totals["workers_serving"] = len(each)
        kept = ("connections_total", "connections_active", "audit_spool_depth", "audit_shipped")
        per_worker = [
            {
                k: v
                for k, v in c.items()
                if k == "worker" or k in kept or k.startswith("statements_")
            }
            for c in sorted(each, key=lambda c: c["worker"])
        ]
        return totals, per_worker


def worker_main(config: SidecarConfig, slot: WorkerSlot) -> None:
    """A worker process: the sidecar of ``sidecar.runner.serve`` on the shared port."""
    from sidecar.runner import run_until_signalled, serve

    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [worker {slot.index}] %(message)s",
    )

    async def run(stop: asyncio.Event) -> None:
        link = SharedLink(str(Path(slot.run_dir) / SHARED_SOCKET))
        await link.connect()
        # Without the parent there are no shared sign-in limits: stop, and let a
        # restarted sidecar serve (fail closed).
        watcher = asyncio.create_task(link.lost.wait())
        watcher.add_done_callback(lambda _t: stop.set())
        await serve(config, stop, worker=Worker(slot=slot, link=link))

    try:
        run_until_signalled(run)
    except ConfigError as exc:  # a privileged upstream role, say
        log.error("not starting: %s", exc)
        raise SystemExit(EXIT_REFUSED) from exc
