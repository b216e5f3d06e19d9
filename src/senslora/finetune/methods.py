"""The four fine-tuning methods as stock PEFT models, at the same rank budget.

- `senslora`: LoRA with per-module ranks from `allocate_ranks` (`rank_pattern` / `alpha_pattern`);
- `lora`: uniform rank r = avg_rank on the same target modules;
- `adalora`: PEFT AdaLoRA, starting at init_r = ceil(1.5 * avg_rank) and pruned to target_r = avg_rank
  (PEFT's default ratio 12 -> 8); `update_and_allocate(step)` must be called after every optimizer step,
  which `senslora.finetune.engine` does (a Trainer callback);
- `eva`: PEFT EVA, forward-only SVD of layer inputs at initialisation, ranks redistributed within the
  uniform budget (rho = 2 caps a module at twice the average).
At the same avg_rank uniform LoRA trains avg_rank * sum(d_in + d_out) adapter parameters, which is
senslora's default budget (the params unit); the trainable parameter count of each is reported exactly.
A uniform rank (AdaLoRA: its initial rank) above a target's full rank min(d_in, d_out) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from senslora.core.allocation import Allocation
from senslora.core.peft_export import to_lora_config
from senslora.core.targets import find_target_layers

METHODS = ("senslora", "lora", "adalora", "eva")
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


def uniform_rank(method: str, avg_rank: int) -> int:
    """The rank every target gets from a uniform method: avg_rank, or AdaLoRA's init_r = ceil(1.5 avg_rank)."""
    return math.ceil(1.5 * avg_rank) if method == "adalora" else avg_rank


def largest_uniform_avg_rank(method: str, full_rank: int) -> int:
    """The largest avg_rank whose uniform rank fits `full_rank` (AdaLoRA: ceil(1.5 a) <= full_rank)."""
    return (2 * full_rank) // 3 if method == "adalora" else full_rank


def uniform_lora_adapter_parameters(shapes: dict[str, tuple[int, int]], avg_rank: int) -> int:
    """Uniform LoRA's adapter parameter count on these targets: avg_rank * sum(d_in + d_out)."""
    return avg_rank * sum(d_in + d_out for d_in, d_out in shapes.values())


def check_uniform_rank_fits(method: str, avg_rank: int, shapes: dict[str, tuple[int, int]]) -> None:
    """Raise ValueError if a uniform method's rank exceeds the full rank min(d_in, d_out) of a target."""
    rank = uniform_rank(method, avg_rank)
    name = min(shapes, key=lambda n: (min(shapes[n]), n))
    if rank > min(shapes[name]):
        what = f"init_r {rank} = ceil(1.5 x avg_rank)" if method == "adalora" else f"rank {rank}"
        raise ValueError(
            f"method {method!r} gives every target {what}, but {name!r} (d_in, d_out) = {shapes[name]} has full "
            f"rank {min(shapes[name])} = min(d_in, d_out); a larger rank only adds parameters: lower avg_rank to at "
            f"most {largest_uniform_avg_rank(method, min(shapes[name]))}"
        )


def _eva_layer_rows(layer_input: Any, token_indices: Any, layer_name: str) -> Any:
    """EVA's SVD input for one layer: non-padding token rows, or one row per example (BERT's pooler)."""
    x = layer_input[0] if isinstance(layer_input, tuple | list) else layer_input
    if x.dim() >= 3:
        return x[token_indices.T.unbind()]
    return x.reshape(-1, x.shape[-1]).contiguous()


def build_peft_model(
    model: nn.Module,
    method: str,
    *,
    task: str,
    avg_rank: int,
    lora_alpha: float,
    lora_dropout: float = 0.0,
    target_modules: str | Sequence[str] | None = None,
    allocation: Allocation | None = None,
    alpha_mode: str = "scale",
    total_steps: int | None = None,
    eva_batches: Iterable[dict[str, Any]] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Wrap `model` in a PEFT model for `method`.

    Raises:
        ValueError: unknown method or task, missing allocation (senslora), missing total_steps (adalora)
            or calibration batches (eva).
    """
    from peft import AdaLoraConfig, EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if task not in TASK_TYPES:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASK_TYPES)}")
    task_type = TASK_TYPES[task]
    common = {"lora_dropout": lora_dropout, "task_type": task_type}
    if method == "senslora":
        if allocation is None:
            raise ValueError("method 'senslora' needs an allocation (ranks.json)")
        missing = sorted(set(allocation.ranks) - {name for name, _ in model.named_modules()})
        if missing:
            raise ValueError(f"the ranks name modules this model does not have, e.g. {missing[0]!r}")
        config = to_lora_config(allocation, lora_alpha=lora_alpha, alpha_mode=alpha_mode, **common)
        return get_peft_model(model, config)
    shapes = target_shapes(model, target_modules)
    check_uniform_rank_fits(method, avg_rank, shapes)
    names = list(shapes)
    if method == "lora":
        return get_peft_model(model, LoraConfig(r=avg_rank, lora_alpha=lora_alpha, target_modules=names, **common))
    if method == "adalora":
        if not total_steps or total_steps < 10:
            raise ValueError("method 'adalora' needs the total number of training steps (at least 10)")
        tinit, tfinal = max(1, total_steps // 10), max(1, total_steps // 5)
        config = AdaLoraConfig(
            init_r=uniform_rank(method, avg_rank),
            target_r=avg_rank,
            lora_alpha=lora_alpha,
            target_modules=names,
            total_step=total_steps,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, (total_steps - tinit - tfinal) // 10),
            **common,
        )
        return get_peft_model(model, config)
    if eva_batches is None:
        raise ValueError("method 'eva' needs calibration batches for its SVD initialisation")
    config = LoraConfig(
        r=avg_rank,
        lora_alpha=lora_alpha,
        target_modules=names,
        init_lora_weights="eva",
        eva_config=EvaConfig(rho=2.0, use_label_mask=task in ("causal_lm", "instruction")),
        **common,
    )
    peft_model = get_peft_model(model, config)
    initialize_lora_eva_weights(
        peft_model, eva_batches, prepare_layer_inputs_fn=_eva_layer_rows, show_progress_bar=progress
    )
    return peft_model
