"""The run directory: when it may be written, resumed or replaced, and the sidecar stored beside the adapter.

A run directory is finished when `metrics.json` exists; it is never replaced without `overwrite`, and an
unfinished one continues with `resume` (only with the options it was started with). A run that fails
before writing anything but its configuration removes the directory it created (`NewRunDirectory`), so
the corrected command starts afresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senslora.core.allocation_result import Allocation
from senslora.core.metrics import ModuleSensitivity
from senslora.finetune.config import RunConfig
from senslora.finetune.environment import package_versions
from senslora.finetune.run_files.checkpoints import STATE_FOLDER, check_resumable, checkpoints
from senslora.utils.io import check_output_path, read_text, recover_directory

FINISHED_MARKER = "metrics.json"


# Options that may differ between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "progress", "device", "eval_batch_size", "output_dir"})


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to replace a finished run without overwrite, or to resume where there is nothing to resume.

    Also refuses a run directory that is a file, lies under a file, or is not writable, and a non-empty
    directory that is not a run directory (overwrite would delete it).
    """
    check_output_path(run_dir, "output directory", directory=True)
    finished = (run_dir / FINISHED_MARKER).exists()
    if run_dir.is_dir():
        recover_directory(run_dir / "adapter")
        for checkpoint in checkpoints(run_dir):
            recover_directory(checkpoint / STATE_FOLDER)
    if resume:
        if finished:
            raise ValueError(f"{run_dir} holds a finished run; nothing to resume (pass --overwrite to replace it)")
        check_resumable(run_dir)
        return
    if finished and not overwrite:
        raise ValueError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if occupied and not (run_dir / "config.json").is_file():
        # --overwrite deletes the directory: never one that is not a run directory.
        raise ValueError(
            f"output directory {str(run_dir)!r} is not empty and holds no senslora run (no config.json); "
            "choose another --output-dir"
        )
    if occupied and not overwrite:
        raise ValueError(f"{run_dir} holds an unfinished run; pass --resume to continue it or --overwrite")


def check_resume_config(run_dir: Path, config: RunConfig) -> None:
    """Raise ValueError if a resumed run is given options other than those it was started with."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        started = json.loads(read_text(path, "run configuration"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(started, dict):
        raise ValueError(f"{path} does not hold a configuration object")
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and k in started and started[k] != current[k])
    if changed:
        name = changed[0]
        raise ValueError(
            f"--resume needs the options the run was started with: {name} was {started[name]!r}, now "
            f"{current[name]!r} (see {path})"
        )


def sidecar(
    allocation: Allocation | None,
    sensitivities: dict[str, ModuleSensitivity] | None,
    sensitivity_metadata: dict[str, Any] | None,
    model_loading: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON stored beside the adapter: per-module metrics, weights, theta, ranks and provenance
    (with how the base was loaded for training: dtype, quantization)."""
    document: dict[str, Any] = {"format": "senslora.adapter-sidecar/1", "versions": package_versions()}
    if model_loading is not None:
        document["model_loading"] = model_loading
    if allocation is not None:
        document["allocation"] = allocation.to_dict()
    if sensitivities is not None:
        document["sensitivity"] = {
            **(sensitivity_metadata or {}),
            "modules": [item.to_dict() for item in sensitivities.values()],
        }
    return document


@dataclass
class NewRunDirectory:
    """The run directory a run creates, removed again if the run fails before writing any result.

    Only a directory holding nothing but config.json (and an empty log.jsonl) is removed: one with
    sensitivity.json, ranks.json, a checkpoint, an adapter or log lines is kept for --resume or a look.
    A directory that existed (empty) before the run is kept; only what the run wrote goes.
    """

    path: Path | None = None
    existed: bool = False

    def create(self, path: Path, *, resumed: bool) -> None:
        """Make `path` (and its parents); a resumed run's directory is never removed."""
        existed = path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if not resumed:
            self.path, self.existed = path, existed

    def remove_if_unstarted(self) -> None:
        if self.path is None or not holds_only_configuration(self.path):
            return
        for entry in self.path.iterdir():
            entry.unlink()
        if not self.existed:
            self.path.rmdir()


def holds_only_configuration(run_dir: Path) -> bool:
    """True if `run_dir` holds config.json and at most an empty log.jsonl, nothing else."""
    if not run_dir.is_dir():
        return False
    entries = {entry.name: entry for entry in run_dir.iterdir()}
    if not set(entries) <= {"config.json", "log.jsonl"}:
        return False
    log = entries.get("log.jsonl")
    return all(entry.is_file() for entry in entries.values()) and (log is None or log.stat().st_size == 0)
