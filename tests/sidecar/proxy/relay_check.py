"""Drive two real Sessions, one on the native relay and one on Python alone, with the
same bytes, and report every difference in what they forward and record.

The Sessions are real (``EnginePolicy`` over a bundle, ``AuditSpool`` in a
temporary directory, ``Metrics``); only the sockets are stand-ins that keep
what would have been written. Used by ``tests/sidecar/proxy/test_native_relay.py``
and by ``make fuzz`` (``tests/fuzz_relay.py``), which runs it against an
AddressSanitizer build with malformed and fragmented messages.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sidecar.metrics import Metrics
from sidecar.proxy import session as sessions
from sidecar.proxy.policy import identities_from_bundle
from sidecar.shipper import AuditSpool

# What differs between two runs of the same exchange, whatever the relay.
_VOLATILE = ("id", "ts", "duration_ms")


class Recorder:
    """Stands in for an asyncio transport: keeps what was written."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Source:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def current(self) -> dict[str, Any]:
        return self.document

    def subscribe(self, callback: Any) -> None:
        pass


class Side:
    """One Session and what it forwarded and recorded: on ``Recorder``s, or on real
    ``transports`` (client, upstream) when given."""

    def __init__(
        self,
        document: dict[str, Any],
        identity: str,
        *,
        native: bool,
        policy: Any = None,
        durability: str = "batched",
        transports: tuple[Any, Any] | None = None,
        spool: dict[str, Any] | None = None,
    ) -> None:
        from sidecar.runner import EnginePolicy  # the runner imports the engine

        self.tmp = Path(tempfile.mkdtemp(prefix="warden-relay-"))
        # The native relay's side writes into the spool's native lines, Python's into
        # the Python ones: the comparison covers both ways of writing an event.
        options = {"max_bytes": 1024**3, **(spool or {})}
        self.spool = AuditSpool(self.tmp / "spool", durability=durability, native=native, **options)
        self.client: Any
        self.upstream: Any
        self.client, self.upstream = transports or (Recorder(), Recorder())
        self.raised = ""
        metrics = Metrics()
        self.session = sessions.Session(
            client=self.client,
            upstream=self.upstream,
            identity=identities_from_bundle(document)[identity],
            policy=policy or EnginePolicy(Source(document), metrics),
            audit=self.spool,
            metrics=metrics,
            parameters={"client_encoding": "UTF8", "standard_conforming_strings": "on"},
            status=b"I",
            base_event={"identity": identity, "datasource": "relay-check"},
            max_message=1024 * 1024,
            on_close=lambda _s: None,
            native_relay=native,
        )

    def feed(self, direction: str, data: bytes) -> None:
        if self.session.closed or self.raised:
            return
        entry = self.session.client_entry if direction == "client" else self.session.upstream_entry
        try:
            entry(data)
        except Exception as exc:  # malformed server data: both relays must fail alike
            self.raised = f"{type(exc).__name__}: {exc}"

    def normalised(self, data: bytearray) -> bytes:
        """``data`` with the session's random refusal nonce replaced: each Session has
        its own, so the two sides' refusals differ there and only there."""
        nonce = self.session._refusal_name.removeprefix(b"warden_refusal_")
        return bytes(data).replace(nonce, b"<nonce>")

    def events(self) -> list[dict[str, Any]]:
        self.spool.flush()
        self.spool.close()
        out = []
        for path in sorted(self.spool.directory.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                event = json.loads(line)
                for key in _VOLATILE:
                    event.pop(key, None)
                out.append(event)
        return out


def pair(
    document: dict[str, Any],
    identity: str,
    *,
    policy: Any = None,
    durability: str = "batched",
    prepare: Callable[[Side], None] = lambda side: None,
) -> tuple[Side, Side]:
    """A native and a Python session over the same bundle, each set up by ``prepare``.
    With ``policy`` both share it, as a sidecar's sessions do."""
    if not sessions.NATIVE_RELAY_AVAILABLE:
        raise RuntimeError("the native relay is not built: python -m sidecar.proxy.build_relay")
    sides = []
    for native in (True, False):
        side = Side(document, identity, native=native, policy=policy, durability=durability)
        prepare(side)
        sides.append(side)
    return sides[0], sides[1]


def compared(native: Side, python: Side) -> list[str]:
    """What differs between what the two sessions forwarded, kept pending, raised
    and recorded, as messages (it closes their spools)."""
    found = []
    for name in ("client", "upstream"):
        a, b = getattr(native, name), getattr(python, name)
        if native.normalised(a.data) != python.normalised(b.data):
            found.append(f"bytes to the {name} differ: {bytes(a.data)!r} != {bytes(b.data)!r}")
        if a.closed != b.closed:
            found.append(f"{name} closed: native {a.closed}, python {b.closed}")
    if native.raised != python.raised:
        found.append(f"raised: native {native.raised!r}, python {python.raised!r}")
    pending = (len(native.session.pending), len(python.session.pending))
    if pending[0] != pending[1]:
        found.append(f"pending: native {pending[0]}, python {pending[1]}")
    events = (native.events(), python.events())
    if events[0] != events[1]:
        found.append(f"events differ:\n{events[0]}\n{events[1]}")
    return found


def differences(
    document: dict[str, Any],
    identity: str,
    exchange: Iterable[tuple[str, bytes]],
    chunks: Callable[[bytes], Iterable[bytes]] = lambda data: [data],
    policy: Any = None,
) -> list[str]:
    """Feed ``exchange`` (direction, bytes) to a native and a Python session, each
    piece split by ``chunks``; what differs between the two, as messages."""
    native, python = pair(document, identity, policy=policy)
    for direction, data in exchange:
        for piece in chunks(data):
            native.feed(direction, piece)
            python.feed(direction, piece)
    return compared(native, python)
