"""Every type of audit event, with the words the pages use for it.

Two sources, one list: what a sidecar may send is the event contract's
(``sidecar.events.EVENT_TYPES``); what the control plane records is declared
here, and ``audit_control_event`` refuses a type that is not, so this list
cannot fall behind the code that writes the trail. The explorer's event filter
adds the types actually stored (``audit.reporting.selectors.audit_event_types``),
so a type from an older release still shows.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.events import EVENT_TYPES as SIDECAR_EVENT_TYPES

# Sidecar events, from the contract; the label is the explorer's.
SIDECAR_LABELS: Mapping[str, str] = {
    "statement": "Statement",
    "session_start": "Database session started",
    "session_end": "Database session ended",
    "login_failed": "Database sign-in failed",
    "login_throttled": "Database sign-in throttled",
}

# Control-plane decisions, by the dotted name ``audit_control_event`` stores.
CONTROL_LABELS: Mapping[str, str] = {
    "policy.change": "Policy changed",
    "auth.sign_in": "Signed in",
    "auth.sign_in_failed": "Sign-in failed",
    "identity.linked": "Sign-in account linked",
    "identity.unlinked": "Sign-in account unlinked",
    "token.issued": "Token issued",
    "token.revoked": "Token revoked",
    "sidecar.registered": "Sidecar registered",
    "sidecar.token_rotated": "Sidecar token rotated",
    "sidecar.revoked": "Sidecar revoked",
    "break_glass.created": "Break-glass grant requested",
    "break_glass.approved": "Break-glass grant approved",
    "break_glass.denied": "Break-glass grant denied",
    "break_glass.revoked": "Break-glass grant revoked",
    "break_glass.expired": "Break-glass grant expired",
    "approval.pending": "Approval requested",
    "approval.reviewed": "Approval given (more needed)",
    "approval.approved": "Approval granted",
    "approval.denied": "Approval denied",
    "approval.cancelled": "Approval request cancelled",
    "approval.expired": "Approval request expired",
    "approval.escalated": "Approval request escalated",
    "approval.reminded": "Reviewers reminded",
    "approval.grant_used": "Approval grant used",
    "approval.grant_expired": "Approval grant expired",
    "approval.grant_revoked": "Approval grant revoked",
    "approval.values_purged": "Held values removed",
    "chain.anchored": "Sidecar chain anchored",
    "sidecar.unknown": "Unknown sidecar event",
}

EVENT_LABELS: Mapping[str, str] = {**SIDECAR_LABELS, **CONTROL_LABELS}


def event_label(kind: str) -> str:
    """The words for an event type; the type itself when it has none (an older one)."""
    return EVENT_LABELS.get(kind, kind)


def event_type_groups(stored: frozenset[str] = frozenset()) -> list[tuple[str, list[str]]]:
    """The event types in the explorer's groups: the sidecar's, then the control
    plane's by their prefix (policy, sign-ins, approvals …), then any other
    ``stored`` type."""
    sidecar = [k for k in SIDECAR_LABELS if k in SIDECAR_EVENT_TYPES]
    sidecar += sorted(SIDECAR_EVENT_TYPES - set(sidecar))
    groups: dict[str, list[str]] = {"Sidecar": sidecar}
    names = {
        "policy": "Policy",
        "auth": "Sign-ins",
        "identity": "Identities and tokens",
        "token": "Identities and tokens",
        "approval": "Approvals",
        "break_glass": "Break-glass",
        "sidecar": "Sidecars",
        "chain": "Sidecars",
    }
    for kind in CONTROL_LABELS:
        groups.setdefault(names.get(kind.split(".", 1)[0], "Other"), []).append(kind)
    known = set(EVENT_LABELS) | SIDECAR_EVENT_TYPES
    others = sorted(stored - known)
    if others:
        groups.setdefault("Other", []).extend(others)
    return list(groups.items())
