"""The sidecar's PostgreSQL wire-protocol proxy (protocol 3.0).

Clients log in as a Warden identity (SCRAM-SHA-256 against the bundle's
verifiers; cleartext only over TLS when enabled), the sidecar logs in to the
upstream with its own credential, and every statement (simple Query, Parse,
FunctionCall) is decided by the policy before the database sees it.

Refusals reach the client as an ErrorResponse and the session stays usable:

- SQLSTATE ``42501`` (insufficient_privilege): blocked by a rule; the message
  names the rule.
- SQLSTATE ``WR001`` (Warden class WR): the statement needs approval.
- SQLSTATE ``08P01`` (FATAL, connection closed): the client broke the protocol
  (garbage, absurd lengths, truncated messages).
- SQLSTATE ``08006`` (FATAL): the upstream connection was lost.
"""
