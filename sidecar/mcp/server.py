"""The MCP server of a sidecar: the SDK's server, the HTTP listener, the stdio entry.

``McpService`` lives in the sidecar process beside the proxy (``sidecar.runner``):
it signs its agents in to the proxy's private listener (``Agents``), runs their
tool calls (``Toolbox``) under the per-identity limits, and appends one ``mcp.call``
audit event per call to the proxy's own spool, so tool calls and the statements
they ran are in the same chain. Over HTTP each request must carry ``Authorization:
Bearer <access token>``; over stdio the token comes from the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings

from sidecar import events
from sidecar.mcp.agents import (
    Agents,
    Caller,
    Limits,
    SignInFailed,
    Throttle,
    application_name,
)
from sidecar.mcp.tools import TOOLS, CallRecord, Toolbox, ToolError, elapsed_ms, validate
from sidecar.proxy.approvals import ApprovalGate
from sidecar.proxy.audit_event import event_id

log = logging.getLogger("warden.sidecar.mcp")

SERVER_NAME = "warden"
INTERNAL_PORT = 5432  # only names the socket file (libpq's .s.PGSQL.<port>)
CALLER_KEY = "warden.mcp.caller"
_FACT_KEYS = ("kind", "statement", "fingerprint", "tables", "classifications", "masked_columns")


def limits_from(config: Any) -> Limits:
    return Limits(
        max_rows=config.mcp_max_rows,
        max_result_bytes=config.mcp_max_result_bytes,
        statement_timeout_ms=config.mcp_statement_timeout_ms,
        calls_per_minute=config.mcp_calls_per_minute,
        concurrent_calls=config.mcp_concurrent_calls,
        idle_seconds=float(config.mcp_session_idle_seconds),
    )


class McpService:
    """The MCP server beside a running proxy (``proxy``: its ``ProxyServer``)."""

    def __init__(
        self,
        *,
        proxy: Any,
        policy: Any,
        audit: Any,
        approvals: ApprovalGate | None,
        limits: Limits,
        version: str = "",
    ) -> None:
        self.proxy = proxy
        self.policy = policy
        self.audit = audit
        self.limits = limits
        self._dir = Path(tempfile.mkdtemp(prefix="warden-mcp-"))  # mode 0700
        self.agents = Agents(
            identities=policy.identities,
            socket=(str(self._dir), INTERNAL_PORT),
            database=proxy.settings.database,
            limits=limits,
        )
        self.toolbox = Toolbox(policy=policy, approvals=approvals, limits=limits)
        self.throttle = Throttle(limits)
        self.stdio_caller: Caller | None = None
        self.server: Server[Any] = Server(
            SERVER_NAME,
            version=version,
            title="Warden",
            instructions=(
                "Governed access to one PostgreSQL datasource. Every statement is decided by "
                "Warden's policy: classified columns come back masked, refused statements "
                "return the rule's message, and writes a reviewer must approve return the "
                "approval request to follow with approval_status."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            # The schemas are fixed: without this the SDK runs tools/list for every
            # call to check its Mcp-Param headers (~1 ms of a call's time).
            get_tool_input_schema=_input_schema,
        )
        # No tracing spans per message: the sidecar exports none.
        self.server.middleware = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: Any = None

    async def start(self) -> None:
        """The proxy's private listener for this service's sessions, and the reaper."""
        await self.proxy.start_internal(str(self._dir / f".s.PGSQL.{INTERNAL_PORT}"))
        self._tasks.append(asyncio.create_task(self.agents.reap()))

    async def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await self._http.shutdown()
        for task in self._tasks:
            task.cancel()
        await self.agents.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # ---- the SDK's handlers -----------------------------------------------------

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=name, description=t["description"], input_schema=t["input_schema"])
                for name, t in TOOLS.items()
            ]
        )

    def _who(self, ctx: Any) -> tuple[Caller, str, str]:
        """The caller, the key of its session and its client's name."""
        client = ""
        params = ctx.session.client_params
        if params is not None:
            client = params.client_info.name
        request = ctx.request
        if request is not None:
            caller = request.scope.get(CALLER_KEY)
            if not isinstance(caller, Caller):
                raise ToolError("unauthenticated", "no access token")  # the gate lets none by
            session_id = request.headers.get("mcp-session-id")
            return caller, f"sid:{session_id}" if session_id else f"client:{client}", client
        if self.stdio_caller is None:
            raise ToolError("unauthenticated", "no access token")
        return self.stdio_caller, "stdio", client

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        started = time.perf_counter()
        tool = params.name
        record = CallRecord(tool=tool[:64], outcome="error")
        caller: Caller | None = None
        app = application_name("")
        try:
            caller, key, client = self._who(ctx)
            app = application_name(client)
            current = self.agents.current(caller)
            if current is None:
                # The token left the bundle (revoked, expired): its sessions end now.
                await self.agents.forget(caller.digest)
                record.outcome = "blocked"
                raise ToolError(
                    "revoked", "Warden: your access token is no longer valid; the session is closed"
                )
            caller = current
            args = validate(tool, params.arguments)
            refusal = self.throttle.admit(caller.identity.name)
            if refusal is not None:
                record.outcome = "limited"
                raise ToolError("limited", f"Warden: {refusal}")
            try:
                needs_session = tool not in ("list_tables", "approval_status")
                session = await self.agents.session(caller, key, client) if needs_session else None
                if session is not None:
                    app = session.application_name
                    async with session.lock:
                        payload = await self.toolbox.run(tool, args, caller, session, record)
                        session.last_used = time.monotonic()
                else:
                    payload = await self.toolbox.run(tool, args, caller, None, record)
            finally:
                self.throttle.done(caller.identity.name)
            result = _result(payload)
        except ToolError as exc:
            if exc.sqlstate:
                record.sqlstate = exc.sqlstate
            if exc.code in ("invalid_arguments", "wrong_tool", "one_statement", "unknown_tool"):
                record.outcome = "refused"  # the tool's own rules: nothing was run
            elif record.outcome == "allowed":
                record.outcome = "error"
            result = _error(exc)
        except SignInFailed as exc:
            record.outcome = "blocked"
            result = _error(ToolError("unauthenticated", f"Warden: {exc}"))
        except Exception:
            log.exception("MCP tool %s failed", tool[:64])
            result = _error(ToolError("internal", "Warden: internal error"))
        if caller is not None:
            self._audit(caller, app, record, elapsed_ms(started))
        return result

    # ---- the audit trail ----------------------------------------------------------

    def _audit(self, caller: Caller, app: str, record: CallRecord, duration: float) -> None:
        """One ``mcp.call`` event: who, which tool, what the engine decided and what
        happened; the statement only as the engine redacted it, never a value."""
        now = time.time()
        settings = self.proxy.settings
        facts = record.facts
        event: dict[str, Any] = {
            events.VERSION_KEY: events.SCHEMA_VERSION,
            "id": event_id(now),
            "type": "mcp.call",
            "ts": round(now, 6),
            "identity": caller.identity.name,
            "identity_kind": caller.identity.kind,
            "owner": caller.identity.owner,
            "datasource": settings.datasource,
            "sidecar": settings.sidecar_id,
            "client_addr": caller.client_addr,
            "application_name": app,
            "tool": record.tool,
            "action": record.action,
            "outcome": record.outcome,
            "rows": record.rows,
            "duration_ms": duration,
            "error_sqlstate": record.sqlstate,
        }
        for key in _FACT_KEYS:
            if facts.get(key) is not None:
                event[key] = facts[key]
        if record.tables and "tables" not in event:
            event["tables"] = record.tables
        if record.approval_request:
            event["approval_request"] = record.approval_request
        if facts.get("revision"):
            event["revision"] = facts["revision"]
        self.audit.append(event)

    # ---- HTTP -------------------------------------------------------------------

    def http_app(self, host: str) -> Any:
        """The streamable HTTP app (``/mcp``) behind the bearer check."""
        security = None
        if host in ("127.0.0.1", "localhost", "::1"):
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        else:
            security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        app = self.server.streamable_http_app(
            json_response=True,
            transport_security=security,
            session_idle_timeout=self.limits.idle_seconds,
        )
        return BearerGate(app, self.agents)

    async def start_http(self, listen: str, tls: ssl.SSLContext | None) -> int:
        """Serve the HTTP app on ``listen`` ("host:port"); the bound port."""
        import uvicorn

        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self.http_app(host),
            lifespan="on",
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=2,
            # The peer's own address, never an X-Forwarded-For it sends: the address
            # keys the sign-in limits and goes into the audit trail (uvicorn trusts
            # that header from loopback peers by default, and agents run there).
            proxy_headers=False,
        )
        config.load()
        if tls is not None:
            config.ssl = tls  # the proxy's own context: tls_cert, tls_key
        server = uvicorn.Server(config)
        # ``Server.serve`` would take over the process's signals: the sidecar owns them,
        # so the server is started and shut down by hand.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._http = server
        return int(sock.getsockname()[1])

    # ---- stdio --------------------------------------------------------------------

    async def serve_stdio(self, token: str) -> None:
        """Serve one agent on this process's stdin and stdout until the client leaves."""
        from mcp.server.stdio import stdio_server

        self.stdio_caller = await self.agents.sign_in(token, "stdio")
        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())


