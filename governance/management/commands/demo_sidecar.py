"""``manage.py demo_sidecar --control-plane URL``: the demo database and its sidecar. Idempotent.

Creates the ``warden_demo`` database (on the server of ``DATABASE_URL``, or
``WARDEN_DEMO_DATABASE`` to name another) with the tables of ``seed_demo``'s
``crm-prod`` schema snapshot, so its column classifications and masking rules
apply as they are, and fills it once with generated customers, orders,
payments and API keys. The sidecar connects as ``warden_demo_app``, a role that
owns nothing and may only read and write those tables, and the database gets
Warden's keyed hash function (``sidecar.masking_db``) for the hash mask, as an
administrator would install them in production (docs/deploy.md). Then registers
a ``Sidecar`` for ``crm-prod``, issues the demo identity (``alice``) and the demo
agent (``agent-insights``, for the sidecar's MCP server) an access token each, and
writes under ``var/demo-sidecar/`` (0600, never committed) the sidecar's config, its
token and the identities' tokens. Tokens are reused while they still work and issued
again only when missing or no longer valid, so the psql line stays the same
across runs. Run ``seed_demo`` first.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import secrets
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from psycopg import sql

from config.database import database_url
from governance import services
from governance.management.commands.seed_demo import SCHEMA
from governance.models import AccessToken, Datasource, Identity, Sidecar, token_digest
from governance.signing import published_public_keys
from sidecar import masking_db
from sidecar.proxy.scram import make_verifier

DATASOURCE = "crm-prod"
SIDECAR_NAME = "demo-sidecar"
APP_ROLE = "warden_demo_app"
IDENTITY = "alice"
# The AI agent an MCP client signs in as (docs/mcp.md): alice's "Insights assistant".
AGENT = "agent-insights"
CUSTOMERS = 500
SEED = 20261123  # the same generated data on every machine

FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
STREETS = ["Main St", "Oak Ave", "Elm Rd", "Harbor Way", "Mill Lane", "Station Rd"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Fairview", "Georgetown"]


def state_dir() -> Path:
    return Path(settings.VAR_DIR) / "demo-sidecar"


def demo_database_name() -> str:
    return os.environ.get("WARDEN_DEMO_DATABASE") or "warden_demo"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def upstream_dsn(dbname: str) -> str:
    """The sidecar's upstream: the control plane's database server, as the demo's app role."""
    return database_url({**settings.DATABASES["default"], "USER": APP_ROLE}, dbname, password=False)


def demo_app_role(*, dbname: str, password: str) -> None:
    """The demo sidecar's unprivileged upstream role and the database's keyed hash.

    The role owns nothing and holds only what the demo needs (the same lines as
    docs/deploy.md). Its password is set as a SCRAM verifier, so it is never in
    statement text. Hash masking is installed with the administrator's connection.
    """
    admin = database_url(settings.DATABASES["default"], dbname)
    role = sql.Identifier(APP_ROLE)
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
                ).format(role)
            )
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(make_verifier(password)))
        )
        # Masked JSON paths would otherwise be JIT-compiled first (docs/deploy.md).
        conn.execute(sql.SQL("ALTER ROLE {} SET jit = off").format(role))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), role)
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(role)
        )
    masking_db.install(admin, grant_to=APP_ROLE)


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return digits + str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    # ISO 13616: move "DE00" to the end, letters to numbers, 98 - (n mod 97).
    check = 98 - int(bban + "131400") % 97
    return f"DE{check:02d}{bban}"


def generated_rows(count: int = CUSTOMERS) -> dict[str, list[tuple[Any, ...]]]:
    """Plausible but invented customer data (SSNs in the never-issued 9xx area)."""
    rng = random.Random(SEED)  # noqa: S311 - demo data, not secrets
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    rows: dict[str, list[tuple[Any, ...]]] = {
        "customers": [],
        "orders": [],
        "payments": [],
        "api_keys": [],
    }
    order_id = 0
    for cid in range(1, count + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        rows["customers"].append(
            (
                cid,
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}{cid}@example.com",
                f"+1 555 01{rng.randint(0, 99):02d} {rng.randint(0, 9999):04d}",
                f"9{rng.randint(0, 99):02d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
                datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randint(0, 365 * 55)),
                f"{rng.randint(1, 999)} {rng.choice(STREETS)}, {rng.choice(CITIES)}",
                start + datetime.timedelta(minutes=rng.randint(0, 60 * 24 * 365)),
            )
        )
        for _ in range(rng.randint(0, 4)):
            order_id += 1
            rows["orders"].append(
                (
                    order_id,
                    cid,
                    f"{rng.randint(5, 2000)}.{rng.randint(0, 99):02d}",
                    rng.choice(["paid", "paid", "shipped", "refunded", "pending"]),
                    start + datetime.timedelta(minutes=rng.randint(0, 60 * 24 * 365)),
                )
            )
            card = _luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
            rows["payments"].append(
                (order_id, order_id, card, _iban(rng), f"203.0.113.{rng.randint(1, 254)}")
            )
        if cid % 10 == 0:
            secret = "sk_demo_" + "".join(rng.choice("abcdef0123456789") for _ in range(24))
            rows["api_keys"].append((cid // 10, cid, secret))
    return rows


def demo_database_seed(*, dbname: str) -> int:
    """Create the database and tables if missing; fill them once. Returns customers inserted."""
    with psycopg.connect(
        database_url(settings.DATABASES["default"], "postgres"), autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with psycopg.connect(database_url(settings.DATABASES["default"], dbname)) as conn:
        # The tables come from the snapshot itself, so the two cannot drift apart.
        for table in SCHEMA["tables"]:
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c["name"]), sql.SQL(c["type"]))
                for c in table["columns"]
            )
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} ({}, PRIMARY KEY (id))").format(
                    sql.Identifier(table["schema"]), sql.Identifier(table["name"]), columns
                )
            )
        conn.execute("LOCK TABLE customers IN EXCLUSIVE MODE")
        if conn.execute("SELECT EXISTS (SELECT 1 FROM customers)").fetchone() == (True,):
            return 0
        rows = generated_rows()
        with conn.cursor() as cur:
            for table in SCHEMA["tables"]:
                data = rows[table["name"]]
                marks = sql.SQL(", ").join(sql.Placeholder() * len(table["columns"]))
                cur.executemany(
                    sql.SQL("INSERT INTO {} VALUES ({})").format(
                        sql.Identifier(table["name"]), marks
                    ),
                    data,
                )
        return len(rows["customers"])


