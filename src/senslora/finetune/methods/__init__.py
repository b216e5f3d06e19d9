"""The fine-tuning methods, one module each; the file list is the feature list.

    senslora.py  LoRA with per-module ranks from the sensitivity allocation (rank_pattern, alpha_pattern)
    lora.py      uniform LoRA at rank avg_rank on the same targets
    adalora.py   PEFT AdaLoRA: init_r = ceil(1.5 avg_rank) pruned to avg_rank, update_and_allocate after
                 every optimizer step, its importance scores carried by checkpoints
    eva.py       PEFT EVA: forward-only SVD of the layer inputs on calibration batches at initialisation
    base.py      what every method shares: the `Method` interface, target shapes, parameter counts

Each `Method` says how it builds its PEFT model, whether it needs calibration batches, which rank every
target gets (uniform methods), whether instruction data may train on TRL's SFTTrainer, what runs after
each optimizer step and what a checkpoint must carry for an exact resume.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from senslora.finetune.methods.adalora import AdaLora
from senslora.finetune.methods.base import (
    TASK_TYPES,
    AdapterSettings,
    Method,
    ParameterCount,
    count_parameters,
    target_module_names,
    target_shapes,
    uniform_lora_adapter_parameters,
)
from senslora.finetune.methods.eva import Eva
from senslora.finetune.methods.lora import Lora
from senslora.finetune.methods.senslora import Senslora

REGISTRY: dict[str, Method] = {method.name: method for method in (Senslora(), Lora(), AdaLora(), Eva())}
METHODS = tuple(REGISTRY)


def get_method(name: str) -> Method:
    """The method called `name`; ValueError lists the allowed names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return REGISTRY[name]


def uniform_rank(method: str, avg_rank: int) -> int:
    """The rank every target gets from a uniform method (AdaLoRA: its initial rank)."""
    return get_method(method).uniform_rank(avg_rank)


def check_uniform_rank_fits(method: str, avg_rank: int, shapes: dict[str, tuple[int, int]]) -> None:
    """Raise ValueError if a uniform method's rank exceeds the full rank min(d_in, d_out) of a target."""
    get_method(method).check_uniform_rank_fits(avg_rank, shapes)


def build_peft_model(model: nn.Module, method: str, **settings: Any) -> nn.Module:
    """Wrap `model` in the PEFT model of `method` (keyword arguments: the fields of `AdapterSettings`).

    Raises:
        ValueError: unknown method or task, missing allocation (senslora), missing total_steps (adalora)
            or calibration batches (eva), a uniform rank above a target's full rank.
    """
    chosen = get_method(method)
    adapter = AdapterSettings(**settings)
    if adapter.task not in TASK_TYPES:
        raise ValueError(f"unknown task {adapter.task!r}; allowed: {', '.join(TASK_TYPES)}")
    return chosen.build(model, adapter)


__all__ = [
    "METHODS",
    "REGISTRY",
    "TASK_TYPES",
    "AdapterSettings",
    "Method",
    "ParameterCount",
    "build_peft_model",
    "check_uniform_rank_fits",
    "count_parameters",
    "get_method",
    "target_module_names",
    "target_shapes",
    "uniform_lora_adapter_parameters",
    "uniform_rank",
]
