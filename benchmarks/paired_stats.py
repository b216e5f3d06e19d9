"""Paired comparisons over seeds: mean difference, 95 % t interval, wins, and Holm's correction.

For paired differences d_1..d_n (method minus reference on the same seed, signed so that > 0 is better):
    mean = sum(d) / n,  s = sqrt(sum((d - mean)^2) / (n - 1)),  half-width = t_{0.975, n-1} * s / sqrt(n)
and the two-sided p-value of the paired t test, p = 2 * P(T_{n-1} > |mean| / (s / sqrt(n))).
Holm's step-down correction over a family of m comparisons sorts p ascending and sets
    p_holm(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)),
which keeps the chance of any false "ahead"/"behind" in the family at or below 5 %. The verdict is "ahead"
or "behind" when p_holm < 0.05 (the sign of the mean decides which), "level" otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """One paired comparison: n seeds, the mean difference, its 95 % interval, wins and the test's p-value."""

    n: int
    mean: float
    low: float
    high: float
    wins: int
    p_value: float

    def interval(self, digits: int = 4) -> str:
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired(differences: Sequence[float]) -> Paired:
    """The paired summary of `differences` (> 0: the method is better on that seed); needs n >= 2."""
    values = [float(d) for d in differences]
    n = len(values)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 seeds, got {n}")
    mean = statistics.fmean(values)
    sd = statistics.stdev(values)
    wins = sum(d > 0 for d in values)
    if sd == 0.0:
        return Paired(n, mean, mean, mean, wins, 1.0 if mean == 0 else 0.0)
    standard_error = sd / math.sqrt(n)
    half = stats.t.ppf(0.5 + LEVEL / 2, n - 1) * standard_error
    p_value = float(2 * stats.t.sf(abs(mean) / standard_error, n - 1))
    return Paired(n, mean, mean - half, mean + half, wins, p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(comparison: Paired, p_holm: float, alpha: float = 1 - LEVEL) -> str:
    """ahead / behind when the Holm-adjusted p-value is below alpha, level otherwise."""
    if p_holm >= alpha:
        return "level"
    return "ahead" if comparison.mean > 0 else "behind"
