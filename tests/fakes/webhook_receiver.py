"""A webhook receiver (Slack-compatible: POST {"text": ...}) on a real local socket.

The receiver is outside Warden, so it may be a stand-in: a threaded HTTP server
on 127.0.0.1 (by default) that records every request it gets (method, path,
headers, JSON body) and answers each with ``answer`` (status and headers), e.g.
``(302, {"Location": "/elsewhere"})`` to see whether a redirect is followed.
``tls=(certfile, keyfile)`` serves https and records the SNI name the client sent.

    with WebhookReceiver() as hook:
        ... deliver to hook.url("/hook") ...
        assert hook.requests[0].body == {"text": ...}
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    answer: tuple[int, dict[str, str]] = (200, {})
    tls: tuple[str, str] | None = None
    requests: list[Received] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                receiver.requests.append(
                    Received(self.command, self.path, dict(self.headers.items()), body)
                )
                status, headers = receiver.answer
                self.send_response(status)
                for name, value in {"Content-Length": "0", **headers}.items():
                    self.send_header(name, value)
                self.end_headers()

            do_POST = do_GET = _record  # http.server calls do_<METHOD>

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)

            def remember_sni(sock: Any, name: str | None, ctx: Any) -> None:
                self.sni.append(name)

            context.sni_callback = remember_sni
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "/hook", *, host: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"
