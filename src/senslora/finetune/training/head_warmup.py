"""Head warm-up: train only a freshly initialised task head for a few steps before loss-based calibration.

A random classification head makes the task-loss gradients (and so `fisher` / `hutchinson` sensitivity)
overrate the modules next to it. Training the head alone first, with the base frozen, makes the gradients
reflect the task instead. Only parameters under a task-head module (classifier, score, qa_outputs, ...;
never the language-model head, which is pretrained and often tied) move; the warmed head is kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from senslora.core.calibration import compute_loss, model_device, move_batch

TASK_HEAD_NAMES = frozenset({"classifier", "score", "qa_outputs", "pre_classifier"})


def task_head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters under a task-head module, by full name."""
    return {
        name: parameter
        for name, parameter in model.named_parameters()
        if any(part in TASK_HEAD_NAMES for part in name.split(".")[:-1])
    }


def warm_up_head(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    *,
    steps: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the task head alone for `steps` AdamW steps over the (cycled) batches; the rest stays frozen.

    The warmed head is kept; to measure with it and then train from the original head, take
    `snapshot_head` before and `restore_head` after the sensitivity pass.

    Returns:
        A JSON-able record: steps, learning rate, trained parameter names and count, loss before and after.

    Raises:
        ValueError: steps < 1, no batches, no task head, or batches without labels.
    """
    if steps < 1:
        raise ValueError(f"head warm-up steps must be >= 1, got {steps}")
    if not batches:
        raise ValueError("head warm-up needs calibration batches")
    head = task_head_parameters(model)
    if not head:
        raise ValueError("head warm-up needs a task head (classifier, score, ...); this model has none")
    device = model_device(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    losses: list[float] = []
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in head.values():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(list(head.values()), lr=learning_rate)
        torch.manual_seed(seed)
        model.eval()  # no dropout: the base acts exactly as at calibration time
        cycle = itertools.cycle(batches)
        for _ in tqdm(range(steps), desc="head warm-up", disable=not progress, leave=False):
            loss = compute_loss(model, move_batch(next(cycle), device), None)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])
            parameter.grad = None
        model.train(was_training)
    return {
        "steps": steps,
        "learning_rate": learning_rate,
        "parameters": sorted(head),
        "parameter_count": sum(p.numel() for p in head.values()),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def snapshot_head(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the task-head parameters."""
    return {name: parameter.detach().clone() for name, parameter in task_head_parameters(model).items()}


def restore_head(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Put back task-head parameters taken with `snapshot_head`."""
    head = task_head_parameters(model)
    with torch.no_grad():
        for name, value in snapshot.items():
            head[name].copy_(value)
