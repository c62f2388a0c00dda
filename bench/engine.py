"""Benchmark of the policy engine: decision latency per statement, cold and cached.

Usage: ``python bench/engine.py [--rounds N]``. It decides a realistic mix of
ORM-style reads and writes, joins, CTEs and reads of classified columns
(which are rewritten) against the fixture bundle, and reports p50/p99 for:

- cold: a cache miss, full analysis (parse, walk, policy, rewrite);
- cached (exact): the same text again;
- cached (normalised): the same statement with new literals (template path);
- explain: a cold decision with sqlglot lineage, once with sqlglot's compiled
  build (sqlglotc) and once with pure-Python sqlglot (the compiled modules are
  hidden in a child process);
- large: one cold decision on a multi-row INSERT (Django's ``bulk_create``
  shape) of 0.25, 0.5, 1 and 2 MB, new values each time, and the same with an
  accented word in every row at 32, 64 and 128 KB; the cost per byte should not
  grow with the size. ``--large-only`` measures only these.

It ends with lines ``<metric>=<value> <unit> target=<target> met|missed``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "tests" / "fixtures" / "bundles" / "demo-production.json"

ORM = [
    'SELECT "orders"."id", "orders"."customer_id", "orders"."total", "orders"."status" FROM '
    '"orders" WHERE "orders"."id" = {n} LIMIT 21',
    'SELECT "orders"."id", "orders"."total" FROM "orders" WHERE ("orders"."status" = \'paid\' '
    'AND "orders"."created_at" >= \'2024-01-0{d}T00:00:00+00:00\'::timestamptz) ORDER BY '
    '"orders"."created_at" DESC LIMIT 50',
    'SELECT COUNT(*) AS "__count" FROM "orders" WHERE "orders"."customer_id" = {n}',
    'INSERT INTO "orders" ("id", "customer_id", "total", "status", "note", "created_at") VALUES '
    "({n}, {m}, 12.50, 'new', 'web', '2024-05-0{d}T10:00:00+00:00'::timestamptz) "
    'RETURNING "orders"."id"',
    'UPDATE "orders" SET "status" = \'shipped\' WHERE "orders"."id" = {n}',
    'DELETE FROM "orders" WHERE "orders"."id" IN ({n}, {m})',
    'SELECT "products"."id", "products"."name", "products"."price" FROM "products" WHERE '
    '"products"."price" < {n}.5 ORDER BY "products"."name" ASC',
    'SELECT "orders"."id", "payments"."amount" FROM "orders" INNER JOIN "payments" ON '
    '("orders"."id" = "payments"."order_id") WHERE "orders"."id" = {n}',
]
CLASSIFIED = [
    'SELECT "customers"."id", "customers"."name", "customers"."email" FROM "customers" WHERE '
    '"customers"."id" = {n} LIMIT 21',
    "SELECT c.id, c.email, o.total FROM customers c JOIN orders o ON o.customer_id = c.id "
    "WHERE o.id = {n}",
    "WITH recent AS (SELECT customer_id, sum(total) AS spent FROM orders WHERE id > {n} GROUP BY "
    "customer_id) SELECT c.name, c.ssn, r.spent FROM recent r JOIN customers c ON c.id = "
    "r.customer_id ORDER BY r.spent DESC LIMIT 10",
    "SELECT p.card_number, p.amount FROM payments p WHERE p.order_id = {n}",
]
MIX = ORM + CLASSIFIED

# Django's bulk_create into orders: one INSERT, many rows, RETURNING the ids.
LARGE_HEAD = (
    'INSERT INTO "orders" ("id", "customer_id", "total", "status", "note", "created_at") VALUES '
)
LARGE_ROW = (
    "({n}, {m}, {t}.{c:02d}, 'new', '{note} {k}', '2024-05-0{d}T10:00:00+00:00'::timestamptz)"
)
LARGE_TAIL = ' RETURNING "orders"."id"'
LARGE_MB = (0.25, 0.5, 1.0, 2.0)
LARGE_NON_ASCII_KB = (32, 64, 128)


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _texts(templates: list[str], count: int, rng: random.Random) -> list[str]:
    return [
        t.format(n=rng.randint(1, 99999), m=rng.randint(1, 99999), d=rng.randint(1, 9))
        for t in (templates * (count // len(templates) + 1))[:count]
    ]


def _time(call: Any, texts: list[str]) -> list[float]:
    out = []
    for sql in texts:
        start = time.perf_counter_ns()
        call(sql)
        out.append((time.perf_counter_ns() - start) / 1000.0)
    return out


def large_insert(size: int, rng: random.Random, note: str = "web order") -> str:
    """A multi-row INSERT of about ``size`` bytes (UTF-8), new values every call."""
    rows: list[str] = []
    total = len(LARGE_HEAD) + len(LARGE_TAIL)
    while total < size:
        row = LARGE_ROW.format(
            n=len(rows) + 1,
            m=rng.randint(1, 99999),
            t=rng.randint(1, 9999),
            c=rng.randint(0, 99),
            note=note,
            k=rng.randint(1, 10**9),
            d=rng.randint(1, 9),
        )
        rows.append(row)
        total += len(row.encode("utf-8")) + 2
    return LARGE_HEAD + ", ".join(rows) + LARGE_TAIL


def measure_large(rounds: int) -> dict[str, float]:
    """Median ms of a cold decision per size (``rounds`` texts each)."""
    from sidecar.engine import Engine, load_bundle

    bundle = load_bundle(json.loads(BUNDLE.read_text("utf-8"))["bundle"])
    rng = random.Random(11)
    cold = Engine(bundle, cache_size=0)
    cold.decide(identity="alice", sql=large_insert(4096, rng))  # first-call costs

    def median_ms(size: int, note: str = "web order", collect: bool = True) -> float:
        samples = []
        for _ in range(rounds):
            sql = large_insert(size, rng, note)
            if not collect:
                gc.disable()
            try:
                started = time.perf_counter()
                decision = cold.decide(identity="alice", sql=sql)
                samples.append((time.perf_counter() - started) * 1000.0)
            finally:
                gc.enable()
            assert decision.action == "allow", decision.reasons
        return statistics.median(samples)

    results: dict[str, float] = {}
    for mb in LARGE_MB:
        results[f"large_{mb}mb_ms"] = median_ms(int(mb * 1024 * 1024))
    results["large_1.0mb_gc_off_ms"] = median_ms(1024 * 1024, collect=False)
    for kb in LARGE_NON_ASCII_KB:
        results[f"large_non_ascii_{kb}kb_ms"] = median_ms(kb * 1024, note="commande réglée")
    return results


def measure(rounds: int, explain_only: bool) -> dict[str, float]:
    from sidecar.engine import Engine, load_bundle

    bundle = load_bundle(json.loads(BUNDLE.read_text("utf-8"))["bundle"])
    rng = random.Random(7)
    results: dict[str, float] = {}
    cold = Engine(bundle, cache_size=0)  # every decision is a miss

    def explain(sql: str) -> None:
        cold.decide(identity="alice", sql=sql, explain=True)

    for sql in _texts(MIX, 50, rng):  # warm-up: imports, first-call costs
        explain(sql)
    lineage = _time(explain, _texts(CLASSIFIED, rounds // 4, rng))
    results["explain_p50_us"] = _pct(lineage, 0.5)
    results["explain_p99_us"] = _pct(lineage, 0.99)
    if explain_only:
        return results

    def decide_cold(sql: str) -> None:
        cold.decide(identity="alice", sql=sql)

    for name, templates in (("cold_orm", ORM), ("cold_classified", CLASSIFIED), ("cold_mix", MIX)):
        samples = _time(decide_cold, _texts(templates, rounds, rng))
        results[f"{name}_p50_us"] = _pct(samples, 0.5)
        results[f"{name}_p99_us"] = _pct(samples, 0.99)

    warm = Engine(bundle)
    fixed = _texts(MIX, len(MIX), rng)
    for sql in fixed:
        warm.decide(identity="alice", sql=sql)
    exact = _time(lambda sql: warm.decide(identity="alice", sql=sql), fixed * (rounds // len(MIX)))
    results["cached_exact_p50_us"] = _pct(exact, 0.5)
    results["cached_exact_p99_us"] = _pct(exact, 0.99)
    fresh_literals = _texts(MIX, rounds, rng)
    normalised = _time(lambda sql: warm.decide(identity="alice", sql=sql), fresh_literals)
    results["cached_normalised_p50_us"] = _pct(normalised, 0.5)
    results["cached_normalised_p99_us"] = _pct(normalised, 0.99)
    return results


class _PureSqlglot(importlib.abc.MetaPathFinder):
    """Import sqlglot's .py sources even where sqlglotc overlaid compiled modules."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "sqlglot" and not name.startswith("sqlglot."):
            return None
        leaf = name.rsplit(".", 1)[-1]
        for entry in path or sys.path:
            base = Path(entry) / leaf
            if (base / "__init__.py").is_file():
                return importlib.util.spec_from_file_location(
                    name, base / "__init__.py", submodule_search_locations=[str(base)]
                )
            if base.with_suffix(".py").is_file():
                return importlib.util.spec_from_file_location(name, base.with_suffix(".py"))
        return None


