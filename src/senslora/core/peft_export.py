"""From per-module ranks to a stock `peft.LoraConfig` (`rank_pattern` / `alpha_pattern`).

Every module with rank > 0 is a target, keyed by its full name; rank-0 modules are left out (PEFT
rejects r = 0). LoRA scales its update by alpha / r, rsLoRA (`use_rslora=True`) by alpha / sqrt(r),
so two scaling rules exist for unequal ranks:

- alpha_mode="scale" (EVA's rule): every module keeps the scale uniform (rs)LoRA has at the average
  rank, lora_alpha / avg_rank, or lora_alpha / sqrt(avg_rank) with rsLoRA:
      alpha(w) = lora_alpha * r(w) / avg_rank              (LoRA)
      alpha(w) = lora_alpha * sqrt(r(w) / avg_rank)        (rsLoRA)
- alpha_mode="fixed": alpha(w) = lora_alpha for every module (PEFT's plain `rank_pattern` behaviour),
  so modules with larger rank get a smaller scale: lora_alpha / r(w), or lora_alpha / sqrt(r(w)) with
  rsLoRA.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from peft import LoraConfig

from senslora.core.allocation_result import Allocation

ALPHA_MODES = ("scale", "fixed")


def _pattern_key(name: str, names: list[str]) -> str:
    """The key under which PEFT will find `name`: the name itself, escaped only if needed.

    PEFT treats pattern keys as regexes matched against the end of a module name; a full name only needs
    escaping when its dots would let it match another target too.
    """
    pattern = re.compile(rf"(.*\.)?({name})$")
    if any(other != name and pattern.match(other) for other in names):
        return re.escape(name)
    return name


def _scaled_alpha(lora_alpha: float, rank: int, avg_rank: float, use_rslora: bool) -> float:
    """alpha(w) giving rank r(w) uniform (rs)LoRA's scale at avg_rank: r/avg_rank, or sqrt(r/avg_rank) with rsLoRA."""
    ratio = rank / avg_rank
    return lora_alpha * (math.sqrt(ratio) if use_rslora else ratio)


def to_lora_config(
    allocation_or_ranks: Allocation | Mapping[str, int],
    *,
    lora_alpha: float,
    alpha_mode: str = "scale",
    **lora_kwargs: Any,
) -> LoraConfig:
    """A PEFT LoraConfig giving each module its allocated rank.

    Args:
        allocation_or_ranks: an Allocation, or a plain mapping of full module name -> rank.
        lora_alpha: uniform LoRA's alpha at the average rank.
        alpha_mode: "scale" (every module's scale equal to uniform LoRA's at the average rank:
            lora_alpha/avg_rank, or lora_alpha/sqrt(avg_rank) with use_rslora) or "fixed" (alpha kept).
        **lora_kwargs: passed to LoraConfig (task_type, lora_dropout, use_rslora, modules_to_save, ...).

    Raises:
        ValueError: unknown alpha_mode, negative ranks, or every rank is 0.
    """
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"unknown alpha_mode {alpha_mode!r}; allowed: {', '.join(ALPHA_MODES)}")
    for reserved in ("r", "target_modules", "rank_pattern", "alpha_pattern"):
        if reserved in lora_kwargs:
            raise ValueError(f"{reserved!r} is set from the allocation; do not pass it")
    if isinstance(allocation_or_ranks, Allocation):
        ranks = dict(allocation_or_ranks.ranks)
        avg_rank = allocation_or_ranks.avg_rank
    else:
        ranks = {str(k): int(v) for k, v in allocation_or_ranks.items()}
        avg_rank = sum(ranks.values()) / len(ranks) if ranks else 0.0
    if any(r < 0 for r in ranks.values()):
        raise ValueError("ranks must be >= 0")
    kept = {name: r for name, r in ranks.items() if r > 0}
    if not kept:
        raise ValueError("every module has rank 0: there is nothing to adapt")
    names = sorted(kept)
    keys = {name: _pattern_key(name, names) for name in names}
    default_rank = max(1, round(avg_rank))
    rank_pattern = {keys[n]: kept[n] for n in names}
    use_rslora = bool(lora_kwargs.get("use_rslora", False))
    alpha_pattern = (
        {keys[n]: _scaled_alpha(lora_alpha, kept[n], avg_rank, use_rslora) for n in names}
        if alpha_mode == "scale"
        else {}
    )
    return LoraConfig(
        r=default_rank,
        lora_alpha=lora_alpha,
        target_modules=names,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        **lora_kwargs,
    )
