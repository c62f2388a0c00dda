"""The sidecar's bundle client: pull, verify, cache, and hand over signed policy bundles.

It long-polls the control plane (``GET /api/v1/sidecar/bundle?wait=N`` with
``If-None-Match``), checks the Ed25519 signature against public keys pinned in
the sidecar's own configuration and the content with the engine's
``load_bundle``, and only then activates the bundle and writes it to disk
atomically (temp file, fsync, rename, fsync of the directory). On start it
takes the last verified bundle from disk, re-verified, so a sidecar enforces
while the control plane is down. A sidecar that never had a valid bundle has
nothing to enforce and refuses to serve (``NoBundle``). A bundle that fails any
check, names another datasource than the sidecar's, or is older than the active
one (a replay), is rejected, counted by reason and reported; the active bundle
stays. Errors back off exponentially with full jitter.

Every bundle carries ``expires_at`` (signed). With nothing active, only an
unexpired bundle is taken from the network; the sidecar's own cache is honoured
until ``expires_at`` + the grace period, as if it had kept running. Past that
point ``policy_usable()`` gives the reason new sessions must be refused (live
ones continue) until a newer bundle arrives.

It satisfies the runner's ``BundleSource`` seam: ``current()`` (the inner
bundle dict), ``subscribe(callback)`` and ``watch()``; ``active()`` also gives
the parsed ``Bundle`` and its revision, ``changed()`` awaits the next one.
No Django here: requests go through the sidecar's one HTTP client, ``sidecar.http``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import json
import logging
import os
import random
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sidecar.engine import Bundle, BundleError, canonical_bytes, load_bundle
from sidecar.http import ControlPlane, HttpError
from sidecar.http import request as http_request  # noqa: F401 - the name callers import

log = logging.getLogger("warden.sidecar.bundle")

BUNDLE_PATH = "/api/v1/sidecar/bundle"
HEARTBEAT_PATH = "/api/v1/sidecar/heartbeat"
CACHE_FILE = "bundle.json"
DEFAULT_GRACE_SECONDS = 72 * 3600.0
# How far in the future a bundle's issued_at may be. Bundles are ordered by it, so
# one signed by a control plane whose clock runs ahead would be kept over every
# correct one after it (they would look like replays) and would not expire in time.
MAX_CLOCK_SKEW_SECONDS = 300.0

# Why a bundle was rejected: the ``reason`` label of the rejection counter.
REJECTION_REASONS = (
    "envelope",  # not JSON, not {bundle, signature}
    "signature",  # unsupported algorithm, key not pinned, signature does not match
    "engine",  # signed, but the engine's load_bundle refuses it
    "datasource",  # signed, but for another datasource than this sidecar's
    "expiry",  # no expires_at, or one not after issued_at
    "expired",  # past its expiry with nothing active (past the grace period for the cache)
    "replay",  # issued before the active bundle
    "clock",  # issued later than this host's clock allows (the signer's clock is ahead)
    "refused",  # a subscriber (the proxy's policy) could not use it
)


class NoBundle(Exception):
    """No verified bundle has ever been active: the sidecar must not serve (fail closed)."""


class BundleRejected(Exception):
    """A bundle failed verification; the message says which check, ``reason`` its
    label (one of ``REJECTION_REASONS``)."""

    def __init__(self, message: str, reason: str = "envelope") -> None:
        super().__init__(message)
        self.reason = reason


# --- verification ----------------------------------------------------------------------


def parse_public_keys(specs: str | list[str]) -> dict[str, Ed25519PublicKey]:
    """``"<key id>:<base64>"`` items (a list or a comma-separated string) -> pinned keys."""
    items = specs.split(",") if isinstance(specs, str) else specs
    keys: dict[str, Ed25519PublicKey] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        key_id, sep, b64 = item.partition(":")
        if not sep or not key_id:
            raise ValueError("a pinned public key must look like '<key id>:<base64>'")
        try:
            keys[key_id] = Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"pinned public key {key_id!r} is not a 32-byte base64 key") from exc
    if not keys:
        raise ValueError("at least one pinned public key is required")
    return keys


def _parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _timestamp(value: str | None) -> float | None:
    return None if value is None else _parse_time(value).timestamp()


def expiry_timestamp(document: dict[str, Any]) -> float | None:
    """A bundle's ``expires_at`` as POSIX seconds (None without one); ValueError if malformed."""
    value = document.get("expires_at")
    return None if value is None else _parse_time(str(value)).timestamp()


