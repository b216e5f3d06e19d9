"""Metrics on hand-made diagonals: trace, top-k mean, effective rank."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from senslora import ModuleSensitivity, effective_rank_metric, topk_metric, trace_metric
from senslora.core.metrics import sensitivities_from_json, sensitivities_to_json, topk_count


def test_trace_is_the_sum():
    assert trace_metric([3.0, 1.0, 2.0]) == 6.0


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([4.0, 1.0, 3.0, 2.0], 0.5, (4.0 + 3.0) / 2),  # k = 2
        ([4.0, 1.0, 3.0, 2.0, 5.0], 0.5, (5.0 + 4.0) / 2),  # k = floor(2.5) = 2
        ([4.0, 1.0, 3.0], 1 / 3, 4.0),  # k = 1
        ([7.0], 0.5, 7.0),  # single entry: k = max(1, 0) = 1
        ([2.0, 2.0, 2.0, 2.0], 0.5, 2.0),  # ties
        ([0.0, 0.0, 9.0], 0.1, 9.0),  # k = max(1, floor(0.3)) = 1
    ],
)
def test_topk_mean(values, fraction, expected):
    assert topk_metric(values, fraction) == pytest.approx(expected)


def test_topk_count():
    assert topk_count(10, 0.5) == 5
    assert topk_count(3, 0.5) == 1
    assert topk_count(1, 0.5) == 1
    assert topk_count(9, 1 / 3) == 3
    with pytest.raises(ValueError, match="topk_fraction"):
        topk_count(4, 0.0)


@pytest.mark.parametrize(
    ("values", "alpha", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0], 0.75, 3),  # exactly 3/4 reaches 0.75
        ([1.0, 1.0, 1.0, 1.0], 0.76, 4),
        ([10.0, 1.0, 1.0], 0.8, 1),  # 10/12 = 0.833
        ([10.0, 1.0, 1.0], 0.85, 2),  # 11/12 = 0.917
        ([0.0, 5.0, 0.0], 0.85, 1),  # zeros do not count
        ([3.0], 0.85, 1),  # single entry
        ([0.0, 0.0], 0.85, 0),  # no energy at all
        ([2.0, 2.0, 1.0], 0.8, 2),  # (2 + 2) / 5 = 0.8 reaches 0.8, with ties
        ([2.0, 2.0, 1.0], 0.81, 3),
    ],
)
def test_effective_rank(values, alpha, expected):
    assert effective_rank_metric(values, alpha) == expected


def test_nan_and_empty_rejected():
    with pytest.raises(ValueError, match="NaN"):
        trace_metric([1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        topk_metric([], 0.5)
    with pytest.raises(ValueError, match="'m.x'"):
        ModuleSensitivity.from_diagonal("m.x", [1.0, float("inf")], d_in=2, d_out=1)


# Subnormal values are left out: with no relative precision (5e-324 * 2 * 0.625 rounds to 5e-324) no
# relative tolerance can hold for them, and a sensitivity that small is zero for every purpose.
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e6, allow_subnormal=False), min_size=1, max_size=50),
    st.floats(0.05, 1.0),
)
def test_effective_rank_is_the_smallest_count(values, alpha):
    k = effective_rank_metric(values, alpha)
    ordered = sorted(values, reverse=True)
    total = sum(ordered)
    if total == 0:
        assert k == 0
        return
    assert 1 <= k <= len(values)
    assert sum(ordered[:k]) >= alpha * total * (1 - 1e-9)
    if k > 1:
        assert sum(ordered[: k - 1]) < alpha * total * (1 + 1e-9)


@pytest.mark.parametrize(
    ("values", "trace", "topk", "effective_rank", "clamped"),
    [
        # sum 2.0; clamped and sorted 3, 0.5, 0, 0: top-2 mean 1.75, 3 / 3.5 = 0.857 >= 0.85 at k = 1
        ([-1.0, 3.0, 0.5, -0.5], 2.0, 1.75, 1, 0.5),
        # sum -1.0 is clamped to 0; clamped entries 1, 0: top-1 mean 1.0, effective rank 1
        ([-2.0, 1.0], 0.0, 1.0, 1, 0.5),
        # nothing positive: every metric is 0
        ([-1.0, -3.0], 0.0, 0.0, 0, 1.0),
        # sum 1.5 (not 2.5 as with clamped entries); clamped 1, 1, 0.5, 0: (1 + 1) / 2.5 = 0.8 < 0.85 at k = 2
        ([1.0, 1.0, 0.5, -1.0], 1.5, 1.0, 3, 0.25),
    ],
)
def test_negative_entries_count_in_the_trace_but_not_in_the_local_metrics(values, trace, topk, effective_rank, clamped):
    item = ModuleSensitivity.from_diagonal("m", values, d_in=len(values), d_out=1)
    assert item.trace == pytest.approx(trace)
    assert item.topk == pytest.approx(topk)
    assert item.effective_rank == effective_rank
    assert item.clamped_fraction == pytest.approx(clamped)
    assert trace_metric(values) == pytest.approx(trace)
    assert topk_metric(values) == pytest.approx(topk)
    assert effective_rank_metric(values) == effective_rank


def test_module_sensitivity_json_round_trip():
    diagonal = np.array([0.5, 2.0, 1.0, 0.25])
    item = ModuleSensitivity.from_diagonal("a.b", diagonal, d_in=4, d_out=3)
    assert (item.trace, item.topk, item.effective_rank, item.num_entries) == (3.75, 1.5, 3, 4)
    assert item.clamped_fraction == 0.0
    text = sensitivities_to_json({"a.b": item}, {"estimator": "activation"})
    loaded, metadata = sensitivities_from_json(text)
    assert loaded == {"a.b": item}
    assert metadata == {"estimator": "activation"}
    assert json.loads(text)["modules"][0]["name"] == "a.b"


def test_sensitivity_file_rejects_other_formats():
    with pytest.raises(ValueError, match="not a senslora sensitivity file"):
        sensitivities_from_json('{"modules": []}')
    with pytest.raises(ValueError, match="not valid JSON"):
        sensitivities_from_json("{")


@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=40),
    st.floats(0.05, 1.0),
    st.floats(0.05, 1.0),
)
def test_from_diagonal_against_plain_python(values, fraction, alpha):
    """Each metric recomputed from its definition with plain Python lists (no code shared with senslora)."""
    item = ModuleSensitivity.from_diagonal(
        "m", values, d_in=len(values), d_out=1, topk_fraction=fraction, energy_threshold=alpha
    )
    clamped = sorted((max(0.0, v) for v in values), reverse=True)
    k = max(1, int(len(values) * fraction))
    assert item.trace == pytest.approx(max(0.0, math.fsum(values)), rel=1e-9, abs=1e-6)
    assert item.topk == pytest.approx(math.fsum(clamped[:k]) / k)
    assert item.clamped_fraction == sum(v < 0 for v in values) / len(values)
    assert item.num_entries == len(values)
    total = math.fsum(clamped)
    if total == 0:
        assert item.effective_rank == 0
        return
    reached = [math.fsum(clamped[: j + 1]) >= alpha * total for j in range(len(clamped))]
    first = reached.index(True) + 1
    # the implementation allows 1e-12 of slack at exact ratios: it may stop earlier within it, never later
    assert 1 <= item.effective_rank <= first
    assert math.fsum(clamped[: item.effective_rank]) >= alpha * total * (1 - 1e-9)
