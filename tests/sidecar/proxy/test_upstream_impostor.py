"""An impostor in the upstream's place: what the sidecar's login gives away to it.

Without ``sslmode=verify-full`` nothing proves the upstream is the database. A
server (or anyone between the sidecar and it) that is not can still try to get in:
skip SCRAM's last step, which is where a real server proves it holds the
verifier, or simply ask for the password in clear. The impostor below is that
server: it speaks just enough of the protocol to ask, and records what each
connection sends it. Real sidecar processes for what a client sees (their start-up
checks connect through libpq, which must not give the password away either), the
upstream client itself for the finer cases; a real PostgreSQL logging in with
every method is ``test_upstream.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.proxy import messages as m
from sidecar.proxy.upstream import UpstreamError, UpstreamTarget, connect, libpq_defaults
from sidecar.scanner.scan import connect_kwargs
from tests.pki import ca as _ca
from tests.pki import issue as _issue
from tests.pki import write_pem as _write
from tests.sidecar.proxy.conftest import Sidecar, build_bundle, one_relay, start_sidecar

PASSWORD = "sidecar-upstream-pw-Jq2"

# Not about how messages are relayed: one relay is enough.
relay = one_relay()


@dataclass
class Login:
    """One connection to the impostor: its startup parameters, and the type and body
    of each message it sent after the impostor's authentication request."""

    params: dict[str, str]
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def kinds(self) -> list[bytes]:
        return [kind for kind, _ in self.sent]


def _auth(code: int, data: bytes = b"") -> bytes:
    return m.frame(b"R", struct.pack("!i", code) + data)


READY = _auth(0) + m.frame(b"K", struct.pack("!ii", 4242, 99)) + m.frame(b"Z", b"I")
SCRAM_OFFER = _auth(10, b"SCRAM-SHA-256\x00\x00")


