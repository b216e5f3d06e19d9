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


# The paper's settings (a budget in ranks, no cap); the defaults are the params unit and a 2x cap.
PAPER = {"budget_unit": "rank", "max_rank_factor": 0}


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
    allocation = allocate_ranks(s, avg_rank=4, metrics=("global",), min_rank=0, **PAPER)
    assert allocation.ranks == {"a": 1, "b": 3, "c": 8}
    assert allocation.budget == allocation.budget_used == 12


def test_sra_tie_breaks_by_name():
    s = sens(module("b", 1.0), module("a", 1.0), module("c", 1.0), module("d", 3.0))
    # theta 1, 1, 1, 3 over 6 times the budget 10: 5/3 each for a, b, c and 5 for d
    allocation = allocate_ranks(s, avg_rank=2.5, metrics=("global",), min_rank=0, **PAPER)
    assert allocation.budget == 10
    # 1.667 x3 -> floors 1,1,1 and d = 5 -> 8 used, 2 left to the two first names among equal remainders
    assert allocation.ranks == {"a": 2, "b": 2, "c": 1, "d": 5}


def test_pra_paper_example():
    s = sens(*(module(f"m{i}", float(t)) for i, t in enumerate([6, 1, 5, 2, 4, 3])))
    allocation = allocate_ranks(s, avg_rank=5, scheme="pra", num_groups=3, metrics=("global",), **PAPER)
    by_sensitivity = sorted(allocation.ranks, key=lambda n: -s[n].trace)
    assert [allocation.ranks[n] for n in by_sensitivity] == [6, 6, 5, 5, 4, 4]
    assert allocation.budget_used == 30


def test_max_rank_excess_is_respread():
    s = sens(module("a", 1.0), module("b", 1.0), module("c", 10.0))
    allocation = allocate_ranks(s, avg_rank=4, max_rank=6, metrics=("global",), **PAPER)
    assert allocation.ranks == {"a": 3, "b": 3, "c": 6}


def test_min_rank_is_respected_and_budget_met():
    s = sens(module("a", 0.001), module("b", 1.0), module("c", 100.0))
    allocation = allocate_ranks(s, avg_rank=4, min_rank=2, metrics=("global",), **PAPER)
    assert allocation.ranks["a"] == 2
    assert sum(allocation.ranks.values()) == 12


def test_min_rank_zero_leaves_modules_out():
    s = sens(module("a", 0.0), module("b", 1.0), module("c", 3.0))
    allocation = allocate_ranks(s, avg_rank=2, min_rank=0, metrics=("global",), **PAPER)
    # 0, 1.5, 4.5 -> floors 0, 1, 4; the one rank left goes to the tie at .5 with the larger theta: c
    assert allocation.ranks == {"a": 0, "b": 1, "c": 5}
    assert sum(allocation.ranks.values()) == 6


def test_max_rank_factor_caps_exactly():
    s = sens(*(module(f"m{i}", 1.0) for i in range(7)), module("big", 1000.0))
    allocation = allocate_ranks(s, avg_rank=4, max_rank_factor=2.0, metrics=("global",), budget_unit="rank")
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
    assert set(allocate_ranks(equal, avg_rank=3, **PAPER).ranks.values()) == {3}
    zero = sens(*(module(f"m{i}", 0.0, eff=0) for i in range(4)))
    allocation = allocate_ranks(zero, avg_rank=3, **PAPER)
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
        allocate_ranks(s, **(PAPER | kwargs))


def test_nan_metric_names_the_module():
    bad = ModuleSensitivity("broken.layer", 4, 4, float("nan"), 1.0, 1, 4)
    with pytest.raises(ValueError, match="broken.layer"):
        allocate_ranks(sens(module("a", 1.0), bad), avg_rank=2)
    with pytest.raises(ValueError, match="no module"):
        allocate_ranks({}, avg_rank=2, **PAPER)


def test_json_round_trip():
    s = sens(module("a", 1.0), module("b", 2.0, d_in=4, d_out=16), module("c", 5.0))
    allocation = allocate_ranks(s, avg_rank=4, max_rank=7, **PAPER)
    assert Allocation.from_json(allocation.to_json()) == allocation
    with pytest.raises(ValueError, match="not a senslora ranks file"):
        Allocation.from_json('{"format": "other"}')


