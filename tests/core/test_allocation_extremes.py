"""Property-based: allocation at extreme magnitudes, zeros, ties and one module."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senslora.core.allocation import DominanceWarning, allocate_ranks
from senslora.core.metrics import ModuleSensitivity


def sensitivity_set(traces, topks, ranks) -> dict[str, ModuleSensitivity]:
    return {
        f"m{i:02d}": ModuleSensitivity(f"m{i:02d}", 64, 64, float(t), float(k), int(r), 8)  # full rank 64
        for i, (t, k, r) in enumerate(zip(traces, topks, ranks, strict=True))
    }


def allocate_quietly(sensitivities, **options):
    """allocate_ranks in the paper's settings (a budget in ranks, no cap) unless told otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DominanceWarning)
        return allocate_ranks(sensitivities, **({"budget_unit": "rank", "max_rank_factor": 0} | options))


scores = st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=2, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    scores,
    st.sampled_from([1e-150, 1e-100, 1e-30, 1e-6, 1e6, 1e30, 1e100, 1e150]),
    st.integers(1, 8),
    st.sampled_from(["sra", "pra"]),
)
def test_allocation_is_scale_free_over_large_magnitudes(values, scale, avg_rank, scheme):
    """theta weighs each metric by c(S) = std/mean^2, so c(kS) kS = c(S) S: rescaling a metric changes nothing."""
    count = len(values)
    ranks = [i % 3 for i in range(count)]
    plain = allocate_quietly(sensitivity_set(values, values[::-1], ranks), avg_rank=avg_rank, scheme=scheme)
    scaled = sensitivity_set([v * scale for v in values], [v * scale for v in values[::-1]], ranks)
    assert allocate_quietly(scaled, avg_rank=avg_rank, scheme=scheme).ranks == plain.ranks


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_allocation_is_scale_free_at_the_float_limits(scale):
    values = [1.0, 4.0, 9.0, 16.0, 25.0]
    ranks = [0, 1, 2, 0, 1]
    plain = allocate_quietly(sensitivity_set(values, values[::-1], ranks), avg_rank=4)
    scaled = sensitivity_set([v * scale for v in values], [v * scale for v in values[::-1]], ranks)
    assert allocate_quietly(scaled, avg_rank=4).ranks == plain.ranks


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.sampled_from([0.0, 1e-300, 5.0, 1e150]))
def test_all_equal_or_zero_metrics_give_uniform_ranks(count, avg_rank, value):
    """Ties everywhere (including all zeros): no metric is informative, so every module gets avg_rank."""
    allocation = allocate_quietly(sensitivity_set([value] * count, [value] * count, [0] * count), avg_rank=avg_rank)
    assert allocation.uniform_fallback
    assert allocation.ranks == {f"m{i:02d}": avg_rank for i in range(count)}


def test_pra_is_uniform_when_no_metric_is_informative():
    allocation = allocate_quietly(sensitivity_set([0.0, 0.0], [0.0, 0.0], [0, 0]), avg_rank=2, scheme="pra")
    assert allocation.ranks == {"m00": 2, "m01": 2}


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e300), st.integers(1, 64), st.integers(0, 2))
def test_a_single_module_takes_the_whole_budget(value, avg_rank, min_rank):
    allocation = allocate_quietly(
        sensitivity_set([value], [value], [1]), avg_rank=avg_rank, min_rank=min(min_rank, avg_rank)
    )
    assert allocation.ranks == {"m00": avg_rank} and allocation.budget_used == avg_rank


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=10), st.integers(1, 6))
def test_tied_modules_get_ranks_within_one_and_sorted_by_name(groups, avg_rank):
    """Modules with identical metrics differ by at most one rank, and the extra ranks go to the earlier names."""
    values = [float(g) for g in groups]
    allocation = allocate_quietly(sensitivity_set(values, values, [1] * len(values)), avg_rank=avg_rank)
    assert sum(allocation.ranks.values()) == avg_rank * len(values)
    for value in set(values):
        tied = [allocation.ranks[f"m{i:02d}"] for i, v in enumerate(values) if v == value]
        assert max(tied) - min(tied) <= 1
        assert tied == sorted(tied, reverse=True)
