"""Detectors: which classification a column's name, type and sampled values suggest.

Each built-in detector looks at three things: the column's type family (a
boolean or an integer column is never an e-mail address, whatever its name),
its name (a *hint*: ``email``, ``ssn``, ``first_name``), and the share of its
sampled non-null values that a validator accepts (``phonenumbers`` for phones,
``python-stdnum`` for national ids and IBANs, Luhn plus issuer ranges for
cards, ``ipaddress`` for IPs, ...). ``combine_confidence`` is the one place
where name and value evidence become a confidence. Values decide when there
are enough of them: ``email_sent boolean`` is not an e-mail column, ``col7``
full of addresses is.

Nothing here stores, logs or returns a value: a detector answers with a share
and a confidence only.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
from stdnum import luhn
from stdnum.de import idnr as de_idnr
from stdnum.dk import cpr as dk_cpr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.fi import hetu as fi_hetu
from stdnum.fr import nir as fr_nir
from stdnum.iso7064 import mod_97_10
from stdnum.it import codicefiscale as it_cf
from stdnum.nl import bsn as nl_bsn
from stdnum.pl import pesel as pl_pesel
from stdnum.se import personnummer as se_pnr
from stdnum.us import ssn as us_ssn

from sidecar.scanner.names import FAMILY_NAMES, GIVEN_NAMES

log = logging.getLogger("warden.sidecar.scanner")

# Type families (see catalog.type_family). Only these are ever sampled.
TEXT, DATE, TIMESTAMP, NETWORK, NUMBER = "text", "date", "timestamp", "network", "number"
SAMPLED_FAMILIES = frozenset({TEXT, DATE, TIMESTAMP, NETWORK, NUMBER})
# JSON and array columns: their leaves and elements are judged per path
# (``sidecar.scanner.structured``), never the column's value as a whole.
JSON, ARRAY = "json", "array"
STRUCTURED_FAMILIES = frozenset({JSON, ARRAY})

# Without any sampled value the name alone speaks, capped at NAME_ONLY_CAP so a
# reviewer sees it is a guess. From one value on, values speak (a table of three
# e-mail addresses is an e-mail column), discounted for the sample's size:
# SMALL_SAMPLE_WEIGHT in ``n / (n + SMALL_SAMPLE_WEIGHT)``.
NAME_ONLY_CAP = 0.6
SMALL_SAMPLE_WEIGHT = 4
# Custom detectors, whose confidence is the security team's and gets no discount,
# still need this many values before their value regex decides.
MIN_VALUES = 5
# A name that says the column holds something else (``order_number``,
# ``tracking_id``) caps value evidence here: above the protect threshold (masked
# provisionally, reviewed), below the confident one (0.9).
CONTRARY_NAME_CAP = 0.6
# A detector that matched none of the first PROBE distinct values stops there:
# it could not reach its minimum share on a sample that starts that badly, and
# most columns are rejected this way after a handful of cheap checks.
PROBE = 16
CONFIDENCE_CAP = 0.99
# Free text: the share of sampled values embedding PII from which a column is
# pii.free_text, and the share at which that evidence is at full strength.
FREE_TEXT_MIN_SHARE = 0.02
FREE_TEXT_FULL_SHARE = 0.3


def combine_confidence(
    *,
    name_prior: float,
    hinted: bool,
    share: float,
    sampled: int,
    min_share: float,
    full_share: float = 1.0,
    contrary: bool = False,
) -> float:
    """The confidence of one detector on one column, from name and value evidence.

    - No values (``sampled == 0``: an empty table, a column of NULLs): the name
      hint alone, at most ``NAME_ONLY_CAP``; no hint, no finding.
    - Values that contradict (``share < min_share``): 0, whatever the name says.
    - Otherwise value evidence grows from 0.55 at ``min_share`` to 1.0 at
      ``full_share`` (1 for most detectors; free text reaches it sooner),
      discounted for small samples (``n / (n + 4)``: 3 values of 3 give 0.43,
      10 give 0.71, 100 give 0.96), capped at ``CONTRARY_NAME_CAP`` when the name
      says the column is something else, and combined with the name evidence
      (``name_prior`` when hinted) as a noisy-OR: ``1 - (1 - name) * (1 - value)``,
      capped at 0.99.
    """
    if sampled <= 0:
        return round(min(name_prior, NAME_ONLY_CAP), 3) if hinted else 0.0
    if share < min_share:
        return 0.0
    span = full_share - min_share
    strength = 1.0 if span <= 0 else min(1.0, (share - min_share) / span)
    value = (0.55 + 0.45 * strength) * (sampled / (sampled + SMALL_SAMPLE_WEIGHT))
    if contrary and not hinted:
        value = min(value, CONTRARY_NAME_CAP)
    name = name_prior if hinted else 0.0
    return round(min(CONFIDENCE_CAP, 1.0 - (1.0 - name) * (1.0 - value)), 3)


@dataclass(frozen=True, slots=True)
class ColumnSample:
    """One column as the detectors see it: name, type family and sampled values."""

    name: str
    type: str
    family: str
    values: Sequence[str]


@dataclass(frozen=True, slots=True)
class Finding:
    schema: str
    table: str
    column: str
    classification: str
    confidence: float
    share: float
    detector: str
    path: str = ""  # inside a JSON or array column (sidecar.engine.paths); "" = whole

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": self.schema,
            "table": self.table,
            "column": self.column,
            "classification": self.classification,
            "confidence": self.confidence,
            "share": self.share,
            "detector": self.detector,
        }
        if self.path:
            data["path"] = self.path
        return data


@dataclass(frozen=True, slots=True)
class Verdict:
    """A detector's answer for one column: no value in it, only figures."""

    classification: str
    confidence: float
    share: float
    detector: str


