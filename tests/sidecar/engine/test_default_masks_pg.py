"""Zero-configuration masking against a real PostgreSQL: each built-in classification's
default mask (``vocabulary.DEFAULT_MASKS``, compiled into ``masking_rules`` by the
control plane) applied to real values, and provisional columns, which are masked
for humans and agents and only audited for services unless the datasource says so."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
import pytest

from sidecar.engine import Engine, compute_revision, load_bundle, vocabulary
from sidecar.engine.masking import FREE_TEXT_PATTERNS

# column, type, classification, value stored, value a human reads (None: NULL).
COLUMNS: list[tuple[str, str, str | None, Any, Any]] = [
    ("id", "integer", None, 1, 1),
    ("email", "text", "pii.email", "jane.doe@example.com", "***@example.com"),
    ("phone", "character varying(32)", "pii.phone", "+1 555 010 4477", "***********4477"),
    ("full_name", "text", "pii.name", "Jane Doe", "***"),
    ("address", "text", "pii.address", "1 Main Street, Springfield", "***"),
    ("birth_date", "date", "pii.dob", datetime.date(1990, 5, 17), None),
    ("ssn", "text", "pii.ssn", "123-45-6789", "*******6789"),
    ("ssn_number", "bigint", "pii.ssn", 123456789, 0),
    ("national_id", "text", "pii.national_id", "AB123456C", "*****456C"),
    ("card", "text", "financial.card", "4111111111111111", "************1111"),
    ("iban", "text", "financial.iban", "GB82WEST12345698765432", "******************5432"),
    ("api_token", "text", "secret.token", "sk_live_51Habcdef", None),
    ("password_hash", "text", "secret.password", "$2b$12$abcdefghijk", None),
    ("ip", "inet", "network.ip", "10.1.2.3", None),
    ("ip_text", "text", "network.ip", "192.168.10.20", None),
    ("diagnosis", "text", "health.record", "Type 2 diabetes", None),
    ("segment", "text", "general.internal", "enterprise", "enterprise"),
    ("slogan", "text", "general.public", "Hello world", "Hello world"),
    (
        "notes",
        "text",
        "pii.free_text",
        "Call +44 20 7946 0958 or mail jane.doe@example.co.uk; card 4111 1111 1111 1111, "
        "SSN 123-45-6789, NINO QQ 12 34 56 C. Order 42 shipped 2024-01-15.",
        "Call [phone] or mail [email]; card [card], SSN [national id], NINO [national id]. "
        "Order 42 shipped 2024-01-15.",
    ),
]
CLASSIFIED = [(c, t, k) for c, t, k, _, _ in COLUMNS if k is not None]


def _bundle(
    provisional: frozenset[str] | set[str] = frozenset(), mask_services: bool = False
) -> Any:
    names = sorted({k for _, _, k in CLASSIFIED})
    levels = {"general.public": "public", "general.internal": "internal", "network.ip": "internal"}
    rules = [r for n in names if (r := vocabulary.default_masking_rule(n)) is not None]
    datasource: dict[str, Any] = {
        "name": "zero",
        "engine": "postgresql",
        "dialect": "postgres",
        "environment": "production",
        "criticality": 5,
    }
    if mask_services:
        datasource["mask_services_provisionally"] = True
    columns = []
    for column, _, classification in CLASSIFIED:
        entry: dict[str, Any] = {
            "schema": "public",
            "table": "zero_config",
            "column": column,
            "classification": classification,
        }
        if column in provisional:
            entry["provisional"] = True
        columns.append(entry)
    data: dict[str, Any] = {
        "format": "warden.bundle/1",
        "issued_at": "2026-01-01T00:00:00Z",
        "datasource": datasource,
        "schema": {
            "tables": [
                {
                    "schema": "public",
                    "name": "zero_config",
                    "kind": "table",
                    "columns": [{"name": c, "type": t} for c, t, _, _, _ in COLUMNS],
                }
            ]
        },
        "identities": [
            {
                "name": name,
                "kind": kind,
                "teams": [],
                "owner": None,
                "credentials": [],
                "expires_at": None,
            }
            for name, kind in [("hana", "human"), ("agent", "agent"), ("svc", "service")]
        ],
        "classifications": [{"name": n, "level": levels.get(n, "restricted")} for n in names],
        "column_classifications": columns,
        "masking_rules": rules,
        "guardrails": [],
        "risk": {"review_at": 101, "block_at": 101, "critical_at": 101},  # masking only
        "approvals": {"hold_seconds": 30},
    }
    data["revision"] = compute_revision(data)
    return load_bundle(data)


@pytest.fixture()
def zero(pg: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    columns = ", ".join(f"{c} {t}" for c, t, _, _, _ in COLUMNS)
    pg.execute(f"CREATE TABLE public.zero_config ({columns})")  # type: ignore[arg-type]
    marks = ", ".join(["%s"] * len(COLUMNS))
    pg.execute(
        f"INSERT INTO public.zero_config VALUES ({marks})",  # type: ignore[arg-type]
        [v for _, _, _, v, _ in COLUMNS],
    )
    return pg


def _read(pg: psycopg.Connection[Any], engine: Engine, identity: str) -> tuple[Any, dict[str, Any]]:
    decision = engine.decide(identity=identity, sql="SELECT * FROM zero_config")
    assert decision.action == "allow", decision.reasons
    with pg.cursor() as cur:
        cur.execute(decision.upstream_sql)  # type: ignore[arg-type]
        assert cur.description is not None
        row = cur.fetchone()
        assert row is not None
        return decision, dict(zip([d.name for d in cur.description], row, strict=True))


def test_every_builtin_classification_has_a_default_the_engine_implements() -> None:
    builtins = {
        "pii.email", "pii.phone", "pii.name", "pii.address", "pii.dob", "pii.ssn",
        "pii.national_id", "pii.free_text", "financial.card", "financial.iban",
        "secret.token", "secret.password", "network.ip", "health.record",
        "general.internal", "general.public",
    }  # fmt: skip
    assert set(vocabulary.DEFAULT_MASKS) == builtins
    for name, default in vocabulary.DEFAULT_MASKS.items():
        if default is not None:
            assert default[0] in vocabulary.MASKING_STRATEGIES, name
    assert {k for _, _, k in CLASSIFIED} == builtins


def test_each_default_mask_applied_to_real_values(zero: psycopg.Connection[Any]) -> None:
    _, row = _read(zero, Engine(_bundle()), "hana")
    assert row == {c: shown for c, _, _, _, shown in COLUMNS}


def test_free_text_masks_every_match_and_keeps_the_rest(zero: psycopg.Connection[Any]) -> None:
    texts = {
        "(555) 123-4567 is my number": "[phone] is my number",
        "no personal data, 12 apples, invoice 2024-01-15": (
            "no personal data, 12 apples, invoice 2024-01-15"
        ),
        "two: a@b.io, c.d+e@f-g.example.org.": "two: [email], [email].",
        "pan 5500-0000-0000-0004 end": "pan [card] end",
        "BSN 123456782 or 06 12 34 56 78": "BSN [phone] or [phone]",  # over-masked as phones
    }
    engine = Engine(_bundle())
    for raw, shown in texts.items():
        zero.execute("UPDATE zero_config SET notes = %s", [raw])
        _, row = _read(zero, engine, "hana")
        assert row["notes"] == shown, raw
    assert all("\\" not in pattern for pattern, _ in FREE_TEXT_PATTERNS)


def test_a_provisional_column_is_masked_for_a_human_and_an_agent(
    zero: psycopg.Connection[Any],
) -> None:
    engine = Engine(_bundle(provisional={"email", "notes"}))
    for identity in ("hana", "agent"):
        decision, row = _read(zero, engine, identity)
        assert row["email"] == "***@example.com"
        st = decision.statements[0]
        assert st.provisional_columns == ("public.zero_config.email", "public.zero_config.notes")
        assert st.would_have_masked == ()


def test_a_provisional_column_is_audited_not_masked_for_a_service(
    zero: psycopg.Connection[Any],
) -> None:
    engine = Engine(_bundle(provisional={"email"}))
    decision, row = _read(zero, engine, "svc")
    assert row["email"] == "jane.doe@example.com"  # an application reads what it wrote
    assert row["ssn"] == "*******6789"  # a reviewed classification is masked for it
    st = decision.statements[0]
    assert "public.zero_config.email" not in st.masked_columns
    assert st.would_have_masked == ("public.zero_config.email",)
    assert st.provisional_columns == ()
    assert decision.to_json(audit=True)["statements"][0]["would_have_masked"] == [
        "public.zero_config.email"
    ]
    # Not read, not recorded.
    only_ssn = engine.decide(identity="svc", sql="SELECT ssn FROM zero_config")
    assert only_ssn.statements[0].would_have_masked == ()


def test_the_datasource_switch_masks_provisional_columns_for_services(
    zero: psycopg.Connection[Any],
) -> None:
    engine = Engine(_bundle(provisional={"email"}, mask_services=True))
    decision, row = _read(zero, engine, "svc")
    assert row["email"] == "***@example.com"
    assert decision.statements[0].provisional_columns == ("public.zero_config.email",)
    assert decision.statements[0].would_have_masked == ()
