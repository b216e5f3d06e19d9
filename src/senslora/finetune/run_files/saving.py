"""What a run writes as it trains, each atomically: a checkpoint's senslora/ state and the best adapter.

    checkpoint-N/senslora/   trainable.safetensors, adalora.safetensors (AdaLoRA), state.json
    adapter/                 the best adapter so far (`save_pretrained`) and what `on_best` adds to it

A checkpoint's senslora/ folder is written after Trainer's own files, so its presence marks the checkpoint
complete (`senslora.finetune.run_files.checkpoints`).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from senslora.finetune.run_files.checkpoints import STATE_FOLDER
from senslora.finetune.run_files.run_state import RunState
from senslora.finetune.training.numeric_health import check_saved_weights
from senslora.utils.io import atomic_directory, atomic_write_text


def write_checkpoint_state(checkpoint: Path, model: nn.Module, run: RunState) -> None:
    """Write `checkpoint/senslora/` atomically: trainable weights, the method's state (AdaLoRA's), run state."""
    weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    check_saved_weights(run, weights)
    state = run.to_state(run.log_path.stat().st_size if run.log_path.exists() else None)

    def write(tmp: Path) -> None:
        save_file(weights, str(tmp / "trainable.safetensors"))
        method_state = run.method.checkpoint_state(model)  # AdaLoRA: importance scores, rank pattern
        if method_state is not None:
            tensors, value = method_state
            save_file(tensors, str(tmp / run.method.state_file))
            state[run.method.state_key] = value
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))

    atomic_directory(checkpoint / STATE_FOLDER, write)


def save_best_adapter(model: nn.Module, run: RunState) -> None:
    """Write `run_dir/adapter/` atomically: the model's adapter, then what `run.on_best` adds (the sidecar)."""
    on_best = run.on_best

    def write_adapter(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if on_best is not None:
            on_best(model, tmp)

    atomic_directory(run.run_dir / "adapter", write_adapter)
