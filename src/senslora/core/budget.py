"""The rank budget, the bounds on each rank, and how real ranks become integer ones within them.

Budget: B = avg_rank * sum_w cost(w), cost(w) = d_in + d_out ("params", the default: uniform LoRA's
parameter count) or 1 ("rank", the paper's unit: avg_rank * number of matrices).

Bounds: min_rank <= r(w) <= min(max_rank, floor(max_rank_factor * avg_rank), min(d_in, d_out)); the
full rank min(d_in, d_out) always applies (a larger LoRA rank only adds parameters), the 2x cap by
default (max_rank_factor=0: none, as in the paper). A budget the bounds cannot hold is refused.

Water-filling (`water_fill`): real r(w) = clip(base(w) + lam * slope(w), low(w), high(w)) with the one lam
for which sum_w cost(w) * r(w) = B; violators are fixed at their bound and the excess re-spread over the
others.

Integer ranks (`round_monotone`): floors, then +1 steps, each to the module furthest below its real rank
(largest remainder; ties: larger theta, then name), each allowed only if it fits what is left of the
budget and every strictly more sensitive module (not at its own bound) already holds at least the new
rank. So a more sensitive module never gets a smaller rank (a module at its full rank excepted); in the
rank unit the budget is met exactly; in the params unit it is met from below as closely as that allows:
what is left is smaller than the cost of every +1 that keeps the ranks monotone and within the bounds.
Pure Python: no model and no torch needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from senslora.core.allocation_options import BUDGET_UNITS, check_choice

# Every rank is capped at this factor times the average rank unless told otherwise (EVA's rho; 0: no cap).
DEFAULT_MAX_RANK_FACTOR = 2.0


def check_avg_rank(avg_rank: float) -> None:
    """Raise ValueError unless avg_rank is a positive int or finite float (an int of any size passes)."""
    finite = isinstance(avg_rank, int) or (isinstance(avg_rank, float) and math.isfinite(avg_rank))
    if not (finite and avg_rank > 0):
        raise ValueError(f"avg_rank must be a positive number, got {avg_rank}")


def effective_max_rank(max_rank: int | None, max_rank_factor: float | None, avg_rank: float) -> int | None:
    """min(max_rank, floor(max_rank_factor * avg_rank)); a factor of 0 or None adds no cap."""
    if max_rank_factor is None or max_rank_factor == 0:
        return max_rank
    if not max_rank_factor > 0:
        raise ValueError(f"max_rank_factor must be positive (0: no cap), got {max_rank_factor}")
    try:
        scaled = max_rank_factor * avg_rank
    except OverflowError:  # an int avg_rank beyond every float
        scaled = math.inf
    if not math.isfinite(scaled):  # a cap beyond every float is no cap (the full rank still bounds)
        return max_rank
    factor_cap = math.floor(scaled + 1e-9)
    return factor_cap if max_rank is None else min(max_rank, factor_cap)


def _number_text(value: float, whole: bool = False) -> str:
    """An int in full; a float as %g, or (`whole`) rounded to an integer while it prints in 15 digits."""
    if isinstance(value, int):
        return str(value)
    if whole and value < 1e15:
        return str(round(value))
    return f"{value:.6g}" if whole else f"{value:g}"


def rank_cost(shape: tuple[int, int], budget_unit: str) -> int:
    """What one LoRA rank of a (d_in, d_out) module costs in `budget_unit`: 1 ("rank") or d_in + d_out ("params")."""
    return 1 if budget_unit == "rank" else sum(shape)


def check_budget_fits(
    shapes: Mapping[str, tuple[int, int]], avg_rank: float, budget_unit: str, max_rank: int | None = None
) -> int:
    """The budget round(avg_rank * sum_w cost(w)); ValueError if it exceeds what the modules can hold.

    A module holds at most its full rank min(d_in, d_out) (a LoRA rank above it only adds parameters),
    and at most max_rank. Budget and capacity are counted in `budget_unit`: sum_w cost(w) * avg_rank
    against sum_w cost(w) * min(d_in, d_out, max_rank), cost(w) = 1 ("rank") or d_in + d_out ("params").
    Pure: the shapes can come from a sensitivity file or from the model's target layers.
    """
    check_choice("budget unit", budget_unit, BUDGET_UNITS)
    names = sorted(shapes)
    cost = {n: rank_cost(shapes[n], budget_unit) for n in names}
    exact_budget = avg_rank * sum(cost.values())  # inf for a finite but huge avg_rank
    full = {n: min(shapes[n]) for n in names}
    full_capacity = sum(cost[n] * full[n] for n in names)
    if exact_budget == math.inf or round(exact_budget) > full_capacity:
        smallest = min(names, key=lambda n: (full[n], n))
        raise ValueError(
            f"budget of {_number_text(exact_budget, whole=True)} {budget_unit} (avg_rank {_number_text(avg_rank)}) "
            f"exceeds the {full_capacity} {budget_unit} of "
            f"the {len(names)} modules' full ranks min(d_in, d_out) (e.g. {smallest!r}: {full[smallest]}); a LoRA "
            f"rank above a matrix's full rank only adds parameters: lower avg_rank to at most "
            f"{full_capacity // sum(cost.values())}"
        )
    budget = round(exact_budget)
    if max_rank is not None and sum(cost[n] * min(full[n], max_rank) for n in names) < budget:
        raise ValueError(
            f"budget of {budget} {budget_unit} cannot be spent with max_rank={max_rank} on "
            f"{len(names)} modules; raise max_rank or lower avg_rank"
        )
    return budget


def water_fill(
    base: list[float], slope: list[float], cost: list[float], budget: float, low: list[float], high: list[float]
) -> list[float]:
    """Real r_i = clip(base_i + lam * slope_i, low_i, high_i) with sum cost_i * r_i = budget (slope >= 0).

    Bounds are enforced by fixing violators and re-spreading the rest: when clipping would remove more
    than it adds, the upper violators stay at their bound in the final solution (lam can only grow), and
    vice versa, so each round fixes one side for good.
    """
    count = len(base)
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(count) if i not in fixed]
        remaining = budget - sum(cost[i] * v for i, v in fixed.items())
        if not free:
            return [fixed[i] for i in range(count)]
        spread = [slope[i] for i in free]
        if sum(cost[i] * s for i, s in zip(free, spread, strict=True)) <= 0.0:
            spread = [1.0] * len(free)  # nothing to go by among the free ones: spread evenly
        lam = (remaining - sum(cost[i] * base[i] for i in free)) / sum(
            cost[i] * s for i, s in zip(free, spread, strict=True)
        )
        values = {i: base[i] + lam * s for i, s in zip(free, spread, strict=True)}
        over = [i for i, v in values.items() if v > high[i]]
        under = [i for i, v in values.items() if v < low[i]]
        if not over and not under:
            fixed.update(values)
            return [fixed[i] for i in range(count)]
        excess = sum(cost[i] * (values[i] - high[i]) for i in over)
        deficit = sum(cost[i] * (low[i] - values[i]) for i in under)
        if excess >= deficit:
            fixed.update({i: high[i] for i in over})
        else:
            fixed.update({i: low[i] for i in under})


def round_monotone(
    names: list[str], values: list[float], theta: list[float], cost: list[int], budget: int, high: list[float]
) -> list[int]:
    """Integer ranks from real ones: floors, then +1 steps that keep the ranks monotone in theta.

    Each step goes to the module with the largest deficit v_i - r_i (ties: larger theta, then name) among
    those that can take one more rank: r_i + 1 <= high_i, cost_i <= what is left of the budget, and every
    strictly more sensitive module not at its own bound already holds at least r_i + 1. In the rank unit
    (cost 1) this is largest-remainder rounding and meets the budget exactly. In the params unit it stops
    when no such step fits: what is left is smaller than the cost of every step that keeps the order.
    """
    count = len(names)
    ranks = [math.floor(v + 1e-9) for v in values]
    left = budget - sum(c * r for c, r in zip(cost, ranks, strict=True))
    by_theta = sorted(range(count), key=lambda i: -theta[i])
    while True:
        # floor_above[i]: the smallest rank among strictly more sensitive modules below their bound
        floor_above = [math.inf] * count
        lowest, position = math.inf, 0
        while position < count:
            tie_end = position
            while tie_end < count and theta[by_theta[tie_end]] == theta[by_theta[position]]:
                tie_end += 1
            for i in by_theta[position:tie_end]:
                floor_above[i] = lowest
            for i in by_theta[position:tie_end]:
                if ranks[i] < high[i]:
                    lowest = min(lowest, ranks[i])
            position = tie_end
        candidates = [
            i
            for i in range(count)
            if cost[i] <= left and ranks[i] + 1 <= high[i] + 1e-9 and floor_above[i] >= ranks[i] + 1
        ]
        if not candidates:
            return ranks
        best = min(candidates, key=lambda i: (-round(values[i] - ranks[i], 9), -theta[i], names[i]))
        ranks[best] += 1
        left -= cost[best]
