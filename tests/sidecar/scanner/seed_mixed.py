"""The accuracy test's second database: mixed-quality data, as docs/scanner-accuracy-spec.md
specifies it (names from several locales, missing values, junk, mixed formats, decoys
such as order numbers that pass Luhn, misleading and uninformative column names,
integer SSNs and cards, inet and cidr, free text with embedded PII, small tables).

``build(r)`` turns the spec's archetypes into tables: ``(tables, truth)``, where
``tables`` maps a table name to its row count and columns and ``truth`` maps
``(table, column)`` to the classification a reviewer would give (every other column is
harmless). ``seed(conn)`` creates them. The same ``random.Random(SEED)`` gives the same
database every run.
"""

from __future__ import annotations

import datetime
import random
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.de import idnr as de_idnr
from stdnum.es import nie as es_nie
from stdnum.fi import hetu as fi_hetu
from stdnum.pl import pesel as pl_pesel

from tests.sidecar.scanner import seed as tidy

SEED = 19
Gen = Callable[[random.Random], Any]

# --- person names from several locales ------------------------------------------------------

# (given names, family names) per locale; about half the given names are outside the
# scanner's bundled list (sidecar/scanner/names.py).
LOCALES: dict[str, tuple[list[str], list[str]]] = {
    "en": (
        ["James", "Olivia", "Harper", "Mason", "Ethan", "Abigail", "Brooke", "Wyatt"],
        ["Smith", "Johnson", "Hughes", "Fitzgerald", "O'Connor", "Whitaker", "Baker"],
    ),
    "es": (
        ["José", "María", "Lucía", "Álvaro", "Inés", "Joaquín", "Ximena", "Sofía"],
        ["García López", "Fernández", "de la Cruz", "Núñez", "Martínez Ruiz", "Ortega"],
    ),
    "fr": (
        ["Jean-Luc", "Anne-Marie", "Céline", "Hélène", "François", "Amélie", "Benoît"],
        ["Dubois", "Lefèvre", "Moreau", "Girard", "Rousseau", "Bonnet", "Chevalier"],
    ),
    "de": (
        ["Jürgen", "Björn", "Lena", "Sören", "Käthe", "Matthias", "Ute", "Lukas"],
        ["Müller", "Schröder", "Weiß", "von Braun", "Hoffmann", "Krämer", "Groß"],
    ),
    "it": (
        ["Giuseppe", "Chiara", "Niccolò", "Federica", "Matteo", "Giulia", "Lorenzo"],
        ["Rossi", "Esposito", "Bianchi", "Ricci", "De Luca", "Marino", "Greco"],
    ),
    "nl": (
        ["Daan", "Sanne", "Bram", "Femke", "Joost", "Anouk", "Maarten"],
        ["de Jong", "van der Berg", "Bakker", "Visser", "van Dijk", "Smit", "Mulder"],
    ),
    "pl": (
        ["Łukasz", "Małgorzata", "Wojciech", "Agnieszka", "Paweł", "Katarzyna", "Zofia"],
        ["Wiśniewski", "Kowalczyk", "Wójcik", "Nowak", "Lewandowska", "Zieliński"],
    ),
    "nordic": (
        ["Søren", "Åsa", "Bjørn", "Ingrid", "Lars", "Sigrid", "Mikkel", "Astrid"],
        ["Ørsted", "Lindqvist", "Hansen", "Johansson", "Nyström", "Berg", "Dahl"],
    ),
    "tr": (
        ["Mehmet", "Ayşe", "Emre", "Zeynep", "Çağrı", "Elif", "Burak"],  # noqa: RUF001
        ["Yılmaz", "Çelik", "Şahin", "Demir", "Kaya", "Öztürk", "Aydın"],  # noqa: RUF001
    ),
    "pt": (
        ["João", "Ana", "Thiago", "Larissa", "Gonçalo", "Beatriz", "Rafael"],
        ["Silva", "Santos", "Oliveira", "Conceição", "Ferreira", "Gonçalves"],
    ),
    "ja": (
        ["Haruto", "Yui", "Sota", "Aoi", "Kenji", "Yuki", "Ren", "Hina"],
        ["Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto"],
    ),
    "zh": (
        ["Wei", "Xiaoming", "Jing", "Hao", "Yan", "Mei", "Zhiwei", "Li Na"],
        ["Wang", "Li", "Zhang", "Liu", "Chen", "Huang", "Zhao"],
    ),
    "ar": (
        ["Omar", "Fatima", "Youssef", "Layla", "Khalid", "Nour", "Hamza"],
        ["Al-Sayed", "Haddad", "Nasser", "El-Amin", "Khoury", "Mansour"],
    ),
    "hi": (
        ["Aarav", "Priya", "Vihaan", "Ananya", "Rahul", "Diya", "Arjun"],
        ["Sharma", "Patel", "Gupta", "Iyer", "Reddy", "Banerjee", "Nair"],
    ),
}


