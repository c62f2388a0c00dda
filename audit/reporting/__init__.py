"""The audit app's read side: the explorer's selectors, reports, exports, evidence packs.

May read governance and approvals (names, roles, bundles, approval requests);
nothing outside audit imports it but through ``audit.selectors`` and friends,
kept for the callers that import those paths.
"""
