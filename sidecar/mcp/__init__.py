"""The sidecar's MCP server: AI agents' front door, governed like any other client.

An agent reaches the datasource through the Model Context Protocol (the official
``mcp`` SDK, the sidecar's optional ``mcp`` extra): over streamable HTTP, as another
listener of the sidecar process (``mcp_listen``), or over stdio as a process of its
own (``python -m sidecar mcp --config FILE``). Enforcement has one source of truth,
the proxy: each MCP session signs in to the sidecar's own proxy, through a private
Unix socket, as the agent's identity with its access token, and every statement a
tool runs is decided, masked, held or refused there exactly as for psql. Nothing an
agent does can differ from what psql could do.

- ``agents``: who is calling (the bearer token's identity), the session's own proxied
  connection, the per-identity limits.
- ``tools``: the tools, their JSON Schemas, and what each runs.
- ``server``: the SDK server, the audit event of each call (``mcp.call``), the HTTP
  listener with its bearer check, and the stdio entry.

docs/mcp.md is the user's description.
"""
