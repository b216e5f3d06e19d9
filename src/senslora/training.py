"""The training loop: AdamW, warmup then linear or cosine decay, accumulation, clipping, checkpoints.

Deterministic for a given seed: the example order of epoch e is a permutation drawn from a generator
seeded with (seed, e), and the checkpoint holds everything else that evolves (trainable weights,
optimizer and scheduler state, the CPU and CUDA RNG states that dropout draws from, the batch position
within the epoch, the running loss since the last log line, the byte length of `log.jsonl`, and
AdaLoRA's importance scores and rank pattern), so a run killed at any point and resumed from its last
checkpoint ends with the same adapter, metrics and log as an uninterrupted one. After each epoch the
model is evaluated and the best adapter so far (by the task's main metric) is written to
`run_dir/adapter`. For AdaLoRA, `update_and_allocate(global_step)` is called after every optimizer
step, as PEFT requires.

Numerical faults stop the run (TrainingDivergedError): a NaN/inf loss names the step and the first
module whose output is not finite, a NaN/inf gradient names the step and the parameter; nothing is
written after the fault, so the last checkpoint (always finite) is kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from senslora.distributed import (
    all_processes_agree,
    barrier,
    broadcast_object,
    gather_objects,
    is_distributed,
    is_main_process,
    rank,
    shard_indices,
    shard_size,
)
from senslora.io import (
    append_line,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
    remove_stale_temporaries,
    truncate_log,
)

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
ADALORA_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


class TrainingDivergedError(ValueError):
    """The loss, a gradient or a weight became NaN or inf."""


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
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; allowed: {', '.join(SCHEDULERS)}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"unknown mixed_precision {self.mixed_precision!r}; allowed: {', '.join(PRECISIONS)}")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm must be a positive finite number or None, got {self.max_grad_norm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
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


def batches_per_epoch(num_examples: int, config: TrainingConfig) -> int:
    """Micro-batches this process runs in one epoch: under torch.distributed each process takes
    `shard_size(num_examples)` of the examples."""
    return math.ceil(shard_size(num_examples) / config.batch_size)


def steps_per_epoch(num_examples: int, config: TrainingConfig) -> int:
    """Optimizer steps in one epoch (a last partial accumulation group still steps)."""
    return math.ceil(batches_per_epoch(num_examples, config) / config.gradient_accumulation_steps)


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


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_allocator(model: nn.Module) -> Any:
    return getattr(getattr(model, "base_model", None), "rankallocator", None)


def _adalora_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], Any]:
    """AdaLoRA's running importance scores (tensors) and the rank pattern it has fixed so far."""
    allocator = _rank_allocator(model)
    tensors = {
        f"{kind}::{name}": value.detach().contiguous().cpu()
        for kind in ADALORA_STATE
        for name, value in getattr(allocator, kind, {}).items()
    }
    config = model.peft_config[model.base_model.trainable_adapter_name]
    return tensors, config.rank_pattern


def _restore_adalora_state(model: nn.Module, tensors: dict[str, torch.Tensor], rank_pattern: Any) -> None:
    allocator = _rank_allocator(model)
    allocator.reset_ipt()
    device = _device_of(model)
    for key, value in tensors.items():
        kind, name = key.split("::", 1)
        getattr(allocator, kind)[name] = value.to(device)
    model.peft_config[model.base_model.trainable_adapter_name].rank_pattern = rank_pattern


def _save_checkpoint(directory: Path, model, optimizer, scheduler, state: dict[str, Any], *, adalora: bool) -> None:
    """Write the whole training state to `directory`, atomically (a kill leaves the previous one).

    Collective under torch.distributed: every process hands its RNG state to the main process, which
    alone writes (the other state is the same on every process).
    """
    rng_states = gather_objects(_rng_state())
    if not is_main_process():
        return
    weights = _trainable_state(model)
    for name, value in weights.items():
        if not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(f"weight {name!r} is not finite at step {state['global_step']}")
    state = dict(state)

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states[0] if len(rng_states) == 1 else {"per_process": rng_states}, tmp / "rng.pt")
        if adalora:
            tensors, rank_pattern = _adalora_state(model)
            save_file(tensors, str(tmp / "adalora.safetensors"))
            state["adalora_rank_pattern"] = rank_pattern
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))

    atomic_directory(directory, write)


def read_checkpoint_state(directory: str | Path) -> dict[str, Any]:
    """The state.json of a checkpoint directory (epoch, batch, global_step, history, ...).

    Raises:
        ValueError: the checkpoint is missing a file or its state is not readable JSON.
    """
    directory = Path(directory)
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"checkpoint {str(directory)!r} is incomplete (missing {', '.join(missing)})")
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {str(directory)!r} has an unreadable state.json: {error}") from None
    needed = {"epoch", "batch", "global_step", "history", "best_epoch", "best_metrics", "train_seconds"}
    if not isinstance(state, dict) or needed - set(state):
        raise ValueError(f"checkpoint {str(directory)!r} has a state.json without {sorted(needed)}")
    return state


