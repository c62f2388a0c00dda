"""SCRAM-SHA-256 (RFC 5802/7677) for both sides of the sidecar, plus MD5.

The sidecar is a SCRAM *server* towards clients, checking proofs against the
PostgreSQL-format verifiers the bundle carries (so a token never crosses the
wire), and a SCRAM *client* towards the upstream database with its own
credential. Channel binding (``-PLUS``) cannot survive TLS termination, so the
server side advertises and accepts only plain ``SCRAM-SHA-256``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass


class ScramError(Exception):
    """The exchange is malformed or the proof is wrong."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """A parsed ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` string."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> Verifier:
        try:
            scheme, params, keys = text.split("$")
            iterations_s, salt_b64 = params.split(":")
            stored_b64, server_b64 = keys.split(":")
            if scheme != "SCRAM-SHA-256":
                raise ValueError(scheme)
            verifier = cls(
                iterations=int(iterations_s),
                salt=base64.b64decode(salt_b64, validate=True),
                stored_key=base64.b64decode(stored_b64, validate=True),
                server_key=base64.b64decode(server_b64, validate=True),
            )
        except ValueError as exc:
            raise ScramError("not a SCRAM-SHA-256 verifier") from exc
        if verifier.iterations < 1 or len(verifier.stored_key) != 32:
            raise ScramError("not a SCRAM-SHA-256 verifier")
        return verifier

    def matches_password(self, password: str) -> bool:
        """True when ``password`` derives this verifier (cleartext auth over TLS)."""
        stored = stored_key(password, self.salt, self.iterations)
        return hmac.compare_digest(stored, self.stored_key)


def stored_key(password: str, salt: bytes, iterations: int) -> bytes:
    """The StoredKey ``password`` derives with this salt and count."""
    salted = _salted_password(password, salt, iterations)
    return hashlib.sha256(_hmac(salted, b"Client Key")).digest()


def make_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """PostgreSQL's verifier for ``password`` (what ``ALTER ROLE ... PASSWORD`` stores)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = _salted_password(password, salt, iterations)
    stored = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server = _hmac(salted, b"Server Key")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored).decode()}:{b64(server).decode()}"
    )


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # PostgreSQL applies SASLprep, which leaves ASCII unchanged; access tokens are
    # ASCII, and a non-ASCII password simply fails to match.
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


# PostgreSQL's default is 4,096. The count is the server's to choose, and the
# derivation runs on the event loop, so an impostor asking for billions would stall
# every session; a million (about half a second here) is far above any real setting.
MAX_UPSTREAM_ITERATIONS = 1_000_000


@functools.lru_cache(maxsize=4)
def _upstream_salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    """The sidecar's own password salted as its database asks: the same salt and count
    at every login, so derived once rather than once per session (never used for
    clients' tokens, whose guesses must not be kept)."""
    return _salted_password(password, salt, iterations)


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError("malformed SCRAM attribute")
        out[part[0]] = part[2:]
    return out


class ScramServer:
    """One server-side exchange against a set of candidate verifiers.

    All candidates must share salt and iteration count (the first message can
    only name one); the caller groups them. A proof is accepted if it matches any.
    """

    def __init__(self, verifiers: list[Verifier], *, salt: bytes, iterations: int) -> None:
        self._verifiers = verifiers
        self._salt = salt
        self._iterations = iterations
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._gs2 = ""
        self.matched: Verifier | None = None  # the verifier the proof matched

    def first(self, client_first: bytes) -> bytes:
        try:
            text = client_first.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ScramError("client-first-message is not ASCII") from exc
        # gs2 header: "n,," (no binding) or "y,," (client could bind, we do not offer).
        if text.startswith("p="):
            raise ScramError("channel binding is not supported by this server")
        if not (text.startswith("n,") or text.startswith("y,")):
            raise ScramError("malformed gs2 header")
        flag, authzid, bare = text.split(",", 2)
        if authzid:
            raise ScramError("authorization identities are not supported")
        self._gs2 = f"{flag},,"
        attrs = _attributes(bare)
        client_nonce = attrs.get("r", "")
        if not client_nonce:
            raise ScramError("client nonce missing")
        self._client_first_bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        salt_b64 = base64.b64encode(self._salt).decode()
        self._server_first = f"r={self._nonce},s={salt_b64},i={self._iterations}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """Check the proof; return server-final-message or raise ScramError."""
        try:
            text = client_final.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ScramError("client-final-message is not ASCII") from exc
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("proof missing")
        attrs = _attributes(without_proof)
        if attrs.get("c") != base64.b64encode(self._gs2.encode()).decode():
            raise ScramError("channel binding data mismatch")
        if attrs.get("r") != self._nonce:
            raise ScramError("nonce mismatch")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError as exc:
            raise ScramError("malformed proof") from exc
        if len(proof) != 32:
            raise ScramError("malformed proof")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        for verifier in self._verifiers:
            signature = _hmac(verifier.stored_key, auth_message)
            client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
            if hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key):
                self.matched = verifier
                server_signature = _hmac(verifier.server_key, auth_message)
                return b"v=" + base64.b64encode(server_signature)
        raise ScramError("password authentication failed")


class ScramClient:
    """Client side of SCRAM-SHA-256, used to log in to the upstream database."""

    def __init__(self, password: str) -> None:
        self._password = password
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = f"n=,r={self._nonce}"
        self._auth_message = b""
        self._server_key = b""
        # Set once the server's signature checked out: only then has the server
        # shown it holds the verifier, and only then may the login succeed.
        self.verified = False

    def first(self) -> bytes:
        return f"n,,{self._client_first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode("ascii")
            attrs = _attributes(text)
            nonce, iterations = attrs["r"], int(attrs["i"])
            salt = base64.b64decode(attrs["s"], validate=True)
        except (UnicodeDecodeError, KeyError, ValueError) as exc:
            raise ScramError("malformed server-first-message") from exc
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("server nonce does not extend ours")
        if not 1 <= iterations <= MAX_UPSTREAM_ITERATIONS:
            raise ScramError(f"server asks for {iterations} SCRAM iterations")
        salted = _upstream_salted_password(self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        self._auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_key = _hmac(salted, b"Server Key")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        expected = b"v=" + base64.b64encode(_hmac(self._server_key, self._auth_message))
        if not self._auth_message or not hmac.compare_digest(server_final.strip(), expected):
            raise ScramError("upstream server signature does not match")
        self.verified = True


def md5_password(password: str, user: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode()