def test_dominance_warning():
    wide = {"d_in": 64, "d_out": 64}  # full rank 64: only the budget limits the pooler
    dominated = sens(*(module(f"m{i}", 1.0, **wide) for i in range(10)), module("pooler", 500.0, **wide))
    with pytest.warns(DominanceWarning, match="pooler"):
        allocate_ranks(dominated, avg_rank=4, metrics=("global",), **PAPER)
    balanced = sens(*(module(f"m{i}", 1.0 + i / 10) for i in range(11)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DominanceWarning)
        allocate_ranks(balanced, avg_rank=4, metrics=("global",), **PAPER)


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
    options = {"min_rank": min_rank, "max_rank": max_rank, "scheme": scheme, "weighting": weighting} | PAPER
    full = {n: min(m.d_in, m.d_out) for n, m in s.items()}
    if min_rank > avg_rank:
        with pytest.raises(ValueError, match="too small"):
            allocate_ranks(s, avg_rank=avg_rank, **options)
        return
    if sum(min(f, max_rank or f) for f in full.values()) < avg_rank * len(s):
        with pytest.raises(ValueError, match="full ranks|cannot be spent"):
            allocate_ranks(s, avg_rank=avg_rank, **options)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DominanceWarning)
        allocation = allocate_ranks(s, avg_rank=avg_rank, **options)
        shuffled = dict(random.Random(1).sample(list(s.items()), len(s)))
        again = allocate_ranks(shuffled, avg_rank=avg_rank, **options)
    ranks = allocation.ranks
    assert again.ranks == ranks  # deterministic and independent of input order
    assert sum(ranks.values()) == avg_rank * len(s)  # budget met exactly
    assert all(min(min_rank, full[n]) <= r <= min(max_rank or r, full[n]) for n, r in ranks.items())
    theta = allocation.theta if not allocation.uniform_fallback else dict.fromkeys(ranks, 1.0)
    for a in ranks:
        for b in ranks:
            # monotone in theta, except that a module at its full rank can hold no more
            if theta[a] > theta[b] * (1 + 1e-9) and ranks[a] < full[a]:
                assert ranks[a] >= ranks[b], (a, b)


# ---- full rank: no module above min(d_in, d_out) -----------------------------------------------------


def test_full_rank_caps_a_small_matrix_and_respreads_the_excess():
    # theta 10 : 1 : 1 over a budget of 3 x 4 = 12 ranks: a would get 10, but a 2 x 2 matrix has full rank 2;
    # the 8 ranks it cannot hold go to b and c in proportion to theta (1 : 1): 5 each.
    s = sens(module("a", 10.0, d_in=2, d_out=2), module("b", 1.0), module("c", 1.0))
    allocation = allocate_ranks(s, avg_rank=4, budget_unit="rank", metrics=("global",), max_rank_factor=None)
    assert allocation.ranks == {"a": 2, "b": 5, "c": 5}


def test_budget_above_the_full_ranks_is_refused():
    # full ranks 2 (2 x 2) and 3 (3 x 5): at most 5 ranks, or 2 * 4 + 3 * 8 = 32 parameters
    s = sens(module("a", 1.0, d_in=2, d_out=2), module("b", 2.0, d_in=3, d_out=5))
    with pytest.raises(ValueError, match=r"exceeds the 5 rank .*full ranks"):
        allocate_ranks(s, avg_rank=3, budget_unit="rank", max_rank_factor=None)  # 6 ranks
    with pytest.raises(ValueError, match=r"exceeds the 32 params .*full ranks"):
        allocate_ranks(s, avg_rank=3, budget_unit="params", max_rank_factor=None)  # 3 * 12 = 36 parameters
    fits = allocate_ranks(s, avg_rank=2, budget_unit="params", max_rank_factor=None)  # 24 of 32
    assert fits.ranks["a"] <= 2 and fits.ranks["b"] <= 3


@pytest.mark.parametrize("avg_rank", [7.49e306, 1e308, 10**400])
@pytest.mark.parametrize("max_rank_factor", [None, 2.0])
def test_a_budget_beyond_the_float_range_is_refused_as_too_large(avg_rank, max_rank_factor):
    # 7.49e306 and 1e308 are finite, but 7.49e306 * 24 parameters (and 2 * 1e308, the cap) overflow to inf;
    # a 400-digit integer has no float at all. Each is a budget above the 32 parameters the full ranks hold.
    s = sens(module("a", 1.0, d_in=2, d_out=2), module("b", 2.0, d_in=3, d_out=5))
    with pytest.raises(ValueError, match=r"exceeds the 32 params .*full ranks"):
        allocate_ranks(s, avg_rank=avg_rank, budget_unit="params", max_rank_factor=max_rank_factor)


