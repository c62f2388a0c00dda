"""Hash masking inside the protected database: installer, key rotation and status check.

The ``hash`` masking strategy is a keyed HMAC-SHA-256 that PostgreSQL computes
itself: a ``SECURITY DEFINER`` function ``warden_masking.hmac(text)`` reads the
active key from a table that only its owner, the ``NOLOGIN`` role
``warden_masking``, may read. The key is generated inside the server and never
leaves it: it is not in the policy bundle, not in the statements the sidecar
sends, not in any log. An administrator installs the objects once per database
(``python -m sidecar install-masking``, see ``install``) and grants the sidecar's
unprivileged upstream role the right to call the function; the sidecar then checks
with its own connection that hashing is usable (``status``) before it serves a
hash-masked column. See ``docs/masking.md``.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sidecar.engine.masking import RESERVED_SCHEMA

# The version of the objects below; ``warden_masking.version()`` returns it. A later
# version replaces the function bodies (CREATE OR REPLACE) and keeps the key.
VERSION = 1
# The NOLOGIN role that owns the schema, the key table and the functions.
OWNER_ROLE = "warden_masking"
INSTALL_COMMAND = "python -m sidecar install-masking --config FILE --admin-dsn DSN"
KEY_MISSING_MESSAGE = "warden masking key missing: run python -m sidecar install-masking"
# Serialises installs and rotations within one database (transaction-scoped).
_LOCK_SQL = "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('warden_masking'))"

# HMAC (RFC 2104) with SHA-256: a 64-byte block; a 32-byte key padded with zeros.
_KEY_BYTES = 32
_BLOCK_BYTES = 64
_IPAD = 0x36
_OPAD = 0x5C


class MaskingError(Exception):
    """Installing, rotating or checking failed; the message is for an operator and never
    carries key material or a password."""


@dataclass(frozen=True, slots=True)
class MaskingStatus:
    installed: bool
    usable: bool
    version: int | None
    detail: str
    # The database's extensions, read in the same check: the engine judges CREATE
    # EXTENSION IF NOT EXISTS of an installed one as the no-op it is.
    extensions: frozenset[str] = frozenset()


def _ddl() -> list[sql.Composed]:
    """The objects, created as the owner role; idempotent (IF NOT EXISTS, OR REPLACE)."""
    s = sql.Identifier(RESERVED_SCHEMA)
    statements = [
        """CREATE TABLE IF NOT EXISTS {s}.masking_key (
            version integer PRIMARY KEY,
            inner_pad bytea NOT NULL,
            outer_pad bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            active boolean NOT NULL
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS masking_key_one_active"
        " ON {s}.masking_key (active) WHERE active",
        "REVOKE ALL ON SCHEMA {s} FROM PUBLIC",
        "REVOKE ALL ON TABLE {s}.masking_key FROM PUBLIC",
        # Only reached when no key is active: hashing fails closed, never NULL.
        """CREATE OR REPLACE FUNCTION {s}.key_missing() RETURNS text
        LANGUAGE plpgsql VOLATILE PARALLEL SAFE
        SET search_path = pg_catalog, pg_temp
        AS $body$
        BEGIN
            RAISE EXCEPTION '"""
        + KEY_MISSING_MESSAGE
        + """'
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END
        $body$""",
        # An SQL-standard body: its table reference is bound when it is created, so
        # no search_path can redirect it; the body holds no key, only the lookup.
        # ($1, not the parameter's name: a column of that name would take precedence.)
        """CREATE OR REPLACE FUNCTION {s}.hmac(value text) RETURNS text
        LANGUAGE sql STABLE STRICT PARALLEL SAFE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        BEGIN ATOMIC
            SELECT COALESCE(
                (SELECT pg_catalog.encode(pg_catalog.sha256(k.outer_pad
                            OPERATOR(pg_catalog.||) pg_catalog.sha256(k.inner_pad
                            OPERATOR(pg_catalog.||) pg_catalog.convert_to($1, 'UTF8'))),
                        'hex')
                 FROM {s}.masking_key AS k
                 WHERE k.active),
                {s}.key_missing());
        END""",
        """CREATE OR REPLACE FUNCTION {s}.version() RETURNS integer
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        SET search_path = pg_catalog, pg_temp
        RETURN """
        + str(VERSION),
        "REVOKE ALL ON FUNCTION {s}.key_missing() FROM PUBLIC",
        "REVOKE ALL ON FUNCTION {s}.hmac(text) FROM PUBLIC",
        "REVOKE ALL ON FUNCTION {s}.version() FROM PUBLIC",
    ]
    return [sql.SQL(text).format(s=s) for text in statements]


