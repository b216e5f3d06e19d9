"""The evidence profile's controls and summary, against hand-computed cases."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def tools(benchmark_module):
    return benchmark_module("controls"), benchmark_module("summarize_evidence")


SHAPES = {"q": (4, 4), "k": (4, 4), "v": (4, 4), "up": (4, 12), "down": (12, 4)}


def test_inverse_reverses_ranks_within_each_cost_class(tools):
    controls, _ = tools
    ranks = {"q": 3, "k": 1, "v": 0, "up": 2, "down": 1}
    theta = {"q": 0.9, "k": 0.5, "v": 0.1, "up": 0.7, "down": 0.2}
    # class 8 (q, k, v): most sensitive q gets the smallest rank 0, v the largest 3; class 16: up gets 1, down 2
    assert controls.inverse_within_cost(ranks, theta, SHAPES) == {"q": 0, "k": 1, "v": 3, "up": 1, "down": 2}


def test_shuffle_keeps_each_cost_class_rank_multiset(tools):
    controls, _ = tools
    ranks = {"q": 3, "k": 1, "v": 0, "up": 2, "down": 1}
    for seed in range(20):
        shuffled = controls.shuffle_within_cost(ranks, SHAPES, seed)
        assert sorted(shuffled[n] for n in ("q", "k", "v")) == [0, 1, 3]
        assert sorted(shuffled[n] for n in ("up", "down")) == [1, 2]
    assert len({tuple(controls.shuffle_within_cost(ranks, SHAPES, s).values()) for s in range(20)}) > 1


def _result(group, overrides, seed, lr, value, metric="accuracy", avg_rank=1):
    config = {"seed": seed, "learning_rate": lr, "avg_rank": avg_rank}
    return {
        "group": group,
        "overrides": overrides,
        "config": config,
        "main_metric": metric,
        "validation": {metric: value},
        "wall_seconds": 360.0,
    }


def test_summary_pairs_by_seed_and_flags_a_discriminating_bed(tools):
    _, summary = tools
    sens = {"method": "senslora", "estimator": "activation"}
    results = []
    for seed, (s, inv, shuf) in enumerate([(0.80, 0.75, 0.79), (0.78, 0.74, 0.79), (0.82, 0.76, 0.80)]):
        results.append(_result("evidence-x-r1", sens, seed, 2e-3, s))
        results.append(_result("evidence-x-r1", sens | {"control": "inverse"}, seed, 2e-3, inv))
        results.append(_result("evidence-x-r1", sens | {"control": "shuffled"}, seed, 2e-3, shuf))
        results.append(_result("evidence-x-r1", {"method": "lora"}, seed, 2e-3, 0.70))
        results.append(_result("evidence-x-r1", {"method": "lora"}, seed, 1e-3, 0.79 + seed * 0.01))
    row = next(line for line in summary.summarize(results).splitlines() if line.startswith("| x-r1 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # inverse gains 0.05, 0.04, 0.06: mean 0.05 > std 0.01 -> discriminates
    assert cells[2] == "+0.0500 ± 0.0100 (n=3)"
    assert cells[4] == "yes"
    # tuned LoRA is lr 1e-3 (0.79, 0.80, 0.81); senslora - LoRA = 0.01, -0.02, 0.01
    assert cells[5] == "+0.0000 ± 0.0173 (n=3)"
    assert cells[7].endswith("(lr 0.001, n=3)")


def test_perplexity_gain_is_positive_when_senslora_is_lower(tools):
    _, summary = tools
    assert summary.gain(10.0, 12.0, "perplexity") == 2.0
    assert summary.gain(0.8, 0.7, "accuracy") == pytest.approx(0.1)


def test_budget_points_take_each_variant_at_its_best_learning_rate(tools):
    _, summary = tools
    lora, sens = {"method": "lora"}, {"method": "senslora", "estimator": "activation"}
    evidence = [
        _result("evidence-minilm-r1", lora, 0, 1e-3, 0.70),
        _result("evidence-minilm-r1", lora, 0, 2e-3, 0.75),
        _result("evidence-minilm-r1", sens, 0, 2e-3, 0.74),
    ]
    plain = {"model": "minilm", "budget_unit": "params", "seed": 0, "max_rank_factor": 0}
    full = [
        _result("main", plain | {"method": "lora"}, 0, 1e-3, 0.79, avg_rank=4),
        _result("main", plain | sens, 0, 1e-3, 0.78, avg_rank=4),
        _result("ablation", plain | sens | {"scheme": "pra"}, 0, 1e-3, 0.10, avg_rank=4),  # not a plain row
        _result("main", plain | {"method": "lora"}, 0, 1e-3, 0.10, avg_rank=1),  # rank the evidence bed has
    ]
    points = summary.budget_points(evidence, full)
    assert points["lora"] == {1: [0.75], 4: [0.79]}
    assert points["senslora"] == {1: [0.74], 4: [0.78]}
    # the main job's evidence bed (rank 4, uncapped) supersedes the full profile's senslora there, not its LoRA
    evidence.append(_result("evidence-minilm", sens | {"max_rank_factor": 0}, 0, 1e-3, 0.77, avg_rank=4))
    points = summary.budget_points(evidence, full)
    assert points["senslora"] == {1: [0.74], 4: [0.77]}
    assert points["lora"] == {1: [0.75], 4: [0.79]}


def test_uncapped_is_a_variant_except_on_the_main_job_bed(tools):
    _, summary = tools
    uncapped = {"method": "senslora", "estimator": "activation", "max_rank_factor": 0}
    assert summary.variant(_result("evidence-minilm-r1", uncapped, 0, 1e-3, 0.7)) == "senslora-uncapped"
    assert summary.variant(_result("evidence-minilm", uncapped, 0, 1e-3, 0.7)) == "senslora"
    fisher = uncapped | {"estimator": "fisher"}
    assert summary.variant(_result("evidence-smollm2-wiki", fisher, 0, 1e-3, 0.7)) == "senslora-fisher-uncapped"


def test_family_budget_points_take_the_lowest_perplexity_lr_across_the_family_beds(tools):
    _, summary = tools
    lora, sens = {"method": "lora"}, {"method": "senslora", "estimator": "activation"}
    inverse = sens | {"control": "inverse"}

    def run(group, overrides, seed, lr, value, rank):
        return _result(group, overrides, seed, lr, value, metric="perplexity", avg_rank=rank)

    evidence = [
        run("evidence-lm", lora, 0, 1e-3, 30.0, 8),
        run("evidence-lm", lora, 1, 1e-3, 32.0, 8),
        run("evidence-lm", lora, 0, 2e-3, 29.0, 8),  # one seed only: the two-seed cell wins
        run("evidence-lm", inverse, 0, 1e-3, 31.0, 8),
        run("evidence-lm", {"baseline": "base_model"}, 0, 0.0, 55.0, 8),  # a baseline, not a variant
        run("evidence-lm-r1", lora, 0, 2e-3, 33.0, 1),
        run("evidence-lm-r1", lora, 0, 4e-3, 34.0, 1),  # higher perplexity: not the best
        run("evidence-lm-r1", sens, 0, 4e-3, 33.5, 1),
        run("evidence-lm-shifted", lora, 0, 1e-3, 20.0, 8),  # another bed, not a budget of this one
    ]
    points = summary.family_budget_points(evidence, "lm")
    assert points == {
        "lora": {8: {0: 30.0, 1: 32.0}, 1: {0: 33.0}},
        "inverse": {8: {0: 31.0}},
        "senslora": {1: {0: 33.5}},
    }


def test_best_learning_rate_compares_cells_on_the_seeds_they_share(tools):
    _, summary = tools
    table = {
        # six seeds at 2e-3: mean 30.67, but seeds 0-2 alone average 32.33
        ("lm", "lora", 2e-3): {0: 31.0, 1: 34.0, 2: 32.0, 3: 27.0, 4: 28.0, 5: 32.0},
        ("lm", "lora", 4e-3): {0: 30.9, 1: 33.9, 2: 31.9},  # better on every shared seed: 32.23
        ("lm", "lora", 1e-3): {0: 20.0, 1: 20.0},  # incomplete (two seeds): does not compete
    }
    assert summary.best_lr(table, "lm", "lora", "perplexity") == 4e-3
    assert summary.best_lr(table, "lm", "senslora", "perplexity") is None
    table[("lm", "lora", 4e-3)] = {0: 31.1, 1: 34.1, 2: 32.1}
    assert summary.best_lr(table, "lm", "lora", "perplexity") == 2e-3


def test_paired_differences_subtract_the_reference_on_shared_seeds_only(tools):
    _, summary = tools
    points = {"lora": {8: {0: 30.0, 1: 32.0}}, "senslora": {8: {0: 30.5, 1: 31.0, 2: 40.0}, 1: {0: 33.0}}}
    # seed 2 has no LoRA run and rank 1 no LoRA at all: both are left out
    assert summary.paired_differences(points) == {"lora": {8: [0.0, 0.0]}, "senslora": {8: [0.5, -1.0]}}


def test_every_allocator_is_compared_with_tuned_lora(tools):
    _, summary = tools
    fisher = {"method": "senslora", "estimator": "fisher"}
    results = []
    for seed, value in enumerate([0.80, 0.81, 0.82]):
        results.append(_result("evidence-x-r1", {"method": "lora"}, seed, 2e-3, 0.78))
        results.append(_result("evidence-x-r1", fisher, seed, 2e-3, value))
        results.append(_result("evidence-x-r1", {"method": "adalora"}, seed, 5e-3, 0.78 - seed * 0.01))
    section = summary.summarize(results).split("## Every allocator", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[2].strip(): line for line in section.splitlines() if line.startswith("| x-r1 | ")}
    # fisher - LoRA = 0.02, 0.03, 0.04: mean 0.03 > std 0.01
    assert "+0.0300 ± 0.0100 (n=3) | yes |" in rows["senslora-fisher"]
    assert "-0.0100 ± 0.0100 (n=3) | no |" in rows["adalora"]


def test_no_verdict_before_three_seeds(tools):
    _, summary = tools
    assert summary.verdict([[0.05, 0.04]]) == "not yet (n < 3)"
    assert summary.verdict([[0.05, 0.04], [0.01, -0.02, 0.00]]) == "no"
    assert summary.verdict([[0.05, 0.04, 0.06]]) == "yes"


def test_rerun_table_compares_each_superseded_result_with_its_rerun(tmp_path, benchmark_module):
    compare_reruns = benchmark_module("compare_reruns")
    (tmp_path / "superseded").mkdir()

    def write(path, accuracy, ranks):
        record = {"main_metric": "accuracy", "validation": {"accuracy": accuracy}, "ranks": ranks}
        path.write_text(json.dumps(record))

    write(tmp_path / "superseded" / "a.json", 0.80, {"q": 2, "v": 2})
    write(tmp_path / "a.json", 0.78, {"q": 3, "v": 1})
    write(tmp_path / "superseded" / "b.json", 0.70, {"q": 1})
    lines, pending = compare_reruns.compare(tmp_path)
    # 2 modules changed; largest share 2/4 = 50 % before, 3/4 = 75 % after
    assert lines[2] == "| `a` | 0.800 | 0.780 | 2 | 50.0% -> 75.0% |"
    assert pending == ["b"]


def test_allocator_plots_only_for_beds_with_three_allocators(tmp_path, tools):
    _, summary = tools
    results = []
    for seed in range(3):
        for group in ("evidence-many", "evidence-few"):
            results.append(_result(group, {"method": "lora"}, seed, 1e-3, 30.0, metric="perplexity"))
            results.append(_result(group, {"method": "senslora"}, seed, 1e-3, 29.0 + seed, metric="perplexity"))
        for estimator in ("fisher", "kfac"):
            overrides = {"method": "senslora", "estimator": estimator}
            results.append(_result("evidence-many", overrides, seed, 2e-3, 31.0, metric="perplexity"))
    gains = summary.allocator_gains(summary.cells(results), "many", "perplexity")
    # LoRA 30 on every seed; senslora 29, 30, 31 -> gains +1, 0, -1; fisher at 2e-3 -> -1 on every seed
    assert gains["senslora"] == (1e-3, [1.0, 0.0, -1.0])
    assert gains["senslora-fisher"] == (2e-3, [-1.0, -1.0, -1.0])
    written = summary.write_allocator_plots(results, tmp_path)
    assert written == [tmp_path / "allocators-many.png"]
    assert (tmp_path / "allocators-many.png").stat().st_size > 0
