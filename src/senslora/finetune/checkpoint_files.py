"""Where a run's checkpoints lie on disk, which of them are complete, and what their state file holds.

A run keeps Trainer's `checkpoint-N` directories under `run_dir/checkpoints/`. Each complete one holds a
`senslora/` folder, written last and atomically (`senslora.finetune.saving`), with the trainable weights
and `state.json`; a checkpoint without it is incomplete and is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
