"""Benchmark the sidecar's MCP server: ``query`` over streamable HTTP against the proxy.

One sidecar (``python -m sidecar run`` with ``mcp_listen``) in front of a scratch
database; the same one-row masked read (``SELECT id, email FROM customers WHERE id
= <n>``, ``email`` classified and masked for the agent) is sent, interleaved, in two
ways as the same agent identity:

- ``proxy``: psycopg straight to the sidecar's PostgreSQL port (extended protocol,
  unnamed statement, the text as is), the path any client takes;
- ``mcp``: a ``tools/call`` of ``query`` over streamable HTTP (protocol 2026-07-28,
  one POST per call, keep-alive), with a minimal HTTP client, so the figure is the
  server's: the SDK's dispatch, the tool, its own proxied connection to the same
  proxy (through the private Unix listener), the JSON answer, the audit event;
- ``mcp-sdk`` (informational): the same call through the SDK's own ``Client``, whose
  own work (pydantic, anyio, and a ``tools/list`` it sends after each call) adds to it.

It prints p50/p99 per path and ends with ``<metric>=<value> <unit> target=<target>
met|missed`` lines; the target is the issue's: MCP overhead at most 2 ms at p50.

    .venv/bin/python bench/mcp.py [--rounds 1000] [--audit-durability strict|batched]

PostgreSQL comes from ``DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432``);
a scratch database ``warden_mcp_bench_<hex>`` is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
# This file is named mcp.py: its own directory must not shadow the SDK's package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from sidecar.engine import compute_revision  # noqa: E402
from sidecar.proxy.scram import make_verifier  # noqa: E402

TOKEN = "wdn_benchm" + secrets.token_hex(16)
TARGET_OVERHEAD_MS = 2.0


def server_url(database: str) -> str:
    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(base)._replace(path="/" + database))


def bundle(datasource: str) -> dict:
    data: dict = {
        "format": "warden.bundle/1.2",
        "revision": "",
        "issued_at": "2026-12-01T00:00:00Z",
        "datasource": {
            "name": datasource,
            "engine": "postgresql",
            "dialect": "postgres",
            "environment": "production",
            "criticality": 5,
        },
        "schema": {
            "tables": [
                {
                    "schema": "public",
                    "name": "customers",
                    "kind": "table",
                    "columns": [
                        {"name": "id", "type": "integer"},
                        {"name": "email", "type": "text"},
                    ],
                }
            ]
        },
        "identities": [
            {
                "name": "bench-agent",
                "kind": "agent",
                "teams": ["eng"],
                "owner": "alice",
                "expires_at": None,
                "credentials": [
                    {
                        "id": "tok-1",
                        "scram_sha_256": make_verifier(TOKEN),
                        "expires_at": None,
                        "prefix": TOKEN[:10],
                    }
                ],
            }
        ],
        "classifications": [{"name": "pii.email", "level": "confidential"}],
        "column_classifications": [
            {
                "schema": "public",
                "table": "customers",
                "column": "email",
                "classification": "pii.email",
            }
        ],
        "masking_rules": [
            {
                "classification": "pii.email",
                "strategy": "email",
                "params": {},
                "exempt_teams": [],
                "environments": [],
            }
        ],
        "guardrails": [
            {
                "name": "allow-the-rest",
                "position": 100,
                "enabled": True,
                "action": "allow",
                "message": "",
                "conditions": {},
            }
        ],
        "risk": {"review_at": 101, "block_at": 101, "critical_at": 101},
        "approvals": {"hold_seconds": 0},
    }
    data["revision"] = compute_revision(data)
    return data


def start_sidecar(tmp: Path, upstream: str, database: str, durability: str) -> tuple:
    (tmp / "bundle.json").write_text(json.dumps(bundle(database)))
    ready = tmp / "ready.json"
    config = {
        "upstream_dsn": upstream,
        "bundle_file": str(tmp / "bundle.json"),
        "state_dir": str(tmp / "state"),
        "datasource": database,
        "listen_port": 0,
        "mcp_listen": "127.0.0.1:0",
        "ready_file": str(ready),
        "allow_privileged_upstream": True,
        "scan_enabled": False,
        "audit_durability": durability,
        "mcp_calls_per_minute": 1_000_000,
        "log_level": "WARNING",
    }
    (tmp / "sidecar.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_SIDECAR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "run", "--config", str(tmp / "sidecar.json")],
        cwd=ROOT,
        env=env,
        stdout=(tmp / "sidecar.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            info = json.loads(ready.read_text())
            if "mcp_port" in info:
                return proc, info["port"], info["mcp_port"]
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the sidecar did not start:\n" + (tmp / "sidecar.log").read_text())
        time.sleep(0.05)


class McpHttp:
    """A keep-alive HTTP connection sending ``tools/call`` requests as the SDK does."""

    META = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "query",
        }
        self.ids = 0

    def query(self, sql: str) -> dict:
        self.ids += 1
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": self.ids,
                "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": sql}, "_meta": self.META},
            }
        )
        self.conn.request("POST", "/mcp", body=body, headers=self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"MCP answered {response.status}: {data[:300]!r}")
        return json.loads(data)["result"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sdk_latencies(port: int, statements: list[str]) -> list[float]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> list[float]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        out = []
        url = f"http://127.0.0.1:{port}/mcp"
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            for sql in statements:
                started = time.perf_counter()
                result = await client.call_tool("query", {"sql": sql})
                out.append((time.perf_counter() - started) * 1000)
                assert not result.is_error, result.content
        return out

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--audit-durability", choices=("strict", "batched"), default="strict")
    args = parser.parse_args()
    database = f"warden_mcp_bench_{secrets.token_hex(4)}"
    admin = server_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    upstream = server_url(database)
    proc = None
    try:
        with psycopg.connect(upstream, autocommit=True) as conn:
            conn.execute("CREATE TABLE customers (id integer PRIMARY KEY, email text NOT NULL)")
            conn.execute(
                "INSERT INTO customers SELECT i, 'user' || i || '@example.com' "
                "FROM generate_series(1, 1000) AS i"
            )
        tmp = Path(tempfile.mkdtemp(prefix="warden-mcp-bench-"))
        proc, port, mcp_port = start_sidecar(tmp, upstream, database, args.audit_durability)
        pg = psycopg.connect(
            host="127.0.0.1",
            port=port,
            dbname=database,
            user="bench-agent",
            password=TOKEN,
            sslmode="disable",
            autocommit=True,
        )
        mcp = McpHttp(mcp_port)
        statements = [
            f"SELECT id, email FROM customers WHERE id = {i % 1000 + 1}" for i in range(args.rounds)
        ]
        # Warm both paths (the MCP session's sign-in, the policy's caches).
        for sql in statements[:50]:
            pg.execute(sql, prepare=False).fetchall()
            mcp.query(sql)
        check = mcp.query(statements[0])["structuredContent"]
        assert check["rows"][0][1].startswith("***@"), check  # masked, one row
        times: dict[str, list[float]] = {"proxy": [], "mcp": []}
        for sql in statements:
            started = time.perf_counter()
            rows = pg.execute(sql, prepare=False).fetchall()
            times["proxy"].append((time.perf_counter() - started) * 1000)
            assert len(rows) == 1
            started = time.perf_counter()
            result = mcp.query(sql)
            times["mcp"].append((time.perf_counter() - started) * 1000)
            assert not result.get("isError"), result
        times["mcp-sdk"] = sdk_latencies(mcp_port, statements[: max(50, args.rounds // 5)])
        pg.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print(f"{args.rounds} rounds, audit durability {args.audit_durability}, load {os.getloadavg()}")
    print(f"{'path':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, values in times.items():
        print(
            f"{name:<10} {percentile(values, 0.5):8.3f} {percentile(values, 0.99):8.3f} "
            f"{statistics.fmean(values):8.3f}"
        )
    p50 = percentile(times["mcp"], 0.5) - percentile(times["proxy"], 0.5)
    p99 = percentile(times["mcp"], 0.99) - percentile(times["proxy"], 0.99)
    sdk = percentile(times["mcp-sdk"], 0.5) - percentile(times["proxy"], 0.5)
    met = "met" if p50 <= TARGET_OVERHEAD_MS else "missed"
    print(f"mcp_query_p50={percentile(times['mcp'], 0.5):.3f} ms target=none")
    print(f"proxy_query_p50={percentile(times['proxy'], 0.5):.3f} ms target=none")
    print(f"mcp_overhead_p50={p50:.3f} ms target={TARGET_OVERHEAD_MS} {met}")
    print(f"mcp_overhead_p99={p99:.3f} ms target=none")
    print(f"mcp_sdk_client_overhead_p50={sdk:.3f} ms target=none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
