"""The options of an allocation and their allowed values; an unknown choice is refused by name.

scheme       "sra" (Scaled Rank Allocation, the paper's) or "pra" (Progressive, its ablation)
budget_unit  "rank" (cost(w) = 1, the paper's) or "params" (cost(w) = d_in + d_out, the default)
weighting    "cv" (c(S) = std(S) / mean(S)^2, the paper's) or "equal" (c(S) = 0.5 / mean(S))
metrics      the groups entering theta: "global" (the trace) and "local" (top-k and effective rank)
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEMES = ("sra", "pra")
BUDGET_UNITS = ("rank", "params")
WEIGHTINGS = ("cv", "equal")
METRIC_GROUPS = ("global", "local")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
