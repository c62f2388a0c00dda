"""A stand-in for the control plane's ``POST /api/v1/sidecar/audit``, run as its own process.

It appends every event it receives, duplicates included, to a JSON-lines file
so a test can count arrivals. Usage: ``python receiver.py PORT OUTFILE``.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    out: Path

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        events = json.loads(body)["events"]
        with self.out.open("a") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in events)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    Handler.out = Path(sys.argv[2])
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
