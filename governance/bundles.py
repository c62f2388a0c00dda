"""The bundle compiler: a datasource's policy objects to a signed ``warden.bundle/1``.

``bundle_compile`` turns the rows into the inner bundle dict of
``docs/bundle-format.md`` and proves it with the engine's own ``load_bundle``
(the contract), so the control plane never publishes what a sidecar would
refuse. ``bundle_publish`` signs the canonical bytes, stores the envelope in
Redis (where a conditional GET costs one Redis round trip and no SQL) and
announces the new revision on a pub/sub channel that long-polls wait on.
``bundles_mark_stale`` is the hook the governance services call: it enqueues
the recompile after the change commits, never before, never per request.

Every bundle carries ``expires_at`` (``WARDEN_BUNDLE_LIFETIME_HOURS`` after
``issued_at``, inside the signed content and so inside the revision, which is
the ETag). ``bundles_resign``, from Celery beat every
``WARDEN_BUNDLE_RESIGN_HOURS``, recompiles and re-signs every bundle whether or
not the policy changed, so a sidecar always holds one well before its expiry and
a replayed old bundle stops being accepted once it expires.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from governance.models import (
    ENFORCED_STATUSES,
    PROVISIONAL,
    PROVISIONAL_STATUSES,
    AccessToken,
    ApiToken,
    BreakGlassGrant,
    BreakGlassState,
    Classification,
    ColumnClassification,
    CustomDetector,
    Datasource,
    GuardrailRule,
    IdentityKind,
    MaskingRule,
    MaskingStrategy,
    Membership,
    ScanRun,
    ScanSchedule,
    Sidecar,
    identities_allowed_on,
)
from governance.signing import bytes_sign
from sidecar.bundle import MAX_CLOCK_SKEW_SECONDS
from sidecar.engine import BundleError, canonical_bytes, compute_revision, load_bundle, vocabulary
from sidecar.engine.bundle import FORMAT_AGENTS, FORMAT_PATHS
from sidecar.engine.paths import PathError, parse_path, path_applies

logger = logging.getLogger(__name__)

FORMAT = "warden.bundle/1"
# Not yet editable in the control plane; the same figures as the engine's fixtures.
RISK_THRESHOLDS = {"review_at": 70, "block_at": 90, "critical_at": 85}

CHANNEL = "warden:bundle-changed"
HISTORY_LENGTH = 100
# Changes to these never alter a bundle; everything else in governance might.
_NOT_POLICY = (ApiToken, Membership, Sidecar, ScanRun)
ENFORCED_OR_PROVISIONAL = tuple(dict.fromkeys((*ENFORCED_STATUSES, *PROVISIONAL_STATUSES)))


class BundleCompileError(Exception):
    """The datasource's policy cannot make a bundle the engine would accept."""


def _key(datasource_id: int, part: str) -> str:
    return f"warden:bundle:{datasource_id}:{part}"


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _rfc3339(value: Any) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


# --- compile ---------------------------------------------------------------------------


def _identities(datasource: Datasource, now: Any) -> list[dict[str, Any]]:
    live_tokens = AccessToken.objects.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    identities = (
        identities_allowed_on(datasource, now)
        .select_related("owner")
        .prefetch_related("teams", models.Prefetch("tokens", queryset=live_tokens))
        .distinct()
        .order_by("name")
    )
    result = []
    for identity in identities:
        # Agents and services may sign in to the sidecar's MCP server with their token
        # as a bearer token: its prefix (already shown in the control plane, not
        # secret) tells the sidecar whose it is (format 1.2, docs/mcp.md).
        bearer = identity.kind in (IdentityKind.AGENT, IdentityKind.SERVICE)
        result.append(
            {
                "name": identity.name,
                "kind": identity.kind,
                "teams": sorted(t.slug for t in identity.teams.all()),
                "owner": identity.owner.name if identity.owner_id else None,
                "credentials": [
                    {
                        "id": f"tok-{token.pk}",
                        "scram_sha_256": token.scram_verifier,
                        "expires_at": _rfc3339(token.expires_at),
                        **({"prefix": token.prefix} if bearer and token.prefix else {}),
                    }
                    for token in sorted(identity.tokens.all(), key=lambda t: t.pk)
                ],
                "expires_at": _rfc3339(identity.expires_at),
            }
        )
    return result


