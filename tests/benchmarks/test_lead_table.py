"""The lead table: learning rates chosen on validation, comparisons on test, signs, Holm families."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def lead(benchmark_module):
    return benchmark_module("lead_table")


def _result(bed, method, lr, seed, validation, test=None, metric="accuracy", control=None):
    overrides = {"method": method, "learning_rate": lr, "seed": seed}
    if control:
        overrides["control"] = control
    return {
        "experiment": f"evidence-{bed}-{control or method}-lr{lr:g}-s{seed}",
        "group": f"evidence-{bed}",
        "overrides": overrides,
        "config": {"learning_rate": lr, "seed": seed},
        "main_metric": metric,
        "validation": {metric: validation},
        "test": None if test is None else {metric: test},
    }


def _write(directory, results):
    for result in results:
        (directory / f"{result['experiment']}.json").write_text(json.dumps(result))


def test_lr_is_chosen_on_validation_and_the_difference_is_taken_on_test(lead, tmp_path):
    results = []
    for seed, shift in enumerate((0.0, 0.01, -0.01)):
        # LoRA: lr 1e-3 is better on validation, 2e-3 would be better on test: validation must decide.
        results.append(_result("bed", "lora", 1e-3, seed, 0.80 + shift, test=0.70 + shift))
        results.append(_result("bed", "lora", 2e-3, seed, 0.75 + shift, test=0.90 + shift))
        results.append(_result("bed", "senslora", 1e-3, seed, 0.81 + shift, test=0.72 + shift + 0.01 * seed))
    _write(tmp_path, results)
    table = lead.cells(lead.load(tmp_path))
    (row,) = lead.lead_rows(table, {"bed": "accuracy"})
    assert row.lora_lr == 1e-3 and row.split == "test"
    # test differences: 0.02, 0.03, 0.04 -> mean 0.03, sd 0.01, t_{0.975,2} = 4.302653
    assert row.comparison.mean == pytest.approx(0.03) and row.comparison.wins == 3
    assert row.comparison.high - row.comparison.mean == pytest.approx(4.302653 * 0.01 / 3**0.5, abs=1e-6)


def test_validation_is_used_and_marked_when_a_run_lacks_test_and_perplexity_flips_sign(lead, tmp_path):
    results = []
    for seed in range(3):
        results.append(_result("lm", "lora", 2e-3, seed, 20.0 + seed, metric="perplexity"))
        results.append(_result("lm", "senslora", 2e-3, seed, 19.5 + seed, test=10.0, metric="perplexity"))
        results.append(_result("lm", "inverse", 2e-3, seed, 21.0 + seed, metric="perplexity", control="inverse"))
    _write(tmp_path, results)
    table = lead.cells(lead.load(tmp_path))
    (row,) = lead.lead_rows(table, {"lm": "perplexity"})
    assert row.split == "validation" and row.comparison.mean == pytest.approx(0.5)  # lower perplexity: > 0
    controls = lead.control_rows(table, {"lm": "perplexity"})
    (control,) = controls["lm"]
    assert control[0] == "inverse" and control[2].mean == pytest.approx(1.5)
    text = lead.render([row], controls)
    assert "| validation |" in text and "Holm families: the 1 comparisons" in text and "1 control" in text


def test_holm_is_applied_across_the_rows_of_one_table(lead):
    comparisons = [lead.paired([1.0, 1.01, 0.99]), lead.paired([0.1, -0.1, 0.05]), None]
    adjusted = lead.adjusted(comparisons)
    assert adjusted[2] is None
    raw = [comparisons[0].p_value, comparisons[1].p_value]
    assert adjusted[0] == pytest.approx(min(1.0, 2 * min(raw)))
    assert adjusted[1] == pytest.approx(max(adjusted[0], min(1.0, max(raw))))


def test_the_table_replaces_only_the_text_between_the_markers(lead, tmp_path):
    document = tmp_path / "doc.md"
    document.write_text(f"before\n{lead.START}\nold\n{lead.END}\nafter\n")
    assert lead.replace_between_markers(document, "new\n")
    assert document.read_text() == f"before\n{lead.START}\nnew\n{lead.END}\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not lead.replace_between_markers(plain, "new\n") and plain.read_text() == "no markers\n"


def test_the_readme_form_shows_senslora_alone_with_verdicts_corrected_over_every_row(lead, tmp_path):
    results = []
    for seed in range(3):
        results.append(_result("bed", "lora", 1e-3, seed, 0.80 + 0.01 * seed, test=0.80 + 0.01 * seed))
        results.append(_result("bed", "senslora", 1e-3, seed, 0.81, test=0.81 + 0.01 * seed))
        results.append(_result("bed", "eva", 1e-3, seed, 0.70, test=0.70 + 0.01 * seed))
    _write(tmp_path, results)
    table = lead.cells(lead.load(tmp_path))
    rows = lead.lead_rows(table, {"bed": "accuracy"})
    full, readme = lead.render(rows, {}), lead.render(rows, {}, senslora_only=True)
    assert "| eva " in full and "| eva " not in readme and "| senslora " in readme
    assert "the 2 comparisons" in readme  # the family is the whole table, not the rows shown


def test_a_rerun_replaces_the_methods_it_reran_and_keeps_the_others_against_the_first_runs_lora(lead, tmp_path):
    first, rerun = tmp_path / "evidence", tmp_path / "evidence-reruns"
    first.mkdir()
    rerun.mkdir()
    old, new = [], []
    for seed in range(3):
        # The first run (validation only): senslora far ahead, adalora 0.05 behind; the other bed untouched.
        old.append(_result("bed", "lora", 1e-3, seed, 0.70))
        old.append(_result("bed", "lora", 4e-3, seed, 0.60))  # an lr the rerun did not sweep
        old.append(_result("bed", "senslora", 1e-3, seed, 0.90))
        old.append(_result("bed", "adalora", 5e-3, seed, 0.65))
        old.append(_result("bed", "inverse", 1e-3, seed, 0.10, control="inverse"))
        old.append(_result("other", "lora", 1e-3, seed, 0.50))
        old.append(_result("other", "senslora", 1e-3, seed, 0.52))
        # The rerun: new splits, test metrics; senslora behind by 0.01, 0.02, 0.03 on test; its inverse level.
        new.append(_result("bed", "lora", 1e-3, seed, 0.80, test=0.80))
        new.append(_result("bed", "senslora", 1e-3, seed, 0.80, test=0.79 - 0.01 * seed))
        new.append(_result("bed", "inverse", 1e-3, seed, 0.80, test=0.79 - 0.01 * seed, control="inverse"))
    _write(first, old)
    _write(rerun, new)
    assert lead.main(["--results-dir", str(first), "--no-docs"]) == 0
    lines = (first / "lead.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith(("| bed", "| other"))][1:]  # past the header
    beds = ["| bed (accuracy)", "| bed, first run (accuracy)", "| other (accuracy)"]
    assert [row.split(" | ")[0] for row in rows] == beds
    bed, first_run, other = rows
    assert "senslora" in bed and "| test | -2.00 pt |" in bed and "0/3" in bed  # the old +20 points are gone
    assert "inverse: level" in bed  # the rerun's control (0.0 difference), not the first run's (+80 points)
    assert "adalora (lr 0.005; LoRA 0.001)" in first_run and "| validation | -5.00 pt |" in first_run
    assert "| validation | +2.00 pt |" in other
    merged = lead.cells(lead.with_reruns(lead.load(first), lead.load(rerun)))
    assert ("bed", "lora", 4e-3) not in merged and ("bed, first run", "lora", 4e-3) in merged
    assert ("bed, first run", "senslora", 1e-3) not in merged and ("bed, first run", "inverse", 1e-3) not in merged
