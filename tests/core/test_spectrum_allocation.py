"""The gradient-spectrum allocator: hand-worked greedy examples, a brute-force optimum, budget and caps."""

from __future__ import annotations

import itertools
import random

import pytest

from senslora import Allocation
from senslora.core.metrics import ModuleSensitivity
from senslora.core.spectrum_allocation import allocate_spectrum_ranks


def module(name: str, d_in: int, d_out: int, spectrum: tuple[float, ...]) -> ModuleSensitivity:
    energy = sum(v * v for v in spectrum)
    return ModuleSensitivity(name, d_in, d_out, energy, energy, 1, len(spectrum), spectrum=spectrum)


def three_modules() -> dict[str, ModuleSensitivity]:
    return {
        "a": module("a", 4, 4, (4.0, 2.0, 1.0, 0.5)),  # cost 8
        "b": module("b", 2, 6, (3.0, 3.0)),  # cost 8, full rank 2
        "c": module("c", 8, 8, (8.0, 1.0, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1)),  # cost 16
    }


def test_hand_worked_params_budget():
    # budget 2 * (8 + 8 + 16) = 64; gains sigma^2 / cost:
    # c1 64/16=4 (left 48), a1 16/8=2 (40), b1 9/8 (32), b2 9/8 (24; b at full rank 2), a2 4/8 (16),
    # a3 1/8 (8), c2 1/16 does not fit (cost 16 > 8: c leaves), a4 0.25/8 (0).
    allocation = allocate_spectrum_ranks(three_modules(), avg_rank=2, min_rank=0)
    assert allocation.ranks == {"a": 4, "b": 2, "c": 1}
    assert allocation.budget == 64 and allocation.budget_used == 64 and allocation.param_count == 64
    assert allocation.theta["a"] == pytest.approx(16 + 4 + 1 + 0.25)
    assert allocation.extra["last_gain"] == pytest.approx(0.25 / 8)


def test_hand_worked_rank_budget_with_tie_and_cap():
    # budget 6 ranks, all start at 1 (left 3); gains sigma^2: b2 9, a2 4, then a3 = c2 = 1: tie to the name "a".
    allocation = allocate_spectrum_ranks(three_modules(), avg_rank=2, budget_unit="rank")
    assert allocation.ranks == {"a": 3, "b": 2, "c": 1} and allocation.budget_used == 6
    # A cap of floor(1.5 * 2) = 3 stops a at 3 in the params unit: 8 parameters stay unspent, never overspent.
    capped = allocate_spectrum_ranks(three_modules(), avg_rank=2, min_rank=0, max_rank_factor=1.5)
    assert capped.ranks == {"a": 3, "b": 2, "c": 1} and capped.max_rank == 3 and capped.budget_used == 56


def test_ranks_file_round_trip():
    allocation = allocate_spectrum_ranks(three_modules(), avg_rank=2)
    assert Allocation.from_json(allocation.to_json()) == allocation


def random_modules(rng: random.Random, count: int) -> dict[str, ModuleSensitivity]:
    result = {}
    for i in range(count):
        d_in, d_out = rng.randint(1, 6), rng.randint(1, 6)
        spectrum = tuple(
            sorted((rng.choice([0.0, rng.expovariate(1.0)]) for _ in range(min(d_in, d_out))), reverse=True)
        )
        result[f"m{i}"] = module(f"m{i}", d_in, d_out, spectrum)
    return result


def brute_force_best(modules: dict[str, ModuleSensitivity], budget: int, min_rank: int) -> float:
    """Largest sum over modules of sum_{k<=r} sigma_k^2 with sum r = budget (rank unit), by enumeration."""
    names = sorted(modules)
    choices = [range(min(min_rank, len(modules[n].spectrum)), len(modules[n].spectrum) + 1) for n in names]
    best = -1.0
    for ranks in itertools.product(*choices):
        if sum(ranks) <= budget:
            best = max(
                best, sum(sum(v * v for v in modules[n].spectrum[:r]) for n, r in zip(names, ranks, strict=True))
            )
    return best


@pytest.mark.parametrize("seed", range(25))
def test_rank_unit_greedy_reaches_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    modules = random_modules(rng, 3)
    min_rank = rng.choice([0, 1])
    full_ranks = sum(min(m.d_in, m.d_out) for m in modules.values())  # budgets above it are refused
    avg_rank = rng.choice([a for a in (1, 2) if a * len(modules) <= full_ranks])
    allocation = allocate_spectrum_ranks(
        modules, avg_rank=avg_rank, budget_unit="rank", min_rank=min_rank, max_rank_factor=0
    )
    captured = sum(sum(v * v for v in modules[n].spectrum[: allocation.ranks[n]]) for n in modules)
    assert captured == pytest.approx(brute_force_best(modules, allocation.budget, min_rank))


