"""The policy model: who may connect, to which databases, what is sensitive, and what is refused.

Every invariant lives twice: as a database constraint (so no code path, not even
a raw UPDATE, can store contradictory policy) and in ``clean()`` (so forms and
the API explain the problem field by field before anything is stored). Rules
that need other rows (an owner must be a human, a masking rule must not
contradict another) can only live in ``clean()``; services always call
``full_clean()`` before saving.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from sidecar.engine import vocabulary


@models.JSONField.register_lookup
class JSONBTypeOf(models.Transform):
    """``field__jsonb_typeof="object"``: lets a CHECK constraint pin a JSON column's shape."""

    lookup_name = "jsonb_typeof"
    function = "jsonb_typeof"
    output_field = models.CharField()


# --- roles -------------------------------------------------------------------------


class Role(models.TextChoices):
    """What a signed-in person may do in the control plane (one role per user)."""

    ADMIN = "admin", "Admin"
    SECURITY = "security", "Security (edits policy)"
    REVIEWER = "reviewer", "Reviewer (decides approvals)"
    AUDITOR = "auditor", "Auditor (reads everything)"
    NONE = "none", "None (sees nothing)"


class Membership(models.Model):
    """A user's role. Users without one have role ``none``; superusers are admins."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.NONE)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


# --- teams and identities ----------------------------------------------------------

# An identity name is the PostgreSQL user name clients connect with; keeping it
# to lower-case identifier characters means it never needs quoting anywhere.
IDENTITY_NAME_RE = r"^[a-z_][a-z0-9_.-]{0,62}$"
SLUG_RE = r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$"
identity_name_validator = RegexValidator(
    IDENTITY_NAME_RE,
    "Use 1-63 lower-case letters, digits, '_', '.' or '-', starting with a letter or '_'.",
)
slug_validator = RegexValidator(
    SLUG_RE, "Use lower-case letters and digits, separated by single '-' or '_'."
)


class Team(models.Model):
    """A group of identities; teams may connect to, review, or be exempt from policy."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(slug__regex=SLUG_RE), name="team_slug_format"),
        ]

    def __str__(self) -> str:
        return self.name


class IdentityKind(models.TextChoices):
    HUMAN = "human", "Human"
    SERVICE = "service", "Service account"
    AGENT = "agent", "AI agent"


