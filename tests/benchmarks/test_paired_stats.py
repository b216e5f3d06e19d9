"""The paired statistics against intervals and corrections computed by hand."""

from __future__ import annotations

import math

import pytest


@pytest.fixture(scope="module")
def ps(benchmark_module):
    return benchmark_module("paired_stats")


def test_interval_of_one_two_three_matches_the_hand_computation(ps):
    # mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302653 (tables): half-width 2.484138
    result = ps.paired([1.0, 2.0, 3.0])
    assert result.n == 3 and result.wins == 3 and result.mean == pytest.approx(2.0)
    assert result.low == pytest.approx(2 - 2.484138, abs=1e-5) and result.high == pytest.approx(2 + 2.484138, abs=1e-5)
    # t = 2 / (1 / sqrt 3) = 3.4641 on 2 df: two-sided p = 1 - t/sqrt(t^2 + 2) (the closed form for 2 df)
    t = 2 * math.sqrt(3)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)


def test_interval_with_five_seeds_and_mixed_signs(ps):
    # d = -1, 0, 1, 2, 3: mean 1, sd sqrt(2.5); t_{0.975, 4} = 2.776445
    result = ps.paired([-1, 0, 1, 2, 3])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert result.wins == 3
    assert (result.low, result.high) == (pytest.approx(1 - half, abs=1e-5), pytest.approx(1 + half, abs=1e-5))


def test_holm_steps_down_and_keeps_the_order_given(ps):
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06
    assert ps.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ps.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_verdicts_follow_the_adjusted_p_value_and_the_sign(ps):
    ahead, behind = ps.paired([1.0, 1.1, 0.9, 1.05]), ps.paired([-1.0, -1.1, -0.9, -1.05])
    assert ps.verdict(ahead, 0.01) == "ahead" and ps.verdict(behind, 0.01) == "behind"
    assert ps.verdict(ahead, 0.2) == "level"


def test_one_seed_is_refused_and_identical_differences_have_no_spread(ps):
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ps.paired([0.1])
    same = ps.paired([0.0, 0.0, 0.0])
    assert same.p_value == 1.0 and ps.verdict(same, 1.0) == "level"
