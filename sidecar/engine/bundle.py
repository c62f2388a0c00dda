"""Load and validate a policy bundle (format ``warden.bundle/1``) into frozen objects.

A bundle is refused whole when anything in it is not understood: an unknown
format version, a schema violation (checked against ``bundle.schema.json``), a
revision that does not match the content, or a dangling reference (a column
classification naming an unknown table, a guardrail naming an unknown
classification...). Nothing is ever half-applied: ``load_bundle`` either
returns a complete ``Bundle`` or raises ``BundleError``. See
``docs/bundle-format.md`` for the contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from sidecar.engine.canonical import compute_revision

FORMAT = "warden.bundle/1"
# Safe by default: a classified column with no masking rule for the environment
# is still masked when its level says the data must not leave unmasked. The
# control plane compiles each built-in classification's own default mask into
# ``masking_rules`` (docs/masking.md, "Default masks"), so this level default is
# what a custom classification, or an offline bundle without those rules, gets.
DEFAULT_STRATEGY_BY_LEVEL: dict[str, str | None] = {
    "public": None,
    "internal": None,
    "confidential": "redact",
    "restricted": "redact",
}


class BundleError(ValueError):
    """The bundle cannot be used; ``str(error)`` says why."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    kind: str
    columns: tuple[Column, ...]
    # The column names, for membership tests on the decision path (built once).
    names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(c.name for c in self.columns))

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.name}"

    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    kind: str
    teams: frozenset[str]
    owner: str | None
    expires_at: float | None  # POSIX seconds
    credentials: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class BreakGlass:
    """An audited, expiring grant that lifts named safety-floor rules for one identity."""

    id: str
    identity: str
    rules: frozenset[str]
    expires_at: float  # POSIX seconds


@dataclass(frozen=True, slots=True)
class MaskingRule:
    classification: str
    strategy: str
    params: dict[str, Any]
    exempt_teams: frozenset[str]
    environments: frozenset[str]


@dataclass(frozen=True, slots=True)
class Conditions:
    environments: frozenset[str] = frozenset()
    identity_kinds: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()
    statement_kinds: frozenset[str] = frozenset()
    tables: frozenset[str] = frozenset()
    classifications: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    missing_where: bool | None = None
    unbounded_classified_read: bool | None = None
    multi_statement: bool | None = None
    unparseable: bool | None = None


@dataclass(frozen=True, slots=True)
class Guardrail:
    name: str
    position: int
    enabled: bool
    conditions: Conditions
    action: str
    message: str


@dataclass(frozen=True, slots=True)
class Masking:
    """How one classified column is masked: strategy and parameters."""

    classification: str
    strategy: str
    params: dict[str, Any]
    exempt_teams: frozenset[str]


