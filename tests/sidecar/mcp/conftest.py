"""A real sidecar with its MCP server, in front of a scratch database, for the MCP tests.

The sidecar is the proxy tests' (``tests.sidecar.proxy.conftest``: the same seeded
database and bundle) with ``mcp_listen`` on, and agents whose credentials carry their
token's prefix (bundle format 1.2). The tests drive it with the ``mcp`` SDK's own
client, over streamable HTTP and over stdio (``python -m sidecar mcp``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import psycopg
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation

from sidecar.engine import compute_revision
from tests.sidecar.proxy.conftest import (
    ROOT,
    SCHEMA_SQL,
    Sidecar,
    admin_url,
    build_bundle,
    create_database,
    drop_database,
    identity,
    start_sidecar,
    wait_for,
    with_database,
)

# Agents (kind "agent", owned by alice) and their tokens; each test that counts
# calls against the per-identity limits uses an agent of its own.
AGENT_TOKEN = "wdn_agent7" + "q" * 33
LIMITED_TOKEN = "wdn_limit3" + "r" * 33
REVOKED_TOKEN = "wdn_revok5" + "s" * 33
STDIO_TOKEN = "wdn_stdio9" + "t" * 33
ESCAPE_TOKEN = "wdn_escap4" + "u" * 33
WIDE_TOKEN = "wdn_wides6" + "v" * 33
AGENTS = {
    "agent7": AGENT_TOKEN,
    "limited": LIMITED_TOKEN,
    "revoked": REVOKED_TOKEN,
    "stdio-agent": STDIO_TOKEN,
    "escaper": ESCAPE_TOKEN,
    "widener": WIDE_TOKEN,
}
LIMITS = {
    "mcp_max_rows": 20,
    "mcp_max_result_bytes": 4000,
    # What one answer may be: small enough that the test of it needs no statement
    # that runs long on a loaded machine.
    "mcp_answer_bytes": 8 * 1024 * 1024,
    "mcp_statement_timeout_ms": 1500,
    "mcp_calls_per_minute": 30,
    "mcp_concurrent_calls": 2,
}


def agent(name: str, token: str) -> dict[str, Any]:
    entry = identity(name, token, kind="agent", teams=["eng"], owner="alice")
    entry["credentials"][0]["prefix"] = token[:10]
    return entry


def mcp_bundle(datasource: str, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """The proxy tests' bundle (PII masked, DROP blocked, DELETE held) and the agents,
    less those named in ``without`` (their token revoked)."""
    bundle = build_bundle(datasource)
    bundle["format"] = "warden.bundle/1.2"
    bundle["identities"] += [agent(n, t) for n, t in AGENTS.items() if n not in without]
    bundle["revision"] = compute_revision(bundle)
    return bundle


def write_bundle(sidecar: Sidecar, bundle: dict[str, Any]) -> None:
    """Replace the sidecar's bundle file atomically and wait until the sidecar serves it
    (it re-reads the file every ``bundle_file_interval``)."""
    path = Path(sidecar.config_path).parent / "bundle.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(bundle))
    tmp.replace(path)
    revision = f'revision="{bundle["revision"]}"'
    assert wait_for(lambda: revision in sidecar.metrics(), timeout=15), "bundle not picked up"


@pytest.fixture(scope="package")
def upstream() -> Iterator[str]:
    name = create_database("warden_mcp_")
    dsn = with_database(admin_url(), name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
    yield dsn
    drop_database(name)


def await_mcp_port(proc: Sidecar, workdir: Path) -> None:
    """Wait until the sidecar's ready file names its MCP port; keep it in ``extra``."""
    ready = workdir / "ready.json"
    deadline = time.monotonic() + 30
    while "mcp_port" not in json.loads(ready.read_text()):
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.05)
    proc.extra["mcp_port"] = json.loads(ready.read_text())["mcp_port"]


@pytest.fixture(scope="package")
def sidecar(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    workdir = tmp_path_factory.mktemp("mcp-sidecar")
    name = urlsplit(upstream).path.lstrip("/")
    proc = start_sidecar(
        workdir, upstream, mcp_bundle(name), mcp_listen="127.0.0.1:0", scan_enabled=False, **LIMITS
    )
    await_mcp_port(proc, workdir)
    proc.extra["upstream"] = upstream
    yield proc
    proc.stop()


def mcp_url(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.extra['mcp_port']}/mcp"


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def with_http_client(
    sidecar: Sidecar,
    token: str,
    body: Callable[[Client], Awaitable[Any]],
    *,
    client_name: str = "pytest agent",
    mode: str = "auto",
) -> Any:
    """Run ``body`` with the SDK's client connected over streamable HTTP as ``token``."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    transport = streamable_http_client(mcp_url(sidecar), http_client=http)
    async with (
        http,
        Client(
            transport, mode=mode, client_info=Implementation(name=client_name, version="1")
        ) as client,
    ):
        return await body(client)


def stdio_params(config: Path, token: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env["WARDEN_MCP_TOKEN"] = token
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "sidecar", "mcp", "--config", str(config)],
        env=env,
        cwd=str(ROOT),
    )


def spool_events(state_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(state_dir.rglob("*.jsonl")):
        complete = path.read_text().rpartition("\n")[0]
        out += [json.loads(line) for line in complete.splitlines() if line]
    return out


def spool_text(state_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted(state_dir.rglob("*.jsonl")))
