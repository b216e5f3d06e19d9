"""Gradient-spectrum allocation: each extra rank goes where the next singular value buys the most.

Input: per module w the singular values sigma_1(w) >= sigma_2(w) >= ... of its mean calibration gradient
G_w (the `gradient_spectrum` estimator), its shape (d_in, d_out), and a budget as in `allocate_ranks`.

Marginal gain. A rank-r LoRA step Delta of fixed Frobenius norm eps changes the loss to first order by
<G_w, Delta>; the best such step is eps times the normalised top-r truncated SVD of -G_w (Eckart-Young),
which lowers the loss by eps * sqrt(sum_{i<=r} sigma_i^2). The squared decrease is additive over ranks
(and over modules, when one step of total norm eps is shared among them optimally: the squared gains
add), so the k-th rank of module w adds sigma_k(w)^2. Per unit of budget:

    gain_k(w) = sigma_k(w)^2 / cost(w),   cost(w) = d_in + d_out ("params"), 1 ("rank")

Greedy: every module starts at min_rank; then, while some rank still fits, the rank with the largest
gain_k(w) is added (ties: the module name). Since sigma_k is non-increasing in k, each module's gains are
too, so in the "rank" unit the greedy choice maximises sum_w sum_{k<=r(w)} sigma_k(w)^2 exactly; in the
"params" unit it is the usual ratio greedy for a knapsack. A module's rank never exceeds
min(max_rank, floor(max_rank_factor * avg_rank), min(d_in, d_out)) (min_rank included), and a rank whose
cost no longer fits the budget is not given, so the budget is never exceeded. Ranks whose gain is 0 are
still given, last, so that the budget is spent as uniform LoRA spends it.

theta(w) = sum_i sigma_i(w)^2 = ||G_w||_F^2, the module's whole spectral energy (what full rank could buy).
Pure Python: no model and no torch needed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping

from senslora.core.allocation import DEFAULT_DOMINANCE_SHARE, warn_if_dominated
from senslora.core.allocation_options import BUDGET_UNITS
from senslora.core.allocation_result import Allocation
from senslora.core.budget import (
    DEFAULT_MAX_RANK_FACTOR,
    check_avg_rank,
    check_budget_fits,
    effective_max_rank,
    rank_cost,
)
from senslora.core.metrics import ModuleSensitivity

SPECTRUM_SCHEME = "spectrum"


def _check_options(avg_rank: float, budget_unit: str, min_rank: int, max_rank_factor: float | None) -> None:
    if budget_unit not in BUDGET_UNITS:
        raise ValueError(f"unknown budget unit {budget_unit!r}; allowed: {', '.join(BUDGET_UNITS)}")
    check_avg_rank(avg_rank)
    if not isinstance(min_rank, int) or min_rank < 0:
        raise ValueError(f"min_rank must be an integer >= 0, got {min_rank}")


def _spectra(sensitivities: Mapping[str, ModuleSensitivity]) -> dict[str, tuple[float, ...]]:
    spectra: dict[str, tuple[float, ...]] = {}
    for name, item in sensitivities.items():
        if item.spectrum is None:
            raise ValueError(
                f"module {name!r} has no gradient spectrum: spectrum allocation needs a sensitivity file "
                "written by the gradient_spectrum estimator"
            )
        if not all(math.isfinite(v) and v >= 0 for v in item.spectrum):
            raise ValueError(f"module {name!r}: spectrum values must be finite and >= 0")
        spectra[name] = tuple(sorted(item.spectrum, reverse=True))
    return spectra


def allocate_spectrum_ranks(
    sensitivities: Mapping[str, ModuleSensitivity],
    *,
    avg_rank: float,
    budget_unit: str = "params",
    min_rank: int = 1,
    max_rank: int | None = None,
    max_rank_factor: float | None = DEFAULT_MAX_RANK_FACTOR,
    dominance_share: float | None = DEFAULT_DOMINANCE_SHARE,
) -> Allocation:
    """Greedy ranks on gain_k(w) = sigma_k(w)^2 / cost(w), never exceeding the budget.

    Args:
        sensitivities: per-module sensitivities carrying a `spectrum` (gradient_spectrum estimator).
        avg_rank: the budget is avg_rank * number of modules ("rank") or avg_rank * sum(d_in + d_out)
            parameters ("params"), i.e. uniform LoRA's.
        budget_unit: "params" (default) or "rank".
        min_rank: rank every module starts with (0 allowed: no adapter unless it earns one), capped at
            the module's full rank min(d_in, d_out).
        max_rank: largest rank, or None.
        max_rank_factor: cap every rank at floor(max_rank_factor * avg_rank); 2 by default, as in
            `allocate_ranks`; None or 0: no cap.
        dominance_share: warn (DominanceWarning) as `allocate_ranks` does; None disables the check.

    Returns:
        An Allocation (scheme "spectrum") with theta(w) = sum of sigma_i(w)^2; `extra` records the gain
        rule and the gain of the last rank given.

    Raises:
        ValueError: unknown option, non-positive budget, a module without a spectrum, inconsistent
            bounds, a budget too small for min_rank on every module, or one larger than the modules' full
            ranks min(d_in, d_out) (or max_rank) can hold (`check_budget_fits`, as in `allocate_ranks`).
    """
    # Refuse bad options; the factor cap joins max_rank (`effective_max_rank`: 0 or None means no cap, as in
    # allocate_ranks); every module must carry a finite, non-negative spectrum, kept sorted largest first.
    _check_options(avg_rank, budget_unit, min_rank, max_rank_factor)
    if not sensitivities:
        raise ValueError("no module sensitivities to allocate ranks from")
    max_rank = effective_max_rank(max_rank, max_rank_factor, avg_rank)
    if max_rank is not None and (not isinstance(max_rank, int) or max_rank < max(1, min_rank)):
        raise ValueError(f"max_rank must be an integer >= max(1, min_rank={min_rank}), got {max_rank}")
    spectra = _spectra(sensitivities)

    # Budget and per-module cost and cap, as allocate_ranks counts them; a budget above what the modules'
    # full ranks (or max_rank) hold is refused, as allocate_ranks refuses it.
    names = sorted(sensitivities)
    shapes = {n: (sensitivities[n].d_in, sensitivities[n].d_out) for n in names}
    budget = check_budget_fits(shapes, avg_rank, budget_unit, max_rank)
    cost = {n: rank_cost(shapes[n], budget_unit) for n in names}
    cap = {n: min(shapes[n]) if max_rank is None else min(max_rank, *shapes[n]) for n in names}
    ranks = {n: min(min_rank, cap[n]) for n in names}
    left = budget - sum(cost[n] * ranks[n] for n in names)
    if left < 0:
        raise ValueError(
            f"budget of {budget} {budget_unit} is too small to give min_rank={min_rank} to all "
            f"{len(names)} modules (needs {budget - left}); raise avg_rank or lower min_rank"
        )

    def gain(name: str) -> float:
        """sigma_{r+1}^2 / cost of the module's next rank (0 beyond the stored spectrum)."""
        spectrum, rank = spectra[name], ranks[name]
        return (spectrum[rank] ** 2 if rank < len(spectrum) else 0.0) / cost[name]

    # Greedy: pop the best next rank; a module leaves the queue at its cap or when its cost no longer fits.
    queue = [(-gain(n), n) for n in names if ranks[n] < cap[n]]
    heapq.heapify(queue)
    last_gain: float | None = None
    while queue and left > 0:
        negative_gain, name = heapq.heappop(queue)
        if cost[name] > left:
            continue
        ranks[name] += 1
        left -= cost[name]
        last_gain = -negative_gain
        if ranks[name] < cap[name]:
            heapq.heappush(queue, (-gain(name), name))

    # The record: theta is each module's whole spectral energy ||G_w||_F^2; `extra` holds the gain rule and
    # the gain per unit of budget of the last rank given.
    allocation = Allocation(
        ranks=ranks,
        theta={n: math.fsum(v * v for v in spectra[n]) for n in names},
        weights={},
        budget=budget,
        budget_unit=budget_unit,
        budget_used=budget - left,
        avg_rank=float(avg_rank),
        scheme=SPECTRUM_SCHEME,
        weighting="none",
        metrics=("spectrum",),
        min_rank=min_rank,
        max_rank=max_rank,
        shapes=shapes,
        extra={"marginal_gain": "sigma_k^2 / cost", "last_gain": last_gain},
    )
    if dominance_share is not None:
        warn_if_dominated(allocation, dominance_share)
    return allocation
