"""`estimate_sensitivity`: one entry point for every estimator, returning per-module metrics.

calibration batches --(estimator)--> Hessian diagonal per target layer --(metrics)--> ModuleSensitivity
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
from torch import nn

from senslora.core.calibration import CALIBRATION_TOKENS, Batch, LossFn
from senslora.core.estimators import (
    activation_diagonals,
    fisher_diagonals,
    gradient_spectra,
    hutchinson_diagonals,
    kfac_diagonals,
    obd_diagonals,
)
from senslora.core.metrics import ModuleSensitivity, topk_count
from senslora.core.targets import find_target_layers

# The paper's three, then the opt-in variants of docs/estimators.md.
ESTIMATORS = ("activation", "fisher", "hutchinson", "obd", "kfac", "gradient_spectrum")


def estimate_sensitivity(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    estimator: str = "activation",
    target_modules: str | Sequence[str] | None = None,
    topk_fraction: float = 0.5,
    energy_threshold: float = 0.85,
    max_batches: int | None = None,
    num_probes: int = 4,
    per_example: bool = False,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
    calibration_tokens: str = "all",
) -> dict[str, ModuleSensitivity]:
    """Measure how sensitive the loss is to each target weight matrix on calibration batches.

    Args:
        model: a `transformers` model (or any module called as `model(**batch)`).
        batches: iterable of dicts of model inputs (input_ids, attention_mask, and labels for the
            loss-based estimators). Padding (attention_mask == 0) never counts.
        estimator: "activation" (diag 2XX^T/N, forward only), "fisher" (E[g^2]) or "hutchinson"
            (E[z * Hz]); opt-in variants: "obd" (W^2 * h, forward only), "kfac" (E[x^2] * E[g^2]) and
            "gradient_spectrum" (singular values of the mean gradient, kept in `spectrum`; the diagonal
            is their squares).
        target_modules: None (every Linear/Conv1D except output heads), names/suffixes, or a regex.
        topk_fraction: k = max(1, floor(m * topk_fraction)) entries for the top-k metric.
        energy_threshold: alpha of the effective-rank metric.
        max_batches: use at most this many batches.
        num_probes: Hutchinson probes per batch.
        per_example: `fisher` from single-example gradients (true empirical Fisher) instead of batches.
        loss_fn: `loss_fn(outputs, batch) -> scalar` instead of the model's own `.loss`.
        seed: seed of the Hutchinson probes.
        progress: show a progress bar over batches.
        accumulator_device: where accumulators live (e.g. "cpu" to offload); default the model's device.
        calibration_tokens: forward-only estimators (activation, obd): "all" non-padding tokens, or
            "completion", only the positions a completion-only loss scores (labels[t + 1] != -100), as the
            loss-based estimators count them on instruction data. The loss-based ones take "all" only: their
            loss already leaves the prompt out.

    Returns:
        ModuleSensitivity per target module, keyed by full module name, in model order.

    Raises:
        ValueError: unknown estimator, bad option values, no matching layers, empty batches, missing
            loss, or NaN/inf statistics (naming the module). The model is left exactly as found.
    """
    # Refuse bad options before the model is touched or a batch is read.
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    topk_count(1, topk_fraction)  # validates the range
    if not 0.0 < energy_threshold <= 1.0:
        raise ValueError(f"energy_threshold must lie in (0, 1], got {energy_threshold}")
    if calibration_tokens not in CALIBRATION_TOKENS:
        raise ValueError(f"unknown calibration_tokens {calibration_tokens!r}; allowed: {', '.join(CALIBRATION_TOKENS)}")
    if calibration_tokens != "all" and estimator not in ("activation", "obd"):
        raise ValueError(
            f"calibration_tokens={calibration_tokens!r} applies to the forward-only estimators (activation, obd); "
            f"the {estimator} estimator's loss already leaves out what the labels mask"
        )
    # One pass over the batches with the chosen estimator: a diagonal per target layer (d_in entries for
    # `activation`, d_in * d_out for the weight-level ones, min(d_in, d_out) for `gradient_spectrum`).
    layers = find_target_layers(model, target_modules)
    common = {"max_batches": max_batches, "progress": progress, "accumulator_device": accumulator_device}
    spectra: dict[str, torch.Tensor] = {}
    if estimator == "activation":
        diagonals = activation_diagonals(model, layers, batches, calibration_tokens=calibration_tokens, **common)
    elif estimator == "fisher":
        diagonals = fisher_diagonals(model, layers, batches, per_example=per_example, loss_fn=loss_fn, **common)
    elif estimator == "obd":
        diagonals = obd_diagonals(model, layers, batches, calibration_tokens=calibration_tokens, **common)
    elif estimator == "kfac":
        diagonals = kfac_diagonals(model, layers, batches, loss_fn=loss_fn, **common)
    elif estimator == "gradient_spectrum":
        spectra = gradient_spectra(model, layers, batches, loss_fn=loss_fn, **common)
        diagonals = {name: values.square() for name, values in spectra.items()}
    else:
        diagonals = hutchinson_diagonals(
            model, layers, batches, num_probes=num_probes, seed=seed, loss_fn=loss_fn, **common
        )
    # The three metrics of each diagonal (docs/method.md, section 3), in model order.
    sensitivities = {
        layer.name: ModuleSensitivity.from_diagonal(
            layer.name,
            diagonals[layer.name].double().numpy(),
            d_in=layer.d_in,
            d_out=layer.d_out,
            topk_fraction=topk_fraction,
            energy_threshold=energy_threshold,
        )
        for layer in layers
    }
    # `gradient_spectrum` also keeps the singular values themselves, which spectrum allocation spends by.
    return {
        name: replace(item, spectrum=tuple(spectra[name].tolist())) if name in spectra else item
        for name, item in sensitivities.items()
    }