def _schema(datasource: Datasource) -> dict[str, Any]:
    tables = []
    for table in (datasource.schema_snapshot or {}).get("tables", []):
        tables.append(
            {
                "schema": table["schema"],
                "name": table["name"],
                "kind": table.get("kind", "table"),
                "columns": [{"name": c["name"], "type": c["type"]} for c in table["columns"]],
            }
        )
    return {"tables": tables}


def _path_fits(path: str, column_type: str) -> bool:
    try:
        return path_applies(column_type, parse_path(path))
    except PathError:
        return False


def _masking_params(rule: MaskingRule) -> dict[str, Any]:
    # The model accepts exactly the parameters the engine implements.
    if rule.strategy == MaskingStrategy.PARTIAL:
        keep_last = vocabulary.KEEP_LAST
        return {keep_last.name: int(rule.params.get(keep_last.name, keep_last.default))}
    return {}


def _default_masking_rules(
    environment: str,
    classifications: list[Classification],
    column_classifications: list[dict[str, Any]],
    masking_rules: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The default masks (``vocabulary.DEFAULT_MASKS``) of the built-in classifications
    the bundle's columns use and no masking rule covers in ``environment``, as rules
    listed after the real ones (the engine applies the first rule that applies).

    Compiled here rather than known to the engine, so the engine stays generic and a
    sidecar that predates a default still applies it. A custom classification gets
    no entry: the engine's level default masks it (docs/masking.md)."""
    builtin = {c.name for c in classifications if c.is_builtin}
    covered = {
        r["classification"]
        for r in masking_rules
        if not r["environments"] or environment in r["environments"]
    }
    out = []
    for name in sorted({cc["classification"] for cc in column_classifications}):
        if name in builtin and name not in covered:
            rule = vocabulary.default_masking_rule(name)
            if rule is not None:
                out.append(rule)
    return out


def _conditions(rule: GuardrailRule, classification_names: list[str]) -> dict[str, Any]:
    cond = rule.normalised_conditions()
    kinds: list[str] = []
    for kind in cond["statement_kinds"]:
        # The control plane's coarser names ("copy") widen to the engine kinds they cover.
        for mapped in vocabulary.engine_statement_kinds(kind):
            if mapped not in kinds:
                kinds.append(mapped)
    cond["statement_kinds"] = kinds
    # "pii.*" names a family; the engine's loader accepts only known names, so
    # the family becomes every classification in it (same matches, checked names).
    names: list[str] = []
    for label in cond["classifications"]:
        family = label.removesuffix(".*") + "." if label.endswith(".*") else None
        expanded = [n for n in classification_names if family and n.startswith(family)]
        for name in expanded or ([] if family else [label]):
            if name not in names:
                names.append(name)
    cond["classifications"] = names
    return cond


def _scan(datasource: Datasource) -> dict[str, Any]:
    """Scan settings. The interval is 0: the control plane schedules scans (Celery beat
    sets ``requested`` when one is due), so one clock decides and a sidecar never
    scans twice for one interval."""
    schedule = ScanSchedule.objects.filter(datasource=datasource).first() or ScanSchedule()
    return {
        "interval_seconds": 0,
        "sample_rows": schedule.sample_rows,
        "statement_timeout_ms": schedule.statement_timeout_ms,
        "requested": schedule.requested or None,
    }


def _break_glass(datasource: Datasource, now: Any, identities: set[str]) -> list[dict[str, Any]]:
    """The datasource's active, unexpired break-glass grants for identities the bundle lists
    (the engine lifts their floor rules until ``expires_at`` by its own clock too)."""
    grants = (
        BreakGlassGrant.objects.filter(
            datasource=datasource, state=BreakGlassState.ACTIVE, expires_at__gt=now
        )
        .select_related("identity")
        .order_by("pk")
    )
    return [
        {
            "id": str(grant.pk),
            "identity": grant.identity.name,
            "rules": sorted(grant.rules),
            "expires_at": _rfc3339(grant.expires_at),
        }
        for grant in grants
        if grant.identity.name in identities
    ]


def _detectors() -> list[dict[str, Any]]:
    return [
        {
            "name": d.name,
            "classification": d.classification.name,
            "confidence": d.confidence,
            "name_regex": d.name_regex or None,
            "value_regex": d.value_regex or None,
        }
        for d in CustomDetector.objects.filter(enabled=True)
        .select_related("classification")
        .order_by("name")
    ]


def approval_hold_seconds(datasource: Datasource) -> int:
    """How long the sidecar holds a statement for a decision: the datasource's review
    settings (approvals' table, read through the reverse relation: governance
    does not import approvals), else WARDEN_APPROVAL_HOLD_SECONDS; never above the maximum."""
    own = (
        Datasource.objects.filter(pk=datasource.pk)
        .values_list("review_settings__hold_seconds", flat=True)
        .first()
    )
    return int(
        min(own or settings.WARDEN_APPROVAL_HOLD_SECONDS, settings.WARDEN_APPROVAL_MAX_HOLD_SECONDS)
    )


def bundle_lifetime() -> datetime.timedelta:
    """How long after signing a bundle expires (``WARDEN_BUNDLE_LIFETIME_HOURS``)."""
    return datetime.timedelta(hours=settings.WARDEN_BUNDLE_LIFETIME_HOURS)


def bundle_compile(
    *, datasource: Datasource, issued_at: Any = None, lifetime: datetime.timedelta | None = None
) -> dict[str, Any]:
    """The inner bundle of ``datasource`` (revision included), checked by ``load_bundle``.

    ``expires_at`` is ``issued_at`` + ``lifetime`` (default ``bundle_lifetime()``)."""
    now = timezone.now()
    issued = issued_at or now
    schema = _schema(datasource)
    known_columns = {
        (t["schema"], t["name"]): {c["name"]: c["type"] for c in t["columns"]}
        for t in schema["tables"]
    }
    environment = datasource.environment
    protect_threshold = environment.protect_threshold
    column_classifications = []
    skipped = []
    # Confirmed and auto-applied classifications are enforced; a rejected one never
    # is. A proposal waits for a person, except where the environment has a protect
    # threshold: at or above it, it is enforced at once as "provisional" (masked
    # with its classification's default until reviewed, audited only for services).
    statuses = ENFORCED_STATUSES if protect_threshold is None else ENFORCED_OR_PROVISIONAL
    for cc in (
        ColumnClassification.objects.filter(datasource=datasource, status__in=statuses)
        .select_related("classification")
        .order_by("schema_name", "table_name", "column_name", "path")
    ):
        enforcement = cc.enforcement(protect_threshold)
        if enforcement is None:
            continue
        column_type = known_columns.get((cc.schema_name, cc.table_name), {}).get(cc.column_name)
        if column_type is None:
            # Not in the snapshot, so no statement can be rewritten around it; the
            # next scan brings the column (and this classification) back.
            skipped.append(cc.column_path)
            continue
        entry: dict[str, Any] = {
            "schema": cc.schema_name,
            "table": cc.table_name,
            "column": cc.column_name,
            "classification": cc.classification.name,
        }
        if cc.path:
            if not _path_fits(cc.path, column_type):
                # The column's type changed under the path (no longer JSON or an
                # array): the engine could not place it; the next scan re-finds it.
                skipped.append(f"{cc.column_path} {cc.path}")
                continue
            entry["path"] = cc.path
        if enforcement == PROVISIONAL:
            # Only when true: a bundle without provisional columns stays loadable
            # by sidecars that predate the field.
            entry["provisional"] = True
        column_classifications.append(entry)
    if skipped:
        logger.warning(
            "bundle for %s: classifications of columns missing from the snapshot: %s",
            datasource.name,
            ", ".join(skipped),
        )
    rules = (
        MaskingRule.objects.filter(enabled=True)
        .select_related("classification")
        .prefetch_related("exempt_teams")
        .order_by("classification__name", "name")
    )
    guardrails = (
        GuardrailRule.objects.filter(Q(datasource__isnull=True) | Q(datasource=datasource))
        .order_by("position")
        .all()
    )
    classifications = list(Classification.objects.order_by("name"))
    classification_names = [c.name for c in classifications]
    identities = _identities(datasource, now)
    masking_rules = [
        {
            "classification": rule.classification.name,
            "strategy": rule.strategy,
            "params": _masking_params(rule),
            "exempt_teams": sorted(t.slug for t in rule.exempt_teams.all()),
            "environments": list(rule.environments),
        }
        for rule in rules
    ]
    masking_rules += _default_masking_rules(
        environment.name, classifications, column_classifications, masking_rules
    )
    datasource_entry: dict[str, Any] = {
        "name": datasource.name,
        "engine": datasource.engine,
        "dialect": datasource.dialect,
        "environment": environment.name,
        "criticality": environment.criticality,
    }
    if datasource.mask_services_provisionally:
        # Only when on, like ``provisional``: older sidecars refuse unknown fields.
        datasource_entry["mask_services_provisionally"] = True
    # Only a bundle that uses what 1.1 added (paths, provisional findings, the
    # services switch, the free_text mask) says 1.1: a sidecar that knows only 1
    # keeps taking the others, and refuses such a bundle whole, by its format, with
    # a clear message, keeping its current one (docs/bundle-format.md).
    needs_1_1 = (
        any("path" in c or "provisional" in c for c in column_classifications)
        or "mask_services_provisionally" in datasource_entry
        or any(r["strategy"] == "free_text" for r in masking_rules)
    )
    # 1.2 (credential prefixes) includes all of 1.1; likewise written only when used.
    needs_1_2 = any("prefix" in c for i in identities for c in i["credentials"])
    bundle: dict[str, Any] = {
        "format": FORMAT_AGENTS if needs_1_2 else FORMAT_PATHS if needs_1_1 else FORMAT,
        "issued_at": _rfc3339(issued),
        "expires_at": _rfc3339(issued + (lifetime or bundle_lifetime())),
        "datasource": datasource_entry,
        "schema": schema,
        "identities": identities,
        "classifications": [{"name": c.name, "level": c.level} for c in classifications],
        "column_classifications": column_classifications,
        "masking_rules": masking_rules,
        "guardrails": [
            {
                "name": g.name,
                "position": g.position,
                "enabled": g.enabled,
                "conditions": _conditions(g, classification_names),
                "action": g.action,
                "message": g.message,
            }
            for g in guardrails
        ],
        "risk": dict(RISK_THRESHOLDS),
        "approvals": {"hold_seconds": approval_hold_seconds(datasource)},
        "scan": _scan(datasource),
        "detectors": _detectors(),
        "break_glass": _break_glass(datasource, now, {i["name"] for i in identities}),
    }
    bundle["revision"] = compute_revision(bundle)
    try:
        load_bundle(bundle)
    except BundleError as exc:
        raise BundleCompileError(f"{datasource.name}: {exc}") from exc
    return bundle


# Bumped when what a digest covers changes, so a bundle stored by an older control
# plane (without expires_at) is republished at the next compile.
_DIGEST_VERSION = b"warden.content/2\n"


def content_digest(bundle: dict[str, Any]) -> str:
    """What the policy says, without when it was said or until when: equal digests,
    same policy."""
    content = {k: v for k, v in bundle.items() if k not in {"revision", "issued_at", "expires_at"}}
    return hashlib.sha256(_DIGEST_VERSION + canonical_bytes(content)).hexdigest()


def envelope_bytes(bundle: dict[str, Any]) -> bytes:
    """The signed envelope as served: ``{"bundle": ..., "signature": ...}``, canonical."""
    return canonical_bytes({"bundle": bundle, "signature": bytes_sign(canonical_bytes(bundle))})


# --- publish -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    revision: str
    changed: bool


# A compile holds the datasource's lock at most this long; one that outlived it
# could publish after a newer one.
LOCK_SECONDS = 600
# How far ahead of this host's clock a published issued_at may be followed: the
# sidecars' own bound.
MAX_CLOCK_SKEW = datetime.timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)