def _load_checkpoint(directory: Path, model, optimizer, scheduler, *, adalora: bool) -> dict[str, Any]:
    state = read_checkpoint_state(directory)
    try:
        weights = load_file(str(directory / "trainable.safetensors"))
    except Exception as error:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"checkpoint {str(directory)!r}: trainable.safetensors is unreadable: {error}") from None
    parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(weights) - set(parameters))
    absent = sorted(set(parameters) - set(weights))
    if unknown or absent:
        example = unknown[0] if unknown else absent[0]
        raise ValueError(f"checkpoint {str(directory)!r} does not fit this model (parameter {example!r})")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(parameters[name].shape):
            raise ValueError(
                f"checkpoint {str(directory)!r} does not fit this model: {name!r} has shape {tuple(value.shape)}, "
                f"the model's is {tuple(parameters[name].shape)}"
            )
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)
    try:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
        rng = torch.load(directory / "rng.pt", weights_only=True)
    except Exception as error:  # a damaged or foreign file: unpickling and shape errors alike
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint {str(directory)!r} cannot be restored: {first}") from None
    if "per_process" in rng:  # written by several processes: each takes its own (rank 0's if fewer)
        states = rng["per_process"]
        rng = states[rank()] if rank() < len(states) else states[0]
    _set_rng_state(rng)
    if adalora:
        path = directory / "adalora.safetensors"
        if not path.is_file():
            raise ValueError(f"checkpoint {str(directory)!r} holds no AdaLoRA state (adalora.safetensors)")
        _restore_adalora_state(model, load_file(str(path)), state.get("adalora_rank_pattern"))
    return state


def _check_gradients(model: nn.Module, step: int) -> None:
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and not bool(torch.isfinite(parameter.grad).all()):
            raise TrainingDivergedError(f"non-finite gradient at step {step} in {name!r}")


def _check_weights(model: nn.Module, step: int) -> None:
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not bool(torch.isfinite(parameter).all()):
            raise TrainingDivergedError(f"weight {name!r} became non-finite at step {step}")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, tuple | list):
        return any(_has_non_finite(v) for v in value)
    return False


