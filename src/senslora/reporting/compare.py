"""Compare two rank allocations: Kendall tau of their module orderings and which ranks changed.

Over the modules both allocations hold:

    kendall_tau       = tau-b of the two orderings (of theta when both are Allocations, else of the ranks)
    kendall_tau_ranks = tau-b of the integer ranks
    changed_share     = #{w : r_a(w) != r_b(w)} / #common
    largest_changes   = modules with r_a != r_b, by |r_a - r_b| descending, then by name

tau-b = (concordant - discordant) / sqrt((n0 - ties_a) * (n0 - ties_b)), n0 = n(n-1)/2; it is undefined
(NaN) when one side is constant or fewer than two modules are shared. The paper's stability study
reports tau between orderings from different calibration sets (0.97-0.98).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senslora.core.allocation_result import RANKS_FORMAT, Allocation
from senslora.core.artifacts import RANKS_FILE, read_json_file
from senslora.core.metrics import SENSITIVITY_FORMAT
from senslora.reporting.figures import DPI, figure_png_bytes
from senslora.reporting.kendall import kendall_tau_b, tau_text
from senslora.utils.io import atomic_write_bytes

DEFAULT_TOP = 10

AllocationLike = Allocation | Mapping[str, int]


@dataclass(frozen=True)
class AllocationComparison:
    """How two allocations differ on the modules they share.

    Attributes:
        kendall_tau: tau-b of the module orderings by `tau_basis` (NaN when undefined).
        tau_basis: "theta" when both inputs are Allocations, "rank" otherwise.
        kendall_tau_ranks: tau-b of the integer ranks (NaN when undefined).
        changed_share: share of common modules whose rank differs.
        largest_changes: (name, rank_a, rank_b) of changed modules, largest |rank_a - rank_b| first,
            ties by name, at most `top` of them.
        num_common, num_only_a, num_only_b: module counts.
        num_changed: how many common modules changed rank.
    """

    kendall_tau: float
    tau_basis: str
    kendall_tau_ranks: float
    changed_share: float
    largest_changes: tuple[tuple[str, int, int], ...]
    num_common: int
    num_only_a: int
    num_only_b: int
    num_changed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (an undefined tau becomes None)."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "kendall_tau": number(self.kendall_tau),
            "tau_basis": self.tau_basis,
            "kendall_tau_ranks": number(self.kendall_tau_ranks),
            "changed_share": self.changed_share,
            "num_changed": self.num_changed,
            "num_common": self.num_common,
            "num_only_a": self.num_only_a,
            "num_only_b": self.num_only_b,
            "largest_changes": [
                {"name": name, "rank_a": rank_a, "rank_b": rank_b} for name, rank_a, rank_b in self.largest_changes
            ],
        }


def _ranks_of(allocation: AllocationLike, label: str) -> dict[str, int]:
    if isinstance(allocation, Allocation):
        return dict(allocation.ranks)
    if not isinstance(allocation, Mapping):
        raise ValueError(f"allocation {label} must be an Allocation or a mapping of module name to rank")
    ranks: dict[str, int] = {}
    for name, rank in allocation.items():
        if not isinstance(name, str) or isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(
                f"allocation {label}: entry {name!r}: {rank!r} is not a module name with a non-negative integer rank"
            )
        ranks[name] = rank
    return ranks


def compare_allocations(a: AllocationLike, b: AllocationLike, *, top: int = DEFAULT_TOP) -> AllocationComparison:
    """Compare two allocations (Allocation objects or {module name: rank} mappings).

    Args:
        a, b: the allocations.
        top: how many of the largest rank changes to keep (>= 0).

    Returns:
        AllocationComparison over the modules both hold.

    Raises:
        ValueError: a malformed mapping, a negative `top`, or no module in common.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be an integer >= 0, got {top!r}")
    ranks_a, ranks_b = _ranks_of(a, "A"), _ranks_of(b, "B")
    common = sorted(set(ranks_a) & set(ranks_b))
    if not common:
        raise ValueError(
            f"the two allocations share no module (A has {len(ranks_a)}, B has {len(ranks_b)}); "
            "compare allocations of the same model"
        )
    rank_list_a = [float(ranks_a[name]) for name in common]
    rank_list_b = [float(ranks_b[name]) for name in common]
    tau_ranks = kendall_tau_b(rank_list_a, rank_list_b)
    if isinstance(a, Allocation) and isinstance(b, Allocation):
        tau = kendall_tau_b([a.theta[name] for name in common], [b.theta[name] for name in common])
        basis = "theta"
    else:
        tau, basis = tau_ranks, "rank"
    changed = [name for name in common if ranks_a[name] != ranks_b[name]]
    ordered = sorted(changed, key=lambda name: (-abs(ranks_a[name] - ranks_b[name]), name))
    return AllocationComparison(
        kendall_tau=tau,
        tau_basis=basis,
        kendall_tau_ranks=tau_ranks,
        changed_share=len(changed) / len(common),
        largest_changes=tuple((name, ranks_a[name], ranks_b[name]) for name in ordered[:top]),
        num_common=len(common),
        num_only_a=len(set(ranks_a) - set(ranks_b)),
        num_only_b=len(set(ranks_b) - set(ranks_a)),
        num_changed=len(changed),
    )