class Impostor:
    """A TCP server posing as PostgreSQL. ``script`` is what it writes after each
    message it reads (the first after the startup message), as bytes or made from
    what the connection sent so far; after the script it records one more message,
    then closes."""

    def __init__(
        self,
        host: str,
        script: list[bytes | Callable[[Login], bytes]],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.script = script
        self.tls = tls  # answers SSLRequest with S and this context, else N
        self.logins: list[Login] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.socket(family, socket.SOCK_STREAM)
        self._server.bind((host, 0))
        self._server.listen(16)
        self.host = host
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def dsn(self, **params: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://warden_sidecar:{PASSWORD}@{host}:{self.port}/app?{query}"

    def close(self) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            length, code = struct.unpack("!ii", conn.recv(8, socket.MSG_WAITALL))
            while code in (m.SSL_REQUEST, 80877104):  # TLS, GSSAPI
                if code == m.SSL_REQUEST and self.tls is not None:
                    conn.sendall(b"S")
                    conn = self.tls.wrap_socket(conn, server_side=True)
                else:
                    conn.sendall(b"N")
                head = b""
                while len(head) < 8:
                    more = conn.recv(8 - len(head))
                    if not more:
                        return
                    head += more
                length, code = struct.unpack("!ii", head)
        except (OSError, struct.error):
            conn.close()
            return
        with conn, conn.makefile("rb") as stream:
            try:
                pairs = stream.read(length - 8).split(b"\x00")
                login = Login(
                    dict(
                        zip(
                            map(bytes.decode, pairs[0::2]),
                            map(bytes.decode, pairs[1::2]),
                            strict=False,
                        )
                    )
                )
                self.logins.append(login)
                for answer in self.script:
                    conn.sendall(answer if isinstance(answer, bytes) else answer(login))
                    kind = stream.read(1)
                    if not kind:
                        return
                    body = stream.read(struct.unpack("!i", stream.read(4))[0] - 4)
                    login.sent.append((kind, body))
            except (OSError, struct.error, ValueError):
                return

    def by(self, application_name: str) -> list[Login]:
        return [
            login
            for login in self.logins
            if login.params.get("application_name") == application_name
        ]


def _network_address() -> str:
    """An address of this host's that is not loopback (the source address of its
    default route; a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("this host has no network address besides loopback")
        address = str(probe.getsockname()[0])
    if ipaddress.ip_address(address).is_loopback or ipaddress.ip_address(address).is_unspecified:
        pytest.skip("this host has no network address besides loopback")
    return address


@pytest.fixture
def impostor() -> Iterator[list[Impostor]]:
    started: list[Impostor] = []
    yield started
    for server in started:
        server.close()


def _upstream_login(dsn: str) -> None:
    async def run() -> None:
        session = await connect(UpstreamTarget.from_dsn(dsn), {"application_name": "direct"})
        session.writer.close()

    asyncio.run(run())


def _client_login(sidecar: Sidecar) -> str:
    """What a client signing in through the sidecar is told."""
    dsn = sidecar.dsn(application_name="victim", connect_timeout="10")
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(dsn)
    return str(refused.value)


# --- the attacks, through a real sidecar -------------------------------------------------


def test_an_impostor_that_skips_the_scram_proof_is_refused(
    impostor: list[Impostor], tmp_path: Path
) -> None:
    # SASL offered; whatever the sidecar's first message, AuthenticationOk at once,
    # without the server-final message that only a holder of the verifier can write.
    fake = Impostor("127.0.0.1", [SCRAM_OFFER, READY])
    impostor.append(fake)
    sidecar = start_sidecar(tmp_path, fake.dsn(), build_bundle("app"))
    try:
        told = _client_login(sidecar)
    finally:
        sidecar.stop()
    assert "without proving it knows the password" in told
    (login,) = fake.by("victim")
    # It got the client-first message (a nonce, nothing secret), then no statement:
    # the sidecar hung up rather than run its session probe against the impostor.
    assert login.kinds == [b"p"]
    assert b"SCRAM-SHA-256" in login.sent[0][1]


def test_no_password_in_clear_over_the_network(impostor: list[Impostor], tmp_path: Path) -> None:
    # Plain text to a host that is not loopback (sslmode=disable, or what an attacker
    # stripping TLS leaves of prefer), and the server asks for the password in clear.
    fake = Impostor(
        _network_address(), [_auth(3), m.frame(b"E", b"SFATAL\x00Mimpostor says no\x00\x00")]
    )
    impostor.append(fake)
    sidecar = start_sidecar(tmp_path, fake.dsn(sslmode="disable"), build_bundle("app"))
    try:
        told = _client_login(sidecar)
    finally:
        sidecar.stop()
    assert "password in clear text" in told and "require_auth=password" in told
    # Not the proxy's login, nor the start-up checks' libpq connections (privileges,
    # hash masking), which also dialled the impostor.
    assert len(fake.by("victim")) == 1
    assert len(fake.logins) > 1
    assert all(kind != b"p" for login in fake.logins for kind in login.kinds)
    # Named in require_auth, the password is sent: the impostor would have seen it.
    _expect_refused(fake.dsn(sslmode="disable", require_auth="password"), "impostor says no")
    assert fake.by("direct")[-1].sent == [(b"p", PASSWORD.encode() + b"\x00")]


# --- the finer cases, with the upstream client itself ------------------------------------


def test_nothing_counts_before_authentication_ok(impostor: list[Impostor]) -> None:
    """A review's finding: the checks ran only at AuthenticationOk, and an impostor
    could leave it out: ReadyForQuery straight after the SCRAM exchange (no server
    signature), or straight away under require_auth, and the login went on."""
    no_ok = READY.removeprefix(_auth(0))
    after_scram = Impostor("127.0.0.1", [SCRAM_OFFER, _server_first(4096), no_ok])
    at_once = Impostor("127.0.0.1", [no_ok])
    impostor += [after_scram, at_once]
    _expect_refused(after_scram.dsn(), "before authenticating the login")
    assert after_scram.logins[-1].kinds == [b"p", b"p"]  # client-first, client-final
    _expect_refused(at_once.dsn(require_auth="scram-sha-256"), "before authenticating")
    _expect_refused(at_once.dsn(), "before authenticating")
    assert all(login.kinds == [] for login in at_once.logins)  # no probe Query sent


def test_no_password_in_clear_inside_tls_that_does_not_check_the_server(
    impostor: list[Impostor], tmp_path: Path
) -> None:
    """A review's finding: the default for a remote host, sslmode=require, encrypts
    without checking the certificate, and the impostor answers TLS with one of its
    own. Cleartext goes only to a server whose certificate is checked."""
    authority = _ca("impostor-test CA")
    address = _network_address()
    key, cert = _issue(authority, address, sans=[x509.IPAddress(ipaddress.ip_address(address))])
    cert_path, key_path = _write(tmp_path, "server", key, cert)
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(authority[1].public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    ask = [_auth(3), m.frame(b"E", b"SFATAL\x00Mimpostor says no\x00\x00")]
    fake = Impostor(address, ask, tls=context)
    impostor.append(fake)
    _expect_refused(fake.dsn(), "does not authenticate the server")  # sslmode=require
    assert fake.logins[-1].kinds == []
    assert libpq_defaults(fake.dsn()) == {"sslmode": "require", "require_auth": "!password,!md5"}
    # Checked against its CA (verify-full, or require with sslrootcert): sent.
    _expect_refused(fake.dsn(sslmode="verify-full", sslrootcert=str(ca_path)), "says no")
    assert fake.logins[-1].sent == [(b"p", PASSWORD.encode() + b"\x00")]
    _expect_refused(fake.dsn(sslmode="require", sslrootcert=str(ca_path)), "says no")
    assert fake.logins[-1].kinds == [b"p"]
    assert libpq_defaults(fake.dsn(sslmode="require", sslrootcert=str(ca_path))) == {}
    # MD5 likewise (a second reading's finding): the impostor would relay the real
    # server's salt and log in with the answer.
    md5 = Impostor(address, [_auth(5, b"salt"), ask[1]], tls=context)
    impostor.append(md5)
    _expect_refused(md5.dsn(), "as an MD5 answer")
    assert md5.logins[-1].kinds == []
    _expect_refused(md5.dsn(require_auth="md5"), "says no")  # named: answered
    assert md5.logins[-1].kinds == [b"p"]


def _expect_refused(dsn: str, match: str) -> None:
    with pytest.raises(UpstreamError, match=match):
        _upstream_login(dsn)


def test_require_auth_limits_what_the_server_may_ask(impostor: list[Impostor]) -> None:
    md5 = Impostor("127.0.0.1", [_auth(5, b"salt"), READY])
    trust = Impostor("127.0.0.1", [READY])
    impostor += [md5, trust]
    _expect_refused(
        md5.dsn(require_auth="scram-sha-256"), "asked for md5 authentication.*allows scram-sha-256"
    )
    _expect_refused(md5.dsn(require_auth="!md5"), "asked for md5 authentication")
    assert md5.logins[-1].kinds == []
    # None asked at all: refused unless "none" is allowed.
    _expect_refused(trust.dsn(require_auth="scram-sha-256,md5"), "asked for no authentication")
    assert trust.logins[-1].kinds == []
    # Allowed, the login goes on to the session probe (which the impostor does not
    # answer): md5 by default, as libpq, and no authentication under require_auth=none.
    _expect_refused(md5.dsn(), "upstream")
    assert md5.logins[-1].kinds[:2] == [b"p", b"Q"]
    _expect_refused(trust.dsn(require_auth="none"), "upstream")
    assert trust.logins[-1].kinds == [b"Q"]


def _server_first(iterations: int) -> Callable[[Login], bytes]:
    """A server-first message extending the nonce of the client-first just received."""

    def answer(login: Login) -> bytes:
        nonce = login.sent[-1][1].rsplit(b"r=", 1)[1].decode()
        return _auth(11, f"r={nonce}imp,s=c2FsdHNhbHQ=,i={iterations}".encode())

    return answer


def test_a_malformed_scram_exchange_is_an_upstream_error(impostor: list[Impostor]) -> None:
    def after_first(answer: bytes | Callable[[Login], bytes]) -> str:
        fake = Impostor("127.0.0.1", [SCRAM_OFFER, answer, READY])
        impostor.append(fake)
        return fake.dsn()

    _expect_refused(after_first(_auth(11, b"r=x")), "malformed server-first-message")
    _expect_refused(after_first(_auth(11, b"r=x,s=!!,i=4096")), "malformed server-first")
    _expect_refused(after_first(_auth(11, b"r=x,s=c2FsdA==,i=4096")), "does not extend ours")
    # A count chosen to stall the event loop, which every session shares.
    _expect_refused(after_first(_server_first(2_000_000_000)), "2000000000 SCRAM iterations")
    # A server-final before the server-first: no login.
    _expect_refused(after_first(_auth(12, b"v=AAAA")), "signature does not match")
    # Another method asked in the middle of SCRAM (a downgrade): refused.
    _expect_refused(after_first(_auth(3)), "during SCRAM authentication")
    # A wrong signature after a well-formed exchange: refused.
    fake = Impostor("127.0.0.1", [SCRAM_OFFER, _server_first(4096), _auth(12, b"v=AAAA"), READY])
    impostor.append(fake)
    _expect_refused(fake.dsn(), "signature does not match")
    assert fake.logins[-1].kinds == [b"p", b"p"]  # client-first, client-final; no Query


def test_libpq_connections_get_the_same_defaults() -> None:
    assert libpq_defaults("postgresql://u@db.internal/app?sslmode=disable") == {
        "require_auth": "!password,!md5"
    }
    assert libpq_defaults("postgresql://u@db.internal/app?sslmode=prefer") == {
        "require_auth": "!password,!md5"
    }
    assert libpq_defaults("postgresql://u@db.internal/app") == {
        "sslmode": "require",
        "require_auth": "!password,!md5",
    }
    verified = "sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert libpq_defaults(f"postgresql://u@db.internal/app?{verified}") == {}
    assert libpq_defaults("postgresql://u@127.0.0.1/app") == {"sslmode": "prefer"}
    assert (
        libpq_defaults("postgresql://u@db.internal/app?sslmode=disable&require_auth=password") == {}
    )
    assert libpq_defaults("host=/run/postgresql dbname=app sslmode=disable") == {}
    assert (
        connect_kwargs("postgresql://u@db.internal/app?sslmode=allow")["require_auth"]
        == "!password,!md5"
    )
    for query, problem in [
        ("require_auth=md5,!password", "cannot mix"),
        ("require_auth=kerberos", "require_auth takes"),
        ("require_auth=md5, password", "require_auth takes"),
        ("require_auth=md5,md5", "names a method twice"),
        ("require_auth=gss", "allows none of the methods"),
        ("require_auth=", None),
    ]:
        dsn = f"postgresql://u@db.internal/app?{query}"
        if problem is None:
            assert UpstreamTarget.from_dsn(dsn).auth_methods is None  # empty: as absent
        else:
            with pytest.raises(ValueError, match=problem):
                UpstreamTarget.from_dsn(dsn)
    negated = UpstreamTarget.from_dsn("postgresql://u@db.internal/app?require_auth=!password,!gss")
    assert negated.auth_methods == {"md5", "scram-sha-256", "none"}
