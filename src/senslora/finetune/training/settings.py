"""Training settings and the pieces of training that do not depend on the engine.

The engine itself is `transformers.Trainer` (see `senslora.finetune.training.engine`); this module holds what it is
configured with and checked against:

- `TrainingConfig`: the optimisation settings (AdamW, warmup then linear/cosine/constant decay,
  accumulation, clipping, precision, evaluation/checkpoint cadence, early stopping, reporting), and further
  `transformers.TrainingArguments` fields passed through as they are (`check_trainer_arguments` refuses
  unknown names and the fields senslora sets from its own options, `OWNED_TRAINER_ARGUMENTS`);
- the schedule `learning_rate_factor` (linear warmup over floor(warmup_ratio x total) steps, then decay
  to 0 at `total`) and the step counts (`steps_per_epoch`, `total_training_steps`), equal to the
  Trainer's: ceil(ceil(n / (world_size x batch_size)) / accumulation) optimizer steps per epoch;
- `epoch_order`, the seeded example order of each epoch;
- the numerical checks that stop a run (`TrainingDivergedError`): a non-finite gradient names the step
  and the parameter, a non-finite weight the step and the weight, and `first_non_finite_module` finds
  the first module whose output is NaN/inf after a non-finite loss;
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from senslora.finetune.options import MAX_INT, option
from senslora.utils.distributed import world_size

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")
# Reporting integrations TrainingArguments(report_to=...) accepts; "none" turns reporting off.
REPORTERS = ("none", "all", "tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "dvclive", "trackio")


class TrainingDivergedError(ValueError):
    """The loss, a gradient or a weight became NaN or inf."""


@dataclass
class TrainingConfig:
    """Optimisation settings (all plain values, recorded in the run's config.json). The defaults are the
    main job's, the same in Python and on the command line (`senslora finetune` builds its training flags
    from these fields)."""

    epochs: int = option(2, "training epochs")
    batch_size: int = option(16, "training batch size")
    eval_batch_size: int = option(64, "evaluation batch size")
    learning_rate: float = option(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.06, "share of steps for linear warmup")
    scheduler: str = option("linear", "learning-rate decay after warmup", choices=SCHEDULERS)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (none: off)")
    max_steps: int | None = option(None, "stop after this many optimizer steps (none: all epochs)")
    mixed_precision: str = option("no", "autocast precision (bf16 on CPU/GPU, fp16 on CUDA)", choices=PRECISIONS)
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    save_steps: int | None = option(None, "also checkpoint every N optimizer steps (none: at each epoch's end only)")
    eval_steps: int | None = option(None, "evaluate every N optimizer steps (none: at each epoch's end)")
    early_stopping_patience: int | None = option(
        None, "stop after this many evaluations without a better main metric (none: never)"
    )
    report_to: list[str] = option(["none"], "send logs to these trackers (Trainer's report_to)", choices=REPORTERS)
    log_every: int = option(10, "log the training loss every N steps")
    trainer_arguments: dict[str, Any] = option(
        {},
        "config file only: further transformers.TrainingArguments fields passed to the Trainer as they are "
        "(e.g. dataloader_num_workers, push_to_hub, hub_model_id); not the ones senslora sets from its options",
        flag=False,
    )
    seed: int = option(0, "seed of data splits, sampling, initialisation and training")

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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_INT:
            raise ValueError(f"seed must lie in [0, {MAX_INT}], got {self.seed!r}")
        for name in ("max_steps", "save_steps", "eval_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        unknown = [name for name in self.report_to if name not in REPORTERS]
        if unknown:
            raise ValueError(f"unknown report_to {unknown[0]!r}; allowed: {', '.join(REPORTERS)}")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError("report_to 'none' excludes every other integration")
        check_trainer_arguments(self.trainer_arguments)


# TrainingArguments fields senslora sets from its own options (the option to use instead), or for itself (None).
OWNED_TRAINER_ARGUMENTS: dict[str, str | None] = {
    "output_dir": "output_dir",
    "overwrite_output_dir": "overwrite",
    "resume_from_checkpoint": "resume",
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "lr_scheduler_type": "scheduler",
    "lr_scheduler_kwargs": "scheduler",
    "warmup_ratio": "warmup_ratio",
    "warmup_steps": "warmup_ratio",
    "seed": "seed",
    "data_seed": "seed",
    "bf16": "mixed_precision",
    "fp16": "mixed_precision",
    "gradient_checkpointing": "gradient_checkpointing",
    "logging_strategy": "log_every",
    "logging_steps": "log_every",
    "eval_strategy": "eval_steps",
    "eval_steps": "eval_steps",
    "save_strategy": "save_steps",
    "save_steps": "save_steps",
    "report_to": "report_to",
    "metric_for_best_model": "early_stopping_patience",
    "greater_is_better": "early_stopping_patience",
    "use_cpu": "device",
    "disable_tqdm": "progress",
    "load_best_model_at_end": None,  # the best adapter is kept in run_dir/adapter at each evaluation
    "save_only_model": None,  # --resume needs the optimizer, scheduler and RNG states
    "remove_unused_columns": None,  # senslora's collators read the columns they need
    "label_names": None,
}


@functools.cache
def trainer_argument_names() -> frozenset[str]:
    """The fields `transformers.TrainingArguments(...)` accepts."""
    import dataclasses

    from transformers import TrainingArguments

    return frozenset(item.name for item in dataclasses.fields(TrainingArguments) if item.init)


def owned_argument_message(name: str) -> str:
    """Why a TrainingArguments field cannot be passed through, and which senslora option sets it."""
    option = OWNED_TRAINER_ARGUMENTS[name]
    if option is None:
        reasons = {
            "load_best_model_at_end": "senslora keeps the best adapter in run_dir/adapter itself",
            "save_only_model": "--resume needs the optimizer, scheduler and RNG states in each checkpoint",
        }
        return f"TrainingArguments field {name!r} is set by senslora ({reasons.get(name, 'for its data collators')})"
    flag = "--" + option.replace("_", "-")
    return f"TrainingArguments field {name!r} is set by senslora: use {flag} (or {option} in the config file)"


def check_trainer_arguments(arguments: Any) -> None:
    """Raise ValueError for trainer arguments that cannot be passed through: not a mapping, a name
    TrainingArguments lacks (named), a field senslora sets itself (naming the option to use).

    Their values are checked by TrainingArguments itself when training starts (`engine.training_arguments`):
    building it here would set up Accelerate's device state before the run chooses its device."""
    if not isinstance(arguments, dict):
        raise ValueError(
            f"trainer_arguments must be a mapping of TrainingArguments fields to values, got {arguments!r}"
        )
    known = trainer_argument_names()
    for name in arguments:
        if not isinstance(name, str) or name not in known:
            raise ValueError(f"{name!r} is not a field of transformers.TrainingArguments")
        if name in OWNED_TRAINER_ARGUMENTS:
            raise ValueError(owned_argument_message(name))


@dataclass
class TrainingResult:
    """What training produced, as plain data."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    total_steps: int = 0
    train_seconds: float = 0.0
    mean_step_seconds: float = 0.0
    peak_memory_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batches_per_epoch(num_examples: int, config: TrainingConfig) -> int:
    """Micro-batches each process runs in one epoch: ceil(n / (world_size x batch_size)), as Accelerate
    shares the epoch's batches over the processes (batch r, r + W, ... to process r, padded to a multiple)."""
    return math.ceil(num_examples / (world_size() * config.batch_size))


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
