"""Governance services, one module per aggregate, re-exported so callers import from here.

- ``identities``: roles, teams, identities, access and API tokens, SSO users.
- ``accounts``: which sign-in account is which human identity (links).
- ``datasources``: datasources, scans, detectors and what a scan finds.
- ``policy``: classifications, masking rules, guardrails, break-glass grants.
- ``sidecars``: sidecar registration, tokens, heartbeats and schema reports.
- ``history``: save-and-record helpers the others share.

A service records history (``audit.services.change_record_create``) and, when the
change can reach a sidecar, queues a recompile (``governance.bundles.bundles_mark_stale``):
two calls, each named for what it does.
"""

from __future__ import annotations

from governance.services.accounts import (
    identity_link_by_verified_email,
    identity_link_user,
    identity_unlink_user,
)
from governance.services.datasources import (
    custom_detector_create,
    custom_detector_delete,
    custom_detector_update,
    datasource_create,
    datasource_delete,
    datasource_update,
    environment_update,
    scan_pending,
    scan_request,
    scan_requested_for,
    scan_schedule_for,
    scan_schedule_update,
    scans_request_due,
    sidecar_schema_report,
)
from governance.services.identities import (
    access_tokens_used,
    api_token_issue,
    api_token_revoke,
    identities_expire,
    identity_create,
    identity_delete,
    identity_update,
    membership_set_role,
    sso_user_sync,
    team_create,
    team_delete,
    team_update,
    token_issue,
    token_revoke,
)
from governance.services.policy import (
    break_glass_approve,
    break_glass_create,
    break_glass_deny,
    break_glass_expire,
    break_glass_revoke,
    classification_create,
    classification_delete,
    classification_update,
    column_classification_delete,
    column_classification_reclassify,
    column_classification_review,
    column_classification_set,
    column_classifications_inherit,
    guardrail_create,
    guardrail_delete,
    guardrail_move,
    guardrail_reorder,
    guardrail_set_enabled,
    guardrail_update,
    masking_rule_create,
    masking_rule_delete,
    masking_rule_update,
    next_guardrail_position,
)
from governance.services.sidecars import (
    sidecar_heartbeat_record,
    sidecar_register,
    sidecar_revoke,
    sidecar_rotate_token,
)

__all__ = [
    "access_tokens_used",
    "api_token_issue",
    "api_token_revoke",
    "break_glass_approve",
    "break_glass_create",
    "break_glass_deny",
    "break_glass_expire",
    "break_glass_revoke",
    "classification_create",
    "classification_delete",
    "classification_update",
    "column_classification_delete",
    "column_classification_reclassify",
    "column_classification_review",
    "column_classification_set",
    "column_classifications_inherit",
    "custom_detector_create",
    "custom_detector_delete",
    "custom_detector_update",
    "datasource_create",
    "datasource_delete",
    "datasource_update",
    "environment_update",
    "guardrail_create",
    "guardrail_delete",
    "guardrail_move",
    "guardrail_reorder",
    "guardrail_set_enabled",
    "guardrail_update",
    "identities_expire",
    "identity_create",
    "identity_delete",
    "identity_link_by_verified_email",
    "identity_link_user",
    "identity_unlink_user",
    "identity_update",
    "masking_rule_create",
    "masking_rule_delete",
    "masking_rule_update",
    "membership_set_role",
    "next_guardrail_position",
    "scan_pending",
    "scan_request",
    "scan_requested_for",
    "scan_schedule_for",
    "scan_schedule_update",
    "scans_request_due",
    "sidecar_heartbeat_record",
    "sidecar_register",
    "sidecar_revoke",
    "sidecar_rotate_token",
    "sidecar_schema_report",
    "sso_user_sync",
    "team_create",
    "team_delete",
    "team_update",
    "token_issue",
    "token_revoke",
]
