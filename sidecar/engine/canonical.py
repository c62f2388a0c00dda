"""Canonical JSON bytes and bundle revisions, shared by the compiler and the sidecar.

The control plane signs, and the sidecar verifies, the canonical bytes of a
bundle: JSON with keys sorted, separators ``,``/``:``, UTF-8 (no ASCII
escaping) and no NaN/Infinity. The revision is the SHA-256 of the canonical
bytes of the bundle with its own ``revision`` key removed, so it names the
content and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_bytes(obj: Any) -> bytes:
    """Serialise ``obj`` canonically; raises ValueError for NaN/Infinity."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def compute_revision(bundle: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical bytes of ``bundle`` without its ``revision`` key."""
    content = {key: value for key, value in bundle.items() if key != "revision"}
    return hashlib.sha256(canonical_bytes(content)).hexdigest()
