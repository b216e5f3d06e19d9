"""`fisher`: the empirical Fisher diagonal, E[g^2], as a loss-aware Hessian-diagonal estimate.

    F_ii = (1 / B) * sum_b (d loss_b / d w_i)^2

with b running over batches (`per_example=False`: gradients of each batch's mean loss) or over single
examples (`per_example=True`: the true empirical Fisher). Squared gradients are accumulated the moment
autograd finishes each weight's gradient (a post-accumulate-grad hook) and the gradient is freed at once,
so no more target gradients are alive at any time than autograd itself needs. Only the target weights
require grad during the pass; accumulators are float32 (or wider).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from senslora.core.calibration import (
    Batch,
    LossFn,
    all_reduce_sum,
    calibration_batches,
    check_finite,
    compute_loss,
    eval_mode_keeping_checkpointing,
    model_device,
    move_batch,
    preserved_model_state,
    single_examples,
)
from senslora.core.targets import TargetLayer


def prepare_target_gradients(model: nn.Module, layers: list[TargetLayer]) -> list[nn.Parameter]:
    """Let only the target weights require grad; return them in layer order.

    Raises:
        ValueError: a target weight is not floating point (a quantized base, e.g. bitsandbytes 4-bit):
            its gradient does not exist, so loss-based estimators need a full-precision model.
    """
    for layer in layers:
        if not layer.weight.is_floating_point():
            raise ValueError(
                f"loss-based sensitivity needs full-precision weights, but {layer.name!r} holds a quantized "
                f"{layer.weight.dtype} weight ({type(layer.module).__name__}); use the activation estimator, or "
                "load the model unquantized for the sensitivity pass"
            )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    weights = [layer.weight for layer in layers]
    for weight in weights:
        weight.requires_grad_(True)
    return weights


def mean_gradient_statistic(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    description: str,
    per_example: bool = False,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """E[transform(dL/dW)] per target weight over the backward passes (weight-shaped, CPU), summed over
    processes: each gradient is transformed and added as soon as autograd finishes it, then freed.

    Raises:
        ValueError: a quantized target weight, no batches, no loss (labels missing), NaN/inf gradients.
    """
    device = model_device(model)
    acc_device = torch.device(accumulator_device) if accumulator_device else None
    # Weight-shaped accumulators: (d_out, d_in) for nn.Linear, (d_in, d_out) for Conv1D (stored transposed).
    sums = {
        t.name: torch.zeros(
            t.weight.shape,
            dtype=torch.promote_types(t.weight.dtype, torch.float32),
            device=acc_device or device,
        )
        for t in layers
    }
    count = torch.zeros((), dtype=torch.float64)  # () backward passes: batches, or examples with per_example
    with preserved_model_state(model) as hooks:
        eval_mode_keeping_checkpointing(model)  # checkpointed layers recompute activations in the backward
        weights = prepare_target_gradients(model, layers)
        for layer, weight in zip(layers, weights, strict=True):
            accumulator = sums[layer.name]

            def add_and_free(param: torch.Tensor, accumulator: torch.Tensor = accumulator) -> None:
                # param.grad and transform(param.grad): weight-shaped, as the accumulator
                accumulator += transform(param.grad.to(accumulator.dtype)).to(accumulator.device)
                param.grad = None

            hooks.add(weight.register_post_accumulate_grad_hook(add_and_free))
        for batch in calibration_batches(batches, max_batches=max_batches, progress=progress, description=description):
            batch = move_batch(batch, device)
            pieces = single_examples(batch) if per_example else (batch,)
            for piece in pieces:
                compute_loss(model, piece, loss_fn).backward()
                count += 1
    # Reduce before any check, so that a process with an empty shard still joins every collective call.
    total = all_reduce_sum(count)
    if total.item() == 0:
        raise ValueError("no calibration batches: the batches iterable is empty")
    means: dict[str, torch.Tensor] = {}
    for layer in layers:
        summed = all_reduce_sum(sums.pop(layer.name))
        check_finite(layer.name, summed, "gradients")
        # In place: the accumulator becomes the result, so no second copy of every target's size is made.
        means[layer.name] = summed.div_(total.to(summed.dtype)).cpu()  # weight-shaped
    return means


def fisher_diagonals(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    per_example: bool = False,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the task loss per weight element of every layer (flattened, CPU).

    Raises:
        ValueError: no batches, no loss (labels missing), or NaN/inf gradients (naming the module).
    """
    means = mean_gradient_statistic(
        model,
        layers,
        batches,
        torch.square,
        description="fisher sensitivity",
        per_example=per_example,
        loss_fn=loss_fn,
        max_batches=max_batches,
        progress=progress,
        accumulator_device=accumulator_device,
    )
    return {name: mean.reshape(-1) for name, mean in means.items()}  # (d_in * d_out,) each