class Identity(models.Model):
    """Someone or something that connects to a protected database through the sidecar."""

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[identity_name_validator],
        help_text="The PostgreSQL user name clients connect with.",
    )
    kind = models.CharField(max_length=16, choices=IdentityKind.choices)
    display_name = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="identity",
        help_text="The sign-in account of a human identity.",
    )
    owner = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="owned_identities",
        help_text="The accountable human for a service account or AI agent.",
    )
    teams = models.ManyToManyField(Team, blank=True, related_name="identities")
    is_active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "identities"
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=IdentityKind.values), name="identity_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(name__regex=IDENTITY_NAME_RE), name="identity_name_format"
            ),
            # Non-humans are always accountable to someone.
            models.CheckConstraint(
                condition=Q(kind=IdentityKind.HUMAN) | Q(owner__isnull=False),
                name="identity_nonhuman_has_owner",
            ),
            # Only people sign in; a service account with a login is a shared password.
            models.CheckConstraint(
                condition=Q(kind=IdentityKind.HUMAN) | Q(user__isnull=True),
                name="identity_only_humans_have_user",
            ),
            models.CheckConstraint(
                condition=~Q(owner=models.F("id")), name="identity_not_own_owner"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.kind != IdentityKind.HUMAN:
            if self.owner_id is None:
                errors.setdefault("owner", []).append(
                    "A service account or agent needs an accountable human owner."
                )
            if self.user_id is not None:
                errors.setdefault("user", []).append("Only human identities have a sign-in.")
        if self.owner_id is not None and self.kind == IdentityKind.HUMAN:
            # An owner answers for a service account or agent. Over a person it would
            # only lend powers: their tokens, and a say in their approvals.
            errors.setdefault("owner", []).append(
                "A person answers for themselves: only a service account or agent has an owner."
            )
        elif self.owner_id is not None:
            owner = self.owner
            if self.pk is not None and owner.pk == self.pk:
                errors.setdefault("owner", []).append("An identity cannot own itself.")
            elif owner.kind != IdentityKind.HUMAN:
                errors.setdefault("owner", []).append("The owner must be a human identity.")
            elif not owner.is_active:
                errors.setdefault("owner", []).append("The owner is not active.")
        if (
            self.pk is not None
            and self.kind != IdentityKind.HUMAN
            and self.owned_identities.exists()
        ):
            errors.setdefault("kind", []).append(
                "This identity owns others; only a human can own identities."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


# --- access tokens -------------------------------------------------------------------

TOKEN_PREFIX = "wdn_"  # noqa: S105 - a marker, not a secret
API_TOKEN_PREFIX = "wda_"  # noqa: S105


def token_digest(raw: str) -> str:
    """SHA-256 hex of a raw token. Tokens carry 256 bits of entropy, so no salt is needed."""
    return hashlib.sha256(raw.encode()).hexdigest()


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for ``password`` (as stored in pg_authid).

    The sidecar authenticates clients offline against this; the raw token never
    leaves the control plane. Tokens are ASCII, so SASLprep leaves them unchanged.
    """
    import base64
    import hmac

    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class AccessToken(models.Model):
    """A credential an identity connects with (its PostgreSQL password). Shown once."""

    identity = models.ForeignKey(Identity, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise it.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scram_verifier = models.CharField(max_length=200, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(digest__regex=r"^[0-9a-f]{64}$"), name="accesstoken_digest_sha256"
            ),
            models.CheckConstraint(
                condition=Q(scram_verifier__startswith="SCRAM-SHA-256$"),
                name="accesstoken_scram_format",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identity.name}: {self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def clean(self) -> None:
        if self._state.adding and self.expires_at is not None and self.expires_at <= timezone.now():
            raise ValidationError({"expires_at": "The expiry must be in the future."})


class ApiToken(models.Model):
    """A management-API token for automation, acting as its user. Stored as a digest."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(digest__regex=r"^[0-9a-f]{64}$"), name="apitoken_digest_sha256"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user}: {self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


# --- environments and datasources ----------------------------------------------------


class Environment(models.Model):
    """Where a datasource runs; criticality 1 (sandbox) .. 5 (production) drives risk."""

    name = models.CharField(max_length=32, unique=True, validators=[slug_validator])
    criticality = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    description = models.TextField(blank=True)
    # Scanner findings at or above this confidence are enforced at once, with their
    # classification's default mask, while they wait for review (None: only
    # confirmed and confident findings are, as in a sandbox).
    protect_threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Findings at or above this confidence are masked before anyone reviews "
        "them; empty: only confirmed and confident (0.9) findings.",
    )

    class Meta:
        ordering = ["-criticality", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(criticality__gte=1) & Q(criticality__lte=5),
                name="environment_criticality_1_5",
            ),
            models.CheckConstraint(
                condition=Q(protect_threshold__isnull=True)
                | (Q(protect_threshold__gte=0) & Q(protect_threshold__lte=1)),
                name="environment_protect_threshold_0_1",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_production(self) -> bool:
        return self.criticality >= PRODUCTION_CRITICALITY


class Engine(models.TextChoices):
    POSTGRESQL = "postgresql", "PostgreSQL"


class Dialect(models.TextChoices):
    POSTGRES = "postgres", "PostgreSQL"


def validate_schema_snapshot(value: Any) -> None:
    """Shape: {"tables": [{"schema", "name", "kind", "columns": [{"name", "type"}]}]}."""
    if not isinstance(value, dict):
        raise ValidationError("The schema snapshot must be an object with a 'tables' list.")
    unknown = set(value) - {"tables", "scanned_at"}
    if unknown:
        raise ValidationError(f"Unknown keys in the schema snapshot: {', '.join(sorted(unknown))}.")
    tables = value.get("tables", [])
    if not isinstance(tables, list):
        raise ValidationError("'tables' must be a list.")
    seen: set[tuple[str, str]] = set()
    for i, table in enumerate(tables):
        where = f"tables[{i}]"
        if not isinstance(table, dict):
            raise ValidationError(f"{where} must be an object.")
        for key in ("schema", "name"):
            if not isinstance(table.get(key), str) or not table.get(key):
                raise ValidationError(f"{where}.{key} must be a non-empty string.")
        if table.get("kind", "table") not in {
            "table",
            "view",
            "materialized_view",
            "foreign_table",
            "partitioned_table",
        }:
            raise ValidationError(f"{where}.kind is not a known relation kind.")
        key_pair = (table["schema"], table["name"])
        if key_pair in seen:
            raise ValidationError(f"{where}: {table['schema']}.{table['name']} appears twice.")
        seen.add(key_pair)
        columns = table.get("columns", [])
        if not isinstance(columns, list):
            raise ValidationError(f"{where}.columns must be a list.")
        _validate_relation_extras(table, where)
        names: set[str] = set()
        for j, column in enumerate(columns):
            if (
                not isinstance(column, dict)
                or not isinstance(column.get("name"), str)
                or not column.get("name")
                or not isinstance(column.get("type"), str)
            ):
                raise ValidationError(f"{where}.columns[{j}] needs a 'name' and a 'type' string.")
            if column["name"] in names:
                raise ValidationError(f"{where}: column {column['name']} appears twice.")
            names.add(column["name"])
            sources = column.get("sources")
            if sources is not None and (
                not isinstance(sources, list)
                or len(sources) > 64
                or not all(isinstance(p, str) and _SOURCE_RE.match(p) for p in sources)
            ):
                raise ValidationError(
                    f"{where}.columns[{j}].sources must be a list of 'schema.table.column'."
                )


# A view column's source: schema.table.column (names as PostgreSQL stores them).
_SOURCE_RE = re.compile(r"^[^.\x00]{1,63}\.[^.\x00]{1,63}\.[^.\x00]{1,63}$")
VIEW_DEFINITION_MAX_LENGTH = 100_000


def _validate_relation_extras(table: dict[str, Any], where: str) -> None:
    """The optional keys a scan adds to a relation (docs/classification.md)."""
    estimate = table.get("row_estimate")
    if estimate is not None and (
        not isinstance(estimate, int) or isinstance(estimate, bool) or estimate < -1
    ):
        raise ValidationError(f"{where}.row_estimate must be an integer.")
    definition = table.get("definition")
    if definition is not None:
        if table.get("kind") not in {"view", "materialized_view"}:
            raise ValidationError(f"{where}.definition belongs to views only.")
        if not isinstance(definition, str) or len(definition) > VIEW_DEFINITION_MAX_LENGTH:
            raise ValidationError(
                f"{where}.definition must be a string of at most {VIEW_DEFINITION_MAX_LENGTH} "
                "characters."
            )


class Datasource(models.Model):
    """One protected database behind a sidecar."""

    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    engine = models.CharField(max_length=16, choices=Engine.choices, default=Engine.POSTGRESQL)
    dialect = models.CharField(max_length=16, choices=Dialect.choices, default=Dialect.POSTGRES)
    environment = models.ForeignKey(
        Environment, on_delete=models.PROTECT, related_name="datasources"
    )
    description = models.TextField(blank=True)
    schema_snapshot = models.JSONField(
        default=dict, blank=True, validators=[validate_schema_snapshot]
    )
    connect_teams = models.ManyToManyField(Team, blank=True, related_name="connectable_datasources")
    review_teams = models.ManyToManyField(Team, blank=True, related_name="reviewed_datasources")
    # Provisional findings (below the confident threshold, not yet reviewed) are only
    # audited for service identities ("would have masked"), so an application never
    # reads a masked value and writes it back; on, they are masked for them too.
    mask_services_provisionally = models.BooleanField(
        default=False,
        help_text="Mask columns the scanner found but nobody confirmed yet for service "
        "accounts too (by default they are only audited for services).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(engine__in=Engine.values), name="datasource_engine_valid"
            ),
            models.CheckConstraint(
                condition=Q(dialect__in=Dialect.values), name="datasource_dialect_valid"
            ),
            models.CheckConstraint(condition=Q(name__regex=SLUG_RE), name="datasource_name_format"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.engine == Engine.POSTGRESQL and self.dialect != Dialect.POSTGRES:
            raise ValidationError({"dialect": "A PostgreSQL datasource uses the postgres dialect."})

    def snapshot_columns(self) -> dict[tuple[str, str], list[str]]:
        """(schema, table) -> column names, from the schema snapshot."""
        tables = (self.schema_snapshot or {}).get("tables", [])
        return {(t["schema"], t["name"]): [c["name"] for c in t.get("columns", [])] for t in tables}


def identities_allowed_on(datasource: Datasource, now: Any = None) -> models.QuerySet[Identity]:
    """The identities that may connect to ``datasource``, as its bundle lists them:
    active, unexpired members of a team that may connect to it."""
    now = now or timezone.now()
    return (
        Identity.objects.filter(is_active=True, teams__in=datasource.connect_teams.all())
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .distinct()
    )


# --- classifications -----------------------------------------------------------------


class Level(models.TextChoices):
    """Sensitivity, in increasing order: ``vocabulary.LEVELS`` (a test holds them equal)."""

    PUBLIC = "public", "Public"
    INTERNAL = "internal", "Internal"
    CONFIDENTIAL = "confidential", "Confidential"
    RESTRICTED = "restricted", "Restricted"

    @property
    def rank(self) -> int:
        return list(Level).index(self)


CLASSIFICATION_NAME_RE = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$"


class Classification(models.Model):
    """A sensitivity label such as ``pii.email``; built-in ones come from a migration."""

    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[
            RegexValidator(
                CLASSIFICATION_NAME_RE,
                "Use dotted lower-case names such as 'pii.email' (at least one dot).",
            )
        ],
    )
    level = models.CharField(max_length=16, choices=Level.choices)
    description = models.TextField(blank=True)
    is_builtin = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(level__in=Level.values), name="classification_level_valid"
            ),
            models.CheckConstraint(
                condition=Q(name__regex=CLASSIFICATION_NAME_RE), name="classification_name_format"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def level_rank(self) -> int:
        return Level(self.level).rank


class ClassificationSource(models.TextChoices):
    AUTO = "auto", "Scanner"
    MANUAL = "manual", "Manual"
    # A view column whose source column (the snapshot's ``sources``) is classified.
    INHERITED = "inherited", "Inherited from a view's source"


class ClassificationStatus(models.TextChoices):
    """Which classifications reach the bundle: confirmed and auto-applied ones.

    A scanner finding at or above ``WARDEN_SCAN_AUTO_APPLY_CONFIDENCE`` is
    ``auto_applied`` (masked at once, still awaiting a person's confirmation);
    below it, it is only ``proposed`` until someone confirms it.
    """

    PROPOSED = "proposed", "Proposed"
    AUTO_APPLIED = "auto_applied", "Applied automatically (needs confirmation)"
    CONFIRMED = "confirmed", "Confirmed"
    REJECTED = "rejected", "Rejected"


# The statuses a bundle enforces everywhere.
ENFORCED_STATUSES = (ClassificationStatus.CONFIRMED, ClassificationStatus.AUTO_APPLIED)
# Where an environment has a protect threshold, these are enforced too when at or
# above it (``classification_enforcement``).
PROVISIONAL_STATUSES = (ClassificationStatus.PROPOSED, ClassificationStatus.AUTO_APPLIED)

ENFORCED = "enforced"
PROVISIONAL = "provisional"


def classification_enforcement(
    *, status: str, confidence: float | None, protect_threshold: float | None
) -> str | None:
    """How a bundle enforces a column classification: ``ENFORCED`` (confirmed, or
    auto-applied by a confident finding), ``PROVISIONAL`` (a finding nobody has
    reviewed, at or above the environment's protect threshold: masked with its
    classification's default while it waits in the review queue), or None (a
    proposal below the threshold, or anything in a sandbox that is not enforced,
    or a rejection).

    An auto-applied finding below the confident threshold (only when
    ``WARDEN_SCAN_AUTO_APPLY_PERCENT`` was raised after it was applied) is
    provisional where a protect threshold exists and enforced as before elsewhere.
    """
    from django.conf import settings

    if status == ClassificationStatus.CONFIRMED:
        return ENFORCED
    if status not in PROVISIONAL_STATUSES:
        return None
    if status == ClassificationStatus.AUTO_APPLIED and (
        protect_threshold is None
        or confidence is None
        or confidence >= settings.WARDEN_SCAN_AUTO_APPLY_CONFIDENCE
    ):
        return ENFORCED
    if protect_threshold is not None and confidence is not None and confidence >= protect_threshold:
        return PROVISIONAL
    return None


class ColumnClassification(models.Model):
    """Binds a classification to ``schema.table.column`` of one datasource."""

    datasource = models.ForeignKey(
        Datasource, on_delete=models.CASCADE, related_name="column_classifications"
    )
    schema_name = models.CharField(max_length=63)
    table_name = models.CharField(max_length=63)
    column_name = models.CharField(max_length=63)
    classification = models.ForeignKey(
        Classification, on_delete=models.PROTECT, related_name="column_classifications"
    )
    source = models.CharField(
        max_length=16, choices=ClassificationSource.choices, default=ClassificationSource.MANUAL
    )
    confidence = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    status = models.CharField(
        max_length=16, choices=ClassificationStatus.choices, default=ClassificationStatus.PROPOSED
    )
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confirmed_at = models.DateTimeField(null=True, blank=True)
    # What the scanner said (never a value): which detector, what share of the
    # sampled values matched; for an inherited one, the source column's path.
    detector = models.CharField(max_length=100, blank=True)
    share = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    inherited_from = models.CharField(max_length=200, blank=True)
    # Inside a JSON or array column, where the data is: ``profile.email``,
    # ``tags[]``, ``contacts[].phone``; empty: the whole column.
    path = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["datasource__name", "schema_name", "table_name", "column_name"]
        constraints = [
            models.UniqueConstraint(
                fields=["datasource", "schema_name", "table_name", "column_name", "path"],
                name="columnclassification_unique_column",
            ),
            models.CheckConstraint(
                condition=Q(confidence__gte=0) & Q(confidence__lte=1),
                name="columnclassification_confidence_0_1",
            ),
            models.CheckConstraint(
                condition=Q(source__in=ClassificationSource.values),
                name="columnclassification_source_valid",
            ),
            models.CheckConstraint(
                condition=Q(status__in=ClassificationStatus.values),
                name="columnclassification_status_valid",
            ),
            # A confirmation always says when it happened.
            models.CheckConstraint(
                condition=~Q(status=ClassificationStatus.CONFIRMED) | Q(confirmed_at__isnull=False),
                name="columnclassification_confirmed_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.datasource}:{self.schema_name}.{self.table_name}.{self.column_name}"

    @property
    def column_path(self) -> str:
        return f"{self.schema_name}.{self.table_name}.{self.column_name}"

    @property
    def column_and_path(self) -> str:
        """``schema.table.column``, and where inside it: ``public.users.doc profile.email``."""
        return f"{self.column_path} {self.path}" if self.path else self.column_path

    @property
    def is_enforced(self) -> bool:
        return self.status in ENFORCED_STATUSES

    def enforcement(self, protect_threshold: float | None) -> str | None:
        """``classification_enforcement`` of this row under ``protect_threshold``
        (the datasource's environment's)."""
        return classification_enforcement(
            status=self.status, confidence=self.confidence, protect_threshold=protect_threshold
        )

    @property
    def needs_confirmation(self) -> bool:
        return self.status in {ClassificationStatus.PROPOSED, ClassificationStatus.AUTO_APPLIED}

    def clean(self) -> None:
        if self.datasource_id is None:
            return
        # A classification of a column the datasource does not have protects nothing
        # and hides a typo; refuse it whenever a snapshot exists to check against.
        columns = self.datasource.snapshot_columns()
        if columns:
            key = (self.schema_name, self.table_name)
            if key not in columns:
                raise ValidationError(
                    {
                        "table_name": f"{self.schema_name}.{self.table_name} is not in the "
                        "schema snapshot."
                    }
                )
            if self.column_name not in columns[key]:
                raise ValidationError(
                    {
                        "column_name": f"{self.schema_name}.{self.table_name} has no column "
                        f"{self.column_name!r}."
                    }
                )


# --- masking -------------------------------------------------------------------------


class MaskingStrategy(models.TextChoices):
    """``vocabulary.MASKING_STRATEGIES``, labelled (a test holds them equal)."""

    REDACT = "redact", "Redact (replace with a constant)"
    PARTIAL = "partial", "Partial (keep the last N characters)"
    EMAIL = "email", "E-mail (keep the domain)"
    HASH = "hash", "Hash (keyed HMAC, stable for joins)"
    NULL = "null", "NULL"
    YEAR_ONLY = "year_only", "Year only (dates)"
    FREE_TEXT = "free_text", "Free text (mask e-mails, phones, cards, national ids inside)"


# Allowed params per strategy, with their bounds: exactly what the engine
# implements (``vocabulary.MASKING_STRATEGIES``). A parameter the sidecar would
# silently ignore, or one outside what it applies safely, is refused here.
_STRATEGY_PARAMS: dict[str, dict[str, vocabulary.IntParameter]] = {
    strategy: {p.name: p for p in parameters}
    for strategy, parameters in vocabulary.MASKING_STRATEGIES.items()
}


def strategy_params_help() -> str:
    """What each masking strategy takes, for the form and the API's help."""
    taking = [
        f"{strategy}: {{"
        + ", ".join(f'"{p.name}": {p.minimum} to {p.maximum}' for p in parameters)
        + "}"
        for strategy, parameters in vocabulary.MASKING_STRATEGIES.items()
        if parameters
    ]
    return f"JSON object. {'; '.join(taking)}; the other strategies take none."


def validate_strategy_params(strategy: str, params: Any) -> list[str]:
    """Problems with ``params`` for ``strategy`` (empty when valid)."""
    if not isinstance(params, dict):
        return ["Parameters must be an object."]
    allowed = _STRATEGY_PARAMS.get(strategy)
    if allowed is None:
        return []  # the strategy field reports its own error
    problems = []
    for key, value in params.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            problems.append(f"'{key}' is not a parameter of {strategy} (allowed: {names}).")
            continue
        parameter = allowed[key]
        if not parameter.accepts(value):
            problems.append(
                f"'{key}' must be an integer from {parameter.minimum} to {parameter.maximum}."
            )
    for name, parameter in allowed.items():
        if parameter.required and name not in params:
            problems.append(f"'{name}' is required for the {strategy} strategy.")
    return problems


class MaskingRule(models.Model):
    """How values of one classification are masked for everyone not exempt."""

    name = models.CharField(max_length=100, unique=True)
    classification = models.ForeignKey(
        Classification, on_delete=models.PROTECT, related_name="masking_rules"
    )
    strategy = models.CharField(max_length=16, choices=MaskingStrategy.choices)
    params = models.JSONField(default=dict, blank=True)
    exempt_teams = models.ManyToManyField(Team, blank=True, related_name="masking_exemptions")
    environments = models.JSONField(
        default=list, blank=True, help_text="Environment names; empty means every environment."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["classification__name", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(strategy__in=MaskingStrategy.values), name="maskingrule_strategy_valid"
            ),
            models.CheckConstraint(
                condition=Q(params__jsonb_typeof="object"), name="maskingrule_params_object"
            ),
            models.CheckConstraint(
                condition=Q(environments__jsonb_typeof="array"),
                name="maskingrule_environments_array",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        problems = validate_strategy_params(self.strategy, self.params)
        if problems:
            errors["params"] = problems
        env_problems = validate_environment_names(self.environments)
        if env_problems:
            errors["environments"] = env_problems
        if not errors and self.enabled and self.classification_id is not None:
            # Two enabled rules for one classification in one environment would
            # leave the sidecar to pick a mask; refuse the contradiction here.
            mine = set(self.environments or [])
            others = MaskingRule.objects.filter(
                classification_id=self.classification_id, enabled=True
            ).exclude(pk=self.pk)
            for other in others:
                theirs = set(other.environments or [])
                if not mine or not theirs or mine & theirs:
                    where = (
                        ", ".join(sorted(mine & theirs)) if mine and theirs else "every environment"
                    )
                    errors["classification"] = [
                        f"Masking rule '{other.name}' already masks {self.classification.name} "
                        f"in {where}."
                    ]
                    break
        if errors:
            raise ValidationError(errors)


def validate_environment_names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ["Must be a list of environment names."]
    known = set(Environment.objects.values_list("name", flat=True))
    unknown = sorted(set(value) - known)
    if unknown:
        return [f"Unknown environment: {', '.join(unknown)}."]
    if len(set(value)) != len(value):
        return ["An environment is listed twice."]
    return []


# --- guardrails ----------------------------------------------------------------------


class GuardrailAction(models.TextChoices):
    """``vocabulary.ACTIONS`` (a test holds them equal)."""

    ALLOW = "allow", "Allow"
    REVIEW = "review", "Hold for review"
    BLOCK = "block", "Block"


# What a guardrail's statement_kinds may name: the engine's kinds and categories,
# and the coarser names the compiler widens ("copy": copy_to and copy_from).
STATEMENT_KINDS = vocabulary.GUARDRAIL_STATEMENT_KINDS
LIST_CONDITIONS = (
    "environments",
    "identity_kinds",
    "teams",
    "statement_kinds",
    "tables",
    "classifications",
    "functions",
)
FLAG_CONDITIONS = ("missing_where", "unbounded_classified_read", "multi_statement", "unparseable")
_TABLE_RE = re.compile(r"^(?:[a-z_][a-z0-9_$]*|\*)(?:\.(?:[a-z_][a-z0-9_$]*|\*))?$")
_FUNCTION_RE = re.compile(r"^(?:[a-z_][a-z0-9_$]*\.)?[a-z_][a-z0-9_$]*$")


def empty_conditions() -> dict[str, Any]:
    conditions: dict[str, Any] = {key: [] for key in LIST_CONDITIONS}
    conditions.update({key: None for key in FLAG_CONDITIONS})
    return conditions


def validate_guardrail_conditions(value: Any) -> list[str]:
    """Problems with a conditions object (empty when valid). Lists: empty = any."""
    if not isinstance(value, dict):
        return ["Conditions must be an object."]
    problems: list[str] = []
    unknown = sorted(set(value) - set(LIST_CONDITIONS) - set(FLAG_CONDITIONS))
    if unknown:
        problems.append(f"Unknown condition: {', '.join(unknown)}.")
    for key in LIST_CONDITIONS:
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            problems.append(f"'{key}' must be a list of names.")
            continue
        if len(set(items)) != len(items):
            problems.append(f"'{key}' lists a value twice.")
    for key in FLAG_CONDITIONS:
        if value.get(key) not in (True, False, None):
            problems.append(f"'{key}' must be true, false or null.")
    if problems:
        return problems

    def unknown_values(key: str, known: set[str]) -> None:
        bad = sorted(set(value.get(key, [])) - known)
        if bad:
            problems.append(f"Unknown {key.replace('_', ' ')}: {', '.join(bad)}.")

    unknown_values("environments", set(Environment.objects.values_list("name", flat=True)))
    unknown_values("identity_kinds", set(IdentityKind.values))
    unknown_values("teams", set(Team.objects.values_list("slug", flat=True)))
    unknown_values("statement_kinds", set(STATEMENT_KINDS))
    # Classification conditions may name a family ("pii.*").
    known_classes = set(Classification.objects.values_list("name", flat=True))
    families = {name.split(".")[0] + ".*" for name in known_classes}
    unknown_values("classifications", known_classes | families)
    bad_tables = [t for t in value.get("tables", []) if not _TABLE_RE.match(t)]
    if bad_tables:
        problems.append(
            f"Tables must look like 'table', 'schema.table' or 'schema.*': {', '.join(bad_tables)}."
        )
    bad_functions = [f for f in value.get("functions", []) if not _FUNCTION_RE.match(f)]
    if bad_functions:
        problems.append(
            f"Functions must be plain (schema-qualified) names: {', '.join(bad_functions)}."
        )
    return problems


class GuardrailRule(models.Model):
    """An ordered rule: when every condition matches a statement, take the action.

    Conditions are an object; list conditions are empty for "any", flags are
    null for "either". The first enabled rule (lowest position) that matches
    decides; the risk score decides when none does.
    """

    name = models.CharField(max_length=100, unique=True)
    position = models.PositiveIntegerField()
    enabled = models.BooleanField(default=True)
    conditions = models.JSONField(default=empty_conditions, blank=True)
    action = models.CharField(max_length=16, choices=GuardrailAction.choices)
    message = models.CharField(
        max_length=500, blank=True, help_text="What the client sees when this rule decides."
    )
    datasource = models.ForeignKey(
        Datasource,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="guardrails",
        help_text="Empty: applies to every datasource.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            # Deferred, so that a move can swap two positions inside one transaction.
            models.UniqueConstraint(
                fields=["position"],
                name="guardrail_position_unique",
                deferrable=models.Deferrable.DEFERRED,
            ),
            models.CheckConstraint(
                condition=Q(action__in=GuardrailAction.values), name="guardrail_action_valid"
            ),
            models.CheckConstraint(
                condition=Q(conditions__jsonb_typeof="object"), name="guardrail_conditions_object"
            ),
            # The client must be told why it was stopped.
            models.CheckConstraint(
                condition=Q(action=GuardrailAction.ALLOW) | ~Q(message=""),
                name="guardrail_refusal_has_message",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def normalised_conditions(self) -> dict[str, Any]:
        merged = empty_conditions()
        if isinstance(self.conditions, dict):
            merged.update(self.conditions)
        return merged

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        problems = validate_guardrail_conditions(self.conditions)
        if problems:
            raise ValidationError({"conditions": problems})
        self.conditions = self.normalised_conditions()
        cond = self.conditions
        if self.action != GuardrailAction.ALLOW and not self.message.strip():
            errors["message"] = ["Tell the client why: a block or review needs a message."]
        envs = set(cond["environments"])
        if self.datasource_id is not None and envs:
            ds_env = self.datasource.environment.name
            if ds_env not in envs:
                errors["conditions"] = [
                    f"This rule is scoped to {self.datasource.name} ({ds_env}) but only matches "
                    f"{', '.join(sorted(envs))}, so it can never apply."
                ]
        if self.action == GuardrailAction.ALLOW and self.enabled:
            covered = self._covered_environments()
            critical = sorted(e.name for e in covered if e.criticality >= 5)
            narrowing = [k for k in LIST_CONDITIONS if k != "environments" and cond[k]] + [
                k for k in FLAG_CONDITIONS if cond[k] is not None
            ]
            if critical and not narrowing:
                errors.setdefault("conditions", []).append(
                    f"An allow rule with no conditions would allow everything in "
                    f"{', '.join(critical)}. Narrow it (identity kinds, teams, statement kinds, "
                    f"tables...) or scope it to other environments."
                )
            if critical and cond["unparseable"] is True:
                errors.setdefault("conditions", []).append(
                    f"Allowing statements Warden cannot parse in {', '.join(critical)} would let "
                    f"anything through."
                )
        if errors:
            raise ValidationError(errors)

    def _covered_environments(self) -> list[Environment]:
        if self.datasource_id is not None:
            return [self.datasource.environment]
        names = self.normalised_conditions()["environments"]
        qs = Environment.objects.all()
        return list(qs.filter(name__in=names) if names else qs)


# --- sidecars ------------------------------------------------------------------------

SIDECAR_TOKEN_PREFIX = "wds_"  # noqa: S105 - a marker, not a secret


class Sidecar(models.Model):
    """An enforcement sidecar in front of one datasource; it authenticates with a bearer token.

    Only the token's digest is stored. What the sidecar last reported in a
    heartbeat (running revision, version, counters, bundle status) is kept here
    so the list can show who is behind or silent.
    """

    datasource = models.ForeignKey(Datasource, on_delete=models.CASCADE, related_name="sidecars")
    name = models.CharField(max_length=63, validators=[slug_validator])
    token_prefix = models.CharField(max_length=16, editable=False)
    token_digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    token_rotated_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    running_revision = models.CharField(max_length=64, blank=True)
    version = models.CharField(max_length=64, blank=True)
    counters = models.JSONField(default=dict, blank=True)
    bundle_status = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["datasource__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["datasource", "name"], name="sidecar_unique_name"),
            models.CheckConstraint(
                condition=Q(token_digest__regex=r"^[0-9a-f]{64}$"),  # noqa: S106 - a pattern
                name="sidecar_digest_sha256",
            ),
            models.CheckConstraint(condition=Q(name__regex=SLUG_RE), name="sidecar_name_format"),
            models.CheckConstraint(
                condition=Q(counters__jsonb_typeof="object"), name="sidecar_counters_object"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.datasource.name}/{self.name}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def is_stale(self, now: Any = None) -> bool:
        """No heartbeat yet, or none within ``WARDEN_SIDECAR_STALE_SECONDS``."""
        if self.last_heartbeat_at is None:
            return True
        now = now or timezone.now()
        age = (now - self.last_heartbeat_at).total_seconds()
        return age > settings.WARDEN_SIDECAR_STALE_SECONDS


# --- classification scans ------------------------------------------------------------

DETECTOR_REGEX_MAX_LENGTH = 200


class ClassificationRejection(models.Model):
    """A person said this column does not hold this classification: never propose it again."""

    datasource = models.ForeignKey(
        Datasource, on_delete=models.CASCADE, related_name="classification_rejections"
    )
    schema_name = models.CharField(max_length=63)
    table_name = models.CharField(max_length=63)
    column_name = models.CharField(max_length=63)
    # Inside a JSON or array column (as ColumnClassification.path); empty: the column.
    path = models.CharField(max_length=200, blank=True, default="")
    classification = models.ForeignKey(Classification, on_delete=models.CASCADE, related_name="+")
    rejected_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rejected_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["datasource__name", "schema_name", "table_name", "column_name"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "datasource",
                    "schema_name",
                    "table_name",
                    "column_name",
                    "path",
                    "classification",
                ],
                name="classificationrejection_unique",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.datasource}:{self.schema_name}.{self.table_name}.{self.column_name} "
            f"is not {self.classification}"
        )


class CustomDetector(models.Model):
    """A detector the security team adds to the sidecar's scanner (bundle ``detectors``).

    A column matches when its name matches ``name_regex`` or enough sampled
    values match ``value_regex`` (either may be empty, not both). Patterns are
    Python ``re``; ``governance.detectors`` refuses ones that are too long or
    backtrack catastrophically.
    """

    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    classification = models.ForeignKey(
        Classification, on_delete=models.PROTECT, related_name="detectors"
    )
    confidence = models.FloatField(
        default=0.9, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    name_regex = models.CharField(max_length=DETECTOR_REGEX_MAX_LENGTH, blank=True)
    value_regex = models.CharField(max_length=DETECTOR_REGEX_MAX_LENGTH, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(name_regex="") | ~Q(value_regex=""),
                name="customdetector_has_a_regex",
            ),
            models.CheckConstraint(
                condition=Q(confidence__gte=0) & Q(confidence__lte=1),
                name="customdetector_confidence_0_1",
            ),
            models.CheckConstraint(condition=Q(name__regex=SLUG_RE), name="customdetector_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from governance.detectors import pattern_problems

        errors: dict[str, list[str]] = {}
        if not self.name_regex and not self.value_regex:
            errors["value_regex"] = ["Give a name pattern, a value pattern, or both."]
        for field in ("name_regex", "value_regex"):
            pattern = getattr(self, field)
            if pattern:
                problems = pattern_problems(pattern)
                if problems:
                    errors[field] = problems
        if errors:
            raise ValidationError(errors)


class ScanSchedule(models.Model):
    """How often a datasource's sidecar scans, and the scan asked for but not yet reported.

    ``requested`` travels in the bundle (``scan.requested``) and in the
    heartbeat reply; a new value makes the sidecar scan now and report with
    that id. Celery beat sets one whenever no scan was reported for
    ``interval_seconds``; "Scan now" sets one at once.
    """

    datasource = models.OneToOneField(
        Datasource, on_delete=models.CASCADE, related_name="scan_schedule"
    )
    interval_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(0), MaxValueValidator(7 * 24 * 3600)],
        help_text="Seconds between scheduled scans; 0 scans only on request.",
    )
    sample_rows = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(1), MaxValueValidator(10_000)]
    )
    statement_timeout_ms = models.PositiveIntegerField(
        default=5000, validators=[MinValueValidator(100), MaxValueValidator(600_000)]
    )
    requested = models.CharField(max_length=64, blank=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(interval_seconds__lte=7 * 24 * 3600), name="scanschedule_interval_max"
            ),
            models.CheckConstraint(
                condition=Q(sample_rows__gte=1) & Q(sample_rows__lte=10_000),
                name="scanschedule_sample_rows_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.datasource}: every {self.interval_seconds}s"


class ScanTrigger(models.TextChoices):
    START = "start", "Sidecar start"
    SCHEDULE = "schedule", "Sidecar schedule"
    REQUEST = "request", "Requested"
    REPORT = "report", "Report without scan summary"


class ScanRun(models.Model):
    """One scan a sidecar reported: its counts and the schema drift since the previous one.

    ``drift`` is ``{"new_tables", "dropped_tables", "new_columns",
    "dropped_columns", "changed_columns"}``: lists of paths (changed columns
    as ``{"column", "from", "to"}``). Names and types only, never values.
    """

    datasource = models.ForeignKey(Datasource, on_delete=models.CASCADE, related_name="scan_runs")
    sidecar = models.ForeignKey(
        "Sidecar", null=True, blank=True, on_delete=models.SET_NULL, related_name="scan_runs"
    )
    scan_id = models.CharField(max_length=64)
    trigger = models.CharField(max_length=16, choices=ScanTrigger.choices)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.FloatField(null=True, blank=True)
    tables = models.PositiveIntegerField(default=0)
    columns = models.PositiveIntegerField(default=0)
    sampled_columns = models.PositiveIntegerField(default=0)
    findings = models.PositiveIntegerField(default=0)
    proposed = models.PositiveIntegerField(default=0)
    auto_applied = models.PositiveIntegerField(default=0)
    inherited = models.PositiveIntegerField(default=0)
    drift = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(trigger__in=ScanTrigger.values), name="scanrun_trigger_valid"
            ),
            models.CheckConstraint(
                condition=Q(drift__jsonb_typeof="object"), name="scanrun_drift_object"
            ),
        ]
        indexes = [models.Index(fields=["datasource", "-received_at"], name="scanrun_recent")]

    def __str__(self) -> str:
        return f"{self.datasource} scan {self.scan_id}"

    @property
    def drift_count(self) -> int:
        return sum(len(v) for v in (self.drift or {}).values() if isinstance(v, list))


# --- break-glass grants --------------------------------------------------------------


class FloorRule(models.TextChoices):
    """The engine's safety-floor rule ids (``sidecar.engine.policy``): no guardrail lifts
    them, only a break-glass grant naming them. The sidecar package exports no list of
    them, so it is kept here; ``tests/governance/test_break_glass.py`` checks it against
    the ``floor.*`` rule ids the engine's source names and produces."""

    COPY_SERVER_SIDE = "floor.copy_server_side", "COPY to or from a server file or program"
    SERVER_ACCESS = "floor.server_access", "Server files, processes and libraries"
    REMOTE_SERVER = "floor.remote_server", "Foreign servers, user mappings, subscriptions"
    SERVER_CONFIG = "floor.server_config", "ALTER SYSTEM"
    ROLE_SWITCH = "floor.role_switch", "SET ROLE / SESSION AUTHORIZATION"
    ROLE_SETTING = "floor.role_setting", "ALTER ROLE / DATABASE … SET"


# An environment at this criticality is production: a grant there needs a second admin.
PRODUCTION_CRITICALITY = 5
BREAK_GLASS_MAX_HOURS = 24


class BreakGlassState(models.TextChoices):
    PENDING = "pending", "Pending approval"
    ACTIVE = "active", "Active"
    DENIED = "denied", "Denied"
    REVOKED = "revoked", "Revoked"
    EXPIRED = "expired", "Expired"


# The states whose grant can still become or be in force.
BREAK_GLASS_LIVE_STATES = (BreakGlassState.PENDING, BreakGlassState.ACTIVE)


class BreakGlassGrant(models.Model):
    """An audited, expiring exception to the safety floor for one identity on one datasource.

    The engine lifts exactly ``rules`` for ``identity`` until ``expires_at`` (bundle
    ``break_glass``). In production (criticality 5) a grant starts ``pending`` and a
    second admin approves it; elsewhere it is ``active`` at once. The bundle carries
    only active, unexpired grants; beat marks the expired ones ``expired``.
    """

    datasource = models.ForeignKey(
        Datasource, on_delete=models.CASCADE, related_name="break_glass_grants"
    )
    identity = models.ForeignKey(
        Identity, on_delete=models.CASCADE, related_name="break_glass_grants"
    )
    rules = models.JSONField(help_text="Safety-floor rule ids the grant lifts.")
    reason = models.TextField(help_text="Why the floor must be lifted: the incident or ticket.")
    expires_at = models.DateTimeField(
        help_text=f"At most {BREAK_GLASS_MAX_HOURS} hours after the grant is made."
    )
    state = models.CharField(max_length=16, choices=BreakGlassState.choices)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    denied_at = models.DateTimeField(null=True, blank=True)
    denied_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # What beat's expiry sweep and the compiler look for.
            models.Index(
                fields=["expires_at"],
                condition=Q(state__in=BREAK_GLASS_LIVE_STATES),
                name="breakglass_live_expiry",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=BreakGlassState.values), name="breakglass_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(rules__jsonb_typeof="array")
                & ~Q(rules=[])
                & Q(rules__contained_by=FloorRule.values),
                name="breakglass_rules_floor",
            ),
            models.CheckConstraint(condition=~Q(reason=""), name="breakglass_has_reason"),
            models.CheckConstraint(
                condition=Q(expires_at__gt=models.F("created_at"))
                & Q(
                    expires_at__lte=models.F("created_at")
                    + datetime.timedelta(hours=BREAK_GLASS_MAX_HOURS)
                ),
                name="breakglass_expiry_within_24h",
            ),
            # Four eyes: whoever asked for a grant neither approves nor denies it.
            models.CheckConstraint(
                condition=~Q(approved_by=models.F("created_by")),
                name="breakglass_not_self_approved",
            ),
            models.CheckConstraint(
                condition=~Q(denied_by=models.F("created_by")),
                name="breakglass_not_self_denied",
            ),
            models.CheckConstraint(
                condition=~Q(state=BreakGlassState.PENDING)
                | (Q(approved_at__isnull=True) & Q(denied_at__isnull=True)),
                name="breakglass_pending_undecided",
            ),
            models.CheckConstraint(
                condition=~Q(state=BreakGlassState.DENIED) | Q(denied_at__isnull=False),
                name="breakglass_denied_has_time",
            ),
            models.CheckConstraint(
                condition=~Q(state=BreakGlassState.REVOKED) | Q(revoked_at__isnull=False),
                name="breakglass_revoked_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"break-glass #{self.pk} {self.identity.name}@{self.datasource.name}"

    @property
    def is_expired(self) -> bool:
        """Past its expiry, whether or not beat has marked it ``expired`` yet."""
        return self.expires_at <= timezone.now()

    @property
    def is_in_force(self) -> bool:
        """Active and not yet expired: what the bundle carries."""
        return self.state == BreakGlassState.ACTIVE and not self.is_expired

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        rules = self.rules
        if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
            errors["rules"] = ["Must be a list of safety-floor rule ids."]
        elif not rules:
            errors["rules"] = ["Name at least one safety-floor rule."]
        else:
            unknown = sorted(set(rules) - set(FloorRule.values))
            if unknown:
                errors["rules"] = [f"Not a safety-floor rule: {', '.join(unknown)}."]
            else:
                self.rules = sorted(set(rules))
        if not (self.reason or "").strip():
            errors["reason"] = ["Say why the floor must be lifted."]
        created = self.created_at or timezone.now()
        if self.expires_at is not None:
            if self._state.adding and self.expires_at <= timezone.now():
                errors["expires_at"] = ["The expiry must be in the future."]
            elif self.expires_at > created + datetime.timedelta(hours=BREAK_GLASS_MAX_HOURS):
                errors["expires_at"] = [
                    f"A grant lasts at most {BREAK_GLASS_MAX_HOURS} hours; make a new one after."
                ]
        if (
            self._state.adding
            and self.datasource_id is not None
            and self.identity_id is not None
            and not identities_allowed_on(self.datasource).filter(pk=self.identity_id).exists()
        ):
            errors["identity"] = [
                f"{self.identity.name} may not connect to {self.datasource.name}: it is not an "
                "active member of a team that may connect."
            ]
        if errors:
            raise ValidationError(errors)