Matcher = Callable[[str, bool], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    classification: str
    families: frozenset[str]
    hint: re.Pattern[str] | None
    match: Matcher | None
    min_share: float = 0.6
    name_prior: float = 0.5
    needs_hint: bool = False  # values alone never suffice (a date is not a birth date)
    veto: re.Pattern[str] | None = None  # names that look like a hint and are not
    # Ranks equal confidences: a restricted class wins over a confidential one.
    rank: int = 0
    # A custom detector's value regex (``match`` applies it in this process; the
    # scan runs it in ``regex_worker`` under a deadline instead).
    value_pattern: re.Pattern[str] | None = None
    # Names that say the column holds something else (see CONTRARY_NAME_CAP).
    contrary: re.Pattern[str] | None = None
    # The share at which value evidence is at full strength.
    full_share: float = 1.0
    # Stop after PROBE distinct values without a match (None: read them all, for a
    # detector whose minimum share is too low for a probe to say anything).
    probe: int | None = PROBE
    # Values that are all numbering (ids, order numbers) are not this class.
    numbering_vetoes: bool = False

    def hinted(self, column: str) -> bool:
        lowered = words_of(column)
        if self.veto is not None and self.veto.search(lowered):
            return False
        return self.hint is not None and bool(self.hint.search(lowered))

    def judge(self, column: ColumnSample, counts: Counter[str], total: int) -> Verdict | None:
        if column.family not in self.families:
            return None
        hinted = self.hinted(column.name)
        if self.needs_hint and not hinted:
            return None
        share = 0.0
        if total and self.match is not None:
            share = value_share(self.match, counts, total, hinted, self.probe)
            if share and self.numbering_vetoes and is_numbering(counts):
                share = 0.0
        confidence = combine_confidence(
            name_prior=self.name_prior,
            hinted=hinted,
            share=share,
            sampled=total,
            min_share=self.min_share,
            full_share=self.full_share,
            contrary=self.contrary is not None
            and bool(self.contrary.search(words_of(column.name))),
        )
        if confidence <= 0:
            return None
        return Verdict(self.classification, confidence, round(share, 3), self.name)


def value_share(
    match: Matcher, counts: Counter[str], total: int, hinted: bool, probe: int | None = PROBE
) -> float:
    """Share of the sampled values (with multiplicity) that ``match`` accepts."""
    matched = 0
    for seen, (value, count) in enumerate(counts.items()):
        if seen == probe and matched == 0:
            return 0.0
        if match(value, hinted):
            matched += count
    return matched / total


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def words_of(column: str) -> str:
    """A column name as lower-case ``_``-separated words, whatever its case style:
    ``dateOfBirth`` and ``DATE_OF_BIRTH`` are ``date_of_birth``."""
    return _CAMEL.sub("_", column).lower()


_SEPARATORS = re.compile(r"[ -]")
NUMBERING_PREFIX = 10


def is_numbering(counts: Counter[str]) -> bool:
    """Digit runs that are one organisation's numbering, not people's numbers: a
    dense range (a sequence, however long its digits) or a long prefix all share (an
    account or order range; cards of one issuer share at most an 8-digit BIN)."""
    digits = [_SEPARATORS.sub("", v) for v in counts]
    digits = [d for d in digits if d.isdigit()]
    if len(digits) < MIN_VALUES:
        return False
    numbers = sorted(int(d) for d in digits)
    if numbers[-1] - numbers[0] <= 100 * len(numbers):
        return True
    # The common prefix of all is that of the (lexicographically) first and last.
    first, last = min(digits), max(digits)
    shared = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), len(first)
    )
    return shared >= NUMBERING_PREFIX


