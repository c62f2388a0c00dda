"""The MCP server over streamable HTTP, driven by the SDK's own client, in front of a
real PostgreSQL: what an agent reads is masked exactly as through psql, what policy
refuses is refused with the rule's message, every call is audited, and the bearer
token is checked on every request."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from mcp import Client

from sidecar.mcp.tools import TOOLS
from tests.sidecar.mcp.conftest import (
    AGENT_TOKEN,
    ESCAPE_TOKEN,
    LIMITED_TOKEN,
    LIMITS,
    REVOKED_TOKEN,
    WIDE_TOKEN,
    mcp_bundle,
    mcp_url,
    run,
    spool_events,
    spool_text,
    with_http_client,
    write_bundle,
)
from tests.sidecar.proxy.conftest import ALICE_TOKEN, EMAILS, SSNS, Sidecar, wait_for

# Reads of the classified columns in every position the engine rewrites: none may
# bring a raw SSN or e-mail back (as tests/sidecar/engine/test_masking_pg.py asks
# of the engine's rewrite, here end to end through the MCP server and the proxy).
CLASSIFIED_READS = [
    "SELECT * FROM customers ORDER BY id",
    "SELECT id, email, ssn FROM customers WHERE id <= 5",
    "SELECT upper(email), substr(ssn, 1, 3), ssn || '' FROM customers WHERE id = 3",
    "SELECT id FROM customers WHERE email = 'user1@example.com'",
    "SELECT id FROM customers WHERE ssn LIKE '001%'",
    "SELECT email FROM customers WHERE id = 1 UNION SELECT ssn FROM customers WHERE id = 1",
    "WITH c AS (SELECT email, ssn FROM customers) SELECT * FROM c LIMIT 3",
    "SELECT string_agg(email, ',') FROM customers",
    "SELECT row_to_json(c) FROM customers c WHERE id = 2",
    "SELECT CASE WHEN ssn LIKE '00%' THEN ssn END FROM customers WHERE id = 4",
    "SELECT (SELECT max(ssn) FROM customers) AS top",
]


def _text(result: Any) -> str:
    return json.dumps(result.structured_content) + "".join(
        getattr(c, "text", "") for c in result.content
    )


def _no_raw_value(text: str) -> None:
    for raw in SSNS + EMAILS:
        assert raw not in text, f"raw value {raw} came back"


def test_the_tools_and_their_schemas(sidecar: Sidecar) -> None:
    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = run(with_http_client(sidecar, AGENT_TOKEN, body))
    assert {t.name: t.input_schema for t in tools} == {
        name: t["input_schema"] for name, t in TOOLS.items()
    }
    # No tool takes connection parameters.
    for tool in tools:
        assert set(tool.input_schema["properties"]) <= {"table", "sql", "id", "wait_seconds"}


def test_schema_tools_show_classifications_and_masks_never_values(sidecar: Sidecar) -> None:
    async def body(client: Client) -> Any:
        return (
            await client.call_tool("list_tables", {}),
            await client.call_tool("describe_table", {"table": "customers"}),
            await client.call_tool("describe_table", {"table": "public.nope"}),
        )

    tables, customers, missing = run(with_http_client(sidecar, AGENT_TOKEN, body))
    listed = {t["name"]: t for t in tables.structured_content["tables"]}
    assert listed["customers"]["classified_columns"] == 2
    assert listed["customers"]["access"] == "allowed"
    columns = {c["name"]: c for c in customers.structured_content["columns"]}
    assert columns["email"]["classification"] == "pii.email"
    assert columns["email"]["masked"] is True
    assert columns["ssn"]["masked"] is True
    assert columns["name"]["masked"] is False
    assert columns["id"]["type"] == "integer"
    _no_raw_value(_text(customers) + _text(tables))
    assert missing.is_error
    assert missing.structured_content["error"]["code"] == "unknown_table"


def test_masked_reads_never_return_a_raw_value(sidecar: Sidecar) -> None:
    async def body(client: Client) -> list[Any]:
        return [await client.call_tool("query", {"sql": sql}) for sql in CLASSIFIED_READS]

    results = run(with_http_client(sidecar, AGENT_TOKEN, body))
    for sql, result in zip(CLASSIFIED_READS, results, strict=True):
        assert not result.is_error, (sql, result.content)
        _no_raw_value(_text(result))
    first = results[0].structured_content
    assert [c["name"] for c in first["columns"]] == ["id", "name", "email", "ssn"]
    assert first["columns"][0]["type"] == "int4"
    assert first["rows"][0][:3] == [1, "Customer 1", "***@example.com"]
    assert first["masked_columns"] == ["public.customers.email", "public.customers.ssn"]
    # 50 rows, the configured limit is 20: cut, and said so.
    assert first["row_count"] == LIMITS["mcp_max_rows"]
    assert first["truncated"] is True and first["truncated_by"] == "rows"
    # The security team (exempt from the masks) would see raw values: the masks are
    # the policy's, not the MCP server's.
    with psycopg.connect(sidecar.dsn()) as conn:
        row = conn.execute("SELECT email FROM customers WHERE id = 1").fetchone()
    assert row == ("***@example.com",)
    # Nothing raw reached the audit trail either.
    time.sleep(0.3)
    _no_raw_value(spool_text(sidecar.state_dir))


def test_refusals_are_tool_errors_with_the_rules_message(sidecar: Sidecar) -> None:
    async def body(client: Client) -> dict[str, Any]:
        calls = {
            "drop": ("execute", {"sql": "DROP TABLE notes"}),
            "drop_as_query": ("query", {"sql": "DROP TABLE notes"}),
            "write_as_query": ("query", {"sql": "INSERT INTO notes (body) VALUES ('x')"}),
            "read_as_execute": ("execute", {"sql": "SELECT 1"}),
            "two": ("query", {"sql": "SELECT 1; SELECT 2"}),
            "set": ("execute", {"sql": "SET search_path = pg_catalog"}),
            "server_file": ("query", {"sql": "SELECT pg_read_file('/etc/passwd')"}),
            "syntax": ("query", {"sql": "SELEC 1"}),
            "connection_params": ("query", {"sql": "SELECT 1", "host": "10.0.0.1"}),
            "no_sql": ("query", {}),
            "unknown_tool": ("shell", {"cmd": "id"}),
        }
        return {k: await client.call_tool(t, a) for k, (t, a) in calls.items()}

    results = run(with_http_client(sidecar, AGENT_TOKEN, body))
    for name, result in results.items():
        assert result.is_error, name
    error = {k: r.structured_content["error"] for k, r in results.items()}
    assert error["drop"]["code"] == "blocked"
    assert "Dropping objects is not allowed through Warden" in error["drop"]["message"]
    assert "no-drop" in error["drop"]["message"]
    assert error["drop_as_query"]["code"] == "blocked"
    assert error["write_as_query"]["code"] == "wrong_tool"
    assert error["read_as_execute"]["code"] == "wrong_tool"
    assert error["two"]["code"] in ("one_statement", "syntax_error")
    assert error["set"]["code"] == "wrong_tool"
    assert error["server_file"]["code"] == "blocked"
    assert error["syntax"]["code"] == "syntax_error" and error["syntax"]["sqlstate"] == "42601"
    assert error["connection_params"]["code"] == "invalid_arguments"
    assert error["no_sql"]["code"] == "invalid_arguments"
    assert error["unknown_tool"]["code"] == "unknown_tool"
    # The table is still there: the refused DROP never reached the database.
    with psycopg.connect(sidecar.extra["upstream"]) as conn:
        assert conn.execute("SELECT to_regclass('public.notes')").fetchone() == ("notes",)
        assert conn.execute("SELECT count(*) FROM ddl_seen").fetchone() == (0,)


def test_every_call_is_audited_in_the_proxys_chain(sidecar: Sidecar) -> None:
    async def body(client: Client) -> Any:
        await client.call_tool("query", {"sql": "SELECT email FROM customers WHERE id = 7"})
        await client.call_tool("execute", {"sql": "DROP TABLE customers"})

    run(with_http_client(sidecar, AGENT_TOKEN, body, client_name="Audit Bot/2 ☃"))

    def settled() -> list[dict[str, Any]]:
        found = [
            e
            for e in spool_events(sidecar.state_dir)
            if e.get("application_name") == "mcp:Audit-Bot-2" and e.get("type") == "mcp.call"
        ]
        return found if len(found) >= 2 else []

    calls = wait_for(settled, timeout=5)
    assert calls, "no mcp.call events"
    query, drop = calls[-2:]
    assert query["tool"] == "query" and drop["tool"] == "execute"
    for event in (query, drop):
        assert event["v"] == "1.2"
        assert event["identity"] == "agent7" and event["identity_kind"] == "agent"
        assert event["owner"] == "alice"
        assert event["client_addr"] == "127.0.0.1"
    assert query["outcome"] == "allowed" and query["rows"] == 1 and query["action"] == "allow"
    assert query["masked_columns"] == ["public.customers.email"]
    assert query["statement"] == "SELECT email FROM customers WHERE id = $1"
    assert drop["outcome"] == "blocked" and drop["action"] == "block"
    assert drop["error_sqlstate"] == "42501"
    # The statements themselves, recorded by the proxy under the same application name.
    statements = [
        e
        for e in spool_events(sidecar.state_dir)
        if e.get("type") == "statement" and e.get("application_name") == "mcp:Audit-Bot-2"
    ]
    assert {s["outcome"] for s in statements} >= {"allowed", "blocked"}
    assert all(s["owner"] == "alice" for s in statements)


def test_http_needs_a_valid_bearer_token(sidecar: Sidecar) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "list_tables", "arguments": {}},
    }
    # An address of the agent's choosing: the trail and the sign-in limits must see
    # the peer's own (agents reach a loopback listener, which uvicorn trusted for it).
    headers = {"Accept": "application/json, text/event-stream", "X-Forwarded-For": "203.0.113.9"}
    cases = {
        "none": {},
        "not bearer": {"Authorization": f"Basic {AGENT_TOKEN}"},
        "unknown prefix": {"Authorization": "Bearer wdn_nobody" + "x" * 33},
        "wrong token, known prefix": {"Authorization": f"Bearer {AGENT_TOKEN[:10]}{'z' * 33}"},
        # A human's token signs in to the proxy, not to the MCP server (no prefix).
        "a human's token": {"Authorization": f"Bearer {ALICE_TOKEN}"},
    }
    for name, extra in cases.items():
        response = httpx2.post(mcp_url(sidecar), json=body, headers={**headers, **extra})
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert AGENT_TOKEN not in response.text
        # A wrong token with a known prefix reads as an unknown one: no identity named.
        assert "agent7" not in response.text, name
    # The wrong token with a real prefix was a sign-in the proxy refused and recorded.
    failed = wait_for(
        lambda: [
            e
            for e in spool_events(sidecar.state_dir)
            if e.get("type") == "login_failed" and e.get("identity") == "agent7"
        ]
    )
    assert failed and failed[-1]["client_addr"] == "127.0.0.1"
    assert "z" * 33 not in spool_text(sidecar.state_dir)


def test_limits(sidecar: Sidecar) -> None:
    """Per identity: calls at once, result size, statement timeout, calls a minute."""

    async def body(client: Client) -> dict[str, Any]:
        sleepers = await asyncio.gather(
            *(client.call_tool("query", {"sql": "SELECT pg_sleep(0.6)"}) for _ in range(3))
        )
        wide = await client.call_tool(
            "query", {"sql": "SELECT repeat('x', 1000) FROM generate_series(1, 10)"}
        )
        slow = await client.call_tool("query", {"sql": "SELECT pg_sleep(3)"})
        rest = [await client.call_tool("list_tables", {}) for _ in range(30)]
        return {"sleepers": sleepers, "wide": wide, "slow": slow, "rest": rest}

    results = run(with_http_client(sidecar, LIMITED_TOKEN, body))
    codes = sorted(
        r.structured_content["error"]["code"] if r.is_error else "ok" for r in results["sleepers"]
    )
    assert codes == ["limited", "ok", "ok"]
    wide = results["wide"].structured_content
    assert wide["truncated"] is True and wide["truncated_by"] == "bytes"
    assert 0 < wide["row_count"] < 10
    slow = results["slow"].structured_content["error"]
    assert slow["code"] == "timeout" and slow["sqlstate"] == "57014"
    refused = [r for r in results["rest"] if r.is_error]
    # 3 + 2 + 30 calls against a limit of 30 a minute: the last ones are refused.
    assert refused and all(
        "rate limit" in r.structured_content["error"]["message"] for r in refused
    )
    assert not results["rest"][0].is_error
    # Another identity is not affected.
    other = run(with_http_client(sidecar, AGENT_TOKEN, lambda c: c.call_tool("list_tables", {})))
    assert not other.is_error


def test_a_revoked_token_ends_the_session_at_its_next_call(sidecar: Sidecar) -> None:
    name = sidecar.database

    async def body(client: Client) -> Any:
        first = await client.call_tool("query", {"sql": "SELECT 1 AS one"})
        await asyncio.to_thread(write_bundle, sidecar, mcp_bundle(name, without=("revoked",)))
        try:
            second = await client.call_tool("query", {"sql": "SELECT 1 AS one"})
        except Exception as exc:  # the HTTP layer's 401
            second = exc
        return first, second

    try:
        first, second = run(with_http_client(sidecar, REVOKED_TOKEN, body))
        # And a new client with that token is refused at the door (asked before the
        # bundle that knows the token again is restored: the sidecar re-reads it).
        response = httpx2.post(
            mcp_url(sidecar),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {REVOKED_TOKEN}"},
        )
    finally:
        write_bundle(sidecar, mcp_bundle(name))
    assert not first.is_error and first.structured_content["rows"] == [[1]]
    if isinstance(second, Exception):
        assert "401" in repr(second) or "not valid" in repr(second)
    else:
        assert second.is_error
    assert response.status_code == 401


@pytest.mark.parametrize("mode", ["legacy"])
def test_the_handshake_era_protocol_works_too(sidecar: Sidecar, mode: str) -> None:
    async def body(client: Client) -> Any:
        return await client.call_tool("query", {"sql": "SELECT ssn FROM customers WHERE id = 9"})

    result = run(with_http_client(sidecar, AGENT_TOKEN, body, mode=mode, client_name="legacy"))
    assert result.structured_content["rows"] == [["*******1009"]]
    # The client ended its session (DELETE): the proxied connection is closed with it.
    ended = wait_for(
        lambda: [
            e
            for e in spool_events(sidecar.state_dir)
            if e.get("type") == "session_end" and e.get("application_name") == "mcp:legacy"
        ]
    )
    assert ended and ended[0]["identity"] == "agent7" and ended[0]["owner"] == "alice"


def test_no_call_changes_the_session_a_later_call_runs_in(sidecar: Sidecar) -> None:
    """Attack (a review's finding): the session's read-only default, statement timeout
    and MCP application name were set once, when it connected, and ``set_config`` of
    those settings is a statement the engine allows anyone (it is neither a barrier
    nor of kind ``set``). So ``query`` could turn read-only off for the session and
    then write through a SELECT whose WITH inserts, lift the time limit, and
    ``execute`` could rename the session so its statements left the trail's MCP
    filter. Every such call must be refused, nothing written, nothing changed."""

    async def body(client: Client) -> dict[str, Any]:
        calls = {
            "read_only_off": (
                "query",
                "SELECT set_config('default_transaction_read_only', 'off', false)",
            ),
            "qualified": (
                "query",
                "SELECT pg_catalog.set_config('statement_timeout', '0', false)",
            ),
            "write_in_with": (
                "query",
                "WITH d AS (INSERT INTO notes (body) VALUES ('escaped') RETURNING 1) "
                "SELECT count(*) FROM d",
            ),
            "rename": (
                "execute",
                "INSERT INTO notes (body) VALUES ('renamed') "
                "RETURNING set_config('application_name', 'psql', false)",
            ),
        }
        out = {k: await client.call_tool(t, {"sql": q}) for k, (t, q) in calls.items()}
        out["slow"] = await client.call_tool("query", {"sql": "SELECT pg_sleep(3)"})
        out["after"] = await client.call_tool(
            "query",
            {
                "sql": "SELECT current_setting('application_name'), "
                "current_setting('statement_timeout'), "
                "current_setting('default_transaction_read_only')"
            },
        )
        return out

    results = run(with_http_client(sidecar, ESCAPE_TOKEN, body, client_name="escaper"))
    for name in ("read_only_off", "qualified", "write_in_with", "rename"):
        assert results[name].is_error, name
        assert results[name].structured_content["error"]["code"] == "wrong_tool", name
    assert "writes public.notes" in results["write_in_with"].structured_content["error"]["message"]
    assert results["slow"].structured_content["error"]["code"] == "timeout"
    assert results["after"].structured_content["rows"] == [["mcp:escaper", "1500ms", "on"]]
    with psycopg.connect(sidecar.extra["upstream"]) as conn:
        written = conn.execute(
            "SELECT count(*) FROM notes WHERE body IN ('escaped', 'renamed')"
        ).fetchone()
        assert written == (0,)


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024  # type: ignore[index]


def test_one_enormous_answer_cannot_exhaust_the_sidecars_memory(sidecar: Sidecar) -> None:
    """Attack (a review's finding): the result limits are checked row by row, after the
    driver has read the row, and a write's RETURNING rows are all read before the
    first is looked at. One row of 200 MB, or 40 of 5 MB returned by an INSERT, sat
    whole in the sidecar's memory (the MCP server runs in it; its peak grew by
    958 MB), and a few agents at once could have it killed. The proxy now ends a
    session of the MCP server's when the answer to one statement passes
    ``mcp_answer_bytes`` (8 MiB here)."""
    pid = sidecar.proc.pid
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts from here
    except OSError:
        pytest.skip("this kernel does not let the peak memory be reset")
    before = _peak_rss_mb(pid)

    async def body(client: Client) -> dict[str, Any]:
        wide_row = await client.call_tool("query", {"sql": "SELECT repeat('x', 40000000)"})
        returned = await client.call_tool(
            "execute",
            {
                "sql": "INSERT INTO notes (body) SELECT 'wide' FROM generate_series(1, 40) "
                "RETURNING repeat('y', 1000000)"
            },
        )
        after = await client.call_tool("query", {"sql": "SELECT 1 AS one"})
        return {"wide_row": wide_row, "returned": returned, "after": after}

    results = run(with_http_client(sidecar, WIDE_TOKEN, body, client_name="widener"))
    grew = _peak_rss_mb(pid) - before
    for name in ("wide_row", "returned"):
        error = results[name].structured_content["error"]
        assert error["code"] == "session_ended", (name, error)
        assert "passed 8388608 bytes" in error["message"], name
    assert grew < 60, f"the sidecar's peak memory grew by {grew:.0f} MB"
    # The next call opens a new session; the write ended before its COMMIT.
    assert results["after"].structured_content.get("rows") == [[1]], results["after"]
    with psycopg.connect(sidecar.extra["upstream"]) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE body = 'wide'").fetchone() == (0,)


def test_a_session_serves_only_the_token_that_opened_it(sidecar: Sidecar) -> None:
    """Attack (a review's finding): the SDK keeps a session to the credential that
    opened it only when the request says who it is, and the bearer gate never did. A
    second agent's token naming the first's session id could end it (DELETE) or
    listen on it. It must be answered as if the session did not exist."""
    headers = {"Accept": "application/json, text/event-stream"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "owner", "version": "1"},
        },
    }
    mine = {**headers, "Authorization": f"Bearer {AGENT_TOKEN}"}
    opened = httpx2.post(mcp_url(sidecar), json=initialize, headers=mine)
    assert opened.status_code == 200, opened.text
    session = {"mcp-session-id": opened.headers["mcp-session-id"]}
    theirs = {**headers, **session, "Authorization": f"Bearer {ESCAPE_TOKEN}"}
    assert httpx2.delete(mcp_url(sidecar), headers=theirs).status_code == 404
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert httpx2.post(mcp_url(sidecar), json=listing, headers=theirs).status_code == 404
    # The owner's session is still there, and the owner may end it.
    notified = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(mcp_url(sidecar), json=notified, headers={**mine, **session}).is_success
    still = httpx2.post(mcp_url(sidecar), json=listing, headers={**mine, **session})
    assert still.status_code == 200 and "query" in still.text
    assert httpx2.delete(mcp_url(sidecar), headers={**mine, **session}).is_success


def test_a_throttled_sign_in_does_not_name_the_identity_either() -> None:
    """The proxy's refusal of a throttled sign-in names the identity the prefix
    belongs to, as its wrong-password refusal does; the MCP server's 401 says neither
    name (a review's finding, after the wrong-password case was mended)."""
    from sidecar.mcp.agents import NOT_VALID, _sign_in_message

    throttled = psycopg.OperationalError(
        'connection failed: FATAL:  Warden: too many failed sign-ins as "agent7" from this '
        "address; try again in 7 s"
    )
    assert (
        _sign_in_message(throttled)
        == "too many failed sign-ins from this address; try again in 7 s"
    )
    wrong = psycopg.OperationalError(
        'connection failed: FATAL:  password authentication failed for user "agent7"'
    )
    assert _sign_in_message(wrong) == NOT_VALID