def _random_key_sql(conn: psycopg.Connection[Any]) -> sql.Composable:
    """A server-side expression for 32 random bytes: pgcrypto's ``gen_random_bytes`` when
    that extension is installed and callable, else two ``gen_random_uuid()`` (built in
    since PostgreSQL 13; 244 random bits; both draw from the server's strong RNG)."""
    row = conn.execute(
        """
        SELECT n.nspname
        FROM pg_catalog.pg_extension e
        JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid AND p.proname = 'gen_random_bytes'
             AND p.proargtypes = '23'::pg_catalog.oidvector
        WHERE e.extname = 'pgcrypto'
          AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
          AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
        """
    ).fetchone()
    if row is not None:
        return sql.SQL("{}.gen_random_bytes({})").format(
            sql.Identifier(row[0]), sql.Literal(_KEY_BYTES)
        )
    return sql.SQL(
        "pg_catalog.decode(pg_catalog.replace(gen_random_uuid()::text"
        " || gen_random_uuid()::text, '-', ''), 'hex')"
    )


def _create_key(conn: psycopg.Connection[Any]) -> int:
    """Insert a new active key (the caller deactivated any other); return its version.

    The key is drawn and turned into its HMAC pads inside PostgreSQL: the statement
    text carries no key material, and nothing but the new version number comes back.
    """
    query = sql.SQL(
        """
        WITH k AS MATERIALIZED (
            SELECT {random} || pg_catalog.decode(pg_catalog.repeat('00', {zeros}), 'hex') AS key
        )
        INSERT INTO {s}.masking_key (version, inner_pad, outer_pad, active)
        SELECT (SELECT COALESCE(pg_catalog.max(version), 0) + 1
                FROM {s}.masking_key),
               pg_catalog.decode(pg_catalog.string_agg(pg_catalog.lpad(pg_catalog.to_hex(
                   pg_catalog.get_byte(k.key, i) # {ipad}), 2, '0'), '' ORDER BY i), 'hex'),
               pg_catalog.decode(pg_catalog.string_agg(pg_catalog.lpad(pg_catalog.to_hex(
                   pg_catalog.get_byte(k.key, i) # {opad}), 2, '0'), '' ORDER BY i), 'hex'),
               true
        FROM k, pg_catalog.generate_series(0, {last}) AS i
        GROUP BY k.key
        RETURNING version
        """
    ).format(
        random=_random_key_sql(conn),
        zeros=sql.Literal(_BLOCK_BYTES - _KEY_BYTES),
        s=sql.Identifier(RESERVED_SCHEMA),
        ipad=sql.Literal(_IPAD),
        opad=sql.Literal(_OPAD),
        last=sql.Literal(_BLOCK_BYTES - 1),
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _scrub(message: str, secret: str | None) -> str:
    line = message.strip().splitlines()[0] if message.strip() else message
    return line.replace(secret, "***") if secret else line


def _error_text(exc: psycopg.Error) -> str:
    """The server's primary message only: a DETAIL (e.g. "Failing row contains ...")
    could carry a row of the key table."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
    return primary or type(exc).__name__


def _connect_admin(admin_dsn: str, application_name: str) -> psycopg.Connection[Any]:
    try:
        password = conninfo_to_dict(admin_dsn).get("password")
    except psycopg.Error:
        raise MaskingError("the admin DSN is malformed") from None
    try:
        return psycopg.connect(
            admin_dsn, autocommit=False, application_name=application_name, connect_timeout=10
        )
    except psycopg.Error as exc:
        text = _scrub(str(exc), str(password) if password else None)
        raise MaskingError(f"cannot connect with the admin DSN: {text}") from None


def _check_database(conn: psycopg.Connection[Any], expect_database: str | None) -> str:
    database = conn.info.dbname
    if expect_database is not None and database != expect_database:
        raise MaskingError(
            f"the admin DSN points at database {database}; this sidecar protects {expect_database}"
        )
    return database


def _role_exists(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [role]).fetchone()
    return row is not None


def _ensure_membership(conn: psycopg.Connection[Any], superuser: bool, createrole: bool) -> None:
    """Make sure the admin may act as the owner role (``SET ROLE``, ``AUTHORIZATION``),
    granting itself membership when it has none but may (CREATEROLE). Members of the
    owner role can read the key, as superusers can."""
    if superuser:
        return
    privilege = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    row = conn.execute(
        "SELECT pg_catalog.pg_has_role(current_user, %s, %s)", [OWNER_ROLE, privilege]
    ).fetchone()
    if row and row[0]:
        return
    if not createrole:
        raise MaskingError(
            f"the admin role {conn.info.user} may not act as role {OWNER_ROLE}: "
            "connect as a superuser or a member of that role"
        )
    conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(OWNER_ROLE)))


def _set_owner_role(conn: psycopg.Connection[Any]) -> None:
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(OWNER_ROLE)))


def _installed_version(conn: psycopg.Connection[Any]) -> int | None:
    """The installed objects' version, read as the owner role (None: not installed)."""
    row = conn.execute(
        "SELECT pg_catalog.to_regprocedure(%s) IS NOT NULL", [f"{RESERVED_SCHEMA}.version()"]
    ).fetchone()
    if not (row and row[0]):
        return None
    row = conn.execute(sql.SQL("SELECT {}.version()").format(sql.Identifier(RESERVED_SCHEMA)))
    value = row.fetchone()
    return None if value is None else int(value[0])


def _revoke_strangers(conn: psycopg.Connection[Any]) -> None:
    """Nobody but the owner holds a privilege on the key table (or one of its columns) or
    the helper: revoke any grant found (PUBLIC is revoked by the DDL). A table-level
    REVOKE also revokes the column privileges."""
    s = sql.Identifier(RESERVED_SCHEMA)
    table = f"{RESERVED_SCHEMA}.masking_key"
    for row in conn.execute(
        """
        SELECT DISTINCT pg_catalog.pg_get_userbyid(a.grantee)
        FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
        WHERE c.oid = %s::regclass AND a.grantee <> 0 AND a.grantee <> c.relowner
        UNION
        SELECT pg_catalog.pg_get_userbyid(a.grantee)
        FROM pg_catalog.pg_attribute t, pg_catalog.aclexplode(t.attacl) a
        WHERE t.attrelid = %s::regclass AND a.grantee <> 0
        """,
        [table, table],
    ).fetchall():
        conn.execute(
            sql.SQL("REVOKE ALL ON TABLE {}.masking_key FROM {}").format(s, sql.Identifier(row[0]))
        )
    for row in conn.execute(
        """
        SELECT DISTINCT pg_catalog.pg_get_userbyid(a.grantee)
        FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid = %s::regprocedure AND a.grantee <> 0 AND a.grantee <> p.proowner
        """,
        [f"{RESERVED_SCHEMA}.key_missing()"],
    ).fetchall():
        conn.execute(
            sql.SQL("REVOKE ALL ON FUNCTION {}.key_missing() FROM {}").format(
                s, sql.Identifier(row[0])
            )
        )


def install(admin_dsn: str, *, grant_to: str, expect_database: str | None = None) -> str:
    """Create or upgrade the masking objects in the admin DSN's database, in one transaction.

    Creates the owner role, the schema, the key table and the functions when missing,
    replaces the function bodies (keeping the key), creates a key when none is active,
    and grants the sidecar's role ``grant_to`` USAGE on the schema and EXECUTE on
    ``hmac(text)`` and ``version()``. ``expect_database``: refuse unless the admin DSN
    connects to that database. Returns a one-line summary; raises ``MaskingError``.
    """
    with _connect_admin(admin_dsn, "warden-install-masking") as conn:
        try:
            return _install(conn, grant_to=grant_to, expect_database=expect_database)
        except psycopg.Error as exc:  # the connection's context rolls back
            raise MaskingError(f"install-masking failed: {_error_text(exc)}") from None


def _install(conn: psycopg.Connection[Any], *, grant_to: str, expect_database: str | None) -> str:
    database = _check_database(conn, expect_database)
    row = conn.execute(
        """
        SELECT r.rolsuper, r.rolcreaterole,
               pg_catalog.has_database_privilege(current_database(), 'CREATE')
        FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
        """
    ).fetchone()
    superuser, createrole, create_in_db = row if row else (False, False, False)
    if not (superuser or (createrole and create_in_db)):
        raise MaskingError(
            f"the admin role {conn.info.user} may not create roles and schemas in database "
            f"{database}: connect as a superuser, or as a role with CREATEROLE and CREATE on "
            "the database"
        )
    if grant_to == OWNER_ROLE:
        raise MaskingError(f"--grant-to must be the sidecar's upstream role, not {OWNER_ROLE}")
    if not _role_exists(conn, grant_to):
        raise MaskingError(
            f"role {grant_to} does not exist: create the sidecar's upstream role first, "
            "or name it with --grant-to"
        )
    conn.execute(_LOCK_SQL)
    owner = sql.Identifier(OWNER_ROLE)
    schema = sql.Identifier(RESERVED_SCHEMA)
    role = conn.execute(
        """
        SELECT rolsuper OR rolcanlogin OR rolcreatedb OR rolcreaterole OR rolreplication
               OR rolbypassrls
        FROM pg_catalog.pg_roles WHERE rolname = %s
        """,
        [OWNER_ROLE],
    ).fetchone()
    if role is None:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
    elif role[0]:
        conn.execute(
            sql.SQL(
                "ALTER ROLE {} NOSUPERUSER NOLOGIN NOCREATEDB NOCREATEROLE NOREPLICATION"
                " NOBYPASSRLS"
            ).format(owner)
        )
    found = conn.execute(
        "SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace"
        " WHERE nspname = %s",
        [RESERVED_SCHEMA],
    ).fetchone()
    if found is not None and found[0] != OWNER_ROLE:
        raise MaskingError(
            f"schema {RESERVED_SCHEMA} already exists and is owned by {found[0]}, not "
            f"{OWNER_ROLE}; refusing to install into it (drop or rename it first)"
        )
    _ensure_membership(conn, bool(superuser), bool(createrole))
    if found is None:
        conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(schema, owner))
    _set_owner_role(conn)
    previous = _installed_version(conn)
    if previous is not None and previous > VERSION:
        raise MaskingError(
            f"database {database} has masking version {previous}, newer than this sidecar's "
            f"{VERSION}; use the newer sidecar's installer"
        )
    table = conn.execute(
        "SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class"
        " WHERE oid = pg_catalog.to_regclass(%s)",
        [f"{RESERVED_SCHEMA}.masking_key"],
    ).fetchone()
    if table is not None and table[0] != OWNER_ROLE:
        raise MaskingError(
            f"table {RESERVED_SCHEMA}.masking_key is owned by {table[0]}, not {OWNER_ROLE}"
        )
    for statement in _ddl():
        conn.execute(statement)
    _revoke_strangers(conn)
    active = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.masking_key WHERE active").format(schema)
    ).fetchone()
    key_created = not (active and active[0])
    if key_created:
        _create_key(conn)
    grantee = sql.Identifier(grant_to)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, grantee))
    conn.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION {s}.hmac(text), {s}.version() TO {g}").format(
            s=schema, g=grantee
        )
    )
    conn.execute("RESET ROLE")
    risky = conn.execute(
        "SELECT rolsuper OR pg_catalog.pg_has_role(rolname, %s, 'MEMBER')"
        " FROM pg_catalog.pg_roles WHERE rolname = %s",
        [OWNER_ROLE, grant_to],
    ).fetchone()
    conn.commit()
    if previous is None:
        summary = f"installed version {VERSION} in database {database}"
    elif previous < VERSION:
        summary = f"upgraded from version {previous} to {VERSION} in database {database}"
    else:
        summary = f"already at version {VERSION} in database {database}"
    summary += f"; key {'created' if key_created else 'kept'}; EXECUTE granted to {grant_to}"
    if risky and risky[0]:
        summary += (
            f"; warning: role {grant_to} is a superuser or a member of {OWNER_ROLE} and can "
            "read the key table (the sidecar should use an unprivileged role)"
        )
    return summary


