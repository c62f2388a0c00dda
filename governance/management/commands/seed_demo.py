"""``manage.py seed_demo``: a demo world a new user can explore at once. Idempotent.

Creates (only what is missing, through the services, so it shows up in the
configuration history): the demo users admin / security / reviewer / auditor,
and alice (no role: the demo identity alice's own sign-in, linked to it, who
follows her approval requests under "My requests"), with generated passwords
kept in ``var/demo-credentials.json`` (never committed), teams, identities
of each kind with owners, datasources in production, staging and sandbox
with a schema snapshot, column classifications, masking rules and
guardrails. Running it twice gives the same state and records nothing the
second time.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from governance import services
from governance.models import (
    Classification,
    ColumnClassification,
    Datasource,
    Environment,
    GuardrailRule,
    Identity,
    MaskingRule,
    Membership,
    Role,
    Team,
)

DEMO_USERS = [
    ("admin", Role.ADMIN),
    ("security", Role.SECURITY),
    ("reviewer", Role.REVIEWER),
    ("auditor", Role.AUDITOR),
    # A requester: the demo identity alice's own sign-in. No role, so she sees her
    # approval requests (and her agents') under "My requests", and nothing else.
    ("alice", Role.NONE),
]

TEAMS = [
    ("Data Platform", "data-platform", "Owns the databases and their pipelines."),
    ("Analytics", "analytics", "Reporting and dashboards."),
    ("Support", "support", "Customer support; reads customer records."),
    ("Security", "security", "Writes Warden policy."),
]

SCHEMA = {
    "tables": [
        {
            "schema": "public",
            "name": "customers",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "full_name", "type": "text"},
                {"name": "email", "type": "text"},
                {"name": "phone", "type": "text"},
                {"name": "ssn", "type": "text"},
                {"name": "birth_date", "type": "date"},
                {"name": "address", "type": "text"},
                {"name": "created_at", "type": "timestamp with time zone"},
            ],
        },
        {
            "schema": "public",
            "name": "orders",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "customer_id", "type": "bigint"},
                {"name": "amount", "type": "numeric(12,2)"},
                {"name": "status", "type": "text"},
                {"name": "created_at", "type": "timestamp with time zone"},
            ],
        },
        {
            "schema": "public",
            "name": "payments",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "order_id", "type": "bigint"},
                {"name": "card_number", "type": "text"},
                {"name": "iban", "type": "text"},
                {"name": "client_ip", "type": "inet"},
            ],
        },
        {
            "schema": "public",
            "name": "api_keys",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "customer_id", "type": "bigint"},
                {"name": "secret", "type": "text"},
            ],
        },
    ]
}

COLUMNS = [
    ("customers", "full_name", "pii.name"),
    ("customers", "email", "pii.email"),
    ("customers", "phone", "pii.phone"),
    ("customers", "ssn", "pii.ssn"),
    ("customers", "birth_date", "pii.dob"),
    ("customers", "address", "pii.address"),
    ("payments", "card_number", "financial.card"),
    ("payments", "iban", "financial.iban"),
    ("payments", "client_ip", "network.ip"),
    ("api_keys", "secret", "secret.token"),
]

MASKING_RULES = [
    ("mask-email", "pii.email", "email", {}, []),
    ("mask-phone", "pii.phone", "partial", {"keep_last": 4}, []),
    ("mask-name", "pii.name", "hash", {}, ["support"]),
    ("mask-ssn", "pii.ssn", "redact", {}, []),
    ("mask-dob", "pii.dob", "year_only", {}, []),
    ("mask-address", "pii.address", "redact", {}, ["support"]),
    ("mask-card", "financial.card", "partial", {"keep_last": 4}, []),
    ("mask-iban", "financial.iban", "partial", {"keep_last": 4}, []),
    ("mask-secret-token", "secret.token", "null", {}, []),
]

GUARDRAILS: list[dict[str, Any]] = [
    {
        "name": "block-ddl-in-production",
        "action": "block",
        "conditions": {"environments": ["production"], "statement_kinds": ["ddl", "truncate"]},
        "message": "Schema changes in production go through migrations, not ad-hoc SQL.",
    },
    {
        "name": "block-unparseable-in-production",
        "action": "block",
        "conditions": {"environments": ["production"], "unparseable": True},
        "message": "Warden could not understand this statement, so it is not run in production.",
    },
    {
        "name": "block-dangerous-functions",
        "action": "block",
        "conditions": {
            "functions": ["pg_read_file", "pg_ls_dir", "lo_import", "lo_export", "dblink_exec"]
        },
        "message": "This function reaches the server's files or other databases.",
    },
    {
        "name": "review-unfiltered-writes-in-production",
        "action": "review",
        "conditions": {
            "environments": ["production"],
            "statement_kinds": ["update", "delete"],
            "missing_where": True,
        },
        "message": "UPDATE/DELETE without WHERE in production needs a reviewer.",
    },
    {
        # Hash masking is deterministic: whoever can write a guess into a table with a
        # hashed column can compare its masked hash with the others (docs/masking.md).
        "name": "review-writes-to-hashed-tables-in-production",
        "action": "review",
        "conditions": {
            "environments": ["production"],
            "statement_kinds": ["insert", "update", "merge", "copy_from"],
            "tables": ["public.customers"],
        },
        "message": "Writes to a table with hash-masked columns in production need a reviewer.",
    },
    {
        "name": "review-agent-writes",
        "action": "review",
        "conditions": {
            "identity_kinds": ["agent"],
            "statement_kinds": ["insert", "update", "delete", "merge"],
        },
        "message": "Writes by AI agents need a human reviewer.",
    },
    {
        "name": "review-bulk-pii-reads-by-agents",
        "action": "review",
        "conditions": {"identity_kinds": ["agent"], "unbounded_classified_read": True},
        "message": "Agents reading classified data without a LIMIT need a reviewer.",
    },
    {
        "name": "allow-sandbox",
        "action": "allow",
        "conditions": {"environments": ["sandbox"]},
        "message": "",
    },
]


def credentials_path() -> Path:
    return Path(settings.VAR_DIR) / "demo-credentials.json"


def load_or_create_credentials(path: Path) -> dict[str, str]:
    """The demo users' passwords; a user added to the demo since the file was
    written gets one too (the others keep theirs)."""
    creds: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [username for username, _ in DEMO_USERS if username not in creds]
    if not missing:
        return creds
    creds.update({username: secrets.token_urlsafe(12) for username in missing})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written 0600 and swapped in whole: these are real passwords for this machine's demo.
    partial = path.with_suffix(".tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(creds, handle, indent=2)
    partial.replace(path)
    return creds


class Command(BaseCommand):
    help = "Create the demo users and policy (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        creds = load_or_create_credentials(credentials_path())
        with transaction.atomic():
            self._seed(creds)
        self.stdout.write(self.style.SUCCESS(f"Demo ready; credentials in {credentials_path()}"))

    def _seed(self, creds: dict[str, str]) -> None:
        User = get_user_model()
        users = {}
        for username, role in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = User.objects.create_user(
                    username=username,
                    email=f"{username}@warden.example",
                    password=creds[username],
                    is_superuser=role == Role.ADMIN,
                    is_staff=role == Role.ADMIN,
                )
            Membership.objects.get_or_create(user=user, defaults={"role": role})
            users[username] = user
        actor = users["admin"]

        teams = {}
        for name, slug, description in TEAMS:
            team = Team.objects.filter(slug=slug).first()
            teams[slug] = team or services.team_create(
                actor=actor, name=name, slug=slug, description=description
            )

        def identity(name: str, kind: str, **kwargs: Any) -> Identity:
            existing = Identity.objects.filter(name=name).first()
            return existing or services.identity_create(actor=actor, name=name, kind=kind, **kwargs)

        human_teams = {
            "admin": ["security"],
            "security": ["security"],
            "reviewer": ["data-platform"],
            "auditor": [],
        }
        for username in human_teams:
            identity(
                username,
                "human",
                display_name=username.title(),
                email=users[username].email,
                user=users[username],
                teams=[teams[s] for s in human_teams[username]],
            )
        alice = identity(
            "alice",
            "human",
            display_name="Alice Analyst",
            email=users["alice"].email,
            user=users["alice"],
            teams=[teams["analytics"]],
        )
        if alice.user_id is None:  # seeded before alice had a sign-in
            if not alice.email:
                alice = services.identity_update(
                    actor=actor, identity=alice, data={"email": users["alice"].email}
                )
            alice = services.identity_link_user(actor=actor, identity=alice, user=users["alice"])
        bob = identity("bob", "human", display_name="Bob Support", teams=[teams["support"]])
        identity("svc-billing", "service", owner=bob, teams=[teams["data-platform"]])
        identity("svc-etl", "service", owner=alice, teams=[teams["data-platform"]])
        identity(
            "agent-insights",
            "agent",
            display_name="Insights assistant",
            owner=alice,
            teams=[teams["analytics"]],
        )

        envs = {e.name: e for e in Environment.objects.all()}
        datasources = {}
        for name, env, description in [
            ("crm-prod", "production", "Customer records, orders and payments."),
            ("crm-staging", "staging", "Nightly copy of crm-prod."),
            ("analytics-sandbox", "sandbox", "Scratch space for analysts."),
        ]:
            datasources[name] = Datasource.objects.filter(name=name).first() or (
                services.datasource_create(
                    actor=actor,
                    name=name,
                    environment=envs[env],
                    description=description,
                    schema_snapshot=SCHEMA,
                    connect_teams=[teams["analytics"], teams["data-platform"], teams["support"]],
                    review_teams=[teams["data-platform"], teams["security"]],
                )
            )

        classes = {c.name: c for c in Classification.objects.all()}
        for ds_name in ("crm-prod", "crm-staging"):
            for table, column, label in COLUMNS:
                if not ColumnClassification.objects.filter(
                    datasource=datasources[ds_name],
                    schema_name="public",
                    table_name=table,
                    column_name=column,
                ).exists():
                    services.column_classification_set(
                        actor=actor,
                        datasource=datasources[ds_name],
                        schema_name="public",
                        table_name=table,
                        column_name=column,
                        classification=classes[label],
                    )

        for name, label, strategy, params, exempt in MASKING_RULES:
            if not MaskingRule.objects.filter(name=name).exists():
                services.masking_rule_create(
                    actor=actor,
                    name=name,
                    classification=classes[label],
                    strategy=strategy,
                    params=params,
                    exempt_teams=[teams[s] for s in exempt],
                )

        for spec in GUARDRAILS:
            if not GuardrailRule.objects.filter(name=spec["name"]).exists():
                services.guardrail_create(actor=actor, **spec)
