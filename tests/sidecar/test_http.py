"""sidecar.http: the one HTTP client every call to the control plane goes through."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.http import ControlPlane, HttpError, request
from tests.sidecar.proxy.cluster import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _with_server(handler: Handler, call: Callable[[str], Awaitable[Any]]) -> Any:
    async def scenario() -> Any:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            return await call(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")

    return asyncio.run(scenario())


def _answer(raw: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        if seen is not None:
            seen.append(head + body)
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


def test_posts_with_the_token_and_reads_a_chunked_answer() -> None:
    seen: list[bytes] = []
    reply = (
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )

    async def call(url: str) -> Any:
        return await ControlPlane(url + "/", "wsc_t").post_json("/x?y=1", b"[1]", timeout=5)

    response = _with_server(_answer(reply, seen), call)
    assert (response.status, response.json()) == (202, {"a": 1})
    assert response.expect() is response
    head = seen[0].decode()
    assert head.startswith("POST /x?y=1 HTTP/1.1\r\n")
    assert "Authorization: Bearer wsc_t\r\n" in head and "Content-Type: application/json" in head
    assert seen[0].endswith(b"\r\n\r\n[1]")


def test_no_token_no_authorization_header() -> None:
    seen: list[bytes] = []

    async def call(url: str) -> Any:
        return await ControlPlane(url, None).call("GET", "/", timeout=5)

    reply = b"HTTP/1.1 304 Not Modified\r\n\r\n"
    assert _with_server(_answer(reply, seen), call).body == b""
    assert b"authorization" not in seen[0].lower()


def test_an_unusable_status_is_an_error_that_names_it() -> None:
    reply = b'HTTP/1.1 400 Bad Request\r\nContent-Length: 17\r\n\r\n{"error":"major"}'

    async def call(url: str) -> Any:
        response = await request("POST", url, headers={}, body=b"{}", timeout=5)
        return response.expect(what="audit upload")

    with pytest.raises(HttpError, match="audit upload: HTTP 400") as caught:
        _with_server(_answer(reply), call)
    assert caught.value.status == 400 and "major" in str(caught.value)


def test_unreachable_hung_and_malformed_control_planes_are_http_errors() -> None:
    async def nothing(url: str) -> Any:
        return await request("GET", f"http://127.0.0.1:{free_port()}/", headers={}, timeout=5)

    with pytest.raises(HttpError) as unreachable:
        asyncio.run(nothing(""))
    assert unreachable.value.status is None

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns once the client gives up
        writer.close()

    async def get(url: str) -> Any:
        return await request("GET", url, headers={}, timeout=0.3)

    with pytest.raises(HttpError, match="timed out"):
        _with_server(hang, get)
    with pytest.raises(HttpError):
        _with_server(_answer(b"garbage\r\n\r\n"), get)
    with pytest.raises(HttpError, match="not an http"):
        asyncio.run(request("GET", "ftp://example.com/", headers={}, timeout=1))