def _person(r: random.Random) -> tuple[str, str]:
    given, family = LOCALES[r.choice(list(LOCALES))]
    return r.choice(given), r.choice(family)


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded.lower() if c.isalnum())


def full_name(r: random.Random) -> str:
    first, last = _person(r)
    style = r.random()
    if style < 0.12:
        middle, _ = _person(r)
        return f"{first} {middle} {last}"
    return f"{first} {last}"


def legacy_name(r: random.Random) -> str:
    """``LAST, First``: what old exports hold."""
    first, last = _person(r)
    return f"{last.upper()}, {first}"


def given_name(r: random.Random) -> str:
    return _person(r)[0]


def family_name(r: random.Random) -> str:
    return _person(r)[1]


# --- e-mail, phone ---------------------------------------------------------------------------

TLDS = ["example.com", "mail.example.co.uk", "example.de", "example.com.br", "corp.example.io"]


def email(r: random.Random) -> str:
    first, last = (_ascii(p) or "x" for p in _person(r))
    local = r.choice(
        [
            f"{first}.{last}",
            f"{first[0]}{last}{r.randint(1, 99)}",
            f"{first}+{r.choice(['news', 'shop'])}",
        ]
    )
    address = f"{local}@{r.choice(TLDS)}"
    style = r.random()
    if style < 0.1:
        return address.upper()
    if style < 0.2:
        return address.title()
    return address


US_AREA = ["212", "415", "312", "617", "206", "303", "512", "646", "702", "818", "404", "305"]


def _us_line(r: random.Random) -> tuple[str, str, str]:
    exchange = r.choice([n for n in range(201, 990) if n != 555])
    return r.choice(US_AREA), str(exchange), f"{r.randint(0, 9999):04d}"


def phone_e164(r: random.Random) -> str:
    return "+1" + "".join(_us_line(r))


def phone_intl(r: random.Random) -> str:
    kind = r.randint(0, 2)
    if kind == 0:
        return f"+44 20 7{r.randint(100, 999)} {r.randint(1000, 9999)}"
    if kind == 1:
        return f"+49 30 {r.randint(1000000, 9999999)}"
    return "+33 1 " + " ".join(f"{r.randint(10, 99)}" for _ in range(4))


def phone_us(r: random.Random) -> str:
    area, exchange, line = _us_line(r)
    return r.choice(
        [f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"{area}.{exchange}.{line}"]
    )


def phone_national(r: random.Random) -> str:
    """National formats of GB, DE, FR: only a phone-like name says which country."""
    kind = r.randint(0, 2)
    if kind == 0:
        return f"020 7{r.randint(100, 999)} {r.randint(1000, 9999)}"
    if kind == 1:
        return f"030 {r.randint(1000000, 9999999)}"
    return "01 " + " ".join(f"{r.randint(10, 99)}" for _ in range(4))


def phone_ext(r: random.Random) -> str:
    return f"{phone_us(r)} x{r.randint(10, 999)}"


def phone_mixed(r: random.Random) -> str:
    return r.choice([phone_e164, phone_intl, phone_us, phone_us, phone_ext])(r)


def phone_bigint(r: random.Random) -> int:
    return int("".join(_us_line(r)))


# --- national ids ------------------------------------------------------------------------------


def _ssn_parts(r: random.Random) -> tuple[int, int, int]:
    area = r.choice([r.randint(1, 665), r.randint(667, 899)])
    return area, r.randint(1, 99), r.randint(1, 9999)


def ssn_dashed(r: random.Random) -> str:
    a, g, s = _ssn_parts(r)
    return f"{a:03d}-{g:02d}-{s:04d}"


def ssn_plain(r: random.Random) -> str:
    a, g, s = _ssn_parts(r)
    return f"{a:03d}{g:02d}{s:04d}"


def ssn_spaced(r: random.Random) -> str:
    a, g, s = _ssn_parts(r)
    return f"{a:03d} {g:02d} {s:04d}"


def ssn_mixed(r: random.Random) -> str:
    return r.choice([ssn_dashed, ssn_dashed, ssn_plain, ssn_spaced])(r)


def ssn_int(r: random.Random) -> int:
    """Leading zeros lost: an area below 100 gives fewer than 9 digits."""
    a, g, s = _ssn_parts(r)
    return int(f"{a:03d}{g:02d}{s:04d}")


def nie(r: random.Random) -> str:
    body = r.choice("XYZ") + f"{r.randint(0, 9999999):07d}"
    return body + es_nie.calc_check_digit(body)


def hetu(r: random.Random) -> str:
    birth = datetime.date(1950, 1, 1) + datetime.timedelta(days=r.randint(0, 50 * 365))
    body = f"{birth:%d%m%y}-{r.randint(2, 899):03d}"
    return body + fi_hetu._calc_checksum(body.replace("-", ""))


