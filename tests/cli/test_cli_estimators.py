"""The command line with the estimators beyond the default, end to end on a tiny BERT: obd, kfac and
gradient_spectrum through sensitivity, allocate and finetune; label-free calibration text for obd; and the
safeguards (head warm-up, rank cap) a fisher run gets by default."""

from __future__ import annotations

import json

import pytest

from senslora.core.metrics import sensitivities_from_json


@pytest.mark.parametrize("estimator", ["obd", "kfac", "gradient_spectrum"])
def test_cli_sensitivity_allocate_finetune(estimator, tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    from senslora import Allocation
    from senslora.cli import main

    common = ["--model", tiny_bert_dir, "--data", sentiment_csv, "--estimator", estimator, "--no-progress"]
    common += ["--calibration-examples", "32", "--max-length", "32"]
    sensitivity_path, ranks_path = tmp_path / "sensitivity.json", tmp_path / "ranks.json"
    assert main(["sensitivity", *map(str, common), "--output", str(sensitivity_path)]) == 0
    sensitivities, metadata = sensitivities_from_json(sensitivity_path.read_text())
    assert metadata["estimator"] == estimator and len(sensitivities) == 13
    assert (metadata["head_warmup"]["steps"] > 0) == (estimator != "obd")  # the loss-based safeguard
    assert all((item.spectrum is not None) == (estimator == "gradient_spectrum") for item in sensitivities.values())

    allocate = ["allocate", str(sensitivity_path), "--avg-rank", "3", "--budget-unit", "params"]
    assert main([*allocate, "--min-rank", "0", "--output", str(ranks_path)]) == 0
    allocation = Allocation.from_json(ranks_path.read_text())
    assert (
        allocation.budget_used
        <= allocation.budget
        == 3 * sum(d_in + d_out for d_in, d_out in allocation.shapes.values())
    )
    assert allocation.scheme == ("spectrum" if estimator == "gradient_spectrum" else "sra")
    if estimator != "obd":  # default cap of the loss-based estimators: 2 x avg_rank
        assert allocation.max_rank == 6 and max(allocation.ranks.values()) <= 6

    run_dir = tmp_path / "run"
    finetune = ["finetune", *map(str, common), "--output-dir", str(run_dir), "--avg-rank", "3", "--epochs", "1"]
    assert main([*finetune, "--batch-size", "32", "--head-warmup-steps", "5"]) == 0
    capsys.readouterr()
    ranks = Allocation.from_json((run_dir / "ranks.json").read_text())
    assert ranks.scheme == ("spectrum" if estimator == "gradient_spectrum" else "sra")
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["rank_pattern"] == {n: r for n, r in ranks.ranks.items() if r > 0}


def test_cli_obd_takes_label_free_calibration_text(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    from senslora.cli import main

    texts = tmp_path / "other.txt"
    texts.write_text("\n".join(f"an unrelated sentence number {i} about the weather" for i in range(40)))
    base = ["sensitivity", "--model", tiny_bert_dir, "--data", sentiment_csv, "--calibration-data", texts]
    base += ["--no-progress", "--calibration-examples", "16"]
    assert main([*map(str, base), "--estimator", "obd", "--output", str(tmp_path / "obd.json")]) == 0
    assert main([*map(str, base), "--estimator", "kfac", "--output", str(tmp_path / "kfac.json")]) == 2
    assert "no labels" in capsys.readouterr().err


def test_fisher_run_gets_the_safeguards_by_default(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    """A default fisher run warms the head up and caps ranks at 2x the average; 0 turns each off."""
    from senslora import Allocation
    from senslora.cli import main

    base = ["sensitivity", "--model", str(tiny_bert_dir), "--data", str(sentiment_csv), "--estimator", "fisher"]
    base += ["--no-progress", "--calibration-examples", "32", "--max-length", "32"]
    assert main([*base, "--output", str(tmp_path / "default.json")]) == 0
    assert main([*base, "--output", str(tmp_path / "off.json"), "--head-warmup-steps", "0"]) == 0
    default = json.loads((tmp_path / "default.json").read_text())
    assert default["head_warmup"]["steps"] == 50 and default["head_warmup"]["head_kept"] is True
    assert json.loads((tmp_path / "off.json").read_text())["head_warmup"] == {"steps": 0}

    capsys.readouterr()
    allocate = ["allocate", str(tmp_path / "off.json"), "--avg-rank", "3", "--budget-unit", "rank"]
    assert main([*allocate, "--output", str(tmp_path / "capped.json")]) == 0
    assert "takes" not in capsys.readouterr().err
    assert main([*allocate, "--output", str(tmp_path / "uncapped.json"), "--max-rank-factor", "0"]) == 0
    assert "bert.pooler.dense" in capsys.readouterr().err  # without the cap the pooler dominates (warning)
    capped = Allocation.from_json((tmp_path / "capped.json").read_text()).ranks
    uncapped = Allocation.from_json((tmp_path / "uncapped.json").read_text()).ranks
    assert max(capped.values()) <= 6 < max(uncapped.values()) and sum(capped.values()) == sum(uncapped.values())


def test_cli_allocate_warns_that_fusion_options_do_not_apply_to_gradient_spectrum(tmp_path, capsys):
    """scheme, weighting, metrics and num_groups change nothing for a gradient_spectrum sensitivity: the
    ranks are the default call's, and a warning names each option that was set."""
    from senslora.cli import main
    from senslora.core.metrics import ModuleSensitivity, sensitivities_to_json

    spectra = {"a.q": (9.0, 4.0, 1.0), "a.v": (3.0, 2.0, 1.0), "b.q": (1.0, 0.5, 0.1)}
    items = {name: ModuleSensitivity(name, 3, 3, sum(s), sum(s), 1, 3, spectrum=s) for name, s in spectra.items()}
    path = tmp_path / "sensitivity.json"
    path.write_text(sensitivities_to_json(items, {"estimator": "gradient_spectrum"}))
    allocate = ["allocate", str(path), "--avg-rank", "1", "--budget-unit", "rank", "--min-rank", "0"]
    assert main([*allocate, "--output", str(tmp_path / "default.json")]) == 0
    assert "ignored" not in capsys.readouterr().err
    options = ["--scheme", "pra", "--weighting", "equal", "--num-groups", "2"]
    with pytest.warns(UserWarning, match=r"scheme=pra, weighting=equal, num_groups=2 ignored"):
        assert main([*allocate, *options, "--output", str(tmp_path / "set.json")]) == 0
    default, chosen = (json.loads((tmp_path / f"{n}.json").read_text())["modules"] for n in ("default", "set"))
    assert [m["rank"] for m in chosen] == [m["rank"] for m in default]
    assert {m["name"]: m["rank"] for m in default} == {"a.q": 2, "a.v": 1, "b.q": 0}  # 81, 16, 9 > 4, 1