@pytest.mark.parametrize("seed", range(40))
def test_budget_caps_and_monotonicity_on_random_inputs(seed):
    rng = random.Random(100 + seed)
    modules = random_modules(rng, rng.randint(1, 6))
    unit = rng.choice(["params", "rank"])
    factor = rng.choice([None, 2.0])
    cost = {n: 1 if unit == "rank" else m.d_in + m.d_out for n, m in modules.items()}
    if 2 * sum(cost.values()) > sum(cost[n] * min(m.d_in, m.d_out) for n, m in modules.items()):
        with pytest.raises(ValueError, match="exceeds the .* full ranks"):  # more than the full ranks hold
            allocate_spectrum_ranks(modules, avg_rank=2, budget_unit=unit, min_rank=0, max_rank_factor=factor)
        return
    allocation = allocate_spectrum_ranks(modules, avg_rank=2, budget_unit=unit, min_rank=0, max_rank_factor=factor)
    spent = sum(cost[n] * r for n, r in allocation.ranks.items())
    assert spent == allocation.budget_used <= allocation.budget
    left = allocation.budget - spent
    for name, rank in allocation.ranks.items():
        cap = min(modules[name].d_in, modules[name].d_out, 4 if factor else 10**9)
        assert 0 <= rank <= cap
        assert rank == cap or cost[name] > left, "a rank that still fits was left unspent"
    if unit == "rank":  # a larger budget never takes a rank away (the greedy order only gets longer)
        if 3 * len(modules) <= sum(min(m.d_in, m.d_out) for m in modules.values()):
            larger = allocate_spectrum_ranks(modules, avg_rank=3, budget_unit=unit, min_rank=0, max_rank_factor=factor)
            assert all(larger.ranks[n] >= r for n, r in allocation.ranks.items())
        # Raising one module's spectrum never lowers its rank.
        name = rng.choice(sorted(modules))
        boosted = dict(modules)
        item = modules[name]
        boosted[name] = module(name, item.d_in, item.d_out, tuple(2 * v + 0.1 for v in item.spectrum))
        again = allocate_spectrum_ranks(boosted, avg_rank=2, budget_unit=unit, min_rank=0, max_rank_factor=factor)
        assert again.ranks[name] >= allocation.ranks[name]


def test_refusals():
    plain = {"a": ModuleSensitivity("a", 4, 4, 1.0, 1.0, 1, 4)}
    with pytest.raises(ValueError, match="no gradient spectrum"):
        allocate_spectrum_ranks(plain, avg_rank=2)
    with pytest.raises(ValueError, match="too small to give min_rank"):
        allocate_spectrum_ranks(three_modules(), avg_rank=1, min_rank=2)
    with pytest.raises(ValueError, match="avg_rank must be a positive number"):
        allocate_spectrum_ranks(three_modules(), avg_rank=0)
    with pytest.raises(ValueError, match="unknown budget unit"):
        allocate_spectrum_ranks(three_modules(), avg_rank=2, budget_unit="bytes")
    # Full ranks hold 8*4 + 8*2 + 16*8 = 176 parameters; avg_rank 6 asks for 6 * 32 = 192 (allocate_ranks
    # refuses the same budget); avg_rank 5 (160) still fits.
    with pytest.raises(ValueError, match="exceeds the 176 params of the 3 modules' full ranks"):
        allocate_spectrum_ranks(three_modules(), avg_rank=6, min_rank=0)
    assert allocate_spectrum_ranks(three_modules(), avg_rank=5, min_rank=0).budget_used == 160
    for huge in (7.49e306, 1e308):  # finite averages whose budget (and 2x cap) overflow to inf
        with pytest.raises(ValueError, match="exceeds the 176 params of the 3 modules' full ranks"):
            allocate_spectrum_ranks(three_modules(), avg_rank=huge, min_rank=0)


def test_default_cap_is_twice_the_average_rank_as_in_allocate_ranks():
    # Rank unit, avg_rank 1: budget 3 ranks, min_rank 0; gains sigma^2: a 100, a 81, a 64, b 4, c 1.
    # Uncapped, a takes all three; capped by default at floor(2 * 1) = 2, a stops at 2 and b gets the third.
    modules = {
        "a": module("a", 8, 8, (10.0, 9.0, 8.0, 0.5, 0.4, 0.3)),
        "b": module("b", 8, 8, (2.0,)),
        "c": module("c", 8, 8, (1.0,)),
    }
    capped = allocate_spectrum_ranks(modules, avg_rank=1, budget_unit="rank", min_rank=0)
    assert capped.ranks == {"a": 2, "b": 1, "c": 0} and capped.max_rank == 2
    uncapped = allocate_spectrum_ranks(modules, avg_rank=1, budget_unit="rank", min_rank=0, max_rank_factor=0)
    assert uncapped.ranks == {"a": 3, "b": 0, "c": 0} and uncapped.max_rank is None


def test_factor_zero_means_no_cap_as_in_allocate_ranks():
    uncapped = allocate_spectrum_ranks(three_modules(), avg_rank=2, min_rank=0, max_rank_factor=None)
    assert allocate_spectrum_ranks(three_modules(), avg_rank=2, min_rank=0, max_rank_factor=0).ranks == uncapped.ranks
