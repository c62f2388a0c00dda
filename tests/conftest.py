"""Shared fixtures. Tests run against real PostgreSQL and Redis (see config.devstack).

Personas (each a User with a known password ``pw-<role>-Warden1!`` and a linked
human Identity of the same name):

- ``admin_user``: superuser, role admin, TOTP already activated
  (``admin_user.totp_secret`` holds the base32 secret, for browser sign-in);
- ``security_user``, ``reviewer_user``, ``auditor_user``: those roles;
- ``outsider_user``: role none (signed in, sees nothing).

``team_a`` / ``team_b`` are two teams; ``demo_policy`` builds, through the
services, a production datasource with a schema, identities of each kind,
column classifications, masking rules and two guardrails.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from governance import services
from governance.models import Classification, Environment, Membership, Role

# These directories (under tests/) flush Redis or run the whole stack as
# subprocesses; make test runs them one at a time, in a pytest process of their
# own with a Redis of their own, beside the parallel part (config.devstack).
SERIAL_DIRS = (("integration",), ("deploy",), ("governance", "bundles"), ("sidecar", "bundle"))


def pytest_configure(config: pytest.Config) -> None:
    # Transactional tests empty the tables with DELETE instead of TRUNCATE (see
    # tests/pgbackend/base.py). Set before any connection exists; checked below.
    from django.conf import settings
    from django.db import connections

    settings.DATABASES["default"]["ENGINE"] = "tests.pgbackend"
    # Every test client builds the middleware again, and WhiteNoise would list every
    # static file through the finders each time (about 0.1 s a client). Looked up per
    # request instead, as it does under DEBUG; a server process builds it only once.
    settings.WHITENOISE_AUTOREFRESH = True
    # Collection may have made the connection object already (it opens no socket).
    connections.close_all()
    with contextlib.suppress(AttributeError):
        del connections["default"]


@pytest.fixture(scope="session", autouse=True)
def _flush_by_delete() -> None:
    from django.db import connection

    assert type(connection.ops).__module__ == "tests.pgbackend.base", type(connection.ops)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        if "tests" not in parts:
            continue
        below = parts[parts.index("tests") + 1 :]
        if any(below[: len(folder)] == folder for folder in SERIAL_DIRS):
            item.add_marker(pytest.mark.serial)


PASSWORDS = {
    role: f"pw-{role}-Warden1!" for role in ("admin", "security", "reviewer", "auditor", "none")
}


def persona_password(role: str) -> str:
    return PASSWORDS[role]


@pytest.fixture(autouse=True)
def _builtin_rows(request: pytest.FixtureRequest) -> None:
    """Built-in environments and classifications, as the data migration leaves them.

    Transactional tests (live server, browser, SSO) end with a flush that also
    removes rows seeded by migrations; put them back for whichever test comes
    next. Idempotent and cheap when they are there.
    """
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    transactional = bool(
        {"transactional_db", "live_server"} & names
        or (marker is not None and marker.kwargs.get("transaction"))
    )
    if not transactional and marker is None and "db" not in names:
        return
    request.getfixturevalue("transactional_db" if transactional else "db")
    _ensure_builtin_rows()


def _ensure_builtin_rows() -> None:
    import importlib

    from django.apps import apps

    seed = importlib.import_module(
        "governance.migrations.0002_builtin_environments_and_classifications"
    )
    later = importlib.import_module("governance.migrations.0007_zero_config_protection")
    if (
        Environment.objects.count() < len(seed.ENVIRONMENTS)
        or Classification.objects.filter(is_builtin=True).count() < len(seed.CLASSIFICATIONS) + 1
    ):
        # What the data migrations seed, in order: 0007 adds the protect thresholds
        # and pii.free_text to what 0002 made.
        seed.seed(apps, None)
        later.seed(apps, None)


# The audit trail's tables are raw SQL (a partitioned table and its key, chain and
# rollup tables), so Django's flush after a transactional test does not empty them,
# and the append-only trigger refuses TRUNCATE. Without this, events one test left
# behind show up in the reports of the next test on the same database.
_AUDIT_TRAIL_TABLES = (
    "audit_event",
    "audit_event_key",
    "audit_chain_head",
    "audit_chain_anchor",
    "audit_access_daily",
    "audit_activity_daily",
)


@pytest.fixture(autouse=True)
def _audit_trail_emptied(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    transactional = bool(
        {"transactional_db", "live_server"} & names
        or (marker is not None and marker.kwargs.get("transaction"))
    )
    if not transactional:
        yield
        return
    request.getfixturevalue("transactional_db")
    yield
    from django.db import connection, transaction

    # DELETE, not TRUNCATE (see tests/pgbackend), with the append-only trigger off
    # in the same transaction, on every partition.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only;"
            + "".join(f"DELETE FROM {table};" for table in _AUDIT_TRAIL_TABLES)
            + "ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only"
        )


FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# What every page's Content-Security-Policy header must say: checked on each URL by
# tests/config/test_security_headers.py and on each page a browser opens (tests/e2e).
CSP_DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2's deliberate slowness is for attackers, not for five personas per test.
    settings.PASSWORD_HASHERS = FAST_HASHERS


def _make_user(username: str, role: Role, *, actor: Any = None, superuser: bool = False) -> Any:
    User = get_user_model()
    user = User.objects.create_user(
        username=username,
        email=f"{username}@example.com",
        password=PASSWORDS[role.value],
        is_superuser=superuser,
        is_staff=superuser,
    )
    Membership.objects.create(user=user, role=role)
    services.identity_create(
        actor=actor or user,
        name=username,
        kind="human",
        display_name=username.title(),
        email=user.email,
        user=user,
    )
    return user


def _make_admin() -> Any:
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

    user = _make_user("admin", Role.ADMIN, superuser=True)
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    user.totp_secret = secret
    return user


@pytest.fixture(scope="module")
def policy_once(django_db_setup: Any, django_db_blocker: Any) -> Iterator[SimpleNamespace]:
    """The personas, both teams and the demo policy, made once for a whole module.

    For modules of many short, non-transactional tests over the same policy: they
    opt in with ``pytest.mark.usefixtures("policy_once")``. Building the policy
    (services, histories, audit rows) costs more than most of those tests, so it
    is done once, inside a transaction held open for the module and rolled back
    after it. Each test runs in a savepoint of that transaction (pytest-django's
    ``db``), so every test starts from exactly these rows, as with Django's
    ``TestCase.setUpTestData``; the fixtures below give each test its own deep
    copy of the objects. Every persona exists in such a module's tests, whichever
    ones a test asks for.
    """
    from django.db import connection, transaction
    from django.test import override_settings

    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            with override_settings(PASSWORD_HASHERS=FAST_HASHERS):
                _ensure_builtin_rows()
                admin = _make_admin()
                users = {
                    role.value: _make_user(name, role, actor=admin)
                    for name, role in [
                        ("security", Role.SECURITY),
                        ("reviewer", Role.REVIEWER),
                        ("auditor", Role.AUDITOR),
                        ("outsider", Role.NONE),
                    ]
                }
                team_a = services.team_create(actor=admin, name="Team A", slug="team-a")
                team_b = services.team_create(actor=admin, name="Team B", slug="team-b")
                demo = _make_demo_policy(admin, users["security"], team_a, team_b)
        except BaseException:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            raise
    yield SimpleNamespace(
        personas={"admin": admin, **users}, team_a=team_a, team_b=team_b, demo_policy=demo
    )
    with django_db_blocker.unblock():
        if connection.in_atomic_block:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


@pytest.fixture
def _policy_copy(request: pytest.FixtureRequest) -> SimpleNamespace | None:
    """This test's copy of ``policy_once`` when its module uses it, else None."""
    if "policy_once" not in request.fixturenames:
        return None
    return copy.deepcopy(request.getfixturevalue("policy_once"))


