"""Run the sidecar: configuration → bundle → engine → proxy, plus audit and metrics.

``python -m sidecar.runner --config sidecar.toml`` (or ``python -m sidecar run``).
The bundle comes from a ``BundleSource``: normally ``sidecar.bundle``'s client
of the control plane (signed, long-polled, cached on disk), or, as an explicit
offline mode, a local JSON file watched for changes. A bundle that fails to
load, names another datasource than the configured one, or (from the control
plane) is older than the active one never replaces the one being enforced, and
with no usable bundle at all the sidecar does not listen (fail closed). Past the
bundle's ``expires_at`` plus ``bundle_grace_hours`` the proxy refuses new
sessions (``Metrics.policy_usable``). With a control plane it also ships the
audit spool to ``/api/v1/sidecar/audit`` and sends heartbeats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.bundle import (
    BundleClient,
    BundleRejected,
    NoBundle,
    expiry_refusal,
    expiry_timestamp,
    parse_public_keys,
)
from sidecar.config import ConfigError, SidecarConfig, load_config
from sidecar.engine import BundleError
from sidecar.engine import values as engine_values
from sidecar.engine.shape import (
    Shape,
    confirmed,
    fits_number_slot,
    number_slot,
    pieces,
    shape_of,
)
from sidecar.estimates import PlanEstimator
from sidecar.http import ControlPlane, HttpError
from sidecar.metrics import CredentialUseReport, Metrics, serve_metrics
from sidecar.proxy import session as proxy_session
from sidecar.proxy.approvals import APPROVALS_PATH, HttpApprovalGate
from sidecar.proxy.audit_event import audit_facts
from sidecar.proxy.hold import PARAM_LABELS
from sidecar.proxy.policy import (
    ALLOW,
    BY_NAME_KINDS,
    NO_FACTS,
    Identity,
    Verdict,
    frozen,
    identities_from_bundle,
)
from sidecar.proxy.server import ProxyServer, ProxySettings, fake_salt_key
from sidecar.proxy.upstream import UpstreamTarget
from sidecar.shipper import AuditShipper, AuditSpool, Upload
from sidecar.workers import orphan_spools, spool_directory

if TYPE_CHECKING:
    from sidecar.workers import Worker

log = logging.getLogger("warden.sidecar")

VERSION = "0.1.0"
AUDIT_PATH = "/api/v1/sidecar/audit"


class BundleSource(Protocol):
    """Where the enforced bundle comes from: ``BundleClient`` or ``FileBundleSource``."""

    def current(self) -> dict[str, Any]: ...

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> None: ...


def inner_bundle(document: dict[str, Any]) -> dict[str, Any]:
    """Accept either the inner bundle or an envelope ``{"bundle": {...}, ...}``."""
    if "identities" not in document and isinstance(document.get("bundle"), dict):
        return dict(document["bundle"])
    return document


class FileBundleSource:
    """A bundle JSON file, re-read when its content changes.

    Compared by content, not only modification time: a coarse mtime can hide a
    second write, and a half-written file (write it to a temporary name and
    rename it, ideally) is simply retried on the next tick.

    The file is not signed (offline mode is the operator's explicit choice), but
    it must name ``datasource`` when one is given, and a file with ``expires_at``
    is used only until ``expires_at`` + ``grace_seconds``: a file past that is
    rejected, and one that passes it while enforced makes ``policy_usable()``
    refuse new sessions. A file without ``expires_at`` does not expire. The
    constructor raises ``BundleRejected`` (counted), ``OSError`` or ``ValueError``.
    """

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 1.0,
        datasource: str | None = None,
        grace_seconds: float = 0.0,
        rejections: dict[str, int] | None = None,
    ) -> None:
        self.path = path
        self.interval = interval
        self.datasource = datasource
        self.grace_seconds = grace_seconds
        self.rejections = {} if rejections is None else rejections
        self._callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._seen = path.read_bytes()
        self._current = self._checked(inner_bundle(json.loads(self._seen)))

    def _count(self, reason: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1

    def _checked(self, candidate: dict[str, Any]) -> dict[str, Any]:
        try:
            ds = candidate.get("datasource")
            name = ds.get("name") if isinstance(ds, dict) else None
            if self.datasource is not None and name != self.datasource:
                raise BundleRejected(
                    f"the bundle file is for datasource {name!r}, not {self.datasource!r}",
                    "datasource",
                )
            expires_at = candidate.get("expires_at")
            try:
                refusal = expiry_refusal(
                    None if expires_at is None else str(expires_at),
                    grace_seconds=self.grace_seconds,
                )
            except ValueError as exc:
                raise BundleRejected(f"expires_at {expires_at!r} is not a time", "expiry") from exc
            if refusal is not None:
                raise BundleRejected(
                    f"the bundle file expired at {expires_at} and its grace period", "expired"
                )
        except BundleRejected as exc:
            self._count(exc.reason)
            raise
        return candidate

    def current(self) -> dict[str, Any]:
        return self._current

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self._callbacks.append(callback)

    def expires_at(self) -> float | None:
        return expiry_timestamp(self._current)

    def policy_usable(self) -> str | None:
        """None while new sessions may start; else why not (see the class docstring)."""
        value = self._current.get("expires_at")
        return expiry_refusal(
            None if value is None else str(value),
            grace_seconds=self.grace_seconds,
            what="the bundle file has not been replaced",
        )

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                raw = self.path.read_bytes()
                if raw == self._seen:
                    continue
                self._seen = raw
                candidate = self._checked(inner_bundle(json.loads(raw)))
                try:
                    for callback in self._callbacks:
                        callback(candidate)  # the policy's raises if the bundle does not load
                except BundleError:
                    self._count("engine")
                    raise
                self._current = candidate
                log.info("bundle reloaded from %s", self.path.name)
            except Exception as exc:
                if isinstance(exc, ValueError) and not isinstance(exc, BundleError):
                    self._count("envelope")  # not JSON (or half written: retried next tick)
                log.error("bundle file rejected, keeping the current one: %s", exc)


def hold_seconds(document: dict[str, Any]) -> float:
    """How long a held statement waits for a decision (the bundle's ``approvals``)."""
    approvals = document.get("approvals")
    value = approvals.get("hold_seconds", 0) if isinstance(approvals, dict) else 0
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def approval_fingerprint(statements: Any) -> str:
    """The identity-independent fingerprint an approval and its grant are bound to.

    One statement: the engine's own fingerprint (SHA-256 of the text normalised
    for literals). Several: SHA-256 over their fingerprints in order, so the
    same statements with other literals match and a different mix does not.
    """
    prints = [st.fingerprint for st in statements]
    if len(prints) == 1:
        return str(prints[0])
    return hashlib.sha256(("warden.multi/1:" + ",".join(prints)).encode()).hexdigest()


def approval_facts(decision: Any) -> dict[str, Any]:
    """The body of an approval request, minus who and where: redacted, no literals."""
    return {
        "fingerprint": approval_fingerprint(decision.statements),
        "statement": "; ".join(st.redacted_sql for st in decision.statements),
        "kind": [st.kind for st in decision.statements],
        "risk": decision.risk,
        "reasons": [r.to_json() for r in decision.reasons],
        "tables": sorted(
            {t for st in decision.statements for t in st.tables_read + st.tables_written}
        ),
        "classifications": sorted({c for st in decision.statements for c in st.classifications}),
    }


def with_values(
    approval: Any, bundle: Any, sql: str, decision: Any, search_path: tuple[str, ...] | None
) -> Any:
    """The approval facts of ``decision`` with this text's values: their digest, and
    each value at its placeholder unless it stays redacted (``engine.values``); the
    facts ``verdict_parts`` gives are shared by texts that differ only in values."""
    values = engine_values.statement_values(
        bundle, sql, [s.redacted_sql for s in decision.statements], search_path
    )
    shown = [
        {"statement": index, **item}
        for index, statement in enumerate(values or ())
        for item in statement.literals
    ]
    tables = {t for s in decision.statements for t in s.tables_read + s.tables_written}
    if values is not None:
        labels: dict[int, str | None] = values[0].param_labels if len(values) == 1 else {}
    else:
        # Not readable value by value: a parameter (0: any) is shown only when no
        # table the text names has a classified column.
        labels = {0: engine_values.fallback_label(bundle, tables)}
    return frozen(
        {
            **approval,
            "values_digest": engine_values.values_digest(sql, tables=tables),
            "values": shown[: engine_values.MAX_VALUES],
            PARAM_LABELS: labels,
        }
    )


def verdict_parts(
    decision: Any, hold: float, classes: Mapping[str, str] | None = None
) -> tuple[str, str, tuple[Any, ...]]:
    """Everything the ``Verdict`` for ``decision`` holds but its upstream SQL: the
    action, the message, then the other fields in order. ``hold`` is how long a
    held statement waits for a reviewer; ``classes``, the bundle's column
    classifications, names those of provisionally masked columns."""
    encoded = json.dumps(audit_facts(decision), separators=(",", ":"), default=str)
    statements = decision.statements
    review = decision.action == "review"
    kinds = frozenset(s.kind for s in statements)
    executes = frozenset(
        s.session["execute"] for s in statements if s.session and "execute" in s.session
    )
    cursors = tuple(
        (c["op"], c["name"], c["hold"])
        for s in statements
        if s.session and (c := s.session.get("cursor"))
    )
    return (
        decision.action,
        decision.message or "Warden: statement refused by policy",
        (
            NO_FACTS,
            encoded[1:-1],
            frozen(approval_facts(decision)) if review else None,
            hold if review else 0.0,
            None,
            kinds,
            len(statements) > 1,
            decision.barrier,
            executes,
            cursors,
            decision.redact_errors,
            decision.action == "allow"
            and not decision.barrier
            and not executes
            and not cursors
            and kinds.isdisjoint(BY_NAME_KINDS)
            # COPY FROM STDIN: the session holds the client around its copy
            # (session._CopyHold), which no fast path does.
            and "copy_from" not in kinds,
            decision.error,
            tuple(
                (column, (classes or {}).get(column, ""))
                for column in sorted({c for s in statements for c in s.provisional_columns})
            ),
            decision.hint or None,
        ),
    )


# A shape whose text failed ``shape.confirmed``: remembered, so the check is not
# run again for each of its texts, and never served.
UNCONFIRMED: tuple[Any, ...] = ()


def _keep(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """``cache[key] = value``, emptying the cache first when a new key would pass
    ``limit``: a bound that costs nothing per hit."""
    if len(cache) >= limit and key not in cache:
        cache.clear()
    cache[key] = value


@dataclass(slots=True)
class _Kept:
    """What the policy keeps under one set of rules: the bundle's hold time and the
    verdicts decided so far, replaced whole when the rules change (after the engine's
    own swap). A decision reads this once. One on a worker thread (a Parse over 64 KiB
    whose text is short, ``Session._decide_later``) that races a swap then reads and
    fills the old set, which nothing asks again, and never puts an old verdict or an
    old hold time in the new one."""

    hold_seconds: float = 0.0
    # verdict_parts by the decision facts they are made of (``_shared``).
    parts: dict[Any, tuple[str, str, tuple[Any, ...]]] = field(default_factory=dict)
    by_text: dict[tuple[str, str, bool, tuple[str, ...] | None, str], Verdict] = field(
        default_factory=dict
    )
    # Allow verdicts by statement shape (``sidecar.engine.shape``): the part of a
    # verdict the engine gave by template, without a rewrite, that every text of the
    # shape shares, so those texts need no engine call at all.
    by_shape: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict)
    # For each asker (identity, search_path, protocol), the last shape served whose
    # one variable part is an integer literal (``WHERE id = 42``): the next text of
    # that shape is recognised without the expression's scan (``fits_number_slot``),
    # which is most of a shape hit's cost. One per asker, replaced as shapes
    # alternate: a text that does not fit costs a prefix comparison and goes on to
    # ``by_shape``.
    last_number_shape: dict[tuple[Any, ...], tuple[str, str, tuple[Any, ...]]] = field(
        default_factory=dict
    )


class EnginePolicy:
    """Adapts ``sidecar.engine`` to the proxy's ``Policy``; swaps bundles atomically."""

    CACHE_LIMIT = 50_000
    CACHE_TEXT_LIMIT = 4096
    ASKERS_LIMIT = 1024  # search_path is the client's to set: bound what it adds

    def __init__(self, source: BundleSource, metrics: Metrics) -> None:
        import importlib

        # Imported here so the proxy layer and its tests stay engine-agnostic.
        engine: Any = importlib.import_module("sidecar.engine")

        self._engine_mod = engine
        self.metrics = metrics
        document = source.current()
        # Until the upstream has been checked, hash-masked columns are refused.
        self.hash_available = False
        self.installed_extensions: frozenset[str] = frozenset()
        self._engine = engine.Engine(engine.load_bundle(document), hash_available=False)
        self._identities = identities_from_bundle(document)
        self._kept = _Kept(hold_seconds(document))
        self._shape_hits = 0
        self._number_slot_hits = 0
        self._contexts: dict[tuple[bool, bool, tuple[str, ...] | None], Any] = {}
        # Bumped after every swap, once the new engine answers: sessions compare it
        # with the generation their prepared statements were decided under.
        self.generation = 0
        self._note(document)
        source.subscribe(self.replace)

    def _note(self, document: dict[str, Any]) -> None:
        issued = document.get("issued_at")
        try:
            issued_ts = datetime.fromisoformat(str(issued)).timestamp() if issued else None
        except ValueError:
            issued_ts = None
        self.metrics.bundle_loaded(str(document.get("revision", "")), issued_ts)

    def set_hash_available(self, available: bool) -> None:
        """Whether the upstream has Warden's keyed hash (``sidecar.masking_db``)."""
        if available == self.hash_available:
            return
        self.hash_available = available
        self._engine.set_hash_available(available)
        self._decisions_changed()

    def set_installed_extensions(self, names: frozenset[str]) -> None:
        """The upstream database's extensions (``sidecar.masking_db``)."""
        if names == self.installed_extensions:
            return
        self.installed_extensions = names
        self._engine.set_installed_extensions(names)
        self._decisions_changed()

    def _decisions_changed(self, hold: float | None = None) -> None:
        """The bundle or the upstream changed decisions: drop the verdicts kept so far
        (after the engine's own swap: a decision that reads the new set asks the new
        engine). ``hold``: a new bundle's hold time."""
        self._kept = _Kept(self._kept.hold_seconds if hold is None else hold)
        self.generation += 1  # prepared statements are decided again

    def replace(self, document: dict[str, Any]) -> None:
        bundle = self._engine_mod.load_bundle(document)
        identities = identities_from_bundle(document)
        self._engine.replace_bundle(bundle)
        self._identities = identities
        self._decisions_changed(hold_seconds(document))
        self._note(document)

    def _shared(self, decision: Any, kept: _Kept) -> tuple[str, str, tuple[Any, ...]]:
        """``verdict_parts``, computed once for the statements that differ only in literals."""
        key = (
            decision.action,
            decision.risk,
            decision.revision,
            decision.reasons,
            decision.break_glass,
            decision.error,  # the parser's message quotes the text
            # The tables too: the same text names other tables under another
            # search_path, and the approval facts list them.
            tuple(
                (
                    s.fingerprint,
                    s.redacted_sql,
                    s.masked_columns,
                    s.classifications,
                    s.tables_read,
                    s.tables_written,
                    s.provisional_columns,
                    s.would_have_masked,
                )
                for s in decision.statements
            ),
        )
        shared = kept.parts.get(key)
        if shared is None:
            shared = verdict_parts(
                decision, kept.hold_seconds, self._engine.bundle.column_classifications
            )
            _keep(kept.parts, key, shared, self.CACHE_LIMIT)
        return shared

    def identity(self, name: str) -> Identity | None:
        return self._identities.get(name)

    def identities(self) -> Mapping[str, Identity]:
        """Every identity of the bundle in force, by name (replaced, never changed)."""
        return self._identities

    def bundle(self) -> Any:
        """The engine's bundle in force (``sidecar.engine.bundle.Bundle``)."""
        return self._engine.bundle

    def cache_info(self) -> dict[str, int]:
        return {
            "verdicts": len(self._kept.by_text),
            "shapes": len(self._kept.by_shape),
            "shape_hits": self._shape_hits + self._number_slot_hits,
            "number_slot_hits": self._number_slot_hits,
        }

    def decide(
        self,
        *,
        identity: str,
        sql: str,
        standard_conforming_strings: bool,
        search_path: tuple[str, ...] | None,
        in_transaction: bool,
        protocol: str,
    ) -> Verdict:
        return self._decide(
            identity, sql, standard_conforming_strings, search_path, in_transaction, protocol
        )[0]

    def decide_with_shape(
        self, **question: Any
    ) -> tuple[Verdict, tuple[int, tuple[str, ...], str] | None]:
        """``decide``, and when the verdict is the one kept for the text's shape (served
        from it, or just kept under it), that shape for the native relay: the
        generation it holds for and its ``pieces`` (the fixed texts and the kinds of
        the values between them; ``Session.quick_query``). Asked as ``decide`` is."""
        verdict, found = self._decide(**question)
        if found is None:
            return verdict, None
        generation, shape = found
        return verdict, (generation, *pieces(shape))

    def _decide(
        self,
        identity: str,
        sql: str,
        standard_conforming_strings: bool,
        search_path: tuple[str, ...] | None,
        in_transaction: bool,
        protocol: str,
    ) -> tuple[Verdict, tuple[int, Shape] | None]:
        """The verdict, and (generation, shape) when it is its shape's. Positional
        from ``decide``: keywords passed on (``**``) cost twice a cache hit."""
        # The engine is pure, so a verdict depends only on these inputs and the
        # bundle (the caches are dropped on every bundle change). The generation
        # before the caches: a swap replaces them before it bumps it, so a shape
        # read after a swap began is never given the older generation.
        generation = self.generation
        kept = self._kept  # once: see _Kept
        key = (identity, sql, standard_conforming_strings, search_path, protocol)
        verdict = kept.by_text.get(key)
        if verdict is not None:
            return verdict, None
        shape_key = None
        # A long text is rarely sent twice and its scan would hold the GIL while
        # other sessions wait: shapes are for the short statements sent all day.
        if standard_conforming_strings and len(sql) <= self.CACHE_TEXT_LIMIT:
            asker = (identity, search_path, protocol)
            last = kept.last_number_shape.get(asker)
            if last is not None and fits_number_slot(sql, last[0], last[1]):
                self._number_slot_hits += 1
                action, message, rest = last[2]
                # (Concatenated: a sixth faster than unpacking into a display.)
                verdict = tuple.__new__(Verdict, (action, message, sql) + rest)  # noqa: RUF005
                return verdict, (generation, (last[0], None, None, last[1]))
            shape = shape_of(sql)
            shape_key = (asker, shape)
            shared = kept.by_shape.get(shape_key)
            if shared:  # neither unseen (None) nor UNCONFIRMED (empty)
                self._shape_hits += 1
                slot = number_slot(shape)
                if slot is not None:
                    _keep(kept.last_number_shape, asker, (*slot, shared), self.ASKERS_LIMIT)
                action, message, rest = shared
                verdict = tuple.__new__(Verdict, (action, message, sql) + rest)  # noqa: RUF005
                return verdict, (generation, shape)
        context = (standard_conforming_strings, in_transaction, search_path)
        session = self._contexts.get(context)
        if session is None:
            # Few distinct contexts exist: build each once (a frozen dataclass's
            # constructor is a noticeable part of a cache miss).
            session = self._engine_mod.SessionContext(
                standard_conforming_strings=standard_conforming_strings,
                in_transaction=in_transaction,
                search_path=search_path,
            )
            _keep(self._contexts, context, session, 64)
        decision = self._engine.decide(
            identity=identity, sql=sql, session=session, protocol=protocol
        )
        action, message, rest = self._shared(decision, kept)
        if rest[2] is not None:  # held for review: the request shows this text's values
            approval = with_values(rest[2], self._engine.bundle, sql, decision, search_path)
            rest = (*rest[:2], approval, *rest[3:])
        # The tuple itself: once per statement on the hot path, without the
        # NamedTuple constructor's keyword handling.
        verdict = tuple.__new__(Verdict, (action, message, decision.upstream_sql, *rest))
        if len(sql) <= self.CACHE_TEXT_LIMIT and not decision.break_glass:
            _keep(kept.by_text, key, verdict, self.CACHE_LIMIT)
        if (
            shape_key is not None
            and decision.cached  # served by a template: the literals' values did not matter
            and action == ALLOW
            and decision.upstream_sql == sql  # no rewrite to re-apply to new values
            and shape_key not in kept.by_shape
        ):
            if not confirmed(sql):
                _keep(kept.by_shape, shape_key, UNCONFIRMED, self.CACHE_LIMIT)
                return verdict, None
            _keep(kept.by_shape, shape_key, (action, message, rest), self.CACHE_LIMIT)
            return verdict, (generation, shape_key[1])
        return verdict, None


def _shape_decisions(policy: EnginePolicy) -> dict[str, int]:
    """Shape hits by where: the policy's, and the native relay's (in this process)."""
    counts = {"policy": policy.cache_info()["shape_hits"]}
    relay = proxy_session._relay
    if relay is not None:
        counts["relay"] = relay.stats()["shapes"]
    return counts


def http_upload(url: str, token: str | None) -> Upload:
    """An ``upload`` for the shipper: POST the batch as ``{"events": [...]}``; any
    answer but a 2xx raises (``HttpError``), and the shipper retries the batch."""
    control_plane = ControlPlane(url, token)

    async def upload(events: bytes) -> None:
        body = b'{"events":' + events + b"}"
        response = await control_plane.post_json("", body, timeout=30)
        response.expect(what="audit upload")

    return upload


def _tls_context(config: SidecarConfig) -> ssl.SSLContext | None:
    if not config.tls_cert or not config.tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _write_ready(path: str, data: dict[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(target)


async def _check_privileges(config: SidecarConfig) -> list[str]:
    """Refuse to start as a privileged upstream role (each session checks again at
    login, so a role made privileged later is refused there)."""
    from sidecar.proxy.state import PRIVILEGES_SQL
    from sidecar.scanner.scan import connect as scanner_connect

    def privileges() -> list[str]:
        with scanner_connect(config.upstream_dsn, password=config.upstream_password) as conn:
            row = conn.execute(PRIVILEGES_SQL).fetchone()
        return [p for p in str(row[0] if row else "").split(",") if p]

    try:
        found = await asyncio.to_thread(privileges)
    except Exception as exc:  # unreachable now: every session checks at its login
        log.warning("could not check the upstream role's privileges (%s)", type(exc).__name__)
        return []
    if not found:
        return []
    if not config.allow_privileged_upstream:
        raise ConfigError(
            f"the upstream role is privileged ({', '.join(found)}): give the sidecar an "
            "unprivileged role (docs/deploy.md), or set allow_privileged_upstream: true"
        )
    log.warning(
        "the upstream role is privileged (%s) and allow_privileged_upstream is set: a "
        "misjudged statement could reach the server's files, programs or all data",
        ", ".join(found),
    )
    return found


async def _check_masking(
    config: SidecarConfig, policy: EnginePolicy, said: tuple[bool, str] | None = None
) -> tuple[bool, str]:
    """Whether the upstream can hash-mask (installed once per database by an
    administrator with ``python -m sidecar install-masking``); logged when it changes."""
    from sidecar import masking_db

    extensions: frozenset[str] | None = None
    try:
        status = await asyncio.to_thread(
            masking_db.status, config.upstream_dsn, password=config.upstream_password
        )
        now = (status.usable, status.detail)
        extensions = status.extensions
    except Exception as exc:  # an unreachable upstream: refuse, and say why
        now = (False, f"the check failed ({type(exc).__name__})")
    policy.set_hash_available(now[0])
    if extensions is not None:
        policy.set_installed_extensions(extensions)
    if now != said:
        if now[0]:
            log.info("hash masking is usable in the upstream database")
        else:
            log.warning("hash-masked columns are refused: %s", now[1])
    return now


async def _watch_masking(
    config: SidecarConfig, policy: EnginePolicy, said: tuple[bool, str], interval: float = 60.0
) -> None:
    # Installing it (or losing it) takes effect without a restart.
    while True:
        await asyncio.sleep(interval)
        said = await _check_masking(config, policy, said)


async def _revalidate_periodically(server: ProxyServer, interval: float = 10.0) -> None:
    # Identities and credentials carry expiry times: a session must not outlive
    # them just because no new bundle arrived.
    while True:
        await asyncio.sleep(interval)
        server.revalidate()


async def _first_bundle(client: BundleClient, stop: asyncio.Event) -> bool:
    """Disk cache first, then the control plane, until a verified bundle is active.

    Nothing listens meanwhile: a client finds the port closed rather than a
    sidecar enforcing nothing. False when asked to stop first.
    """
    while not stop.is_set():
        try:
            await client.start(timeout=5.0)
            return True
        except NoBundle:
            log.error(
                "no verified bundle yet (%s); not serving, still trying",
                client.status()["last_error"] or client.status()["last_rejection"],
            )
    return False


async def _first_file_bundle(
    config: SidecarConfig, metrics: Metrics, stop: asyncio.Event
) -> FileBundleSource | None:
    """The offline bundle file, once it names this datasource and has not expired past
    its grace period; nothing listens meanwhile. None when asked to stop first. Read
    every ``bundle_file_interval`` seconds, then and once serving."""
    path = Path(config.bundle_file)
    interval = config.bundle_file_interval
    rejected: bytes | None = None
    while not stop.is_set():
        # A file rejected once is checked (and counted) again only when it changes.
        if path.read_bytes() != rejected:
            try:
                return FileBundleSource(
                    path,
                    interval=interval,
                    datasource=config.datasource,
                    grace_seconds=config.bundle_grace_hours * 3600,
                    rejections=metrics.bundle_rejected,
                )
            except BundleRejected as exc:
                rejected = path.read_bytes()
                log.error(
                    "bundle file rejected (%s): %s; not serving, still trying", exc.reason, exc
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    return None


def heartbeat_counters(metrics: Metrics, spool: AuditSpool, shipped: int) -> dict[str, int]:
    privileged = {"privileged_upstream": 1} if metrics.privileged_upstream else {}
    return {
        **privileged,
        "connections_total": metrics.connections_total,
        "connections_active": metrics.connections_active,
        **{f"statements_{action}": count for action, count in metrics.statements.items()},
        "audit_spool_depth": spool.depth,
        "audit_dropped": spool.dropped,
        "audit_shipped": shipped,
        **{f"bundle_rejected_{reason}": n for reason, n in sorted(metrics.bundle_rejected.items())},
    }


async def _heartbeats(
    client: BundleClient,
    interval: float,
    counters: Callable[[], dict[str, int]],
    on_scan_requested: Callable[[str], None] | None = None,
    worker: Worker | None = None,
    credentials_used: dict[str, float] | None = None,
) -> None:
    report = CredentialUseReport()
    while True:
        try:
            used = dict(credentials_used or {})
            if worker is None:
                logins = report.pending(used)
                await client.heartbeat(version=VERSION, counters=counters(), logins=logins)
            else:
                # One heartbeat for the whole sidecar, from worker 0, with every worker's.
                totals, each = await worker.fleet_counters(counters())
                used = await worker.fleet_logins(used)
                logins = report.pending(used)
                await client.heartbeat(
                    version=VERSION, counters=totals, workers=each, logins=logins
                )
            report.acknowledged(logins, used)
            requested = client.last_heartbeat_reply.get("scan_requested")
            if on_scan_requested is not None and isinstance(requested, str) and requested:
                on_scan_requested(requested)
        except (HttpError, ValueError) as exc:
            # Enforcement does not depend on the heartbeat; the control plane
            # shows the sidecar as silent, which is the signal.
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(interval)


def schema_post(client: BundleClient) -> Callable[[dict[str, Any]], Awaitable[int]]:
    """POST a scan report to the control plane; the HTTP status."""
    from sidecar.scanner.reporter import SCHEMA_PATH

    async def post(body: dict[str, Any]) -> int:
        return await client.post_json(SCHEMA_PATH, body)

    return post


def scan_reporter(
    config: SidecarConfig, source: BundleSource, on_status: Callable[[dict[str, Any]], None]
) -> Any:
    """The scan reporter for this sidecar (imported here: psycopg and the detectors load
    only when scanning is on)."""
    from sidecar.scanner.reporter import ScanReporter, scan_executor, scanner_for

    return ScanReporter(
        bundle=source.current,
        scan=scanner_for(config.upstream_dsn, config.upstream_password),
        post=schema_post(source) if isinstance(source, BundleClient) else None,
        state_dir=Path(config.state_dir),
        on_status=on_status,
        executor=lambda: scan_executor(config.log_level),
    )


def bundle_client(config: SidecarConfig, rejections: dict[str, int] | None = None) -> BundleClient:
    try:
        keys = parse_public_keys(config.bundle_public_keys)
    except ValueError as exc:
        raise ConfigError(f"bundle_public_keys: {exc}") from exc
    return BundleClient(
        url=config.control_plane_url,
        token=config.token or "",
        public_keys=keys,
        state_dir=config.state_dir,
        datasource=config.datasource,
        wait=config.bundle_wait,
        max_backoff=float(config.bundle_max_backoff),
        grace_seconds=config.bundle_grace_hours * 3600,
        rejections=rejections,
    )


async def _bundle_source(
    config: SidecarConfig, metrics: Metrics, stop: asyncio.Event
) -> FileBundleSource | BundleClient | None:
    """The first usable bundle, wired into ``metrics`` (rejections, expiry, and the
    ``policy_usable`` the proxy asks before each new session); None if stopped first."""
    source: FileBundleSource | BundleClient | None
    if config.control_plane_url:
        client = bundle_client(config, metrics.bundle_rejected)
        source = client if await _first_bundle(client, stop) else None
    else:
        source = await _first_file_bundle(config, metrics, stop)
    if source is None:
        return None
    if isinstance(source, BundleClient):
        active = source.active
        metrics.bundle_expires_at = lambda: active().expires_ts
    else:
        metrics.bundle_expires_at = source.expires_at
    metrics.bundle_grace_seconds = config.bundle_grace_hours * 3600
    metrics.policy_usable = source.policy_usable
    return source


async def serve(
    config: SidecarConfig,
    stop: asyncio.Event | None = None,
    worker: Worker | None = None,
    *,
    mcp_stdio: str | None = None,
) -> None:
    """The sidecar, in this process alone or as ``worker`` of several (``sidecar.workers``).

    ``mcp_stdio`` (an agent's access token): serve that agent over MCP on stdin and
    stdout instead of listening for clients (``python -m sidecar mcp``): the same
    bundle, engine and proxy, reached only through the proxy's private listener, with
    its own audit spool, and no heartbeat or scan (the sidecar does those); it ends
    when the MCP client does."""
    stop = stop or asyncio.Event()
    stdio = mcp_stdio is not None
    metrics = Metrics()
    ready: dict[str, Any] = {}
    metrics_server: asyncio.AbstractServer | None = None
    index = worker.index if worker is not None else 0
    if worker is not None:
        # The parent serves metrics_listen with every worker's, asked for over this.
        await worker.start_control(metrics)
    elif config.metrics_listen:
        # Served before there is a bundle: a sidecar that does not listen (no usable
        # bundle yet) still shows why in warden_sidecar_bundle_rejected_total.
        host, _, mport = config.metrics_listen.rpartition(":")
        metrics_server = await serve_metrics(metrics, host or "127.0.0.1", int(mport))
        sockets: Any = getattr(metrics_server, "sockets", ())
        ready["metrics_port"] = sockets[0].getsockname()[1]
    source = await _bundle_source(config, metrics, stop)
    if source is None:
        if metrics_server is not None:
            metrics_server.close()
        return
    policy = EnginePolicy(source, metrics)
    metrics.shape_decisions = lambda: _shape_decisions(policy)
    # Reported in every heartbeat when allowed: the sidecar page shows it.
    metrics.privileged_upstream = bool(await _check_privileges(config))
    masking = await _check_masking(config, policy)
    document = source.current()
    upstream = UpstreamTarget.from_dsn(config.upstream_dsn, password=config.upstream_password)
    durability = config.audit_durability
    if durability == "auto":
        environment = (document.get("datasource") or {}).get("environment")
        durability = "strict" if environment == "production" else "batched"
    spool = AuditSpool(
        stdio_spool(config.state_dir) if stdio else spool_directory(config.state_dir, index),
        max_bytes=config.spool_max_bytes,
        full_policy=config.spool_full_policy,
        durability=durability,
        native=config.native_relay,
    )
    log.info("audit durability: %s", durability)
    metrics.spool_depth = lambda: spool.depth
    metrics.spool_dropped = lambda: spool.dropped
    datasource = document.get("datasource") or {}
    settings = ProxySettings(
        database=config.database or upstream.database,
        datasource=str(datasource.get("name", "")) if isinstance(datasource, dict) else "",
        sidecar_id=config.sidecar_id,
        upstream=upstream,
        tls=_tls_context(config),
        cleartext_over_tls=config.cleartext_over_tls,
        max_message=config.max_message_bytes,
        max_statement=config.max_statement_bytes,
        allow_privileged_upstream=config.allow_privileged_upstream,
        native_relay=config.native_relay,
        # Far above what a read keeps (it streams, and stops at the result limit; the
        # rows in flight when it cancels still arrive), so that only a write's
        # RETURNING rows or one enormous row meet it.
        internal_answer_bytes=config.mcp_answer_bytes
        or max(64 * 1024 * 1024, 8 * config.mcp_max_result_bytes),
    )
    approvals_url = config.approvals_url or (
        config.control_plane_url.rstrip("/") + APPROVALS_PATH if config.control_plane_url else None
    )
    approvals = (
        HttpApprovalGate(
            url=approvals_url,
            token=config.token or config.audit_token,
            timeout=float(config.approvals_timeout),
        )
        if approvals_url
        else None
    )
    # The planner's estimate on each request: EXPLAIN on a connection of the sidecar's own.
    estimator = (
        PlanEstimator(config.upstream_dsn, password=config.upstream_password)
        if approvals is not None
        else None
    )
    server = ProxyServer(
        settings=settings,
        policy=policy,
        audit=spool,
        metrics=metrics,
        approvals=approvals,
        estimator=estimator,
        sign_in_limits=worker.link if worker is not None else None,
        cancel_route=worker.cancel_route() if worker is not None else None,
        fake_salt_key=fake_salt_key(Path(config.state_dir)),
    )
    # Subscribed after the policy, so it sees the new bundle's identities.
    source.subscribe(lambda _document: server.policy_changed())
    if worker is not None:
        worker.server = server
        port = await server.start(config.listen_host, worker.slot.port, reuse_port=True)
    elif stdio:
        port = 0  # only the MCP server's private listener
    else:
        port = await server.start(config.listen_host, config.listen_port)
    # The MCP server: over stdio it is what this process is for; over HTTP it starts
    # once the proxy serves (importing the SDK takes a while; clients need not wait).
    mcp: list[Any] = []
    if stdio:
        mcp.append(await _start_mcp(config, server, policy, spool, approvals))
    tasks = [
        asyncio.create_task(_watch_masking(config, policy, masking)),
        asyncio.create_task(spool.run()),
        asyncio.create_task(source.watch()),
        asyncio.create_task(_revalidate_periodically(server)),
    ]
    audit_url = config.audit_url or (
        config.control_plane_url.rstrip("/") + AUDIT_PATH if config.control_plane_url else None
    )
    shipper: AuditShipper | None = None
    if audit_url:
        upload = http_upload(audit_url, config.audit_token or config.token)
        shipper = AuditShipper(spool, upload)
        tasks.append(asyncio.create_task(shipper.run()))
        if index == 0 and not stdio:
            tasks += _ship_orphan_spools(config, upload, spool)
    ready.update({"port": port, "pid": os.getpid()})
    shipped = shipper
    counters = lambda: heartbeat_counters(metrics, spool, shipped.shipped if shipped else 0)  # noqa: E731
    if worker is not None:
        worker.counters = counters
    reporter: Any = None
    # One scanner and one heartbeat per sidecar: worker 0's.
    if config.scan_enabled and index == 0 and not stdio:

        def scan_status(status: dict[str, Any]) -> None:
            if worker is not None:
                worker.scan_status(status)  # the parent writes the readiness file
                return
            ready["scan"] = status
            if config.ready_file:
                _write_ready(config.ready_file, ready)

        reporter = scan_reporter(config, source, scan_status)
        source.subscribe(reporter.bundle_changed)
    if isinstance(source, BundleClient) and index == 0 and not stdio:
        tasks.append(
            asyncio.create_task(
                _heartbeats(
                    source,
                    config.heartbeat_interval,
                    counters,
                    reporter.request if reporter is not None else None,
                    worker,
                    metrics.credentials_used,
                )
            )
        )
    log.info(
        "sidecar serving on %s:%s for database %s", config.listen_host, port, settings.database
    )
    if worker is not None:
        await worker.ready(port)  # the parent writes the readiness file once all serve
    elif config.ready_file:
        _write_ready(config.ready_file, ready)
    if reporter is not None:
        # Started once serving: the scan runs in a worker process and never delays it.
        tasks.append(asyncio.create_task(reporter.run()))
    if config.mcp_listen and not stdio:

        async def mcp_http() -> None:
            service = await _start_mcp(config, server, policy, spool, approvals)
            mcp.append(service)
            ready["mcp_port"] = await service.start_http(config.mcp_listen, _tls_context(config))
            log.info("MCP server (streamable HTTP) on port %s", ready["mcp_port"])
            if config.ready_file:
                _write_ready(config.ready_file, ready)

        tasks.append(asyncio.create_task(mcp_http()))
    if stdio:
        assert mcp_stdio is not None
        await _serve_stdio(mcp[0], mcp_stdio, stop)
    await stop.wait()
    for service in mcp:
        await service.stop()
    await server.stop()
    if estimator is not None:
        estimator.close()  # its own upstream connection and thread
    for task in tasks:
        task.cancel()
    if shipper is not None and stdio:
        # This process ends with its client: ship what its calls recorded first.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(shipper.ship_once(), 10)
    spool.close()


async def _start_mcp(
    config: SidecarConfig, server: ProxyServer, policy: EnginePolicy, spool: Any, approvals: Any
) -> Any:
    """The MCP server beside this proxy (``sidecar.mcp``), its private listener open."""
    from sidecar.mcp.server import McpService, limits_from

    service = McpService(
        proxy=server,
        policy=policy,
        audit=spool,
        approvals=approvals,
        limits=limits_from(config),
        version=VERSION,
    )
    await service.start()
    return service


def stdio_spool(state_dir: str) -> Path:
    """The audit spool of ``python -m sidecar mcp``: its own, beside the sidecar's. One
    such process per state directory: a second one is refused (``ConfigError``) rather
    than sharing the spool."""
    import fcntl

    directory = Path(state_dir) / "mcp-stdio"
    directory.mkdir(parents=True, exist_ok=True)
    lock = (directory / "lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.close()
        raise ConfigError(
            f"another `python -m sidecar mcp` uses {directory}: give each its own state_dir"
        ) from exc
    _HELD_LOCKS.append(lock)  # held for the life of the process
    return directory / "spool"


_HELD_LOCKS: list[Any] = []


async def _serve_stdio(mcp: Any, token: str, stop: asyncio.Event) -> None:
    """Serve the agent until its client closes stdin (or the process is told to stop)."""
    from sidecar.mcp.agents import SignInFailed

    serving = asyncio.create_task(mcp.serve_stdio(token))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if serving.done() and not serving.cancelled() and serving.exception() is not None:
        exc = serving.exception()
        if isinstance(exc, SignInFailed):
            log.error("the MCP agent's access token did not sign in: %s", exc)
        else:
            log.error("the MCP stdio server failed: %r", exc)
    serving.cancel()
    stop.set()


def _ship_orphan_spools(
    config: SidecarConfig, upload: Upload, spool: AuditSpool
) -> list[asyncio.Task[None]]:
    """Ship the spools of worker indexes no longer configured (the sidecar ran with more
    workers before): nothing writes to them any more, but their events must still go."""
    tasks = []
    for directory in orphan_spools(config.state_dir, config.workers):
        log.info("shipping the audit spool %s left by a worker no longer configured", directory)
        orphan = AuditSpool(directory, full_policy="drop", durability="batched")
        tasks.append(asyncio.create_task(orphan.run()))
        tasks.append(asyncio.create_task(AuditShipper(orphan, upload).run()))
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar.runner", description=__doc__)
    parser.add_argument("--config", help="TOML or JSON config file (env overrides it)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if config.control_plane_url:
            bundle_client(config)  # a bad pinned key is a start-up error, not a retry loop
        # A bad TLS setting in the DSN (a missing CA file...) too.
        UpstreamTarget.from_dsn(config.upstream_dsn, password=config.upstream_password)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    make_state_dir(config.state_dir)
    if config.workers > 1:
        from sidecar.workers import supervise

        return supervise(config)
    try:
        run_until_signalled(lambda stop: serve(config, stop))
    except ConfigError as exc:  # found while starting: a privileged upstream role, say
        log.error("not starting: %s", exc)
        return 2
    return 0


def make_state_dir(state_dir: str) -> None:
    """The state directory, made private (0700) when the sidecar creates it: it holds
    the bundle with every identity's verifier, the audit spool and the salt key.
    (Made here, first: a directory made on the way to one inside it gets the umask.)
    One that exists is left as its owner made it; what the sidecar writes in it is
    0600 either way."""
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)


def mcp_main(config_path: str) -> int:
    """``python -m sidecar mcp``: one agent over MCP on stdin and stdout (stdout is the
    protocol's: everything else goes to stderr)."""
    try:
        config = load_config(config_path)
        if config.control_plane_url:
            bundle_client(config)
        UpstreamTarget.from_dsn(config.upstream_dsn, password=config.upstream_password)
        from sidecar.mcp.server import stdio_token
    except ImportError:
        print(
            "error: the MCP server needs the sidecar's mcp extra (sidecar/requirements-mcp.txt)",
            file=sys.stderr,
        )
        return 2
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    make_state_dir(config.state_dir)
    try:
        token = stdio_token(config)
    except OSError as exc:
        print(f"error: WARDEN_MCP_TOKEN_FILE: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(
            "error: set WARDEN_MCP_TOKEN (or _FILE) or mcp_token to the agent's token",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        run_until_signalled(lambda stop: serve(config, stop, mcp_stdio=token))
    except ConfigError as exc:
        log.error("not starting: %s", exc)
        return 2
    return 0


# mallopt(3)'s parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """Have glibc's allocator reuse the pages of large blocks instead of handing
    them back to the kernel and faulting them in again.

    By default it returns freed memory once 128 KB sit free at the top of its heap,
    and serves a block above its mmap threshold (128 KB, raised as such blocks are
    freed) with a fresh mapping. The spool's flush (a batch's lines joined and
    encoded: about 2 MB at 2,000 events) then had the kernel fault in and zero 0.46
    pages per statement, 0.4-1.5 us of the sidecar's CPU at 8 clients
    (bench/README.md). Blocks up to 32 MB (the shipper reads whole segments of
    8 MB and more) now come from the heap, and up to 32 MB of it stays mapped
    when free. Only on Linux, and only where the C library has mallopt (glibc;
    not musl)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 32 * 1024 * 1024)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop (on asyncio's own loop without it) until it
    returns; SIGTERM and SIGINT set ``stop``. A sidecar and each of its workers."""
    keep_freed_memory()
    try:
        import uvloop
    except ImportError:  # uvloop is pinned, but the sidecar still runs without it
        uvloop = None  # type: ignore[assignment]

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    if uvloop is not None:
        uvloop.run(run())
    else:
        asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
