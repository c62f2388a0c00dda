"""The sidecar's PostgreSQL wire-protocol proxy (protocol 3.0).

Clients log in as a Warden identity (SCRAM-SHA-256 against the bundle's
verifiers; cleartext only over TLS when enabled), the sidecar logs in to the
upstream with its own credential, and every statement (simple Query, Parse,
FunctionCall) is decided by the policy before the database sees it.

Refusals reach the client as an ErrorResponse and the session stays usable:

- SQLSTATE ``42501`` (insufficient_privilege): blocked by a rule; the message
  names the rule. Also a held statement whose approval request was denied:
  ``Warden: request <url> was denied by <reviewer>: <reason>``.
- SQLSTATE ``WR001`` (Warden class WR): the statement needs approval and did
  not get it while the sidecar waited (the message names the request's URL and
  its state: pending, expired or cancelled), or approval could not be requested
  at all (control plane unreachable or not configured: fail closed).
- SQLSTATE ``57014`` (query_canceled): the client cancelled a statement while
  it was waiting for approval.
- SQLSTATE ``08P01`` (FATAL, connection closed): the client broke the protocol
  (garbage, absurd lengths, truncated messages).
- SQLSTATE ``08006`` (FATAL): the upstream connection was lost.
"""