@pytest.fixture
def admin_user(db: Any, _policy_copy: SimpleNamespace | None) -> Any:
    if _policy_copy is not None:
        return _policy_copy.personas["admin"]
    return _make_admin()


def _persona(role: Role, name: str, admin: Any, shared: SimpleNamespace | None) -> Any:
    if shared is not None:
        return shared.personas[role.value]
    return _make_user(name, role, actor=admin)


@pytest.fixture
def security_user(admin_user: Any, _policy_copy: SimpleNamespace | None) -> Any:
    return _persona(Role.SECURITY, "security", admin_user, _policy_copy)


@pytest.fixture
def reviewer_user(admin_user: Any, _policy_copy: SimpleNamespace | None) -> Any:
    return _persona(Role.REVIEWER, "reviewer", admin_user, _policy_copy)


@pytest.fixture
def auditor_user(admin_user: Any, _policy_copy: SimpleNamespace | None) -> Any:
    return _persona(Role.AUDITOR, "auditor", admin_user, _policy_copy)


@pytest.fixture
def outsider_user(admin_user: Any, _policy_copy: SimpleNamespace | None) -> Any:
    return _persona(Role.NONE, "outsider", admin_user, _policy_copy)


@pytest.fixture
def personas(
    admin_user: Any, security_user: Any, reviewer_user: Any, auditor_user: Any, outsider_user: Any
) -> dict[str, Any]:
    """All five, by role name (``none`` is the outsider)."""
    return {
        "admin": admin_user,
        "security": security_user,
        "reviewer": reviewer_user,
        "auditor": auditor_user,
        "none": outsider_user,
    }