def _names(*parts: str) -> re.Pattern[str]:
    """A hint: one of ``parts`` as the whole name or its last ``_``-separated words."""
    return re.compile(r"(?:^|_)(?:" + "|".join(parts) + r")$")


# --- value validators -------------------------------------------------------------------

_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}$"
)


def is_email(value: str, _hinted: bool = False) -> bool:
    return "@" in value and _EMAIL.match(value.strip()) is not None


_PHONE_SHAPE = re.compile(r"^\+?[\d\s().\-]{7,22}(?:\s*(?:x|ext\.?)\s*\d{1,5})?$")
_DATE_SHAPE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}$")
_IPV4_SHAPE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?$")
_SSN_SHAPE = re.compile(r"^\d{3}-\d{2}-\d{4}$")


# Under a phone-like name, a national number that is not a valid US one is tried
# against these regions too (``020 7946 0958``, ``030 1234567``, ``01 23 45 67 89``).
NATIONAL_REGIONS = ("GB", "DE", "FR", "ES", "IT", "NL", "IN", "BR", "AU")


def is_phone(value: str, hinted: bool = False) -> bool:
    """A valid number by ``phonenumbers``; bare digit runs count only under a name hint
    (a 10-digit order number is also a valid US number), and so do national numbers
    of countries other than the US."""
    value = value.strip()
    if not _PHONE_SHAPE.match(value) or _DATE_SHAPE.match(value) or _IPV4_SHAPE.match(value):
        return False
    if _SSN_SHAPE.match(value):  # 3-2-4 grouping is an SSN's, never a phone number's
        return False
    digits = sum(c.isdigit() for c in value)
    if not 7 <= digits <= 15:
        return False
    international = value.startswith("+")
    if not hinted and not international and value.isdigit():
        return False
    if _valid_in(value, None if international else "US"):
        return True
    return hinted and not international and any(_valid_in(value, r) for r in NATIONAL_REGIONS)


def _valid_in(value: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


_DIGITS9 = re.compile(r"^\d{9}$")
_SSN_SPACED = re.compile(r"^\d{3} \d{2} \d{4}$")
_SSN_INTEGER = re.compile(r"^\d{7,9}$")


def is_ssn(value: str, hinted: bool = False) -> bool:
    """``123-45-6789`` or ``123 45 6789``; under an SSN name also 9 bare digits, or 7-8
    (an SSN stored as a number loses its leading zeros: area 001-099)."""
    value = value.strip()
    if _SSN_SHAPE.match(value) or _SSN_SPACED.match(value):
        return bool(us_ssn.is_valid(value.replace(" ", "-")))
    if hinted and _SSN_INTEGER.match(value):
        return bool(us_ssn.is_valid(value.zfill(9)))
    return False


# National ids other than the US SSN: formats distinctive enough to count on
# their own, and bare digit runs (BSN, PESEL, Steuer-ID) only under a name hint.
_NATIONAL_STRONG: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    (re.compile(r"^\d{8}-?[A-Z]$"), es_dni.is_valid),
    (re.compile(r"^[XYZ]\d{7}-?[A-Z]$"), es_nie.is_valid),
    (re.compile(r"^[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]$"), it_cf.is_valid),
    (re.compile(r"^\d{6}[-+A]\d{3}[0-9A-Y]$"), fi_hetu.is_valid),
    (re.compile(r"^(?:\d{2})?\d{6}[-+]\d{4}$"), se_pnr.is_valid),
    (re.compile(r"^\d{6}-\d{4}$"), dk_cpr.is_valid),
    (re.compile(r"^[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}$"), fr_nir.is_valid),
)
_NATIONAL_DIGITS: tuple[tuple[re.Pattern[str], Callable[[str], bool]], ...] = (
    (_DIGITS9, nl_bsn.is_valid),
    (re.compile(r"^\d{11}$"), pl_pesel.is_valid),
    (re.compile(r"^\d{11}$"), de_idnr.is_valid),
)


def is_national_id(value: str, hinted: bool = False) -> bool:
    value = value.strip()
    for shape, valid in _NATIONAL_STRONG:
        if shape.match(value) and valid(value):
            return True
    if hinted:
        for shape, valid in _NATIONAL_DIGITS:
            if shape.match(value) and valid(value):
                return True
    return False