def expiry_refusal(
    expires_at: str | None, *, grace_seconds: float, now: float | None = None, what: str = ""
) -> str | None:
    """Why new sessions must be refused under a bundle expiring at ``expires_at``
    (None while it is usable: before ``expires_at`` + the grace period, or no expiry)."""
    expires = _timestamp(expires_at)
    if expires is None or (time.time() if now is None else now) < expires + grace_seconds:
        return None
    return (
        f"Warden's policy expired at {expires_at} and "
        f"{what or 'the control plane has been unreachable'}; new sessions are refused"
    )


@dataclass(frozen=True)
class Verified:
    document: dict[str, Any]  # the inner bundle
    bundle: Bundle
    revision: str
    issued_at: str
    key_id: str
    raw: bytes  # the envelope exactly as received, for the disk cache
    expires_at: str | None = None

    @property
    def issued_ts(self) -> float:
        return _parse_time(self.issued_at).timestamp()

    @property
    def expires_ts(self) -> float | None:
        return _timestamp(self.expires_at)


def envelope_verify(
    raw: bytes,
    keys: dict[str, Ed25519PublicKey],
    *,
    datasource: str | None = None,
    require_expiry: bool = True,
) -> Verified:
    """Signature first, then the engine's own checks, the datasource (when given) and
    the expiry; raises ``BundleRejected``, and nothing else, whatever the bytes: a
    reply nested too deep for the parser, or a signed date that does not exist, is a
    rejected bundle, not the end of the task that polls (a review's finding: one
    such reply stopped every later update). Whether the bundle is still fresh enough
    depends on what is active: ``BundleClient`` decides that."""
    try:
        return _envelope_verify(raw, keys, datasource, require_expiry)
    except BundleRejected:
        raise
    except RecursionError:
        raise BundleRejected("nested too deep to be a bundle") from None
    except Exception as exc:
        raise BundleRejected(f"malformed ({type(exc).__name__}: {exc})") from exc


def _envelope_verify(
    raw: bytes,
    keys: dict[str, Ed25519PublicKey],
    datasource: str | None,
    require_expiry: bool,
) -> Verified:
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleRejected(f"not JSON: {exc}") from exc
    if not isinstance(envelope, dict) or set(envelope) != {"bundle", "signature"}:
        raise BundleRejected("not a signed envelope {bundle, signature}")
    document, signature = envelope["bundle"], envelope["signature"]
    if not isinstance(document, dict) or not isinstance(signature, dict):
        raise BundleRejected("not a signed envelope {bundle, signature}")
    if signature.get("alg") != "ed25519":
        raise BundleRejected(
            f"unsupported signature algorithm {signature.get('alg')!r}", "signature"
        )
    key_id = signature.get("key_id")
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise BundleRejected(f"signed by key {key_id!r}, which is not pinned", "signature")
    try:
        key.verify(
            base64.b64decode(str(signature.get("value")), validate=True), canonical_bytes(document)
        )
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise BundleRejected("the signature does not match the bundle", "signature") from exc
    try:
        bundle = load_bundle(document)
    except BundleError as exc:
        raise BundleRejected(f"signed, but refused by the engine: {exc}", "engine") from exc
    name = document["datasource"]["name"]
    if datasource is not None and name != datasource:
        raise BundleRejected(
            f"the bundle is for datasource {name!r}, not {datasource!r}", "datasource"
        )
    issued_at = _parse_time(str(document["issued_at"]))  # a date that exists
    expires_at = document.get("expires_at")
    if expires_at is None:
        if require_expiry:
            raise BundleRejected(
                "the bundle carries no expires_at (signed by an older control plane?)", "expiry"
            )
    elif _parse_time(expires_at) <= issued_at:
        raise BundleRejected(f"expires_at {expires_at} is not after issued_at", "expiry")
    return Verified(
        document,
        bundle,
        document["revision"],
        document["issued_at"],
        str(key_id),
        raw,
        expires_at,
    )


# --- the client --------------------------------------------------------------------------


