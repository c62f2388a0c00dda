"""Warden's policy engine: pure, deterministic, no Django and no I/O.

Give it a bundle, an identity and the text a client sent; it decides allow,
review or block, explains why, scores the risk, and produces the statement to
send upstream with classified columns masked by rewrite. Public API::

    bundle = load_bundle(data)          # raises BundleError
    engine = Engine(bundle)
    decision = engine.decide(identity="alice", sql="SELECT ...",
                             session=SessionContext(), protocol="simple")
    decision.to_json()

See ``docs/bundle-format.md`` for the bundle format and the Decision JSON.
"""

from sidecar.engine.bundle import Bundle, BundleError, bundle_schema, load_bundle
from sidecar.engine.canonical import canonical_bytes, compute_revision
from sidecar.engine.decision import Decision, Reason, SessionContext, StatementAnalysis
from sidecar.engine.engine import Engine

__all__ = [
    "Bundle",
    "BundleError",
    "Decision",
    "Engine",
    "Reason",
    "SessionContext",
    "StatementAnalysis",
    "bundle_schema",
    "canonical_bytes",
    "compute_revision",
    "load_bundle",
]