# ---- PRA: levels one apart, whole groups, exact budget -------------------------------------------------


def pra_ranks(count: int, avg_rank: float, num_groups: int, **kwargs) -> list[int]:
    """PRA ranks in decreasing theta order (theta = count, count - 1, ..., 1; large matrices)."""
    s = sens(*(module(f"m{i:03d}", float(count - i), d_in=512, d_out=512) for i in range(count)))
    kwargs = {"budget_unit": "rank", "max_rank_factor": None, "metrics": ("global",), "min_rank": 0} | kwargs
    allocation = allocate_ranks(s, avg_rank=avg_rank, scheme="pra", num_groups=num_groups, **kwargs)
    return [allocation.ranks[f"m{i:03d}"] for i in range(count)]


@pytest.mark.parametrize(
    ("count", "avg_rank", "num_groups", "expected"),
    [
        # the paper's example: top level 5 + (3 - 1) / 2 = 6, three groups of two
        (6, 5, 3, [6, 6, 5, 5, 4, 4]),
        # top level 6; boundaries sum to S = 2 * 5 - 5 * 6 + 25 = 5; ideal 5/3, 10/3 -> 1.67, 3.33 -> 2, 3
        (5, 5, 3, [6, 6, 5, 4, 4]),
        # two levels one apart never sum to a multiple of 4: three levels (C + 1), top 4 + 1 = 5, S = 4;
        # ideal 4/3, 8/3 -> 1, 3
        (4, 4, 2, [5, 4, 4, 3]),
        # top level 4 + 1.5 is a half-integer: 6 (the higher) with S = 3 * 8 - 8 * 6 + 32 = 8; ideal 2, 4, 6
        # shifted by -4/3, b1 clipped at 1, then 2.5, 4.5 -> 2, 5
        (8, 4, 4, [6, 5, 4, 4, 4, 3, 3, 3]),
        # 37 modules (MiniLM): top 6, S = 37; ideal 9.25, 18.5, 27.75 shifted by -37/6 -> 3.08, 12.33, 21.58
        # -> 3, 12, 22: groups of 3, 9, 10, 15
        (37, 4, 4, [6] * 3 + [5] * 9 + [4] * 10 + [3] * 15),
        # three groups of 37 at average 4: top 5, S = 2 * 37 - 37 * 5 + 148 = 37 = 37/3 + 74/3: no shift;
        # 12.33, 24.67 -> 12, 25 (the larger remainder): groups of 12, 13, 12
        (37, 4, 3, [5] * 12 + [4] * 13 + [3] * 12),
    ],
)
def test_pra_by_hand(count, avg_rank, num_groups, expected):
    ranks = pra_ranks(count, avg_rank, num_groups)
    assert ranks == expected
    assert sum(ranks) == avg_rank * count


def feasible_level_counts(count: int, budget: int, min_rank: int) -> set[int]:
    """Brute force: the numbers of levels K for which non-empty groups at L0, L0 - 1, ..., L0 - K + 1
    (L0 - K + 1 >= min_rank) sum to `budget` exactly."""
    import itertools

    feasible = set()
    for levels in range(1, count + 1):
        for cuts in itertools.combinations(range(1, count), levels - 1):
            sizes = [b - a for a, b in zip((0, *cuts), (*cuts, count), strict=True)]
            moment = sum(g * s for g, s in enumerate(sizes))
            if (budget + moment) % count == 0 and (budget + moment) // count - levels + 1 >= min_rank:
                feasible.add(levels)
                break
    return feasible


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10), st.integers(1, 10), st.integers(1, 5), st.integers(0, 1))
def test_pra_properties(count, avg_rank, num_groups, min_rank):
    ranks = pra_ranks(count, avg_rank, num_groups, min_rank=min_rank)
    assert sum(ranks) == avg_rank * count  # budget met exactly
    assert ranks == sorted(ranks, reverse=True)  # non-increasing in theta
    levels = sorted(set(ranks), reverse=True)
    assert levels == list(range(levels[0], levels[0] - len(levels), -1))  # one apart
    assert min(ranks) >= min_rank
    # C levels when some split into C whole groups meets the budget, else the nearest count (C + 1 first)
    feasible = feasible_level_counts(count, avg_rank * count, min_rank)
    wanted = min(num_groups, count)
    preference = sorted(range(1, count + 1), key=lambda k: (abs(k - wanted), k < wanted))
    assert len(levels) == next(k for k in preference if k in feasible)


