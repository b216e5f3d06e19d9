"""Rank allocation from sensitivity metrics: fusion, then Scaled or Progressive Rank Allocation.

Fusion weight of a metric S over all adapted matrices:  c(S) = std(S) / mean(S)^2   ("cv", the paper's)
                                                    or c(S) = 0.5 / mean(S)          ("equal", its ablation)
A metric with mean 0 or std 0 carries no information and gets weight 0.

    S_local(w) = c(S_topk) * S_topk(w) + c(S_eff) * S_eff(w)
    theta(w)   = c(S_global) * S_global(w) + c(S_local) * S_local(w)

Budget: B = avg_rank * sum_w cost(w), cost(w) = d_in + d_out ("params", the default: uniform LoRA's
parameter count) or 1 ("rank", the paper's unit: avg_rank * number of matrices).

SRA (the paper's):  real r(w) = lam * theta(w) with sum_w cost(w) * r(w) = B.
PRA (its ablation): modules sorted by theta form K whole groups at levels L0, L0 - 1, ..., L0 - K + 1
    summing to round(avg_rank * n) ranks exactly (`progressive_levels`):
    - K = C when a split into C non-empty groups meets the budget exactly, else the nearest count that
      has one (C + 1 before C - 1); C = 2 with an integer average never has one (two levels one apart
      never sum to a multiple of n), K = 1 or 2 always does (floor and ceiling of the average);
    - with boundaries b_j (modules before group j), the sum is n * L0 - (K - 1) * n + sum_j b_j, so
      L0 fixes S = sum_j b_j; L0 is the allowed level nearest avg + (K - 1) / 2 (ties: the higher);
    - the boundaries are the equal split j * n / K shifted by one common amount to sum to S (clipped to
      [j, n - K + j]), rounded by largest remainder (ties to the later boundary).
    In the params unit the levels are then shifted by one common real amount to meet the parameter budget
    and rounded as below: ranks stay monotone and within the budget, but levels one apart and whole groups
    hold only in the rank unit.

Bounds: min_rank <= r(w) <= min(max_rank, floor(max_rank_factor * avg_rank), min(d_in, d_out)); the
full rank min(d_in, d_out) always applies (a larger LoRA rank only adds parameters), the 2x cap by
default (max_rank_factor=0: none, as in the paper). Violators are fixed at their bound and the excess
re-spread over the others (water-filling); a budget the bounds cannot hold is refused.

Integer ranks: floors, then +1 steps, each to the module furthest below its real rank (largest
remainder; ties: larger theta, then name), each allowed only if it fits what is left of the budget and
every strictly more sensitive module (not at its own bound) already holds at least the new rank. So a
more sensitive module never gets a smaller rank (a module at its full rank excepted); in the rank unit
the budget is met exactly; in the params unit it is met from below as closely as that allows: what is
left is smaller than the cost of every +1 that keeps the ranks monotone and within the bounds.
Pure Python: no model and no torch needed.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from senslora.core.metrics import ModuleSensitivity

SCHEMES = ("sra", "pra")
BUDGET_UNITS = ("rank", "params")
WEIGHTINGS = ("cv", "equal")
METRIC_GROUPS = ("global", "local")
RANKS_FORMAT = "senslora.ranks/1"

# A module holding more than this share of the budget (and more than 4x the average share) triggers
# a DominanceWarning.
DEFAULT_DOMINANCE_SHARE = 0.25
# Every rank is capped at this factor times the average rank unless told otherwise (EVA's rho; 0: no cap).
DEFAULT_MAX_RANK_FACTOR = 2.0


class DominanceWarning(UserWarning):
    """One module takes a large share of the whole rank budget."""


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def fusion_weight(values: Sequence[float], weighting: str = "cv") -> float:
    """c(S) = std(S) / mean(S)^2 for "cv", 0.5 / mean(S) for "equal"; 0 if mean or std is 0.

    std is the population standard deviation over all adapted matrices. The coefficient of variation
    std/mean is computed on values divided by their largest magnitude, so metrics anywhere between
    1e-300 and 1e300 neither underflow nor overflow when squared.
    """
    _check_choice("weighting", weighting, WEIGHTINGS)
    largest = max((abs(v) for v in values), default=0.0)
    if largest == 0.0:
        return 0.0
    scaled = [v / largest for v in values]
    scaled_mean = statistics.fmean(scaled)
    scaled_std = statistics.pstdev(scaled, mu=scaled_mean)
    if scaled_mean == 0.0 or scaled_std <= 1e-12 * abs(scaled_mean):
        return 0.0
    mean = scaled_mean * largest
    return (scaled_std / scaled_mean) / mean if weighting == "cv" else 0.5 / mean


def fuse_scores(
    sensitivities: Mapping[str, ModuleSensitivity],
    *,
    weighting: str = "cv",
    metrics: Sequence[str] = METRIC_GROUPS,
) -> tuple[dict[str, float], dict[str, float]]:
    """theta(w) for every module and the fusion weights used.

    Returns:
        (theta by module name, weights) where weights has keys
        c_global, c_topk, c_effective_rank, c_local (0 for a group not in `metrics`).
    """
    names = list(sensitivities)
    trace = [sensitivities[n].trace for n in names]
    topk = [sensitivities[n].topk for n in names]
    eff = [float(sensitivities[n].effective_rank) for n in names]
    c_topk = fusion_weight(topk, weighting)
    c_eff = fusion_weight(eff, weighting)
    local = [c_topk * t + c_eff * e for t, e in zip(topk, eff, strict=True)]
    c_global = fusion_weight(trace, weighting) if "global" in metrics else 0.0
    c_local = fusion_weight(local, weighting) if "local" in metrics else 0.0
    theta = {n: c_global * g + c_local * s for n, g, s in zip(names, trace, local, strict=True)}
    weights = {"c_global": c_global, "c_topk": c_topk, "c_effective_rank": c_eff, "c_local": c_local}
    return theta, weights


@dataclass(frozen=True)
class Allocation:
    """Per-module LoRA ranks and how they were obtained (plain data, JSON round-trippable)."""

    ranks: dict[str, int]
    theta: dict[str, float]
    weights: dict[str, float]
    budget: int
    budget_unit: str
    budget_used: int
    avg_rank: float
    scheme: str
    weighting: str
    metrics: tuple[str, ...]
    min_rank: int
    max_rank: int | None
    shapes: dict[str, tuple[int, int]]
    uniform_fallback: bool = False
    num_groups: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def param_count(self) -> int:
        """Trainable LoRA parameters: sum over modules of r(w) * (d_in + d_out)."""
        return sum(r * (self.shapes[n][0] + self.shapes[n][1]) for n, r in self.ranks.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RANKS_FORMAT,
            "avg_rank": self.avg_rank,
            "budget": self.budget,
            "budget_unit": self.budget_unit,
            "budget_used": self.budget_used,
            "param_count": self.param_count,
            "scheme": self.scheme,
            "num_groups": self.num_groups,
            "weighting": self.weighting,
            "metrics": list(self.metrics),
            "min_rank": self.min_rank,
            "max_rank": self.max_rank,
            "weights": dict(self.weights),
            "uniform_fallback": self.uniform_fallback,
            "extra": dict(self.extra),
            "modules": [
                {
                    "name": name,
                    "rank": rank,
                    "theta": self.theta[name],
                    "d_in": self.shapes[name][0],
                    "d_out": self.shapes[name][1],
                }
                for name, rank in self.ranks.items()
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Allocation:
        if not isinstance(document, Mapping) or document.get("format") != RANKS_FORMAT:
            raise ValueError(f"not a senslora ranks file (expected format {RANKS_FORMAT!r})")
        modules = document.get("modules")
        if not isinstance(modules, list) or not modules:
            raise ValueError("the ranks file lists no modules")
        try:
            ranks = {str(m["name"]): int(m["rank"]) for m in modules}
            theta = {str(m["name"]): float(m["theta"]) for m in modules}
            shapes = {str(m["name"]): (int(m["d_in"]), int(m["d_out"])) for m in modules}
            if len(ranks) != len(modules):
                raise ValueError("a module appears twice in the ranks file")
            if any(r < 0 for r in ranks.values()):
                raise ValueError("ranks must be non-negative integers")
            return cls(
                ranks=ranks,
                theta=theta,
                weights={str(k): float(v) for k, v in document.get("weights", {}).items()},
                budget=int(document["budget"]),
                budget_unit=str(document["budget_unit"]),
                budget_used=int(document["budget_used"]),
                avg_rank=float(document["avg_rank"]),
                scheme=str(document["scheme"]),
                weighting=str(document["weighting"]),
                metrics=tuple(document["metrics"]),
                min_rank=int(document["min_rank"]),
                max_rank=None if document.get("max_rank") is None else int(document["max_rank"]),
                shapes=shapes,
                uniform_fallback=bool(document.get("uniform_fallback", False)),
                num_groups=None if document.get("num_groups") is None else int(document["num_groups"]),
                extra=dict(document.get("extra", {})),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed ranks file: missing or wrong field {error}") from None

    @classmethod
    def from_json(cls, text: str) -> Allocation:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON: {error}") from None
        return cls.from_dict(document)


def _water_fill(
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


def _round_monotone(
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
    values = _water_fill(
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


def effective_max_rank(max_rank: int | None, max_rank_factor: float | None, avg_rank: float) -> int | None:
    """min(max_rank, floor(max_rank_factor * avg_rank)); a factor of 0 or None adds no cap."""
    if max_rank_factor is None or max_rank_factor == 0:
        return max_rank
    if not max_rank_factor > 0:
        raise ValueError(f"max_rank_factor must be positive (0: no cap), got {max_rank_factor}")
    factor_cap = math.floor(max_rank_factor * avg_rank + 1e-9)
    return factor_cap if max_rank is None else min(max_rank, factor_cap)


def check_budget_fits(
    shapes: Mapping[str, tuple[int, int]], avg_rank: float, budget_unit: str, max_rank: int | None = None
) -> None:
    """Raise ValueError if the budget at `avg_rank` exceeds what the modules can hold.

    A module holds at most its full rank min(d_in, d_out) (a LoRA rank above it only adds parameters),
    and at most max_rank. Budget and capacity are counted in `budget_unit`: sum_w cost(w) * avg_rank
    against sum_w cost(w) * min(d_in, d_out, max_rank), cost(w) = 1 ("rank") or d_in + d_out ("params").
    Pure: the shapes can come from a sensitivity file or from the model's target layers.
    """
    _check_choice("budget unit", budget_unit, BUDGET_UNITS)
    names = sorted(shapes)
    cost = {n: 1 if budget_unit == "rank" else sum(shapes[n]) for n in names}
    budget = round(avg_rank * sum(cost.values()))
    full = {n: min(shapes[n]) for n in names}
    full_capacity = sum(cost[n] * full[n] for n in names)
    if budget > full_capacity:
        smallest = min(names, key=lambda n: (full[n], n))
        raise ValueError(
            f"budget of {budget} {budget_unit} (avg_rank {avg_rank:g}) exceeds the {full_capacity} {budget_unit} of "
            f"the {len(names)} modules' full ranks min(d_in, d_out) (e.g. {smallest!r}: {full[smallest]}); a LoRA "
            f"rank above a matrix's full rank only adds parameters: lower avg_rank to at most "
            f"{full_capacity // sum(cost.values())}"
        )
    if max_rank is not None and sum(cost[n] * min(full[n], max_rank) for n in names) < budget:
        raise ValueError(
            f"budget of {budget} {budget_unit} cannot be spent with max_rank={max_rank} on "
            f"{len(names)} modules; raise max_rank or lower avg_rank"
        )


def allocate_ranks(
    sensitivities: Mapping[str, ModuleSensitivity],
    *,
    avg_rank: float,
    scheme: str = "sra",
    budget_unit: str = "params",
    min_rank: int = 1,
    max_rank: int | None = None,
    max_rank_factor: float | None = DEFAULT_MAX_RANK_FACTOR,
    weighting: str = "cv",
    metrics: Sequence[str] = METRIC_GROUPS,
    num_groups: int = 3,
    dominance_share: float | None = DEFAULT_DOMINANCE_SHARE,
) -> Allocation:
    """Allocate integer LoRA ranks to modules from their sensitivities, meeting the budget.

    Args:
        sensitivities: per-module metrics, keyed by full module name.
        avg_rank: average rank; the budget is avg_rank * sum(d_in + d_out) parameters ("params", uniform
            LoRA's count) or avg_rank * number of modules ("rank", the paper's unit).
        scheme: "sra" (proportional to theta) or "pra" (progressive groups).
        budget_unit: "params" (default) or "rank".
        min_rank: smallest rank (0 allowed: such a module gets no adapter).
        max_rank: largest rank, or None.
        max_rank_factor: cap every rank at floor(max_rank_factor * avg_rank) (default 2, as EVA); 0 or
            None: no cap, as in the paper.
        weighting: "cv" (std/mean^2) or "equal" (0.5/mean).
        metrics: which of "global" and "local" enter theta (the paper's ablations use one).
        num_groups: number of groups C for "pra".
        dominance_share: warn (DominanceWarning) when one module takes more than this share of the
            budget and more than 4x the average share; None disables the check.

    Returns:
        An Allocation with integer ranks, each at most the module's full rank min(d_in, d_out); the
        budget is met exactly in the "rank" unit and as closely as monotone ranks allow, from below, in
        the "params" unit.

    Raises:
        ValueError: unknown option, non-positive budget, inconsistent bounds, a budget too small for
            min_rank on every module, too large for max_rank or for the modules' full ranks, NaN/inf or
            negative metrics.
    """
    _check_choice("scheme", scheme, SCHEMES)
    _check_choice("budget unit", budget_unit, BUDGET_UNITS)
    _check_choice("weighting", weighting, WEIGHTINGS)
    metrics = tuple(metrics)
    if not metrics or any(m not in METRIC_GROUPS for m in metrics):
        raise ValueError(f"metrics must be a non-empty subset of {METRIC_GROUPS}, got {metrics}")
    if not sensitivities:
        raise ValueError("no module sensitivities to allocate ranks from")
    if not (isinstance(avg_rank, int | float) and math.isfinite(avg_rank) and avg_rank > 0):
        raise ValueError(f"avg_rank must be a positive number, got {avg_rank}")
    if not isinstance(min_rank, int) or min_rank < 0:
        raise ValueError(f"min_rank must be an integer >= 0, got {min_rank}")
    max_rank = effective_max_rank(max_rank, max_rank_factor, avg_rank)
    if max_rank is not None and (not isinstance(max_rank, int) or max_rank < max(1, min_rank)):
        raise ValueError(f"max_rank must be an integer >= max(1, min_rank={min_rank}), got {max_rank}")
    if scheme == "pra" and (not isinstance(num_groups, int) or num_groups < 1):
        raise ValueError(f"num_groups must be an integer >= 1, got {num_groups}")
    for item in sensitivities.values():
        item.check_finite()
        if item.trace < 0 or item.topk < 0 or item.effective_rank < 0:
            raise ValueError(f"module {item.name!r}: sensitivity metrics must be >= 0")

    # Budget and bounds: every module between min_rank (or its full rank, if smaller) and
    # min(max_rank, full rank).
    names = sorted(sensitivities)
    shapes = {n: (sensitivities[n].d_in, sensitivities[n].d_out) for n in names}
    cost = [1 if budget_unit == "rank" else sum(shapes[n]) for n in names]
    budget = round(avg_rank * sum(cost))
    full = [min(shapes[n]) for n in names]
    high = [float(f if max_rank is None else min(max_rank, f)) for f in full]
    low = [float(min(min_rank, h)) for h in high]
    floor_cost = sum(c * lo for c, lo in zip(cost, low, strict=True))
    if floor_cost > budget:
        raise ValueError(
            f"budget of {budget} {budget_unit} is too small to give min_rank={min_rank} to all "
            f"{len(names)} modules (needs {floor_cost:g}); raise avg_rank or lower min_rank"
        )
    check_budget_fits(shapes, avg_rank, budget_unit, max_rank)

    theta_by_name, weights = fuse_scores(sensitivities, weighting=weighting, metrics=metrics)
    uniform_fallback = all(theta_by_name[n] == 0.0 for n in names)
    theta = [1.0 if uniform_fallback else theta_by_name[n] for n in names]

    # Real ranks: proportional to theta (SRA) or progressive levels shifted to the budget (PRA), clipped
    # to the bounds with the excess re-spread; then integer ranks monotone in theta.
    if scheme == "sra" or uniform_fallback:  # nothing informative: uniform, whatever the scheme
        base, slope = [0.0] * len(names), theta
    else:
        order = sorted(range(len(names)), key=lambda i: (-theta[i], names[i]))
        rank_budget = round(avg_rank * len(names))
        cap = math.inf if max_rank is None else max_rank
        levels = progressive_levels(len(names), rank_budget, num_groups, min_rank, cap)
        base = [0.0] * len(names)
        for position, i in enumerate(order):
            base[i] = float(levels[position])
        slope = [1.0] * len(names)
    values = _water_fill(base, slope, [float(c) for c in cost], float(budget), low, high)
    ranks = _round_monotone(names, values, theta, cost, budget, high)
    used = sum(c * r for c, r in zip(cost, ranks, strict=True))

    allocation = Allocation(
        ranks=dict(zip(names, ranks, strict=True)),
        theta=dict(theta_by_name),
        weights=weights,
        budget=budget,
        budget_unit=budget_unit,
        budget_used=used,
        avg_rank=float(avg_rank),
        scheme=scheme,
        weighting=weighting,
        metrics=metrics,
        min_rank=min_rank,
        max_rank=max_rank,
        shapes=shapes,
        uniform_fallback=uniform_fallback,
        num_groups=num_groups if scheme == "pra" else None,
    )
    if dominance_share is not None:
        warn_if_dominated(allocation, dominance_share)
    return allocation


def largest_share(allocation: Allocation) -> tuple[str, float]:
    """The module holding the largest share of the spent budget, and that share."""
    cost = {n: 1 if allocation.budget_unit == "rank" else sum(allocation.shapes[n]) for n in allocation.ranks}
    spent = {n: r * cost[n] for n, r in allocation.ranks.items()}
    total = sum(spent.values()) or 1
    name = max(sorted(spent), key=lambda n: spent[n])
    return name, spent[name] / total


def warn_if_dominated(allocation: Allocation, share: float = DEFAULT_DOMINANCE_SHARE) -> bool:
    """Warn when one module holds more than `share` of the budget and 4x the average share."""
    name, held = largest_share(allocation)
    if held > share and held > 4.0 / len(allocation.ranks):
        warnings.warn(
            f"module {name!r} takes {held:.0%} of the rank budget ({allocation.ranks[name]} ranks); keep "
            "ranks capped (max_rank_factor=2, the default) or leave the module out. Causes seen: a freshly "
            "initialised task head (loss-based estimators; warm it up first) and outlier activations (activation "
            "estimator).",
            DominanceWarning,
            stacklevel=3,
        )
        return True
    return False