def rotate_key(admin_dsn: str, *, expect_database: str | None = None) -> str:
    """Activate a new key and deactivate the old one (kept, inactive), in one transaction.

    Every hash changes: values hashed before the rotation (saved query results,
    extracts) no longer match or join with values hashed after it.
    """
    with _connect_admin(admin_dsn, "warden-rotate-masking-key") as conn:
        try:
            return _rotate(conn, expect_database)
        except psycopg.Error as exc:  # the connection's context rolls back
            raise MaskingError(f"rotate-masking-key failed: {_error_text(exc)}") from None


def _rotate(conn: psycopg.Connection[Any], expect_database: str | None) -> str:
    database = _check_database(conn, expect_database)
    row = conn.execute(
        "SELECT rolsuper, rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user"
    ).fetchone()
    superuser, createrole = row if row else (False, False)
    present = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", [RESERVED_SCHEMA]
    ).fetchone()
    if present is None or not _role_exists(conn, OWNER_ROLE):
        raise MaskingError(
            f"hash masking is not installed in database {database}: run {INSTALL_COMMAND} first"
        )
    conn.execute(_LOCK_SQL)
    _ensure_membership(conn, bool(superuser), bool(createrole))
    _set_owner_role(conn)
    if _installed_version(conn) is None:
        raise MaskingError(
            f"hash masking is not installed in database {database}: run {INSTALL_COMMAND} first"
        )
    schema = sql.Identifier(RESERVED_SCHEMA)
    conn.execute(sql.SQL("LOCK TABLE {}.masking_key IN EXCLUSIVE MODE").format(schema))
    old = conn.execute(
        sql.SQL("UPDATE {}.masking_key SET active = false WHERE active RETURNING version").format(
            schema
        )
    ).fetchall()
    new = _create_key(conn)
    conn.execute("RESET ROLE")
    conn.commit()
    kept = f"version {old[0][0]} kept inactive" if old else "there was no active key"
    return (
        f"rotated the masking key in database {database}: key version {new} is active, {kept}; "
        "values hashed before no longer match values hashed from now on"
    )


