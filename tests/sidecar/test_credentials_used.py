"""What a heartbeat reports of sign-ins: each credential's latest, once acknowledged
never again until it signs in anew, and at most a bounded number at a time."""

from __future__ import annotations

from sidecar.metrics import CredentialUseReport, Metrics


def test_only_sign_ins_the_control_plane_has_not_acknowledged_are_sent() -> None:
    metrics = Metrics()
    report = CredentialUseReport(limit=2)
    metrics.credential_used("tok-1", at=100.0)
    metrics.credential_used("tok-2", at=300.0)
    metrics.credential_used("tok-3", at=200.0)
    first = report.pending(metrics.credentials_used)
    assert first == {"tok-2": 300.0, "tok-3": 200.0}  # the newest first, at most 2
    report.acknowledged(first, metrics.credentials_used)
    assert report.pending(metrics.credentials_used) == {"tok-1": 100.0}
    # A heartbeat that failed is not acknowledged: the same sign-ins go again.
    assert report.pending(metrics.credentials_used) == {"tok-1": 100.0}
    report.acknowledged({"tok-1": 100.0}, metrics.credentials_used)
    assert report.pending(metrics.credentials_used) == {}
    metrics.credential_used("tok-2", at=400.0)
    assert report.pending(metrics.credentials_used) == {"tok-2": 400.0}
