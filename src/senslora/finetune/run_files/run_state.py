"""RunState: what senslora tracks beside the Trainer during one run, and what a checkpoint saves of it.

It holds the history of evaluations, the best metrics so far, the training time and step times, and the
running loss since the last log line; `to_state` and `restore` are its form in a checkpoint's state.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from senslora.finetune.methods.base import Method
from senslora.finetune.run_files.checkpoints import checkpoint_step, last_checkpoint
from senslora.finetune.training.settings import TrainingConfig, TrainingDivergedError, TrainingResult


@dataclass
class RunState:
    """What senslora tracks beside the Trainer: history, best adapter, the loss since the last log line."""

    run_dir: Path
    config: TrainingConfig
    evaluate: Callable[[nn.Module], dict[str, float]]
    main_metric: str
    greater_is_better: bool
    method: Method  # its step callbacks and checkpoint state
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
