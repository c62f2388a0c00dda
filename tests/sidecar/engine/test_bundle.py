"""Loading bundles: what is understood loads whole, anything else is refused whole."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sidecar.engine import BundleError, canonical_bytes, compute_revision, load_bundle
from tests.sidecar.engine.conftest import bundle_data


def _resigned(data: dict[str, Any]) -> dict[str, Any]:
    data["revision"] = compute_revision(data)
    return data


def test_fixture_bundles_load() -> None:
    for name in ("demo-production", "demo-staging"):
        bundle = load_bundle(bundle_data(name))
        assert bundle.revision == bundle_data(name)["revision"]
        assert "public.customers" in bundle.tables


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_bytes({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_bytes({"x": float("nan")})


def test_revision_ignores_its_own_key() -> None:
    data = bundle_data("demo-production")
    assert compute_revision({**data, "revision": "x"}) == data["revision"]


def test_defaults_mask_restricted_and_confidential_columns_without_rule() -> None:
    bundle = load_bundle(bundle_data("demo-production"))
    assert bundle.masking["public.customers.profile"].strategy == "redact"  # restricted, no rule
    assert bundle.masking["hr.employees.salary"].strategy == "redact"  # confidential, no rule
    assert "public.customers.tier" not in bundle.masking  # internal: not masked by default
    # A rule scoped to another environment does not apply here.
    assert bundle.masking["public.payments.card_number"].strategy == "partial"
    staging = load_bundle(bundle_data("demo-staging"))
    assert staging.masking["public.payments.card_number"].strategy == "redact"


def _mutations() -> list[tuple[str, Any]]:
    def set_path(path: list[Any], value: Any) -> Any:
        def apply(d: dict[str, Any]) -> None:
            target: Any = d
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        return apply

    def delete(path: list[Any]) -> Any:
        def apply(d: dict[str, Any]) -> None:
            target: Any = d
            for key in path[:-1]:
                target = target[key]
            del target[path[-1]]

        return apply

    return [
        ("unsupported format", set_path(["format"], "warden.bundle/2")),
        ("schema violation", set_path(["datasource", "environment"], 3)),
        ("schema violation", set_path(["surprise"], True)),
        ("schema violation", delete(["guardrails"])),
        ("schema violation", set_path(["masking_rules", 0, "strategy"], "rot13")),
        ("schema violation", set_path(["guardrails", 1, "action"], "maybe")),
        ("schema violation", set_path(["guardrails", 1, "conditions", "colour"], ["red"])),
        ("schema violation", set_path(["schema", "tables", 0, "columns", 0, "type"], "int; --")),
        # The masking key lives in the protected database, never in a bundle.
        ("schema violation", set_path(["datasource", "masking_key"], "k" * 32)),
        ("schema violation", set_path(["identities", 0, "kind"], "robot")),
        (
            "unknown classification",
            set_path(["guardrails", 1, "conditions", "classifications"], ["pii.nope"]),
        ),
        ("unknown classification", set_path(["masking_rules", 0, "classification"], "pii.nope")),
        (
            "unknown classification",
            set_path(["column_classifications", 0, "classification"], "pii.nope"),
        ),
        ("unknown table", set_path(["column_classifications", 0, "table"], "nope")),
        ("unknown column", set_path(["column_classifications", 0, "column"], "nope")),
        ("duplicate", set_path(["identities", 1, "name"], "alice")),
        ("invalid timestamp", set_path(["identities", 0, "expires_at"], "2026-13-45T99:99:99Z")),
    ]


@pytest.mark.parametrize(("expected", "mutate"), _mutations())
def test_refused_whole(expected: str, mutate: Any) -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    mutate(data)
    _resigned(data)
    with pytest.raises(BundleError, match=expected):
        load_bundle(data)


def test_a_credential_prefix_needs_format_1_2() -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["identities"][0]["credentials"][0]["prefix"] = "wdn_abc123"
    _resigned(data)
    with pytest.raises(BundleError, match=r"needs format warden.bundle/1\.2"):
        load_bundle(data)
    data["format"] = "warden.bundle/1.2"
    _resigned(data)
    loaded = load_bundle(data)
    assert loaded.identities[data["identities"][0]["name"]].credentials[0]["prefix"] == "wdn_abc123"
    data["identities"][0]["credentials"][0]["prefix"] = "not a prefix!"
    _resigned(data)
    with pytest.raises(BundleError, match="schema violation"):
        load_bundle(data)


def test_revision_must_match_content() -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["datasource"]["criticality"] = 1
    with pytest.raises(BundleError, match="revision"):
        load_bundle(data)


def test_not_an_object() -> None:
    for value in (None, [], "x", json.dumps(bundle_data("demo-production"))):
        with pytest.raises(BundleError):
            load_bundle(value)


@pytest.mark.parametrize(
    "column_type",
    [
        "timestamp(3) without time zone",
        "numeric(10,2)[]",
        "bit varying(8)",
        "interval day to second",
        "public.mood",
        '"MyType"',
        'app."Weird Type"',
        "double precision",
    ],
)
def test_column_types_as_postgresql_prints_them(column_type: str) -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["schema"]["tables"][0]["columns"][0]["type"] = column_type
    assert load_bundle(_resigned(data)).tables["public.customers"].columns[0].type == column_type


@pytest.mark.parametrize(
    "column_type", ["text; DROP TABLE x", "text)", "int --", '"a""b"', "text /* */", "(int)"]
)
def test_column_types_cannot_smuggle_sql(column_type: str) -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["schema"]["tables"][0]["columns"][0]["type"] = column_type
    with pytest.raises(BundleError, match="schema violation"):
        load_bundle(_resigned(data))


def test_unqualified_names_follow_the_datasource_search_path() -> None:
    data = copy.deepcopy(bundle_data("demo-production"))
    data["schema"]["tables"].append(
        {
            "schema": "public",
            "name": "employees",
            "kind": "table",
            "columns": [{"name": "id", "type": "integer"}],
        }
    )
    default = load_bundle(_resigned(data))
    assert default.resolve_table(None, "employees").key == "public.employees"
    data["datasource"]["search_path"] = ["hr", "public"]
    hr_first = load_bundle(_resigned(data))
    assert hr_first.resolve_table(None, "employees").key == "hr.employees"
    assert hr_first.resolve_table(None, "customers").key == "public.customers"
