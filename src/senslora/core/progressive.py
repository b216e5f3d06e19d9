"""Progressive Rank Allocation (PRA, the paper's ablation): whole groups at levels one apart.

Modules sorted by theta form K whole groups at levels L0, L0 - 1, ..., L0 - K + 1 summing to
round(avg_rank * n) ranks exactly (`progressive_levels`; docs/method.md, "Progressive Rank Allocation
for any module count"):

- K = C when a split into C non-empty groups meets the budget exactly, else the nearest count that has
  one (C + 1 before C - 1); C = 2 with an integer average never has one (two levels one apart never sum
  to a multiple of n), K = 1 or 2 always does (floor and ceiling of the average);
- with boundaries b_j (modules before group j), the sum is n * L0 - (K - 1) * n + sum_j b_j, so L0 fixes
  S = sum_j b_j:

      S = (K - 1) n - n L0 + R,   K (K - 1) / 2 <= S <= K (K - 1) / 2 + (K - 1)(n - K)

  and L0 is the allowed level nearest avg + (K - 1) / 2 (ties: the higher);
- the boundaries are the equal split j * n / K shifted by one common amount to sum to S (clipped to
  [j, n - K + j]), rounded by largest remainder (ties to the later boundary).

In the params unit `allocate_ranks` then shifts the levels by one common real amount to meet the parameter
budget and rounds them as SRA's ranks (`senslora.core.budget`): ranks stay monotone and within the budget,
but levels one apart and whole groups hold only in the rank unit.
Pure Python: no model and no torch needed.
"""

from __future__ import annotations

import math

from senslora.core.budget import water_fill


def _level_counts(num_groups: int, count: int) -> list[int]:
    """Numbers of levels to try: C (at most the module count), then C + 1, C - 1, C + 2, ..."""
    wanted = min(num_groups, count)
    return sorted(range(1, count + 1), key=lambda k: (abs(k - wanted), k < wanted))


def _top_level(count: int, rank_budget: int, levels: int, low: int, high: float) -> int | None:
    """The top level L0 of a split into `levels` non-empty groups one apart meeting `rank_budget`, or None.

    With boundaries b_1 < ... < b_{K-1} (b_j = modules in groups before j) the ranks sum to
    n * L0 - sum_g g * s_g = n * L0 - (K - 1) * n + sum_j b_j, so S = sum_j b_j = (K - 1) n - n L0 + budget
    must lie in [K (K - 1) / 2, (K - 1)(n - K) + K (K - 1) / 2] (every group non-empty). Among the L0 allowed
    (with L0 <= high and L0 - K + 1 >= low) the one nearest avg + (K - 1) / 2 wins; a tie goes to the higher.
    """
    smallest = levels * (levels - 1) // 2
    largest = smallest + (levels - 1) * (count - levels)
    ideal = rank_budget / count + (levels - 1) / 2
    allowed = [
        top
        for top in range(math.floor(ideal) - count - 1, math.ceil(ideal) + count + 2)
        if smallest <= (levels - 1) * count - count * top + rank_budget <= largest
        and top <= high
        and top - levels + 1 >= low
    ]
    return min(allowed, key=lambda top: (abs(top - ideal), -top)) if allowed else None


def _group_boundaries(count: int, levels: int, boundary_sum: int) -> list[int]:
    """Integer boundaries b_j (j = 1..K-1), strictly increasing, in [j, n - K + j], summing to S, nearest
    to the equal split j * n / K: shift all by one amount (clipped at the bounds, water-filling), then
    largest-remainder rounding (ties to the later boundary, which keeps them strictly increasing)."""
    if levels == 1:
        return []
    steps = range(1, levels)
    values = water_fill(
        [j * count / levels for j in steps],
        [1.0] * (levels - 1),
        [1.0] * (levels - 1),
        float(boundary_sum),
        [float(j) for j in steps],
        [float(count - levels + j) for j in steps],
    )
    bounds = [math.floor(v + 1e-9) for v in values]
    order = sorted(range(levels - 1), key=lambda j: (-round(values[j] - bounds[j], 9), -j))
    for j in order[: boundary_sum - sum(bounds)]:
        bounds[j] += 1
    return bounds


def progressive_levels(
    count: int, rank_budget: int, num_groups: int, low: int = 0, high: float = math.inf
) -> list[int]:
    """PRA ranks for `count` modules sorted by decreasing theta, summing to `rank_budget` exactly.

    The ranks form K non-empty groups at levels L0, L0 - 1, ..., L0 - K + 1 (low <= level <= high), whole
    groups in theta order; K = C when such a split exists, else the nearest count that has one (C + 1
    before C - 1). One always exists for K = 1 or 2: floor and ceiling of the average.
    """
    for levels in _level_counts(num_groups, count):
        top = _top_level(count, rank_budget, levels, low, high)
        if top is not None:
            break
    else:  # unreachable when low * count <= rank_budget <= high * count
        raise ValueError(f"no progressive split of {rank_budget} ranks over {count} modules within [{low}, {high}]")
    boundaries = _group_boundaries(count, levels, (levels - 1) * count - count * top + rank_budget)
    return [top - sum(1 for b in boundaries if b <= position) for position in range(count)]


def progressive_base(
    names: list[str], theta: list[float], avg_rank: float, num_groups: int, min_rank: int, max_rank: int | None
) -> list[float]:
    """The PRA level of each module, in the order of `names`: the modules sorted by decreasing theta (ties:
    the name) take `progressive_levels` of round(avg_rank * n) ranks, most sensitive first."""
    order = sorted(range(len(names)), key=lambda i: (-theta[i], names[i]))
    rank_budget = round(avg_rank * len(names))
    cap = math.inf if max_rank is None else max_rank
    levels = progressive_levels(len(names), rank_budget, num_groups, min_rank, cap)
    base = [0.0] * len(names)
    for position, i in enumerate(order):
        base[i] = float(levels[position])
    return base