_CARD_SHAPE = re.compile(r"^\d[\d -]{11,22}\d$")


def _issuer_accepts(digits: str) -> bool:
    """Plausible issuer (IIN) range for the length: Visa, Mastercard, Amex, Discover,
    JCB, Diners, UnionPay."""
    n = len(digits)
    p2, p3, p4 = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p4 == 6011 or p2 == 65 or 644 <= p3 <= 649 or p2 == 62:
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:
        return 14 <= n <= 19
    return False


def is_card(value: str, _hinted: bool = False) -> bool:
    value = value.strip()
    if not _CARD_SHAPE.match(value):
        return False
    digits = value.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _issuer_accepts(digits) and luhn.is_valid(digits)


_IBAN_SHAPE = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9 ]{10,40}$")
# IBAN length per country (ISO 13616 registry), then the ISO 7064 mod 97-10 check
# digits (python-stdnum). stdnum.iban.is_valid also checks each country's BBAN
# structure against its bank registry, at ~5x the cost, which dominated a scan.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def is_iban(value: str, _hinted: bool = False) -> bool:
    value = value.strip().upper()
    if _IBAN_SHAPE.match(value) is None:
        return False
    compact = value.replace(" ", "")
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    return bool(mod_97_10.is_valid(compact[4:] + compact[:4]))


_IPV6_SHAPE = re.compile(r"^[0-9A-Fa-f:.]{2,45}(?:/\d{1,3})?$")


def is_ip_address(value: str, _hinted: bool = False) -> bool:
    """One host address (``inet`` prints ``/32`` or ``/128`` for hosts); a network
    prefix such as ``10.0.0.0/8`` describes infrastructure, not a person."""
    value = value.strip()
    if not (_IPV4_SHAPE.match(value) or (value.count(":") >= 2 and _IPV6_SHAPE.match(value))):
        return False
    address, _, prefix = value.partition("/")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not prefix or prefix == str(parsed.max_prefixlen)


_ISO_DATE = re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T]|$)")
_DMY_DATE = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})$")
_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        zip(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
            [
                "january",
                "february",
                "march",
                "april",
                "may",
                "june",
                "july",
                "august",
                "september",
                "october",
                "november",
                "december",
            ],
            strict=True,
        )
    )
    for m in names
}
# "March 3, 1984", "Mar 3 1984", "3 March 1984", "03-Mar-1984"
_MONTH_FIRST = re.compile(r"^([A-Za-z]{3,9})\.? (\d{1,2}),? (\d{4})$")
_DAY_FIRST = re.compile(r"^(\d{1,2})[ -]([A-Za-z]{3,9})\.?[ -](\d{4})$")


def _as_date(value: str) -> datetime.date | None:
    value = value.strip()
    try:
        if m := _ISO_DATE.match(value):
            return datetime.date(int(m[1]), int(m[2]), int(m[3]))
        if m := _DMY_DATE.match(value):
            first, second, year = int(m[1]), int(m[2]), int(m[3])
            # Day-first unless that cannot be a date (then month-first, US style).
            if second <= 12:
                return datetime.date(year, second, first)
            return datetime.date(year, first, second)
        if (m := _MONTH_FIRST.match(value)) and (month := _MONTHS.get(m[1].lower())):
            return datetime.date(int(m[3]), month, int(m[2]))
        if (m := _DAY_FIRST.match(value)) and (month := _MONTHS.get(m[2].lower())):
            return datetime.date(int(m[3]), month, int(m[1]))
    except ValueError:
        return None
    return None


def is_birth_date(value: str, _hinted: bool = False) -> bool:
    """A date a living person was plausibly born on: 0 to 120 years ago."""
    day = _as_date(value)
    if day is None:
        return False
    today = datetime.date.today()
    return today.year - 120 <= day.year and day <= today


# Parts of a name token: "Jean-Luc", "O'Connor" (the apostrophe may be U+2019).
_NAME_PARTS = re.compile(r"[-'\u2019]")
_NAME_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "da", "di", "del", "la", "le", "du", "dos", "das", "al"}
)


def _name_token(token: str, *, caps: bool) -> bool:
    """A capitalised word in any alphabet with case ("Łukasz", "Çelik", "McDonald",
    "Jean-Luc", "J."); all capitals ("GARCÍA") only when ``caps``."""
    parts = _NAME_PARTS.split(token.removesuffix("."))
    for part in parts:
        if not part or not part.isalpha() or not part[0].isupper():
            return False
        if len(part) > 1 and part.isupper() and not caps:
            return False
    return True


