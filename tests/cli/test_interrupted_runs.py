"""Interrupted runs: kill -9 after a checkpoint, or Ctrl-C mid-epoch, then --resume gives the adapter,
metrics and log of the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from senslora.finetune.run_files.checkpoints import last_checkpoint

FAST = ["--no-progress", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--calibration-examples", "32"]


SLOW_TRAINING = """
import sys, time
import senslora.finetune.training.settings as training
check = training._check_gradients
def slow_check(model, step):
    time.sleep(0.3)
    check(model, step)
training._check_gradients = slow_check
from senslora.cli import main
sys.exit(main(sys.argv[1:]))
"""


def read_state(run_dir: Path) -> dict | None:
    """The senslora state of the newest complete checkpoint (None while there is none)."""
    try:
        last = last_checkpoint(run_dir)
        return json.loads((last / "senslora" / "state.json").read_text()) if last else None
    except (OSError, ValueError):
        return None  # not written yet, or being replaced right now


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_uninterrupted_result(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    # 160 rows -> 32 held out as test -> 115 train (13 carved for validation) -> 8 steps per epoch, 24 in all.
    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--no-progress", "--epochs", "3"]
    options += ["--batch-size", "16", "--max-length", "32", "--calibration-examples", "32", "--seed", "3"]
    options += ["--save-steps", "2", "--log-every", "5"]
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_TRAINING, "finetune", *map(str, options), "--output-dir", str(killed)],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 240
            state = None
            while time.monotonic() < deadline and process.poll() is None:
                state = read_state(killed)
                if state and state["global_step"] >= 12:
                    break
                time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert state is not None and state["global_step"] % 2 == 0
    final_state = read_state(killed)
    # The checkpoint is mid-epoch (8 steps per epoch, one checkpoint every 2 steps and at each epoch's end).
    assert 8 < final_state["global_step"] < 16 and final_state["global_step"] % 2 == 0
    assert not (killed / "metrics.json").exists()

    # The best adapter so far (epoch 1) survived the kill whole and loads with stock PEFT.
    assert final_state["best_epoch"] == 1
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    PeftModel.from_pretrained(base, killed / "adapter")
    assert all(torch.isfinite(t).all() for t in load_file(killed / "adapter" / "adapter_model.safetensors").values())

    # A torn last log line (a kill mid-write) must be dropped on resume.
    with (killed / "log.jsonl").open("a") as stream:
        stream.write('{"step": 99, "lo')
    code, _, err = run_cli(["finetune", *options, "--output-dir", killed, "--resume"])
    assert code == 0, err

    straight = tmp_path / "straight"
    code, _, err = run_cli(["finetune", *options, "--output-dir", straight])
    assert code == 0, err

    resumed_weights = load_file(killed / "adapter" / "adapter_model.safetensors")
    straight_weights = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:
        torch.testing.assert_close(resumed_weights[name], straight_weights[name], atol=1e-6, rtol=1e-6)
    resumed, reference = (json.loads((d / "metrics.json").read_text()) for d in (killed, straight))
    assert resumed["best_epoch"] == reference["best_epoch"] and resumed["global_step"] == reference["global_step"] == 24
    assert resumed["validation"] == pytest.approx(reference["validation"], abs=1e-6)
    assert resumed["history"] == pytest.approx(reference["history"], abs=1e-6)
    assert resumed["sensitivity_seconds"] > 0  # restored from the run's sensitivity.json
    sidecar = json.loads((killed / "adapter" / "senslora.json").read_text())
    assert len(sidecar["sensitivity"]["modules"]) == 13
    # The log reads as if the run had never stopped: same records, no torn or repeated line.
    resumed_log, reference_log = log_records(killed), log_records(straight)
    assert [r["step"] for r in resumed_log] == [r["step"] for r in reference_log]
    assert resumed_log == pytest.approx(reference_log, abs=1e-6)


@pytest.mark.parametrize(("method", "stop_at"), [("adalora", 8), ("lora", 5)])
def test_interrupted_run_resumes_exactly(
    method, stop_at, tiny_bert_dir, sentiment_csv, tmp_path, run_cli, stderr_lines, monkeypatch
):
    """Ctrl-C (exit 130) mid-epoch, then --resume: the same adapter as without the interruption. For AdaLoRA
    the checkpoint must carry its importance scores (the interruption falls inside its allocation phase);
    for LoRA with gradient accumulation the checkpoint falls between accumulation groups."""
    import senslora.finetune.training.settings as training

    options = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--method", method, *FAST]
    options += ["--batch-size", "8", "--save-steps", "3", "--log-every", "2"]
    if method == "lora":
        options += ["--gradient-accumulation-steps", "2", "--epochs", "2"]
    check = training._check_gradients

    def interrupt(model, step):
        if step == stop_at:
            raise KeyboardInterrupt
        check(model, step)

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(training, "_check_gradients", interrupt)
        code, _, err = run_cli(["finetune", *options, "--output-dir", run_dir])
    assert code == 130 and "--resume" in err and len(stderr_lines(err)) == 1
    assert read_state(run_dir)["global_step"] == 3 * ((stop_at - 1) // 3)
    assert run_cli(["finetune", *options, "--output-dir", run_dir, "--resume"])[0] == 0
    straight = tmp_path / "straight"
    assert run_cli(["finetune", *options, "--output-dir", straight])[0] == 0
    resumed_weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    straight_weights = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:
        torch.testing.assert_close(resumed_weights[name], straight_weights[name], atol=1e-6, rtol=1e-6)
    resumed, reference = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, straight))
    assert resumed["validation"] == pytest.approx(reference["validation"], abs=1e-6)
    assert log_records(run_dir) == pytest.approx(log_records(straight), abs=1e-6)
