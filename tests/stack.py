"""Real parts for the tests that run the stack: the ASGI server, a Celery worker, the
sidecar's bundle client, relays on the control-plane link.

A plain module, not a conftest: the bundle tests of governance and of the sidecar,
tests/gateway and tests/integration each import the fixtures they use into their
own conftest (the three autouse ones included, where a folder wants them).

Each runs as its own process against the test database (committed rows only,
hence ``transaction=True`` in the tests that use them) and this worker's Redis
database, with one signing key generated per session and pinned by the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from governance import signing
from governance.signing import signing_key_generate
from tests.dsn import database_url

ROOT = Path(__file__).resolve().parent.parent
SIGNING_KEY = signing_key_generate("test-1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def restartable_port() -> int:
    """A free port below the kernel's ephemeral range, for a server stopped and restarted.

    A port from ``free_port`` is in that range, so while the server is down any
    outgoing connection on the machine (other tests run beside these) may be given
    it as its local port, and the restart then fails to bind.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


@pytest.fixture(autouse=True)
def _signing_key(settings: Any) -> Iterator[None]:
    settings.WARDEN_BUNDLE_SIGNING_KEY = SIGNING_KEY
    signing.active_signing_key.cache_clear()
    yield
    signing.active_signing_key.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_content_types() -> Iterator[None]:
    # A transactional test ends with a flush; content type ids remembered from it
    # must not leak into the next test (history records name their content type).
    yield
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    # Our own Redis database: bundles of an earlier test's datasource ids must
    # not be served to this one's.
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def run_async(coro: Any) -> Any:
    """``asyncio.run`` in a thread of its own: a browser test earlier in the session may
    leave an event loop running in this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def pinned_key() -> str:
    """The client's pin for SIGNING_KEY: ``<key id>:<base64 public key>``."""
    key_id, _ = SIGNING_KEY.split(":", 1)
    return f"{key_id}:{signing.active_signing_key().public_b64()}"


