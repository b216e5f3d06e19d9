"""What every fine-tuning method shares: the `Method` interface, the targets' shapes, parameter counts.

At the same avg_rank uniform LoRA trains avg_rank * sum(d_in + d_out) adapter parameters, which is
senslora's default budget (the params unit); the trainable parameter count of each method is reported
exactly. A uniform rank (AdaLoRA: its initial rank) above a target's full rank min(d_in, d_out) is refused:
a larger rank only adds parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from senslora.core.allocation_result import Allocation
from senslora.core.targets import find_target_layers

TASK_TYPES = {
    "classification": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "causal_lm": "CAUSAL_LM",
    "instruction": "CAUSAL_LM",
}


@dataclass(frozen=True)
class ParameterCount:
    """Trainable parameters of a PEFT model: adapter (lora_*) and the rest (task head), and all weights."""

    adapter: int
    other_trainable: int
    total: int

    @property
    def trainable(self) -> int:
        return self.adapter + self.other_trainable

    def to_dict(self) -> dict[str, int]:
        return {
            "adapter": self.adapter,
            "other_trainable": self.other_trainable,
            "trainable": self.trainable,
            "total": self.total,
        }


def count_parameters(model: nn.Module) -> ParameterCount:
    """Exact counts; AdaLoRA's rank-mask vector (lora_E) counts as adapter."""
    adapter = other = total = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            if "lora_" in name:
                adapter += parameter.numel()
            else:
                other += parameter.numel()
    return ParameterCount(adapter, other, total)


def target_module_names(model: nn.Module, target_modules: str | Sequence[str] | None) -> list[str]:
    """Full names of the target layers, resolved exactly as the sensitivity pass resolves them."""
    return [layer.name for layer in find_target_layers(model, target_modules)]


def target_shapes(model: nn.Module, target_modules: str | Sequence[str] | None) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of every target layer, by full name."""
    return {layer.name: (layer.d_in, layer.d_out) for layer in find_target_layers(model, target_modules)}


def uniform_lora_adapter_parameters(shapes: dict[str, tuple[int, int]], avg_rank: int) -> int:
    """Uniform LoRA's adapter parameter count on these targets: avg_rank * sum(d_in + d_out)."""
    return avg_rank * sum(d_in + d_out for d_in, d_out in shapes.values())


@dataclass(frozen=True)
class AdapterSettings:
    """What a method builds its adapter from (the run's options, and what the run computed)."""

    task: str
    avg_rank: int
    lora_alpha: float
    lora_dropout: float = 0.0
    target_modules: str | Sequence[str] | None = None
    allocation: Allocation | None = None  # senslora's ranks
    alpha_mode: str = "scale"
    total_steps: int | None = None  # AdaLoRA's schedule
    eva_batches: Iterable[dict[str, Any]] | None = None  # EVA's SVD inputs
    progress: bool = True

    def common_config(self) -> dict[str, Any]:
        """The LoraConfig/AdaLoraConfig fields every method sets the same way."""
        return {"lora_dropout": self.lora_dropout, "task_type": TASK_TYPES[self.task]}


class Method:
    """One fine-tuning method. The defaults are uniform LoRA's; a method overrides what it does differently."""

    name = ""
    # The ranks come from the sensitivity allocation (senslora), not from one uniform rank.
    uses_allocation = False
    # Instruction data trains on TRL's SFTTrainer unless the method's loss is more than the model's
    # (AdaLoRA adds an orthogonality penalty to the model's loss, which SFTTrainer would drop).
    trains_on_sft_trainer = True

    def needs_calibration(self, has_ranks: bool) -> bool:
        """Whether the run must build calibration batches (`has_ranks`: ranks given or resumed)."""
        return False

    def uniform_rank(self, avg_rank: int) -> int:
        """The rank every target gets (a uniform method), at the run's average rank."""
        return avg_rank

    def largest_avg_rank(self, full_rank: int) -> int:
        """The largest avg_rank whose uniform rank fits `full_rank`."""
        return full_rank

    def check_uniform_rank_fits(self, avg_rank: int, shapes: dict[str, tuple[int, int]]) -> None:
        """Raise ValueError if the uniform rank exceeds the full rank min(d_in, d_out) of a target."""
        rank = self.uniform_rank(avg_rank)
        name = min(shapes, key=lambda n: (min(shapes[n]), n))
        if rank > min(shapes[name]):
            raise ValueError(
                f"method {self.name!r} gives every target {self.describe_rank(rank)}, but {name!r} (d_in, d_out) = "
                f"{shapes[name]} has full rank {min(shapes[name])} = min(d_in, d_out); a larger rank only adds "
                f"parameters: lower avg_rank to at most {self.largest_avg_rank(min(shapes[name]))}"
            )

    def describe_rank(self, rank: int) -> str:
        return f"rank {rank}"

    def uniform_targets(self, model: nn.Module, settings: AdapterSettings) -> list[str]:
        """The target names of a uniform method, after checking that its rank fits every one of them."""
        shapes = target_shapes(model, settings.target_modules)
        self.check_uniform_rank_fits(settings.avg_rank, shapes)
        return list(shapes)

    def build(self, model: nn.Module, settings: AdapterSettings) -> nn.Module:
        """Wrap `model` in this method's PEFT model."""
        raise NotImplementedError

    def step_callbacks(self, model: nn.Module) -> list[Any]:
        """transformers.TrainerCallback objects the method needs during training (none by default)."""
        return []

    # Where a checkpoint keeps that state: a safetensors file in checkpoint-N/senslora/ and a key of its
    # state.json (None: the method has none).
    state_file: str | None = None
    state_key: str | None = None

    def checkpoint_state(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], Any] | None:
        """State outside the model's parameters that a checkpoint must carry: (tensors, JSON value)."""
        return None

    def restore_checkpoint_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], value: Any) -> None:
        """Put back what `checkpoint_state` saved."""
