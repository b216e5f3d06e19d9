"""The README's main job (real MiniLM, real Rotten Tomatoes) on a reduced budget; marked slow."""

from __future__ import annotations

import json

import pytest

from senslora.cli import main


@pytest.mark.slow
def test_main_job_learns_sentiment(tmp_path):
    run_dir = tmp_path / "main"
    code = main(
        ["finetune", "--output-dir", str(run_dir), "--no-progress"]
        + ["--max-train-examples", "800", "--max-validation-examples", "400", "--epochs", "1"]
    )
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    counts = metrics["data"]["labels"]["validation"]
    majority = max(counts.values()) / sum(counts.values())
    assert metrics["validation"]["accuracy"] > majority + 0.05
