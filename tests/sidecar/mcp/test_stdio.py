"""``python -m sidecar mcp``: one agent over stdio, as a process of its own with its
own spool, driven by the SDK's own client (it launches the command)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import Implementation

from tests.sidecar.mcp.conftest import (
    STDIO_TOKEN,
    mcp_bundle,
    run,
    spool_events,
    spool_text,
    stdio_params,
    write_bundle,
)
from tests.sidecar.proxy.conftest import EMAILS, SSNS, Sidecar, wait_for


@pytest.fixture(scope="module")
def stdio_config(sidecar: Sidecar, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The running sidecar's configuration (same database, same bundle file) for a
    stdio process with a state directory of its own."""
    config = json.loads(Path(sidecar.config_path).read_text())
    for key in ("mcp_listen", "ready_file", "metrics_listen", "listen_port"):
        config.pop(key, None)
    config["state_dir"] = str(tmp_path_factory.mktemp("mcp-stdio-state"))
    path = Path(config["state_dir"]) / "stdio.json"
    path.write_text(json.dumps(config))
    return path


def test_stdio_serves_one_agent_under_the_same_policy(sidecar: Sidecar, stdio_config: Path) -> None:
    name = sidecar.database

    async def body() -> dict[str, Any]:
        info = Implementation(name="desktop agent", version="3")
        async with Client(stdio_params(stdio_config, STDIO_TOKEN), client_info=info) as client:
            out = {
                "read": await client.call_tool(
                    "query", {"sql": "SELECT id, email, ssn FROM customers WHERE id <= 3"}
                ),
                "drop": await client.call_tool("execute", {"sql": "DROP TABLE customers"}),
                "tables": await client.call_tool("list_tables", {}),
            }
            # Its token revoked (the bundle no longer carries it) while the session is open.
            await asyncio.to_thread(
                write_bundle, sidecar, mcp_bundle(name, without=("stdio-agent",))
            )
            # The sidecar serves it now; this process re-reads the same file as often.
            deadline = time.monotonic() + 15
            while True:
                out["after"] = await client.call_tool("query", {"sql": "SELECT 1"})
                if out["after"].is_error or time.monotonic() > deadline:
                    return out
                await asyncio.sleep(0.05)

    try:
        results = run(body())
    finally:
        write_bundle(sidecar, mcp_bundle(name))
    read = results["read"].structured_content
    assert [row[1] for row in read["rows"]] == ["***@example.com"] * 3
    assert [row[2] for row in read["rows"]] == ["*******1001", "*******1002", "*******1003"]
    drop = results["drop"].structured_content["error"]
    assert drop["code"] == "blocked" and "no-drop" in drop["message"]
    assert not results["tables"].is_error
    after = results["after"]
    assert after.is_error and after.structured_content["error"]["code"] == "revoked"

    # Its own spool, next to (not inside) the sidecar's; shipped when a control plane is set.
    state = Path(json.loads(stdio_config.read_text())["state_dir"])
    spool = state / "mcp-stdio" / "spool"
    events = wait_for(lambda: [e for e in spool_events(spool) if e.get("type") == "mcp.call"])
    assert {e["tool"] for e in events} == {"query", "execute", "list_tables"}
    assert {e["identity"] for e in events} == {"stdio-agent"}
    assert {e["application_name"] for e in events} == {"mcp:desktop-agent"}
    assert {e["client_addr"] for e in events} == {"stdio"}
    revoked = [e for e in events if e["outcome"] == "blocked" and e["tool"] == "query"]
    assert revoked, "the refused call after the revocation is audited"
    statements = [e for e in spool_events(spool) if e.get("type") == "statement"]
    assert any(s["outcome"] == "blocked" and s["kind"] == "drop" for s in statements)
    text = spool_text(spool)
    for raw in SSNS + EMAILS:
        assert raw not in text
    assert STDIO_TOKEN not in text