def child(rounds: int, pure: bool, large_rounds: int) -> None:
    if pure:
        sys.meta_path.insert(0, _PureSqlglot())
    from sqlglot import tokenizer_core

    compiled = not str(getattr(tokenizer_core, "__file__", ".py")).endswith(".py")
    results = measure(rounds, explain_only=pure) if rounds else {}
    if large_rounds and not pure:
        results.update(measure_large(large_rounds))
    results["sqlglot_compiled"] = float(compiled)
    print(json.dumps(results))


def report_large(c: dict[str, float]) -> None:
    print(f"{'large INSERT, one cold decision':34} {'median ms':>10} {'ms per MB':>10}")
    for mb in LARGE_MB:
        ms = c[f"large_{mb}mb_ms"]
        print(f"{f'{mb} MB':34} {ms:10.1f} {ms / mb:10.1f}")
    gc_off = c["large_1.0mb_gc_off_ms"]
    print(f"{'1.0 MB, garbage collector off':34} {gc_off:10.1f} {gc_off:10.1f}")
    for kb in LARGE_NON_ASCII_KB:
        ms = c[f"large_non_ascii_{kb}kb_ms"]
        print(f"{f'{kb} KB, an accented word a row':34} {ms:10.1f} {ms * 1024 / kb:10.1f}")
    one = c["large_1.0mb_ms"]
    print(f"engine_large_insert_1mb_ms={one:.1f} ms target=300 {'met' if one <= 300 else 'missed'}")
    # Cost per byte at the largest size over that at the smallest: 1 when linear.
    ascii_growth = (c["large_2.0mb_ms"] / 2.0) / (c["large_0.25mb_ms"] / 0.25)
    verdict = "met" if ascii_growth <= 1.5 else "missed"
    print(f"engine_large_insert_linearity={ascii_growth:.2f} x target=1.5 {verdict}")
    small, large = LARGE_NON_ASCII_KB[0], LARGE_NON_ASCII_KB[-1]
    growth = (c[f"large_non_ascii_{large}kb_ms"] / large) / (
        c[f"large_non_ascii_{small}kb_ms"] / small
    )
    verdict = "met" if growth <= 1.5 else "missed"
    print(f"engine_large_insert_non_ascii_linearity={growth:.2f} x target=1.5 {verdict}")
    print(f"engine_large_insert_1mb_gc_off_ms={gc_off:.1f} ms target=none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4000)
    parser.add_argument("--large-rounds", type=int, default=3, help="texts per large size")
    parser.add_argument("--large-only", action="store_true", help="only the large INSERTs")
    parser.add_argument("--child", choices=("compiled", "pure"))
    args = parser.parse_args()
    if args.child:
        child(args.rounds, pure=args.child == "pure", large_rounds=args.large_rounds)
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    large = ["--large-rounds", str(args.large_rounds)]
    if args.large_only:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "compiled", "--rounds", "0", *large],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        print(f"python {sys.version.split()[0]}; {args.large_rounds} texts per size")
        report_large(json.loads(out.stdout.strip().splitlines()[-1]))
        return
    runs = {}
    for mode in ("compiled", "pure"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--rounds", str(args.rounds), *large],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    c, p = runs["compiled"], runs["pure"]
    assert c["sqlglot_compiled"] == 1.0 and p["sqlglot_compiled"] == 0.0, "mode detection failed"
    print(f"rounds per measure: {args.rounds}; python {sys.version.split()[0]}")
    print(f"{'measure':34} {'p50 µs':>10} {'p99 µs':>10}")
    for key in ("cold_orm", "cold_classified", "cold_mix", "cached_exact", "cached_normalised"):
        print(f"{key:34} {c[key + '_p50_us']:10.1f} {c[key + '_p99_us']:10.1f}")
    for label, run in (("explain (lineage), sqlglotc", c), ("explain (lineage), pure", p)):
        print(f"{label:34} {run['explain_p50_us']:10.1f} {run['explain_p99_us']:10.1f}")
    checks = [
        ("cached_decision_p50", c["cached_exact_p50_us"], 20.0),
        ("cold_orm_decision_p50", c["cold_orm_p50_us"], 1000.0),
        ("cold_mix_decision_p50", c["cold_mix_p50_us"], 1000.0),
    ]
    for name, value, target in checks:
        verdict = "met" if value <= target else "missed"
        print(f"{name}={value:.1f} us target={target:.0f} {verdict}")
    print(f"cached_normalised_decision_p50={c['cached_normalised_p50_us']:.1f} us target=none")
    speedup = p["explain_p50_us"] / c["explain_p50_us"]
    print(f"lineage_speedup_sqlglotc={speedup:.2f} x target=none")
    if args.large_rounds:
        report_large(c)


if __name__ == "__main__":
    main()