@dataclass(frozen=True)
class Bundle:
    revision: str
    issued_at: str
    datasource_name: str
    environment: str
    criticality: int
    search_path: tuple[str, ...]  # the upstream role's effective schemas, in order
    tables: dict[str, Table]  # "schema.table" -> Table
    tables_by_name: dict[str, tuple[Table, ...]]
    identities: dict[str, Identity]
    classification_levels: dict[str, str]
    column_classifications: dict[str, str]  # "schema.table.column" -> classification
    masking: dict[str, Masking]  # "schema.table.column" -> masking (only masked columns)
    guardrails: tuple[Guardrail, ...]  # enabled ones, by position
    review_at: int
    block_at: int
    critical_at: int
    hold_seconds: int
    raw: dict[str, Any] = field(repr=False)
    break_glass: tuple[BreakGlass, ...] = ()
    # "schema.table.column" of the classifications enforced before anyone reviewed
    # them (scanner findings at or above the environment's protect threshold).
    provisional: frozenset[str] = frozenset()
    # Mask provisional columns for service identities too (else only audited).
    mask_services_provisionally: bool = False

    def resolve_table(
        self, schema: str | None, name: str, search_path: tuple[str, ...] | None = None
    ) -> Table | None:
        """The snapshot table a (possibly unqualified) name designates, if known.

        Unqualified names resolve through ``search_path``, the session's effective
        schemas as the server confirmed them (default: the datasource's), then to a
        name that exists in exactly one schema of the snapshot, so that a name the
        server may not find is still treated as the classified table it could be.
        """
        if schema is not None:
            return self.tables.get(f"{schema}.{name}")
        for entry in self.search_path if search_path is None else search_path:
            table = self.tables.get(f"{entry}.{name}")
            if table is not None:
                return table
        candidates = self.tables_by_name.get(name, ())
        return candidates[0] if len(candidates) == 1 else None

    def spares_provisional(self, identity: Identity) -> bool:
        """Whether provisional columns stay unmasked (and are only audited) for
        ``identity``: a service, unless the datasource masks them for services too,
        so an application never reads a masked value and writes it back."""
        return identity.kind == "service" and not self.mask_services_provisionally

    def masked_columns_for(self, identity: Identity, table: Table) -> dict[str, Masking]:
        """Column name -> masking for the columns of ``table`` masked for ``identity``."""
        out: dict[str, Masking] = {}
        spare = self.provisional and self.spares_provisional(identity)
        for column in table.columns:
            key = f"{table.key}.{column.name}"
            masking = self.masking.get(key)
            if masking is not None and not (masking.exempt_teams & identity.teams):
                if spare and key in self.provisional:
                    continue
                out[column.name] = masking
        return out

    def spared_columns_for(self, identity: Identity, table: Table) -> tuple[str, ...]:
        """The columns of ``table`` that would be masked for ``identity`` but for being
        provisional (``spares_provisional``): what the audit trail records as
        "would have masked"."""
        if not (self.provisional and self.spares_provisional(identity)):
            return ()
        out = []
        for column in table.columns:
            key = f"{table.key}.{column.name}"
            masking = self.masking.get(key)
            if (
                key in self.provisional
                and masking is not None
                and not (masking.exempt_teams & identity.teams)
            ):
                out.append(column.name)
        return tuple(out)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(__file__).with_name("bundle.schema.json").read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema)


def bundle_schema() -> dict[str, Any]:
    """The JSON Schema of the inner bundle object."""
    return dict(_validator().schema)


def _timestamp(value: str | None, where: str) -> float | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise BundleError(f"{where}: invalid timestamp {value!r}") from exc


