"""The benchmark harness end to end on its smoke profile (real MiniLM, a few steps), then the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_profile_runs_resumes_and_summarizes(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--profile",
        "smoke",
        "--results-dir",
        str(tmp_path),
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    results = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(results) == {"smoke-lora", "smoke-senslora"}
    for result in results.values():
        assert result["global_step"] == 4 and 0.0 <= result["validation"]["accuracy"] <= 1.0
        assert len(result["ranks"]) == 37 and result["parameters"]["adapter"] > 0
        assert result["peak_rss_mb"] > 0 and result["versions"]["senslora"]
    assert set(results["smoke-lora"]["ranks"].values()) == {4}
    assert sum(results["smoke-senslora"]["ranks"].values()) == 4 * 37
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "2 done already, 0 to run" in again.stdout  # resumable
    summary = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "summarize.py"), "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert summary.returncode == 0, summary.stderr
    assert "| lora | 4 |" in summary.stdout and (tmp_path / "rank_profiles.png").exists()
