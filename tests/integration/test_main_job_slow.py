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


@pytest.mark.slow
def test_smollm2_converts_from_gguf_and_generates(tmp_path, monkeypatch):
    """The real SmolLM2-135M from its GGUF file, converted into a fresh cache, answers a factual prompt."""
    import torch

    from senslora.finetune.models import load_model_and_tokenizer

    monkeypatch.setenv("SENSLORA_CACHE", str(tmp_path / "cache"))
    model, tokenizer = load_model_and_tokenizer("smollm2", "causal_lm")
    assert (tmp_path / "cache" / "smollm2-135m-instruct" / "model.safetensors").exists()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])