def is_person_name(value: str, hinted: bool = False) -> bool:
    """Capitalised 2-3 tokens starting with a common given name or ending with a
    common family name ("Maria Garcia", "Quentin Smith"); under a name hint any
    capitalised 1-4 tokens, and the ``LAST, First`` of old exports."""
    last, comma, first = value.partition(",")
    legacy = bool(comma) and hinted
    tokens = (first + " " + last).split() if legacy else value.split()
    words = [t for t in tokens if t not in _NAME_PARTICLES]
    if not 1 <= len(words) <= 4 or len(tokens) > 6:
        return False
    if not all(_name_token(t, caps=legacy) for t in words):
        return False
    if hinted:
        return True
    if 2 <= len(words) <= 3:
        return (
            words[0].lower().rstrip(".") in GIVEN_NAMES
            or words[-1].lower() in FAMILY_NAMES
            or words[-2].lower() in FAMILY_NAMES  # "García López"
        )
    return False


_SECRET_FORMATS = re.compile(
    r"^(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:sk|rk)_live_[A-Za-z0-9]{16,}"  # Stripe secret / restricted keys
    r"|sk-[A-Za-z0-9_-]{32,}"  # OpenAI-style keys
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r")"
)
_JWT_SHAPE = re.compile(r"^(eyJ[A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-.~]{20,}$")
_UUID_SHAPE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
ENTROPY_BITS = 3.5  # per character; random base64 is ~5.5, English words ~2.5-3.5
ENTROPY_MIN_LENGTH = 20


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character distribution."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _jwt(value: str) -> bool:
    m = _JWT_SHAPE.match(value)
    if m is None:
        return False
    head = m[1]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def is_secret(value: str, hinted: bool = False) -> bool:
    """A well-known key format, a JWT with a decodable header, or a high-entropy string
    (under a name hint, or unhinted when it mixes upper, lower case and digits)."""
    value = value.strip()
    if _SECRET_FORMATS.match(value) or _jwt(value):
        return True
    if not _TOKEN_CHARS.match(value) or _UUID_SHAPE.match(value):
        return False
    if shannon_entropy(value) < ENTROPY_BITS:
        return False
    if hinted:
        return True
    mixed = (
        len(value) >= 24
        and any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and sum(c.isdigit() for c in value) >= 2
    )
    return mixed


_PASSWORD_HASH = re.compile(
    r"^(?:"
    r"\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}"  # bcrypt
    r"|\$argon2(?:id|i|d)\$v=\d+\$\S+"  # argon2
    r"|\$[156]\$(?:rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{22,86}"  # crypt(3)
    r"|(?:pbkdf2_sha(?:1|256|512)|bcrypt_sha256|argon2|scrypt)\$\S{20,}"  # Django
    r"|(?:pbkdf2|scrypt):[a-z0-9:]+\$\S{8,}"  # Werkzeug
    r"|\{(?:SSHA|SHA|SSHA256|SSHA512|CRYPT)\}\S{16,}"  # LDAP
    r")$"
)


def is_password(value: str, hinted: bool = False) -> bool:
    """A password hash in a well-known format; under a password name also any
    single-word value of password length (a plaintext password column)."""
    value = value.strip()
    if _PASSWORD_HASH.match(value):
        return True
    return hinted and 4 <= len(value) <= 128 and not any(c.isspace() for c in value)


_STREET_SUFFIX = (
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl"
    r"|terrace|ter|circle|cir|parkway|pkwy|highway|hwy|square|sq|close|crescent|row|trail"
    r"|alley|grove|gardens)"
)
_ADDRESS_SHAPES = (
    re.compile(
        r"^\d{1,6}[A-Za-z]?(?:\s+[NSEW]\.?)?(?:\s+[A-Za-z0-9'.]+){1,4}\s+"
        + _STREET_SUFFIX
        + r"\.?(?:$|[\s,#])",
        re.IGNORECASE,
    ),
    re.compile(
        r"^[A-ZÄÖÜ][\w.\- ]{0,40}?(?:straße|strasse|str\.|weg|gasse|allee|platz|laan|straat"
        r"|gracht|vej|gatan|gata|katu)\s+\d{1,5}[a-z]?\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"^\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|av\.|boulevard|bd|place|chemin|allée"
        r"|impasse|quai|calle|via|viale|piazza)\s+\w",
        re.IGNORECASE,
    ),
    re.compile(r"^(?:calle|via|viale|piazza|rua|avenida)\s+[\w' ]{2,40},?\s+\d{1,5}\b", re.I),
    re.compile(r"^p\.?\s?o\.?\s+box\s+\d+", re.IGNORECASE),
)


