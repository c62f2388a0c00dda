"""Paths inside JSON and array columns: the syntax, and what the bundle loader accepts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sidecar.engine import BundleError, compute_revision, load_bundle
from sidecar.engine.paths import PathError, format_path, parse_path, path_applies
from tests.sidecar.engine.test_masking_paths_pg import paths_bundle


@pytest.mark.parametrize(
    ("path", "steps"),
    [
        ("profile.email", ("profile", "email")),
        ("[]", (None,)),
        ("tags[]", ("tags", None)),
        ("contacts[].phone", ("contacts", None, "phone")),
        ("[].x[][]", (None, "x", None, None)),
        ("a\\.b.c", ("a.b", "c")),
        ("x\\[0\\]", ("x[0]",)),
        ("back\\\\slash", ("back\\slash",)),
        ("ünïcode key.d'quote", ("ünïcode key", "d'quote")),
    ],
)
def test_paths_round_trip(path: str, steps: tuple[str | None, ...]) -> None:
    parsed = parse_path(path)
    assert tuple(s.key for s in parsed) == steps
    assert format_path(parsed) == path


@pytest.mark.parametrize(
    "path", [".a", "a.", "a..b", "a[", "a]", "a[0]", "a.[]x", "\\q", "a\nb", "x" * 201]
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path)


def test_where_a_path_applies() -> None:
    assert path_applies("jsonb", parse_path("a.b"))
    assert path_applies("json", parse_path("[]"))
    assert path_applies("text[]", parse_path("[]"))
    assert path_applies("character varying(64)[]", parse_path("[]"))
    assert path_applies("jsonb[]", parse_path("[].number"))
    assert not path_applies("text[]", parse_path("[].number"))  # text has no keys
    assert not path_applies("text[]", parse_path("a"))
    assert not path_applies("text", parse_path("a"))
    assert not path_applies("jsonb", ())


def test_a_bundle_with_paths_loads() -> None:
    bundle = load_bundle(paths_bundle())
    assert bundle.path_classifications["public.people.doc"]["profile.email"] == "pii.email"
    # The column's own label is its most sensitive path's (restricted beats confidential).
    assert bundle.column_classifications["public.people.doc"] in ("pii.ssn", "secret.token")
    assert "pii.phone" in bundle.column_labels("public.people.doc")
    masking = bundle.masking["public.people.doc"]
    assert masking.strategy == "paths" and len(masking.paths) == 4
    assert masking.exempt_teams == frozenset()  # secret.token's rule exempts nobody
    who = bundle.identities["frank"]  # finance: exempt from the card rule only
    assert "cards" not in bundle.masked_columns_for(who, bundle.tables["public.people"])


def _refused(mutate: Any, expected: str) -> None:
    data = paths_bundle()
    mutate(data)
    data["revision"] = compute_revision(data)
    with pytest.raises(BundleError, match=expected):
        load_bundle(data)


def _classify(column: str, path: str, classification: str = "pii.email") -> Any:
    def apply(data: dict[str, Any]) -> None:
        data["column_classifications"].append(
            {
                "schema": "public",
                "table": "people",
                "column": column,
                "path": path,
                "classification": classification,
            }
        )

    return apply


def test_paths_need_the_new_minor_version() -> None:
    _refused(lambda d: d.update(format="warden.bundle/1"), "needs format warden.bundle/1.1")


def test_a_newer_format_is_refused_whole() -> None:
    # What a sidecar that knows only warden.bundle/1 does with a 1.1 bundle.
    _refused(lambda d: d.update(format="warden.bundle/1.9"), "unsupported format")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_classify("note", "a"), "does not fit public.people.note"),
        (_classify("tags", "[].x"), "does not fit"),
        (_classify("doc", "a..b"), "empty key"),
        (_classify("doc", "profile.email", "pii.phone"), "classified twice"),
        (_classify("doc", ""), "schema violation"),
        (_classify("doc", "a", "pii.nope"), "unknown classification"),
    ],
)
def test_bad_path_classifications_refuse_the_bundle(mutate: Any, expected: str) -> None:
    _refused(mutate, expected)


def test_a_bundle_without_paths_is_unchanged() -> None:
    data = copy.deepcopy(paths_bundle())
    data["format"] = "warden.bundle/1"
    data["column_classifications"] = [c for c in data["column_classifications"] if "path" not in c]
    data["revision"] = compute_revision(data)
    bundle = load_bundle(data)
    assert not bundle.path_classifications
    assert all(not m.paths for m in bundle.masking.values())
