"""The decision-latency histogram: the native relay's and Python's count alike."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.metrics import LATENCY_BUCKETS, Histogram, Metrics, PythonHistogram

LATENCIES = st.one_of(
    st.sampled_from([*LATENCY_BUCKETS, 0.0, -1.0, math.inf]),  # on a bound: that bucket
    st.floats(min_value=-1.0, max_value=10.0, allow_nan=False),
)


@given(st.lists(LATENCIES, max_size=50))
def test_the_native_histogram_counts_as_python_s_does(latencies: list[float]) -> None:
    native, python = Histogram(LATENCY_BUCKETS), PythonHistogram(LATENCY_BUCKETS)
    for seconds in latencies:
        native.observe(seconds)
        python.observe(seconds)
    assert native.snapshot() == python.snapshot()


@pytest.mark.skipif(Histogram is PythonHistogram, reason="the native relay is not built")
@pytest.mark.parametrize("bounds", [(0.2, 0.1), tuple(float(n) for n in range(33)), ("x",)])
def test_the_native_histogram_refuses_bounds_it_cannot_keep(bounds: tuple[object, ...]) -> None:
    with pytest.raises((ValueError, TypeError)):
        Histogram(bounds)


def test_the_exposition_shows_cumulative_buckets() -> None:
    metrics = Metrics()
    for seconds in (0.00004, 0.0002, 0.0002, 3.0):
        metrics.decisions.observe(seconds)
    lines = metrics.render().splitlines()
    assert 'warden_sidecar_decision_seconds_bucket{le="5e-05"} 1' in lines
    assert 'warden_sidecar_decision_seconds_bucket{le="0.00025"} 3' in lines
    assert 'warden_sidecar_decision_seconds_bucket{le="1.0"} 3' in lines
    assert 'warden_sidecar_decision_seconds_bucket{le="+Inf"} 4' in lines
    assert "warden_sidecar_decision_seconds_count 4" in lines
    assert "warden_sidecar_decision_seconds_sum 3.000440000" in lines
