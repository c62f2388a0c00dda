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


@pytest.mark.skipif(Histogram is PythonHistogram, reason="the native relay is not built")
@given(st.lists(LATENCIES, max_size=50))
def test_the_native_histogram_counts_as_python_s_does(latencies: list[float]) -> None:
    native, python = Histogram(LATENCY_BUCKETS), PythonHistogram(LATENCY_BUCKETS)
    for seconds in latencies:
        native.observe(seconds)
        python.observe(seconds)
    assert native.snapshot() == python.snapshot()


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


@pytest.mark.parametrize("kind", [Histogram, PythonHistogram])
@pytest.mark.parametrize(
    "bounds",
    [(0.2, 0.1), (0.1, 0.1), (math.nan,), tuple(float(n) for n in range(33)), ("x",), ("0.1",)],
)
def test_both_histograms_refuse_bounds_they_cannot_keep(
    kind: type, bounds: tuple[object, ...]
) -> None:
    with pytest.raises((ValueError, TypeError)):
        kind(bounds)


@pytest.mark.parametrize("kind", [Histogram, PythonHistogram])
def test_a_bound_that_changes_the_bounds_while_read_changes_nothing_read(kind: type) -> None:
    bounds: list[object] = []

    class Shrinking:
        def __float__(self) -> float:
            bounds.clear()  # what a list handed over could do while it is read
            return 0.7

    bounds.extend([0.5, Shrinking(), 0.9])
    histogram = kind(bounds)
    histogram.observe(0.8)
    assert histogram.snapshot()[0] == (0, 0, 1, 0)
