"""Summarise the `evidence` profile: does allocation matter on each test bed, and does senslora win there?

    python benchmarks/summarize_evidence.py     # writes results/evidence/summary.md and the budget plots

For every test bed (a results group), paired by seed:
- "allocation matters": the gain of senslora over its own ranks in reverse theta order (`inverse`) and
  shuffled (`shuffled`), at the control learning rate. gain = senslora - control for a metric where higher
  is better (accuracy), control - senslora where lower is better (perplexity), so a positive gain always
  means senslora is better. A test bed *discriminates* when the inverse or shuffled gain exceeds its paired
  standard deviation (the earlier, uncorrected reading: a paired t above sqrt(n); `lead_table.py` gives the
  95 % intervals and Holm-corrected verdicts).
- "senslora vs tuned LoRA": each method at its own best learning rate (best mean over the seeds its
  swept cells share, so seeds added at one learning rate do not decide it), gain paired
  by seed (over the seeds both have); the senslora and tuned LoRA columns average every seed of their
  cell, n of them, which can be more (e.g. LoRA's confirmation seeds on `minilm-r1`).

`budget.png` draws MiniLM's validation accuracy against the average rank: the evidence beds (ranks 1 and 2:
`params` unit, min_rank 0, 2x cap; rank 4: the main job, min_rank 1, uncapped) and, for a variant at a rank
those lack, the `full` profile's main tables (ranks 2, 4 and 8: `params` unit, min_rank 1, uncapped
activation), tuned LoRA and senslora each at its best learning rate, the inverse and
shuffled controls at theirs, and the frozen encoder with its head trained alone; bars are one standard
deviation over seeds. `budget-smollm2-wiki.png` draws the same for SmolLM2's validation perplexity on the
Wikipedia beds (`smollm2-wiki` at average rank 8, `smollm2-wiki-r1` at rank 1) as the difference from
tuned uniform LoRA's perplexity on the same seed (the seed-to-seed spread, about 1.5, would hide the
differences between allocations), with the base model's gap in the legend (it lies far off the axis).
`allocators-<bed>.png` draws, for every bed with at least three allocators run, each allocator's gain
over tuned uniform LoRA paired by seed (the "Every allocator" table, as dots per seed and mean ± std).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evidence"
FULL_RESULTS = HERE / "results" / "full"
FULL_GROUPS = ("main", "rank8", "half_budget", "ablation")  # the full profile's MiniLM rows on the budget plot
LOWER_IS_BETTER = {"perplexity", "loss"}


def load(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json")) if p.name != "summary.json"]


UNCAPPED_BEDS = {"minilm"}  # the main job's bed: its senslora is the paper's setting, uncapped


def variant(result: dict[str, Any]) -> str:
    """lora, senslora, senslora-uncapped, inverse, shuffled, head-only or base-model. `-uncapped` marks a
    run without the rank cap on a bed whose senslora has one (every bed but `UNCAPPED_BEDS`)."""
    overrides = result["overrides"]
    if "baseline" in overrides:
        return overrides["baseline"].replace("_", "-")
    if "control" in overrides:
        return overrides["control"]
    method = overrides["method"]
    if method == "senslora":
        estimator = overrides.get("estimator", "activation")
        name = "senslora" if estimator == "activation" else f"senslora-{estimator}"
        uncapped = overrides.get("max_rank_factor") == 0 and bed_of(result) not in UNCAPPED_BEDS
        return name + ("-uncapped" if uncapped else "")
    return method


def metric_of(result: dict[str, Any]) -> tuple[str, float]:
    name = result["main_metric"]
    return name, float(result["validation"][name])


def gain(senslora: float, other: float, metric: str) -> float:
    """Positive when senslora is better."""
    return other - senslora if metric in LOWER_IS_BETTER else senslora - other


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    mean = round(mean, digits) + 0.0  # no "-0.0000" for a rounding residue
    return f"{mean:+.{digits}f} ± {std:.{digits}f} (n={len(values)})"


def fmt_plain(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def bed_of(result: dict[str, Any]) -> str:
    return result["group"].removeprefix("evidence-")


def cells(results: list[dict[str, Any]]) -> dict[tuple[str, str, float], dict[int, float]]:
    """(bed, variant, learning rate) -> {seed: metric}."""
    table: dict[tuple[str, str, float], dict[int, float]] = defaultdict(dict)
    for result in results:
        config = result["config"]
        table[(bed_of(result), variant(result), config["learning_rate"])][config["seed"]] = metric_of(result)[1]
    return table


def best_lr(table: dict, bed: str, name: str, metric: str) -> float | None:
    """The learning rate of a variant's best cell on a bed (`pick_learning_rate`); None without a cell."""
    options = {lr: seeds for (b, v, lr), seeds in table.items() if b == bed and v == name}
    return pick_learning_rate(options, metric) if options else None