def load_bundle(data: Any) -> Bundle:
    """Validate the inner ``bundle`` dict and return a frozen ``Bundle``."""
    if not isinstance(data, dict):
        raise BundleError("bundle: expected a JSON object")
    if data.get("format") != FORMAT:
        raise BundleError(f"bundle: unsupported format {data.get('format')!r}; expected {FORMAT}")
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise BundleError(f"bundle: schema violation at {where}: {first.message}")
    try:
        revision = compute_revision(data)
    except ValueError as exc:
        raise BundleError(f"bundle: not canonical JSON: {exc}") from exc
    if revision != data["revision"]:
        raise BundleError("bundle: revision does not match its content")

    tables: dict[str, Table] = {}
    by_name: dict[str, list[Table]] = {}
    for t in data["schema"]["tables"]:
        names = [c["name"] for c in t["columns"]]
        if len(set(names)) != len(names):
            raise BundleError(f"schema: duplicate column in {t['schema']}.{t['name']}")
        table = Table(t["schema"], t["name"], t["kind"], tuple(Column(**c) for c in t["columns"]))
        if table.key in tables:
            raise BundleError(f"schema: duplicate table {table.key}")
        tables[table.key] = table
        by_name.setdefault(table.name, []).append(table)

    levels: dict[str, str] = {}
    for c in data["classifications"]:
        if c["name"] in levels:
            raise BundleError(f"classifications: duplicate {c['name']!r}")
        levels[c["name"]] = c["level"]

    column_classes: dict[str, str] = {}
    provisional: set[str] = set()
    for cc in data["column_classifications"]:
        key = f"{cc['schema']}.{cc['table']}"
        classified = tables.get(key)
        if classified is None:
            raise BundleError(f"column_classifications: unknown table {key}")
        if cc["column"] not in classified.names:
            raise BundleError(f"column_classifications: unknown column {key}.{cc['column']}")
        if cc["classification"] not in levels:
            raise BundleError(
                f"column_classifications: unknown classification {cc['classification']!r}"
            )
        column_key = f"{key}.{cc['column']}"
        if column_key in column_classes:
            raise BundleError(f"column_classifications: {column_key} classified twice")
        column_classes[column_key] = cc["classification"]
        if cc.get("provisional", False):
            provisional.add(column_key)

    environment = data["datasource"]["environment"]
    rule_for: dict[str, MaskingRule] = {}
    for r in data["masking_rules"]:
        if r["classification"] not in levels:
            raise BundleError(f"masking_rules: unknown classification {r['classification']!r}")
        rule = MaskingRule(
            r["classification"],
            r["strategy"],
            dict(r["params"]),
            frozenset(r["exempt_teams"]),
            frozenset(r["environments"]),
        )
        applies = not rule.environments or environment in rule.environments
        # First rule listed for a classification in this environment wins.
        if applies and rule.classification not in rule_for:
            rule_for[rule.classification] = rule

    masking: dict[str, Masking] = {}
    for column_key, classification in column_classes.items():
        chosen = rule_for.get(classification)
        if chosen is not None:
            masking[column_key] = Masking(
                classification, chosen.strategy, chosen.params, chosen.exempt_teams
            )
        else:
            default = DEFAULT_STRATEGY_BY_LEVEL[levels[classification]]
            if default is not None:
                masking[column_key] = Masking(classification, default, {}, frozenset())

    identities: dict[str, Identity] = {}
    for i in data["identities"]:
        if i["name"] in identities:
            raise BundleError(f"identities: duplicate {i['name']!r}")
        identities[i["name"]] = Identity(
            i["name"],
            i["kind"],
            frozenset(i["teams"]),
            i["owner"],
            _timestamp(i["expires_at"], f"identities/{i['name']}"),
            tuple(dict(c) for c in i["credentials"]),
        )

    guardrails: list[Guardrail] = []
    seen: set[str] = set()
    for g in data["guardrails"]:
        if g["name"] in seen:
            raise BundleError(f"guardrails: duplicate name {g['name']!r}")
        seen.add(g["name"])
        cond = g["conditions"]
        for name in cond.get("classifications", []):
            if name not in levels:
                raise BundleError(f"guardrails/{g['name']}: unknown classification {name!r}")
        conditions = Conditions(
            **{  # type: ignore[arg-type]
                key: (frozenset(value) if isinstance(value, list) else value)
                for key, value in cond.items()
            }
        )
        if g["enabled"]:
            guardrails.append(
                Guardrail(g["name"], g["position"], True, conditions, g["action"], g["message"])
            )
    guardrails.sort(key=lambda g: g.position)

    risk = data["risk"]
    return Bundle(
        revision=revision,
        issued_at=data["issued_at"],
        datasource_name=data["datasource"]["name"],
        environment=environment,
        criticality=data["datasource"]["criticality"],
        search_path=tuple(data["datasource"].get("search_path", ["public"])),
        tables=tables,
        tables_by_name={k: tuple(v) for k, v in by_name.items()},
        identities=identities,
        classification_levels=levels,
        column_classifications=column_classes,
        masking=masking,
        guardrails=tuple(guardrails),
        review_at=risk["review_at"],
        block_at=risk["block_at"],
        critical_at=risk["critical_at"],
        hold_seconds=data["approvals"]["hold_seconds"],
        raw=data,
        break_glass=tuple(
            BreakGlass(
                g["id"],
                g["identity"],
                frozenset(g["rules"]),
                _timestamp(g["expires_at"], f"break_glass/{g['id']}") or 0.0,
            )
            for g in data.get("break_glass", [])
        ),
        provisional=frozenset(provisional),
        mask_services_provisionally=bool(
            data["datasource"].get("mask_services_provisionally", False)
        ),
    )
