"""Rank allocation from sensitivity metrics: fused scores -> real ranks -> integer ranks under a budget.

    theta(w) = c(S_global) * S_global(w) + c(S_local) * S_local(w)            (`senslora.core.fusion`)
    B        = avg_rank * sum_w cost(w),  cost(w) = d_in + d_out or 1          (`senslora.core.budget`)

SRA (the paper's):  real r(w) = lam * theta(w) with sum_w cost(w) * r(w) = B.
PRA (its ablation): levels one apart over whole groups of modules sorted by theta, summing to
    round(avg_rank * n) ranks (`senslora.core.progressive`), shifted by one common amount to meet B.

Either way the real ranks are clipped to min_rank <= r(w) <= min(max_rank, floor(max_rank_factor *
avg_rank), min(d_in, d_out)) with the excess re-spread (water-filling), then made integers that never give
a more sensitive module a smaller rank (`senslora.core.budget`). All theta 0: uniform ranks, whatever the
scheme. One module holding more than DEFAULT_DOMINANCE_SHARE = 25 % of the spent budget and more than 4
times the average share raises a DominanceWarning.
Pure Python: no model and no torch needed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from senslora.core.allocation_options import BUDGET_UNITS, METRIC_GROUPS, SCHEMES, WEIGHTINGS, check_choice
from senslora.core.allocation_result import Allocation
from senslora.core.budget import (
    DEFAULT_MAX_RANK_FACTOR,
    check_avg_rank,
    check_budget_fits,
    effective_max_rank,
    rank_cost,
    round_monotone,
    water_fill,
)
from senslora.core.fusion import fuse_scores
from senslora.core.metrics import ModuleSensitivity
from senslora.core.progressive import progressive_base

# A module holding more than this share of the budget (and more than 4x the average share) triggers
# a DominanceWarning.
DEFAULT_DOMINANCE_SHARE = 0.25


class DominanceWarning(UserWarning):
    """One module takes a large share of the whole rank budget."""


def _checked_options(
    sensitivities: Mapping[str, ModuleSensitivity],
    *,
    avg_rank: float,
    scheme: str,
    budget_unit: str,
    min_rank: int,
    max_rank: int | None,
    max_rank_factor: float | None,
    weighting: str,
    metrics: Sequence[str],
    num_groups: int,
) -> tuple[tuple[str, ...], int | None]:
    """Refuse the options and metrics `allocate_ranks` cannot use; return the metric groups as a tuple and
    the effective max_rank (`effective_max_rank`). The checks run in this order: the first problem is named."""
    check_choice("scheme", scheme, SCHEMES)
    check_choice("budget unit", budget_unit, BUDGET_UNITS)
    check_choice("weighting", weighting, WEIGHTINGS)
    metrics = tuple(metrics)
    if not metrics or any(m not in METRIC_GROUPS for m in metrics):
        raise ValueError(f"metrics must be a non-empty subset of {METRIC_GROUPS}, got {metrics}")
    if not sensitivities:
        raise ValueError("no module sensitivities to allocate ranks from")
    check_avg_rank(avg_rank)
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
    return metrics, max_rank


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
    metrics, max_rank = _checked_options(
        sensitivities,
        avg_rank=avg_rank,
        scheme=scheme,
        budget_unit=budget_unit,
        min_rank=min_rank,
        max_rank=max_rank,
        max_rank_factor=max_rank_factor,
        weighting=weighting,
        metrics=metrics,
        num_groups=num_groups,
    )

    # Budget and bounds: every module between min_rank (or its full rank, if smaller) and
    # min(max_rank, full rank). A budget the bounds cannot hold is refused here, before any score.
    names = sorted(sensitivities)
    shapes = {n: (sensitivities[n].d_in, sensitivities[n].d_out) for n in names}
    budget = check_budget_fits(shapes, avg_rank, budget_unit, max_rank)
    cost = [rank_cost(shapes[n], budget_unit) for n in names]
    full = [min(shapes[n]) for n in names]
    high = [float(f if max_rank is None else min(max_rank, f)) for f in full]
    low = [float(min(min_rank, h)) for h in high]
    floor_cost = sum(c * lo for c, lo in zip(cost, low, strict=True))
    if floor_cost > budget:
        raise ValueError(
            f"budget of {budget} {budget_unit} is too small to give min_rank={min_rank} to all "
            f"{len(names)} modules (needs {floor_cost:g}); raise avg_rank or lower min_rank"
        )

    # Scores: theta per module; when every theta is 0 nothing is informative and all modules weigh alike.
    theta_by_name, weights = fuse_scores(sensitivities, weighting=weighting, metrics=metrics)
    uniform_fallback = all(theta_by_name[n] == 0.0 for n in names)
    theta = [1.0 if uniform_fallback else theta_by_name[n] for n in names]

    # Real ranks: proportional to theta (SRA) or progressive levels shifted to the budget (PRA), clipped
    # to the bounds with the excess re-spread; then integer ranks monotone in theta.
    if scheme == "sra" or uniform_fallback:  # nothing informative: uniform, whatever the scheme
        base, slope = [0.0] * len(names), theta
    else:
        base = progressive_base(names, theta, avg_rank, num_groups, min_rank, max_rank)
        slope = [1.0] * len(names)
    values = water_fill(base, slope, [float(c) for c in cost], float(budget), low, high)
    ranks = round_monotone(names, values, theta, cost, budget, high)
    used = sum(c * r for c, r in zip(cost, ranks, strict=True))

    # The record (theta as fused, not the uniform fallback's), then the check for one dominant module.
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
    cost = {n: rank_cost(allocation.shapes[n], allocation.budget_unit) for n in allocation.ranks}
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
