"""Fine-tuning on `transformers.Trainer` (Accelerate underneath): what senslora adds to it.

`train()` builds TrainingArguments from a `TrainingConfig` (plus the fields a `--config` file passes
through, `TrainingConfig.trainer_arguments`) and runs a Trainer whose few overrides and callbacks keep
senslora's guarantees; the overrides live in `SensloraTrainerMixin`, on top of `transformers.Trainer`
(`SensloraTrainer`) or of TRL's `SFTTrainer` for instruction data (`senslora.finetune.sft`):

- data order: epoch e visits the examples in `epoch_order(n, seed, e)` (a sampler with `set_epoch`);
  under torch.distributed Accelerate gives process r the batches r, r + W, ... of that order, so one
  step of W processes with batch b is one step of one process with batch W x b;
- schedule: AdamW (torch), linear warmup over floor(warmup_ratio x total) steps then linear, cosine or
  constant decay (`learning_rate_factor`), clipping at max_grad_norm;
- evaluation: the task's own metrics (`evaluate`) at the end of each epoch (or every eval_steps steps);
  the main process's metrics decide on every process; the best adapter so far, with the sidecar that
  `on_best` writes, is kept in `run_dir/adapter` (written atomically); early stopping after
  early_stopping_patience evaluations without improvement;
- checkpoints: Trainer's checkpoint-N directories under `run_dir/checkpoints/` at the end of each epoch
  (after its evaluation) and every save_steps steps; each gets a `senslora/` folder (written last,
  atomically: a checkpoint without it is incomplete and is ignored) holding the trainable weights,
  AdaLoRA's importance scores and rank pattern, the history, the best metrics, the running loss since the
  last log line and the length of `log.jsonl`; older checkpoints are removed once a newer one is complete.
  A run killed at any point and resumed from its last checkpoint ends with the same adapter, metrics and log;
- numerical faults stop the run (`TrainingDivergedError`, exit 3): a non-finite loss names the step and
  the first module with a non-finite output, a non-finite gradient the step and the parameter (checked
  before clipping), a non-finite weight the step; nothing is saved after the fault;
- AdaLoRA: `update_and_allocate(global_step)` after every optimizer step (before the gradients are
  cleared), with PEFT's `total_step` set to the Trainer's step count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import IntervalStrategy

from senslora.finetune import training
from senslora.finetune.training import (
    TrainingConfig,
    TrainingDivergedError,
    TrainingResult,
    epoch_order,
    first_non_finite_module,
    learning_rate_factor,
)
from senslora.utils.distributed import all_processes_agree, broadcast_object, gather_objects, is_main_process
from senslora.utils.io import (
    append_line,
    atomic_directory,
    atomic_write_json,
    atomic_write_text,
    recover_directory,
    remove_stale_temporaries,
    truncate_log,
)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FOLDER = "senslora"  # inside a checkpoint-N directory; written last, so it marks a complete checkpoint
STATE_FILES = ("trainable.safetensors", "state.json")
NEEDED_STATE = {"global_step", "history", "best_epoch", "best_metrics", "train_seconds"}


# ----------------------------------------------------------------------------- checkpoints on disk


def checkpoint_step(directory: Path) -> int | None:
    """N of a `checkpoint-N` directory (None for any other name)."""
    suffix = directory.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if directory.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoint-N directories of a run, oldest first (complete or not)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(found, key=lambda path: checkpoint_step(path) or 0)


def is_complete(checkpoint: Path) -> bool:
    return all((checkpoint / STATE_FOLDER / name).is_file() for name in STATE_FILES)


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (one whose senslora/ state was written), or None."""
    complete = [path for path in checkpoints(run_dir) if is_complete(path)]
    return complete[-1] if complete else None


