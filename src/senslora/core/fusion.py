"""Fusing a module's three sensitivity metrics into one score theta(w) (docs/method.md, section 4).

Fusion weight of a metric S over all adapted matrices:  c(S) = std(S) / mean(S)^2   ("cv", the paper's)
                                                    or c(S) = 0.5 / mean(S)          ("equal", its ablation)
A metric with mean 0 or std 0 carries no information and gets weight 0.

    S_local(w) = c(S_topk) * S_topk(w) + c(S_eff) * S_eff(w)
    theta(w)   = c(S_global) * S_global(w) + c(S_local) * S_local(w)

Since c(S) * S(w) = (std / mean) * (S(w) / mean), scaling a metric by a positive constant changes nothing.
Pure Python: no model and no torch needed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from senslora.core.allocation_options import METRIC_GROUPS, WEIGHTINGS, check_choice
from senslora.core.metrics import ModuleSensitivity


def fusion_weight(values: Sequence[float], weighting: str = "cv") -> float:
    """c(S) = std(S) / mean(S)^2 for "cv", 0.5 / mean(S) for "equal"; 0 if mean or std is 0.

    std is the population standard deviation over all adapted matrices. The coefficient of variation
    std/mean is computed on values divided by their largest magnitude, so metrics anywhere between
    1e-300 and 1e300 neither underflow nor overflow when squared.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
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
