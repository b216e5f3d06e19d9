"""A run's checkpoints: where they lie on disk, which are complete, what their state file holds, and
resuming from one (choosing it, checking every file the Trainer will load, restoring its weights).

A run keeps Trainer's `checkpoint-N` directories under `run_dir/checkpoints/`. Each complete one holds a
`senslora/` folder, written last and atomically (`senslora.finetune.run_files.saving`), with the
trainable weights and `state.json`; a checkpoint without it is incomplete and is ignored. A resumed run
starts from the newest complete checkpoint; every file the Trainer will load from it is read here first,
so that a damaged one is refused before training starts; the trainable weights (and AdaLoRA's state)
are then copied in by senslora, checked against the model, rather than by the Trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.trainer_pt_utils import safe_globals

from senslora.finetune.methods.base import Method

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FOLDER = "senslora"  # inside a checkpoint-N directory; written last, so it marks a complete checkpoint
STATE_FILES = ("trainable.safetensors", "state.json")
NEEDED_STATE = {"global_step", "history", "best_epoch", "best_metrics", "train_seconds"}


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


def load_trainable(checkpoint: Path, model: nn.Module) -> None:
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


def restore_checkpoint(checkpoint: Path, model: nn.Module, method: Method) -> None:
    """The trainable weights of a checkpoint and the method's state beside them (AdaLoRA: its importance
    scores and rank pattern)."""
    load_trainable(checkpoint, model)
    if method.state_file is not None:
        path = checkpoint / STATE_FOLDER / method.state_file
        if not path.is_file():
            raise ValueError(f"checkpoint {str(checkpoint)!r} holds no {method.name} state ({method.state_file})")
        state = read_checkpoint_state(checkpoint)
        method.restore_checkpoint_state(model, load_file(str(path)), state.get(method.state_key))
