"""Resuming a run: choosing the checkpoint it continues from, checking it, restoring its weights.

A resumed run starts from the newest complete checkpoint (`senslora.finetune.checkpoint_files`). Every
file the Trainer will load from it is read here first, so that a damaged one is refused before training
starts; the trainable weights (and AdaLoRA's state) are then copied in by senslora, checked against the
model, rather than by the Trainer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.trainer_pt_utils import safe_globals

from senslora.finetune.checkpoint_files import (
    STATE_FOLDER,
    checkpoints,
    last_checkpoint,
    read_checkpoint_state,
)
from senslora.finetune.methods.base import Method


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
