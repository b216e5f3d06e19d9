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
)
from senslora.core.estimators.fisher import mean_gradient_statistic
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
    return mean_gradient_statistic(
        model,
        layers,
        batches,
        lambda gradient: gradient,
        description="gradient-spectrum sensitivity",
        loss_fn=loss_fn,
        max_batches=max_batches,
        progress=progress,
        accumulator_device=accumulator_device,
    )


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
    # gradient: weight-shaped, (d_out, d_in) or (d_in, d_out) for Conv1D -> (min(d_in, d_out),) singular values
    return {name: torch.linalg.svdvals(gradient.double()) for name, gradient in means.items()}