def personnummer(r: random.Random) -> str:
    birth = datetime.date(1950, 1, 1) + datetime.timedelta(days=r.randint(0, 50 * 365))
    body = f"{birth:%y%m%d}{r.randint(0, 999):03d}"
    return f"{body[:6]}-{body[6:]}{luhn.calc_check_digit(body)}"


def pesel(r: random.Random) -> str:
    birth = datetime.date(1950, 1, 1) + datetime.timedelta(days=r.randint(0, 49 * 365))
    body = f"{birth:%y%m%d}{r.randint(0, 9999):04d}"
    return body + pl_pesel.calc_check_digit(body)


def steuer_id(r: random.Random) -> str:
    while True:
        candidate = f"{r.randint(1, 9)}{r.randint(0, 10**10 - 1):010d}"
        if de_idnr.is_valid(candidate):
            return candidate


def national_strong(r: random.Random) -> str:
    return r.choice([tidy._dni, nie, tidy._codice, tidy._nir, hetu, personnummer])(r)


def national_digits(r: random.Random) -> str:
    return r.choice([tidy._bsn, pesel, steuer_id])(r)


# --- cards, IBANs ------------------------------------------------------------------------------

BRANDS: list[tuple[Callable[[random.Random], str], int]] = [
    (lambda r: "4", 16),
    (lambda r: str(r.randint(51, 55)), 16),
    (lambda r: str(r.randint(2221, 2720)), 16),
    (lambda r: r.choice(["34", "37"]), 15),
    (lambda r: "6011", 16),
    (lambda r: str(r.randint(3528, 3589)), 16),
    (lambda r: "36", 14),
]


def _card_digits(r: random.Random) -> str:
    prefix_of, length = r.choice(BRANDS)
    body = prefix_of(r)
    body += "".join(str(r.randint(0, 9)) for _ in range(length - 1 - len(body)))
    return body + luhn.calc_check_digit(body)


def card(r: random.Random) -> str:
    digits = _card_digits(r)
    style = r.random()
    if len(digits) == 15 and style < 0.5:
        return f"{digits[:4]} {digits[4:10]} {digits[10:]}"
    if style < 0.3:
        return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    if style < 0.45:
        return "-".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    return digits


def card_number(r: random.Random) -> int:
    return int(_card_digits(r))


def luhn_order_number(r: random.Random) -> str:
    body = r.choice("45") + "".join(str(r.randint(0, 9)) for _ in range(14))
    return body + luhn.calc_check_digit(body)


def luhn_sequence() -> Gen:
    """Sequential tracking numbers with a Luhn check digit, as the rows are inserted."""
    state = {"next": 400000012345000}

    def gen(_r: random.Random) -> int:
        state["next"] += 1
        body = str(state["next"])
        return int(body + luhn.calc_check_digit(body))

    return gen


def luhn_prefixed(r: random.Random) -> str:
    body = "5412750000" + f"{r.randint(0, 99999):05d}"
    return body + luhn.calc_check_digit(body)


def gift_code(r: random.Random) -> str:
    while True:
        candidate = "".join(str(r.randint(0, 9)) for _ in range(16))
        if not luhn.is_valid(candidate):
            return candidate


def loyalty_number(r: random.Random) -> str:
    while True:
        candidate = "4" + "".join(str(r.randint(0, 9)) for _ in range(15))
        if not luhn.is_valid(candidate):
            return candidate


IBAN_BBAN: dict[str, Callable[[random.Random], str]] = {
    "DE": lambda r: "".join(str(r.randint(0, 9)) for _ in range(18)),
    "GB": lambda r: "NWBK" + "".join(str(r.randint(0, 9)) for _ in range(14)),
    "NL": lambda r: "ABNA" + "".join(str(r.randint(0, 9)) for _ in range(10)),
    "FR": lambda r: (
        "".join(str(r.randint(0, 9)) for _ in range(10))
        + "".join(r.choice(string.ascii_uppercase + string.digits) for _ in range(11))
        + f"{r.randint(0, 99):02d}"
    ),
    "ES": lambda r: "".join(str(r.randint(0, 9)) for _ in range(20)),
    "IT": lambda r: (
        r.choice(string.ascii_uppercase)
        + "".join(str(r.randint(0, 9)) for _ in range(10))
        + "".join(r.choice(string.digits) for _ in range(12))
    ),
    "BE": lambda r: "".join(str(r.randint(0, 9)) for _ in range(12)),
}


def iban(r: random.Random) -> str:
    country = r.choice(list(IBAN_BBAN))
    bban = IBAN_BBAN[country](r)
    compact = country + std_iban.calc_check_digits(country + "00" + bban) + bban
    style = r.random()
    if style < 0.35:
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    if style < 0.45:
        return compact.lower()
    return compact


# --- network, dates ----------------------------------------------------------------------------