def load_allocation_like(path: str | os.PathLike[str]) -> AllocationLike:
    """Read an allocation from a ranks.json, a run directory holding one, or a JSON {name: rank} object.

    Raises:
        ValueError: missing path, a directory without ranks.json, or a file of another format.
    """
    source = Path(path)
    if source.is_dir():
        candidate = source / RANKS_FILE
        if not candidate.is_file():
            raise ValueError(f"directory {str(source)!r} holds no {RANKS_FILE}; pass a run directory or a ranks file")
        source = candidate
    document = read_json_file(source, "allocation file")
    if isinstance(document, dict) and document.get("format") == RANKS_FORMAT:
        return Allocation.from_dict(document)
    if isinstance(document, dict) and document.get("format") == SENSITIVITY_FORMAT:
        raise ValueError(
            f"{str(source)!r} is a sensitivity file, not an allocation; allocate ranks from it first "
            "(or pass a run directory holding ranks.json)"
        )
    if (
        isinstance(document, dict)
        and document
        and all(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0 for rank in document.values())
    ):
        return {str(name): int(rank) for name, rank in document.items()}
    raise ValueError(
        f"{str(source)!r} is neither a senslora ranks file (format {RANKS_FORMAT!r}) "
        "nor a JSON object of module name -> non-negative integer rank"
    )


def plot_comparison(
    a: AllocationLike,
    b: AllocationLike,
    path: str | os.PathLike[str],
    *,
    label_a: str = "A",
    label_b: str = "B",
    seed: int = 0,
) -> Path:
    """Scatter PNG of rank in A against rank in B (common modules, jittered by +-0.15, with the diagonal).

    The figure is 6 x 6 inches at 96 dpi (576 x 576 pixels); the jitter comes from `seed`.

    Returns:
        The path written (atomically).

    Raises:
        ValueError: as `compare_allocations`.
    """
    import numpy as np
    from matplotlib.figure import Figure

    comparison = compare_allocations(a, b, top=0)
    ranks_a, ranks_b = _ranks_of(a, "A"), _ranks_of(b, "B")
    common = sorted(set(ranks_a) & set(ranks_b))
    x = np.array([ranks_a[name] for name in common], dtype=float)
    y = np.array([ranks_b[name] for name in common], dtype=float)
    generator = np.random.default_rng(seed)
    x_jitter = x + generator.uniform(-0.15, 0.15, size=x.size)
    y_jitter = y + generator.uniform(-0.15, 0.15, size=y.size)
    changed = x != y

    figure = Figure(figsize=(6.0, 6.0), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    low = min(x.min(), y.min()) - 0.5
    high = max(x.max(), y.max()) + 0.5
    axes.plot([low, high], [low, high], color="0.5", linestyle="--", linewidth=1, label="same rank")
    axes.scatter(x_jitter[~changed], y_jitter[~changed], s=18, color="tab:blue", alpha=0.7, label="unchanged")
    axes.scatter(x_jitter[changed], y_jitter[changed], s=18, color="tab:orange", alpha=0.8, label="changed")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.set_xlabel(f"rank in {label_a}")
    axes.set_ylabel(f"rank in {label_b}")
    axes.set_title(
        f"Kendall tau ({comparison.tau_basis}) = {tau_text(comparison.kendall_tau)}, "
        f"changed {comparison.changed_share:.0%} of {comparison.num_common}",
        fontsize=10,
    )
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(True, color="0.9")
    return atomic_write_bytes(path, figure_png_bytes(figure))
