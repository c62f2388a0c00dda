"""The part of the audit app other apps write to: history, the trail, its intake.

``history`` (configuration changes), ``trail`` (the chain's write path and the
control plane's own events), ``intake`` (sidecar batches, checked against the
contract in ``sidecar/events.py``), ``chain`` (the hash), ``verify`` and
``retention``. It imports no other app (tests/audit/test_layers.py checks):
what it needs of governance is passed in, or looked up through ``lookups``.
"""
