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
    contains_pii,
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
            ["12345678Z", "X1234567L", "RSSMRA85T10A562S", "131052-308T", "1 85 05 78 006 084 91"],
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


# --- issue 19: small samples, numbers and odd types, free text ---------------------------------


def test_small_samples_count_with_a_discount() -> None:
    """Three e-mail addresses of three are an e-mail column: above the protect threshold
    (0.3), below the confident one (0.9), with or without a telling name."""
    three = ["ana@example.com", "bo@example.org", "cy@example.net"]
    unnamed = classify(column("c1", three))
    named = classify(column("email", three))
    assert unnamed is not None and named is not None
    assert unnamed.classification == named.classification == "pii.email"
    assert 0.3 < unnamed.confidence < named.confidence < 0.9
    # One value alone is not evidence enough without a name; with one it is.
    one = classify(column("c1", three[:1]))
    assert one is None or one.confidence < 0.3
    named_one = classify(column("email", three[:1]))
    assert named_one is not None and named_one.confidence >= 0.3
    # Few values still contradict a name.
    assert classify(column("email", ["EM-1234-A", "EM-5678-B", "PX-1000-C"])) is None
    # No value at all: the name alone, capped.
    empty = classify(column("email", []))
    assert empty is not None and empty.confidence == min(0.5, NAME_ONLY_CAP)
    # The discount is n / (n + 4), and the evidence grows with the sample.
    assert [
        combine_confidence(name_prior=0.5, hinted=False, share=1, sampled=n, min_share=0.6)
        for n in (1, 3, 10, 100)
    ] == [0.2, 0.429, 0.714, 0.962]


def test_integer_ssns_under_an_ssn_name() -> None:
    # Stored as a number, an SSN of area 001-099 loses its leading zeros.
    values = ["536904399", "78151120", "219451234", "4512345", "219091234"] * 8
    for name in ("ssn", "SSN", "socialSecurityNumber", "ssn_no"):
        verdict = classify(column(name, values, family="number", type_="bigint"))
        assert verdict is not None and verdict.classification == "pii.ssn", name
        assert verdict.confidence >= 0.9
    # Without the name, nine digits are an id as often as an SSN.
    assert classify(column("ref", values, family="number", type_="bigint")) is None
    assert is_ssn("123 45 6789") and is_ssn("12345678", True) and not is_ssn("12345678")
    assert not is_ssn("000123456", True)  # area 000


def _luhn(body: str) -> str:
    from stdnum import luhn

    return body + luhn.calc_check_digit(body)


def test_card_numbers_as_numbers_and_order_numbers_that_pass_luhn() -> None:
    import random

    r = random.Random(5)
    cards = [_luhn("4" + "".join(str(r.randint(0, 9)) for _ in range(14))) for _ in range(40)]
    for name in ("card_number", "creditCardNumber", "c3"):
        verdict = classify(column(name, cards, family="number", type_="bigint"))
        assert verdict is not None and verdict.classification == "financial.card", name
        assert verdict.confidence >= 0.9
    # A sequence with a Luhn digit (tracking numbers) is numbering, not cards.
    sequence = [_luhn(str(400000012345000 + i)) for i in range(40)]
    assert classify(column("c3", sequence, family="number", type_="bigint")) is None
    # So is a range sharing a ten-digit prefix.
    prefixed = [_luhn("5412750000" + f"{r.randint(0, 99999):05d}") for _ in range(40)]
    assert classify(column("c3", prefixed)) is None
    # Random Luhn-valid order numbers are card numbers by value; the name caps them
    # below the confident threshold (masked provisionally, reviewed).
    for name in ("order_number", "trackingNo", "invoice_ref"):
        verdict = classify(column(name, cards))
        assert verdict is not None and 0.3 <= verdict.confidence <= 0.6, name


