"""The training loop: AdamW, warmup then linear or cosine decay, accumulation, clipping, checkpoints.

Deterministic for a given seed: the example order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and the checkpoint holds the RNG state, so a run resumed from its last checkpoint
ends with the same adapter as an uninterrupted one. After each epoch the model is evaluated and the
best adapter so far (by the task's main metric) is written to `run_dir/adapter`. For AdaLoRA,
`update_and_allocate(global_step)` is called after every optimizer step, as PEFT requires.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from senslora.io import atomic_directory, atomic_write_json, atomic_write_text

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


class TrainingDivergedError(ValueError):
    """The loss or a gradient became NaN or inf."""


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings (all plain values, recorded in the run's config.json)."""

    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = None
    log_every: int = 10

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range."""
        positive = ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        for name in ("max_steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


@dataclass
class TrainingResult:
    """What training produced, as plain data."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    total_steps: int = 0
    train_seconds: float = 0.0
    mean_step_seconds: float = 0.0
    peak_memory_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_epoch(num_examples: int, config: TrainingConfig) -> int:
    """Optimizer steps in one epoch (a last partial accumulation group still steps)."""
    return math.ceil(math.ceil(num_examples / config.batch_size) / config.gradient_accumulation_steps)


def total_training_steps(num_examples: int, config: TrainingConfig) -> int:
    per_epoch = steps_per_epoch(num_examples, config)
    return min(config.max_steps, per_epoch * config.epochs) if config.max_steps else per_epoch * config.epochs


