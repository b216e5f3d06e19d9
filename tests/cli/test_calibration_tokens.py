"""--calibration-tokens: auto is completion for instruction data with the forward-only estimators, recorded in
sensitivity.json; an explicit completion elsewhere is refused."""

from __future__ import annotations

import json

import pytest

from senslora.core.metrics import sensitivities_from_json
from senslora.finetune.config import RunConfig, effective_calibration_tokens


def test_auto_is_completion_for_instruction_data_with_forward_only_estimators():
    assert effective_calibration_tokens("auto", "activation", "instruction") == "completion"
    assert effective_calibration_tokens("auto", "obd", "instruction") == "completion"
    assert effective_calibration_tokens("auto", "fisher", "instruction") == "all"
    assert effective_calibration_tokens("auto", "activation", "causal_lm") == "all"
    assert effective_calibration_tokens("all", "activation", "instruction") == "all"
    with pytest.raises(ValueError, match="needs instruction data"):
        effective_calibration_tokens("completion", "activation", "classification")
    with pytest.raises(ValueError, match="activation and obd"):
        RunConfig(calibration_tokens="completion", estimator="hutchinson").validate()


def test_sensitivity_command_counts_only_completion_tokens_on_instruction_data(tiny_llama_dir, tmp_path, run_cli):
    data = tmp_path / "chat.jsonl"
    rows = [{"prompt": "was the movie good and was the plot fun", "response": "the movie was very good"}] * 20
    data.write_text("\n".join(json.dumps(r) for r in rows))
    counted = {}
    for choice in ("auto", "all"):
        out = tmp_path / f"{choice}.json"
        code, _, err = run_cli(
            ["sensitivity", "--model", tiny_llama_dir, "--data", data, "--output", out, "--no-progress"]
            + ["--calibration-examples", "8", "--max-length", "32", "--calibration-tokens", choice]
        )
        assert code == 0, err
        calibration = sensitivities_from_json(out.read_text())[1]["calibration"]
        counted[choice] = calibration["counted_tokens"]
        assert calibration["calibration_tokens"] == ("completion" if choice == "auto" else "all")
    assert counted["all"] > counted["auto"] > 0
