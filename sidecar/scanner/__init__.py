"""The sidecar's classification scanner: catalog, bounded samples, detectors, findings.

``run_scan`` reads the upstream database with the sidecar's own credential and
returns a ``ScanReport`` whose ``body()`` is what ``POST /api/v1/sidecar/schema``
takes. Raw values never leave the scanner: findings carry a classification, a
confidence, the share of sampled values matched and the detector's name.
"""

from sidecar.scanner.detectors import ColumnSample, Finding, Verdict, classify, combine_confidence
from sidecar.scanner.scan import ScanError, ScanReport, ScanSettings, run_scan, scan_connection

__all__ = [
    "ColumnSample",
    "Finding",
    "ScanError",
    "ScanReport",
    "ScanSettings",
    "Verdict",
    "classify",
    "combine_confidence",
    "run_scan",
    "scan_connection",
]
