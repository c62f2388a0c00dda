"""The MCP listener speaks TLS with the proxy's certificate (``tls_cert``/``tls_key``), and
only TLS: the bearer token never crosses the network in clear."""

from __future__ import annotations

import ipaddress
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from cryptography import x509
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation

from tests.pki import ca, issue, write_pem
from tests.sidecar.mcp.conftest import AGENT_TOKEN, await_mcp_port, mcp_bundle, run
from tests.sidecar.proxy.conftest import Sidecar, start_sidecar


@pytest.fixture(scope="module")
def tls(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Path]]:
    workdir = tmp_path_factory.mktemp("mcp-tls")
    authority = ca("MCP test CA")
    ca_file = write_pem(workdir, "ca", *authority)[0]
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert, key = write_pem(workdir, "server", *issue(authority, "127.0.0.1", sans=san))
    name = urlsplit(upstream).path.lstrip("/")
    proc = start_sidecar(
        workdir,
        upstream,
        mcp_bundle(name),
        mcp_listen="127.0.0.1:0",
        scan_enabled=False,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    await_mcp_port(proc, workdir)
    yield proc, ca_file
    proc.stop()


def test_the_mcp_listener_serves_tls_only(tls: tuple[Sidecar, Path]) -> None:
    sidecar, ca_file = tls
    port = sidecar.extra["mcp_port"]
    context = ssl.create_default_context(cafile=str(ca_file))

    async def tools() -> Any:
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {AGENT_TOKEN}"}, verify=context, timeout=30
        )
        transport = streamable_http_client(f"https://127.0.0.1:{port}/mcp", http_client=http)
        info = Implementation(name="tls test", version="1")
        async with http, Client(transport, client_info=info) as client:
            return [t.name for t in (await client.list_tools()).tools]

    assert "query" in run(tools())
    # Plain HTTP to the same port gets no answer: the handshake is all it speaks.
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/mcp", timeout=5)
