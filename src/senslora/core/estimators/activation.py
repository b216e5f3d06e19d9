"""`activation`: the GPTQ/OBS layer-wise Hessian proxy, the paper's practice.

For a linear layer y = W x the reconstruction-error Hessian of every output row is H = 2 X X^T,
X = the layer's calibration inputs (d_in x N tokens). Its diagonal, normalised by N:

    h_jj = (2 / N) * sum_n x_{j,n}^2

N counts non-padding tokens over all batches (attention_mask != 0), or with calibration_tokens="completion"
only the positions the completion-only loss scores (labels[t + 1] != -100, `completion_mask`), as the
loss-based estimators and training count them; a layer whose input has no token axis (BERT's pooler)
counts one row per example. One no-grad forward per batch. Each batch is
reduced in the input's precision, at least float32 (so float64 for a float64 model, float32 for
float32, bfloat16 and float16 ones), and the batches are summed in float64.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from senslora.core.calibration import (
    CALIBRATION_TOKENS,
    Batch,
    all_reduce_sum,
    calibration_batches,
    check_finite,
    completion_mask,
    model_device,
    move_batch,
    preserved_model_state,
    token_mask,
)
from senslora.core.targets import TargetLayer


class _InputSquares:
    """Forward-pre-hook state: per layer, the sum of squared inputs per channel and the row count."""

    def __init__(self, layers: list[TargetLayer], device: torch.device) -> None:
        self.sums = {t.name: torch.zeros(t.d_in, dtype=torch.float64, device=device) for t in layers}  # (d_in,)
        self.rows = {t.name: torch.zeros((), dtype=torch.float64, device=device) for t in layers}  # ()
        self.mask: torch.Tensor | None = None
        # q/k/v (gate/up) read the same tensor one after another: reduce it once. The cache holds a
        # reference to that tensor, so its memory cannot be reused by another one meanwhile.
        self._last_input: torch.Tensor | None = None
        self._last_result: tuple[torch.Tensor, torch.Tensor] | None = None

    def new_batch(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self._last_input = self._last_result = None

    def _reduce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x is self._last_input and self._last_result is not None:
            return self._last_result
        # A float64 model keeps float64; float32 and half-precision inputs are reduced in float32 (a float64
        # copy of every layer input would double this transient memory and cost ~25 % of the pass on MiniLM).
        # x, and so squares: (batch, seq, ..., d_in), (batch * seq, d_in), or (batch, d_in) without a token axis
        squares = x.detach().to(torch.promote_types(x.dtype, torch.float32)).square()
        mask = self.mask
        if mask is not None and mask.device != x.device:
            mask = mask.to(x.device)
        if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            weights = mask.to(squares.dtype)  # (batch, seq)
            sums = torch.einsum("bt...d,bt->d", squares, weights)  # (d_in,)
            # () rows: each non-padding token counts once per row of its (..., d_in) block (e.g. per head)
            rows = weights.sum() * (squares[0, 0].numel() // squares.shape[-1])
        elif mask is not None and x.dim() == 2 and x.shape[0] == mask.numel() and mask.numel() != mask.shape[0]:
            weights = mask.reshape(-1).to(squares.dtype)  # (batch * seq,)
            sums = weights @ squares  # (d_in,)
            rows = weights.sum()  # ()
        else:  # no token axis (pooler: one row per example) or no mask: every row counts
            flat = squares.reshape(-1, squares.shape[-1])  # (rows, d_in)
            sums = flat.sum(0)  # (d_in,)
            rows = torch.tensor(float(flat.shape[0]), device=x.device)  # ()
        result = (sums.to(torch.float64), rows.to(torch.float64))  # ((d_in,), ())
        self._last_input, self._last_result = x, result
        return result

    def hook_for(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input", kwargs.get("x"))
            sums, rows = self._reduce(x)
            self.sums[name] += sums.to(self.sums[name].device)
            self.rows[name] += rows.to(self.rows[name].device)

        return hook


@torch.no_grad()
def activation_diagonals(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
    calibration_tokens: str = "all",
) -> dict[str, torch.Tensor]:
    """h = (2/N) * sum_n x_n^2 per input channel of every layer (float64, CPU; see the module docstring).

    Args:
        calibration_tokens: "all" non-padding tokens, or "completion": only the positions the
            completion-only loss scores (batches need (batch, seq) labels with -100 on the prompt).

    Raises:
        ValueError: an unknown calibration_tokens, batches without token labels for "completion", no
            batches, no counted token, or NaN/inf inputs (naming the module).
    """
    if calibration_tokens not in CALIBRATION_TOKENS:
        raise ValueError(f"unknown calibration_tokens {calibration_tokens!r}; allowed: {', '.join(CALIBRATION_TOKENS)}")
    device = model_device(model)
    state = _InputSquares(layers, torch.device(accumulator_device) if accumulator_device else device)
    seen = torch.zeros((), dtype=torch.float64)  # () batches this process ran
    with preserved_model_state(model) as hooks:
        model.eval()
        for layer in layers:
            hooks.add(layer.module.register_forward_pre_hook(state.hook_for(layer.name), with_kwargs=True))
        for batch in calibration_batches(
            batches, max_batches=max_batches, progress=progress, description="activation sensitivity"
        ):
            batch = move_batch(batch, device)
            state.new_batch(completion_mask(batch) if calibration_tokens == "completion" else token_mask(batch))
            model(**batch)
            seen += 1
    # Reduce before any check, so that a process with an empty shard still joins every collective call.
    if all_reduce_sum(seen).item() == 0:
        raise ValueError("no calibration batches: the batches iterable is empty")
    diagonals: dict[str, torch.Tensor] = {}
    for layer in layers:
        sums = all_reduce_sum(state.sums[layer.name])
        rows = all_reduce_sum(state.rows[layer.name])
        check_finite(layer.name, sums, "layer inputs")
        if rows.item() == 0:
            raise ValueError(
                f"module {layer.name!r} saw no input rows: the calibration batches hold no non-padding "
                "token, or the layer is not used in the forward pass"
            )
        diagonals[layer.name] = (2.0 * sums / rows).cpu()  # (d_in,)
    return diagonals
