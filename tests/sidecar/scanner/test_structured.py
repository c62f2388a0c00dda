"""PII inside JSON and array columns: a real scan finds it per path, within its bounds."""

from __future__ import annotations

import json

import psycopg

from sidecar.engine.paths import parse_path
from sidecar.scanner import ScanSettings, run_scan
from sidecar.scanner.reporter import legacy_body
from sidecar.scanner.structured import MAX_DEPTH, MAX_PATHS, path_samples

EMAILS = [f"jane.doe{i}@mail{i % 3}.example.org" for i in range(30)]


def _findings(url: str) -> dict[tuple[str, str, str], tuple[str, float]]:
    report = run_scan(url, settings=ScanSettings(sample_rows=50))
    assert not report.errors
    return {(f.table, f.column, f.path): (f.classification, f.confidence) for f in report.findings}


def test_json_and_array_columns_are_classified_per_path(scratch_url: str) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE accounts (
                id int, doc jsonb, legacy json, tags text[], phones varchar(40)[],
                cards jsonb[], flags boolean[], settings jsonb);
            INSERT INTO accounts
            SELECT i,
                   jsonb_build_object(
                       'profile', jsonb_build_object(
                           'email', 'jane.doe' || i || '@mail' || (i % 3) || '.example.org',
                           'nickname', 'player' || i),
                       'contacts', jsonb_build_array(
                           jsonb_build_object('phone', '+1 415 555 ' || lpad((100 + i)::text, 4, '0'),
                                              'kind', 'home')),
                       'ssn.value', lpad((100 + i)::text, 3, '0') || '-45-' || lpad((1000 + i)::text, 4, '0'),
                       'count', i),
                   json_build_object('contact', json_build_object(
                       'email_address', 'j' || i || '@example.net'))::json,
                   ARRAY['hello', 'world'],
                   ARRAY['+44 20 7946 ' || lpad((1000 + i)::text, 4, '0')],
                   ARRAY[jsonb_build_object('card_number', '4111111111111111', 'brand', 'visa')],
                   ARRAY[true, false],
                   '{"theme": "dark", "font_size": 12}'
            FROM generate_series(1, 40) i;
            """  # noqa: E501
        )
    found = _findings(scratch_url)
    assert found[("accounts", "doc", "profile.email")][0] == "pii.email"
    assert found[("accounts", "doc", "contacts[].phone")][0] == "pii.phone"
    assert found[("accounts", "doc", "ssn\\.value")][0] == "pii.ssn"  # a key with a dot
    assert found[("accounts", "legacy", "contact.email_address")][0] == "pii.email"
    assert found[("accounts", "phones", "[]")][0] == "pii.phone"
    assert found[("accounts", "cards", "[].card_number")][0] == "financial.card"
    assert found[("accounts", "doc", "profile.email")][1] >= 0.9
    # Nothing in the harmless paths, and no whole-column finding for the JSON columns.
    for key in found:
        assert key[2] not in ("profile.nickname", "count", "contacts[].kind", "theme"), key
        assert key[1] not in ("tags", "flags", "settings"), key
        assert not (key[1] in ("doc", "legacy", "cards") and key[2] == ""), key
    # Every path is one the engine can place.
    for _, _, path in found:
        if path:
            parse_path(path)


def test_the_report_carries_the_path_and_an_old_control_plane_gets_none(
    scratch_url: str,
) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int, doc jsonb, email text)")
        for i, email in enumerate(EMAILS):
            conn.execute(
                "INSERT INTO t VALUES (%s, %s, %s)",
                (i, json.dumps({"user": {"email": email}}), email),
            )
    body = run_scan(scratch_url, settings=ScanSettings()).body()
    paths = {(f["column"], f.get("path")) for f in body["findings"]}
    assert ("doc", "user.email") in paths and ("email", None) in paths
    text = json.dumps(body)
    assert not any(email in text for email in EMAILS)  # figures and names only
    # A control plane that refuses the new keys gets the old shape, without the
    # path findings (it would take them for the whole column).
    assert {f["column"] for f in legacy_body(body)["findings"]} == {"email"}


def test_oversized_values_are_not_read(scratch_url: str) -> None:
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (doc jsonb)")
        for email in EMAILS:
            conn.execute(
                "INSERT INTO big VALUES (%s)",
                (json.dumps({"email": email, "padding": "x" * 20_000}),),
            )
    assert not any(key[0] == "big" for key in _findings(scratch_url))


def test_the_walk_is_bounded() -> None:
    deep: object = "jane@example.org"
    for _ in range(MAX_DEPTH + 3):
        deep = {"k": deep}
    wide = {f"key{i}": f"v{i}" for i in range(MAX_PATHS * 2)}
    samples = path_samples("c", [json.dumps(deep), json.dumps(wide), "not json", "[1, true]"])
    assert len(samples) == MAX_PATHS
    assert all(len(parse_path(s.path)) <= MAX_DEPTH for s in samples)
    assert "k" not in {s.name for s in samples}  # the deep leaf is below the bound
    numbers = path_samples("c", ["[1, 2.5, null, true]"])
    assert [(s.path, s.values, s.family) for s in numbers] == [("[]", ["1", "2.5"], "number")]
    # Only keys that name fields lead to paths (test_a_key_that_is_a_value...): not
    # an empty one, one with a control character, brackets or a backslash.
    odd = path_samples("c", [json.dumps({"": 1, "a\nb": 2, "x[0]": "v", "a\\b": "w", "a.b": "z"})])
    assert {s.path for s in odd} == {"a\\.b"}


def test_a_key_that_is_a_value_is_never_a_path(scratch_url: str) -> None:
    """A review's finding: keys can be data. A map keyed by e-mail address or SSN made
    finding paths that carried them raw: to the control plane, into its change
    history, into every bundle and into rewritten statements. The scanner descends
    only through keys that name fields, and the schema intake takes no other."""
    ssns = [f"{100 + i:03d}-45-{1000 + i:04d}" for i in range(40)]
    with psycopg.connect(scratch_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE directory (id int, doc jsonb)")
        for i, ssn in enumerate(ssns):
            doc = {
                "by_email": {EMAILS[i % len(EMAILS)]: {"email": EMAILS[i % len(EMAILS)]}},
                "ssn_index": {ssn: {"note": "x"}},
                "owner": {"email": EMAILS[i % len(EMAILS)]},
            }
            conn.execute("INSERT INTO directory VALUES (%s, %s)", (i, json.dumps(doc)))
    found = _findings(scratch_url)
    paths = [path for (table, _, path) in found if table == "directory"]
    assert "owner.email" in paths  # a field's name still leads to its finding
    # What lies under a key that is a value counts for the last path of names: the
    # map as a whole is found to hold e-mail addresses (masking it whole).
    assert found[("directory", "doc", "by_email")][0] == "pii.email"
    text = json.dumps(paths)
    assert not any(value in text for value in EMAILS + ssns), paths
    assert not any("@" in path for path in paths)