def _still_valid_sidecar(raw: str | None) -> Sidecar | None:
    if not raw:
        return None
    return Sidecar.objects.filter(token_digest=token_digest(raw), revoked_at__isnull=True).first()


def _still_valid_token(raw: str | None) -> AccessToken | None:
    if not raw:
        return None
    token = AccessToken.objects.filter(digest=token_digest(raw)).first()
    return token if token is not None and token.is_active else None


class Command(BaseCommand):
    help = "Create the demo database and register the demo sidecar (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--control-plane", required=True, help="URL the sidecar polls")
        parser.add_argument("--listen-port", type=int, default=6432)
        parser.add_argument(
            "--mcp-port", type=int, default=6433, help="the MCP server's HTTP port (0: none)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dbname = demo_database_name()
        inserted = demo_database_seed(dbname=dbname)
        directory = state_dir()
        sidecar_file, identity_file = directory / "sidecar-token", directory / "identity.json"
        agent_file = directory / "agent.json"
        role_file = directory / "upstream-password"
        app_password = role_file.read_text().strip() if role_file.exists() else ""
        if not app_password:
            app_password = secrets.token_urlsafe(24)
            _write_private(role_file, f"{app_password}\n")
        demo_app_role(dbname=dbname, password=app_password)
        with transaction.atomic():
            datasource = Datasource.objects.filter(name=DATASOURCE).first()
            identity = Identity.objects.filter(name=IDENTITY).first()
            agent = Identity.objects.filter(name=AGENT).first()
            admin = Identity.objects.filter(name="admin").select_related("user").first()
            if (
                datasource is None
                or identity is None
                or agent is None
                or admin is None
                or admin.user is None
            ):
                raise CommandError(
                    "run seed_demo first: crm-prod, alice, agent-insights and admin are missing"
                )
            actor = admin.user
            sidecar_raw = sidecar_file.read_text().strip() if sidecar_file.exists() else None
            if _still_valid_sidecar(sidecar_raw) is None:
                existing = Sidecar.objects.filter(
                    datasource=datasource, name=SIDECAR_NAME, revoked_at__isnull=True
                ).first()
                if existing is not None:
                    _, sidecar_raw = services.sidecar_rotate_token(actor=actor, sidecar=existing)
                else:
                    name = SIDECAR_NAME
                    if Sidecar.objects.filter(datasource=datasource, name=name).exists():
                        name = f"{SIDECAR_NAME}-{Sidecar.objects.count() + 1}"  # old one revoked
                    _, sidecar_raw = services.sidecar_register(
                        actor=actor, datasource=datasource, name=name
                    )
            saved = json.loads(identity_file.read_text()) if identity_file.exists() else {}
            identity_raw = saved.get("token")
            if _still_valid_token(identity_raw) is None:
                _, identity_raw = services.token_issue(
                    actor=actor, identity=identity, name="demo-sidecar"
                )
            saved_agent = json.loads(agent_file.read_text()) if agent_file.exists() else {}
            agent_raw = saved_agent.get("token")
            if _still_valid_token(agent_raw) is None:
                _, agent_raw = services.token_issue(actor=actor, identity=agent, name="demo-mcp")
        _write_private(sidecar_file, f"{sidecar_raw}\n")
        _write_private(identity_file, json.dumps({"identity": IDENTITY, "token": identity_raw}))
        _write_private(agent_file, json.dumps({"identity": AGENT, "token": agent_raw}))
        pins = ",".join(f"{kid}:{pub}" for kid, pub in published_public_keys().items())
        config = {
            "upstream_dsn": upstream_dsn(dbname),
            "state_dir": str(directory / "state"),
            "datasource": datasource.name,
            "listen_host": "127.0.0.1",
            "listen_port": options["listen_port"],
            "control_plane_url": options["control_plane"],
            "bundle_public_keys": pins,
            "ready_file": str(directory / "ready.json"),
            "heartbeat_interval": 10,
            "upstream_password": app_password,
        }
        if options["mcp_port"]:
            config["mcp_listen"] = f"127.0.0.1:{options['mcp_port']}"
        _write_private(directory / "sidecar.json", json.dumps(config, indent=2))
        self.stdout.write(
            f"Demo database {dbname} ready ({inserted} customers added); "
            f"sidecar config in {directory / 'sidecar.json'}"
        )