@torch.no_grad()
def first_non_finite_module(model: nn.Module, batch: dict[str, torch.Tensor]) -> str | None:
    """Run `batch` through `model` again and name the first module (in execution order) whose output
    holds NaN or inf, or a non-finite weight; None if neither is found."""
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            return f"weight {name}"
    found: list[str] = []

    def hook(name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if not found and _has_non_finite(output):
            found.append(name)

    handles = [module.register_forward_hook(partial(hook, name)) for name, module in model.named_modules() if name]
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _divergence(message: str, checkpoint_dir: Path) -> TrainingDivergedError:
    if (checkpoint_dir / "state.json").is_file():
        step = read_checkpoint_state(checkpoint_dir)["global_step"]
        kept = f"the last good checkpoint (step {step}) is kept in {str(checkpoint_dir)!r}"
    else:
        kept = "no checkpoint had been written yet"
    return TrainingDivergedError(f"training diverged: {message}; {kept} (try a lower --learning-rate)")


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
        resume: continue from `run_dir/checkpoints/last` (the log is cut back to that checkpoint).
        on_best: writes extra files into the adapter directory (e.g. the allocation sidecar).

    Under torch.distributed (e.g. torchrun) the model is wrapped in DistributedDataParallel: every
    process takes its share of each epoch's order (`shard_indices`), so `batch_size` is per process and
    one step sees world_size x batch_size examples; gradients are averaged by DDP (skipped on
    accumulation micro-batches with `no_sync`); every process evaluates and the main process's metrics
    decide; only the main process writes the log, checkpoints and adapter.

    Raises:
        ValueError: bad configuration, empty data, unusable checkpoint.
        TrainingDivergedError: NaN/inf loss, gradients or weights (the last good checkpoint is kept).
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
    distributed, main = is_distributed(), is_main_process()
    total = total_training_steps(len(train_dataset), config)
    warmup = math.floor(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total, warmup, config.scheduler)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)

    result = TrainingResult(total_steps=total)
    log_path = run_dir / "log.jsonl"
    start_epoch, skip_batches, best = 0, 0, None
    running_loss, running_count = 0.0, 0
    if resume:
        if main:
            recover_directory(checkpoint_dir)
            recover_directory(run_dir / "adapter")
        barrier()
        if not checkpoint_dir.exists():
            raise ValueError(f"nothing to resume: {str(checkpoint_dir)!r} does not exist")
        state = _load_checkpoint(checkpoint_dir, model, optimizer, scheduler, adalora=adalora)
        barrier()  # every process has read the checkpoint before the main process tidies up
        if main:
            for folder in (run_dir, run_dir / "checkpoints"):
                remove_stale_temporaries(folder)
        start_epoch, skip_batches = state["epoch"], state["batch"]
        result.global_step, result.history = state["global_step"], state["history"]
        result.best_epoch, result.best_metrics = state["best_epoch"], state["best_metrics"]
        result.train_seconds = state["train_seconds"]
        running_loss, running_count = state.get("running_loss", 0.0), state.get("running_count", 0)
        best = result.best_metrics.get(main_metric)
        # Lines logged after the checkpoint are written again by the resumed run; a torn line goes too.
        if main:
            truncate_log(log_path, state.get("log_bytes"))
    elif main:
        atomic_write_text(log_path, "")
    step_times: list[float] = []
    epoch_batches = batches_per_epoch(len(train_dataset), config)
    device_ids = [device.index] if device.type == "cuda" and device.index is not None else None
    forward_model = DistributedDataParallel(model, device_ids=device_ids) if distributed else model

    def checkpoint(epoch: int, batch: int) -> None:
        state = {
            "epoch": epoch,
            "batch": batch,
            "global_step": result.global_step,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_metrics": result.best_metrics,
            "train_seconds": result.train_seconds,
            "running_loss": running_loss,
            "running_count": running_count,
            "log_bytes": log_path.stat().st_size if main else None,
        }
        _save_checkpoint(checkpoint_dir, model, optimizer, scheduler, state, adalora=adalora)

    for epoch in range(start_epoch, config.epochs):
        if result.global_step >= total:
            break
        model.train()
        order = shard_indices(epoch_order(len(train_dataset), config.seed, epoch))
        first = skip_batches if epoch == start_epoch else 0
        bar = tqdm(
            range(first, epoch_batches),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (progress and main),
            leave=False,
        )
        epoch_start = time.perf_counter()
        step_start = time.perf_counter()
        for batch_index in bar:
            indices = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            batch = {k: v.to(device) for k, v in collate([train_dataset[i] for i in indices]).items()}
            last_in_epoch = batch_index == epoch_batches - 1
            stepping = last_in_epoch or (batch_index + 1) % config.gradient_accumulation_steps == 0
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = forward_model(**batch).loss
            finite = bool(torch.isfinite(loss))
            if not all_processes_agree(finite):  # every process stops together
                source = first_non_finite_module(model, batch) if not finite else None
                where = f"; first non-finite output in {source!r}" if source else ""
                value = f" ({loss.item()})" if not finite else " on another process"
                message = f"non-finite loss{value} at step {result.global_step + 1}{where}"
                raise _divergence(message, checkpoint_dir)
            with forward_model.no_sync() if distributed and not stepping else contextlib.nullcontext():
                scaler.scale(loss / config.gradient_accumulation_steps).backward()
            running_loss += loss.item()
            running_count += 1
            if not stepping:
                continue
            scaler.unscale_(optimizer)
            if not scaler.is_enabled():  # fp16 skips steps with inf gradients by design
                try:
                    _check_gradients(model, result.global_step + 1)
                except TrainingDivergedError as error:
                    raise _divergence(str(error), checkpoint_dir) from None
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
            try:
                _check_weights(model, result.global_step)
            except TrainingDivergedError as error:
                raise _divergence(str(error), checkpoint_dir) from None
            now = time.perf_counter()
            step_times.append(now - step_start)
            step_start = now
            if result.global_step % config.log_every == 0 or last_in_epoch:
                sums = gather_objects((running_loss, running_count))  # the loss over every process
                record = {
                    "step": result.global_step,
                    "epoch": epoch + (batch_index + 1) / epoch_batches,
                    "loss": sum(s[0] for s in sums) / sum(s[1] for s in sums),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                }
                if main:
                    append_line(log_path, json.dumps(record))
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
        metrics = broadcast_object(evaluate(model))  # the main process's metrics decide everywhere
        if main_metric not in metrics:
            raise ValueError(f"evaluation did not report the main metric {main_metric!r}")
        result.history.append({"epoch": epoch + 1, "step": result.global_step, **metrics})
        if progress and main:
            shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            print(f"epoch {epoch + 1}/{config.epochs}: {shown}")
        if main:
            append_line(log_path, json.dumps({"step": result.global_step, "epoch": epoch + 1, "eval": metrics}))
        if _is_better(metrics[main_metric], best, greater_is_better):
            best = metrics[main_metric]
            result.best_epoch, result.best_metrics = epoch + 1, dict(metrics)

            def write_adapter(tmp: Path) -> None:
                model.save_pretrained(tmp)
                if on_best is not None:
                    on_best(model, tmp)

            if main:
                atomic_directory(run_dir / "adapter", write_adapter)
        checkpoint(epoch + 1, 0)
    result.mean_step_seconds = sum(step_times) / len(step_times) if step_times else 0.0
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    if main:
        atomic_write_json(run_dir / "training.json", result.to_dict())
    return result
