"""AdaLoRA (PEFT): every target starts at init_r = ceil(1.5 avg_rank) and is pruned to target_r = avg_rank
(PEFT's default ratio 12 -> 8) by importance scores during training.

Its schedule: no pruning for the first tinit = total/10 steps, the final budget fixed for the last
tfinal = total/5, the ranks updated every deltaT = (total - tinit - tfinal)/10 steps in between;
`update_and_allocate(step)` must run after every optimizer step (`step_callbacks`). The importance scores
and the rank pattern fixed so far live outside the model's parameters, so a checkpoint carries them
(`checkpoint_state`) for an exact resume. Instruction data stays on the plain Trainer: SFTTrainer computes
its loss from its own log-probabilities and would drop the orthogonality penalty AdaLoRA adds to the loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from senslora.finetune.methods.base import AdapterSettings, Method

# AdaLoRA's running statistics, kept by its rank allocator (name -> tensor each).
ADALORA_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")
MIN_TOTAL_STEPS = 10


def _rank_allocator(model: nn.Module) -> Any:
    return getattr(getattr(model, "base_model", None), "rankallocator", None)


def _adalora_config(model: nn.Module) -> Any:
    return model.peft_config[model.base_model.trainable_adapter_name]


class AdaLora(Method):
    name = "adalora"
    trains_on_sft_trainer = False
    state_file = "adalora.safetensors"
    state_key = "adalora_rank_pattern"

    def uniform_rank(self, avg_rank: int) -> int:
        """init_r = ceil(1.5 avg_rank): AdaLoRA starts above the budget and prunes down to it."""
        return math.ceil(1.5 * avg_rank)

    def largest_avg_rank(self, full_rank: int) -> int:
        """ceil(1.5 a) <= full_rank."""
        return (2 * full_rank) // 3

    def describe_rank(self, rank: int) -> str:
        return f"init_r {rank} = ceil(1.5 x avg_rank)"

    def build(self, model: nn.Module, settings: AdapterSettings) -> nn.Module:
        from peft import AdaLoraConfig, get_peft_model

        names = self.uniform_targets(model, settings)
        total_steps = settings.total_steps
        if not total_steps or total_steps < MIN_TOTAL_STEPS:
            raise ValueError(f"method 'adalora' needs the total number of training steps (at least {MIN_TOTAL_STEPS})")
        tinit, tfinal = max(1, total_steps // 10), max(1, total_steps // 5)
        config = AdaLoraConfig(
            init_r=self.uniform_rank(settings.avg_rank),
            target_r=settings.avg_rank,
            lora_alpha=settings.lora_alpha,
            target_modules=names,
            total_step=total_steps,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, (total_steps - tinit - tfinal) // 10),
            **settings.common_config(),
        )
        return get_peft_model(model, config)

    def step_callbacks(self, model: nn.Module) -> list[Any]:
        return [adalora_callback(model)]

    def checkpoint_state(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], Any]:
        """AdaLoRA's running importance scores ("kind::module" -> tensor) and its rank pattern so far."""
        allocator = _rank_allocator(model)
        tensors = {
            f"{kind}::{name}": value.detach().contiguous().cpu()
            for kind in ADALORA_STATE
            for name, value in getattr(allocator, kind, {}).items()
        }
        return tensors, _adalora_config(model).rank_pattern

    def restore_checkpoint_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], value: Any) -> None:
        allocator = _rank_allocator(model)
        allocator.reset_ipt()
        device = next(model.parameters()).device
        for key, tensor in tensors.items():
            kind, name = key.split("::", 1)
            getattr(allocator, kind)[name] = tensor.to(device)
        _adalora_config(model).rank_pattern = value


def adalora_callback(model: nn.Module) -> Any:
    """PEFT's AdaLoRA recipe as a TrainerCallback: `update_and_allocate(global_step)` after each optimizer
    step, before the gradients are cleared; `total_step` is the Trainer's step count. (transformers is
    imported here, not at the top, so that reading options stays fast.)"""
    from transformers import TrainerCallback

    class AdaLoraCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            _adalora_config(model).total_step = state.max_steps

        def on_optimizer_step(self, args, state, control, **kwargs):
            model.base_model.update_and_allocate(state.global_step + 1)

    return AdaLoraCallback()