class BearerGate:
    """ASGI: every HTTP request must carry a bearer access token that signs in through
    the proxy (sign-in limits included); else 401. The caller rides in the scope."""

    def __init__(self, app: Any, agents: Agents) -> None:
        self.app = app
        self.agents = agents

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = ""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                kind, _, rest = value.decode("latin-1").partition(" ")
                if kind.lower() == "bearer":
                    token = rest.strip()
        client = scope.get("client")
        addr = str(client[0]) if client else "local"
        if not token:
            await _unauthorized(send, "an Authorization: Bearer <access token> header is required")
            return
        try:
            caller = await self.agents.sign_in(token, addr)
        except SignInFailed as exc:
            await _unauthorized(send, str(exc))
            return
        scope = dict(scope)
        scope[CALLER_KEY] = caller
        # The SDK serves a session only to the credential that opened it when the
        # request says who it is: another token naming the session id gets a 404
        # (it could otherwise end, or listen on, that session). The token's digest
        # stands for it, never the token.
        scope["user"] = AuthenticatedUser(
            AccessToken(
                token=caller.digest,
                client_id=caller.digest,
                scopes=[],
                subject=caller.identity.name,
            )
        )
        await self.app(scope, receive, send)
        if scope.get("method") == "DELETE":
            # The client ended its (handshake-era) session: so does its connection.
            for name, value in scope.get("headers") or ():
                if name == b"mcp-session-id":
                    await self.agents.end(caller, f"sid:{value.decode('latin-1')}")


async def _unauthorized(send: Any, message: str) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": f"Warden: {message}"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="warden"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _input_schema(name: str) -> Mapping[str, Any] | None:
    tool = TOOLS.get(name)
    return None if tool is None else tool["input_schema"]


def _result(payload: dict[str, Any]) -> types.CallToolResult:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=payload
    )


def _error(exc: ToolError) -> types.CallToolResult:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.sqlstate:
        error["sqlstate"] = exc.sqlstate
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=exc.message)],
        structured_content={"error": error},
        is_error=True,
    )


def stdio_token(config: Any, env: Mapping[str, str] | None = None) -> str:
    """The agent's token for stdio: ``WARDEN_MCP_TOKEN`` / ``WARDEN_MCP_TOKEN_FILE``,
    else the configuration's ``mcp_token``."""
    env = os.environ if env is None else env
    if env.get("WARDEN_MCP_TOKEN_FILE"):
        return Path(env["WARDEN_MCP_TOKEN_FILE"]).read_text().strip()
    return env.get("WARDEN_MCP_TOKEN") or config.mcp_token or ""