def issued_after(previous: str | None, now: datetime.datetime) -> datetime.datetime:
    """The next bundle's issued_at: ``now``, or a microsecond after the last one's when
    that is later. Sidecars order bundles by issued_at and refuse one older than they
    hold, so a publication from a host whose clock is a little behind another's
    (the web process and the workers both publish) would otherwise be refused
    everywhere until the next re-sign (a review's finding). A last one too far ahead
    is not followed: the sidecars refused it, and its successor would be refused too."""
    if previous is None:
        return now
    last = datetime.datetime.fromisoformat(previous.replace("Z", "+00:00"))
    if last > now + MAX_CLOCK_SKEW:
        logger.error("the last bundle was issued at %s, ahead of this host's clock", previous)
        return now
    return max(now, last + datetime.timedelta(microseconds=1))


def bundle_publish(*, datasource: Datasource, force: bool = False) -> Published:
    """Compile, and when the policy changed (or ``force``: a re-sign with a fresh
    ``issued_at``/``expires_at``), sign, store and announce a new revision.

    A lock per datasource serialises compilers, so a slow run that read older rows
    can never publish after a newer one.
    """
    client = redis_client()
    with client.lock(_key(datasource.pk, "lock"), timeout=LOCK_SECONDS, blocking_timeout=60):
        datasource = Datasource.objects.select_related("environment").get(pk=datasource.pk)
        last = client.lindex(_key(datasource.pk, "history"), 0)
        issued = issued_after(last.decode().split(" ", 1)[1] if last else None, timezone.now())
        try:
            bundle = bundle_compile(datasource=datasource, issued_at=issued)
        except BundleCompileError as exc:
            # The previous bundle stays served; say why on the sidecar page.
            client.set(_key(datasource.pk, "error"), str(exc))
            logger.error("bundle not published: %s", exc)
            raise
        digest = content_digest(bundle)
        current = client.mget(_key(datasource.pk, "content"), _key(datasource.pk, "rev"))
        if (
            not force
            and current[0] is not None
            and current[0].decode() == digest
            and current[1] is not None
        ):
            client.delete(_key(datasource.pk, "error"))
            return Published(revision=current[1].decode(), changed=False)
        body = envelope_bytes(bundle)
        revision = bundle["revision"]
        pipe = client.pipeline(transaction=True)
        pipe.set(_key(datasource.pk, "body"), body)
        pipe.set(_key(datasource.pk, "rev"), revision)
        pipe.set(_key(datasource.pk, "content"), digest)
        pipe.delete(_key(datasource.pk, "error"))
        pipe.lpush(_key(datasource.pk, "history"), f"{revision} {bundle['issued_at']}")
        pipe.ltrim(_key(datasource.pk, "history"), 0, HISTORY_LENGTH - 1)
        pipe.publish(CHANNEL, f"bundle {datasource.pk} {revision}")
        pipe.execute()
    logger.info("bundle %s for %s published", revision[:12], datasource.name)
    return Published(revision=revision, changed=True)