def ipv4(r: random.Random) -> str:
    return f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def ip_mixed(r: random.Random) -> str:
    if r.random() < 0.25:
        return f"2001:db8:{r.randint(0, 65535):x}:{r.randint(0, 65535):x}::{r.randint(1, 65535):x}"
    return ipv4(r)


def network(r: random.Random) -> str:
    if r.random() < 0.5:
        return f"10.{r.randint(0, 255)}.0.0/16"
    return f"172.16.{r.randint(0, 255)}.0/24"


def version3(r: random.Random) -> str:
    return tidy._version(r)


def birth(r: random.Random) -> datetime.date:
    return datetime.date(1935, 1, 1) + datetime.timedelta(days=r.randint(0, 70 * 365))


def birth_ts(r: random.Random) -> datetime.datetime:
    return datetime.datetime.combine(birth(r), datetime.time(0, 0))


DATE_FORMATS = [
    "%Y-%m-%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%d-%m-%Y",
    "%B %-d, %Y",
]


def birth_text(fmt: str | None = None) -> Gen:
    def gen(r: random.Random) -> str:
        return birth(r).strftime(fmt or r.choice(DATE_FORMATS))

    return gen


# --- addresses, secrets, passwords ---------------------------------------------------------------


def address(r: random.Random) -> str:
    kind = r.randint(0, 7)
    n = r.randint(1, 250)
    if kind == 0:
        return (
            f"{r.randint(100, 9999)} {r.choice(['Pennsylvania', 'Oak', 'Main', 'Sunset'])} "
            f"{r.choice(['Ave NW', 'Street', 'Blvd', 'Road'])}, "
            f"{r.choice(['Washington, DC', 'Austin, TX', 'Salem, OR'])} {r.randint(10000, 99999)}"
        )
    if kind == 1:
        return f"{r.randint(1, 300)}{r.choice(['', 'B'])} {r.choice(['Baker', 'Abbey', 'King'])} Street"  # noqa: E501
    if kind == 2:
        return f"{r.choice(['Haupt', 'Linden', 'Goethe', 'Bahnhof'])}straße {n}"
    if kind == 3:
        return f"{n} rue {r.choice(['de Rome', 'Victor Hugo', 'de la Paix'])}"
    if kind == 4:
        return f"Calle {r.choice(['Mayor', 'Alcalá', 'Serrano'])} {n}"
    if kind == 5:
        return f"Via {r.choice(['Roma', 'Garibaldi', 'Dante'])} {n}"
    if kind == 6:
        return f"{r.choice(['Kerk', 'Dorps', 'School'])}straat {n}"
    return f"PO Box {r.randint(100, 99999)}"


def secret_any(r: random.Random) -> str:
    kind = r.randint(0, 2)
    if kind == 0:
        return tidy._secret(r)
    if kind == 1:
        return r.randbytes(r.choice([20, 32])).hex()
    return tidy._session_token(r)


def secret_known(r: random.Random) -> str:
    """Well-known key formats only (what can be recognised without a name)."""
    while True:
        value = tidy._secret(r)
        if value.startswith(("AKIA", "ghp_", "xoxb-", "sk_live_", "eyJ")):
            return value


def bcrypt(r: random.Random) -> str:
    return "$2b$12$" + "".join(
        r.choice(string.ascii_letters + string.digits + "./") for _ in range(53)
    )


def argon2(r: random.Random) -> str:
    return f"$argon2id$v=19$m=65536,t=3,p=4${tidy._b64(r, 16)}${tidy._b64(r, 32)}"


def password_hash(r: random.Random) -> str:
    return r.choice([bcrypt, argon2, tidy._password_hash])(r)


def plaintext_password(r: random.Random) -> str:
    word = r.choice(["Summer", "dragon", "Passw0rd", "letmein", "Kitten", "hunter"])
    return f"{word}{r.randint(1, 2024)}{r.choice(['', '!', '#', '?'])}"


# --- free text ---------------------------------------------------------------------------------

PLAIN_SENTENCES = [
    "Delivered to the back door, signed by reception.",
    "Customer prefers morning deliveries on weekdays.",
    "Order {n} shipped in {q} boxes on {d}.",
    "Ticket #{n} reopened after the update to version {v}.",
    "Paid {a} EUR by bank transfer, receipt attached.",
    "Room {q}0{q}, floor {q}; ask for the facilities desk.",
    "Model XR-{q}000 replaced under the {q} year warranty.",
    "Left a voicemail, no answer yet; will retry tomorrow.",
    "Gate code changed, driver informed by the dispatcher.",
    "Invoice INV-2024-{n} total {a}, due in 30 days.",
]
PII_SENTENCES = [
    ("Please send the invoice to {pii} instead of the old address.", "email"),
    ("Customer asked to be called back at {pii} after 5pm.", "phone"),
    ("Reach me on {pii}, thanks", "phone"),
    ("Paid with card {pii}, refund pending approval.", "card"),
    ("SSN on file: {pii}; verify before release.", "ssn"),
    ("ID {pii} checked at the desk by the night shift.", "national"),
    ("Contact: {pii}", "email"),
    ("cc {pii} exp 09/27 cvv given over the phone", "card"),
]
EMBEDDED: dict[str, Gen] = {
    "email": email,
    "phone": phone_mixed,
    "card": card,
    "ssn": ssn_dashed,
    "national": national_strong,
}


