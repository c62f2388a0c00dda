"""Benchmark of the classification scanner: columns scanned per second, and its accuracy.

Usage: ``python bench/scan.py [--rounds N] [--tables N]``. It seeds a scratch
database (on the server ``DATABASE_URL`` names, default the local one) with
``--tables`` tables of 10 columns each (100 x 10 = 1,000 columns by default),
200 rows per table, values drawn from the test generators (e-mail addresses,
phones, names, SSNs, cards, IBANs, IPs, secrets, addresses, sentences, SKUs,
numbers, dates) under uninformative column names (``c0`` ... ``c9``), so every
detector has to look at the values. Each round is a full ``run_scan`` with
100-value samples: catalog, one sampling query per table, detectors.

It then scans the seeded 34-table database of ``tests/sidecar/scanner/seed.py``
and prints precision and recall per classification against its ground truth.

It ends with ``scan_columns_per_second=<v> columns/s target=500 met|missed``
(the best round's wall time). Because the machine is shared and wall time is
noisy, it also prints CPU time: the scanner process's and its server backend's
(read from ``/proc``, so the server must be local).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from sidecar.scanner import ScanSettings, run_scan, scan_connection  # noqa: E402
from sidecar.scanner.scan import connect  # noqa: E402
from tests.sidecar.scanner import seed as seeded  # noqa: E402

TARGET = 500.0
ROWS = 200
GENERATORS = [
    ("text", seeded._email),
    ("text", seeded._phone),
    ("text", seeded._name),
    ("text", seeded._ssn),
    ("text", seeded._card),
    ("text", seeded._iban),
    ("text", seeded._ipv4),
    ("text", seeded._secret),
    ("text", seeded._address),
    ("text", seeded._sentence),
    ("text", seeded._sku),
    ("text", seeded._product),
    ("text", seeded._status),
    ("bigint", seeded._int),
    ("date", seeded._recent_date),
    ("timestamptz", seeded._recent),
]


def _url(database: str) -> str:
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def _seed_wide(conn: psycopg.Connection, tables: int) -> int:
    r = random.Random(1000)
    columns = 0
    for t in range(tables):
        chosen = [GENERATORS[(t + i * 3) % len(GENERATORS)] for i in range(10)]
        names = [f"c{i}" for i in range(10)]
        conn.execute(
            sql.SQL("CREATE TABLE {} ({})").format(
                sql.Identifier(f"t{t:03d}"),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(kind))  # type: ignore[arg-type]
                    for n, (kind, _) in zip(names, chosen, strict=True)
                ),
            )
        )
        copy = sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(f"t{t:03d}"))
        with conn.cursor() as cur, cur.copy(copy) as writer:
            for _ in range(ROWS):
                writer.write_row([gen(r) for _, gen in chosen])
        columns += 10
    conn.execute("ANALYZE")
    return columns


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a local process, e.g. the scan's server backend."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tables", type=int, default=100)
    args = parser.parse_args()
    admin = _url("postgres")
    wide = "warden_bench_scan_" + secrets.token_hex(3)
    accuracy = "warden_bench_seed_" + secrets.token_hex(3)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(wide)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(accuracy)))
    try:
        with psycopg.connect(_url(wide), autocommit=True) as conn:
            columns = _seed_wide(conn, args.tables)
        settings = ScanSettings(sample_rows=100)
        best_wall = best_cpu = best_total_cpu = float("inf")
        for i in range(args.rounds):
            with connect(_url(wide)) as conn:
                backend = conn.info.backend_pid
                wall, cpu, server = time.perf_counter(), time.process_time(), _cpu_of(backend)
                report = scan_connection(conn, settings=settings)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                server = _cpu_of(backend) - server
            best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
            best_total_cpu = min(best_total_cpu, cpu + server)
            assert report.summary["columns"] == columns
            print(
                f"round {i + 1}: {columns} columns, {report.summary['sampled_columns']} sampled, "
                f"{len(report.findings)} findings, wall {wall * 1000:.0f} ms, "
                f"scanner cpu {cpu * 1000:.0f} ms, server backend cpu {server * 1000:.0f} ms"
            )
        with psycopg.connect(_url(accuracy), autocommit=True) as conn:
            seeded.seed(conn)
        report = run_scan(_url(accuracy), settings=settings)
        table = seeded.score([(f.table, f.column, f.classification) for f in report.findings])
        print(f"\naccuracy on the seeded database ({len(seeded.TABLES)} tables):")
        print(seeded.format_score(table))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in (wide, accuracy):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    rate = columns / best_wall
    print(f"\nscanner-process CPU only: {columns / best_cpu:.0f} columns/s")
    print(
        f"scanner + server backend CPU: {columns / best_total_cpu:.0f} columns/s "
        "(what one free core each would give; wall time on a shared machine is noisier)"
    )
    verdict = "met" if rate >= TARGET else "missed"
    print(f"scan_columns_per_second={rate:.0f} columns/s target={TARGET:.0f} {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