def learning_rate_factor(step: int, total: int, warmup: int, scheduler: str) -> float:
    """Linear warmup over `warmup` steps, then linear or cosine decay to 0 at `total` (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if scheduler == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation seeded by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(directory: Path, model, optimizer, scheduler, state: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"cpu": torch.get_rng_state()}, tmp / "rng.pt")
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))

    atomic_directory(directory, write)


def _load_checkpoint(directory: Path, model, optimizer, scheduler) -> dict[str, Any]:
    required = ["trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"]
    missing = [name for name in required if not (directory / name).exists()]
    if missing:
        raise ValueError(f"checkpoint {str(directory)!r} is incomplete (missing {', '.join(missing)})")
    weights = load_file(str(directory / "trainable.safetensors"))
    parameters = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(parameters))
    if unknown:
        raise ValueError(f"checkpoint {str(directory)!r} does not fit this model (unknown {unknown[0]!r})")
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(directory / "rng.pt", weights_only=True)["cpu"])
    return json.loads((directory / "state.json").read_text())


def _check_gradients(model: nn.Module, step: int) -> None:
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and not bool(torch.isfinite(parameter.grad).all()):
            raise TrainingDivergedError(f"non-finite gradient at step {step} in {name!r}")


def _is_better(value: float, best: float | None, greater_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better else value < best


def train(
    model: nn.Module,
    train_dataset: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    evaluate: Callable[[nn.Module], dict[str, float]],
    config: TrainingConfig,
    run_dir: str | Path,
    *,
    main_metric: str,
    greater_is_better: bool,
    adalora: bool = False,
    resume: bool = False,
    progress: bool = True,
    on_best: Callable[[nn.Module, Path], None] | None = None,
) -> TrainingResult:
    """Train the trainable parameters of `model` and keep its best adapter in `run_dir/adapter`.

    Args:
        model: a PEFT model (only parameters with requires_grad train).
        train_dataset: tokenized examples (indexable); `collate` turns a list of them into a batch.
        evaluate: returns metrics for the model, including `main_metric`.
        config: optimisation settings.
        run_dir: where `log.jsonl`, `checkpoints/last` and `adapter/` go.
        main_metric, greater_is_better: how the best epoch is chosen.
        adalora: call `update_and_allocate(step)` after each optimizer step.
        resume: continue from `run_dir/checkpoints/last`.
        on_best: writes extra files into the adapter directory (e.g. the allocation sidecar).

    Raises:
        ValueError: bad configuration, empty data, unusable checkpoint.
        TrainingDivergedError: NaN/inf loss or gradients (the last good checkpoint is kept).
    """
    config.validate()
    if len(train_dataset) == 0:
        raise ValueError("the training split is empty")
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / "checkpoints" / "last"
    device = _device_of(model)
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no'")
    torch.manual_seed(config.seed)
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    total = total_training_steps(len(train_dataset), config)
    warmup = math.floor(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total, warmup, config.scheduler)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)

    result = TrainingResult(total_steps=total)
    start_epoch, skip_batches, best = 0, 0, None
    if resume:
        if not checkpoint_dir.exists():
            raise ValueError(f"nothing to resume: {str(checkpoint_dir)!r} does not exist")
        state = _load_checkpoint(checkpoint_dir, model, optimizer, scheduler)
        start_epoch, skip_batches = state["epoch"], state["batch"]
        result.global_step, result.history = state["global_step"], state["history"]
        result.best_epoch, result.best_metrics = state["best_epoch"], state["best_metrics"]
        result.train_seconds = state["train_seconds"]
        best = result.best_metrics.get(main_metric)
    log_path = run_dir / "log.jsonl"
    if not resume:
        atomic_write_text(log_path, "")
    step_times: list[float] = []
    batches_per_epoch = math.ceil(len(train_dataset) / config.batch_size)

    def checkpoint(epoch: int, batch: int) -> None:
        state = {
            "epoch": epoch,
            "batch": batch,
            "global_step": result.global_step,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_metrics": result.best_metrics,
            "train_seconds": result.train_seconds,
        }
        _save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state)

    for epoch in range(start_epoch, config.epochs):
        if result.global_step >= total:
            break
        model.train()
        order = epoch_order(len(train_dataset), config.seed, epoch)
        first = skip_batches if epoch == start_epoch else 0
        bar = tqdm(
            range(first, batches_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        running_loss, running_count = 0.0, 0
        epoch_start = time.perf_counter()
        step_start = time.perf_counter()
        for batch_index in bar:
            indices = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            batch = {k: v.to(device) for k, v in collate([train_dataset[i] for i in indices]).items()}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = model(**batch).loss
            if not bool(torch.isfinite(loss)):
                raise TrainingDivergedError(f"non-finite loss ({loss.item()}) at step {result.global_step + 1}")
            scaler.scale(loss / config.gradient_accumulation_steps).backward()
            running_loss += loss.item()
            running_count += 1
            last_in_epoch = batch_index == batches_per_epoch - 1
            if (batch_index + 1) % config.gradient_accumulation_steps and not last_in_epoch:
                continue
            scaler.unscale_(optimizer)
            _check_gradients(model, result.global_step + 1)
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm))
                if config.max_grad_norm
                else None
            )
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            result.global_step += 1
            if adalora:
                model.base_model.update_and_allocate(result.global_step)
            optimizer.zero_grad(set_to_none=True)
            now = time.perf_counter()
            step_times.append(now - step_start)
            step_start = now
            if result.global_step % config.log_every == 0 or last_in_epoch:
                record = {
                    "step": result.global_step,
                    "epoch": epoch + (batch_index + 1) / batches_per_epoch,
                    "loss": running_loss / running_count,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                }
                with log_path.open("a", encoding="utf-8") as stream:
                    stream.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                running_loss, running_count = 0.0, 0
            if config.checkpoint_every and result.global_step % config.checkpoint_every == 0 and not last_in_epoch:
                result.train_seconds += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                checkpoint(epoch, batch_index + 1)
            if result.global_step >= total:
                break
        bar.close()
        result.train_seconds += time.perf_counter() - epoch_start
        metrics = evaluate(model)
        if main_metric not in metrics:
            raise ValueError(f"evaluation did not report the main metric {main_metric!r}")
        result.history.append({"epoch": epoch + 1, "step": result.global_step, **metrics})
        if progress:
            shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            print(f"epoch {epoch + 1}/{config.epochs}: {shown}")
        with log_path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"step": result.global_step, "epoch": epoch + 1, "eval": metrics}) + "\n")
        if _is_better(metrics[main_metric], best, greater_is_better):
            best = metrics[main_metric]
            result.best_epoch, result.best_metrics = epoch + 1, dict(metrics)

            def write_adapter(tmp: Path) -> None:
                model.save_pretrained(tmp)
                if on_best is not None:
                    on_best(model, tmp)

            atomic_directory(run_dir / "adapter", write_adapter)
        checkpoint(epoch + 1, 0)
    result.mean_step_seconds = sum(step_times) / len(step_times) if step_times else 0.0
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    atomic_write_json(run_dir / "training.json", result.to_dict())
    return result
