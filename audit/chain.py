"""Moved to ``audit.sink.chain``; this path stays for the callers that import it."""

from audit.sink.chain import (
    CHAINED_FIELDS,
    GENESIS,
    canonical_doc,
    canonical_event,
    chain_hash,
    from_micros,
    micros,
)

__all__ = [
    "CHAINED_FIELDS",
    "GENESIS",
    "canonical_doc",
    "canonical_event",
    "chain_hash",
    "from_micros",
    "micros",
]