def plain_sentence(r: random.Random) -> str:
    return r.choice(PLAIN_SENTENCES).format(
        n=r.randint(10000, 9999999),
        q=r.randint(1, 9),
        d=tidy._recent_date(r).isoformat(),
        v=version3(r),
        a=tidy._money(r),
    )


def free_text(rate: float) -> Gen:
    def gen(r: random.Random) -> str:
        if r.random() < rate:
            template, kind = r.choice(PII_SENTENCES)
            return template.format(pii=EMBEDDED[kind](r))
        return plain_sentence(r)

    return gen


def free_text_one_in(rows: int) -> Gen:
    """A small table's notes: the first of every ``rows`` rows embeds PII."""
    state = {"i": 0}

    def gen(r: random.Random) -> str:
        state["i"] += 1
        if state["i"] % rows == 1:
            template, kind = PII_SENTENCES[state["i"] % len(PII_SENTENCES)]
            return template.format(pii=EMBEDDED[kind](r))
        return plain_sentence(r)

    return gen


# --- harmless ----------------------------------------------------------------------------------


def product_code(r: random.Random) -> str:
    return f"{r.choice(['EM', 'PX', 'QT'])}-{r.randint(1000, 9999)}-{r.choice('ABCDEF')}"


def phone_model(r: random.Random) -> str:
    return r.choice(["Pixel 8 Pro", "iPhone 15", "Galaxy S24", "Moto G", "Nokia 3310"])


def cookware(r: random.Random) -> str:
    return r.choice(["Cast iron skillet", "Wok 32 cm", "Saucepan 2 l", "Crepe pan"])


def ip_category(r: random.Random) -> str:
    return r.choice(["patent", "trademark", "copyright", "trade secret"])


def yes_no(r: random.Random) -> str:
    return r.choice(["Y", "N"])


def company(r: random.Random) -> str:
    return f"{r.choice(['Acme', 'Globex', 'Initech', 'Umbrella', 'Stark'])} {r.choice(['GmbH', 'Ltd', 'Inc.', 'S.A.'])}"  # noqa: E501


def username(r: random.Random) -> str:
    first, last = (_ascii(p) or "x" for p in _person(r))
    return f"{first[:1]}{last}{r.randint(1, 99)}"


def question(r: random.Random) -> str:
    return r.choice(["What was your first pet's name?", "Which city were you born in?"])


def year(r: random.Random) -> int:
    return r.randint(1990, 2026)


def counter(r: random.Random) -> int:
    return r.randint(0, 10**12)


FILLER: list[tuple[list[str], str, Gen]] = [
    (["status", "state", "stage"], "text", tidy._status),
    (["sku", "item_code", "part_no"], "text", tidy._sku),
    (["amount", "price", "total"], "numeric(12,2)", tidy._money),
    (["quantity", "qty", "stock"], "integer", tidy._int),
    (["fiscal_year", "model_year"], "integer", year),
    (["views", "clicks", "bytes_sent"], "bigint", counter),
    (["created_at", "updated_at", "shipped_at"], "timestamptz", tidy._recent),
    (["active", "archived", "is_test"], "boolean", tidy._bool),
    (["request_id", "external_uuid"], "uuid", tidy._uuid),
    (["url", "homepage", "callback_url"], "text", tidy._url),
    (["color", "theme_color"], "text", tidy._hex_color),
    (["country", "country_code"], "text", tidy._country),
    (["zip", "postal_code"], "text", tidy._zip),
    (["city", "warehouse"], "text", tidy._city),
    (["company_name", "vendor"], "text", company),
    (["name", "product_name", "title"], "text", tidy._product),
    (["summary", "headline"], "text", tidy._sentence),
    (["version", "app_version"], "text", version3),
    (["username", "login", "display_name"], "text", username),
    (["checksum", "sha256"], "text", tidy._sha256),
    (["lang", "locale"], "text", tidy._country),
    (["external_ref_id", "parent_id"], "bigint", counter),
]

# --- the archetypes -----------------------------------------------------------------------------


@dataclass
class Col:
    truth: str | None
    names: list[str]
    sqltype: str
    gen: Gen
    small: bool = False
    quality: bool = True  # nulls and junk per the spec


UNNAMED = ["col_3", "field_b", "value", "data", "attr2", "x", "col7", "field_12", "c4", "misc"]


