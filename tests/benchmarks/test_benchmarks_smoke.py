"""The benchmark harness end to end on its smoke profile (real MiniLM, a few steps), then the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
    # the default budget: uniform LoRA's adapter parameters, spent to within one rank of MiniLM's costliest
    # module (384 + 1536), with no rank above twice the average
    lora, senslora = (results[f"smoke-{m}"]["parameters"]["adapter"] for m in ("lora", "senslora"))
    assert lora - 1920 < senslora <= lora and max(results["smoke-senslora"]["ranks"].values()) <= 8
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


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The prepared GPU check runs end to end on the CPU (every estimator, a few bf16 steps)."""
    output = tmp_path / "gpu_check.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--models", "minilm"]
    command += ["--calibration-examples", "16", "--steps", "2", "--output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = json.loads(output.read_text())["rows"]
    assert [row["workload"] for row in rows] == [
        "no-grad forward (bf16)",
        "sensitivity activation (bf16)",
        "sensitivity fisher (bf16)",
        "sensitivity hutchinson (bf16)",
        "finetune bf16 (2 steps)",
        "finetune nf4 (2 steps)",
    ]
    assert all(row["seconds"] > 0 and row["peak_memory_mb"] > 0 for row in rows)
    activation = rows[1]
    assert activation["ratio_to_forward"] == activation["seconds"] / rows[0]["seconds"]
    # the paper's 25.78 s on 8.03 B parameters, scaled to MiniLM's 22.7 M
    assert activation["paper_yardstick_seconds"] == pytest.approx(25.78 * 22.7e6 / 8.03e9, rel=0.01)


def test_adapter_update_norms_match_peft_delta_weights(tmp_path, benchmark_module):
    """The harness's ||(alpha/r) B A|| per module equals PEFT's own get_delta_weight of the saved adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    run = benchmark_module("run")
    adapter_update_norms, load_adapter = run.adapter_update_norms, run.load_adapter

    torch.manual_seed(0)
    config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        rank_pattern={"encoder.layer.0.attention.self.query": 2},
        alpha_pattern={"encoder.layer.0.attention.self.query": 3, "value": 20},
    )
    model = get_peft_model(BertModel(config), lora)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter.data)  # B starts at zero; give the update a size
    model.save_pretrained(tmp_path / "adapter")
    expected = {
        name.removeprefix("base_model.model."): float(module.get_delta_weight("default").detach().double().norm())
        for name, module in model.named_modules()
        if hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")
    }
    measured = adapter_update_norms(*load_adapter(tmp_path))
    assert set(measured) == set(expected) and len(expected) == 4
    for name, value in expected.items():
        assert abs(measured[name] - value) <= 1e-4 * value, name


def test_published_activation_rows_keep_their_labels_and_settings(benchmark_module):
    """The activation rows were published uncapped (the default then): the experiments now say so, and the
    label stays the one the published results carry."""
    experiments, summarize = benchmark_module("experiments"), benchmark_module("summarize")
    published = {"method": "senslora", "estimator": "activation", "budget_unit": "params"}
    explicit = published | {"max_rank_factor": 0}
    capped = published | {"max_rank_factor": 2.0}
    label = "senslora (activation) budget_unit=params"
    assert summarize.method_label({"overrides": published}) == summarize.method_label({"overrides": explicit}) == label
    assert summarize.method_label({"overrides": capped}) == label + ", max_rank_factor=2.0"
    for experiment in experiments.full():
        overrides = experiment.overrides
        if overrides.get("method") == "senslora" and overrides.get("estimator") == "activation":
            assert "max_rank_factor" in overrides or "ranks" in overrides, experiment.name
            assert "budget_unit" in overrides, experiment.name