def pick_learning_rate(options: dict[float, dict[int, float]], metric: str) -> float:
    """lr -> {seed: metric} to the lr with the best mean over the seeds its rivals share.

    Only complete cells compete (>= MIN_SEEDS seeds; while none is, those with the most seeds), and they
    are compared on the seeds all of them have, so confirmation seeds added at one learning rate do not
    decide the pick. Without a shared seed each cell's own mean is used."""
    complete = {lr: seeds for lr, seeds in options.items() if len(seeds) >= MIN_SEEDS}
    if not complete:
        most = max(len(seeds) for seeds in options.values())
        complete = {lr: seeds for lr, seeds in options.items() if len(seeds) == most}
    shared = set.intersection(*(set(seeds) for seeds in complete.values()))
    means = {
        lr: statistics.fmean(seeds[s] for s in shared) if shared else statistics.fmean(seeds.values())
        for lr, seeds in complete.items()
    }
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(means, key=means.get)


BASELINES = ("head-only", "base-model")
CONTROL_NAMES = ("inverse", "shuffled")


def baseline_values(table: dict, bed: str) -> list[float]:
    """The no-adapter metric of a bed: its own base-model runs, or the head-only runs of its model's group."""
    return [
        value
        for (b, name, _), seeds in table.items()
        if name in BASELINES and (b == bed or bed.startswith(b + "-"))
        for value in seeds.values()
    ]


def paired_gains(a: dict[int, float], b: dict[int, float], metric: str) -> list[float]:
    return [gain(a[s], b[s], metric) for s in sorted(set(a) & set(b))]


MIN_SEEDS = 3


def verdict(gain_lists: list[list[float]]) -> str:
    """'yes' when some paired gain's mean exceeds its standard deviation over >= MIN_SEEDS seeds, 'no' when
    none does with that many seeds, 'not yet (n < 3)' while every list is shorter."""
    complete = [g for g in gain_lists if len(g) >= MIN_SEEDS]
    if not complete:
        return f"not yet (n < {MIN_SEEDS})"
    return "yes" if any(mean_std(g)[0] > mean_std(g)[1] for g in complete) else "no"


def allocator_gains(table: dict, bed: str, metric: str) -> dict[str, tuple[float, list[float]]]:
    """allocator -> (its best learning rate, its gains over tuned LoRA there, paired by seed), for every
    variant of a bed but uniform LoRA itself, the controls and the no-adapter baselines."""
    lora = table.get((bed, "lora", best_lr(table, bed, "lora", metric)), {})
    names = sorted({v for (b, v, _) in table if b == bed} - {"lora", *CONTROL_NAMES, *BASELINES})
    gains = {}
    for name in names:
        lr = best_lr(table, bed, name, metric)
        gains[name] = (lr, paired_gains(table[(bed, name, lr)], lora, metric))
    return gains


def seeds_cell(seeds: dict[int, float], lr: float | None) -> str:
    """Mean ± std over the seeds of one cell, with its learning rate and seed count; "-" without a cell."""
    return "-" if lr is None else f"{fmt_plain(list(seeds.values()))} (lr {lr:g}, n={len(seeds)})"