def is_postal_address(value: str, _hinted: bool = False) -> bool:
    value = value.strip()
    return any(shape.match(value) for shape in _ADDRESS_SHAPES)


# Candidates for PII inside free text, each validated by the matchers above: an
# e-mail address; a national id of a distinctive format (DNI/NIE, codice fiscale,
# HETU, personnummer/CPR); a run of digits with separators (a phone number, card,
# SSN or NIR). These are the patterns the pii.free_text mask replaces in the database
# too (docs/masking.md), where nothing validates them.
_EMBEDDED = re.compile(
    r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}"
    r"|\b[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]\b"
    r"|\b[XYZ0-9]\d{7}-?[A-Z]\b"
    r"|\b\d{6}[-+A]\d{3}[0-9A-Y]\b"
    r"|\b(?:\d{2})?\d{6}[-+]\d{4}\b"
    # Not inside a code: "INV-2024-854802" holds a valid US number by its digits.
    r"|(?<![\w-])\+?\(?\d[\d ().\-]{6,24}\d(?![\w-])"
)
_DIGIT_OR_AT = re.compile(r"[\d@]")
# Other text: a word with lower-case letters ("NWBK" in a grouped IBAN is no prose).
_WORD = re.compile(r"\b[^\W\d_]?[a-zß-ÿ]{2,}\b")


def contains_pii(value: str, _hinted: bool = False) -> bool:
    """Free text with PII inside it: a validated e-mail address, phone number (with
    separators or a country code; bare digit runs are order numbers as often),
    card number (Luhn and issuer), SSN or national id, next to at least one word of
    other text. A value that *is* an address or a number is its own detector's."""
    # Prose has spaces, and every pattern a digit or an "@": most values stop here.
    if " " not in value or _DIGIT_OR_AT.search(value) is None:
        return False
    for m in _EMBEDDED.finditer(value):
        # Other text first: it is cheaper than the validators, and a value that is
        # only an address or a number (most of them, in such columns) stops here.
        if not (_WORD.search(value, 0, m.start()) or _WORD.search(value, m.end())):
            continue
        candidate = m.group().strip(" .-()")
        if (
            is_email(candidate)
            or is_card(candidate)
            or is_ssn(candidate)
            or is_national_id(candidate)
            or is_phone(candidate)
        ):
            return True
    return False


# --- the built-in detectors -----------------------------------------------------------------

_TEXTISH = frozenset({TEXT})
# Names that say a column holds an organisation's own numbers, codes or amounts.
_CONTRARY = re.compile(
    r"(?:^|_)(?:ids?|order|invoice|tracking|track|ref|reference|sku|ean|upc|gtin|isbn|barcode"
    r"|serial|batch|lot|part|item|seq|sequence|counter|count|hash|checksum|version|amount"
    r"|total|price|qty|quantity|gift|voucher|coupon|loyalty|ticket|confirmation|booking"
    r"|shipment|parcel|product|model)(?:_|$)"
)

