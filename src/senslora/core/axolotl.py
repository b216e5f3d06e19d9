"""An allocation as an Axolotl config fragment: integer lora_r / lora_alpha, integer rank and alpha patterns.

Axolotl's `lora_rank_pattern` / `lora_alpha_pattern` take positive integers only. The ranks are integers;
the alphas of `to_lora_config` need not be: with alpha_mode "scale" module m gets

    alpha_m = lora_alpha * r_m / avg_rank          (rsLoRA: lora_alpha * sqrt(r_m / avg_rank))

which is an integer for every module when lora_alpha / avg_rank is (the default lora_alpha = 2 x avg_rank
gives 2 r_m). Otherwise each alpha is rounded to the nearest positive integer, which changes that module's
scale alpha / r by the relative error

    e_m = |round(alpha_m) - alpha_m| / alpha_m

and the fragment is refused when the largest e_m exceeds `max_scale_error`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from senslora.core.allocation_result import Allocation
from senslora.core.peft_export import to_lora_config

DEFAULT_MAX_SCALE_ERROR = 0.02


@dataclass(frozen=True)
class AxolotlFragment:
    """The YAML fragment's keys, and the largest relative scale error rounding the alphas caused."""

    fields: dict[str, Any]
    largest_scale_error: float
    worst_module: str | None


def _integer_alpha(alpha: float) -> tuple[int, float]:
    rounded = max(1, round(alpha))
    return rounded, abs(rounded - alpha) / alpha


def axolotl_fragment(
    allocation: Allocation,
    *,
    lora_alpha: float,
    alpha_mode: str = "scale",
    use_rslora: bool = False,
    lora_dropout: float = 0.0,
    max_scale_error: float = DEFAULT_MAX_SCALE_ERROR,
) -> AxolotlFragment:
    """The allocation as Axolotl's adapter keys (see the module docstring for the rounding rule).

    Raises:
        ValueError: a negative max_scale_error, or rounding the alphas to integers would change some
            module's scale by more than max_scale_error (the message names it and a lora_alpha that works).
    """
    if not max_scale_error >= 0:
        raise ValueError(f"max_scale_error must be >= 0, got {max_scale_error}")
    config = to_lora_config(allocation, lora_alpha=lora_alpha, alpha_mode=alpha_mode, use_rslora=use_rslora)
    global_alpha, worst_error = _integer_alpha(float(config.lora_alpha))
    worst = "lora_alpha" if worst_error > 0 and alpha_mode == "fixed" else None
    if alpha_mode == "scale":
        worst_error = 0.0  # every module has its own alpha: the global one scales none of them
    alpha_pattern: dict[str, int] = {}
    for key, alpha in config.alpha_pattern.items():
        alpha_pattern[key], error = _integer_alpha(float(alpha))
        if error > worst_error:
            worst, worst_error = key, error
    if worst_error > max_scale_error:
        suggestion = (
            f"lora_alpha {allocation.avg_rank * max(1, round(lora_alpha / allocation.avg_rank)):g} "
            "(a whole multiple of the average rank)"
            if alpha_mode == "scale" and not use_rslora
            else "an integer lora_alpha"
            if alpha_mode == "fixed"
            else "a larger lora_alpha"
        )
        raise ValueError(
            f"axolotl takes integer alphas only, and rounding changes the scale of {worst!r} by "
            f"{100 * worst_error:.1f} % (more than --max-scale-error {max_scale_error:g}); choose {suggestion}, "
            "or allow the error with --max-scale-error"
        )
    fields: dict[str, Any] = {
        "adapter": "lora",
        "lora_r": int(config.r),
        "lora_alpha": global_alpha,
        "lora_dropout": lora_dropout,
        "lora_target_modules": sorted(config.target_modules),
        "lora_rank_pattern": {key: int(rank) for key, rank in config.rank_pattern.items()},
    }
    if alpha_pattern:
        fields["lora_alpha_pattern"] = alpha_pattern
    if use_rslora:
        fields["peft_use_rslora"] = True
    return AxolotlFragment(fields, worst_error, worst)
