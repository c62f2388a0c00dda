"""TLS from the sidecar to its upstream: libpq's ``sslmode`` semantics from the DSN.

One private PostgreSQL with ``ssl = on`` and a pg_hba of ``hostssl`` lines only, so
a login in plain text is refused by the server itself. Its certificate is issued
by a throw-away CA for ``localhost`` and ``127.0.0.1``; the server also listens
on ``127.0.0.2``, a name its certificate does not carry. Real sidecar processes
for what a client sees, the upstream client itself for the finer cases.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.proxy import messages as m
from sidecar.proxy.upstream import (
    UpstreamError,
    UpstreamTarget,
    connect,
    default_sslmode,
    send_cancel,
)
from sidecar.scanner import ScanError, ScanSettings, run_scan
from sidecar.scanner.scan import connect_kwargs
from tests.pki import ca as _ca
from tests.pki import issue as _issue
from tests.pki import write_pem as _write
from tests.sidecar.proxy.cluster import PrivatePostgres
from tests.sidecar.proxy.conftest import (
    SCHEMA_SQL,
    Sidecar,
    admin_url,
    build_bundle,
    one_relay,
    start_sidecar,
)

PASSWORD = "tls-pw-Qx7"


# --- a throw-away PKI: tests/pki.py -------------------------------------------------


@dataclass
class Pki:
    ca: Path  # the CA that issued the server's certificate
    other_ca: Path  # an unrelated CA
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN=cert_user, for the ``cert`` pg_hba method
    client_key: Path


def _pki(directory: Path) -> Pki:
    ca = _ca("Warden test CA")
    other = _ca("Some other CA")
    server = _issue(
        ca,
        "localhost",
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _issue(ca, "cert_user", client=True)
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    other_path = directory / "other-ca.crt"
    other_path.write_bytes(other[1].public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = _write(directory, "server", *server)
    client_cert, client_key = _write(directory, "client", *client)
    return Pki(ca_path, other_path, server_cert, server_key, client_cert, client_key)


# --- the TLS-only server ------------------------------------------------------------------


@dataclass
class TlsServer:
    pg: PrivatePostgres
    pki: Pki

    @property
    def port(self) -> int:
        return self.pg.port

    def dsn(self, host: str = "127.0.0.1", user: str = "tls_user", **params: str) -> str:
        auth = f"{user}:{PASSWORD}" if user == "tls_user" else user
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params.items())
        return f"postgresql://{auth}@{host}:{self.port}/app" + (f"?{query}" if query else "")

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        # Over the Unix socket: the only way in that is not hostssl.
        return psycopg.connect(
            host=str(self.pg.root),
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    pki = _pki(tmp_path_factory.mktemp("pki"))
    # Not under pytest's base directory: another pytest run starting meanwhile makes
    # that private again (0700), and pg_ctl, run as postgres, could not stop the server.
    root = Path(tempfile.mkdtemp(prefix="warden-pg-tls-"))
    pg = PrivatePostgres(root / "pg", [])
    # The server's own copies, readable by the postgres user only.
    key = pg.root / "server.key"
    cert = pg.root / "server.crt"
    ca = pg.root / "ca.crt"
    for source, target in ((pki.server_key, key), (pki.server_cert, cert), (pki.ca, ca)):
        shutil.copyfile(source, target)
        target.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(target, "postgres", "postgres")
    # No plain ``host`` line at all: a login without TLS is refused by pg_hba.
    (pg.data / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "hostssl all tls_user 127.0.0.0/8 scram-sha-256\n"
        "hostssl all cert_user 127.0.0.0/8 cert\n"
    )
    with (pg.data / "postgresql.conf").open("a") as fh:
        fh.write(
            f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
            f"ssl_ca_file = '{ca}'\nlisten_addresses = '127.0.0.1,127.0.0.2'\n"
        )
    pg.start()
    server = TlsServer(pg, pki)
    try:
        with server.admin() as conn:
            conn.execute("CREATE DATABASE app")
            conn.execute(f"CREATE ROLE tls_user LOGIN PASSWORD '{PASSWORD}'")
            conn.execute("CREATE ROLE cert_user LOGIN")
        with server.admin("app") as conn:
            conn.execute(SCHEMA_SQL)
            conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO tls_user, cert_user")
        yield server
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _sidecar(workdir: Path, upstream_dsn: str) -> Sidecar:
    return start_sidecar(workdir, upstream_dsn, build_bundle("app"))


def _ssl_in_use(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    return bool(row and row[0])


@pytest.fixture(scope="module")
def verify_full(server: TlsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    dsn = server.dsn(sslmode="verify-full", sslrootcert=str(server.pki.ca))
    sidecar = _sidecar(tmp_path_factory.mktemp("verify-full"), dsn)
    yield sidecar
    sidecar.stop()


# --- through a real sidecar ----------------------------------------------------------------


def test_verify_full_with_the_ca(verify_full: Sidecar) -> None:
    with psycopg.connect(verify_full.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)
        assert conn.execute("SELECT current_user").fetchone() == ("tls_user",)
        # The server's own view of the sidecar's connection.
        assert _ssl_in_use(conn)


def test_cancel_through_a_tls_upstream(verify_full: Sidecar) -> None:
    with psycopg.connect(verify_full.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
        finally:
            timer.cancel()
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_verify_full_against_the_wrong_host_fails(server: TlsServer, tmp_path: Path) -> None:
    # 127.0.0.2 reaches the same server, whose certificate names 127.0.0.1 and localhost.
    dsn = server.dsn("127.0.0.2", sslmode="verify-full", sslrootcert=str(server.pki.ca))
    sidecar = _sidecar(tmp_path, dsn)
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(sidecar.dsn())
        message = str(info.value)
        assert "upstream database refused" in message
        assert "sslmode=verify-full" in message and "certificate verify failed" in message
        assert "127.0.0.2" in message
    finally:
        sidecar.stop()


def test_require_without_a_ca_encrypts(server: TlsServer, tmp_path: Path) -> None:
    sidecar = _sidecar(tmp_path, server.dsn(sslmode="require"))
    try:
        with psycopg.connect(sidecar.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM customers").fetchone() == (50,)
            assert _ssl_in_use(conn)
    finally:
        sidecar.stop()


def test_disable_against_a_tls_only_server_fails(server: TlsServer, tmp_path: Path) -> None:
    sidecar = _sidecar(tmp_path, server.dsn(sslmode="disable"))
    try:
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry.*no encryption"):
            psycopg.connect(sidecar.dsn())
    finally:
        sidecar.stop()


# --- the upstream client itself ------------------------------------------------------------


def _login(dsn: str) -> Any:
    async def run() -> Any:
        session = await connect(UpstreamTarget.from_dsn(dsn), {})
        session.writer.close()
        return session

    return asyncio.run(run())


def test_verify_ca_with_another_ca_fails(server: TlsServer) -> None:
    with pytest.raises(UpstreamError, match=r"verify-ca.*certificate verify failed"):
        _login(server.dsn(sslmode="verify-ca", sslrootcert=str(server.pki.other_ca)))
    # require with a root certificate verifies the chain, as libpq does.
    with pytest.raises(UpstreamError, match="certificate verify failed"):
        _login(server.dsn(sslmode="require", sslrootcert=str(server.pki.other_ca)))
    # verify-ca does not check the name: 127.0.0.2 is fine.
    session = _login(server.dsn("127.0.0.2", sslmode="verify-ca", sslrootcert=str(server.pki.ca)))
    assert session.encrypted


def test_default_on_loopback_is_prefer(server: TlsServer) -> None:
    assert default_sslmode("127.0.0.1") == "prefer"
    session = _login(server.dsn())
    assert session.encrypted


def test_allow_retries_with_tls_and_prefer_reports_the_tls_error(server: TlsServer) -> None:
    # allow: plain text first, refused by pg_hba, then TLS.
    assert _login(server.dsn(sslmode="allow")).encrypted
    # prefer: TLS fails verification, plain text is refused; the TLS error is reported.
    with pytest.raises(UpstreamError, match="certificate verify failed"):
        _login(server.dsn(sslmode="prefer", sslrootcert=str(server.pki.other_ca)))


def test_client_certificate(server: TlsServer) -> None:
    pki = server.pki
    session = _login(
        server.dsn(
            user="cert_user",
            sslmode="verify-full",
            sslrootcert=str(pki.ca),
            sslcert=str(pki.client_cert),
            sslkey=str(pki.client_key),
        )
    )
    assert session.encrypted
    with pytest.raises(UpstreamError, match="certificate"):
        _login(server.dsn(user="cert_user", sslmode="verify-full", sslrootcert=str(pki.ca)))


def test_require_against_a_server_without_tls() -> None:
    # The shared test server has ssl = off: require must not fall back to plain text.
    url = admin_url()
    assert "sslmode" not in url
    with pytest.raises(UpstreamError, match=r"does not offer TLS.*sslmode=require"):
        _login(url + "?sslmode=require")


def test_scanner_passes_the_tls_settings_through(server: TlsServer) -> None:
    dsn = server.dsn(sslmode="verify-full", sslrootcert=str(server.pki.ca))
    report = run_scan(dsn, settings=ScanSettings(sample_rows=10))
    assert {"customers", "notes"} <= {r.name for r in report.catalog.relations}
    with pytest.raises(ScanError):
        run_scan(
            server.dsn("127.0.0.2", sslmode="verify-full", sslrootcert=str(server.pki.ca)),
            settings=ScanSettings(),
        )
    # Without sslmode the scanner gets the proxy's default, not libpq's prefer.
    assert connect_kwargs("postgresql://u@db.internal/app")["sslmode"] == "require"
    assert connect_kwargs("postgresql://u@127.0.0.1/app")["sslmode"] == "prefer"
    assert "sslmode" not in connect_kwargs("postgresql://u@db.internal/app?sslmode=verify-ca")


# --- parsing the DSN, and cancel requests ------------------------------------------------------


def test_dsn_tls_parameters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "warden.sidecar.proxy"):
        remote = UpstreamTarget.from_dsn("postgresql://u@db.internal:5432/app")
    assert remote.sslmode == "require" and remote.attempts() == ("tls",)
    assert "not authenticated" in caplog.text
    socket = UpstreamTarget.from_dsn("postgresql://u@/app?host=/run/postgresql&sslmode=require")
    assert socket.tls is None and socket.attempts() == ("plain",)
    assert UpstreamTarget.from_dsn("postgresql://u@[::1]/app").sslmode == "prefer"
    system = UpstreamTarget.from_dsn("postgresql://u@db.internal/app?sslrootcert=system")
    assert system.sslmode == "verify-full" and system.tls is not None
    assert system.tls.check_hostname
    disabled = UpstreamTarget.from_dsn("postgresql://u@db.internal/app?sslmode=disable")
    assert disabled.tls is None and disabled.attempts() == ("plain",)
    for query, problem in [
        ("sslmode=verify-full", "needs sslrootcert"),
        ("sslmode=verify-ca", "needs sslrootcert"),
        ("sslmode=always", "sslmode must be one of"),
        ("sslmode=require&sslrootcert=system", "requires sslmode=verify-full"),
        ("sslcrl=/x.crl", "sslcrl is not supported"),
        ("sslmode=verify-full&sslrootcert=/nonexistent/ca.crt", "/nonexistent/ca.crt"),
        ("sslkey=/x.key", "sslkey needs sslcert"),
    ]:
        with pytest.raises(ValueError, match=problem):
            UpstreamTarget.from_dsn(f"postgresql://u@db.internal/app?{query}")


async def _fake_server(
    answer: bytes, context: ssl.SSLContext | None
) -> tuple[asyncio.Server, asyncio.Future[tuple[bool, bytes]]]:
    """Answers SSLRequest with ``answer`` (wrapping in TLS on S) and records the next
    16 bytes (the cancel request) and whether they came over TLS."""
    got: asyncio.Future[tuple[bool, bytes]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        try:
            head = await reader.readexactly(8)
            if struct.unpack("!ii", head)[1] == m.SSL_REQUEST:
                writer.write(answer)
                await writer.drain()
                if answer == b"S":
                    assert context is not None
                    await writer.start_tls(context)
                    tls = True
                head = await reader.readexactly(8)
            rest = await reader.readexactly(8)
            got.set_result((tls, head + rest))
        except (asyncio.IncompleteReadError, ConnectionError):
            got.set_result((tls, b""))
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), got


def test_cancel_requests_follow_the_transport_rules(server: TlsServer) -> None:
    pki = server.pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    cancel = struct.pack("!iiii", 16, m.CANCEL_REQUEST, 1234, 5678)

    async def run(answer: bytes, query: str) -> tuple[bool, bytes]:
        fake, got = await _fake_server(answer, context)
        port = fake.sockets[0].getsockname()[1]
        try:
            target = UpstreamTarget.from_dsn(f"postgresql://u@127.0.0.1:{port}/app?{query}")
            await send_cancel(target, 1234, 5678)
            return await asyncio.wait_for(got, 5)
        finally:
            fake.close()

    verified = f"sslmode=verify-full&sslrootcert={pki.ca}"
    # Inside TLS, verified like the login.
    assert asyncio.run(run(b"S", verified)) == (True, cancel)
    # A server without TLS: require sends nothing in plain text, prefer does.
    assert asyncio.run(run(b"N", "sslmode=require")) == (False, b"")
    assert asyncio.run(run(b"N", "sslmode=prefer")) == (False, cancel)
    assert asyncio.run(run(b"S", "sslmode=disable")) == (False, cancel)


# Not about how messages are relayed: one relay is enough (``one_relay``).
relay = one_relay()