def test_pra_params_unit_is_monotone_and_within_budget():
    s = sens(*(module(f"m{i}", float(10 - i), d_in=8 * (1 + i % 3), d_out=8) for i in range(10)))
    allocation = allocate_ranks(s, avg_rank=4, scheme="pra", budget_unit="params", metrics=("global",))
    ranks = [allocation.ranks[f"m{i}"] for i in range(10)]
    assert ranks == sorted(ranks, reverse=True)
    assert allocation.budget_used <= allocation.budget


# ---- params unit: monotone in theta, budget spent as closely as monotonicity allows --------------------

BERT_FAMILIES = [(384, 1536), (768, 3072)]


@st.composite
def bert_like_sensitivities(draw):
    hidden, intermediate = draw(st.sampled_from(BERT_FAMILIES))
    shapes = [(hidden, hidden), (hidden, intermediate), (intermediate, hidden)]
    count = draw(st.integers(30, 40))
    items = []
    for i in range(count):
        d_in, d_out = draw(st.sampled_from(shapes))
        trace = draw(st.floats(min_value=0.01, max_value=100.0))
        items.append(
            ModuleSensitivity(
                name=f"encoder.layer.{i}.dense",
                d_in=d_in,
                d_out=d_out,
                trace=trace,
                topk=draw(st.floats(min_value=0.01, max_value=100.0)),
                effective_rank=draw(st.integers(1, d_in)),
                num_entries=d_in,
            )
        )
    return {m.name: m for m in items}


@settings(max_examples=200, deadline=None)
@given(
    bert_like_sensitivities(),
    st.integers(1, 16),
    st.integers(0, 1),
    st.sampled_from([None, 2.0]),
    st.sampled_from(["sra", "pra"]),
)
def test_params_unit_is_monotone_and_spends_the_budget(s, avg_rank, min_rank, factor, scheme):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DominanceWarning)
        allocation = allocate_ranks(
            s, avg_rank=avg_rank, min_rank=min_rank, max_rank_factor=factor, scheme=scheme, budget_unit="params"
        )
    ranks, theta = allocation.ranks, allocation.theta
    cost = {n: m.d_in + m.d_out for n, m in s.items()}
    used = sum(ranks[n] * cost[n] for n in ranks)
    assert used == allocation.budget_used <= allocation.budget == avg_rank * sum(cost.values())
    # no inversion: a more sensitive module never has a smaller rank (full ranks >= 384 never bind here)
    assert not [(a, b) for a in ranks for b in ranks if theta[a] > theta[b] and ranks[a] < ranks[b]]
    # as closely as possible: no module can take one more rank, keeping every more sensitive module at
    # least as high and staying within the cap, for what is left of the budget
    cap = allocation.max_rank if allocation.max_rank is not None else math.inf
    left = allocation.budget - used
    for name, rank in ranks.items():
        monotone = all(ranks[a] >= rank + 1 for a in ranks if theta[a] > theta[name])
        if rank + 1 <= cap and monotone:
            assert cost[name] > left, (name, rank, left)


# ---- defaults: params budget, a 2x cap -----------------------------------------------------------------


def test_defaults_are_the_params_unit_and_a_cap_of_twice_the_average():
    s = sens(module("a", 1.0, d_in=4, d_out=12), *(module(f"m{i}", 1.0) for i in range(6)), module("big", 1e6))
    allocation = allocate_ranks(s, avg_rank=3, metrics=("global",))
    assert allocation.budget_unit == "params"
    assert allocation.budget == 3 * (16 + 6 * 16 + 16)  # uniform LoRA's count at rank 3
    assert allocation.max_rank == 6 and allocation.ranks["big"] == 6
    uncapped = allocate_ranks(s, avg_rank=3, metrics=("global",), max_rank_factor=0, dominance_share=None)
    assert uncapped.max_rank is None and uncapped.ranks["big"] > 6
