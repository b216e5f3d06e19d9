"""Sensitivity-LoRA: LoRA with the per-module ranks of the sensitivity allocation.

The ranks (and, with alpha_mode "scale", an alpha per module keeping alpha/r equal to uniform LoRA's
lora_alpha/avg_rank) reach PEFT as `rank_pattern` / `alpha_pattern` of one stock `LoraConfig`
(`senslora.core.peft_export.to_lora_config`), so `PeftModel.from_pretrained` loads the adapter as it is.
The ranks come from the sensitivity pass on calibration batches, unless given (a ranks.json) or kept by a
resumed run.
"""

from __future__ import annotations

from torch import nn

from senslora.core.peft_export import to_lora_config
from senslora.finetune.methods.base import AdapterSettings, Method


class Senslora(Method):
    name = "senslora"
    uses_allocation = True

    def needs_calibration(self, has_ranks: bool) -> bool:
        return not has_ranks

    def build(self, model: nn.Module, settings: AdapterSettings) -> nn.Module:
        from peft import get_peft_model

        allocation = settings.allocation
        if allocation is None:
            raise ValueError("method 'senslora' needs an allocation (ranks.json)")
        missing = sorted(set(allocation.ranks) - {name for name, _ in model.named_modules()})
        if missing:
            raise ValueError(f"the ranks name modules this model does not have, e.g. {missing[0]!r}")
        config = to_lora_config(
            allocation, lora_alpha=settings.lora_alpha, alpha_mode=settings.alpha_mode, **settings.common_config()
        )
        return get_peft_model(model, config)
