"""Instructions per transaction in the sidecar's session, this tree against another checkout.

``bench/proxy_micro.py`` drives one real ``Session`` with pgbench's select-only
exchange, the same as Bind/Execute/Sync of a prepared statement, and an ORM's
statement, with no sockets. Here it runs under valgrind's callgrind, which counts instructions
rather than time, so the figure does not move with the machine's load. Each
tree runs at two transaction counts and the difference is divided by the
difference in transactions, so start-up and import cost cancel out.

    git archive <base commit> sidecar | tar -x -C /tmp/base
    .venv/bin/python bench/proxy_instructions.py --compare /tmp/base [--n 1000] [--repeat 3]

It prints instructions per transaction for both trees and ends with one line
per workload: ``<workload>_instructions_delta=<percent> % target=2 met|missed``
(this tree's extra instructions over the base, for traffic that changes no
session state: the cost of the session-state barrier and everything else
that differs), then ``orm_vs_select_only_instructions``: this tree's ORM
statement against the integer one (issue target: within 1.3x).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "bench" / "proxy_micro.py"


def instructions(tree: Path, n: int, workload: str, work: Path) -> int:
    out = work / f"callgrind.{tree.name}.{n}.{workload}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(MICRO),
        "--n",
        str(n),
        "--rounds",
        "1",
        "--tree",
        str(tree),
        "--workload",
        workload,
    ]
    # A fixed hash seed: dict and set layouts (and so instruction counts) repeat.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in {out}")
    return int(match.group(1))


def per_transaction(tree: Path, n: int, workload: str, work: Path) -> float:
    small = instructions(tree, n, workload, work)
    large = instructions(tree, 2 * n, workload, work)
    return (large - small) / n


def median_per_transaction(tree: Path, n: int, workload: str, work: Path, repeat: int) -> float:
    # Object addresses differ from run to run (and with them some hashing and the
    # garbage collector's timing): a few hundred instructions of noise per
    # transaction, which the median of a few runs irons out.
    runs = sorted(per_transaction(tree, n, workload, work) for _ in range(repeat))
    return runs[len(runs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", required=True, metavar="TREE", help="the base checkout")
    parser.add_argument("--n", type=int, default=1000, help="transactions in the smaller run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median kept)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = {"this": ROOT, "base": Path(args.compare).resolve()}
    lines = []
    with tempfile.TemporaryDirectory(prefix="warden-callgrind-") as tmp:
        work = Path(tmp)
        this: dict[str, float] = {}
        for workload in ("select-only", "select-prepared", "orm"):
            counts = {
                name: median_per_transaction(tree, args.n, workload, work, args.repeat)
                for name, tree in trees.items()
            }
            this[workload] = counts["this"]
            workload = workload.replace("-", "_")
            delta = (counts["this"] / counts["base"] - 1) * 100
            print(
                f"{workload:<16} this {counts['this']:>10.0f}  base {counts['base']:>10.0f} "
                f"instructions/txn  ({delta:+.2f} %)"
            )
            verdict = "met" if delta <= 2 else "missed"
            lines.append(f"{workload}_instructions_delta={delta:.2f} % target=2 {verdict}")
        # An ORM's statements (string literals, quoted names) against pgbench's.
        ratio = this["orm"] / this["select-only"]
        verdict = "met" if ratio <= 1.3 else "missed"
        lines.append(f"orm_vs_select_only_instructions={ratio:.3f} ratio target=1.3 {verdict}")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
