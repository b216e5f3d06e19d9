"""Allocation against hand computations from the SPEC formulas, plus properties over random inputs."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from senslora import Allocation, DominanceWarning, ModuleSensitivity, allocate_ranks, fuse_scores, fusion_weight


def module(name: str, trace: float, topk: float | None = None, eff: int = 1, d_in: int = 8, d_out: int = 8):
    return ModuleSensitivity(
        name=name,
        d_in=d_in,
        d_out=d_out,
        trace=trace,
        topk=trace if topk is None else topk,
        effective_rank=eff,
        num_entries=d_in,
    )


def sens(*items: ModuleSensitivity) -> dict[str, ModuleSensitivity]:
    return {m.name: m for m in items}


def test_fusion_weight_by_hand():
    # values 1, 2, 3: mean 2, population std sqrt(2/3)
    assert fusion_weight([1.0, 2.0, 3.0], "cv") == pytest.approx(math.sqrt(2 / 3) / 4)
    assert fusion_weight([1.0, 2.0, 3.0], "equal") == pytest.approx(0.25)
    assert fusion_weight([2.0, 2.0], "cv") == 0.0  # no spread: no information
    assert fusion_weight([0.0, 0.0], "equal") == 0.0  # zero mean


def test_theta_by_hand():
    s = sens(module("a", 1.0, 4.0, 2), module("b", 2.0, 2.0, 2), module("c", 3.0, 0.0, 5))
    theta, weights = fuse_scores(s)
    c_g = math.sqrt(2 / 3) / 2**2
    c_t = np.std([4.0, 2.0, 0.0]) / 2.0**2
    c_e = np.std([2.0, 2.0, 5.0]) / 3.0**2
    local = [c_t * 4 + c_e * 2, c_t * 2 + c_e * 2, c_t * 0 + c_e * 5]
    c_l = np.std(local) / np.mean(local) ** 2
    expected = [c_g * g + c_l * s_ for g, s_ in zip([1.0, 2.0, 3.0], local, strict=True)]
    assert [theta[n] for n in "abc"] == pytest.approx(expected)
    assert weights["c_global"] == pytest.approx(c_g)
    assert weights["c_local"] == pytest.approx(c_l)


def test_sra_by_hand_global_only():
    # theta ∝ trace 1 : 2 : 5, budget 3 * 4 = 12 -> 1.5, 3, 7.5 -> floors 1, 3, 7 (11); the one left goes to
    # the tie at remainder .5 between a and c, broken towards the more sensitive c.
    s = sens(module("a", 1.0), module("b", 2.0), module("c", 5.0))
    allocation = allocate_ranks(s, avg_rank=4, metrics=("global",), min_rank=0)
    assert allocation.ranks == {"a": 1, "b": 3, "c": 8}
    assert allocation.budget == allocation.budget_used == 12


def test_sra_tie_breaks_by_name():
    s = sens(module("b", 1.0), module("a", 1.0), module("c", 1.0), module("d", 3.0))
    # theta 1, 1, 1, 3 over 6 times the budget 10: 5/3 each for a, b, c and 5 for d
    allocation = allocate_ranks(s, avg_rank=2.5, metrics=("global",), min_rank=0)
    assert allocation.budget == 10
    # 1.667 x3 -> floors 1,1,1 and d = 5 -> 8 used, 2 left to the two first names among equal remainders
    assert allocation.ranks == {"a": 2, "b": 2, "c": 1, "d": 5}


def test_pra_paper_example():
    s = sens(*(module(f"m{i}", float(t)) for i, t in enumerate([6, 1, 5, 2, 4, 3])))
    allocation = allocate_ranks(s, avg_rank=5, scheme="pra", num_groups=3, metrics=("global",))
    by_sensitivity = sorted(allocation.ranks, key=lambda n: -s[n].trace)
    assert [allocation.ranks[n] for n in by_sensitivity] == [6, 6, 5, 5, 4, 4]
    assert allocation.budget_used == 30


def test_max_rank_excess_is_respread():
    s = sens(module("a", 1.0), module("b", 1.0), module("c", 10.0))
    allocation = allocate_ranks(s, avg_rank=4, max_rank=6, metrics=("global",))
    assert allocation.ranks == {"a": 3, "b": 3, "c": 6}


def test_min_rank_is_respected_and_budget_met():
    s = sens(module("a", 0.001), module("b", 1.0), module("c", 100.0))
    allocation = allocate_ranks(s, avg_rank=4, min_rank=2, metrics=("global",))
    assert allocation.ranks["a"] == 2
    assert sum(allocation.ranks.values()) == 12


def test_min_rank_zero_leaves_modules_out():
    s = sens(module("a", 0.0), module("b", 1.0), module("c", 3.0))
    allocation = allocate_ranks(s, avg_rank=2, min_rank=0, metrics=("global",))
    # 0, 1.5, 4.5 -> floors 0, 1, 4; the one rank left goes to the tie at .5 with the larger theta: c
    assert allocation.ranks == {"a": 0, "b": 1, "c": 5}
    assert sum(allocation.ranks.values()) == 6


def test_max_rank_factor_caps_exactly():
    s = sens(*(module(f"m{i}", 1.0) for i in range(7)), module("big", 1000.0))
    allocation = allocate_ranks(s, avg_rank=4, max_rank_factor=2.0, metrics=("global",))
    assert allocation.max_rank == 8
    assert allocation.ranks["big"] == 8
    assert max(allocation.ranks.values()) <= 8
    assert sum(allocation.ranks.values()) == 32


def test_params_unit_budget():
    s = sens(module("a", 1.0, d_in=4, d_out=4), module("b", 2.0, d_in=4, d_out=12), module("c", 3.0, d_in=8, d_out=8))
    allocation = allocate_ranks(s, avg_rank=4, budget_unit="params", metrics=("global",))
    costs = {"a": 8, "b": 16, "c": 16}
    assert allocation.budget == 4 * (8 + 16 + 16)
    used = sum(allocation.ranks[n] * costs[n] for n in costs)
    assert used == allocation.budget_used == allocation.param_count
    assert used <= allocation.budget
    assert allocation.budget - used < max(costs.values())


def test_degenerate_inputs_give_uniform():
    equal = sens(*(module(f"m{i}", 2.0) for i in range(4)))
    assert set(allocate_ranks(equal, avg_rank=3).ranks.values()) == {3}
    zero = sens(*(module(f"m{i}", 0.0, eff=0) for i in range(4)))
    allocation = allocate_ranks(zero, avg_rank=3)
    assert allocation.uniform_fallback and set(allocation.ranks.values()) == {3}
    single = allocate_ranks(sens(module("only", 5.0)), avg_rank=6)
    assert single.ranks == {"only": 6}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"avg_rank": 0}, "avg_rank"),
        ({"avg_rank": -1}, "avg_rank"),
        ({"avg_rank": 4, "min_rank": 3, "max_rank": 2}, "max_rank"),
        ({"avg_rank": 1, "min_rank": 2}, "too small"),
        ({"avg_rank": 8, "max_rank": 4}, "cannot be spent"),
        ({"avg_rank": 4, "scheme": "magic"}, "unknown scheme"),
        ({"avg_rank": 4, "budget_unit": "bytes"}, "unknown budget unit"),
        ({"avg_rank": 4, "weighting": "max"}, "unknown weighting"),
        ({"avg_rank": 4, "metrics": ("nope",)}, "metrics"),
    ],
)
def test_bad_options(kwargs, message):
    s = sens(module("a", 1.0), module("b", 2.0))
    with pytest.raises(ValueError, match=message):
        allocate_ranks(s, **kwargs)


def test_nan_metric_names_the_module():
    bad = ModuleSensitivity("broken.layer", 4, 4, float("nan"), 1.0, 1, 4)
    with pytest.raises(ValueError, match="broken.layer"):
        allocate_ranks(sens(module("a", 1.0), bad), avg_rank=2)
    with pytest.raises(ValueError, match="no module"):
        allocate_ranks({}, avg_rank=2)


def test_json_round_trip():
    s = sens(module("a", 1.0), module("b", 2.0, d_in=4, d_out=16), module("c", 5.0))
    allocation = allocate_ranks(s, avg_rank=4, max_rank=7)
    assert Allocation.from_json(allocation.to_json()) == allocation
    with pytest.raises(ValueError, match="not a senslora ranks file"):
        Allocation.from_json('{"format": "other"}')


def test_dominance_warning():
    dominated = sens(*(module(f"m{i}", 1.0) for i in range(10)), module("pooler", 500.0))
    with pytest.warns(DominanceWarning, match="pooler"):
        allocate_ranks(dominated, avg_rank=4, metrics=("global",))
    balanced = sens(*(module(f"m{i}", 1.0 + i / 10) for i in range(11)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DominanceWarning)
        allocate_ranks(balanced, avg_rank=4, metrics=("global",))


# ---- properties over random inputs -------------------------------------------------------------------

metric_values = st.one_of(st.just(0.0), st.floats(min_value=1e-8, max_value=1e8))


@st.composite
def random_sensitivities(draw):
    count = draw(st.integers(1, 12))
    items = []
    for i in range(count):
        trace = draw(metric_values)
        items.append(
            ModuleSensitivity(
                name=f"layer.{i}.proj",
                d_in=draw(st.sampled_from([4, 8, 16])),
                d_out=draw(st.sampled_from([4, 8, 32])),
                trace=trace,
                topk=draw(metric_values),
                effective_rank=draw(st.integers(0, 16)),
                num_entries=16,
            )
        )
    return {m.name: m for m in items}


@settings(max_examples=300, deadline=None)
@given(
    random_sensitivities(),
    st.integers(1, 16),
    st.integers(0, 2),
    st.sampled_from(["sra", "pra"]),
    st.sampled_from(["cv", "equal"]),
    st.booleans(),
)
def test_allocation_properties(s, avg_rank, min_rank, scheme, weighting, capped):
    max_rank = 2 * avg_rank if capped else None
    if min_rank > avg_rank:
        with pytest.raises(ValueError, match="too small"):
            allocate_ranks(s, avg_rank=avg_rank, min_rank=min_rank, scheme=scheme, weighting=weighting)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DominanceWarning)
        allocation = allocate_ranks(
            s, avg_rank=avg_rank, min_rank=min_rank, max_rank=max_rank, scheme=scheme, weighting=weighting
        )
        shuffled = dict(random.Random(1).sample(list(s.items()), len(s)))
        again = allocate_ranks(
            shuffled, avg_rank=avg_rank, min_rank=min_rank, max_rank=max_rank, scheme=scheme, weighting=weighting
        )
    ranks = allocation.ranks
    assert again.ranks == ranks  # deterministic and independent of input order
    assert sum(ranks.values()) == avg_rank * len(s)  # budget met exactly
    assert all(min_rank <= r <= (max_rank or r) for r in ranks.values())
    theta = allocation.theta if not allocation.uniform_fallback else dict.fromkeys(ranks, 1.0)
    for a in ranks:
        for b in ranks:
            if theta[a] > theta[b] * (1 + 1e-9):
                assert ranks[a] >= ranks[b], (a, b)
