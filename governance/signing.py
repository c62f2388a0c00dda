"""Ed25519 signing of policy bundles, with a key id and room for rotation.

The control plane signs the canonical bytes of each inner bundle with one
active private key; sidecars pin the public keys they trust and pick the one
named by the signature's ``key_id``. Several public keys can be published at
once (the active one plus those being rotated in or out), so a key changes
without a flag day. The private key comes from settings (or a ``_FILE``); only
in development is one generated and kept under ``var/``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    def public_b64(self) -> str:
        return public_key_b64(self.private.public_key())


def public_key_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _split(spec: str, what: str) -> tuple[str, bytes]:
    key_id, sep, b64 = spec.strip().partition(":")
    if not sep or not KEY_ID_RE.match(key_id):
        raise ImproperlyConfigured(f"{what} must look like '<key id>:<base64 key>'")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImproperlyConfigured(f"{what}: the key is not valid base64") from exc
    if len(raw) != 32:
        raise ImproperlyConfigured(f"{what}: an Ed25519 key is 32 bytes, got {len(raw)}")
    return key_id, raw


def signing_key_generate(key_id: str) -> str:
    """A new ``<key id>:<base64 seed>`` spec (for operators and tests)."""
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return f"{key_id}:{base64.b64encode(seed).decode()}"


def _dev_key_spec() -> str:
    path = Path(settings.WARDEN_BUNDLE_DEV_KEY_FILE)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = signing_key_generate("dev-1")
    # O_EXCL: two processes starting together must not each write their own key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(spec + "\n")
    return spec


@lru_cache(maxsize=1)
def active_signing_key() -> SigningKey:
    """The key bundles are signed with; refuses to start without one outside development."""
    spec = settings.WARDEN_BUNDLE_SIGNING_KEY
    if not spec:
        if not settings.WARDEN_BUNDLE_DEV_KEY_ALLOWED:
            raise ImproperlyConfigured(
                "WARDEN_BUNDLE_SIGNING_KEY (or _FILE) must be set: bundles cannot be signed"
            )
        spec = _dev_key_spec()
    key_id, seed = _split(spec, "WARDEN_BUNDLE_SIGNING_KEY")
    return SigningKey(key_id=key_id, private=Ed25519PrivateKey.from_private_bytes(seed))


def published_public_keys() -> dict[str, str]:
    """key id -> base64 public key: the active key and any being rotated in or out."""
    active = active_signing_key()
    keys = {active.key_id: active.public_b64()}
    for spec in settings.WARDEN_BUNDLE_PUBLIC_KEYS:
        key_id, raw = _split(spec, "WARDEN_BUNDLE_PUBLIC_KEYS")
        Ed25519PublicKey.from_public_bytes(raw)  # refuse garbage at start, not at a sidecar
        if key_id == active.key_id and base64.b64encode(raw).decode() != keys[key_id]:
            raise ImproperlyConfigured(
                f"WARDEN_BUNDLE_PUBLIC_KEYS names key {key_id!r} with a different public key "
                "than the active signing key"
            )
        keys.setdefault(key_id, base64.b64encode(raw).decode())
    return keys


def bytes_sign(payload: bytes) -> dict[str, str]:
    """The envelope's ``signature`` object for ``payload``."""
    key = active_signing_key()
    value = base64.b64encode(key.private.sign(payload)).decode()
    return {"alg": "ed25519", "key_id": key.key_id, "value": value}


def signature_verify(payload: bytes, signature: dict[str, str], public_b64: str) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``payload`` by that key."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
        key.verify(base64.b64decode(signature["value"], validate=True), payload)
    except (InvalidSignature, ValueError, KeyError, binascii.Error):
        return False
    return True
