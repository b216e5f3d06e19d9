"""The Trainer senslora trains with: `SensloraTrainerMixin`, its overrides of `transformers.Trainer`.

The mixin goes on top of `transformers.Trainer` (`SensloraTrainer`) or of TRL's `SFTTrainer` for
instruction data (`senslora.finetune.training.sft`), and changes only what senslora guarantees:

- data order: epoch e visits the examples in `epoch_order(n, seed, e)` (`EpochOrderSampler`);
- schedule: LambdaLR over `learning_rate_factor`, so the first step already takes lr / warmup;
- the loss: each micro-batch's loss is checked (`numeric_health`) and summed for the next log line, which
  carries the mean over all processes (also appended to `log.jsonl`);
- gradients: checked before clipping;
- evaluation: the task's own `evaluate`, whose main-process metrics decide everywhere; the best adapter
  so far is written to `run_dir/adapter` (`saving`);
- resume: senslora restores the trainable weights and AdaLoRA's state itself (`resume`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from senslora.finetune.run_files.checkpoints import restore_checkpoint
from senslora.finetune.run_files.run_state import RunState
from senslora.finetune.run_files.saving import save_best_adapter
from senslora.finetune.training import numeric_health
from senslora.finetune.training.settings import epoch_order, learning_rate_factor
from senslora.utils.distributed import broadcast_object, gather_objects, is_main_process
from senslora.utils.io import append_line


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
        numeric_health.check_loss(self.run, self.model, inputs, value, self.state.global_step + 1)
        self.run.running_loss += value
        self.run.running_count += 1
        return result

    def check_gradients(self) -> None:
        if self.args.fp16:  # fp16 skips steps with inf gradients by design
            return
        numeric_health.check_gradients(self.run, self.model, self.state.global_step + 1)

    def _clip_grad_norm(self, model):
        self.check_gradients()  # before clipping: a NaN gradient would spread to all through the norm
        return super()._clip_grad_norm(model)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Our own copy of the trainable weights (and AdaLoRA's state), checked against the model."""
        restore_checkpoint(Path(resume_from_checkpoint), self.model, self.run.method)

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
                save_best_adapter(self.model, run)
        prefixed = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        Trainer.log(self, prefixed)  # not SFTTrainer.log, which would fold its training token metrics in
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, prefixed)
        run.clock += time.perf_counter() - started  # evaluation is not training time
        return prefixed


class SensloraTrainer(SensloraTrainerMixin, Trainer):
    """transformers.Trainer with senslora's data order, schedule, checks, log and best adapter."""

    def __init__(self, *args: Any, run: RunState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = run
        self.model_accepts_loss_kwargs = False  # each micro-batch's mean loss / accumulation, as before
