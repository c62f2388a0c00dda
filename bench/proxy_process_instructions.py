"""Instructions per transaction of the whole sidecar process, and of PgBouncer's, under pgbench.

``bench/proxy_instructions.py`` counts the Session alone, fed by a loop that
sends what the loop author thought a client sends. This one runs the real
sidecar (event loop, native relay, audit spool and all) and PgBouncer under
valgrind's callgrind, each in front of the same scratch database, and drives
them with real pgbench clients: what a real client's traffic costs, counted in
instructions, which do not move with the machine's load. (It was this count
that showed libpq's Describe sending every prepared run back to Python.)

For each workload it zeroes the counters, runs ``pgbench -t N`` and dumps, then
the same with ``2N``: the difference divided by N is the cost of one
transaction, with connection set-up and start-up cancelled out. Background
work that runs on a timer is counted at valgrind's pace: the spool's flush,
every 100 ms, carries a few dozen events under valgrind where at full speed it
waits for 2,000. The flushes counted here came to about 2,800 instructions per
transaction on 2026-12-07, both workloads alike (callgrind's inclusive count
under the event loop's idle callbacks); what each flush costs whatever it
carries is spread over far more events at full speed.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<yours> \\
        .venv/bin/python bench/proxy_process_instructions.py [--n 1000] [--tree DIR]

It ends with one line per workload, the sidecar's instructions per transaction
beside PgBouncer's: figures to compare, not targets (the targets are
bench/proxy.py's CPU and TPS lines), so ``target=none`` as in bench/mcp.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench import proxy  # noqa: E402

VALGRIND = ["valgrind", "--tool=callgrind", "--collect-atstart=yes"]
WORKLOADS = {
    "select_only": ["-S"],
    "select_prepared": ["-S", "-M", "prepared"],
    "orm": ["-f", "{orm}"],  # bench/proxy.py's ORM statement, a string and an integer
}


class Counted:
    """A process under callgrind whose counters this script zeroes and dumps."""

    def __init__(self, pid: int, dumps: Path, as_postgres: bool = False) -> None:
        self.pid = pid
        self.dumps = dumps
        # callgrind_control must run as the process's own user to reach it.
        self.as_postgres = as_postgres

    def _files(self) -> list[Path]:
        return sorted(self.dumps.glob("callgrind.*.*"), key=lambda p: int(p.suffix[1:]))

    def _control(self, option: str) -> None:
        command = ["callgrind_control", option, str(self.pid)]
        if self.as_postgres:
            command = proxy.run_as_postgres(command)
        subprocess.run(command, check=True, capture_output=True)

    def instructions(self, run: Callable[[], None]) -> int:
        """Instructions the process spent while ``run()`` ran."""
        self._control("-z")
        before = len(self._files())
        run()
        self._control("-d")
        deadline = time.monotonic() + 120
        while len(self._files()) <= before:
            if time.monotonic() > deadline:
                raise SystemExit(f"no callgrind dump from {self.pid}")
            time.sleep(0.2)
        time.sleep(0.5)  # the dump is written, then closed
        text = self._files()[-1].read_text()
        match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE)
        if match is None:
            raise SystemExit(f"no summary in {self._files()[-1]}")
        return int(match.group(1))


def pgbench_t(
    port: int, user: str, database: str, n: int, options: list[str], password: str
) -> Callable[[], None]:
    """One pgbench client running ``n`` transactions, to be run later."""
    return lambda: proxy.pgbench(port, user, database, 1, 0, options, password, transactions=n)


def per_transaction(counted: Counted, port: int, user: str, database: str, n: int,
                    options: list[str], password: str) -> float:  # fmt: skip
    pgbench_t(port, user, database, 200, options, password)()  # warm-up: caches, templates
    small = counted.instructions(pgbench_t(port, user, database, n, options, password))
    large = counted.instructions(pgbench_t(port, user, database, 2 * n, options, password))
    return (large - small) / n


def bouncer_pid(workdir: Path) -> int:
    """PgBouncer's process under valgrind (its command line starts with valgrind)."""
    config = str(workdir / "pgbouncer.ini").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # valgrind itself, not the runuser that started it as postgres
            if comm.startswith("callgrind") and config in cmdline:
                return int(entry.name)
    raise SystemExit("PgBouncer under callgrind is not running")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="transactions in the smaller run")
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="run another checkout's sidecar (git archive <commit> sidecar | tar -x -C DIR, "
        "its relay built with python -m sidecar.proxy.build_relay there)",
    )
    args = parser.parse_args()
    missing = [t for t in ("valgrind", "callgrind_control", "pgbench") if not shutil.which(t)]
    if missing or not Path(proxy.PGBOUNCER).exists():
        raise SystemExit("apt-get install valgrind pgbouncer postgresql-client (the tools it runs)")
    own = os.environ.get("DATABASE_URL", "").rsplit("/", 1)[-1]
    database = f"{own or 'warden'}_process_bench_{secrets.token_hex(3)}"
    with psycopg.connect(proxy.server_url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    upstream = proxy.server_url(database)
    tmp = Path(tempfile.mkdtemp(prefix="warden-process-bench-"))
    tmp.chmod(0o777)  # PgBouncer runs as postgres and writes its dumps here
    procs: list[subprocess.Popen[bytes]] = []
    try:
        initialise = ["pgbench", "-i", "-q", "-s", "8", upstream]
        subprocess.run(initialise, check=True, capture_output=True)
        proxy.AUDIT_DURABILITY[0] = "batched"
        sidecar_dumps = tmp / "sidecar-dumps"
        sidecar_dumps.mkdir()
        sidecar, sidecar_port = proxy.start_sidecar(
            tmp,
            upstream,
            proxy.bundle(database),
            tree=args.tree.resolve(),
            prefix=[*VALGRIND, f"--callgrind-out-file={sidecar_dumps}/callgrind.%p"],
            ready_seconds=300,
        )
        procs.append(sidecar)
        bouncer_dumps = tmp / "bouncer-dumps"
        bouncer_dumps.mkdir(mode=0o777)
        bouncer_dumps.chmod(0o777)
        (tmp / "bouncer").mkdir()
        bouncer, bouncer_port = proxy.start_pgbouncer(
            tmp / "bouncer",
            "127.0.0.1",
            5432,
            database,
            prefix=[*VALGRIND, f"--callgrind-out-file={bouncer_dumps}/callgrind.%p"],
        )
        procs.append(bouncer)
        ready = json.loads((tmp / "ready.json").read_text())
        counted = {
            "sidecar": Counted(ready["pid"], sidecar_dumps),
            "pgbouncer": Counted(bouncer_pid(tmp / "bouncer"), bouncer_dumps, as_postgres=True),
        }
        targets = {
            "sidecar": (sidecar_port, "bench", proxy.TOKEN),
            "pgbouncer": (bouncer_port, "postgres", ""),
        }
        lines = []
        (tmp / "orm.sql").write_text(proxy.orm_script(8))
        for workload, template in WORKLOADS.items():
            options = [o.format(orm=tmp / "orm.sql") for o in template]
            counts = {
                name: per_transaction(counted[name], port, user, database, args.n, options, pw)
                for name, (port, user, pw) in targets.items()
            }
            ratio = counts["sidecar"] / counts["pgbouncer"]
            print(
                f"{workload:<16} sidecar {counts['sidecar']:>9.0f}  pgbouncer "
                f"{counts['pgbouncer']:>7.0f} instructions/txn  ({ratio:.1f}x)"
            )
            lines.append(
                f"sidecar_process_instructions_{workload}={counts['sidecar']:.0f} "
                f"instructions/txn target=none pgbouncer={counts['pgbouncer']:.0f}"
            )
        for line in lines:
            print(line)
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(proxy.server_url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
