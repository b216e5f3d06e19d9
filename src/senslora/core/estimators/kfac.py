"""`kfac`: the output-aware Kronecker-factored diagonal, an opt-in variant (not the paper's estimator).

K-FAC approximates a linear layer's Fisher block by E[x x^T] (x) E[g g^T], x the layer input and
g = dL/dy the loss gradient w.r.t. the layer output. Its diagonal, one entry per weight element (o, j):

    s_oj = E[x_j^2] * E[g_o^2]
    E[x_j^2] = (1 / N) * sum_n x_{j,n}^2,   E[g_o^2] = (1 / N) * sum_n g_{o,n}^2

Expectation: the mean over the N non-padding tokens (attention_mask != 0) of all batches, the same
tokens for both factors (a layer without a token axis, BERT's pooler, counts one row per example). Each
token is one sample, as in K-FAC's "expand" setting for shared weights, so the estimate does not grow
with sequence length or the number of batches, and E[x_j^2] is exactly half the `activation` estimate:
`kfac` is the paper's input statistic times an output-side factor, which tells apart layers that read
the same input (query, key, value) and lifts the attention output projection. g is the gradient of each
batch's loss as the model reduces it (a mean over examples or target tokens), so every module carries
the same 1 / batch-size scale, which the allocation's fusion weights cancel.

Cost: one forward and one backward per batch, as `fisher`; needs labels. Gradients reach the outputs
because the target weights require grad during the pass; each weight gradient is freed the moment
autograd finishes it. Inputs are counted only for outputs that receive a gradient, so a forward that
gradient checkpointing replays in the backward is not counted twice.
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
    token_mask,
)
from senslora.core.estimators.fisher import prepare_target_gradients
from senslora.core.targets import TargetLayer


def masked_square_sums(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squares per feature over non-padding rows, number of rows), both float64.

    `values` is (batch, tokens, ..., features) with a (batch, tokens) mask, or (batch * tokens, features),
    or has no token axis (every row counts).
    """
    squares = values.detach().double().square()  # as values: (..., features)
    if mask is not None:
        mask = mask.to(values.device)
    if mask is not None and squares.dim() >= 3 and tuple(squares.shape[:2]) == tuple(mask.shape):
        weights = mask.to(squares.dtype)  # (batch, tokens)
        sums = torch.einsum("bt...d,bt->d", squares, weights)  # (features,)
        # () rows: each non-padding token counts once per row of its (..., features) block (e.g. per head)
        rows = weights.sum() * (squares[0, 0].numel() // squares.shape[-1])
    elif mask is not None and squares.dim() == 2 and squares.shape[0] == mask.numel() != mask.shape[0]:
        weights = mask.reshape(-1).to(squares.dtype)  # (batch * tokens,)
        sums, rows = weights @ squares, weights.sum()  # (features,), ()
    else:
        flat = squares.reshape(-1, squares.shape[-1])  # (rows, features)
        sums, rows = flat.sum(0), torch.tensor(float(flat.shape[0]), dtype=torch.float64, device=values.device)
    return sums, rows


class _KroneckerFactors:
    """Hook state: per layer, sums of squared inputs and output gradients, and the rows counted."""

    def __init__(self, layers: list[TargetLayer], device: torch.device) -> None:
        def zeros(size: int | tuple[()]) -> torch.Tensor:
            return torch.zeros(size, dtype=torch.float64, device=device)

        self.input_sums = {t.name: zeros(t.d_in) for t in layers}  # (d_in,)
        self.gradient_sums = {t.name: zeros(t.d_out) for t in layers}  # (d_out,)
        self.input_rows = {t.name: zeros(()) for t in layers}  # ()
        self.gradient_rows = {t.name: zeros(()) for t in layers}  # ()
        self.mask: torch.Tensor | None = None

    def hook_for(self, name: str):
        def forward_hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            if not (isinstance(output, torch.Tensor) and output.requires_grad):
                return
            mask = self.mask
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))  # (batch, tokens, ..., d_in) or flat
            input_sums, input_rows = masked_square_sums(x, mask)  # (d_in,), ()

            def gradient_hook(gradient: torch.Tensor) -> None:  # dL/dy, shaped as the output: (..., d_out)
                gradient_sums, gradient_rows = masked_square_sums(gradient, mask)  # (d_out,), ()
                target = self.input_sums[name].device
                self.input_sums[name] += input_sums.to(target)
                self.input_rows[name] += input_rows.to(target)
                self.gradient_sums[name] += gradient_sums.to(target)
                self.gradient_rows[name] += gradient_rows.to(target)

            output.register_hook(gradient_hook)

        return forward_hook


def kfac_diagonals(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """s_oj = E[x_j^2] * E[g_o^2] per weight element, flattened row-major from (d_out, d_in) (float64, CPU).

    Raises:
        ValueError: a quantized target weight, no batches, no loss (labels missing), a layer whose output
            never received a gradient, or NaN/inf statistics (naming the module).
    """
    device = model_device(model)
    state = _KroneckerFactors(layers, torch.device(accumulator_device) if accumulator_device else device)
    count = torch.zeros((), dtype=torch.float64)  # () batches this process ran
    with preserved_model_state(model) as hooks:
        eval_mode_keeping_checkpointing(model)
        weights = prepare_target_gradients(model, layers)
        for layer, weight in zip(layers, weights, strict=True):
            hooks.add(layer.module.register_forward_hook(state.hook_for(layer.name), with_kwargs=True))

            def free(param: torch.Tensor) -> None:  # only the output gradients are wanted
                param.grad = None

            hooks.add(weight.register_post_accumulate_grad_hook(free))
        for batch in calibration_batches(
            batches, max_batches=max_batches, progress=progress, description="kfac sensitivity"
        ):
            batch = move_batch(batch, device)
            state.mask = token_mask(batch)
            compute_loss(model, batch, loss_fn).backward()
            count += 1
    # Reduce before any check, so that a process with an empty shard still joins every collective call.
    if all_reduce_sum(count).item() == 0:
        raise ValueError("no calibration batches: the batches iterable is empty")
    diagonals: dict[str, torch.Tensor] = {}
    for layer in layers:
        input_sums = all_reduce_sum(state.input_sums[layer.name])
        gradient_sums = all_reduce_sum(state.gradient_sums[layer.name])
        input_rows = all_reduce_sum(state.input_rows[layer.name])
        gradient_rows = all_reduce_sum(state.gradient_rows[layer.name])
        check_finite(layer.name, input_sums, "layer inputs")
        check_finite(layer.name, gradient_sums, "output gradients")
        if gradient_rows.item() == 0:
            raise ValueError(
                f"module {layer.name!r} received no output gradient: the calibration batches hold no "
                "non-padding token, or the layer does not reach the loss"
            )
        outer = torch.outer(gradient_sums / gradient_rows, input_sums / input_rows)  # (d_out, d_in)
        diagonals[layer.name] = outer.reshape(-1).cpu()  # (d_out * d_in,)
    return diagonals
