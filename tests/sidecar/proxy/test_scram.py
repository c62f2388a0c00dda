"""Our SCRAM verifiers and checks agree with PostgreSQL's own."""

from __future__ import annotations

import secrets

import psycopg
import pytest

from sidecar.proxy.scram import ScramClient, ScramError, ScramServer, Verifier, make_verifier
from tests.sidecar.proxy.conftest import admin_url, one_relay


def test_postgres_verifier_matches_our_derivation() -> None:
    role = "warden_proxy_scram_" + secrets.token_hex(3)
    token = "wdn_" + secrets.token_hex(16)
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE {role} PASSWORD '{token}'")
        try:
            stored = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()[0]
        finally:
            conn.execute(f"DROP ROLE {role}")
    verifier = Verifier.parse(stored)
    assert verifier.matches_password(token)
    assert not verifier.matches_password(token + "x")
    # Same salt and iterations: our derivation yields PostgreSQL's exact string.
    assert make_verifier(token, iterations=verifier.iterations, salt=verifier.salt) == stored


def _exchange(verifiers: list[Verifier], password: str) -> bytes:
    first = verifiers[0]
    server = ScramServer(verifiers, salt=first.salt, iterations=first.iterations)
    client = ScramClient(password)
    server_first = server.first(client.first())
    final = server.final(client.final(server_first))
    client.verify(final)
    return final


def test_exchange_accepts_any_credential_sharing_the_salt() -> None:
    salt = secrets.token_bytes(16)
    old, new = (Verifier.parse(make_verifier(t, salt=salt)) for t in ("old-token", "new-token"))
    assert _exchange([old, new], "old-token").startswith(b"v=")
    assert _exchange([old, new], "new-token").startswith(b"v=")
    with pytest.raises(ScramError):
        _exchange([old, new], "other-token")


def test_the_exchange_tells_which_credential_signed_in() -> None:
    # The heartbeat reports that credential's last use ("Last used" on its token).
    salt = secrets.token_bytes(16)
    old, new = (Verifier.parse(make_verifier(t, salt=salt)) for t in ("old-token", "new-token"))
    for password, expected in (("old-token", old), ("new-token", new)):
        server = ScramServer([old, new], salt=salt, iterations=old.iterations)
        client = ScramClient(password)
        server.final(client.final(server.first(client.first())))
        assert server.matched is expected


@pytest.mark.parametrize(
    "first",
    [b"p=tls-server-end-point,,n=,r=abc", b"n,a=admin,n=,r=abc", b"x,,n=,r=abc", b"n,,n="],
)
def test_malformed_or_channel_bound_first_messages_are_refused(first: bytes) -> None:
    verifier = Verifier.parse(make_verifier("t"))
    server = ScramServer([verifier], salt=verifier.salt, iterations=verifier.iterations)
    with pytest.raises(ScramError):
        server.first(first)


@pytest.mark.parametrize(
    "text", ["", "md5abc", "SCRAM-SHA-256$x:AAAA$AAAA:AAAA", "SCRAM-SHA-256$4096:!!$a:b"]
)
def test_bad_verifiers_do_not_parse(text: str) -> None:
    with pytest.raises(ScramError):
        Verifier.parse(text)


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