def server_env() -> dict[str, str]:
    url = database_url()
    return {
        **os.environ,
        "WARDEN_DEV": "1",
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "WARDEN_BUNDLE_SIGNING_KEY": SIGNING_KEY,
        "PYTHONUNBUFFERED": "1",
    }


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Server:
    """uvicorn serving config.asgi on a fixed port; can be stopped and restarted."""

    def __init__(self, log: Path, port: int | None = None, *, drain_seconds: int = 1) -> None:
        self.port = port or restartable_port()
        self.drain_seconds = drain_seconds
        self.url = f"http://127.0.0.1:{self.port}"
        # Its stderr (tracebacks of any 500) goes to a file: an unread pipe would
        # fill up over a module's tests and block the server.
        self.log = log
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--port",
                    str(self.port),
                    "--loop",
                    "uvloop",
                    "--no-access-log",
                    # Long-polls answer at SIGTERM; anything else still running after
                    # this is cut off: "down" is what most tests want, not a drain.
                    "--timeout-graceful-shutdown",
                    str(self.drain_seconds),
                ],
                cwd=ROOT,
                env=server_env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).close()
                return
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture(scope="session")
def _control_plane_process(
    django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server = Server(log=tmp_path_factory.mktemp("control-plane") / "uvicorn.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def control_plane(_control_plane_process: Server) -> Server:
    """The control plane, one uvicorn for the session (starting one takes seconds;
    a folder that imports this fixture into its conftest has its own).

    It keeps nothing a later test could see: its state is the database and Redis,
    which every test here restores (serialized rollback, a flushed Redis), and
    what it caches in memory is keyed by tokens and rows the test made. A test
    that stopped it leaves it stopped; the next one gets it started again.
    """
    if _control_plane_process.proc is None or _control_plane_process.proc.poll() is not None:
        _control_plane_process.start()
    return _control_plane_process


class Worker:
    """A real Celery worker (solo pool) that runs the recompile task, and what it is doing.

    It logs every task it receives and how each ended (``Task name[id] received``,
    then ``succeeded``, ``raised ...``, ``retry: ...``); ``busy`` is the ids received
    and not yet ended, so a test can hand it on idle to the next one; ``ended`` the
    ids that ran to their end.
    """

    TASK_LINE = re.compile(r"Task \S+\[([0-9a-f-]+)\] (\w+)")

    def __init__(
        self, env: dict[str, str] | None = None, *, beat_schedule: Path | None = None
    ) -> None:
        self.busy: set[str] = set()
        self.ended: set[str] = set()
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                # With a schedule file, beat runs inside the worker (-B).
                *(["-B", "--schedule", str(beat_schedule)] if beat_schedule else []),
                "--pool=solo",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=ROOT,
            env=env or server_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "ready." in line:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or []:
            found = self.TASK_LINE.search(line)
            if found is None:
                continue
            task, outcome = found.groups()
            with self.lock:
                if outcome == "received":
                    self.busy.add(task)
                else:
                    self.busy.discard(task)
                    if outcome != "retry":  # a retry is received again, under its id
                        self.ended.add(task)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ran(self, task_ids: list[str], timeout: float) -> bool:
        """Whether, within ``timeout``, each of these tasks ran to its end here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if set(task_ids) <= self.ended:
                    return True
            time.sleep(0.05)
        return False

    def idle(self, timeout: float) -> bool:
        """Whether, within ``timeout``, nothing waits in its queue or unacknowledged
        (taken, not yet logged) and every task it received has ended; seen twice in a
        row, a moment apart."""
        broker = redis.Redis.from_url(settings.REDIS_URL)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline and self.alive():
            with self.lock:
                busy = bool(self.busy)
            quiet = not busy and not broker.llen("celery") and not broker.hlen("unacked")
            seen = seen + 1 if quiet else 0
            if seen == 2:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture(scope="package")
def _celery_worker_process(django_db_setup: Any) -> Iterator[list[Worker]]:
    """The worker of the folder that imports this fixture (tests/integration), started
    by the first test that asks for one (in a list, so that a test can replace one
    that died or would not go idle). Stopped when the folder's last test ends: a
    consumer left on the suite's Redis would take later tests' tasks."""
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_worker(_celery_worker_process: list[Worker]) -> Iterator[subprocess.Popen[Any]]:
    """A real worker (solo pool) that runs the recompile task; one for the folder
    (tests/integration), stopped before any of its tests that does not ask for it.

    Starting one takes seconds (Django and Celery). It keeps nothing a later test
    could see, for the reasons ``control_plane`` gives, once it is idle: each test
    ends by waiting until its queue is empty and every task it received has run
    (a task of this test must not run against the next one's rows). One that does
    not get there in time is stopped, and the next test starts a fresh one.
    """
    workers = _celery_worker_process
    if not workers or not workers[-1].alive():
        workers[:] = [Worker()]
    worker = workers[-1]
    yield worker.proc
    if not worker.idle(timeout=10):
        worker.stop()


class SidecarClient:
    """``python -m sidecar.bundle`` in a subprocess; its JSON-line events in a queue."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        state_dir: Path,
        probes: list[str],
        datasource: str = "crm-prod",
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "WARDEN_BUNDLE"))}
        env.update(
            {
                "WARDEN_SIDECAR_CONTROL_PLANE_URL": url,
                "WARDEN_SIDECAR_TOKEN": token,
                "WARDEN_SIDECAR_BUNDLE_PUBLIC_KEYS": pinned_key(),
                "WARDEN_SIDECAR_STATE_DIR": str(state_dir),
                "WARDEN_SIDECAR_DATASOURCE": datasource,
                "WARDEN_SIDECAR_BUNDLE_WAIT": "30",
                "WARDEN_SIDECAR_BUNDLE_MAX_BACKOFF": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        args = [sys.executable, "-m", "sidecar.bundle", "--start-timeout", "3"]
        for probe in probes:
            args += ["--probe", probe]
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exited", "t": time.time()})

    def next_event(self, timeout: float = 10.0, kind: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if kind is None or event["event"] in (kind, "exited"):
                return event

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def sidecar_clients() -> Iterator[list[SidecarClient]]:
    started: list[SidecarClient] = []
    yield started
    for client in started:
        client.stop()


class ByteFlipRelay:
    """A TCP relay that flips one byte inside every bundle body it forwards.

    It fakes a hostile network, not our code: the request goes through as sent,
    and in a 200 response the last byte of the signature's base64 value is changed.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.flipped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            request = client.recv(65536)
            upstream.sendall(request)
            chunks = []
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                chunks.append(data)
            response = b"".join(chunks)
            marker = b'"revision":"'
            at = response.find(marker)
            if response.startswith(b"HTTP/1.1 200") and at != -1:
                # Change one hex digit of the inner revision: same length, so the
                # framing stays valid and only the content check can notice.
                pos = at + len(marker)
                flipped = b"0" if response[pos : pos + 1] != b"0" else b"1"
                response = response[:pos] + flipped + response[pos + 1 :]
                self.flipped += 1
            client.sendall(response)

    def close(self) -> None:
        self.sock.close()


class BundleRelay:
    """Someone on a plain-HTTP control-plane link, as a local HTTP server.

    Passes every call through to the control plane, except: with ``envelope`` set
    it answers the bundle call itself with those bytes (a validly signed envelope
    it captured or was given; ``304`` when the sidecar already names its revision),
    and with ``down`` set it drops every connection unanswered, as a control plane
    that is unreachable.
    """

    FORWARDED = ("authorization", "if-none-match", "content-type", "accept")
    RETURNED = ("content-type", "etag", "cache-control", "www-authenticate")

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.envelope: bytes | None = None
        self.down = False
        self.served = 0
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                relay._handle(self)

            def do_POST(self) -> None:
                relay._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _reply(
        self, handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if self.down:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        envelope = self.envelope
        if (
            envelope is not None
            and handler.command == "GET"
            and handler.path.startswith("/api/v1/sidecar/bundle")
        ):
            etag = '"{}"'.format(json.loads(envelope)["bundle"]["revision"])
            if etag in (handler.headers.get("If-None-Match") or ""):
                time.sleep(0.2)  # a short "long-poll"
                self._reply(handler, 304, {"ETag": etag}, b"")
                return
            self.served += 1
            self._reply(handler, 200, {"Content-Type": "application/json", "ETag": etag}, envelope)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() in self.FORWARDED}
        upstream = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=75)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except OSError:
            handler.close_connection = True
            return
        finally:
            upstream.close()
        returned = {k: v for k, v in response.getheaders() if k.lower() in self.RETURNED}
        self._reply(handler, response.status, returned, data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bundle_relay(control_plane: Server) -> Iterator[BundleRelay]:
    relay = BundleRelay(control_plane.port)
    yield relay
    relay.close()


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in a Prometheus text exposition, or None."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None


def scrape(port: int) -> str:
    """The sidecar's /metrics (empty when nothing answers yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return ""
