"""Load and validate a policy bundle (format ``warden.bundle/1``, ``/1.1``, ``/1.2``) into objects.

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
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from sidecar.engine.canonical import compute_revision
from sidecar.engine.paths import PathError, Step, parse_path, path_applies

FORMAT = "warden.bundle/1"
# 1.1 adds an optional ``path`` to column classifications (inside JSON and array
# columns). The compiler writes 1.1 only for a bundle that has a path, so a sidecar
# that knows only 1 keeps taking every bundle without one, and refuses one with paths
# as an unsupported format (keeping its current bundle) instead of enforcing it
# without the paths' masks.
FORMAT_PATHS = "warden.bundle/1.1"
# 1.2 adds an optional ``prefix`` to credentials: the token's first characters, shown
# in the control plane already, by which the MCP server finds whose bearer token it
# was given (sidecar/mcp/). Written only when a credential has one (agents' and
# services' tokens), for the same reason as 1.1.
FORMAT_AGENTS = "warden.bundle/1.2"
FORMATS = (FORMAT, FORMAT_PATHS, FORMAT_AGENTS)
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
    """How one classified column is masked: strategy and parameters.

    A column classified only inside (JSON or array paths) has strategy ``paths``:
    ``paths`` holds each path's steps and its own masking, and ``exempt_teams`` the
    teams exempt from all of them (so from the column)."""

    classification: str
    strategy: str
    params: dict[str, Any]
    exempt_teams: frozenset[str]
    paths: tuple[tuple[tuple[Step, ...], Masking], ...] = ()


PATHS_STRATEGY = "paths"


def default_masking(classification: str, level: str) -> Masking | None:
    """How a classification with no applicable masking rule is masked (None: not at
    all). The one place this is decided, for whole columns and paths alike."""
    default = DEFAULT_STRATEGY_BY_LEVEL[level]
    if default is None:
        return None
    return Masking(classification, default, {}, frozenset())


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
    # "schema.table.column" -> classification; for a column classified only inside
    # (paths), its most sensitive path's classification.
    column_classifications: dict[str, str]
    masking: dict[str, Masking]  # "schema.table.column" -> masking (only masked columns)
    guardrails: tuple[Guardrail, ...]  # enabled ones, by position
    review_at: int
    block_at: int
    critical_at: int
    hold_seconds: int
    raw: dict[str, Any] = field(repr=False)
    break_glass: tuple[BreakGlass, ...] = ()
    # "schema.table.column" -> {path: classification}, for paths inside JSON/array columns.
    path_classifications: dict[str, dict[str, str]] = field(default_factory=dict)

    def column_labels(self, column_key: str) -> tuple[str, ...]:
        """Every classification of a column: the whole column's and its paths'."""
        labels = set(self.path_classifications.get(column_key, {}).values())
        whole = self.column_classifications.get(column_key)
        if whole is not None:
            labels.add(whole)
        return tuple(sorted(labels))

    # "schema.table.column" of the classifications enforced before anyone reviewed
    # them (scanner findings at or above the environment's protect threshold).
    provisional: frozenset[str] = frozenset()
    # (column key, path steps) of provisional paths inside JSON/array columns.
    provisional_paths: frozenset[tuple[str, tuple[Any, ...]]] = frozenset()
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
                if masking.paths:
                    # Per path: the identity's exemptions, and for a service the paths
                    # enforced only provisionally, stay unmasked; a confirmed path not.
                    kept = tuple(
                        p
                        for p in masking.paths
                        if not (p[1].exempt_teams & identity.teams)
                        and not (spare and (key, p[0]) in self.provisional_paths)
                    )
                    if not kept:
                        continue
                    if len(kept) != len(masking.paths):
                        masking = replace(masking, paths=kept)
                elif spare and key in self.provisional:
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
    if data.get("format") not in FORMATS:
        expected = " or ".join(FORMATS)
        raise BundleError(f"bundle: unsupported format {data.get('format')!r}; expected {expected}")
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
    path_classes: dict[str, dict[str, str]] = {}
    path_steps: dict[tuple[str, str], tuple[Step, ...]] = {}
    provisional: set[str] = set()
    provisional_paths: set[tuple[str, tuple[Step, ...]]] = set()
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
        path = cc.get("path")
        if path is not None:
            if data["format"] == FORMAT:
                raise BundleError(
                    f"column_classifications: {column_key} has a path, "
                    f"which needs format {FORMAT_PATHS}"
                )
            try:
                steps = parse_path(path)
            except PathError as exc:
                raise BundleError(f"column_classifications: {column_key}: {exc}") from None
            column_type = next(c.type for c in classified.columns if c.name == cc["column"])
            if not path_applies(column_type, steps):
                raise BundleError(
                    f"column_classifications: path {path!r} does not fit {column_key} "
                    f"({column_type})"
                )
            paths = path_classes.setdefault(column_key, {})
            if path in paths:
                raise BundleError(f"column_classifications: {column_key} {path} classified twice")
            paths[path] = cc["classification"]
            path_steps[(column_key, path)] = steps
            if cc.get("provisional", False):
                provisional.add(column_key)
                provisional_paths.add((column_key, steps))
            continue
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

    def masking_of(classification: str) -> Masking | None:
        chosen = rule_for.get(classification)
        if chosen is not None:
            return Masking(classification, chosen.strategy, chosen.params, chosen.exempt_teams)
        return default_masking(classification, levels[classification])

    masking: dict[str, Masking] = {}
    for column_key, classification in column_classes.items():
        chosen_masking = masking_of(classification)
        if chosen_masking is not None:
            masking[column_key] = chosen_masking

    rank = {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}
    for column_key, paths in path_classes.items():
        # The most sensitive path speaks for the column where one label is needed.
        top = max(sorted(paths.values()), key=lambda name: rank[levels[name]])
        column_classes.setdefault(column_key, top)
        if column_key in masking:
            continue  # the whole column is masked: its paths with it
        masked_paths = tuple(
            (path_steps[(column_key, path)], m)
            for path, label in sorted(paths.items())
            if (m := masking_of(label)) is not None
        )
        if masked_paths:
            exempt = frozenset.intersection(*(m.exempt_teams for _, m in masked_paths))
            masking[column_key] = Masking(top, PATHS_STRATEGY, {}, exempt, masked_paths)

    identities: dict[str, Identity] = {}
    for i in data["identities"]:
        if i["name"] in identities:
            raise BundleError(f"identities: duplicate {i['name']!r}")
        if data["format"] != FORMAT_AGENTS and any("prefix" in c for c in i["credentials"]):
            raise BundleError(
                f"identities: {i['name']} has a credential prefix, which needs format "
                f"{FORMAT_AGENTS}"
            )
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
        path_classifications=path_classes,
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
        provisional_paths=frozenset(provisional_paths),
        mask_services_provisionally=bool(
            data["datasource"].get("mask_services_provisionally", False)
        ),
    )
