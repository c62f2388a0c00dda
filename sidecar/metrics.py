"""Prometheus metrics for the sidecar, in the text exposition format.

Hand-written rather than ``prometheus_client``: the sidecar needs a handful of
counters, gauges and one histogram, and updating them sits on the per-statement
path, where a plain attribute increment is the cheapest thing available. The
endpoint is a tiny asyncio HTTP server that answers ``GET /metrics``.

It also carries the bundle source's verdict on whether new sessions may start
(``policy_usable``), which the proxy asks before accepting one: the runner wires
both to the same bundle source, so what /metrics shows is what the proxy does.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

# The ``reason`` labels of warden_sidecar_bundle_rejected_total (sidecar.bundle's
# REJECTION_REASONS; repeated so this module imports nothing of the sidecar but the
# native relay's optional histogram, below).
BUNDLE_REJECTION_REASONS = (
    "envelope",
    "signature",
    "engine",
    "datasource",
    "expiry",
    "expired",
    "replay",
    "clock",
    "refused",
)

# Decision latency buckets in seconds: the engine's cached path is tens of
# microseconds, a cold parse of a large statement is milliseconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


MAX_BOUNDS = 32  # the native histogram's (_relay.c)


class PythonHistogram:
    """Counts of observations by bucket (bucket i: at most ``bounds[i]``, more than
    the bound before; the last, above every bound), with their sum and number."""

    def __init__(self, bounds: Sequence[float]) -> None:
        items = tuple(bounds)  # copied first, as the native one does
        if any(isinstance(b, str | bytes | bytearray) for b in items):
            raise TypeError("bounds must be numbers")
        self._bounds = tuple(float(b) for b in items)
        if len(self._bounds) > MAX_BOUNDS:
            raise ValueError(f"at most {MAX_BOUNDS} bounds")
        if any(math.isnan(b) for b in self._bounds) or any(
            not b > a for a, b in itertools.pairwise(self._bounds)
        ):
            raise ValueError("bounds must be numbers that increase")
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._count += 1

    def snapshot(self) -> tuple[tuple[int, ...], float, int]:
        return tuple(self._counts), self._sum, self._count


# The native relay's histogram (sidecar/proxy/_relay.c) when it is built: the same
# interface, and the relay records a quick decision's latency in it without calling
# back into Python.
Histogram: Any = PythonHistogram
try:
    from sidecar.proxy import _relay  # type: ignore[attr-defined]
except ImportError:
    pass
else:
    Histogram = _relay.Histogram


class Metrics:
    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_active = 0
        self.statements: dict[str, int] = {"allow": 0, "review": 0, "block": 0}
        # Time to decide on one statement: ``decisions.observe(seconds)``.
        self.decisions = Histogram(LATENCY_BUCKETS)
        self.spool_depth: Callable[[], int] = lambda: 0
        self.spool_dropped: Callable[[], int] = lambda: 0
        # Statements given the verdict of a statement shape they share with one decided
        # before, without the engine, by where: {"policy": n, "relay": n} (the shapes
        # a session keeps for the native relay). Set by the runner.
        self.shape_decisions: Callable[[], dict[str, int]] = dict
        self.bundle_revision = ""
        self.bundle_loaded_at: float | None = None
        self.bundle_issued_at: float | None = None
        # Set by the runner from the bundle source: rejections by reason (a dict the
        # source updates in place), the active bundle's expiry (POSIX seconds, None
        # when it has none), the grace period past it, and
        # ``policy_usable() -> None | reason``: the proxy refuses a new session with
        # that reason (past expiry + grace).
        self.bundle_rejected: dict[str, int] = {}
        self.bundle_expires_at: Callable[[], float | None] = lambda: None
        self.bundle_grace_seconds = 0.0
        self.policy_usable: Callable[[], str | None] = lambda: None
        # Sign-ins that failed, and attempts refused while their pair backed off.
        self.logins: dict[str, int] = {"failed": 0, "throttled": 0}
        # CancelRequests received: for a key this process issued ("own", whether or
        # not it still holds it), or handed to the worker that issued it.
        self.cancel_requests: dict[str, int] = {"own": 0, "forwarded": 0}
        # The upstream role is privileged and allow_privileged_upstream is set.
        self.privileged_upstream = False
        # When each credential (the bundle's ``tok-<id>``, never the token) last
        # signed in, POSIX seconds: the heartbeat reports it as "last used".
        self.credentials_used: dict[str, float] = {}

    def credential_used(self, credential_id: str, at: float | None = None) -> None:
        self.credentials_used[credential_id] = time.time() if at is None else at

    def connection_opened(self) -> None:
        self.connections_total += 1
        self.connections_active += 1

    def connection_closed(self) -> None:
        self.connections_active -= 1

    def recorded(self, action: str) -> None:
        """A statement event was recorded (run, refused or held): the counters by action
        count what the audit trail holds, not decisions, since a prepared statement is
        decided once and may run many times."""
        self.statements[action] = self.statements.get(action, 0) + 1

    def bundle_loaded(self, revision: str, issued_at: float | None) -> None:
        self.bundle_revision = revision
        self.bundle_loaded_at = time.time()
        self.bundle_issued_at = issued_at

    def render(self) -> str:
        lines = [
            "# HELP warden_sidecar_connections_total Client sessions opened.",
            "# TYPE warden_sidecar_connections_total counter",
            f"warden_sidecar_connections_total {self.connections_total}",
            "# HELP warden_sidecar_connections_active Client sessions open now.",
            "# TYPE warden_sidecar_connections_active gauge",
            f"warden_sidecar_connections_active {self.connections_active}",
            "# HELP warden_sidecar_statements_total Statement events recorded, by action.",
            "# TYPE warden_sidecar_statements_total counter",
        ]
        lines += [
            f'warden_sidecar_statements_total{{action="{a}"}} {n}'
            for a, n in sorted(self.statements.items())
        ]
        lines += [
            "# HELP warden_sidecar_decision_seconds Time to decide on one statement.",
            "# TYPE warden_sidecar_decision_seconds histogram",
        ]
        counts, latency_sum, latency_count = self.decisions.snapshot()
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
            cumulative += count
            lines.append(f'warden_sidecar_decision_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'warden_sidecar_decision_seconds_bucket{{le="+Inf"}} {latency_count}')
        lines.append(f"warden_sidecar_decision_seconds_sum {latency_sum:.9f}")
        lines.append(f"warden_sidecar_decision_seconds_count {latency_count}")
        lines += [
            "# HELP warden_sidecar_shape_decisions_total Statements given the verdict of a "
            "shape decided before (the same text but for its literals), by where.",
            "# TYPE warden_sidecar_shape_decisions_total counter",
            *(
                f'warden_sidecar_shape_decisions_total{{path="{k}"}} {n}'
                for k, n in sorted(self.shape_decisions().items())
            ),
            "# HELP warden_sidecar_audit_spool_depth Audit events not yet acknowledged upstream.",
            "# TYPE warden_sidecar_audit_spool_depth gauge",
            f"warden_sidecar_audit_spool_depth {self.spool_depth()}",
            "# HELP warden_sidecar_audit_dropped_total Audit events dropped (spool full).",
            "# TYPE warden_sidecar_audit_dropped_total counter",
            f"warden_sidecar_audit_dropped_total {self.spool_dropped()}",
            "# HELP warden_sidecar_upstream_privileged 1: the upstream role is privileged and "
            "allow_privileged_upstream is set.",
            "# TYPE warden_sidecar_upstream_privileged gauge",
            f"warden_sidecar_upstream_privileged {int(self.privileged_upstream)}",
            "# HELP warden_sidecar_logins_total Refused sign-ins: a wrong identity or token, "
            "or an attempt while that identity and address back off.",
            "# TYPE warden_sidecar_logins_total counter",
            *(f'warden_sidecar_logins_total{{result="{k}"}} {n}' for k, n in self.logins.items()),
            "# HELP warden_sidecar_cancel_requests_total CancelRequests received, by route: "
            "own (a key this process issued, or none) or forwarded (to the worker that did).",
            "# TYPE warden_sidecar_cancel_requests_total counter",
            *(
                f'warden_sidecar_cancel_requests_total{{route="{k}"}} {n}'
                for k, n in self.cancel_requests.items()
            ),
            "# HELP warden_sidecar_bundle_info The bundle revision being enforced.",
            "# TYPE warden_sidecar_bundle_info gauge",
            f'warden_sidecar_bundle_info{{revision="{self.bundle_revision}"}} 1',
        ]
        lines += [
            "# HELP warden_sidecar_bundle_rejected_total Bundles rejected (the active one "
            "stays), by reason.",
            "# TYPE warden_sidecar_bundle_rejected_total counter",
        ]
        rejected = dict.fromkeys(BUNDLE_REJECTION_REASONS, 0) | self.bundle_rejected
        lines += [
            f'warden_sidecar_bundle_rejected_total{{reason="{reason}"}} {count}'
            for reason, count in rejected.items()
        ]
        now = time.time()
        if self.bundle_loaded_at is not None:
            age = now - (self.bundle_issued_at or self.bundle_loaded_at)
            lines += [
                "# HELP warden_sidecar_bundle_age_seconds Seconds since the bundle was issued.",
                "# TYPE warden_sidecar_bundle_age_seconds gauge",
                f"warden_sidecar_bundle_age_seconds {age:.3f}",
            ]
        expires = self.bundle_expires_at()
        if expires is not None:
            lines += [
                "# HELP warden_sidecar_bundle_expiry_timestamp_seconds When the active bundle "
                "expires (Unix time).",
                "# TYPE warden_sidecar_bundle_expiry_timestamp_seconds gauge",
                f"warden_sidecar_bundle_expiry_timestamp_seconds {expires:.3f}",
                "# HELP warden_sidecar_bundle_expires_in_seconds Seconds until the active bundle "
                "expires; negative once expired (enforced for the grace period, then new "
                "sessions are refused).",
                "# TYPE warden_sidecar_bundle_expires_in_seconds gauge",
                f"warden_sidecar_bundle_expires_in_seconds {expires - now:.3f}",
                "# HELP warden_sidecar_bundle_grace_seconds How long past expiry the bundle is "
                "still enforced.",
                "# TYPE warden_sidecar_bundle_grace_seconds gauge",
                f"warden_sidecar_bundle_grace_seconds {self.bundle_grace_seconds:.0f}",
            ]
        usable = self.bundle_loaded_at is not None and self.policy_usable() is None
        lines += [
            "# HELP warden_sidecar_policy_usable 1 while new sessions are accepted; 0 with no "
            "bundle, or past the bundle's expiry and grace period.",
            "# TYPE warden_sidecar_policy_usable gauge",
            f"warden_sidecar_policy_usable {int(usable)}",
        ]
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.AbstractServer:
    """Serve ``GET /metrics``; anything else is a 404."""

    async def render() -> str:
        return metrics.render()

    return await serve_exposition(render, host, port)


async def serve_exposition(
    render: Callable[[], Awaitable[str]], host: str, port: int
) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` with what ``render`` returns (the parent of several
    workers gathers theirs); anything else is a 404."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if path.split(b"?")[0] == b"/metrics":
            body = (await render()).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
        else:
            body = b"not found\n"
            head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)


class CredentialUseReport:
    """Which sign-ins a heartbeat still has to report: those newer than the last
    the control plane acknowledged, at most ``limit`` a heartbeat (the oldest wait
    for the next one), so a heartbeat stays small whatever the number of tokens."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self._sent: dict[str, float] = {}

    def pending(self, used: dict[str, float]) -> dict[str, float]:
        fresh = [(at, cid) for cid, at in used.items() if self._sent.get(cid) != at]
        fresh.sort(reverse=True)
        return {cid: round(at, 3) for at, cid in fresh[: self.limit]}

    def acknowledged(self, sent: dict[str, float], used: dict[str, float]) -> None:
        for cid in sent:
            if cid in used:
                self._sent[cid] = used[cid]
