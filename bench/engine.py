"""Benchmark of the policy engine: decision latency per statement, cold and cached.

Usage: ``python bench/engine.py [--rounds N]``. It decides a realistic mix of
ORM-style reads and writes, joins, CTEs and reads of classified columns
(which are rewritten) against the fixture bundle, and reports p50/p99 for:

- cold: a cache miss, full analysis (parse, walk, policy, rewrite);
- cached (exact): the same text again;
- cached (normalised): the same statement with new literals (template path);
- explain: a cold decision with sqlglot lineage, once with sqlglot's compiled
  build (sqlglotc) and once with pure-Python sqlglot (the compiled modules are
  hidden in a child process).

It ends with lines ``<metric>=<value> <unit> target=<target> met|missed``.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import random
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


def child(rounds: int, pure: bool) -> None:
    if pure:
        sys.meta_path.insert(0, _PureSqlglot())
    from sqlglot import tokenizer_core

    compiled = not str(getattr(tokenizer_core, "__file__", ".py")).endswith(".py")
    results = measure(rounds, explain_only=pure)
    results["sqlglot_compiled"] = float(compiled)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4000)
    parser.add_argument("--child", choices=("compiled", "pure"))
    args = parser.parse_args()
    if args.child:
        child(args.rounds, pure=args.child == "pure")
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    for mode in ("compiled", "pure"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--rounds", str(args.rounds)],
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


if __name__ == "__main__":
    main()
