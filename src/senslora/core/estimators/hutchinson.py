"""`hutchinson`: the diagonal of the true loss Hessian by Hessian-vector products.

    diag(H) = E_z[ z * (H z) ],   z_i in {-1, +1} uniformly (Rademacher)

Per batch: one forward, one backward with `create_graph=True`, then one extra backward per probe
(H z = d(g . z)/dw). The estimate is averaged over all probes and batches and returned unclamped, so
that its sum stays an unbiased estimate of trace(H_w). Entries of the average can be negative (a
non-convex loss, or probe noise); `ModuleSensitivity.from_diagonal` sums them unclamped for the trace
and clamps them at 0 only for the local metrics. Scaled-dot-product attention runs on its math kernel
here, since the fused kernels have no double backward. In a distributed run process p seeds its probes with
`seed + p * PROBE_SEED_STRIDE` (senslora.utils.distributed.process_seed), so processes draw independent probes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

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
from senslora.utils.distributed import process_seed


def _rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    bits = torch.randint(0, 2, like.shape, generator=generator, device=generator.device, dtype=torch.int8)
    return (bits * 2 - 1).to(device=like.device, dtype=like.dtype)


def hutchinson_diagonals(
    model: nn.Module,
    layers: list[TargetLayer],
    batches: Iterable[Batch],
    *,
    num_probes: int = 4,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    accumulator_device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Hutchinson estimate of the loss-Hessian diagonal per weight element (flattened, unclamped, CPU).

    Returns:
        The mean of z * (H z) over all probes and batches per target layer; entries may be negative.

    Raises:
        ValueError: num_probes < 1, no batches, no loss, or NaN/inf products (naming the module).
    """
    if not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes}")
    device = model_device(model)
    generator = torch.Generator(device=device if device.type != "mps" else "cpu")
    # Each process of a distributed run draws its own probes (rank 0, or a single process, uses `seed`).
    generator.manual_seed(process_seed(seed))
    # Weight-shaped accumulators: (d_out, d_in) for nn.Linear, (d_in, d_out) for Conv1D (stored transposed).
    sums = {
        t.name: torch.zeros(
            t.weight.shape,
            dtype=torch.promote_types(t.weight.dtype, torch.float32),
            device=accumulator_device or device,
        )
        for t in layers
    }
    count = torch.zeros((), dtype=torch.float64)  # () probes summed: batches x num_probes
    # The fused attention kernels have no double backward; the math kernel does.
    with preserved_model_state(model), sdpa_kernel(SDPBackend.MATH):
        eval_mode_keeping_checkpointing(model)  # checkpointed layers recompute activations in the backward
        weights = prepare_target_gradients(model, layers)
        for batch in calibration_batches(
            batches, max_batches=max_batches, progress=progress, description="hutchinson sensitivity"
        ):
            batch = move_batch(batch, device)
            loss = compute_loss(model, batch, loss_fn)
            # One weight-shaped gradient per target (None for a target the loss does not reach), kept in the
            # graph so that it can be differentiated again.
            grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            # Only gradients that still depend on the weights have a non-zero Hessian block.
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            for probe in range(num_probes):
                if live:
                    probes = [_rademacher(weights[i], generator) for i in live]  # z: weight-shaped, +-1
                    # H z = d(g . z)/dw: weight-shaped per target, None where the product does not reach it
                    products = torch.autograd.grad(
                        [grads[i] for i in live],
                        weights,
                        grad_outputs=probes,
                        retain_graph=probe < num_probes - 1,
                        allow_unused=True,
                    )
                    for i, z in zip(live, probes, strict=True):
                        product = products[i]
                        if product is not None:
                            acc = sums[layers[i].name]
                            acc += (z * product).to(device=acc.device, dtype=acc.dtype)  # elementwise, weight-shaped
                count += 1
            del grads, loss
    # Reduce before any check, so that a process with an empty shard still joins every collective call.
    total = all_reduce_sum(count)
    if total.item() == 0:
        raise ValueError("no calibration batches: the batches iterable is empty")
    diagonals: dict[str, torch.Tensor] = {}
    for layer in layers:
        mean = all_reduce_sum(sums[layer.name]) / total.to(sums[layer.name].dtype)
        check_finite(layer.name, mean, "Hessian-vector products")
        diagonals[layer.name] = mean.reshape(-1).cpu()  # (d_in * d_out,)
    return diagonals