def _archetypes() -> list[Col]:
    t = "text"
    cols: list[Col] = []

    def add(truth: str | None, names: list[str], sqltype: str, gen: Gen, n: int, **kw: Any) -> None:
        cols.extend(Col(truth, names, sqltype, gen, **kw) for _ in range(n))

    email_names = ["email", "email_address", "emailAddress", "contact_email", "EMAIL", "e_mail",
                   "correo", "courriel", "cust_email", "user_email"]  # fmt: skip
    add("pii.email", email_names, t, email, 12)
    add("pii.email", UNNAMED, t, email, 5)
    add("pii.email", email_names, t, email, 3, small=True)

    phone_names = ["phone", "phone_number", "phoneNumber", "mobile", "tel_no", "telefono",
                   "telefon", "cell", "contact_phone", "fax"]  # fmt: skip
    add("pii.phone", phone_names, t, phone_mixed, 5)
    add("pii.phone", phone_names, t, phone_e164, 1)
    add("pii.phone", phone_names, t, phone_intl, 1)
    add("pii.phone", phone_names, t, phone_national, 2)
    add("pii.phone", phone_names, t, phone_ext, 1)
    add("pii.phone", UNNAMED, t, phone_mixed, 3)
    add("pii.phone", ["notes", "comments"], t, phone_mixed, 2)
    add("pii.phone", phone_names, "bigint", phone_bigint, 2)
    add("pii.phone", phone_names, t, phone_us, 3, small=True)

    ssn_names = ["ssn", "social_security_number", "ssn_no", "SSN"]
    add("pii.ssn", ssn_names, t, ssn_mixed, 3)
    add("pii.ssn", ssn_names, t, ssn_plain, 1)
    add("pii.ssn", ssn_names, t, ssn_spaced, 1)
    add("pii.ssn", UNNAMED, t, ssn_dashed, 3)
    add("pii.ssn", ssn_names, "bigint", ssn_int, 2)
    add("pii.ssn", ssn_names, "integer", ssn_int, 2)
    add("pii.ssn", ssn_names, "numeric(9,0)", ssn_int, 1)
    add("pii.ssn", ssn_names, t, ssn_dashed, 1, small=True)
    add("pii.ssn", ssn_names, "bigint", ssn_int, 1, small=True)

    nat_names = ["national_id", "dni", "nif", "personal_id", "tax_id", "codice_fiscale"]
    add("pii.national_id", nat_names, t, national_strong, 6)
    add("pii.national_id", ["bsn", "pesel", "steuer_id", "tax_id"], t, national_digits, 3)
    add("pii.national_id", UNNAMED, t, national_strong, 4)
    add("pii.national_id", ["bsn"], "bigint", tidy._bsn, 1)
    add("pii.national_id", ["pesel"], "bigint", pesel, 1)
    add("pii.national_id", nat_names, t, national_strong, 2, small=True)

    card_names = ["card_number", "cc_number", "pan", "credit_card", "creditCardNumber", "card_no"]
    add("financial.card", card_names, t, card, 9)
    add("financial.card", UNNAMED, t, card, 3)
    add("financial.card", card_names, "bigint", card_number, 2)
    add("financial.card", card_names, "numeric(19,0)", card_number, 1)
    add("financial.card", UNNAMED, "bigint", card_number, 1)
    add("financial.card", card_names, t, card, 2, small=True)
    add(None, ["order_number"], t, luhn_order_number, 1)
    add(None, ["order_number"], "bigint", lambda r: int(luhn_order_number(r)), 1)
    add(None, ["tracking_no"], "bigint", luhn_sequence(), 1, quality=False)
    add(None, ["invoice_ref"], t, luhn_prefixed, 1)
    add(None, ["gift_code"], t, gift_code, 1)

    iban_names = ["iban", "bank_account", "account_iban", "IBAN"]
    add("financial.iban", iban_names, t, iban, 7)
    add("financial.iban", UNNAMED, t, iban, 3)
    add("financial.iban", iban_names, t, iban, 2, small=True)

    ip_names = ["ip", "client_ip", "last_login_ip", "remote_addr", "ip_address", "source_ip"]
    add("pii.ip_address", ip_names, "inet", ip_mixed, 4)
    add("pii.ip_address", UNNAMED, "inet", ip_mixed, 2)
    add("pii.ip_address", ip_names, "cidr", ipv4, 2)
    add("pii.ip_address", ip_names, t, ip_mixed, 3)
    add("pii.ip_address", UNNAMED, t, ip_mixed, 3)
    add("pii.ip_address", ip_names, "inet", ipv4, 2, small=True)
    add(None, ["subnet", "network"], "cidr", network, 1)
    add(None, ["allowed_net"], t, network, 1)
    add(None, ["firmware"], t, version3, 1)

    dob_names = ["dob", "birth_date", "date_of_birth", "dateOfBirth", "birthday", "geburtsdatum",
                 "fecha_nacimiento", "date_naissance"]  # fmt: skip
    add("pii.dob", dob_names, "date", birth, 3)
    add("pii.dob", dob_names, "timestamp", birth_ts, 1)
    for fmt in DATE_FORMATS:
        add("pii.dob", dob_names, t, birth_text(fmt), 1)
    add("pii.dob", dob_names, t, birth_text(), 1)
    add("pii.dob", dob_names, "date", birth, 1, small=True)
    add("pii.dob", dob_names, t, birth_text("%d/%m/%Y"), 1, small=True)
    add(None, ["member_since", "contract_start"], "date", birth, 2)

    full_names = ["full_name", "customer_name", "nombre", "cardholder", "contact_name",
                  "displayName"]  # fmt: skip
    add("pii.name", full_names, t, full_name, 6)
    add("pii.name", ["customer_name", "full_name"], t, legacy_name, 1)
    add("pii.name", ["first_name", "firstName", "vorname", "prenom"], t, given_name, 3)
    add("pii.name", ["last_name", "surname", "nachname", "apellido"], t, family_name, 3)
    add("pii.name", UNNAMED, t, full_name, 3)
    add("pii.name", full_names, t, full_name, 2, small=True)

    address_names = ["address", "street", "address_line1", "shipping_address", "direccion",
                     "adresse"]  # fmt: skip
    add("pii.address", address_names, t, address, 9)
    add("pii.address", UNNAMED, t, address, 2)
    add("pii.address", address_names, t, address, 1, small=True)

    token_names = ["api_key", "token", "access_token", "refresh_token", "client_secret",
                   "webhook_secret", "apiKey"]  # fmt: skip
    add("secret.token", token_names, t, secret_any, 10)
    add("secret.token", UNNAMED, t, secret_known, 2)
    add("secret.token", token_names, t, secret_any, 2, small=True)
    add(None, ["token_count"], "integer", tidy._int, 1)
    add(None, ["secret_question"], t, question, 1)

    add("secret.password", ["password_hash", "pwd", "passwd"], t, password_hash, 4)
    add("secret.password", ["password"], t, plaintext_password, 1)
    add("secret.password", UNNAMED, t, bcrypt, 2)
    add("secret.password", ["password_hash"], t, bcrypt, 1, small=True)

    text_names = ["notes", "comments", "description", "body", "message", "remarks",
                  "delivery_instructions"]  # fmt: skip
    for rate in (0.1, 0.2, 0.4):
        add("pii.free_text", text_names, t, free_text(rate), 4)
    add("pii.free_text", UNNAMED, t, free_text(0.2), 2)
    add("pii.free_text", text_names, t, free_text_one_in(3), 1, small=True, quality=False)
    add(None, text_names, t, plain_sentence, 4)

    add(None, ["email"], t, product_code, 1)
    add(None, ["phone"], t, phone_model, 1)
    add(None, ["pan"], t, cookware, 1)
    add(None, ["ip"], t, ip_category, 1)
    add(None, ["dob"], t, yes_no, 1)
    add(None, ["card_number"], t, loyalty_number, 1)
    add(None, ["ssn"], t, lambda r: "N/A", 1)

    for names, sqltype, gen in FILLER:
        add(None, names, sqltype, gen, 5)
    return cols


