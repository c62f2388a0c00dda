"""Configuration history's read paths, for the callers that import this path.

They are ``audit.sink.history``'s; the audit trail's page selectors moved to
``audit.reporting.selectors`` (which reads governance: governance importing it
through here would be a cycle).
"""

from audit.sink.history import change_history_for, change_list

__all__ = ["change_history_for", "change_list"]