def _utcnow() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass
class _Status:
    source: str = ""  # "disk" or "network"
    activated_at: str | None = None
    last_success_at: str | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    rejected: int = 0
    last_rejection: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BundleClient:
    """Keeps one verified bundle active and current; see the module docstring."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        public_keys: dict[str, Ed25519PublicKey],
        state_dir: str | Path,
        datasource: str | None = None,
        wait: int = 55,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        rejections: dict[str, int] | None = None,
    ) -> None:
        # Bundles, heartbeats and scan reports: one client, the sidecar's token.
        self.control_plane = ControlPlane(url, token, ssl_context=ssl_context)
        self.keys = public_keys
        self.state_dir = Path(state_dir)
        self.datasource = datasource
        self.wait = max(0, min(wait, 60))
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.grace_seconds = grace_seconds
        # Rejections by reason (shared with the metrics when the runner passes its own).
        self.rejections = {} if rejections is None else rejections
        self._active: Verified | None = None
        self._rejected_cache: bytes | None = None
        self._refusing = False
        self._status = _Status()
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._changed: asyncio.Event | None = None
        # The last heartbeat reply (it may carry ``scan_requested``).
        self.last_heartbeat_reply: dict[str, Any] = {}

    # -- what the proxy uses --

    def active(self) -> Verified:
        if self._active is None:
            raise NoBundle("no verified policy bundle yet; refusing to serve")
        return self._active

    def current(self) -> dict[str, Any]:
        """The active inner bundle (``BundleSource`` seam); raises ``NoBundle``."""
        return self.active().document

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """``callback(document)`` before each activation; raising rejects the bundle."""
        self._callbacks.append(callback)

    async def changed(self, after: str | None = None) -> Verified:
        """Wait until a bundle other than revision ``after`` is active."""
        while self._active is None or self._active.revision == after:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()
        return self._active

    def policy_usable(self, now: float | None = None) -> str | None:
        """None while new sessions may be accepted; else the reason to refuse them.

        The active bundle is enforced past its ``expires_at`` for the grace period
        (the control plane may be down); after that, new sessions are refused until
        a newer bundle arrives. Sessions already open are not affected.
        """
        active = self._active
        if active is None:
            return "Warden has no verified policy bundle; new sessions are refused"
        refusal = expiry_refusal(active.expires_at, grace_seconds=self.grace_seconds, now=now)
        if (refusal is not None) != self._refusing:
            self._refusing = refusal is not None
            if refusal is not None:
                log.error("%s (grace period of %.0f s over)", refusal, self.grace_seconds)
        return refusal

    def status(self) -> dict[str, Any]:
        """What a heartbeat reports about bundles (no secrets)."""
        active = self._active
        now = time.time()
        expires = active.expires_ts if active else None
        state = "active" if active else "no_bundle"
        if expires is not None and now >= expires:
            state = "expired" if now < expires + self.grace_seconds else "refusing"
        return {
            "state": state,
            "revision": active.revision if active else "",
            "issued_at": active.issued_at if active else None,
            "expires_at": active.expires_at if active else None,
            "age_seconds": round(now - active.issued_ts, 3) if active else None,
            "expires_in_seconds": round(expires - now, 3) if expires is not None else None,
            "grace_seconds": self.grace_seconds,
            "key_id": active.key_id if active else None,
            "source": self._status.source,
            "activated_at": self._status.activated_at,
            "last_success_at": self._status.last_success_at,
            "consecutive_failures": self._status.consecutive_failures,
            "last_error": self._status.last_error,
            "rejected": self._status.rejected,
            "rejections": dict(self.rejections),
            "last_rejection": self._status.last_rejection,
        }

    # -- activation and the disk cache --

    def _activate(self, verified: Verified, source: str) -> None:
        current = self._active
        if current is None:
            # Nothing enforced yet: only an unexpired bundle from the network. The
            # sidecar's own cache is honoured up to the grace period, as it would
            # have been had the sidecar kept running.
            expires = verified.expires_ts
            grace = self.grace_seconds if source == "disk" else 0.0
            if expires is not None and time.time() >= expires + grace:
                beyond = " and its grace period" if grace else ""
                raise BundleRejected(
                    f"expired at {verified.expires_at}{beyond}; refusing to start from it",
                    "expired",
                )
        if verified.issued_ts > time.time() + MAX_CLOCK_SKEW_SECONDS:
            raise BundleRejected(
                f"issued at {verified.issued_at}, later than this host's clock allows: the "
                "control plane's clock (or this host's) is wrong",
                "clock",
            )
        if current is not None and verified.issued_ts < current.issued_ts:
            raise BundleRejected(
                f"older than the active bundle ({verified.issued_at} < {current.issued_at}): "
                "a replay would undo newer policy",
                "replay",
            )
        for callback in self._callbacks:
            try:
                callback(verified.document)
            except Exception as exc:
                raise BundleRejected(f"refused by the sidecar: {exc}", "refused") from exc
        self._active = verified
        self._status.source = source
        self._status.activated_at = _utcnow()
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        log.info("bundle %s active (from %s)", verified.revision[:12], source)

    def _reject(self, exc: BundleRejected, prefix: str = "") -> None:
        reason = f"{prefix}{exc}"
        self.rejections[exc.reason] = self.rejections.get(exc.reason, 0) + 1
        self._status.rejected += 1
        self._status.last_rejection = {"at": _utcnow(), "reason": reason, "code": exc.reason}
        active = self._active
        log.error(
            "bundle rejected (%s), keeping %s: %s",
            exc.reason,
            active.revision[:12] if active else "none",
            reason,
        )

    def _write_cache(self, raw: bytes) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.state_dir / CACHE_FILE
        tmp = self.state_dir / f".{CACHE_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(target)
        # The rename is durable only once the directory entry is.
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_from_disk(self) -> bool:
        """Activate the cached bundle when it still verifies; True when one is active."""
        path = self.state_dir / CACHE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return False
        if raw == self._rejected_cache:
            return False  # rejected (and counted) already; start() retries every few seconds
        try:
            self._activate(envelope_verify(raw, self.keys, datasource=self.datasource), "disk")
        except BundleRejected as exc:
            # A cache that no longer verifies (key rotated away, engine upgraded,
            # expired past the grace period) is not fatal: the network may still
            # bring a good bundle.
            self._rejected_cache = raw
            self._reject(exc, "cached bundle: ")
            return False
        return True

    # -- talking to the control plane --

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._active is not None:
            headers["If-None-Match"] = f'"{self._active.revision}"'
        return headers

    async def poll_once(self, *, wait: int = 0) -> str:
        """One (long-)poll: "activated", "unchanged", "rejected" or "error"."""
        path = f"{BUNDLE_PATH}?wait={wait}" if wait else BUNDLE_PATH
        try:
            response = await self.control_plane.call(
                "GET", path, headers=self._headers(), timeout=wait + 15
            )
        except HttpError as exc:
            return self._failed(str(exc))
        if response.status == 304:
            self._succeeded()
            return "unchanged"
        if response.status != 200:
            return self._failed(f"HTTP {response.status}: {response.body[:200]!r}")
        try:
            verified = envelope_verify(response.body, self.keys, datasource=self.datasource)
            if self._active is not None and verified.revision == self._active.revision:
                self._succeeded()
                return "unchanged"
            self._activate(verified, "network")
        except BundleRejected as exc:
            self._reject(exc)
            self._status.consecutive_failures += 1
            return "rejected"
        try:
            self._write_cache(verified.raw)
        except OSError as exc:
            # Still enforce the newer policy; the next start may use an older cache.
            log.error("could not write the bundle cache: %s", exc)
            self._status.last_error = f"cache write failed: {exc}"
        self._succeeded()
        return "activated"

    def _succeeded(self) -> None:
        self._status.last_success_at = _utcnow()
        self._status.consecutive_failures = 0
        self._status.last_error = None

    def _failed(self, message: str) -> str:
        self._status.consecutive_failures += 1
        self._status.last_error = message
        log.warning(
            "bundle poll failed (%d in a row): %s", self._status.consecutive_failures, message
        )
        return "error"

    def backoff_delay(self) -> float:
        """Full jitter: uniform in [0, min(max, min * 2^(failures-1))], at least min/2."""
        failures = max(1, self._status.consecutive_failures)
        ceiling = min(self.max_backoff, self.min_backoff * 2 ** (failures - 1))
        return max(self.min_backoff / 2, random.uniform(0, ceiling))  # noqa: S311 - jitter

    async def watch(self) -> None:
        """Poll forever: long-polls while healthy, backs off with jitter on failures.
        Nothing a poll raises ends it: the sidecar would keep its bundle, revocations
        would no longer arrive, and all would look well until it expired."""
        while True:
            started = time.monotonic()
            try:
                outcome = await self.poll_once(wait=self.wait if self._active else 0)
            except Exception as exc:
                log.exception("bundle poll failed unexpectedly")
                outcome = self._failed(f"unexpected {type(exc).__name__}")
            if outcome in {"error", "rejected"}:
                await asyncio.sleep(self.backoff_delay())
            elif outcome == "unchanged" and time.monotonic() - started < 1.0 and self.wait:
                # A server that ignores wait must not turn this into a busy loop.
                await asyncio.sleep(self.min_backoff)

    async def start(self, *, timeout: float = 10.0) -> Verified:
        """Disk first, then the network until ``timeout``; raises ``NoBundle`` if neither."""
        if not self.load_from_disk():
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await self.poll_once() == "activated":
                    break
                await asyncio.sleep(
                    min(self.backoff_delay(), max(0.0, deadline - time.monotonic()))
                )
        return self.active()

    async def post_json(self, path: str, body: dict[str, Any], *, timeout: float = 30) -> int:
        """POST ``body`` to the control plane with the sidecar's token; the HTTP status."""
        response = await self.control_plane.post_json(
            path, json.dumps(body).encode(), timeout=timeout
        )
        return response.status

    async def heartbeat(
        self,
        *,
        version: str,
        counters: dict[str, int],
        workers: list[dict[str, int]] | None = None,
        logins: dict[str, float] | None = None,
    ) -> str | None:
        """Report status; returns the control plane's current revision (None if unknown).

        ``workers``: each worker process's own counters when several serve, sent as
        ``status.workers`` (``counters`` then holds their totals). ``logins``: when
        credentials (the bundle's ids, never a token) last signed in, POSIX seconds."""
        status = self.status()
        if workers is not None:
            status = {**status, "workers": workers}
        payload: dict[str, Any] = {
            "revision": self._active.revision if self._active else "",
            "version": version,
            "counters": counters,
            "status": status,
        }
        if logins:
            payload["logins"] = logins
        body = json.dumps(payload).encode()
        response = await self.control_plane.post_json(HEARTBEAT_PATH, body, timeout=10)
        if response.status != 200:
            raise HttpError(f"heartbeat: HTTP {response.status}", response.status)
        reply = response.json()
        self.last_heartbeat_reply = reply if isinstance(reply, dict) else {}
        current = self.last_heartbeat_reply.get("current_revision")
        return current if isinstance(current, str) else None


