"""`gradient_spectrum`: singular values of each target's mean calibration gradient (opt-in, not the paper's).

    G_w = (1 / B) * sum_b d loss_b / d W        (B batches, each batch's loss as the model reduces it)
    sigma_1(w) >= sigma_2(w) >= ... >= sigma_min(d_in, d_out)(w)  = singular values of G_w

The best rank-r weight step of Frobenius norm eps lowers the loss to first order by
eps * sqrt(sum_{i<=r} sigma_i^2) (Eckart-Young), so sigma_k^2 is what the k-th rank of a LoRA update
can add: `senslora.core.spectrum_allocation` spends the budget by it. As a diagonal for the usual metrics the
estimator reports the spectral energies sigma_i^2 (m = min(d_in, d_out) entries; their sum, the trace, is
||G_w||_F^2). Cost: one forward and one backward per batch, as `fisher`, then one SVD per module; needs
labels. Gradients are summed the moment autograd finishes each weight's gradient, which is then freed.
"""

from __future__ import annotations

from collections.abc import Iterable

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
)
from senslora.core.estimators.fisher import prepare_target_gradients
from senslora.core.targets import TargetLayer


def mean_gradients(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """G_w, the loss gradient of every target weight averaged over batches (weight-shaped, CPU).

    Raises:
        ValueError: a quantized target weight, no batches, no loss (labels missing), NaN/inf gradients.
    """
    device = model_device(model)
    acc_device = torch.device(accumulator_device) if accumulator_device else device
    sums = {
        t.name: torch.zeros(t.weight.shape, dtype=torch.promote_types(t.weight.dtype, torch.float32), device=acc_device)
        for t in layers
    }
    count = torch.zeros((), dtype=torch.float64)
    with preserved_model_state(model) as hooks:
        eval_mode_keeping_checkpointing(model)
        weights = prepare_target_gradients(model, layers)
        for layer, weight in zip(layers, weights, strict=True):
            accumulator = sums[layer.name]

            def add_and_free(param: torch.Tensor, accumulator: torch.Tensor = accumulator) -> None:
                accumulator += param.grad.to(device=accumulator.device, dtype=accumulator.dtype)
                param.grad = None

            hooks.add(weight.register_post_accumulate_grad_hook(add_and_free))
        for batch in calibration_batches(
            batches, max_batches=max_batches, progress=progress, description="gradient-spectrum sensitivity"
        ):
            compute_loss(model, move_batch(batch, device), loss_fn).backward()
            count += 1
    # Reduce before any check, so that a process with an empty shard still joins every collective call.
    total = all_reduce_sum(count)
    if total.item() == 0:
        raise ValueError("no calibration batches: the batches iterable is empty")
    means: dict[str, torch.Tensor] = {}
    for layer in layers:
        summed = all_reduce_sum(sums.pop(layer.name))
        check_finite(layer.name, summed, "gradients")
        means[layer.name] = summed.div_(total.to(summed.dtype)).cpu()
    return means


def gradient_spectra(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Singular values of G_w per target, descending, min(d_in, d_out) of them (float64, CPU).

    Raises:
        ValueError: as `mean_gradients`.
    """
    means = mean_gradients(
        model,
        layers,
        batches,
        loss_fn=loss_fn,
        max_batches=max_batches,
        progress=progress,
        accumulator_device=accumulator_device,
    )
    return {name: torch.linalg.svdvals(gradient.double()) for name, gradient in means.items()}