def read_checkpoint_state(checkpoint: str | Path) -> dict[str, Any]:
    """The senslora/state.json of a checkpoint (global_step, history, best metrics, ...).

    Raises:
        ValueError: the checkpoint is incomplete or its state is not readable JSON.
    """
    checkpoint = Path(checkpoint)
    missing = [name for name in STATE_FILES if not (checkpoint / STATE_FOLDER / name).is_file()]
    if missing:
        raise ValueError(f"checkpoint {str(checkpoint)!r} is incomplete (missing {STATE_FOLDER}/{missing[0]})")
    path = checkpoint / STATE_FOLDER / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {str(checkpoint)!r} has an unreadable state.json: {error}") from None
    if not isinstance(state, dict) or NEEDED_STATE - set(state):
        raise ValueError(f"checkpoint {str(checkpoint)!r} has a state.json without {sorted(NEEDED_STATE)}")
    return state


def check_resumable(run_dir: str | Path) -> Path:
    """The checkpoint a resumed run starts from; ValueError if there is none or it is damaged.

    Raises:
        ValueError: no checkpoint-N directory, or only incomplete ones (named), or an unreadable state.
    """
    found = checkpoints(run_dir)
    if not found:
        raise ValueError(f"{run_dir} has no checkpoint to resume from (checkpoints/); pass --overwrite to start again")
    last = last_checkpoint(run_dir)
    if last is None:
        read_checkpoint_state(found[-1])  # names what the newest one lacks
    assert last is not None
    read_checkpoint_state(last)
    for path in [last / "optimizer.pt", last / "scheduler.pt", *sorted(last.glob("rng_state*.pth"))]:
        if not path.is_file():
            raise ValueError(f"checkpoint {str(last)!r} is incomplete (missing {path.name})")
        try:  # what the Trainer will load, read here first (safely) so that a bad file is refused early
            with safe_globals():  # the Trainer's allow-list (numpy's RNG state), as it loads these files
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged or foreign file: unpickling and shape errors alike
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"checkpoint {str(last)!r} cannot be restored ({path.name}): {first}") from None
    return last


def _load_trainable(checkpoint: Path, model: nn.Module) -> None:
    """Copy the trainable weights saved in a checkpoint into `model`, refusing ones that do not fit."""
    try:
        weights = load_file(str(checkpoint / STATE_FOLDER / "trainable.safetensors"))
    except Exception as error:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"checkpoint {str(checkpoint)!r}: trainable.safetensors is unreadable: {error}") from None
    parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    unknown, absent = sorted(set(weights) - set(parameters)), sorted(set(parameters) - set(weights))
    if unknown or absent:
        example = unknown[0] if unknown else absent[0]
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not fit this model (parameter {example!r})")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(parameters[name].shape):
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} does not fit this model: {name!r} has shape {tuple(value.shape)}, "
                f"the model's is {tuple(parameters[name].shape)}"
            )
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)


# ----------------------------------------------------------------------------- run state