# --- standalone use: ``python -m sidecar.bundle`` ------------------------------------------


def client_from_env(env: dict[str, str] | None = None) -> BundleClient:
    """Build a client from ``WARDEN_SIDECAR_CONTROL_PLANE_URL``, ``..._TOKEN`` (or
    ``..._TOKEN_FILE``), ``..._BUNDLE_PUBLIC_KEYS``, ``..._STATE_DIR`` and
    ``..._DATASOURCE`` (optionally ``..._BUNDLE_GRACE_HOURS``)."""
    env = dict(os.environ) if env is None else env

    def get(name: str) -> str:
        key = f"WARDEN_SIDECAR_{name}"
        if env.get(f"{key}_FILE"):
            return Path(env[f"{key}_FILE"]).read_text().strip()
        value = env.get(key, "")
        if not value:
            raise SystemExit(f"{key} must be set")
        return value

    return BundleClient(
        url=get("CONTROL_PLANE_URL"),
        token=get("TOKEN"),
        public_keys=parse_public_keys(get("BUNDLE_PUBLIC_KEYS")),
        state_dir=get("STATE_DIR"),
        datasource=get("DATASOURCE"),
        wait=int(env.get("WARDEN_SIDECAR_BUNDLE_WAIT", "55")),
        max_backoff=float(env.get("WARDEN_SIDECAR_BUNDLE_MAX_BACKOFF", "30")),
        grace_seconds=3600 * float(env.get("WARDEN_SIDECAR_BUNDLE_GRACE_HOURS", "72")),
    )


