"""`obd`: weight-aware Optimal-Brain-Damage saliency, an opt-in variant (not the paper's estimator).

The second-order loss change of a relative perturbation W_oj -> W_oj * (1 + eps) is
eps^2 / 2 * W_oj^2 * H_(oj),(oj); with the layer-wise Hessian proxy of `activation` (the same h_jj for
every output row o) each weight element gets the saliency

    s_oj = W_oj^2 * h_jj,   h_jj = (2 / N) * sum_n x_{j,n}^2

over N non-padding tokens (`activation_diagonals`). There are m = d_in * d_out entries per module. Unlike
`activation`, it depends on the weights, so layers reading the same input (query, key and value) no
longer tie. Cost: one no-grad forward per batch, as `activation`; no labels needed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from senslora.core.calibration import Batch
from senslora.core.estimators.activation import activation_diagonals
from senslora.core.targets import TargetLayer


def weight_out_in(layer: TargetLayer) -> torch.Tensor:
    """The layer's weight as a (d_out, d_in) tensor (Conv1D stores it transposed, as (d_in, d_out))."""
    weight = layer.weight.detach()
    return weight.t() if isinstance(layer.module, Conv1D) else weight


def check_float_weights(layers: list[TargetLayer], estimator: str) -> None:
    """Raise ValueError naming the first target whose weight is not floating point (a quantized base)."""
    for layer in layers:
        if not layer.weight.is_floating_point():
            raise ValueError(
                f"the {estimator} estimator needs full-precision weights, but {layer.name!r} holds a quantized "
                f"{layer.weight.dtype} weight ({type(layer.module).__name__}); use the activation estimator, or "
                "load the model unquantized for the sensitivity pass"
            )


def obd_diagonals(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
    calibration_tokens: str = "all",
) -> dict[str, torch.Tensor]:
    """s_oj = W_oj^2 * h_jj per weight element of every layer, flattened row-major from (d_out, d_in) (CPU).

    Raises:
        ValueError: a quantized target weight (checked before the pass), no batches, no non-padding
            token, or NaN/inf inputs (naming the module).
    """
    check_float_weights(layers, "obd")
    inputs = activation_diagonals(
        model,
        layers,
        batches,
        max_batches=max_batches,
        progress=progress,
        accumulator_device=accumulator_device,
        calibration_tokens=calibration_tokens,
    )
    saliencies: dict[str, torch.Tensor] = {}
    for layer in layers:
        weight = weight_out_in(layer).to(device="cpu", dtype=torch.float64)  # (d_out, d_in)
        # (d_out, d_in) * (1, d_in): each row o scaled by h, flattened to (d_out * d_in,)
        saliencies[layer.name] = (weight.square() * inputs[layer.name][None, :]).reshape(-1)
    return saliencies