BUILTIN_DETECTORS: tuple[Detector, ...] = (
    Detector(
        "email",
        "pii.email",
        _TEXTISH,
        _names(
            "e_?mail", "e_?mail_?addr(?:ess)?", "mail_?addr(?:ess)?", "eml", "correo", "courriel"
        ),
        is_email,
        min_share=0.6,
    ),
    Detector(
        "phone",
        "pii.phone",
        frozenset({TEXT, NUMBER}),
        _names(
            "phone",
            "phone_?(?:number|no|num)",
            "tel",
            "tel_?no",
            "telephone",
            "mobile",
            "cell",
            "fax",
            "telefon(?:o|nummer)?",
            "telefone",
            "handy",
            "movil",
            "portable",
        ),
        is_phone,
        min_share=0.6,
        contrary=_CONTRARY,
    ),
    Detector(
        "ssn",
        "pii.ssn",
        frozenset({TEXT, NUMBER}),
        _names(
            "ssn",
            "ssn_?(?:number|no|num)",
            "social_?security(?:_?(?:number|no|num))?",
            "soc_?sec(?:_?no)?",
        ),
        is_ssn,
        min_share=0.6,
        name_prior=0.6,
        rank=2,
        contrary=_CONTRARY,
    ),
    Detector(
        "national_id",
        "pii.national_id",
        frozenset({TEXT, NUMBER}),
        _names(
            "national_?id",
            "national_?id_?(?:number|no)",
            "nin",
            "bsn",
            "pesel",
            "dni",
            "nie",
            "nif",
            "codice_?fiscale",
            "cpr",
            "personnummer",
            "hetu",
            "nir",
            "steuer_?id",
            "tax_?id",
            "idnr",
            "personal_?id(?:_?number)?",
            "id_?number",
            "passport(?:_?(?:number|no))?",
        ),
        is_national_id,
        min_share=0.6,
        name_prior=0.6,
        rank=1,
        contrary=_CONTRARY,
    ),
    Detector(
        "card",
        "financial.card",
        frozenset({TEXT, NUMBER}),
        _names("card_?(?:number|no|num)", "cc_?(?:number|no|num)?", "pan", "credit_?card"),
        is_card,
        min_share=0.6,
        rank=2,
        contrary=_CONTRARY,
        numbering_vetoes=True,
    ),
    Detector(
        "iban",
        "financial.iban",
        _TEXTISH,
        _names("iban", "bank_?account(?:_?(?:number|no))?", "account_?iban"),
        is_iban,
        min_share=0.6,
        rank=2,
    ),
    Detector(
        "ip_address",
        "pii.ip_address",
        frozenset({TEXT, NETWORK}),
        _names("ip", "ip_?addr(?:ess)?", "client_?ip", "remote_?addr(?:ess)?", "ip_?v[46]"),
        is_ip_address,
        min_share=0.7,
    ),
    Detector(
        "birth_date",
        "pii.dob",
        frozenset({TEXT, DATE, TIMESTAMP}),
        re.compile(
            r"(?:^|_)(?:dob|d_o_b|birth_?(?:date|day|dt)?|date_?of_?birth|born(?:_on)?"
            r"|geburtsdatum|geburtstag|fecha_?(?:de_?)?nacimiento|date_?(?:de_?)?naissance"
            r"|data_?(?:di_?)?nascita|data_?(?:de_?)?nascimento|fodelsedatum|syntymaaika)$"
        ),
        is_birth_date,
        min_share=0.8,
        name_prior=0.6,
        needs_hint=True,
    ),
    Detector(
        "person_name",
        "pii.name",
        _TEXTISH,
        re.compile(
            r"(?:^|_)(?:first|last|given|family|sur|middle|full|maiden|legal|nick|display"
            r"|contact|customer|patient|employee|person|holder|cardholder)_?name$"
            r"|^(?:fname|lname|surname|forename|firstname|lastname|fullname)$"
            r"|(?:^|_)(?:cardholder|account_?holder|nombre|apellidos?|vorname|nachname"
            r"|prenom|nome|cognome|voornaam|achternaam)$"
        ),
        is_person_name,
        min_share=0.5,
        name_prior=0.4,
    ),
    Detector(
        "secret",
        "secret.token",
        _TEXTISH,
        _names(
            "token",
            "secret",
            "api_?key",
            "access_?key",
            "secret_?key",
            "private_?key",
            "client_?secret",
            "(?:access|refresh|auth|bearer|session|api)_?token",
            "signing_?key",
            "webhook_?secret",
            "credentials?",
        ),
        is_secret,
        min_share=0.5,
        name_prior=0.5,
        rank=2,
    ),
    Detector(
        "password",
        "secret.password",
        _TEXTISH,
        _names("password", "passwd", "pwd", "pass_?hash", "password_?(?:hash|digest|crypt)"),
        is_password,
        min_share=0.6,
        name_prior=0.5,
        rank=2,
    ),
    Detector(
        "postal_address",
        "pii.address",
        _TEXTISH,
        _names(
            "address",
            "street(?:_?address)?",
            "address_?line_?[123]?",
            "addr(?:_?line)?_?[123]?",
            "(?:home|mailing|shipping|billing|postal|street|residential)_?address",
            "direccion",
            "adresse",
            "anschrift",
            "indirizzo",
            "endereco",
            "adres",
        ),
        is_postal_address,
        min_share=0.5,
        veto=re.compile(
            r"(?:ip|e_?mail|mac|web|url|wallet|server|remote|client|host|contract)_?addr"
        ),
    ),
    Detector(
        "free_text",
        "pii.free_text",
        _TEXTISH,
        _names(
            "notes?",
            "comments?",
            "description",
            "body",
            "message",
            "remarks?",
            "memo",
            "details",
            "text",
            "content",
            "feedback",
            "instructions",
            "observations?",
            "notas?",
            "notizen",
            "commentaires?",
        ),
        contains_pii,
        # See docs/scanner.md#free-text: 2% of sampled values (2 in 100) is enough to
        # call it free text with PII; 30% is full strength.
        min_share=FREE_TEXT_MIN_SHARE,
        full_share=FREE_TEXT_FULL_SHARE,
        name_prior=0.3,
        rank=-1,  # on a tie the column's own class wins (values that ARE numbers)
        probe=None,
    ),
)


