"""`senslora export`: every format checked against independent readers (stock PEFT, PyYAML, hand-computed
alphas), and every refusal: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from senslora import Allocation
from senslora.cli import main

FAST = ["--no-progress", "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--calibration-examples", "32"]


@pytest.fixture(scope="module")
def finished_run(tiny_bert_dir, sentiment_csv, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    args = ["finetune", "--model", tiny_bert_dir, "--data", sentiment_csv, "--output-dir", run_dir, *FAST]
    code = main([str(a) for a in args])
    assert code == 0
    return run_dir


def _ranks(run_dir) -> dict[str, int]:
    allocation = Allocation.from_json((run_dir / "ranks.json").read_text())
    return {name: rank for name, rank in allocation.ranks.items() if rank > 0}


def _peft_ranks(model) -> dict[str, int]:
    return {
        name.removeprefix("base_model.model."): module.r["default"]
        for name, module in model.named_modules()
        if hasattr(module, "r") and isinstance(module.r, dict) and "default" in module.r
    }


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_lora_config_rebuilds_in_peft_with_the_ranks_and_alphas(finished_run, tmp_path, run_cli):
    out = tmp_path / "lora.json"
    code, stdout, err = run_cli(["export", finished_run / "ranks.json", "--format", "lora-config", "--out", out])
    assert code == 0, err
    config = LoraConfig(**json.loads(out.read_text()))
    ranks = _ranks(finished_run)
    assert config.rank_pattern == ranks
    # default lora_alpha 2 x avg_rank (4), scale mode: alpha = 8 * r / 4 = 2 r
    assert config.alpha_pattern == {name: 2.0 * rank for name, rank in ranks.items()}
    assert set(config.target_modules) == set(ranks) and _leftovers(tmp_path) == []
    # from the run itself: the run's task type and options
    code, _, err = run_cli(["export", finished_run, "--format", "lora-config", "--out", tmp_path / "run.json"])
    assert code == 0, err
    assert json.loads((tmp_path / "run.json").read_text())["task_type"] == "SEQ_CLS"


def test_adapter_init_loads_with_stock_peft_untrained(finished_run, tiny_bert_dir, tmp_path, run_cli):
    out = tmp_path / "init"
    code, _, err = run_cli(
        ["export", finished_run / "ranks.json", "--format", "adapter-init", "--out", out]
        + ["--model", tiny_bert_dir, "--task", "classification"]
    )
    assert code == 0, err
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, out)
    assert _peft_ranks(model) == _ranks(finished_run)
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [value for key, value in weights.items() if ".lora_B." in key]
    assert lora_b and all(bool((value == 0).all()) for value in lora_b)  # untrained: delta W = 0
    # from the run: its model and task, no options needed
    code, _, err = run_cli(["export", finished_run, "--format", "adapter-init", "--out", tmp_path / "from-run"])
    assert code == 0, err
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    assert _peft_ranks(PeftModel.from_pretrained(base, tmp_path / "from-run")) == _ranks(finished_run)
    # a bare ranks.json names no model
    code, _, err = run_cli(["export", finished_run / "ranks.json", "--format", "adapter-init", "--out", tmp_path / "x"])
    assert code == 2 and "--model" in err and not (tmp_path / "x").exists()


def test_axolotl_fragment_has_integer_ranks_and_alphas(finished_run, tmp_path, run_cli):
    out = tmp_path / "axolotl.yaml"
    code, stdout, err = run_cli(["export", finished_run, "--format", "axolotl", "--out", out])
    assert code == 0, err
    fields = yaml.safe_load(out.read_text())
    ranks = _ranks(finished_run)
    assert fields["adapter"] == "lora" and fields["lora_rank_pattern"] == ranks
    assert fields["lora_alpha_pattern"] == {name: 2 * rank for name, rank in ranks.items()}
    values = [fields["lora_r"], fields["lora_alpha"], *ranks.values(), *fields["lora_alpha_pattern"].values()]
    assert all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    assert "every alpha exact" in stdout


def test_axolotl_rounds_within_the_allowed_error_and_refuses_beyond_it(finished_run, tmp_path, run_cli, stderr_lines):
    ranks = _ranks(finished_run)
    # lora_alpha 4.4 at average rank 4: alpha = 1.1 r, never an integer for r <= 9; by hand, the rounding errors
    errors = {name: abs(max(1, round(1.1 * r)) - 1.1 * r) / (1.1 * r) for name, r in ranks.items()}
    largest = max(errors.values())
    assert largest > 0.02
    out = tmp_path / "refused.yaml"
    code, _, err = run_cli(["export", finished_run, "--format", "axolotl", "--out", out, "--lora-alpha", "4.4"])
    assert code == 2 and len(stderr_lines(err)) == 1 and "integer alphas" in err
    assert not out.exists() and _leftovers(tmp_path) == []
    code, stdout, err = run_cli(
        ["export", finished_run, "--format", "axolotl", "--out", out, "--lora-alpha", "4.4", "--max-scale-error", "0.2"]
    )
    assert code == 0, err
    assert f"largest scale error {100 * largest:.2f} %" in stdout
    fields = yaml.safe_load(out.read_text())
    assert fields["lora_alpha_pattern"] == {name: max(1, round(1.1 * r)) for name, r in ranks.items()}


def test_peft_dir_copy_bake_and_merge(finished_run, tiny_bert_dir, tmp_path, run_cli):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    inputs = tokenizer(["a great fun movie", "the plot was dull"], padding=True, return_tensors="pt")

    def adapted_logits(adapter):
        base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
        with torch.no_grad():
            return PeftModel.from_pretrained(base, adapter).eval()(**inputs).logits

    original = adapted_logits(finished_run / "adapter")
    code, _, err = run_cli(["export", finished_run, "--format", "peft-dir", "--out", tmp_path / "copy"])
    assert code == 0, err
    for entry in (finished_run / "adapter").iterdir():
        assert (tmp_path / "copy" / entry.name).read_bytes() == entry.read_bytes()
    torch.testing.assert_close(adapted_logits(tmp_path / "copy"), original)

    code, _, err = run_cli(
        ["export", finished_run, "--format", "peft-dir", "--bake-scale", "--out", tmp_path / "baked"]
    )
    assert code == 0, err
    baked_config = json.loads((tmp_path / "baked" / "adapter_config.json").read_text())
    assert baked_config["r"] == baked_config["lora_alpha"] == max(_ranks(finished_run).values())
    torch.testing.assert_close(adapted_logits(tmp_path / "baked"), original, rtol=1e-5, atol=1e-5)

    code, _, err = run_cli(["export", finished_run, "--format", "peft-dir", "--merge", "--out", tmp_path / "merged"])
    assert code == 0, err
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, original, rtol=1e-4, atol=1e-5)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unfinished", "did not finish"),
        ("ranks-to-peft-dir", "finished run's adapter"),
        ("unknown-format", "invalid choice"),
        ("non-empty-dir", "not empty"),
        ("non-empty-file", "not empty"),
        ("bake-without-peft-dir", "peft-dir only"),
        ("bake-and-merge", "exclude each other"),
        ("missing-source", "does not exist"),
    ],
)
def test_bad_export_one_line_exit_2_nothing_written(
    case, message, finished_run, tmp_path, run_cli, stderr_lines, capsys
):
    source, out, extra = finished_run, tmp_path / "out", []
    fmt = "peft-dir"
    if case == "unfinished":
        source = tmp_path / "unfinished"
        shutil.copytree(finished_run, source)
        (source / "metrics.json").unlink()
    elif case == "ranks-to-peft-dir":
        source = finished_run / "ranks.json"
    elif case == "unknown-format":
        fmt = "gguf"
    elif case == "non-empty-dir":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "non-empty-file":
        out.write_text("mine")
        fmt = "lora-config"
    elif case == "bake-without-peft-dir":
        fmt, extra = "lora-config", ["--bake-scale"]
    elif case == "bake-and-merge":
        extra = ["--bake-scale", "--merge"]
    elif case == "missing-source":
        source = tmp_path / "nowhere"
    before = sorted(p.name for p in tmp_path.iterdir())
    contents = out.read_text() if out.is_file() else None
    try:
        code, _, err = run_cli(["export", source, "--format", fmt, "--out", out, *extra])
    except SystemExit as usage_error:  # argparse's own refusal (an unknown format)
        code, err = usage_error.code, capsys.readouterr().err
    assert code == 2 and len(stderr_lines(err)) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, no temporary left
    if contents is not None:
        assert out.read_text() == contents
    if case == "non-empty-dir":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
