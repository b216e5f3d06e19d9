"""The command line, run in-process on tiny models and small local files; artifacts checked independently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from senslora import Allocation
from senslora.core.metrics import sensitivities_from_json

FAST = ["--no-progress", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--calibration-examples", "32"]


def test_sensitivity_allocate_finetune_evaluate(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    sensitivity_path, ranks_path = tmp_path / "sensitivity.json", tmp_path / "ranks.json"
    code, out, err = run_cli(
        ["sensitivity", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output", sensitivity_path]
        + ["--no-progress", "--calibration-examples", "32", "--max-length", "32"]
    )
    assert code == 0, err
    sensitivities, metadata = sensitivities_from_json(sensitivity_path.read_text())
    assert len(sensitivities) == 2 * 6 + 1 and metadata["estimator"] == "activation"
    assert metadata["calibration"]["examples"] == 32

    code, out, err = run_cli(["allocate", sensitivity_path, "--avg-rank", "3", "--output", ranks_path])
    assert code == 0, err
    allocation = Allocation.from_json(ranks_path.read_text())
    # default budget: uniform LoRA's parameters at rank 3 on the 13 targets, 3 * (2 * 448 + 64) = 2,880
    assert allocation.budget_unit == "params" and allocation.budget == 2880
    assert allocation.budget_used == allocation.param_count <= 2880 and max(allocation.ranks.values()) <= 6

    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--ranks", ranks_path]
        + ["--output-dir", run_dir, "--avg-rank", "3", *FAST]
    )
    assert code == 0, err
    assert "validation accuracy" in out
    for name in ("config.json", "metrics.json", "log.jsonl", "adapter/adapter_config.json", "adapter/senslora.json"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["rank_pattern"] == {n: r for n, r in allocation.ranks.items() if r > 0}
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert any("loss" in line for line in lines) and any("eval" in line for line in lines)

    # The adapter reloads with stock PEFT and reproduces the reported metric.
    code, out, err = run_cli(
        ["evaluate", "--model", tiny_bert_dir, "--data", sentiment_csv, "--adapter", run_dir / "adapter"]
        + ["--no-progress", "--max-length", "32"]
    )
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(metrics["validation"]["accuracy"])


def test_adapter_loads_with_stock_peft_only(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    )
    assert code == 0, err
    # both counts: this run's adapter (PEFT's own count) and uniform LoRA's at rank 4 on the same 13 targets,
    # 4 * (2 * (4 * (32 + 32) + (32 + 64) + (64 + 32)) + 64) = 3,840, the default (params) budget
    adapter = json.loads((run_dir / "metrics.json").read_text())["parameters"]["adapter"]
    assert f"senslora: {adapter:,} adapter" in out and "uniform LoRA at rank 4 on the same 13 targets: 3,840" in out
    # the most sensitive module below the cap can always take one more rank: what is left is below its cost,
    # at most 32 + 64 = 96
    assert 3840 - 96 < adapter <= 3840
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    allocation = Allocation.from_json((run_dir / "ranks.json").read_text())
    ranks = {
        name.removeprefix("base_model.model."): module.r["default"]
        for name, module in model.named_modules()
        if hasattr(module, "r") and isinstance(module.r, dict) and "default" in module.r
    }
    assert ranks == {n: r for n, r in allocation.ranks.items() if r > 0}
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        logits = model(**tokenizer(["a great fun movie"], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["lora", "adalora", "eva"])
def test_baseline_methods(method, tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    run_dir = tmp_path / method
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--method", method]
        + ["--output-dir", run_dir, *FAST, "--batch-size", "8"],  # AdaLoRA needs >= 10 steps
    )
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["parameters"]["adapter"] > 0
    assert f"{metrics['parameters']['adapter']:,} adapter" in out
    if method == "lora":
        # 13 targets at rank 4: 4 * sum(d_in + d_out); per layer q, k, v, attention output (32 -> 32),
        # intermediate (32 -> 64) and output (64 -> 32); plus the pooler (32 -> 32)
        per_layer = 4 * (32 + 32) + (32 + 64) + (64 + 32)
        assert metrics["parameters"]["adapter"] == 4 * (2 * per_layer + 64)
    assert f"uniform LoRA at rank 4 on the same 13 targets: {4 * 960:,} adapter parameters" in out


def test_causal_lm_on_a_text_file(tiny_llama_dir, tmp_path, run_cli):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(["the movie was good and the plot was fun but the actors were bad"] * 40))
    run_dir = tmp_path / "lm"
    code, out, err = run_cli(["finetune", "--model", tiny_llama_dir, "--data", text, "--output-dir", run_dir, *FAST])
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "causal_lm" and metrics["validation"]["perplexity"] > 1


def test_instruction_tuning_with_generation_metrics(tiny_llama_dir, tmp_path, run_cli):
    data = tmp_path / "chat.jsonl"
    rows = [{"prompt": "was the movie good", "response": "the movie was very good"}] * 30
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run_dir = tmp_path / "chat"
    code, out, err = run_cli(
        ["finetune", "--model", tiny_llama_dir, "--data", data, "--output-dir", run_dir]
        + ["--max-generation-examples", "4", "--max-new-tokens", "6", *FAST]
    )
    assert code == 0, err
    validation = json.loads((run_dir / "metrics.json").read_text())["validation"]
    assert {"perplexity", "bleu4", "rouge1", "rougeL"} <= set(validation)


def test_regression_task(tiny_bert_dir, tmp_path, run_cli):
    data = tmp_path / "pairs.tsv"
    lines = ["sentence1\tsentence2\tscore"]
    for i in range(60):
        lines.append(f"the movie was good\tthe film was {'good' if i % 2 else 'bad'}\t{4.5 if i % 2 else 0.5}")
    data.write_text("\n".join(lines))
    run_dir = tmp_path / "stsb"
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", data, "--task", "regression"]
        + ["--text-column", "sentence1", "--text-pair-column", "sentence2", "--label-column", "score"]
        + ["--output-dir", run_dir, *FAST]
    )
    assert code == 0, err
    assert {"pearson", "spearman"} <= set(json.loads((run_dir / "metrics.json").read_text())["validation"])


def test_finished_run_is_not_overwritten(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    assert run_cli(args)[0] == 0
    before = (run_dir / "metrics.json").read_bytes()
    code, out, err = run_cli(args)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run_dir / "metrics.json").read_bytes() == before
    assert run_cli([*args, "--overwrite"])[0] == 0


def test_config_file_and_flags(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_bert_dir}\ndata: {sentiment_csv}\navg_rank: 2\nestimator: fisher\nepochs: 1\n")
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["finetune", "--config", config, "--avg-rank", "3", "--output-dir", run_dir, *FAST])
    assert code == 0, err
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["avg_rank"] == 3 and resolved["estimator"] == "fisher"  # flag beats file
    sensitivity = json.loads((run_dir / "sensitivity.json").read_text())
    assert sensitivity["estimator"] == "fisher"


def test_shipped_configs_parse():
    from senslora.finetune.config import RunConfig
    from senslora.finetune.config_file import load_config_file

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert configs, "the repository ships example configs"
    for path in configs:
        RunConfig(**load_config_file(path)).validate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune", "--data", "/nonexistent/file.csv"], "does not exist"),
        (["finetune", "--model", "/nonexistent/model"], "does not exist"),
        (["finetune", "--data", "SENTIMENT", "--label-column", "nope"], "nope"),
        (["finetune", "--data", "SENTIMENT", "--avg-rank", "1", "--min-rank", "2"], "too small"),
        (["finetune", "--data", "sst2"], "cannot be loaded"),
        (["finetune", "--avg-rank", "0"], "avg_rank"),
        (["allocate", "/nonexistent.json"], "does not exist"),
        (["finetune", "--config", "CONFIG"], "unknown option"),
        (["finetune", "--estimator", "oracle"], "invalid choice"),
        (["evaluate", "--adapter", "/nonexistent"], "adapter"),
    ],
)
def test_bad_input_one_line_exit_2(args, message, tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("colour: blue\n")
    replaced = [str(sentiment_csv) if a == "SENTIMENT" else str(bad_config) if a == "CONFIG" else a for a in args]
    if "--model" not in replaced and replaced[0] in ("finetune", "evaluate"):
        replaced += ["--model", str(tiny_bert_dir)]
    replaced += ["--output-dir", str(tmp_path / "out")] if replaced[0] == "finetune" else []
    with pytest.raises(SystemExit) if message == "invalid choice" else _nullcontext():
        code, out, err = run_cli([*replaced, "--no-progress"] if replaced[0] != "allocate" else replaced)
        assert code == 2
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "metrics.json").exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_label_free_calibration_source_for_activation(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    texts = tmp_path / "other.txt"
    texts.write_text("\n".join(f"an unrelated sentence number {i} about the weather" for i in range(40)))
    output = tmp_path / "sensitivity.json"
    base = ["sensitivity", "--model", tiny_bert_dir, "--data", sentiment_csv, "--calibration-data", texts]
    code, _, err = run_cli([*base, "--output", output, "--no-progress", "--calibration-examples", "16"])
    assert code == 0, err
    _, metadata = sensitivities_from_json(output.read_text())
    assert metadata["calibration"]["examples"] == 16 and str(texts) in metadata["calibration"]["source"]
    code, _, err = run_cli([*base, "--output", tmp_path / "f.json", "--estimator", "fisher", "--no-progress"])
    assert code == 2 and "no labels" in err


def test_best_checkpoint_is_named_by_step_and_a_two_decimal_epoch(tiny_bert_dir, sentiment_csv, tmp_path, run_cli):
    # 160 rows: a fifth (32) held out as test, 10 % of the other 128 (13) for validation: 115 train rows,
    # 8 steps an epoch at batch 16; 2 steps = epoch 2/8.
    code, out, err = run_cli(
        ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", tmp_path / "run"]
        + [*FAST, "--max-steps", "2"]
    )
    assert code == 0, err
    assert "(best at step 2, epoch 0.25)" in out, out
