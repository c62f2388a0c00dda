"""TLS towards clients, cleartext passwords only inside TLS, SSL/GSSENC negotiation."""

from __future__ import annotations

import datetime as dt
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.engine import compute_revision
from sidecar.proxy import messages as m
from sidecar.proxy.scram import make_verifier
from tests.sidecar.proxy.conftest import Sidecar, build_bundle, identity, one_relay, start_sidecar

SLOW_TOKEN = "wdn_slowp1" + "w" * 33


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_sidecar(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    workdir = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(workdir)
    name = urlsplit(upstream).path.lstrip("/")
    proc = start_sidecar(
        workdir, upstream, build_bundle(name), tls_cert=str(cert), tls_key=str(key)
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def cleartext_sidecar(upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    workdir = tmp_path_factory.mktemp("cleartext")
    cert, key = _self_signed(workdir)
    name = urlsplit(upstream).path.lstrip("/")
    bundle = build_bundle(name)
    # A token whose verifier takes about a second to derive (test_a_cleartext_...).
    slow = identity("slowpoke", SLOW_TOKEN)
    slow["credentials"][0]["scram_sha_256"] = make_verifier(SLOW_TOKEN, iterations=3_000_000)
    bundle["identities"].append(slow)
    bundle["revision"] = compute_revision(bundle)
    proc = start_sidecar(
        workdir,
        upstream,
        bundle,
        tls_cert=str(cert),
        tls_key=str(key),
        cleartext_over_tls=True,
    )
    yield proc
    proc.stop()


def test_tls_session_with_scram(tls_sidecar: Sidecar) -> None:
    with psycopg.connect(tls_sidecar.dsn(sslmode="require"), autocommit=True) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)


def test_channel_binding_cannot_be_required(tls_sidecar: Sidecar) -> None:
    # SCRAM-SHA-256-PLUS cannot survive TLS termination, so it is never offered.
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(tls_sidecar.dsn(sslmode="require", channel_binding="require"))


def test_without_a_certificate_ssl_is_declined(sidecar: Sidecar) -> None:
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(sidecar.dsn(sslmode="require"))
    with psycopg.connect(sidecar.dsn(sslmode="prefer"), autocommit=True) as conn:
        assert not conn.info.pgconn.ssl_in_use


def test_cleartext_password_only_inside_tls(cleartext_sidecar: Sidecar) -> None:
    with psycopg.connect(
        cleartext_sidecar.dsn(sslmode="require", require_auth="password"), autocommit=True
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(cleartext_sidecar.dsn(sslmode="require", password="wrong"))
    # Without TLS the same sidecar still insists on SCRAM.
    with psycopg.connect(
        cleartext_sidecar.dsn(sslmode="disable", require_auth="scram-sha-256"), autocommit=True
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_cleartext_sign_in_does_not_stop_other_sessions(cleartext_sidecar: Sidecar) -> None:
    """Attack (a review's finding): a cleartext password is checked by deriving the
    token's verifier, thousands of HMAC rounds, and that ran on the event loop every
    session shares. Sign-ins (good or bad guesses, from many addresses) stalled every
    other session's statements for as long. With a verifier that takes about a second,
    another session's statements must go on meanwhile."""
    with psycopg.connect(cleartext_sidecar.dsn(sslmode="require"), autocommit=True) as conn:
        signed_in: list[float] = []

        def sign_in() -> None:
            started = time.monotonic()
            dsn = cleartext_sidecar.dsn(
                "slowpoke", SLOW_TOKEN, sslmode="require", require_auth="password"
            )
            with psycopg.connect(dsn) as slow:
                slow.execute("SELECT 1")
            signed_in.append(time.monotonic() - started)

        thread = threading.Thread(target=sign_in)
        thread.start()
        slowest = 0.0
        while thread.is_alive():
            started = time.monotonic()
            conn.execute("SELECT 1")
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)
        thread.join()
    assert signed_in and signed_in[0] > 0.5  # the derivation did take its time
    assert slowest < 0.4, f"a statement waited {slowest:.2f} s for another's sign-in"


def test_gssenc_request_is_declined(sidecar: Sidecar) -> None:
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, m.GSSENC_REQUEST))
        assert sock.recv(1) == b"N"
        sock.sendall(m.startup_message({"user": "alice", "database": sidecar.database}))
        reply = sock.recv(64)
        assert reply[:1] == b"R" and b"SCRAM-SHA-256\x00" in reply


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