# --- data quality --------------------------------------------------------------------------------

JUNK = ["", "n/a", "unknown", "-", "TBD", "0"]


def _typo(r: random.Random, value: str) -> str:
    if len(value) < 3:
        return value
    i = r.randrange(len(value))
    return value[:i] + value[i + 1 :] if r.random() < 0.5 else value[:i] + value[i] + value[i:]


def _with_quality(r: random.Random, col: Col, in_small: bool) -> Gen:
    if not col.quality or col.truth is None:
        return col.gen
    null_rate = r.choice([0.0, 0.1, 0.4])
    textual = col.sqltype == "text"
    junk_rate = 0.0 if in_small or not textual else r.choice([0.0, 0.02, 0.05])
    inner = col.gen

    def gen(rr: random.Random) -> Any:
        if rr.random() < null_rate:
            return None
        value = inner(rr)
        if junk_rate and rr.random() < junk_rate:
            return rr.choice(JUNK) if rr.random() < 0.6 else _typo(rr, value)
        return value

    return gen


# --- tables --------------------------------------------------------------------------------------

TABLE_WORDS = [
    "customers",
    "orders",
    "accounts",
    "contacts",
    "tickets",
    "leads",
    "staff",
    "partners",
    "invoices",
    "shipments",
    "members",
    "bookings",
    "claims",
    "patients",
    "subscriptions",
    "payouts",
    "visits",
    "profiles",
    "applicants",
    "devices",
]

Columns = list[tuple[str, str, Gen]]


