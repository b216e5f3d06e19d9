"""Property-based: trace, top-k mean and effective rank on extreme, zero and tied diagonals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senslora.core.metrics import effective_rank_metric, topk_metric, trace_metric

diagonals = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-300, max_value=1e300), st.sampled_from([1e-300, 1.0, 1e300])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(diagonals, st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_metrics_hold_for_extreme_zero_and_tied_diagonals(values, fraction, alpha):
    """Against sorted() and math.fsum on exactly the same numbers: finite results, the definitions hold."""
    import math

    ordered = sorted(values, reverse=True)
    k = min(len(values), max(1, math.floor(len(values) * fraction)))
    total = math.fsum(ordered)
    if math.isinf(total):
        return  # the sum itself exceeds the float range: no finite trace exists
    assert trace_metric(values) == pytest.approx(total, rel=1e-12)
    assert topk_metric(values, fraction) == pytest.approx(math.fsum(ordered[:k]) / k, rel=1e-12)
    count = effective_rank_metric(values, alpha)
    if total == 0:
        assert count == 0
        return
    assert 1 <= count <= len(values)
    assert math.fsum(ordered[:count]) >= alpha * total * (1 - 1e-9)
    assert count == 1 or math.fsum(ordered[: count - 1]) < alpha * total * (1 + 1e-9)
    # Ties: the metrics do not depend on the order of equal (or any) entries.
    assert effective_rank_metric(values[::-1], alpha) == count
