"""Fine-tuning on `transformers.Trainer` (Accelerate underneath): the entry point, `train()`.

`train()` builds TrainingArguments from a `TrainingConfig` (plus the fields a `--config` file passes
through, `TrainingConfig.trainer_arguments`) and runs a Trainer whose few overrides and callbacks keep
senslora's guarantees; the overrides live in `SensloraTrainerMixin` (`senslora.finetune.training.trainer`), on top
of `transformers.Trainer` (`SensloraTrainer`) or of TRL's `SFTTrainer` for instruction data
(`senslora.finetune.training.sft`). What the run guarantees, and the module that keeps it:

- data order (`trainer`): epoch e visits the examples in `epoch_order(n, seed, e)` (a sampler with
  `set_epoch`); under torch.distributed Accelerate gives process r the batches r, r + W, ... of that order,
  so one step of W processes with batch b is one step of one process with batch W x b;
- schedule (`trainer`): AdamW (torch), linear warmup over floor(warmup_ratio x total) steps then linear,
  cosine or constant decay (`learning_rate_factor`), clipping at max_grad_norm;
- evaluation (`trainer`, `saving`): the task's own metrics (`evaluate`) at the end of each epoch (or every
  eval_steps steps); the main process's metrics decide on every process; the best adapter so far, with the
  sidecar that `on_best` writes, is kept in `run_dir/adapter` (written atomically); early stopping after
  early_stopping_patience evaluations without improvement;
- checkpoints (`callbacks`, `saving`, `checkpoint_files`, `resume`): Trainer's checkpoint-N directories
  under `run_dir/checkpoints/` at the end of each epoch (after its evaluation) and every save_steps steps;
  each gets a `senslora/` folder (written last, atomically: a checkpoint without it is incomplete and is
  ignored) holding the trainable weights, AdaLoRA's importance scores and rank pattern, the history, the
  best metrics, the running loss since the last log line and the length of `log.jsonl`; older checkpoints
  are removed once a newer one is complete. A run killed at any point and resumed from its last checkpoint
  ends with the same adapter, metrics and log;
- numerical faults (`numeric_health`) stop the run (`TrainingDivergedError`, exit 3): a non-finite loss
  names the step and the first module with a non-finite output, a non-finite gradient the step and the
  parameter (checked before clipping), a non-finite weight the step; nothing is saved after the fault;
- AdaLoRA (`callbacks`): `update_and_allocate(global_step)` after every optimizer step (before the
  gradients are cleared), with PEFT's `total_step` set to the Trainer's step count.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

from senslora.finetune.methods.base import Method
from senslora.finetune.run_files.checkpoints import (
    STATE_FOLDER,
    check_resumable,
    checkpoint_step,
    checkpoints,
    read_checkpoint_state,
)
from senslora.finetune.run_files.run_state import RunState
from senslora.finetune.training.callbacks import GuardCallback
from senslora.finetune.training.settings import TrainingConfig, TrainingResult
from senslora.finetune.training.trainer import SensloraTrainer, SensloraTrainerMixin
from senslora.utils.distributed import is_main_process
from senslora.utils.io import (
    atomic_write_json,
    atomic_write_text,
    recover_directory,
    remove_stale_temporaries,
    truncate_log,
)


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


def build_trainer(
    model: nn.Module,
    train_dataset: Sequence[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None,
    run: RunState,
    device: torch.device,
    *,
    trainer_class: type[SensloraTrainerMixin] | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    extra_arguments: dict[str, Any] | None = None,
) -> Trainer:
    """The Trainer of a run (see `train` for the arguments), with senslora's callbacks added."""
    trainer_class = trainer_class or SensloraTrainer
    arguments = training_arguments(
        run.config,
        run.run_dir,
        device,
        progress=run.progress,
        main_metric=run.main_metric,
        greater_is_better=run.greater_is_better,
        arguments_class=getattr(trainer_class, "arguments_class", TrainingArguments),
        extra_arguments=extra_arguments,
    )
    keywords = {"eval_dataset": [{}], **(trainer_kwargs or {})}  # a placeholder: `evaluate` runs the task's own
    with dataset_progress_bars(run.progress):
        trainer = trainer_class(
            model=model, args=arguments, train_dataset=train_dataset, data_collator=collate, run=run, **keywords
        )
    trainer.add_callback(GuardCallback(trainer))
    if is_main_process() and fsdp_requested_but_off(trainer):
        print(FSDP_ON_CPU_MESSAGE, file=sys.stderr)
    if not run.progress:  # Trainer prints every log dict when its progress bar is off; log.jsonl has them
        trainer.remove_callback(PrinterCallback)
    for callback in run.method.step_callbacks(model):  # AdaLoRA: update_and_allocate after each step
        trainer.add_callback(callback)
    if run.config.early_stopping_patience:
        trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=run.config.early_stopping_patience))
    return trainer


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
    method: Method | None = None,
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
        method: the fine-tuning method, for its step callbacks and checkpoint state (AdaLoRA's
            `update_and_allocate(step)` after each optimizer step; None: none, as for LoRA).
        resume: continue from the newest complete checkpoint (the log is cut back to it).
        on_best: writes extra files into the adapter directory (e.g. the allocation sidecar).
        trainer_class, trainer_kwargs: another Trainer built on SensloraTrainerMixin (e.g. TRL's
            SFTTrainer, `senslora.finetune.training.sft`) and its extra arguments (they may replace the placeholder
            eval_dataset); its `arguments_class` attribute (e.g. SFTConfig), if any, holds the arguments.
        extra_arguments: fields of that arguments class beyond TrainingArguments.

    Under torchrun or `accelerate launch`, `batch_size` is per process; Accelerate wraps the model
    (DDP, or FSDP / DeepSpeed from an Accelerate config) and shards each epoch's batches; every process
    evaluates and the main process's metrics decide; only the main process writes the log and adapter.

    Raises:
        ValueError: bad configuration, empty data, unusable checkpoint.
        TrainingDivergedError: NaN/inf loss, gradients or weights (the last good checkpoint is kept).
    """
    # Refuse what cannot run before anything is written.
    config.validate()
    if len(train_dataset) == 0:
        raise ValueError("the training split is empty")
    run_dir = Path(run_dir)
    device = next(model.parameters()).device
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' or 'no'")
    # The model's device decides this process's GPU. Gradient checkpointing (non-reentrant) trades compute
    # for memory; the embeddings' output is made to require grad, as PEFT does for a frozen base model.
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    method = method or Method()
    run = RunState(run_dir, config, evaluate, main_metric, greater_is_better, method, progress, on_best)
    main = is_main_process()
    checkpoint = None
    if resume:
        # Finish or undo the directory swaps a kill interrupted (adapter/, each checkpoint's senslora/), so
        # that the newest complete checkpoint is found and checked as it was last written; the run's own
        # state (history, best metrics, time, running loss) continues from that checkpoint's.
        if main:
            recover_directory(run_dir / "adapter")
            for folder in checkpoints(run_dir):
                recover_directory(folder / STATE_FOLDER)
        checkpoint = check_resumable(run_dir)
        state = read_checkpoint_state(checkpoint)
        run.restore(state)
        # Drop what was written after that checkpoint, so the resumed run writes it again as it was.
        if main:
            for folder in (run_dir, run_dir / "checkpoints", checkpoint):
                remove_stale_temporaries(folder)
            for folder in checkpoints(run_dir):
                if checkpoint_step(folder) > checkpoint_step(checkpoint):
                    shutil.rmtree(folder, ignore_errors=True)  # incomplete: written after the kept one
            # Lines logged after the checkpoint are written again by the resumed run; a torn line goes too.
            truncate_log(run.log_path, state.get("log_bytes"))
    elif main:
        atomic_write_text(run.log_path, "")  # a fresh run starts with an empty log
    trainer = build_trainer(
        model,
        train_dataset,
        collate,
        run,
        device,
        trainer_class=trainer_class,
        trainer_kwargs=trainer_kwargs,
        extra_arguments=extra_arguments,
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    # The Trainer's own counts complete the result the callbacks filled in; only the main process writes it.
    result = run.result
    result.global_step = trainer.state.global_step
    result.total_steps = trainer.state.max_steps
    result.mean_step_seconds = sum(run.step_times) / len(run.step_times) if run.step_times else 0.0
    if device.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    if main:
        atomic_write_json(run_dir / "training.json", result.to_dict())
    return result