# --- custom detectors from the bundle ----------------------------------------------------------


def custom_detectors(specs: Iterable[Any]) -> tuple[list[Detector], int]:
    """Compile the bundle's ``detectors``; a bad one is skipped and counted, never fatal.

    Name regex only: the name decides (values are not consulted). Value regex
    only: at least half the sampled values must match (``re.fullmatch``). Both:
    the name must match and, when there are values, so must half of them.
    """
    compiled: list[Detector] = []
    skipped = 0
    for spec in specs:
        try:
            name = str(spec["name"])
            classification = str(spec["classification"])
            confidence = float(spec["confidence"])
            name_re = re.compile(spec["name_regex"]) if spec.get("name_regex") else None
            value_re = re.compile(spec["value_regex"]) if spec.get("value_regex") else None
            if (name_re is None and value_re is None) or not 0 <= confidence <= 1:
                raise ValueError("no regex or a confidence outside 0..1")
        except (KeyError, TypeError, ValueError, re.error, OverflowError) as exc:
            skipped += 1
            log.warning("custom detector skipped: %s", type(exc).__name__)
            continue
        compiled.append(_custom(name, classification, confidence, name_re, value_re))
    return compiled, skipped


CUSTOM_RANK = 3


def _custom(
    name: str,
    classification: str,
    confidence: float,
    name_re: re.Pattern[str] | None,
    value_re: re.Pattern[str] | None,
) -> Detector:
    def match(value: str, _hinted: bool) -> bool:
        return value_re is not None and value_re.fullmatch(value) is not None

    return Detector(
        name=f"custom:{name}",
        classification=classification,
        families=SAMPLED_FAMILIES | STRUCTURED_FAMILIES | {"other", "bool"},
        hint=name_re,
        match=match if value_re is not None else None,
        min_share=0.5,
        name_prior=confidence,
        needs_hint=name_re is not None,
        rank=CUSTOM_RANK,
        value_pattern=value_re,
    )


def custom_verdict(detector: Detector, *, hinted: bool, share: float | None) -> Verdict | None:
    """A custom detector's verdict from what its regexes said: ``hinted`` (its name
    regex matched the column name, or it has none) and ``share`` (of the sampled values
    its value regex matched; None when values were not consulted: no value regex, or
    fewer than ``MIN_VALUES`` values). Its confidence is the one the security team gave."""
    if not hinted:
        return None
    if share is None:
        if detector.hint is None:
            return None
        return Verdict(detector.classification, detector.name_prior, 0.0, detector.name)
    if share < detector.min_share:
        return None
    return Verdict(detector.classification, detector.name_prior, round(share, 3), detector.name)


def _custom_verdict(
    detector: Detector, column: ColumnSample, counts: Counter[str]
) -> Verdict | None:
    if detector.hint is not None and not detector.hint.search(column.name):
        return None
    total = sum(counts.values())
    share = None
    if detector.match is not None and total >= MIN_VALUES:
        share = value_share(detector.match, counts, total, True)
    return custom_verdict(detector, hinted=True, share=share)


_BUILTIN_RANKS = {d.name: d.rank for d in BUILTIN_DETECTORS}


def _rank(verdict: Verdict) -> int:
    if verdict.detector.startswith("custom:"):
        return CUSTOM_RANK
    return _BUILTIN_RANKS.get(verdict.detector, 0)


def preferred(current: Verdict | None, candidate: Verdict | None) -> Verdict | None:
    """The better of two verdicts: higher confidence, then rank; ``current`` on a tie."""
    if candidate is None:
        return current
    if current is None or (candidate.confidence, _rank(candidate)) > (
        current.confidence,
        _rank(current),
    ):
        return candidate
    return current


def classify(column: ColumnSample, custom: Sequence[Detector] = ()) -> Verdict | None:
    """The best verdict for one column (highest confidence, then rank), or None.

    ``custom`` detectors run here, in this process, without a time limit: the scan
    passes none and runs them through ``sidecar.scanner.regex_worker`` instead."""
    counts = Counter(v for v in column.values if v)
    total = sum(counts.values())
    best: Verdict | None = None
    for detector in BUILTIN_DETECTORS:
        best = preferred(best, detector.judge(column, counts, total))
    for detector in custom:
        best = preferred(best, _custom_verdict(detector, column, counts))
    return best
