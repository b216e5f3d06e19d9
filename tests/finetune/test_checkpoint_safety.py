"""A checkpoint whose pickled optimizer state would run code is refused before anything unpickles it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


class RunsCode:
    """An object whose unpickling would create a file (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_pickled_code_is_refused_and_not_run(tmp_path):
    """A checkpoint whose optimizer.pt would run code when unpickled is refused before the Trainer loads it."""
    from senslora.finetune.run_files.checkpoints import check_resumable

    model = torch.nn.Linear(3, 2)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    (checkpoint / "senslora").mkdir(parents=True)
    save_file(
        {n: p.detach().clone() for n, p in model.named_parameters()},
        str(checkpoint / "senslora" / "trainable.safetensors"),
    )
    state = {"global_step": 4, "history": [], "best_epoch": None, "best_metrics": {}, "train_seconds": 0.0}
    (checkpoint / "senslora" / "state.json").write_text(json.dumps(state))
    marker = tmp_path / "code-ran"
    torch.save({"state": RunsCode(str(marker)), "param_groups": []}, checkpoint / "optimizer.pt")
    torch.save({}, checkpoint / "scheduler.pt")
    with pytest.raises(ValueError, match=r"cannot be restored \(optimizer.pt\)"):
        check_resumable(tmp_path)
    assert not marker.exists()
