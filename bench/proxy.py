"""Benchmark the sidecar against direct PostgreSQL and PgBouncer (session mode) with pgbench.

One run measures, at 1 and 8 clients, against the targets back to back
(interleaved, so machine noise hits all of them alike):

- ``select-only``: pgbench ``-S``, a fresh integer literal per statement;
- ``select-prepared``: the same with ``-M prepared`` (Bind/Execute/Sync);
- ``orm``: an ORM's statement (quoted names, ``LIMIT 21``) with a fresh string
  literal as well as an integer, in positions where their values change nothing;
- ``tpcb-like``: pgbench's default, informational.

then the sidecar's memory per idle connection. It prints TPS, latency, the
ratios and the CPU time (user + system, from /proc) per transaction of the
sidecar and of PgBouncer, and ends with ``<metric>=<value> <unit>
target=<target> met|missed`` lines: the sidecar's TPS against PgBouncer's and
its CPU per transaction against PgBouncer's (select-only and select-prepared,
1 and 8 clients), the ORM statement's CPU against the integer one's, memory.

    .venv/bin/python bench/proxy.py [--duration 10] [--scale 8] [--workers 1,2]

``--workers 1,2`` runs one sidecar per value (its ``workers`` setting) beside the
others, named ``sidecar`` (1) and ``sidecar-w2`` (2); a sidecar's CPU is its
parent's plus every worker's.

PostgreSQL comes from ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432``,
trust auth); a scratch database ``<its database>_proxy_bench_<hex>`` is created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from sidecar.engine import compute_revision  # noqa: E402
from sidecar.proxy.scram import make_verifier  # noqa: E402

TOKEN = "wdn_bench_" + secrets.token_hex(16)
# strict (production's default: each statement's intent fsynced before it runs) or
# batched; set from --audit-durability.
AUDIT_DURABILITY = ["strict"]
PGBOUNCER = "/usr/sbin/pgbouncer"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_url(database: str) -> str:
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(base)._replace(path="/" + database))


def bundle(datasource: str) -> dict:
    """A realistic bundle: the pgbench schema plus a classified customer table, masking
    rules, guardrails for DDL and unfiltered writes, several identities."""
    cols = {
        "pgbench_accounts": [
            ("aid", "integer"),
            ("bid", "integer"),
            ("abalance", "integer"),
            ("filler", "character(84)"),
        ],
        "pgbench_branches": [
            ("bid", "integer"),
            ("bbalance", "integer"),
            ("filler", "character(88)"),
        ],
        "pgbench_tellers": [
            ("tid", "integer"),
            ("bid", "integer"),
            ("tbalance", "integer"),
            ("filler", "character(84)"),
        ],
        "pgbench_history": [
            ("tid", "integer"),
            ("bid", "integer"),
            ("aid", "integer"),
            ("delta", "integer"),
            ("mtime", "timestamp without time zone"),
            ("filler", "character(22)"),
        ],
        "customers": [("id", "integer"), ("email", "text"), ("ssn", "text"), ("phone", "text")],
    }
    identities = [
        {
            "name": "bench",
            "kind": "service",
            "teams": ["app"],
            "owner": "ops",
            "expires_at": None,
            "credentials": [
                {"id": "tok_bench", "scram_sha_256": make_verifier(TOKEN), "expires_at": None}
            ],
        },
    ] + [
        {
            "name": f"user{i}",
            "kind": "human",
            "teams": ["eng"],
            "owner": None,
            "expires_at": None,
            "credentials": [
                {"id": f"tok_u{i}", "scram_sha_256": make_verifier(f"t{i}"), "expires_at": None}
            ],
        }
        for i in range(5)
    ]
    data = {
        "format": "warden.bundle/1",
        "revision": "",
        "issued_at": "2026-11-23T12:00:00Z",
        "datasource": {
            "name": datasource,
            "engine": "postgresql",
            "dialect": "postgres",
            "environment": "production",
            "criticality": 4,
        },
        "schema": {
            "tables": [
                {
                    "schema": "public",
                    "name": t,
                    "kind": "table",
                    "columns": [{"name": n, "type": ty} for n, ty in c],
                }
                for t, c in cols.items()
            ]
        },
        "identities": identities,
        "classifications": [
            {"name": "pii.email", "level": "confidential"},
            {"name": "pii.ssn", "level": "restricted"},
            {"name": "pii.phone", "level": "confidential"},
        ],
        "column_classifications": [
            {"schema": "public", "table": "customers", "column": c, "classification": k}
            for c, k in (("email", "pii.email"), ("ssn", "pii.ssn"), ("phone", "pii.phone"))
        ],
        "masking_rules": [
            {
                "classification": "pii.email",
                "strategy": "email",
                "params": {},
                "exempt_teams": ["security"],
                "environments": [],
            },
            {
                "classification": "pii.ssn",
                "strategy": "partial",
                "params": {"keep_last": 4},
                "exempt_teams": [],
                "environments": [],
            },
            {
                "classification": "pii.phone",
                "strategy": "redact",
                "params": {},
                "exempt_teams": [],
                "environments": [],
            },
        ],
        "guardrails": [
            {
                "name": "no-drop",
                "position": 1,
                "enabled": True,
                "action": "block",
                "message": "No DROP in production",
                "conditions": {"statement_kinds": ["drop"]},
            },
            {
                "name": "unfiltered-writes",
                "position": 2,
                "enabled": True,
                "action": "review",
                "message": "UPDATE/DELETE without WHERE",
                "conditions": {"missing_where": True},
            },
            {
                "name": "agents-read-only",
                "position": 3,
                "enabled": True,
                "action": "block",
                "message": "Agents may only read",
                "conditions": {
                    "identity_kinds": ["agent"],
                    "statement_kinds": ["insert", "update", "delete"],
                },
            },
        ],
        "risk": {"review_at": 101, "block_at": 101, "critical_at": 101},
        "approvals": {"hold_seconds": 0},
    }
    data["revision"] = compute_revision(data)
    return data


def run_as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_pgbouncer(
    workdir: Path, host: str, port: int, database: str, prefix: tuple[str, ...] | list[str] = ()
) -> tuple[subprocess.Popen[bytes], int]:
    """PgBouncer in session mode; ``prefix`` runs it under another program (valgrind)."""
    listen = free_port()
    (workdir / "userlist.txt").write_text('"postgres" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        f"[databases]\n{database} = host={host} port={port} dbname={database}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {workdir}/userlist.txt\n"
        "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n"
        f"logfile = {workdir}/pgbouncer.log\n"
    )
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        shutil.chown(workdir, entry.pw_uid, entry.pw_gid)
        for p in workdir.iterdir():
            shutil.chown(p, entry.pw_uid, entry.pw_gid)
    proc = subprocess.Popen(
        run_as_postgres([*prefix, PGBOUNCER, str(workdir / "pgbouncer.ini")]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(listen)
    return proc, listen


def start_sidecar(
    workdir: Path,
    upstream_dsn: str,
    bundle_data: dict,
    tree: Path = ROOT,
    workers: int = 1,
    prefix: tuple[str, ...] | list[str] = (),
    ready_seconds: float = 30,
) -> tuple[subprocess.Popen[bytes], int]:
    """A sidecar in front of ``upstream_dsn``; ``prefix`` runs it under another program
    (valgrind), which may need longer than the default to get ready."""
    (workdir / "bundle.json").write_text(json.dumps(bundle_data))
    ready = workdir / "ready.json"
    config = {
        "upstream_dsn": upstream_dsn,
        "bundle_file": str(workdir / "bundle.json"),
        "state_dir": str(workdir / "state"),
        "listen_port": 0,
        "ready_file": str(ready),
        "sidecar_id": "bench",
        # No control plane here, so nothing drains the spool: give it room for
        # every event of the run (they are deleted with the temporary directory).
        "spool_max_bytes": 16 * 1024**3,
        "log_level": "WARNING",
    }
    if workers > 1:  # only then: a --compare tree from before the key would refuse it
        config["workers"] = workers
    (workdir / "sidecar.json").write_text(json.dumps(config))
    # The sidecar's datasource (a required key) through the environment: a --compare
    # tree from before the key existed ignores the variable, where it would refuse a key.
    inner = bundle_data.get("bundle", bundle_data)
    env = {
        **os.environ,
        "WARDEN_SIDECAR_DATASOURCE": inner["datasource"]["name"],
        # The bench reaches its scratch database as its superuser (pgbench needs it).
        "WARDEN_SIDECAR_ALLOW_PRIVILEGED_UPSTREAM": "true",
        "WARDEN_SIDECAR_AUDIT_DURABILITY": AUDIT_DURABILITY[0],
    }
    command = [sys.executable, "-m", "sidecar.runner", "--config", str(workdir / "sidecar.json")]
    proc = subprocess.Popen(
        [*prefix, *command],
        cwd=tree,
        env=env,
    )
    deadline = time.monotonic() + ready_seconds
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("sidecar did not start")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["port"]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def pgbench(
    port: int,
    user: str,
    database: str,
    clients: int,
    duration: int,
    options: list[str],
    password: str = "",
    transactions: int | None = None,
) -> tuple[float, float]:
    """(TPS, mean latency in ms) of ``clients`` pgbench clients for ``duration``
    seconds, or for ``transactions`` each when given (then without a time limit)."""
    length = ["-T", str(duration)] if transactions is None else ["-t", str(transactions)]
    cmd = [
        "pgbench",
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        user,
        *length,
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        *options,
    ]
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    out = subprocess.run(
        [*cmd, database],
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + 60 if transactions is None else None,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed on port {port}: {out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))  # type: ignore[union-attr]
    return tps, lat


def orm_script(scale: int) -> str:
    return (
        f"\\set aid random(1, {100000 * scale})\n"
        'SELECT "pgbench_accounts"."aid", "pgbench_accounts"."abalance" FROM "pgbench_accounts" '
        'WHERE "pgbench_accounts"."aid" = :aid AND "pgbench_accounts"."filler" <> '
        "'user-:aid@example.com' LIMIT 21;\n"
    )


def bouncer_pid(workdir: Path) -> int:
    """PgBouncer's own process (``runuser`` may stand between it and us)."""
    config = str(workdir / "pgbouncer.ini").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"pgbouncer") and config in cmdline:
                return int(entry.name)
    raise SystemExit("PgBouncer's process was not found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sidecar_pids(workdir: Path, proc: subprocess.Popen[bytes]) -> list[int]:
    """The sidecar's processes: itself, and its workers when it has several."""
    ready = json.loads((workdir / "ready.json").read_text())
    return [proc.pid, *(w["pid"] for w in ready.get("workers", ()))]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_memory(port: int, database: str, pid: int, count: int) -> float:
    dsn = (
        f"host=127.0.0.1 port={port} user=bench password={TOKEN} dbname={database} sslmode=disable"
    )
    warm = psycopg.connect(dsn)  # lazy imports and the first decision happen here
    warm.execute("SELECT 1")
    warm.close()
    time.sleep(0.5)
    before = rss_kb(pid)
    conns = [psycopg.connect(dsn) for _ in range(count)]
    time.sleep(1.0)
    after = rss_kb(pid)
    for c in conns:
        c.close()
    return (after - before) / count


def workloads(tmp: Path, scale: int) -> dict[str, list[str]]:
    """pgbench's options for each workload, in the order they run (the ORM statement's
    script is written into ``tmp``). select-prepared (-M prepared): statements are
    decided once, at Parse, so it shows the protocol layer's cost without the engine's."""
    (tmp / "orm.sql").write_text(orm_script(scale))
    return {
        "select-only": ["-S"],
        "select-prepared": ["-S", "-M", "prepared"],
        "orm": ["-f", str(tmp / "orm.sql")],
        "tpcb-like": [],
    }


def compare_trees(args: argparse.Namespace, database: str, upstream: str, tmp: Path) -> None:
    """Sidecar CPU per transaction, this tree against ``--compare`` (another checkout),
    interleaved round by round: the before/after measure for one change."""
    trees = {"this": ROOT, "other": Path(args.compare).resolve()}
    options = workloads(tmp, args.scale)
    unknown = [w for w in args.workloads.split(",") if w not in options]
    if unknown:
        raise SystemExit(f"unknown workload {', '.join(unknown)}: one of {', '.join(options)}")
    procs = {}
    try:
        for name, tree in trees.items():
            (tmp / name).mkdir()
            procs[name] = start_sidecar(tmp / name, upstream, bundle(database), tree)
        print(f"{'workload':<16}{'clients':>8}  {'tree':<6}{'tps (median)':>14}{'CPU us/txn':>30}")
        for workload in args.workloads.split(","):
            for clients in (1, 8):
                cpu: dict[str, list[float]] = {n: [] for n in trees}
                tps_all: dict[str, list[float]] = {n: [] for n in trees}
                for _ in range(args.repeat):
                    for name, (proc, port) in procs.items():
                        before = cpu_seconds(proc.pid)
                        tps, _lat = pgbench(
                            port,
                            "bench",
                            database,
                            clients,
                            args.duration,
                            options[workload],
                            TOKEN,
                        )
                        used = cpu_seconds(proc.pid) - before
                        cpu[name].append(used / max(tps * args.duration, 1.0) * 1e6)
                        tps_all[name].append(tps)
                for name in trees:
                    runs = sorted(cpu[name])
                    tps_sorted = sorted(tps_all[name])
                    each = " ".join(f"{c:.1f}" for c in cpu[name])
                    print(
                        f"{workload:<16}{clients:>8}  {name:<6}{tps_sorted[len(runs) // 2]:>14.0f}"
                        f"{runs[len(runs) // 2]:>12.1f}  ({each})"
                    )
    finally:
        for proc, _port in procs.values():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def verdict(name: str, value: float, unit: str, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return f"{name}={value:.3f} {unit} target={target} {'met' if ok else 'missed'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--idle", type=int, default=60, help="idle connections for memory")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per cell (median kept)")
    parser.add_argument(
        "--audit-durability",
        choices=("strict", "batched"),
        default="strict",
        help="the sidecar's audit_durability (strict: production's default)",
    )
    parser.add_argument(
        "--compare",
        metavar="TREE",
        help="only the sidecar: CPU per transaction of this tree vs the checkout TREE",
    )
    parser.add_argument(
        "--workloads",
        default="select-only,tpcb-like",
        help="with --compare: which workloads (select-only, select-prepared, orm, tpcb-like)",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="comma-separated: one sidecar per value of its workers setting (e.g. 1,2)",
    )
    args = parser.parse_args()
    AUDIT_DURABILITY[0] = args.audit_durability
    if not args.compare and not Path(PGBOUNCER).exists():
        raise SystemExit(f"{PGBOUNCER} is missing: apt-get install pgbouncer (the baseline)")
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench is missing: apt-get install postgresql-client")

    # Named after DATABASE_URL's database (e.g. warden_perf_proxy_bench_<hex>) so
    # engineers sharing one server each stay within their own database names.
    own = urlsplit(os.environ.get("DATABASE_URL", "")).path.lstrip("/")
    prefix = f"{own}_" if own and own != "postgres" else "warden_"
    database = f"{prefix}proxy_bench_{secrets.token_hex(3)}"
    admin = server_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    upstream = server_url(database)
    parts = urlsplit(upstream)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="warden-bench-"))
    tmp.chmod(0o711)  # pgbouncer runs as the postgres user when we are root
    try:
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(args.scale), upstream],
            check=True,
            capture_output=True,
        )
        if args.compare:
            compare_trees(args, database, upstream, tmp)
            return 0
        (tmp / "bouncer").mkdir()
        bouncer, bouncer_port = start_pgbouncer(tmp / "bouncer", host, port, database)
        procs.append(bouncer)
        targets = {
            "direct": (port, "postgres", ""),
            "pgbouncer": (bouncer_port, "postgres", ""),
        }
        # The processes whose CPU time is measured: PgBouncer's and each sidecar's.
        measured_procs: dict[str, list[int]] = {"pgbouncer": [bouncer_pid(tmp / "bouncer")]}
        sidecar_procs: dict[str, list[int]] = {}
        for workers in (int(w) for w in args.workers.split(",")):
            name = "sidecar" if workers == 1 else f"sidecar-w{workers}"
            workdir = tmp if workers == 1 else tmp / name
            workdir.mkdir(exist_ok=True)
            proc, sidecar_port = start_sidecar(workdir, upstream, bundle(database), workers=workers)
            procs.append(proc)
            targets[name] = (sidecar_port, "bench", TOKEN)
            sidecar_procs[name] = measured_procs[name] = sidecar_pids(workdir, proc)
        first = next(iter(sidecar_procs))
        # Measured first, on a fresh process, so memory freed by earlier sessions
        # cannot hide what new ones cost (one process: the first sidecar's, if it has one).
        per_conn = idle_memory(targets[first][0], database, sidecar_procs[first][-1], args.idle)
        results: dict[tuple[str, int, str], tuple[float, float]] = {}
        # CPU time per transaction of the sidecar and of PgBouncer: on a shared
        # machine TPS moves with other people's load, this figure much less.
        cpu_us: dict[tuple[str, int, str], list[float]] = {}
        print(
            f"pgbench scale {args.scale}, {args.duration}s per run, {args.repeat} round(s), "
            f"targets interleaved; sidecar audit_durability={args.audit_durability}"
        )
        print(
            f"{'workload':<16}{'clients':>8}  {'target':<10}{'tps':>12}{'lat ms':>10}"
            f"{'vs direct':>11}{'vs bouncer':>12}{'CPU us/txn':>12}"
        )
        for workload, options in workloads(tmp, args.scale).items():
            for clients in (1, 8):
                runs: dict[str, list[tuple[float, float]]] = {t: [] for t in targets}
                for _ in range(args.repeat):  # interleaved rounds; the median is kept
                    for target, (tport, user, pw) in targets.items():
                        pids = measured_procs.get(target, [])
                        before = sum(cpu_seconds(p) for p in pids)
                        tps, lat = pgbench(
                            tport, user, database, clients, args.duration, options, pw
                        )
                        runs[target].append((tps, lat))
                        if pids:
                            used = sum(cpu_seconds(p) for p in pids) - before
                            per_txn = used / max(tps * args.duration, 1.0) * 1e6
                            cpu_us.setdefault((workload, clients, target), []).append(per_txn)
                for target, measured in runs.items():
                    measured.sort()
                    results[(workload, clients, target)] = measured[len(measured) // 2]
                for target in targets:
                    tps, lat = results[(workload, clients, target)]
                    direct = results[(workload, clients, "direct")][0]
                    bouncer_tps = results[(workload, clients, "pgbouncer")][0]
                    cpu = ""
                    if target in measured_procs:
                        measured_cpu = sorted(cpu_us[(workload, clients, target)])
                        cpu = f"{measured_cpu[args.repeat // 2]:>12.1f}"
                    print(
                        f"{workload:<16}{clients:>8}  {target:<10}{tps:>12.0f}{lat:>10.3f}"
                        f"{tps / direct:>11.3f}{tps / bouncer_tps:>12.3f}{cpu}"
                    )
        print(f"sidecar memory per idle connection: {per_conn:.1f} KB ({args.idle} connections)")
        print()
        lines = []

        def cpu(workload: str, clients: int, target: str) -> float:
            return sorted(cpu_us[(workload, clients, target)])[args.repeat // 2]

        for target in sidecar_procs:
            metric = target.replace("-", "_")
            for workload in ("select-only", "select-prepared"):
                tag = workload.replace("-", "_")
                for clients in (1, 8):
                    ratio = (
                        results[(workload, clients, target)][0]
                        / results[(workload, clients, "pgbouncer")][0]
                    )
                    lines.append(
                        verdict(
                            f"{metric}_vs_pgbouncer_tps_{clients}client_{tag}",
                            ratio, "ratio", 0.9, True,
                        )
                    )  # fmt: skip
                    lines.append(
                        verdict(
                            f"{metric}_vs_pgbouncer_cpu_per_txn_{clients}client_{tag}",
                            cpu(workload, clients, target) / cpu(workload, clients, "pgbouncer"),
                            "ratio", 1.5, False,
                        )
                    )  # fmt: skip
            lines.append(
                verdict(
                    f"{metric}_orm_vs_integer_cpu_per_txn_1client",
                    cpu("orm", 1, target) / cpu("select-only", 1, target),
                    "ratio", 1.3, False,
                )
            )  # fmt: skip
        lines.append(verdict("sidecar_memory_per_idle_connection", per_conn, "KB", 100, False))
        print("\n".join(lines))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