async def _main(args: argparse.Namespace) -> int:
    from sidecar.engine import Engine

    client = client_from_env()
    probes = [p.split(":", 1) for p in args.probe]

    def emit(event: str, **extra: Any) -> None:
        print(json.dumps({"event": event, "t": time.time(), **extra}), flush=True)

    def report(verified: Verified) -> None:
        engine = Engine(verified.bundle)
        decisions = [
            {"identity": who, "action": d.action, "upstream_sql": d.upstream_sql}
            for who, sql in probes
            for d in [engine.decide(identity=who, sql=sql)]
        ]
        credentials = {
            i["name"]: [c["id"] for c in i["credentials"]] for i in verified.document["identities"]
        }
        emit(
            "active",
            revision=verified.revision,
            source=client.status()["source"],
            probes=decisions,
            credentials=credentials,
        )

    try:
        report(await client.start(timeout=args.start_timeout))
    except NoBundle as exc:
        emit("refused", reason=str(exc), status=client.status())
        return 3
    watcher = asyncio.create_task(client.watch())
    rejected = client.status()["rejected"]
    revision = client.active().revision
    while True:
        changed = asyncio.create_task(client.changed(after=revision))
        done, _ = await asyncio.wait({changed, watcher}, timeout=0.2)
        if changed in done:
            verified = changed.result()
            revision = verified.revision
            report(verified)
        else:
            changed.cancel()
        if client.status()["rejected"] != rejected:
            rejected = client.status()["rejected"]
            emit("rejected", status=client.status())
        if watcher in done:
            return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.bundle",
        description="Run only the bundle client and print each activation as a JSON line.",
    )
    parser.add_argument("--probe", action="append", default=[], help="IDENTITY:SQL to decide")
    parser.add_argument("--start-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