def summarize(results: list[dict[str, Any]]) -> str:
    table = cells(results)
    metrics = {bed_of(r): metric_of(r)[0] for r in results}
    beds = sorted(bed for bed in metrics if any(b == bed and v not in BASELINES for (b, v, _) in table))
    lines = ["## Does allocation matter, and does senslora win? (paired by seed)", ""]
    lines += [
        "| test bed | metric | senslora − inverse | senslora − shuffled | discriminates? (mean > SD) "
        "| senslora (best lr) − tuned LoRA (best lr) | senslora | tuned LoRA | no adapter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bed in beds:
        metric = metrics[bed]
        control_lrs = {lr for (b, v, lr) in table if b == bed and v in ("inverse", "shuffled")}
        control_lr = min(control_lrs) if control_lrs else None
        sens_at_control = table.get((bed, "senslora", control_lr), {})
        inverse = paired_gains(sens_at_control, table.get((bed, "inverse", control_lr), {}), metric)
        shuffled = paired_gains(sens_at_control, table.get((bed, "shuffled", control_lr), {}), metric)
        discriminates = verdict([inverse, shuffled])
        lora_lr, sens_lr = best_lr(table, bed, "lora", metric), best_lr(table, bed, "senslora", metric)
        lora = table.get((bed, "lora", lora_lr), {})
        sens = table.get((bed, "senslora", sens_lr), {})
        versus = paired_gains(sens, lora, metric)
        baseline = baseline_values(table, bed)
        lines.append(
            f"| {bed} | {metric} | {fmt(inverse)} | {fmt(shuffled)} | {discriminates} "
            f"| {fmt(versus)} | {seeds_cell(sens, sens_lr)} | {seeds_cell(lora, lora_lr)} | {fmt_plain(baseline)} |"
        )
    lines += ["", "## Every allocator against tuned LoRA (each at its best learning rate, paired by seed)", ""]
    lines += ["| test bed | allocator | lr | metric | − tuned LoRA | beats LoRA by more than the spread? |"]
    lines += ["|---|---|---:|---|---|---|"]
    for bed in beds:
        for name, (lr, versus) in allocator_gains(table, bed, metrics[bed]).items():
            seeds = table[(bed, name, lr)]
            lines.append(
                f"| {bed} | {name} | {lr:g} | {fmt_plain(list(seeds.values()))} | {fmt(versus)} | {verdict([versus])} |"
            )
    lines += ["", "## Cost of each test bed (sum over its finished runs)", ""]
    lines += ["| test bed | runs | wall hours | hours per run |", "|---|---:|---:|---:|"]
    for group in sorted({r["group"] for r in results}):
        walls = [r["wall_seconds"] / 3600 for r in results if r["group"] == group and "wall_seconds" in r]
        if walls:
            name = group.removeprefix("evidence-")
            lines.append(f"| {name} | {len(walls)} | {sum(walls):.2f} | {statistics.fmean(walls):.2f} |")
    lines += ["", "## Every cell (mean ± std over seeds)", ""]
    lines += ["| test bed | variant | lr | metric | seeds | per seed |", "|---|---|---:|---|---:|---|"]
    for (bed, name, lr), seeds in sorted(table.items()):
        per_seed = ", ".join(f"{seeds[s]:.4f}" for s in sorted(seeds))
        lines.append(f"| {bed} | {name} | {lr:g} | {fmt_plain(list(seeds.values()))} | {len(seeds)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def full_profile_variant(result: dict[str, Any]) -> str | None:
    """lora, senslora or shuffled for the full profile's plain activation rows; None for anything else."""
    overrides = result["overrides"]
    if result["group"] not in FULL_GROUPS or overrides.get("model") != "minilm":
        return None
    if overrides["method"] == "lora":
        return "lora"
    plain = {"model", "data", "max_validation_examples", "max_train_examples", "epochs", "method", "estimator"}
    plain |= {"budget_unit", "seed", "learning_rate", "avg_rank", "max_rank_factor"}
    if overrides["method"] != "senslora" or overrides.get("estimator") != "activation":
        return None
    if overrides.get("budget_unit") != "params":
        return None
    if "ranks" in overrides:
        return "shuffled" if set(overrides) - {"ranks"} <= plain else None
    return "senslora" if set(overrides) <= plain else None


def budget_points(evidence: list[dict[str, Any]], full: list[dict[str, Any]]) -> dict[str, dict[int, list[float]]]:
    """variant -> {average rank: accuracies over seeds}, each variant at its best learning rate per rank.

    The evidence beds give ranks 1 and 2 (min_rank 0, 2x cap) and 4 (min_rank 1, uncapped: the main job);
    the full profile's rows (min_rank 1, uncapped: the paper's setting) fill in a variant at a rank the
    evidence beds do not have it, such as rank 8.
    """
    points = family_budget_points(evidence, "minilm")
    by_cell: dict[tuple[str, int, float], SeedValues] = defaultdict(dict)
    for result in full:
        name, config = full_profile_variant(result), result["config"]
        if name is None or config["avg_rank"] in points.get(name, {}):
            continue
        by_cell[(name, config["avg_rank"], config["learning_rate"])][config["seed"]] = metric_of(result)[1]
    for name, ranks in best_per_rank(by_cell, "accuracy").items():
        points.setdefault(name, {}).update(ranks)
    return {name: {rank: list(seeds.values()) for rank, seeds in ranks.items()} for name, ranks in points.items()}


SeedValues = dict[int, float]  # seed -> metric


def best_per_rank(by_cell: dict[tuple[str, int, float], SeedValues], metric: str) -> dict[str, dict[int, SeedValues]]:
    """(variant, rank, lr) -> {seed: value} to variant -> {rank: {seed: value} at the best lr
    (`pick_learning_rate`)}."""
    points: dict[str, dict[int, SeedValues]] = defaultdict(dict)
    for name, rank in {(n, r) for n, r, _ in by_cell}:
        options = {lr: seeds for (n, r, lr), seeds in by_cell.items() if n == name and r == rank}
        points[name][rank] = options[pick_learning_rate(options, metric)]
    return dict(points)


def family_budget_points(evidence: list[dict[str, Any]], family: str) -> dict[str, dict[int, SeedValues]]:
    """variant -> {average rank: {seed: metric}} over the beds `family` and `family-r<k>` (the same data and
    model at other budgets), each variant at its best learning rate per rank. Baselines are left out."""
    by_cell: dict[tuple[str, int, float], SeedValues] = defaultdict(dict)
    metric = "accuracy"
    for result in evidence:
        bed, name, config = bed_of(result), variant(result), result["config"]
        suffix = bed.removeprefix(family)
        in_family = bed.startswith(family) and (suffix == "" or re.fullmatch(r"-r\d+", suffix))
        if not in_family or name in BASELINES:
            continue
        metric, value = metric_of(result)
        by_cell[(name, config["avg_rank"], config["learning_rate"])][config["seed"]] = value
    return best_per_rank(by_cell, metric)


def paired_differences(
    points: dict[str, dict[int, SeedValues]], reference: str = "lora"
) -> dict[str, dict[int, list[float]]]:
    """variant -> {rank: [variant - reference on each seed both have]}: the seed-to-seed spread of a
    perplexity (about 1.5 on SmolLM2) hides differences between allocations ten times smaller."""
    differences: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for name, ranks in points.items():
        for rank, seeds in ranks.items():
            base = points.get(reference, {}).get(rank, {})
            common = sorted(set(seeds) & set(base))
            if common:
                differences[name][rank] = [seeds[s] - base[s] for s in common]
    return dict(differences)


@dataclass(frozen=True)
class BudgetPlot:
    """What differs between the budget plots: the title, the metric's axis label and the no-adapter line."""

    title: str = "MiniLM + Rotten Tomatoes: accuracy against the budget"
    ylabel: str = "validation accuracy"
    baseline_label: str = "no adapter (head only)"
    baseline_on_axis: bool = True  # False: the baseline's mean goes into the legend only
    legend_loc: str = "center right"


MINILM_PLOT = BudgetPlot()
SMOLLM2_PLOT = BudgetPlot(
    title="SmolLM2-135M + Wikipedia: perplexity against the budget",
    ylabel="perplexity - uniform LoRA's, same seed (lower is better)",
    baseline_label="base model, no adapter, vs LoRA at the top rank",
    baseline_on_axis=False,
    legend_loc="best",
)


def plot_budget(
    points: dict[str, dict[int, list[float]]], baseline: list[float], path: Path, plot: BudgetPlot = MINILM_PLOT
) -> None:
    """The metric against the average rank (log scale), one line per variant, the no-adapter band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "lora": ("uniform LoRA (tuned lr)", "tab:blue", "o", "-"),
        "senslora": ("senslora, activation (best lr)", "tab:red", "s", "-"),
        "inverse": ("control: senslora's ranks inverted", "tab:gray", "v", "--"),
        "shuffled": ("control: senslora's ranks shuffled", "tab:olive", "^", "--"),
    }
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for name, (label, color, marker, line) in styles.items():
        ranks = sorted(points.get(name, {}))
        if not ranks:
            continue
        means = [statistics.fmean(points[name][r]) for r in ranks]
        spreads = [mean_std(points[name][r])[1] for r in ranks]
        axes.errorbar(ranks, means, yerr=spreads, label=label, color=color, marker=marker, linestyle=line, capsize=3)
    if baseline:
        mean, spread = mean_std(baseline)
        if plot.baseline_on_axis:
            axes.axhspan(mean - spread, mean + spread, color="black", alpha=0.08)
            axes.axhline(mean, color="black", linewidth=1, linestyle=":", label=plot.baseline_label)
        else:
            axes.plot([], [], " ", label=f"{plot.baseline_label}: {mean:+.2f} ± {spread:.2f} (off the axis)")
    axes.set_xscale("log", base=2)
    axes.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
    axes.set_xlabel("average LoRA rank (equal adapter parameters per column)")
    axes.set_ylabel(plot.ylabel)
    axes.set_title(plot.title)
    axes.legend(fontsize=8, loc=plot.legend_loc)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


MIN_ALLOCATORS_PLOTTED = 3  # a bed gets an allocator plot once senslora and two others have runs


def plot_allocators(gains: dict[str, tuple[float, list[float]]], bed: str, metric: str, path: Path) -> None:
    """Each allocator's gain over tuned uniform LoRA (paired by seed; right is better): one dot per seed,
    the mean with a one-standard-deviation bar, best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(gains, key=lambda name: statistics.fmean(gains[name][1]))  # every name has gains: see the caller
    figure, axes = plt.subplots(figsize=(7.6, 1.0 + 0.42 * len(order)))
    for row, name in enumerate(order):
        lr, values = gains[name]
        mean, spread = mean_std(values)
        color = "tab:red" if name == "senslora" else "tab:purple"
        axes.errorbar(mean, row, xerr=spread, color=color, marker="s", capsize=3)
        axes.scatter(values, [row] * len(values), color=color, alpha=0.35, s=14, zorder=3)
    labels = [f"{name} (lr {gains[name][0]:g}, n={len(gains[name][1])})" for name in order]
    axes.set_yticks(range(len(order)), labels=labels, fontsize=8)
    axes.axvline(0.0, color="tab:blue", linewidth=1.2)
    better = "lower perplexity" if metric in LOWER_IS_BETTER else "higher accuracy"
    axes.set_xlabel(f"{metric} gain over tuned uniform LoRA (blue), same seed; right = {better}", fontsize=8)
    axes.set_title(f"{bed}: allocators at equal adapter parameters", fontsize=9)
    axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_allocator_plots(results: list[dict[str, Any]], directory: Path) -> list[Path]:
    """`allocators-<bed>.png` for every bed with at least MIN_ALLOCATORS_PLOTTED allocators and a LoRA run."""
    table = cells(results)
    metrics = {bed_of(r): metric_of(r)[0] for r in results}
    written = []
    for bed, metric in sorted(metrics.items()):
        gains = {name: cell for name, cell in allocator_gains(table, bed, metric).items() if cell[1]}
        if len(gains) >= MIN_ALLOCATORS_PLOTTED:
            path = directory / f"allocators-{bed}.png"
            plot_allocators(gains, bed, metric, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--full-results-dir", type=Path, default=FULL_RESULTS, help="the full profile's results")
    args = parser.parse_args(argv)
    results = load(args.results_dir)
    if not results:
        raise SystemExit(f"error: no results in {args.results_dir}")
    text = summarize(results)
    (args.results_dir / "summary.md").write_text(text)
    full = load(args.full_results_dir) if args.full_results_dir.is_dir() else []
    head_only = [metric_of(r)[1] for r in results if variant(r) == "head-only"]
    plot_budget(budget_points(results, full), head_only, args.results_dir / "budget.png")
    smollm2 = family_budget_points(results, "smollm2-wiki")
    if "lora" in smollm2:
        lora_top = smollm2["lora"][max(smollm2["lora"])]
        base_model = {
            r["config"]["seed"]: metric_of(r)[1]
            for r in results
            if bed_of(r) == "smollm2-wiki" and variant(r) == "base-model"
        }
        base_gap = [base_model[s] - lora_top[s] for s in sorted(set(base_model) & set(lora_top))]
        plot_budget(paired_differences(smollm2), base_gap, args.results_dir / "budget-smollm2-wiki.png", SMOLLM2_PLOT)
    write_allocator_plots(results, args.results_dir)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
