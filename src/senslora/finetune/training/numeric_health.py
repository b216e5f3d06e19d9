"""Numerical faults stop a run: each NaN/inf check of training, raised as a TrainingDivergedError.

- loss: a non-finite micro-batch loss on any process stops every process; the message names the step and
  the first module with a non-finite output (`first_non_finite_module`);
- gradients: checked before clipping (a NaN would spread to every gradient through the norm), naming the
  step and the parameter;
- weights: checked after every optimizer step and before a checkpoint is written, naming the step.

Every error says which checkpoint was the last good one (`RunState.divergence`); nothing is saved after the
fault. The gradient and weight checks themselves are `training._check_gradients` and `_check_weights`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from senslora.finetune.run_files.run_state import RunState
from senslora.finetune.training import settings as training
from senslora.finetune.training.settings import TrainingDivergedError, first_non_finite_module
from senslora.utils.distributed import all_processes_agree


def check_loss(run: RunState, model: nn.Module, inputs: dict[str, Any], value: float, step: int) -> None:
    """Stop every process when the loss of a micro-batch is not finite on any of them (a collective call)."""
    finite = math.isfinite(value)
    if not all_processes_agree(finite):
        source = first_non_finite_module(model, inputs) if not finite else None
        where = f"; first non-finite output in {source!r}" if source else ""
        shown = f" ({value})" if not finite else " on another process"
        raise run.divergence(f"non-finite loss{shown} at step {step}{where}")


def check_gradients(run: RunState, model: nn.Module, step: int) -> None:
    """Stop when a trainable parameter's gradient is not finite (before clipping and the optimizer step)."""
    try:
        training._check_gradients(model, step)
    except TrainingDivergedError as error:
        raise run.divergence(str(error)) from None


def check_weights(run: RunState, model: nn.Module, step: int) -> None:
    """Stop when a trainable weight is not finite after an optimizer step."""
    try:
        training._check_weights(model, step)
    except TrainingDivergedError as error:
        raise run.divergence(str(error)) from None


def check_saved_weights(run: RunState, weights: dict[str, torch.Tensor]) -> None:
    """Refuse to write a checkpoint whose trainable weights are not finite."""
    for name, value in weights.items():
        if not bool(torch.isfinite(value).all()):
            raise run.divergence(f"weight {name!r} is not finite at step {run.result.global_step}")
