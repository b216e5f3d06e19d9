"""Shared plumbing of the sensitivity estimators: batches, losses, and leaving the model as found.

Every estimator runs inside `preserved_model_state`, which records each module's training flag and each
parameter's `requires_grad` and `.grad`, and restores all of them (and removes every hook registered
through it) on the way out, also when the estimator raises.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

Batch = Mapping[str, Any]
LossFn = Callable[[Any, Batch], torch.Tensor]


class HookSet:
    """Hook handles to be removed together."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def add(self, handle: Any) -> None:
        self.handles.append(handle)

    def remove_all(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[HookSet]:
    """Yield a HookSet; on exit remove its hooks and restore modes, requires_grad and .grad."""
    modes = {module: module.training for module in model.modules()}
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks = HookSet()
    try:
        for p in params:
            p.grad = None
        yield hooks
    finally:
        hooks.remove_all()
        for p, flag, grad in zip(params, requires, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for module, mode in modes.items():
            module.train(mode)


def eval_mode_keeping_checkpointing(model: nn.Module) -> int:
    """Put `model` in eval mode (no dropout), but keep gradient checkpointing where the model enabled it.

    Hugging Face layers checkpoint only while their own `training` flag is set, so the flag is set on those
    layers alone (not on their children: dropout stays off). Returns the number of such layers.
    Call inside `preserved_model_state`, which restores every flag.
    """
    model.eval()
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer.training = True
    return len(layers)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter that holds data (CPU for a model without any).

    Parameters offloaded by Accelerate's big-model inference sit on the meta device between forward
    passes (their hooks load them where they run), so those are skipped.
    """
    first = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return first.device if first is not None else torch.device("cpu")


def move_batch(batch: Batch, device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch to `device`, leaving other values alone."""
    if not isinstance(batch, Mapping):
        raise ValueError(f"each calibration batch must be a dict of model inputs, got {type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def calibration_batches(
    batches: Iterable[Batch], *, max_batches: int | None, progress: bool, description: str
) -> Iterator[Batch]:
    """Iterate at most `max_batches` batches with an optional progress bar."""
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    total = None
    if hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
        total = total if max_batches is None else min(total, max_batches)
    limited = batches if max_batches is None else itertools.islice(batches, max_batches)
    yield from tqdm(limited, total=total, desc=description, disable=not progress, leave=False)


CALIBRATION_TOKENS = ("all", "completion")
IGNORE_INDEX = -100


def token_mask(batch: Batch) -> torch.Tensor | None:
    """The non-padding mask (attention_mask != 0) of a batch, or None if it has none."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask != 0
    return None


def completion_mask(batch: Batch) -> torch.Tensor:
    """(batch, seq) positions the causal-LM loss scores: t counts iff labels[t + 1] != -100 (and t is not padding).

    A causal LM predicts token t + 1 from position t, so these are the positions whose outputs training's
    completion-only loss is computed on (for instruction data: the last prompt token up to the one before
    the last completion token).

    Raises:
        ValueError: the batch has no (batch, seq) token labels.
    """
    labels, input_ids = batch.get("labels"), batch.get("input_ids")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 2):
        raise ValueError(
            "calibration_tokens='completion' needs token labels (batch, seq) with -100 on prompt tokens; this batch "
            "has none (use calibration_tokens='all')"
        )
    if isinstance(input_ids, torch.Tensor) and tuple(input_ids.shape) != tuple(labels.shape):
        raise ValueError(f"labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ in shape")
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)  # (batch, seq)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    padding = token_mask(batch)
    return mask & padding.to(mask.device) if padding is not None else mask


def batch_size(batch: Batch) -> int:
    """Number of examples in a batch: the first dimension of its first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("a calibration batch holds no tensor")


def single_examples(batch: Batch) -> Iterator[dict[str, Any]]:
    """Split a batch into batches of one example each (tensors sliced along dim 0)."""
    size = batch_size(batch)
    for i in range(size):
        yield {
            k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
            for k, v in batch.items()
        }


def compute_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None) -> torch.Tensor:
    """The scalar task loss of one batch: `loss_fn(outputs, batch)` or the model's own `.loss`."""
    outputs = model(**batch)
    if loss_fn is not None:
        loss = loss_fn(outputs, batch)
    elif isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    else:
        loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError(
            "this estimator needs a task loss: give batches with labels (so the model returns .loss) or pass loss_fn"
        )
    if loss.dim() != 0:
        raise ValueError(f"the task loss must be a scalar, got shape {tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise ValueError(f"the task loss is not finite ({loss.item()})")
    return loss


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes in place when torch.distributed runs with more than one."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        tensor.copy_(on_device)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    """Raise ValueError naming the module when `tensor` holds NaN or inf."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"module {name!r}: {what} hold NaN or inf")
