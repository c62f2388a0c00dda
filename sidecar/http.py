"""The sidecar's one HTTP client: every call to the control plane goes through here.

Bundle long-polls, heartbeats, scan reports, approval requests and audit
batches all use ``ControlPlane`` (a base URL and the sidecar's bearer token)
over ``request``, a small HTTP/1.1 client on asyncio streams: one request per
connection (``Connection: close``), on the event loop, with no thread and no
dependency. It verifies TLS as ``ssl.create_default_context()`` does (the
system's CAs, the host name) unless the caller passes its own context, bounds
the answer (``MAX_BODY_BYTES``, ``MAX_HEADER_BYTES``) and the whole exchange
(``timeout``), and turns every failure to get an answer into ``HttpError``.
An answer with any status is returned: what a 304, a 413 or a 5xx means is the
caller's business (``ControlPlane.post_json`` and ``expect`` help there).

It imports neither Django nor the engine, so the proxy package may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 64 * 1024 * 1024  # a bundle is the largest answer
MAX_HEADER_BYTES = 64 * 1024
INVALID_URL = "not an http(s) URL"


def url_for_display(url: str) -> str:
    """``url`` as messages and logs may show it: without the user and password it may
    carry (the token is the sidecar's credential, but a URL can hold one all the same).
    A URL that does not parse cleanly is not shown at all: where a password with a ``/``
    or ``@`` in it ends is exactly what the parser got wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return f"({INVALID_URL})"
    if "@" in parts.path + parts.query + parts.fragment:
        return f"({INVALID_URL})"
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()


class HttpError(Exception):
    """The control plane could not be reached or answered something unusable.

    ``status`` is the HTTP status when there was an answer (``expect`` raises with
    it for a status the caller cannot use), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def expect(self, *statuses: int, what: str = "") -> HttpResponse:
        """This response when its status is one of ``statuses`` (any 2xx when none are
        given); else ``HttpError`` naming the status and the start of the body."""
        if (self.status in statuses) if statuses else (200 <= self.status < 300):
            return self
        prefix = f"{what}: " if what else ""
        raise HttpError(f"{prefix}HTTP {self.status}: {self.body[:200]!r}", self.status)

    def json(self) -> Any:
        """The body parsed as JSON; ValueError if it is not."""
        return json.loads(self.body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpError("response too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes | None = None,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """One request on its own connection (``Connection: close``); raises ``HttpError``."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # its text quotes the URL, password included
        raise HttpError(f"{INVALID_URL}: {url_for_display(url)}") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise HttpError(f"{INVALID_URL}: {url_for_display(url)}")
    # Host names the server only: never the URL's user:password.
    host_header = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    context = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None

    async def exchange() -> HttpResponse:
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
        try:
            lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            if body is not None:
                lines.append(f"Content-Length: {len(body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEADER_BYTES:
                raise HttpError("response headers too large")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            version, _, rest = status_line.partition(" ")
            if not version.startswith("HTTP/") or not rest[:3].isdigit():
                # (An IndexError here once escaped callers that catch HttpError.)
                raise HttpError(f"not an HTTP answer: {status_line[:60]!r}")
            status = int(rest[:3])
            got: dict[str, str] = {}
            for line in header_lines:
                if ":" in line:
                    name, _, value = line.partition(":")
                    got[name.strip().lower()] = value.strip()
            if status in (204, 304) or method == "HEAD":
                data = b""
            elif got.get("transfer-encoding", "").lower() == "chunked":
                data = await _read_chunked(reader)
            elif "content-length" in got:
                length = int(got["content-length"])
                if length > MAX_BODY_BYTES:
                    raise HttpError("response too large")
                data = await reader.readexactly(length)
            else:
                data = await reader.read(MAX_BODY_BYTES + 1)
                if len(data) > MAX_BODY_BYTES:
                    raise HttpError("response too large")
            return HttpResponse(status, got, data)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except TimeoutError as exc:  # first: since Python 3.11 it is also an OSError
        raise HttpError(f"timed out after {timeout:g} s") from exc
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise HttpError(f"{type(exc).__name__}: {exc}") from exc


class ControlPlane:
    """Requests to one base URL of the control plane, with the sidecar's token.

    ``url`` is the control plane's root (paths are appended) or, for an endpoint
    configured on its own (``audit_url``, ``approvals_url``), that endpoint. No
    token: no Authorization header (the control plane then answers 401)."""

    def __init__(
        self, url: str, token: str | None, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.ssl_context = ssl_context

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        if extra:
            headers.update(extra)
        return headers

    async def call(
        self,
        method: str,
        path: str = "",
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,
    ) -> HttpResponse:
        """``method`` on ``url + path`` with the token and ``headers``; raises ``HttpError``."""
        return await request(
            method,
            self.url + path,
            headers=self.headers(headers),
            body=body,
            timeout=timeout,
            ssl_context=self.ssl_context,
        )

    async def post_json(self, path: str, body: bytes, *, timeout: float) -> HttpResponse:
        """POST ``body``, already encoded JSON; the answer, whatever its status."""
        return await self.call(
            "POST", path, body=body, headers={"Content-Type": "application/json"}, timeout=timeout
        )
