"""The detectors as pure functions: good values, tricky values, names that lie."""

from __future__ import annotations

import base64
import datetime

import pytest

from sidecar.scanner.detectors import (
    MIN_VALUES,
    NAME_ONLY_CAP,
    ColumnSample,
    classify,
    combine_confidence,
    custom_detectors,
    is_birth_date,
    is_card,
    is_email,
    is_iban,
    is_ip_address,
    is_national_id,
    is_password,
    is_person_name,
    is_phone,
    is_postal_address,
    is_secret,
    is_ssn,
    shannon_entropy,
)


def column(name: str, values: list[str], *, family: str = "text", type_: str = "text"):
    return ColumnSample(name=name, type=type_, family=family, values=values)


@pytest.mark.parametrize(
    ("matcher", "good", "bad"),
    [
        (
            is_email,
            ["alice@example.com", "j.o'neil+tag@mail.example.co.uk", "X_Y@sub.domain.io"],
            ["alice@", "@example.com", "alice at example.com", "a@b", "user@localhost"],
        ),
        (
            is_phone,
            ["+1 (415) 555-2671", "+44 20 7946 0958", "212-736-5000", "+49 30 1234567"],
            ["123", "2024-01-15", "192.168.100.200", "4111111111111111", "4155552671"],
        ),
        (
            is_ssn,
            ["123-45-6789", "536-90-4399"],
            ["000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "078-05-1120"],
        ),
        (
            is_national_id,
            ["12345678Z", "RSSMRA85T10A562S", "131052-308T", "1 85 05 78 006 084 91"],
            ["12345678A", "123456789", "hello", "RSSMRA85T10A562X"],
        ),
        (
            is_card,
            ["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
            ["4111111111111112", "1234567812345670", "411111111111", "9111111111111111"],
        ),
        (
            is_iban,
            ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "nl91abna0417164300"],
            ["GB82 WEST 1234 5698 7654 33", "DE00370400440532013000", "XX89370400440532013000"],
        ),
        (
            is_ip_address,
            ["192.168.1.10", "8.8.8.8/32", "2001:db8::1", "fe80::1/128"],
            ["10.0.0.0/8", "256.1.1.1", "1.2.3", "12:30:45", "a::b::c"],
        ),
        (
            is_postal_address,
            ["221B Baker Street", "1600 Pennsylvania Ave NW", "Hauptstraße 12", "12 rue de Rome"],
            ["Main street", "the street is busy", "12 apples", "Platform Team"],
        ),
        (
            is_secret,
            [
                "AKIAIOSFODNN7EXAMPLE",
                "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8",
                "xoxb-123456789012-abcdefghijkl",
                "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
                "-----BEGIN RSA PRIVATE KEY-----",
                "dGhpcyBpcyBhIHJhbmRvbSB0b2tlbjEyMzQ1Njc4OTA",
            ],
            [
                "550e8400-e29b-41d4-a716-446655440000",  # a UUID is an id, not a secret
                "hello world this is text",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ],
        ),
    ],
)
def test_validators(matcher, good: list[str], bad: list[str]) -> None:
    for value in good:
        assert matcher(value, False), value
    for value in bad:
        assert not matcher(value, False), value


def test_password_hashes() -> None:
    bcrypt = "$2b$12$" + "R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
    django = "pbkdf2_sha256$870000$abcdEFGH1234$" + "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
    for value in [bcrypt, django, "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub"]:
        assert is_password(value), value
    assert not is_password("hunter2")  # plaintext counts only under a password name
    assert is_password("hunter2", True) and not is_password("two words", True)
    verdict = classify(column("pwd", [bcrypt] * 10))
    assert verdict is not None and verdict.classification == "secret.password"
    # A boolean or a timestamp named after passwords is not one.
    assert classify(column("password_set", ["true"] * 10, family="bool")) is None
    assert classify(column("password_changed_at", ["2024-01-01"] * 10, family="timestamp")) is None


def test_hints_widen_only_what_is_ambiguous() -> None:
    # Bare digit runs are phone numbers, SSNs or BSNs only when the name says so.
    assert not is_phone("4155552671", False) and is_phone("4155552671", True)
    assert not is_ssn("123456789", False) and is_ssn("123456789", True)
    assert not is_national_id("111222333", False) and is_national_id("111222333", True)
    # A lone capitalised word is a surname only in a surname column.
    assert not is_person_name("Okafor", False) and is_person_name("Okafor", True)
    # Lower-case hex of high entropy: a secret under a secret's name, else a checksum.
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert is_secret(digest, True) and not is_secret(digest, False)


def test_person_names() -> None:
    assert is_person_name("Maria Garcia")
    assert is_person_name("Quentin Smith")  # unlisted given name, common family name
    assert is_person_name("Anna van der Berg")
    assert not is_person_name("Ergonomic Chair 12")
    assert not is_person_name("maria garcia")
    assert not is_person_name("Platform Team")
    assert not is_person_name("Paris")


def test_jwt_needs_a_decodable_header() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256"}').decode().rstrip("=")
    assert is_secret(f"{header}.eyJzdWIiOjF9.c2lnbmF0dXJl")
    assert not is_secret("eyJhYWFh.YWFh.YWFh")  # JWT-shaped, but the header is not JSON


def test_birth_dates_are_plausible_dates() -> None:
    assert is_birth_date("1984-06-02")
    assert is_birth_date("02/06/1984")
    assert is_birth_date("1984-06-02 00:00:00")
    assert not is_birth_date("1850-01-01")  # nobody alive
    future = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    assert not is_birth_date(future)
    assert not is_birth_date("2024-13-45")


def test_entropy() -> None:
    assert shannon_entropy("") == 0
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("abcd") == 2


def test_combine_confidence_rules() -> None:
    # The name alone, capped.
    assert combine_confidence(name_prior=0.9, hinted=True, share=0, sampled=0, min_share=0.6) == (
        NAME_ONLY_CAP
    )
    assert combine_confidence(name_prior=0.5, hinted=False, share=0, sampled=0, min_share=0.6) == 0
    # Values contradict the name: no finding.
    assert (
        combine_confidence(name_prior=0.5, hinted=True, share=0.2, sampled=100, min_share=0.6) == 0
    )
    # Values alone decide; a name hint and a larger share only add.
    plain = combine_confidence(name_prior=0.5, hinted=False, share=0.9, sampled=100, min_share=0.6)
    hinted = combine_confidence(name_prior=0.5, hinted=True, share=0.9, sampled=100, min_share=0.6)
    full = combine_confidence(name_prior=0.5, hinted=True, share=1.0, sampled=100, min_share=0.6)
    assert 0.5 < plain < hinted < full <= 0.99
    # A small sample counts for less than a large one.
    small = combine_confidence(
        name_prior=0.5, hinted=False, share=1.0, sampled=MIN_VALUES, min_share=0.6
    )
    assert small < combine_confidence(
        name_prior=0.5, hinted=False, share=1.0, sampled=100, min_share=0.6
    )


def test_types_and_values_decide_over_names() -> None:
    # A boolean named like an e-mail column is not one, with or without values.
    assert classify(column("email_sent", ["true", "false"] * 10, family="bool")) is None
    assert classify(column("email_sent", [], family="bool")) is None
    assert classify(column("token_count", ["3", "4"] * 10, family="other")) is None
    # A name hint with values that are no e-mail addresses: no finding.
    assert classify(column("email", ["yes", "no", "maybe"] * 10)) is None
    # Uninformative names, telling values.
    emails = [f"user{i}@example.com" for i in range(50)]
    verdict = classify(column("col7", emails))
    assert verdict is not None
    assert (verdict.classification, verdict.detector, verdict.share) == ("pii.email", "email", 1.0)
    ibans = ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"] * 20
    verdict = classify(column("data", ibans))
    assert verdict is not None and verdict.classification == "financial.iban"
    # A created_at date is not a birth date; a dob is.
    dates = [f"19{y}-0{m}-1{m}" for y in range(50, 99) for m in range(1, 3)]
    assert classify(column("created_at", dates, family="date")) is None
    verdict = classify(column("dob", dates, family="date"))
    assert verdict is not None and verdict.classification == "pii.dob"


def test_a_mixed_column_needs_a_majority() -> None:
    values = ["alice@example.com"] * 3 + ["n/a"] * 30
    assert classify(column("contact", values)) is None


def test_custom_detectors() -> None:
    detectors, skipped = custom_detectors(
        [
            {
                "name": "employee-id",
                "classification": "pii.national_id",
                "confidence": 0.9,
                "name_regex": "(?i)^emp(loyee)?_?id$",
                "value_regex": r"^E\d{6}$",
            },
            {
                "name": "project-code",
                "classification": "internal.project",
                "confidence": 0.7,
                "name_regex": None,
                "value_regex": r"PRJ-[A-Z]{3}",
            },
            {"name": "broken", "classification": "x", "confidence": 0.5, "name_regex": "("},
            {"name": "empty", "classification": "x", "confidence": 0.5, "name_regex": None},
        ]
    )
    assert skipped == 2 and [d.name for d in detectors] == [
        "custom:employee-id",
        "custom:project-code",
    ]
    ids = [f"E{i:06d}" for i in range(20)]
    verdict = classify(column("employee_id", ids), detectors)
    assert verdict is not None
    assert (verdict.classification, verdict.confidence, verdict.detector) == (
        "pii.national_id",
        0.9,
        "custom:employee-id",
    )
    # Name regex given: another column with the same values is not it.
    assert classify(column("badge", ids), detectors) is None
    # Name matches, values do not: not it either.
    assert classify(column("emp_id", ["x"] * 20), detectors) is None
    # Value regex only: the values decide, whatever the name.
    verdict = classify(column("c9", ["PRJ-ABC", "PRJ-XYZ"] * 10), detectors)
    assert verdict is not None and verdict.detector == "custom:project-code"
