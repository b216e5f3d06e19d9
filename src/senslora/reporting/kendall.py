"""Kendall tau-b between two orderings of the same modules, and how it is printed.

    tau-b = (concordant - discordant) / sqrt((n0 - ties_a) * (n0 - ties_b)),  n0 = n(n-1)/2

over n paired values; it is undefined (NaN) when one side is constant or n < 2. Used by the report
(agreement of the metrics' orderings) and by `compare` (agreement of two allocations).
"""

from __future__ import annotations

import math

UNDEFINED = "undefined"


def kendall_tau_b(first: list[float], second: list[float]) -> float:
    """scipy's tau-b of two equally long sequences; NaN when undefined (constant side, < 2 items)."""
    from scipy.stats import kendalltau

    if len(first) < 2:
        return math.nan
    if len(set(first)) < 2 or len(set(second)) < 2:
        return math.nan
    return float(kendalltau(first, second, variant="b").statistic)


def tau_text(tau: float, *, digits: int = 3, undefined: str = UNDEFINED) -> str:
    """`tau` with `digits` decimals, or `undefined` when it is NaN."""
    return undefined if math.isnan(tau) else f"{tau:.{digits}f}"
