"""Numerical faults: exit 3, step and module named, last good checkpoint kept, no metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

import senslora.finetune.pipeline as pipeline
from senslora.finetune.run_files.checkpoints import last_checkpoint

FAST = ["--no-progress", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--calibration-examples", "32"]


def check_kept_checkpoint(run_dir: Path, step: int) -> None:
    last = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert last_checkpoint(run_dir) == last
    state = json.loads((last / "senslora" / "state.json").read_text())
    assert state["global_step"] == step
    weights = load_file(last / "senslora" / "trainable.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    optimizer = torch.load(last / "optimizer.pt", weights_only=True)
    assert optimizer["state"]
    assert not (run_dir / "metrics.json").exists()


def test_huge_learning_rate_stops_with_exit_3(tiny_bert_dir, sentiment_csv, tmp_path, run_cli, stderr_lines):
    run_dir = tmp_path / "run"
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    code, _, err = run_cli([*args, "--learning-rate", "1e30", "--save-steps", "1"])
    assert code == 3, err
    lines = stderr_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    match = re.search(r"training diverged: non-finite (loss \(nan\)|gradient|weight).* at step (\d+)", lines[0])
    assert match, lines[0]
    step = int(match.group(2))
    assert f"the last good checkpoint (step {step - 1}) is kept" in lines[0]
    check_kept_checkpoint(run_dir, step - 1)


def inject_into_peft_model(monkeypatch, inject):
    """Call `inject(peft_model)` right after the pipeline builds the model to be trained."""
    build = pipeline.build_peft_model

    def build_and_inject(*args, **kwargs):
        model = build(*args, **kwargs)
        inject(model)
        return model

    monkeypatch.setattr(pipeline, "build_peft_model", build_and_inject)


def test_nan_gradient_names_step_and_parameter_and_run_resumes(
    tiny_bert_dir, sentiment_csv, tmp_path, run_cli, stderr_lines, monkeypatch
):
    target = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.default.weight"
    backward_calls = []

    def inject(model):
        parameter = dict(model.named_parameters())[target]

        def poison(gradient):
            backward_calls.append(1)
            return gradient * float("nan") if len(backward_calls) == 3 else gradient

        parameter.register_hook(poison)

    run_dir = tmp_path / "run"
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    args += ["--save-steps", "1"]
    with monkeypatch.context() as patch:
        inject_into_peft_model(patch, inject)
        code, _, err = run_cli(args)
    assert code == 3, err
    line = stderr_lines(err)
    assert len(line) == 1
    assert f"non-finite gradient at step 3 in {target!r}" in line[0]
    assert "the last good checkpoint (step 2) is kept" in line[0]
    check_kept_checkpoint(run_dir, 2)
    # The kept checkpoint is good: the run continues from it to the end.
    code, _, err = run_cli([*args, "--resume"])
    assert code == 0, err
    # 160 rows - 32 test - 13 validation = 115 train rows: 8 steps at batch 16
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 8


def test_nan_loss_names_the_first_module_with_non_finite_output(
    tiny_bert_dir, sentiment_csv, tmp_path, run_cli, stderr_lines, monkeypatch
):
    source = "bert.encoder.layer.1.intermediate.intermediate_act_fn"
    calls = []

    def inject(model):
        def poison(module, inputs, output):
            calls.append(1)
            return output * float("nan") if len(calls) >= 2 else output

        model.get_submodule("base_model.model." + source).register_forward_hook(poison)

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        inject_into_peft_model(patch, inject)
        code, _, err = run_cli(
            ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
        )
    assert code == 3, err
    line = stderr_lines(err)
    assert len(line) == 1
    assert (
        "non-finite loss (nan) at step 2" in line[0]
        and f"first non-finite output in 'base_model.model.{source}'" in line[0]
    )
    assert "no checkpoint had been written yet" in line[0]
    assert not (run_dir / "metrics.json").exists()