@dataclass
class RunState:
    """What senslora tracks beside the Trainer: history, best adapter, the loss since the last log line."""

    run_dir: Path
    config: TrainingConfig
    evaluate: Callable[[nn.Module], dict[str, float]]
    main_metric: str
    greater_is_better: bool
    adalora: bool
    progress: bool
    on_best: Callable[[nn.Module, Path], None] | None
    result: TrainingResult = field(default_factory=TrainingResult)
    running_loss: float = 0.0
    running_count: int = 0
    step_times: list[float] = field(default_factory=list)
    clock: float = field(default_factory=time.perf_counter)

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"

    @property
    def best(self) -> float | None:
        return self.result.best_metrics.get(self.main_metric)

    def is_better(self, value: float) -> bool:
        best = self.best
        return best is None or (value > best if self.greater_is_better else value < best)

    def divergence(self, message: str) -> TrainingDivergedError:
        last = last_checkpoint(self.run_dir)
        if last is not None:
            kept = f"the last good checkpoint (step {checkpoint_step(last)}) is kept in {str(last)!r}"
        else:
            kept = "no checkpoint had been written yet"
        return TrainingDivergedError(f"training diverged: {message}; {kept} (try a lower --learning-rate)")

    def to_state(self, log_bytes: int | None) -> dict[str, Any]:
        return {
            "global_step": self.result.global_step,
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_step": self.result.best_step,
            "best_metrics": self.result.best_metrics,
            "train_seconds": self.result.train_seconds,
            "running_loss": self.running_loss,
            "running_count": self.running_count,
            "log_bytes": log_bytes,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.result.global_step, self.result.history = state["global_step"], state["history"]
        self.result.best_epoch, self.result.best_metrics = state["best_epoch"], state["best_metrics"]
        self.result.best_step = state.get("best_step")
        self.result.train_seconds = state["train_seconds"]
        self.running_loss, self.running_count = state.get("running_loss", 0.0), state.get("running_count", 0)


def _epoch_number(epoch: float | None) -> float:
    """The Trainer's fractional epoch, as an integer when it is whole (the end of an epoch)."""
    value = float(epoch or 0.0)
    return round(value) if abs(value - round(value)) < 1e-9 else round(value, 6)


class EpochOrderSampler(torch.utils.data.Sampler[int]):
    """The seeded example order of each epoch (`epoch_order`); the Trainer calls `set_epoch`."""

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(self.num_examples, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.num_examples


# ----------------------------------------------------------------------------- the Trainer


class SensloraTrainerMixin:
    """Overrides shared by the plain Trainer and TRL's SFTTrainer (see the module docstring)."""

    run: RunState

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochOrderSampler(len(dataset), self.args.seed)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """LambdaLR over `learning_rate_factor`: the first step already takes lr / warmup (never lr 0)."""
        if self.lr_scheduler is None:
            warmup = math.floor(self.run.config.warmup_ratio * num_training_steps)
            kind = self.run.config.scheduler
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer if optimizer is not None else self.optimizer,
                lambda step: learning_rate_factor(step, num_training_steps, warmup, kind),
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss on a micro-batch; a non-finite one on any process stops every process."""
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss = result[0] if return_outputs else result
        if not model.training:
            return result
        value = float(loss.detach().float())
        finite = math.isfinite(value)
        if not all_processes_agree(finite):
            step = self.state.global_step + 1
            source = first_non_finite_module(self.model, inputs) if not finite else None
            where = f"; first non-finite output in {source!r}" if source else ""
            shown = f" ({value})" if not finite else " on another process"
            raise self.run.divergence(f"non-finite loss{shown} at step {step}{where}")
        self.run.running_loss += value
        self.run.running_count += 1
        return result

    def check_gradients(self) -> None:
        if self.args.fp16:  # fp16 skips steps with inf gradients by design
            return
        try:
            training._check_gradients(self.model, self.state.global_step + 1)
        except TrainingDivergedError as error:
            raise self.run.divergence(str(error)) from None

    def _clip_grad_norm(self, model):
        self.check_gradients()  # before clipping: a NaN gradient would spread to all through the norm
        return super()._clip_grad_norm(model)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Our own copy of the trainable weights (and AdaLoRA's state), checked against the model."""
        checkpoint = Path(resume_from_checkpoint)
        _load_trainable(checkpoint, self.model)
        if self.run.adalora:
            path = checkpoint / STATE_FOLDER / "adalora.safetensors"
            if not path.is_file():
                raise ValueError(f"checkpoint {str(checkpoint)!r} holds no AdaLoRA state (adalora.safetensors)")
            state = read_checkpoint_state(checkpoint)
            training._restore_adalora_state(self.model, load_file(str(path)), state.get("adalora_rank_pattern"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A training log line carries the mean micro-batch loss since the last line, over all processes."""
        if "loss" in logs:
            sums = gather_objects((self.run.running_loss, self.run.running_count))
            count = sum(s[1] for s in sums)
            if count:
                logs["loss"] = sum(s[0] for s in sums) / count
            self.run.running_loss, self.run.running_count = 0.0, 0
            record = {
                "step": self.state.global_step,
                "epoch": self.state.epoch,
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
            }
            if is_main_process():
                append_line(self.run.log_path, json.dumps(record))
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The task's metrics; records history and log, keeps the best adapter, tells the callbacks."""
        run = self.run
        started = time.perf_counter()
        metrics = broadcast_object(run.evaluate(self.model))  # the main process's metrics decide everywhere
        if run.main_metric not in metrics:
            raise ValueError(f"evaluation did not report the main metric {run.main_metric!r}")
        epoch, step = _epoch_number(self.state.epoch), self.state.global_step
        run.result.history.append({"epoch": epoch, "step": step, **metrics})
        main = is_main_process()
        if run.progress and main:
            shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            print(f"epoch {epoch}/{run.config.epochs} (step {step}): {shown}")
        if main:
            append_line(run.log_path, json.dumps({"step": step, "epoch": epoch, "eval": metrics}))
        if run.is_better(metrics[run.main_metric]):
            run.result.best_epoch, run.result.best_step, run.result.best_metrics = epoch, step, dict(metrics)
            if main:
                self.save_best_adapter()
        prefixed = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        Trainer.log(self, prefixed)  # not SFTTrainer.log, which would fold its training token metrics in
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, prefixed)
        run.clock += time.perf_counter() - started  # evaluation is not training time
        return prefixed

    def save_best_adapter(self) -> None:
        model, on_best = self.model, self.run.on_best

        def write_adapter(tmp: Path) -> None:
            model.save_pretrained(tmp)
            if on_best is not None:
                on_best(model, tmp)

        atomic_directory(self.run.run_dir / "adapter", write_adapter)


class SensloraTrainer(SensloraTrainerMixin, Trainer):
    """transformers.Trainer with senslora's data order, schedule, checks, log and best adapter."""

    def __init__(self, *args: Any, run: RunState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = run
        self.model_accepts_loss_kwargs = False  # each micro-batch's mean loss / accumulation, as before


# ----------------------------------------------------------------------------- callbacks


class GuardCallback(TrainerCallback):
    """Step timing, log lines at the end of each epoch, the last step always evaluated, weights checked."""

    def __init__(self, trainer: SensloraTrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.run.clock = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not args.max_grad_norm or args.max_grad_norm <= 0:
            self.trainer.check_gradients()  # with clipping on, `_clip_grad_norm` checked already

    def on_step_end(self, args, state, control, **kwargs):
        run = self.trainer.run
        now = time.perf_counter()
        run.step_times.append(now - run.clock)
        run.result.train_seconds += now - run.clock
        run.clock = now
        run.result.global_step = state.global_step
        try:
            training._check_weights(self.trainer.model, state.global_step)
        except TrainingDivergedError as error:
            raise run.divergence(str(error)) from None
        end_of_epoch = abs(state.epoch - round(state.epoch)) < 1e-9
        if end_of_epoch:
            control.should_log = True
        if state.global_step >= state.max_steps and args.eval_strategy != IntervalStrategy.EPOCH:
            # the final weights are always evaluated: with evaluation by epoch the epoch's end does it (also
            # when max_steps stops mid-epoch), so forcing it here too would evaluate the last step twice
            control.should_evaluate = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """A checkpoint at every epoch's end, whatever save_steps says, written after the epoch's evaluation
        (at the step's end it would precede it, and a run resumed from it would lack that evaluation)."""
        control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        """Complete the checkpoint Trainer just wrote (senslora/ last), then drop the older ones."""
        run = self.trainer.run
        started = time.perf_counter()
        checkpoint = run.run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if is_main_process():
            write_checkpoint_state(checkpoint, self.trainer.model, run)
            for older in checkpoints(run.run_dir):
                if older != checkpoint:
                    shutil.rmtree(older, ignore_errors=True)
        run.clock += time.perf_counter() - started  # saving is not training time
        return control


def write_checkpoint_state(checkpoint: Path, model: nn.Module, run: RunState) -> None:
    """Write `checkpoint/senslora/` atomically: trainable weights, AdaLoRA state, run state."""
    weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    for name, value in weights.items():
        if not bool(torch.isfinite(value).all()):
            raise run.divergence(f"weight {name!r} is not finite at step {run.result.global_step}")
    state = run.to_state(run.log_path.stat().st_size if run.log_path.exists() else None)

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "trainable.safetensors"))
        if run.adalora:
            tensors, rank_pattern = training._adalora_state(model)
            save_file(tensors, str(tmp / "adalora.safetensors"))
            state["adalora_rank_pattern"] = rank_pattern
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))

    atomic_directory(checkpoint / STATE_FOLDER, write)


class AdaLoraCallback(TrainerCallback):
    """PEFT's AdaLoRA recipe: `update_and_allocate(global_step)` after each optimizer step, before the
    gradients are cleared; `total_step` is the Trainer's step count."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def on_train_begin(self, args, state, control, **kwargs):
        config = self.model.peft_config[self.model.base_model.trainable_adapter_name]
        config.total_step = state.max_steps

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step + 1)


# ----------------------------------------------------------------------------- arguments and entry point


@contextmanager
def dataset_progress_bars(shown: bool) -> Iterator[None]:
    """Hide the `datasets` progress bars (SFTTrainer's tokenization) while a quiet run builds its trainer."""
    import datasets

    was_shown = datasets.is_progress_bar_enabled()
    if not shown:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_shown and not shown:
            datasets.enable_progress_bars()


def training_arguments(
    config: TrainingConfig,
    run_dir: Path,
    device: torch.device,
    *,
    progress: bool = False,
    main_metric: str | None = None,
    greater_is_better: bool = True,
    arguments_class: type[TrainingArguments] = TrainingArguments,
    extra_arguments: dict[str, Any] | None = None,
) -> TrainingArguments:
    """TrainingArguments for a TrainingConfig: the old loop's defaults, senslora's cadence options, then
    `config.trainer_arguments` (the fields a `--config` file passes through, checked by
    `check_trainer_arguments`) and `extra_arguments` (fields of a subclass such as TRL's SFTConfig).

    `main_metric` is what early stopping watches (metric_for_best_model, set only with a patience)."""
    report_to = [name for name in config.report_to if name != "none"] or "none"
    values = dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        optim="adamw_torch",
        max_grad_norm=config.max_grad_norm or 0.0,
        seed=config.seed,
        bf16=config.mixed_precision == "bf16",
        fp16=config.mixed_precision == "fp16",
        logging_strategy="steps",
        logging_steps=config.log_every,
        eval_strategy="steps" if config.eval_steps else "epoch",
        eval_steps=config.eval_steps,
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        metric_for_best_model=main_metric if config.early_stopping_patience else None,
        greater_is_better=greater_is_better if config.early_stopping_patience else None,
        report_to=report_to,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        label_names=["labels"],
        ddp_find_unused_parameters=False,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # `train` enables it on the model itself (SFTConfig would default to on)
    )
    try:
        return arguments_class(**{**values, **config.trainer_arguments, **(extra_arguments or {})})
    except (ValueError, TypeError) as error:
        if not config.trainer_arguments:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        shown = ", ".join(sorted(config.trainer_arguments))
        raise ValueError(f"TrainingArguments refuses the passed-through fields ({shown}): {first}") from None


FSDP_ON_CPU_MESSAGE = (
    "warning: the Accelerate config asks for FSDP, but Accelerate shards only on accelerators (GPU, XPU, ...): "
    "on the CPU this run trains with plain data parallelism (DDP), each process holding the whole model"
)


def check_accelerate_launch() -> None:
    """Refuse, before any model is loaded, an `accelerate launch` FSDP config that cannot work on the CPU.

    With `fsdp_cpu_ram_efficient_loading` (Accelerate's default) every process but the main one loads the
    model on the meta device and waits for FSDP to broadcast the weights; on the CPU Accelerate does not
    turn FSDP on, so those processes fail with "Cannot copy out of meta tensor".
    """
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    efficient_loading = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true"
    if fsdp and efficient_loading and not torch.cuda.is_available():
        raise ValueError(
            "this FSDP config sets fsdp_cpu_ram_efficient_loading, which needs a GPU (Accelerate does not "
            "shard on the CPU): set it to false, or launch with torchrun or a DDP config"
        )


def fsdp_requested_but_off(trainer: Trainer) -> bool:
    """True when `accelerate launch` was given an FSDP config (ACCELERATE_USE_FSDP) that did not take effect.

    Accelerate (1.15) turns FSDP on only for multi-accelerator runs; a multi-CPU launch silently falls back
    to DistributedDataParallel (measured: the wrapped model is DDP and no module is an FSDPModule).
    """
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled


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
    trainer_class: type[SensloraTrainerMixin] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    extra_arguments: dict[str, Any] | None = None,
) -> TrainingResult:
    """Train the trainable parameters of `model` with transformers.Trainer; keep the best adapter.

    Args:
        model: a PEFT model (only parameters with requires_grad train).
        train_dataset: tokenized examples (indexable); `collate` turns a list of them into a batch (None:
            the trainer's own collator, e.g. SFTTrainer's for its prompt/completion data).
        evaluate: returns metrics for the model, including `main_metric`.
        config: optimisation settings.
        run_dir: where `log.jsonl`, `checkpoints/checkpoint-N`, `adapter/` and `training.json` go.
        main_metric, greater_is_better: how the best evaluation is chosen.
        adalora: call `update_and_allocate(step)` after each optimizer step.
        resume: continue from the newest complete checkpoint (the log is cut back to it).
        on_best: writes extra files into the adapter directory (e.g. the allocation sidecar).
        trainer_class, trainer_kwargs: another Trainer built on SensloraTrainerMixin (e.g. TRL's
            SFTTrainer, `senslora.finetune.sft`) and its extra arguments (they may replace the placeholder
            eval_dataset); its `arguments_class` attribute (e.g. SFTConfig), if any, holds the arguments.
        extra_arguments: fields of that arguments class beyond TrainingArguments.

    Under torchrun or `accelerate launch`, `batch_size` is per process; Accelerate wraps the model
    (DDP, or FSDP / DeepSpeed from an Accelerate config) and shards each epoch's batches; every process
    evaluates and the main process's metrics decide; only the main process writes the log and adapter.

    Raises:
        ValueError: bad configuration, empty data, unusable checkpoint.
        TrainingDivergedError: NaN/inf loss, gradients or weights (the last good checkpoint is kept).
    """
    config.validate()
    if len(train_dataset) == 0:
        raise ValueError("the training split is empty")
    run_dir = Path(run_dir)
    device = next(model.parameters()).device
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no'")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    run = RunState(run_dir, config, evaluate, main_metric, greater_is_better, adalora, progress, on_best)
    main = is_main_process()
    checkpoint = None
    if resume:
        if main:
            recover_directory(run_dir / "adapter")
            for folder in checkpoints(run_dir):
                recover_directory(folder / STATE_FOLDER)
        checkpoint = check_resumable(run_dir)
        state = read_checkpoint_state(checkpoint)
        run.restore(state)
        if main:
            for folder in (run_dir, run_dir / "checkpoints", checkpoint):
                remove_stale_temporaries(folder)
            for folder in checkpoints(run_dir):
                if checkpoint_step(folder) > checkpoint_step(checkpoint):
                    shutil.rmtree(folder, ignore_errors=True)  # incomplete: written after the kept one
            # Lines logged after the checkpoint are written again by the resumed run; a torn line goes too.
            truncate_log(run.log_path, state.get("log_bytes"))
    elif main:
        atomic_write_text(run.log_path, "")
    trainer_class = trainer_class or SensloraTrainer
    arguments = training_arguments(
        config,
        run_dir,
        device,
        progress=progress,
        main_metric=main_metric,
        greater_is_better=greater_is_better,
        arguments_class=getattr(trainer_class, "arguments_class", TrainingArguments),
        extra_arguments=extra_arguments,
    )
    keywords = {"eval_dataset": [{}], **(trainer_kwargs or {})}  # a placeholder: `evaluate` runs the task's own
    with dataset_progress_bars(progress):
        trainer = trainer_class(
            model=model, args=arguments, train_dataset=train_dataset, data_collator=collate, run=run, **keywords
        )
    trainer.add_callback(GuardCallback(trainer))
    if main and fsdp_requested_but_off(trainer):
        print(FSDP_ON_CPU_MESSAGE, file=sys.stderr)
    if not progress:  # Trainer prints every log dict when its progress bar is off; log.jsonl has them
        trainer.remove_callback(PrinterCallback)
    if adalora:
        trainer.add_callback(AdaLoraCallback(model))
    if config.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    result = run.result
    result.global_step = trainer.state.global_step
    result.total_steps = trainer.state.max_steps
    result.mean_step_seconds = sum(run.step_times) / len(run.step_times) if run.step_times else 0.0
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    if main:
        atomic_write_json(run_dir / "training.json", result.to_dict())
    return result