def bundle_current(*, datasource_id: int) -> tuple[str, bytes] | None:
    """(revision, envelope) as stored, or None when nothing was published yet."""
    rev, body = redis_client().mget(_key(datasource_id, "rev"), _key(datasource_id, "body"))
    if rev is None or body is None:
        return None
    return rev.decode(), body


def bundle_history(*, datasource_id: int) -> list[str]:
    """Recent revisions of a datasource, newest first."""
    items = redis_client().lrange(_key(datasource_id, "history"), 0, HISTORY_LENGTH - 1)
    return [item.decode().split(" ", 1)[0] for item in items]


def bundle_error(*, datasource_id: int) -> str:
    raw = redis_client().get(_key(datasource_id, "error"))
    return raw.decode() if raw else ""


def bundles_publish_all(
    *, datasource_ids: list[int] | None = None, force: bool = False
) -> dict[int, Published]:
    """Recompile every datasource (or those given); one that fails does not stop the rest."""
    qs = Datasource.objects.all()
    if datasource_ids is not None:
        qs = qs.filter(pk__in=datasource_ids)
    results: dict[int, Published] = {}
    busy: list[int] = []
    for datasource in qs.order_by("pk"):
        try:
            results[datasource.pk] = bundle_publish(datasource=datasource, force=force)
        except BundleCompileError:
            continue
        except redis.exceptions.LockError:
            # Another compile of it is still running, which may have read the policy
            # before the change this one is for: the rest go on, and this one is
            # compiled again shortly rather than wait for the next change or re-sign.
            logger.warning("bundle of %s not published yet: its lock is held", datasource.name)
            busy.append(datasource.pk)
    if busy:
        from governance.tasks import bundles_recompile

        try:
            bundles_recompile.apply_async(kwargs={"datasource_ids": busy}, countdown=30)
        except Exception:
            logger.exception("could not enqueue the bundle recompile of %s", busy)
    return results