@pytest.fixture
def team_a(admin_user: Any, _policy_copy: SimpleNamespace | None) -> Any:
    if _policy_copy is not None:
        return _policy_copy.team_a
    return services.team_create(actor=admin_user, name="Team A", slug="team-a")


@pytest.fixture
def team_b(admin_user: Any, _policy_copy: SimpleNamespace | None) -> Any:
    if _policy_copy is not None:
        return _policy_copy.team_b
    return services.team_create(actor=admin_user, name="Team B", slug="team-b")


DEMO_SCHEMA = {
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
            ],
        },
        {
            "schema": "public",
            "name": "orders",
            "kind": "table",
            "columns": [
                {"name": "id", "type": "bigint"},
                {"name": "customer_id", "type": "bigint"},
                {"name": "card_number", "type": "text"},
                {"name": "amount", "type": "numeric(12,2)"},
            ],
        },
    ]
}


@pytest.fixture
def demo_policy(
    admin_user: Any,
    security_user: Any,
    team_a: Any,
    team_b: Any,
    _policy_copy: SimpleNamespace | None,
) -> SimpleNamespace:
    if _policy_copy is not None:
        return _policy_copy.demo_policy
    return _make_demo_policy(admin_user, security_user, team_a, team_b)


@pytest.fixture
def staging_rule(demo_policy: SimpleNamespace, security_user: Any) -> Any:
    """A guardrail for staging only (no production datasource there), placed after
    the demo policy's two production guardrails."""
    return services.guardrail_create(
        actor=security_user,
        name="review-staging-ddl",
        action="review",
        conditions={"environments": ["staging"], "statement_kinds": ["ddl"]},
        message="DDL in staging is reviewed.",
    )


def _make_demo_policy(
    admin_user: Any, security_user: Any, team_a: Any, team_b: Any
) -> SimpleNamespace:
    actor = admin_user
    production = Environment.objects.get(name="production")
    datasource = services.datasource_create(
        actor=actor,
        name="crm-prod",
        environment=production,
        description="Customer database",
        schema_snapshot=DEMO_SCHEMA,
        connect_teams=[team_a],
        review_teams=[team_b],
    )
    owner = security_user.identity
    services.identity_update(actor=actor, identity=owner, data={"teams": [team_a]})
    service = services.identity_create(
        actor=actor, name="svc-billing", kind="service", owner=owner, teams=[team_a]
    )
    agent = services.identity_create(
        actor=actor, name="agent-reports", kind="agent", owner=owner, teams=[team_a]
    )
    by_name = {c.name: c for c in Classification.objects.all()}
    columns = [
        services.column_classification_set(
            actor=actor,
            datasource=datasource,
            schema_name="public",
            table_name=table,
            column_name=column,
            classification=by_name[label],
        )
        for table, column, label in [
            ("customers", "email", "pii.email"),
            ("customers", "ssn", "pii.ssn"),
            ("orders", "card_number", "financial.card"),
        ]
    ]
    email_rule = services.masking_rule_create(
        actor=actor, name="mask-email", classification=by_name["pii.email"], strategy="email"
    )
    ssn_rule = services.masking_rule_create(
        actor=actor,
        name="mask-ssn",
        classification=by_name["pii.ssn"],
        strategy="partial",
        params={"keep_last": 4},
        exempt_teams=[team_b],
    )
    block_ddl = services.guardrail_create(
        actor=actor,
        name="block-ddl-in-production",
        action="block",
        conditions={"environments": ["production"], "statement_kinds": ["ddl"]},
        message="Schema changes in production go through migrations.",
    )
    review_agents = services.guardrail_create(
        actor=actor,
        name="review-agent-writes",
        action="review",
        conditions={"identity_kinds": ["agent"], "statement_kinds": ["insert", "update", "delete"]},
        message="Writes by AI agents need a human reviewer.",
    )
    return SimpleNamespace(
        datasource=datasource,
        owner=owner,
        service=service,
        agent=agent,
        columns=columns,
        masking_rules=[email_rule, ssn_rule],
        guardrails=[block_ddl, review_agents],
        team_a=team_a,
        team_b=team_b,
    )