def test_camel_case_and_other_languages_in_column_names() -> None:
    dates = ["1984-03-02", "02/03/1984", "March 3, 1984", "3 March 1984", "1984/03/02"] * 4
    for name in ("dateOfBirth", "geburtsdatum", "fecha_nacimiento", "date_naissance", "DOB"):
        verdict = classify(column(name, dates))
        assert verdict is not None and verdict.classification == "pii.dob", name
    assert classify(column("contract_start", dates)) is None
    phones = ["020 7946 0958", "030 1234567", "01 42 68 53 00"] * 5
    verdict = classify(column("telefono", phones))
    assert verdict is not None and verdict.classification == "pii.phone"
    # National numbers of other countries need the name.
    assert classify(column("c2", phones)) is None


def test_names_from_many_locales() -> None:
    names = ["Łukasz Wiśniewski", "Ayşe Çelik", "Bjørn Ørsted", "Sanne de Jong", "Jean-Luc Moreau"]
    verdict = classify(column("c4", names * 4))
    assert verdict is not None and verdict.classification == "pii.name"
    legacy = ["GARCÍA LÓPEZ, José", "MÜLLER, Jürgen", "O'CONNOR, Harper"] * 4
    verdict = classify(column("customer_name", legacy))
    assert verdict is not None and verdict.classification == "pii.name"
    assert not is_person_name("GARCÍA LÓPEZ, José")  # all capitals only under a name
    assert not is_person_name("Premium Chair 42")


@pytest.mark.parametrize(
    "text",
    [
        "Please send the invoice to ana.lopez@example.es instead.",
        "Customer asked to be called back at (415) 555-2671 after 5pm.",
        "Reach me on +44 20 7946 0958, thanks",
        "Paid with card 4111 1111 1111 1111, refund pending.",
        "SSN on file: 536-90-4399; verify before release.",
        "ID 12345678Z checked at the desk.",
        "Kontakt: RSSMRA85T10A562S bitte prüfen",
    ],
)
def test_free_text_with_pii_inside(text: str) -> None:
    assert contains_pii(text)


@pytest.mark.parametrize(
    "text",
    [
        "ana.lopez@example.es",  # the value IS the address: pii.email's
        "(415) 555-2671",
        "4111111111111111",
        "Order 4839201 shipped in 3 boxes on 2024-03-02.",
        "Ticket #58213 reopened after the update to version 2.4.1.",
        "Paid 1299.99 EUR by bank transfer on 12/03/2024.",
        "Tracking 1Z999AA10123456784 handed to the carrier.",
        "Paid with card 4111 1111 1111 1112, declined.",  # fails Luhn
        "Room 204, floor 2; gate code 4411.",
        "Invoice INV-2024-854802 total 71915.87, due in 30 days.",
    ],
)
def test_free_text_without_pii(text: str) -> None:
    assert not contains_pii(text)


def test_free_text_columns() -> None:
    plain = [f"Order {1000 + i} shipped in {i % 4 + 1} boxes." for i in range(90)]
    embedded = [f"Call me back at (415) 555-{2600 + i:04d} please" for i in range(10)]
    notes = classify(column("notes", plain + embedded))
    assert notes is not None and notes.classification == "pii.free_text"
    assert notes.share == 0.1 and 0.3 <= notes.confidence < 0.9
    unnamed = classify(column("c8", plain + embedded))
    assert unnamed is not None and unnamed.classification == "pii.free_text"
    # Below the minimum share (2%): not free text with PII.
    assert classify(column("notes", plain + embedded[:1])) is None
    two = classify(column("notes", plain + embedded[:2]))
    assert two is not None and two.classification == "pii.free_text"
    # Plenty of PII in it: confident.
    heavy = classify(column("notes", plain[:60] + embedded * 4))
    assert heavy is not None and heavy.confidence >= 0.9
    # A column whose values ARE addresses or numbers stays their class.
    emails = [f"user{i}@example.com" for i in range(30)]
    verdict = classify(column("comments", emails))
    assert verdict is not None and verdict.classification == "pii.email"
    phones = [f"+1 (415) 555-{2600 + i:04d}" for i in range(30)]
    verdict = classify(column("notes", phones))  # a misleading name: the values decide
    assert verdict is not None and verdict.classification == "pii.phone"
    # Extensions: still a phone column, not free text.
    extended = [f"(415) 555-{2600 + i:04d} x{i + 10}" for i in range(30)]
    verdict = classify(column("phone", extended))
    assert verdict is not None and verdict.classification == "pii.phone"
