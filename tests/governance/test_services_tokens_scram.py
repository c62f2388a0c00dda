"""The SCRAM-SHA-256 verifier of an issued token is accepted by PostgreSQL itself.

A throw-away PostgreSQL cluster (the pgserver wheel's binaries) requires
scram-sha-256 for TCP clients; a role whose stored password is our verifier
must let in a client presenting the raw token, and nobody else. This is the
contract the sidecar relies on to authenticate clients offline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from governance import services

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def scram_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away embedded PostgreSQL whose role ``scram_probe`` must log in with SCRAM."""
    import pgserver

    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    try:
        uri = server.get_uri()
        with psycopg.connect(uri, autocommit=True) as conn:
            hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
            # First match wins: put our rule before the cluster's "trust" lines.
            hba.write_text("local all scram_probe scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        yield uri
    finally:
        server.cleanup()


def test_postgres_accepts_the_token_against_our_verifier(scram_postgres, demo_policy, admin_user):
    token, raw = services.token_issue(actor=admin_user, identity=demo_policy.service, name="pg")
    with psycopg.connect(scram_postgres, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS scram_probe")
        # A pre-computed verifier is stored as is (PostgreSQL never sees the token).
        conn.execute(f"CREATE ROLE scram_probe LOGIN PASSWORD '{token.scram_verifier}'")
        stored = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_probe'"
        ).fetchone()
    assert stored == (token.scram_verifier,)
    dsn = psycopg.conninfo.conninfo_to_dict(scram_postgres)
    dsn["user"] = "scram_probe"
    with psycopg.connect(**dsn, password=raw) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("scram_probe",)
    wrong = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**dsn, password=wrong).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**dsn, password=token.digest).close()


def test_every_token_of_an_identity_shares_its_scram_salt(demo_policy, admin_user):
    # A SCRAM exchange offers the client one salt, so the sidecar can check only the
    # tokens made with it: a second token must work beside the first.
    from sidecar.proxy.scram import Verifier

    first, raw_first = services.token_issue(actor=admin_user, identity=demo_policy.agent, name="a")
    second, raw_second = services.token_issue(
        actor=admin_user, identity=demo_policy.agent, name="b"
    )
    one, two = Verifier.parse(first.scram_verifier), Verifier.parse(second.scram_verifier)
    assert one.salt == two.salt and one.iterations == two.iterations
    assert one.matches_password(raw_first) and two.matches_password(raw_second)
    assert not one.matches_password(raw_second)
    other, _ = services.token_issue(actor=admin_user, identity=demo_policy.service, name="c")
    assert Verifier.parse(other.scram_verifier).salt != one.salt