def upstream_identity(dsn: str) -> tuple[str, str]:
    """The (database, user) a libpq DSN connects as, with libpq's defaults (PGDATABASE,
    PGUSER, the OS user; the database defaults to the user name)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise MaskingError("the sidecar's upstream_dsn is malformed") from None
    user = str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser())
    database = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    return database, user


def status(
    conninfo: str | psycopg.Connection[Any], *, password: str | None = None
) -> MaskingStatus:
    """Whether hash masking is usable through this connection (the sidecar's own role),
    and the database's extensions.

    ``conninfo``: a DSN (connected with ``password`` if given, closed afterwards) or an
    open connection (left as found: each check runs in its own transaction or
    savepoint). Raises ``MaskingError`` only when a DSN cannot be connected.
    """
    if not isinstance(conninfo, str):
        return _with_extensions(conninfo, _status(conninfo))
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": "warden-masking-status",
        "connect_timeout": 10,
    }
    if password is not None:
        kwargs["password"] = password
    from sidecar.proxy.upstream import libpq_defaults

    kwargs.update(libpq_defaults(conninfo))  # TLS and logins as the proxy's own
    try:
        conn = psycopg.connect(conninfo, **kwargs)
    except psycopg.Error as exc:
        raise MaskingError(
            f"cannot connect to the upstream database: {type(exc).__name__}"
        ) from None
    with conn:
        return _with_extensions(conn, _status(conn))


def _with_extensions(conn: psycopg.Connection[Any], status: MaskingStatus) -> MaskingStatus:
    with conn.transaction():
        rows = conn.execute("SELECT extname FROM pg_catalog.pg_extension").fetchall()
    return replace(status, extensions=frozenset(str(r[0]) for r in rows))


def _status(conn: psycopg.Connection[Any]) -> MaskingStatus:
    schema = sql.Identifier(RESERVED_SCHEMA)
    # The catalog, not to_regprocedure(): without USAGE on the schema, the latter raises
    # "permission denied for schema" instead of answering.
    with conn.transaction():
        row = conn.execute(
            """
            SELECT p.oid, pg_catalog.has_schema_privilege(n.oid, 'USAGE'),
                   pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
            FROM pg_catalog.pg_namespace n
            LEFT JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid AND p.proname = 'hmac'
                 AND p.proargtypes = '25'::pg_catalog.oidvector
            WHERE n.nspname = %s
            """,
            [RESERVED_SCHEMA],
        ).fetchone()
        who = conn.execute("SELECT current_user, current_database()").fetchone()
    user, database = who if who else ("?", "?")
    if row is None or row[0] is None:
        return MaskingStatus(
            installed=False,
            usable=False,
            version=None,
            detail=(
                f"hash masking is not installed in database {database}: an administrator "
                f"must run {INSTALL_COMMAND}"
            ),
        )
    if not (row[1] and row[2]):
        return MaskingStatus(
            installed=True,
            usable=False,
            version=None,
            detail=(
                f"role {user} may not call {RESERVED_SCHEMA}.hmac(text) in database {database}: "
                f"an administrator must run {INSTALL_COMMAND} (it grants the sidecar's role)"
            ),
        )
    try:
        with conn.transaction():
            got = conn.execute(sql.SQL("SELECT {}.version()").format(schema)).fetchone()
        version = int(got[0]) if got else None
    except psycopg.Error:
        version = None
    if version != VERSION:
        found = "missing" if version is None else f"version {version}"
        return MaskingStatus(
            installed=True,
            usable=False,
            version=version,
            detail=(
                f"hash masking in database {database} is {found}, this sidecar needs version "
                f"{VERSION}: an administrator must run {INSTALL_COMMAND} with this sidecar"
            ),
        )
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SELECT {}.hmac('')").format(schema)).fetchone()
    except psycopg.Error as exc:
        return MaskingStatus(
            installed=True,
            usable=False,
            version=version,
            detail=(
                f"hash masking in database {database} cannot hash ({_error_text(exc)}): an "
                f"administrator must run {INSTALL_COMMAND}"
            ),
        )
    return MaskingStatus(
        installed=True,
        usable=True,
        version=version,
        detail=f"hash masking version {version} is usable by role {user} in database {database}",
    )
