"""Uniform LoRA: rank r = avg_rank on every target, scale lora_alpha / r (the baseline at equal budget)."""

from __future__ import annotations

from torch import nn

from senslora.finetune.methods.base import AdapterSettings, Method


class Lora(Method):
    name = "lora"

    def build(self, model: nn.Module, settings: AdapterSettings) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        names = self.uniform_targets(model, settings)
        config = LoraConfig(
            r=settings.avg_rank, lora_alpha=settings.lora_alpha, target_modules=names, **settings.common_config()
        )
        return get_peft_model(model, config)