def build(r: random.Random) -> tuple[dict[str, tuple[int, Columns]], dict[tuple[str, str], str]]:
    """The spec's tables (name -> (rows, [(column, SQL type, generator)])) and truth."""
    cols = _archetypes()
    r.shuffle(cols)
    tables: dict[str, tuple[int, Columns]] = {}
    truth: dict[tuple[str, str], str] = {}

    def place(group: list[Col], rows: int, small: bool) -> None:
        name = f"{TABLE_WORDS[len(tables) % len(TABLE_WORDS)]}_{len(tables):02d}"
        columns: Columns = []
        used: set[str] = {"id"}
        for col in group:
            choices = [n for n in col.names if n.lower() not in used] or [
                f"{n}_{len(used)}" for n in col.names
            ]
            column = r.choice(choices)
            used.add(column.lower())
            columns.append((column, col.sqltype, _with_quality(r, col, small)))
            if col.truth is not None:
                truth[(name, column)] = col.truth
        tables[name] = (rows, columns)

    small = [c for c in cols if c.small]
    rest = [c for c in cols if not c.small]
    while small:
        size = min(len(small), r.randint(2, 4))
        group, small = small[:size], small[size:]
        # A small table's other columns are harmless filler.
        group += [rest.pop(next(i for i, c in enumerate(rest) if c.truth is None))]
        place(group, r.randint(1, 4), True)
    while rest:
        size = min(len(rest), r.randint(3, 8))
        group, rest = rest[:size], rest[size:]
        place(group, r.randint(40, 300), False)
    # The empty table: only the names can speak.
    tables["signups_waiting"] = (0, [("email", "text", email), ("phone", "text", phone_us)])
    truth[("signups_waiting", "email")] = "pii.email"
    truth[("signups_waiting", "phone")] = "pii.phone"
    return tables, truth


def seed(conn: psycopg.Connection[Any], *, seed_value: int = SEED) -> dict[tuple[str, str], str]:
    """Create and fill the tables in the connection's database; ANALYZE; return the truth."""
    r = random.Random(seed_value)
    tables, truth = build(r)
    for table, (rows, columns) in tables.items():
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY, {})").format(
                sql.Identifier(table),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(sqltype))
                    for name, sqltype, _ in columns
                ),
            )
        )
        copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(n) for n, _, _ in columns)
        )
        with conn.cursor() as cur, cur.copy(copy) as writer:
            for _ in range(rows):
                writer.write_row([gen(r) for _, _, gen in columns])
    conn.execute("ANALYZE")
    return truth


# --- scoring at the two thresholds ---------------------------------------------------------------

PROTECT, CONFIDENT = 0.3, 0.9


def score_thresholds(
    findings: list[tuple[str, str, str, float]], truth: dict[tuple[str, str], str]
) -> dict[str, dict[str, Any]]:
    """Per class: truth columns, recall at PROTECT, findings and precision at CONFIDENT
    (None without any), and for information precision at PROTECT and recall at CONFIDENT."""
    best: dict[tuple[str, str], tuple[str, float]] = {}
    for table, column, cls, confidence in findings:
        if (table, column) not in best or best[(table, column)][1] < confidence:
            best[(table, column)] = (cls, confidence)
    result: dict[str, dict[str, Any]] = {}
    for cls in sorted(set(truth.values()) | {c for c, _ in best.values()}):
        expected = [k for k, v in truth.items() if v == cls]

        def found(key: tuple[str, str], at: float, cls: str = cls) -> bool:
            return key in best and best[key][0] == cls and best[key][1] >= at

        def flagged(at: float, cls: str = cls) -> list[tuple[str, str]]:
            return [k for k, (c, conf) in best.items() if c == cls and conf >= at]

        confident, protected = flagged(CONFIDENT), flagged(PROTECT)
        result[cls] = {
            "truth": len(expected),
            "recall_protect": _share(sum(found(k, PROTECT) for k in expected), len(expected)),
            "confident": len(confident),
            "precision_confident": _share(
                sum(truth.get(k) == cls for k in confident), len(confident)
            ),
            "precision_protect": _share(
                sum(truth.get(k) == cls for k in protected), len(protected)
            ),
            "recall_confident": _share(sum(found(k, CONFIDENT) for k in expected), len(expected)),
            "missed": sorted(k for k in expected if not found(k, PROTECT)),
            "wrong_confident": sorted(k for k in confident if truth.get(k) != cls),
        }
    return result


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def format_thresholds(table: dict[str, dict[str, Any]]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        f"| classification | truth | recall@{PROTECT} | found@{CONFIDENT} | precision@{CONFIDENT} "
        f"| precision@{PROTECT} | recall@{CONFIDENT} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cls, row in table.items():
        lines.append(
            f"| {cls} | {row['truth']} | {f(row['recall_protect'])} | {row['confident']} "
            f"| {f(row['precision_confident'])} | {f(row['precision_protect'])} "
            f"| {f(row['recall_confident'])} |"
        )
    return "\n".join(lines)