def bundles_resign() -> dict[int, Published]:
    """Recompile and re-sign every datasource's bundle with a fresh ``issued_at`` and
    ``expires_at``, changed or not (Celery beat, every ``WARDEN_BUNDLE_RESIGN_HOURS``).

    A new revision each time, so the long-poll's ETag changes and every sidecar
    fetches the renewed expiry. A datasource that no longer compiles keeps its old
    bundle, which then expires: its sidecars enforce it for their grace period and
    then refuse new sessions (the compile error shows on the sidecar list).
    """
    results = bundles_publish_all(force=True)
    logger.info("re-signed %d bundle(s)", len(results))
    return results


# --- the hook the services call ------------------------------------------------------


def _datasource_scope(obj: models.Model) -> list[int] | None:
    """The datasources a change to ``obj`` can affect; None means all of them."""
    if isinstance(obj, Datasource):
        return [obj.pk] if obj.pk is not None else None
    if isinstance(obj, ColumnClassification | ScanSchedule | BreakGlassGrant):
        return [obj.datasource_id]
    if isinstance(obj, GuardrailRule) and obj.datasource_id is not None:
        return [obj.datasource_id]
    return None


class _RecompileBatch:
    """The datasources one transaction's changes feed: one recompile for all of them.

    Every change registers its own on-commit callback (Django drops those of a
    savepoint that rolls back, so a batch must not hang on one callback); after the
    commit the first of them to run enqueues the union and the others find it sent.
    Scopes added by a savepoint that rolled back only widen the recompile, which is
    harmless: it compiles what committed. A batch whose whole transaction rolled
    back is never sent, and the next change (in a later transaction) joins it.
    """

    def __init__(self) -> None:
        self.ids: set[int] | None = set()  # None: every datasource
        self.sent = False

    def add(self, scope: list[int] | None) -> None:
        if self.ids is None:
            return
        if scope is None:
            self.ids = None
        else:
            self.ids.update(scope)

    def send(self) -> None:
        if self.sent:
            return
        self.sent = True
        if getattr(_batches, "current", None) is self:
            _batches.current = None
        from governance.tasks import bundles_recompile

        ids = None if self.ids is None else sorted(self.ids)
        try:
            bundles_recompile.delay(datasource_ids=ids)
        except Exception:  # the broker being down must not fail a committed change
            logger.exception("could not enqueue the bundle recompile")


# Per thread, as Django's connections are: a transaction never spans threads.
_batches = threading.local()


def bundles_mark_stale(*, obj: models.Model) -> None:
    """Enqueue a recompile of the bundles ``obj`` feeds, once the change commits.

    All the changes of one transaction share one recompile (``_RecompileBatch``):
    seeding the demo, a bulk import or a scan's findings enqueue one task, not one
    per row. Each committed transaction still enqueues its own, so no change waits
    for a later one to reach the sidecars.
    """
    if isinstance(obj, _NOT_POLICY) or obj._meta.app_label != "governance":
        return
    batch = getattr(_batches, "current", None)
    if batch is None or batch.sent:
        batch = _batches.current = _RecompileBatch()
    batch.add(_datasource_scope(obj))
    transaction.on_commit(batch.send)
