"""Turn benchmark results into markdown tables and PNG plots (mean and standard deviation over seeds).

    python benchmarks/summarize.py --profile full      # writes benchmarks/results/full/summary.md + PNGs

The tables are pasted into BENCHMARKS.md together with the commands that produced them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

from experiments import results_directory  # noqa: E402


def load_results(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(directory.glob("*.json")) if path.name != "summary.json"]


def method_label(result: dict[str, Any]) -> str:
    overrides = result["overrides"]
    method = overrides.get("method", "senslora")
    if method != "senslora":
        return method
    estimator = overrides.get("estimator", "activation")
    implicit = IMPLICIT_SETTINGS.get(estimator, {})
    label = f"senslora ({estimator})"
    extras = [
        f"{k}={_shown_value(k, v)}"
        for k, v in sorted(overrides.items())
        if k in ABLATION_KEYS and not (k in implicit and implicit[k] == v)
    ]
    return label + (" " + ", ".join(extras) if extras else "")


def _shown_value(key: str, value: Any) -> Any:
    """A ranks file by its kind (activation-shuffled-s0.json -> activation-shuffled), so seeds share a cell."""
    return Path(value).stem.rsplit("-s", 1)[0] if key == "ranks" else value


# Settings that the published rows of an estimator ran with by default and that experiments.py now gives
# explicitly (the activation estimator was uncapped by default): left out of labels, so a rerun shares its
# cell with the published runs.
IMPLICIT_SETTINGS: dict[str, dict[str, Any]] = {"activation": {"max_rank_factor": 0}}

ABLATION_KEYS = {
    "ranks",
    "metrics",
    "weighting",
    "scheme",
    "alpha_mode",
    "budget_unit",
    "target_modules",
    "target_regex",
    "head_warmup_steps",
    "max_rank_factor",
}


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread, len(values)


def largest_share(ranks: dict[str, int]) -> tuple[str, float]:
    total = sum(ranks.values()) or 1
    name = max(sorted(ranks), key=lambda n: ranks[n])
    return name, ranks[name] / total


def cell_key(result: dict[str, Any]) -> tuple[str, int, float]:
    config = result["config"]
    return method_label(result), config["avg_rank"], config["learning_rate"]


def group_cells(results: list[dict[str, Any]]) -> dict[tuple[str, int, float], list[dict[str, Any]]]:
    cells: dict[tuple[str, int, float], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        cells[cell_key(result)].append(result)
    return cells


def quality_table(results: list[dict[str, Any]], baseline: str = "lora") -> list[str]:
    """One row per (method, rank, lr): metric mean ± std, seeds, exact parameters, cost ratios vs LoRA."""
    cells = group_cells(results)
    lines = [
        "| method | avg rank | lr | main metric (mean ± std) | seeds | adapter params | step time / LoRA "
        "| peak memory / LoRA | one-off passes / training time | largest module share |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    reference: dict[tuple[int, float], dict[str, float]] = {}
    for (label, rank, lr), runs in cells.items():
        if label == baseline:
            reference[(rank, lr)] = {
                "step": statistics.fmean(r["mean_step_seconds"] for r in runs),
                "memory": statistics.fmean(r["peak_rss_mb"] for r in runs),
            }
    for (label, rank, lr), runs in sorted(cells.items(), key=lambda item: (item[0][1], item[0][2], item[0][0])):
        metric = runs[0]["main_metric"]
        mean, spread, count = mean_std(r["validation"][metric] for r in runs)
        params = sorted({r["parameters"]["adapter"] for r in runs})
        ref = reference.get((rank, lr)) or next((v for (r_, _), v in reference.items() if r_ == rank), None)
        step = statistics.fmean(r["mean_step_seconds"] for r in runs)
        memory = statistics.fmean(r["peak_rss_mb"] for r in runs)
        sensitivity = statistics.fmean(one_off_seconds(r) / r["train_seconds"] for r in runs)
        shares = [largest_share(r["ranks"])[1] for r in runs if r.get("ranks")]
        share_text = f"{max(shares):.1%}" if shares else "-"
        ratios = f"{step / ref['step']:.3f} | {memory / ref['memory']:.3f}" if ref else "- | -"
        lines.append(
            f"| {label} | {rank} | {lr:g} | {metric} {mean:.4f} ± {spread:.4f} | {count} | "
            f"{', '.join(f'{p:,}' for p in params)} | {ratios} | {sensitivity:.2%} | {share_text} |"
        )
    return lines


def one_off_seconds(result: dict[str, Any]) -> float:
    """Time spent before training: the sensitivity pass plus building the adapter (for EVA: its SVD pass;
    runs recorded before the adapter build was timed count the sensitivity pass only)."""
    return result["sensitivity_seconds"] + result.get("adapter_setup_seconds", 0.0)


def paired_differences(results: list[dict[str, Any]], reference: str) -> list[str]:
    """Each cell's main metric minus the reference cell's, seed by seed (same data sample and head
    initialisation), mean ± std over the seeds both have: a difference the seed spread would hide."""
    cells = group_cells(results)
    baseline = {r["config"]["seed"]: r for (label, _, _), runs in cells.items() if label == reference for r in runs}
    lines = [f"| method | paired difference to {reference} (mean ± std) | seeds |", "|---|---|---:|"]
    for (label, rank, lr), runs in sorted(cells.items()):
        if label == reference:
            continue
        metric = runs[0]["main_metric"]
        deltas = [r["validation"][metric] - baseline[s]["validation"][metric] for r in runs
                  if (s := r["config"]["seed"]) in baseline]  # fmt: skip
        if deltas:
            mean, spread, count = mean_std(deltas)
            lines.append(f"| {label} (rank {rank}, lr {lr:g}) | {mean:+.4f} ± {spread:.4f} | {count} |")
    return lines


def theta_of(result: dict[str, Any]) -> dict[str, float]:
    """theta per module, recomputed from the sensitivity recorded in a result (the run's metric options)."""
    from senslora.core.fusion import fuse_scores
    from senslora.core.metrics import ModuleSensitivity

    sensitivities = {m["name"]: ModuleSensitivity.from_dict(m) for m in result["sensitivity"]["modules"]}
    config = result["config"]
    return fuse_scores(sensitivities, weighting=config["weighting"], metrics=config["metrics"])[0]


def head_variant(result: dict[str, Any]) -> tuple[str, str]:
    """(estimator, variant) of a head-group experiment, from its name full-head-<estimator>-<variant>-s<seed>."""
    estimator, _, rest = result["experiment"].removeprefix("full-head-").partition("-")
    return estimator, rest.rsplit("-s", 1)[0]


def runs_with_defaults(result: dict[str, Any]) -> bool:
    """Whether a run used the library's defaults: no ablation, and in the head group only the variant with
    both safeguards on (what fisher and hutchinson do by default)."""
    if result["group"] == "ablation":
        return False
    return result["group"] != "head" or head_variant(result)[1] == "warmup-cap"


def head_table(results: list[dict[str, Any]], references: list[dict[str, Any]]) -> list[str]:
    """The head safeguards: accuracy, largest budget share, and Kendall tau of theta against the plain run.

    tau compares each run's module ordering (theta) with the plain run of the same estimator and seed
    (same calibration sample) over the modules both hold: for the warm-up variants it is the tau between
    the allocation before and after warm-up.
    """
    from senslora.reporting.kendall import kendall_tau_b

    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        cells[head_variant(result)].append(result)
    plain = {(e, r["config"]["seed"]): theta_of(r) for (e, v), runs in cells.items() if v == "plain" for r in runs}
    lines = [
        "| estimator | variant | accuracy (mean ± std) | seeds | adapter params | largest share (module) "
        "| tau vs plain (theta) |",
        "|---|---|---|---:|---:|---|---:|",
    ]

    def row(first: str, second: str, runs: list[dict[str, Any]], tau: str) -> str:
        mean, spread, count = mean_std(r["validation"]["accuracy"] for r in runs)
        params = ", ".join(f"{p:,}" for p in sorted({r["parameters"]["adapter"] for r in runs}))
        name, share = max((largest_share(r["ranks"]) for r in runs), key=lambda item: item[1])
        return f"| {first} | {second} | {mean:.4f} ± {spread:.4f} | {count} | {params} | {share:.1%} ({name}) | {tau} |"

    lines += [row(label, "reference", runs, "-") for label, runs in references]
    for (estimator, variant), runs in sorted(cells.items()):
        taus = []
        for run in runs:
            reference = plain.get((estimator, run["config"]["seed"]))
            if reference is not None and variant != "plain":
                theta = theta_of(run)
                common = sorted(set(theta) & set(reference))
                taus.append(kendall_tau_b([theta[n] for n in common], [reference[n] for n in common]))
        lines.append(row(estimator, variant, runs, f"{statistics.fmean(taus):.3f}" if taus else "-"))
    return lines


# Groups whose table also shows the main table's learning-rate-1e-3 cells at average rank 4.
REFERENCED = ("ablation", "half_budget")
REFERENCE_LABELS = ("lora", "senslora (activation) budget_unit=params", "senslora (activation) budget_unit=rank")


def main_references(main: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The main table's runs at average rank 4 and lr 1e-3 (LoRA, senslora activation in both budget
    units): the settings every ablation and the half budget change one thing of."""
    return [r for r in main if cell_key(r)[0] in REFERENCE_LABELS and cell_key(r)[1:] == (4, 1e-3)]


def head_references(main: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Reference rows for the head table: senslora activation (params budget, lr 1e-3) and uniform LoRA at
    its best learning rate of the sweep."""
    cells = group_cells(main)
    references = []
    activation = [
        runs
        for (label, rank, lr), runs in cells.items()
        if label == "senslora (activation) budget_unit=params" and rank == 4 and lr == 1e-3
    ]
    if activation:
        references.append(("activation", activation[0]))
    lora = {lr: runs for (label, rank, lr), runs in cells.items() if label == "lora" and rank == 4}
    if lora:
        best = max(lora, key=lambda lr: statistics.fmean(r["validation"]["accuracy"] for r in lora[lr]))
        references.append((f"uniform LoRA (best lr {best:g})", lora[best]))
    return references


def update_agreement(results: list[dict[str, Any]]) -> list[str]:
    """Does senslora give rank where uniform LoRA learns? For each senslora run with a uniform LoRA run of
    the same average rank, learning rate and seed (and its update norms ||(alpha/r) B A|| recorded):
    Kendall tau between the LoRA update norms and senslora's theta and ranks, and per module type the
    share of LoRA's total update norm next to the share of senslora's ranks."""
    from senslora.core.module_types import infer_module_type
    from senslora.reporting.kendall import kendall_tau_b

    lora = {(r["config"]["avg_rank"], r["config"]["learning_rate"], r["config"]["seed"]): r["update_norms"]
            for r in results if r["config"]["method"] == "lora" and r.get("update_norms")}  # fmt: skip
    pairs: dict[tuple[str, int, float], list[tuple[dict[str, Any], dict[str, float]]]] = defaultdict(list)
    for result in results:
        config = result["config"]
        norms = lora.get((config["avg_rank"], config["learning_rate"], config["seed"]))
        default = runs_with_defaults(result)
        if config["method"] == "senslora" and default and norms and result.get("sensitivity"):
            pairs[(method_label(result), config["avg_rank"], config["learning_rate"])].append((result, norms))
    if not pairs:
        return []
    lines = [
        "| senslora allocation | avg rank | lr | seeds | tau(theta, LoRA update norm) | tau(rank, LoRA update norm) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    type_shares: dict[str, dict[str, float]] = defaultdict(dict)
    for (label, rank, lr), runs in sorted(pairs.items()):
        theta_taus, rank_taus = [], []
        for result, norms in runs:
            theta, ranks = theta_of(result), result["ranks"]
            common = sorted(set(norms) & set(theta) & set(ranks))
            theta_taus.append(kendall_tau_b([theta[n] for n in common], [norms[n] for n in common]))
            rank_taus.append(kendall_tau_b([float(ranks[n]) for n in common], [norms[n] for n in common]))
        theta_text, rank_text = (f"{statistics.fmean(t):.3f}" for t in (theta_taus, rank_taus))
        lines.append(f"| {label} | {rank} | {lr:g} | {len(runs)} | {theta_text} | {rank_text} |")
        column = f"{label}, rank {rank}, lr {lr:g}"
        type_shares[f"LoRA update norm, rank {rank}, lr {lr:g}"] = _shares_by_type(
            [norms for _, norms in runs], infer_module_type
        )
        type_shares[column] = _shares_by_type([{k: float(v) for k, v in r["ranks"].items()} for r, _ in runs],
                                              infer_module_type)  # fmt: skip
    types = sorted({t for shares in type_shares.values() for t in shares})
    lines += ["", "| share of the total, by module type | " + " | ".join(types) + " |"]
    lines.append("|---|" + "---:|" * len(types))
    for column, shares in type_shares.items():
        lines.append(f"| {column} | " + " | ".join(f"{shares.get(t, 0.0):.1%}" for t in types) + " |")
    return lines


def _shares_by_type(per_seed: list[dict[str, float]], infer_module_type) -> dict[str, float]:
    """Mean over seeds of each module type's share of the summed values (update norms or ranks)."""
    shares: dict[str, list[float]] = defaultdict(list)
    for values in per_seed:
        total = sum(values.values()) or 1.0
        by_type: dict[str, float] = defaultdict(float)
        for name, value in values.items():
            by_type[infer_module_type(name)[1]] += value / total
        for module_type, share in by_type.items():
            shares[module_type].append(share)
    return {t: statistics.fmean(v) for t, v in shares.items()}


def plot_rank_profiles(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Ranks per layer for each module type, one panel per estimator (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from senslora.core.module_types import infer_module_type, order_module_types

    chosen: dict[str, dict[str, int]] = {}
    for result in sorted(results, key=lambda r: (r["group"] != "main", r["config"]["seed"], r["experiment"])):
        config = result["config"]
        label = f"{config['model']}: {config['estimator']}, average rank {config['avg_rank']}"
        default = runs_with_defaults(result)
        if config["method"] == "senslora" and default and label not in chosen and result.get("ranks"):
            chosen[label] = result["ranks"]
    if not chosen:
        return None
    columns = min(3, len(chosen))
    rows = -(-len(chosen) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(chosen) :]:
        axis.set_visible(False)
    for axis, (label, ranks) in zip(axes.flat, sorted(chosen.items()), strict=False):
        series: dict[str, dict[int, int]] = defaultdict(dict)
        for name, rank in ranks.items():
            layer, module_type = infer_module_type(name)
            if layer is not None:
                series[module_type][layer] = rank
        for module_type in order_module_types(list(series)):
            points = sorted(series[module_type].items())
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=module_type)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("layer")
        axis.set_ylabel("LoRA rank")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=96)
    plt.close(figure)
    return path


def plot_quality_vs_budget(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Main metric against adapter parameters, mean ± std over seeds, one series per method and learning
    rate; the budget tables only (not the head variants, ablations or the decoder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r["group"] not in ("head", "ablation", "decoder")]
    best: dict[tuple[str, int], tuple[float, float, float, float]] = {}  # each cell at its best learning rate
    for (label, rank, lr), runs in group_cells(results).items():
        metric = runs[0]["main_metric"]
        mean, spread, _ = mean_std(r["validation"][metric] for r in runs)
        params = statistics.fmean(r["parameters"]["adapter"] for r in runs)
        if (label, rank) not in best or mean > best[(label, rank)][1]:
            best[(label, rank)] = (params, mean, spread, lr)
    series: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for (label, _rank), point in best.items():
        series[label].append(point)
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                      capsize=3, label=label)  # fmt: skip
        for params, mean, _, lr in points:
            axis.annotate(f"lr {lr:g}", (params, mean), textcoords="offset points", xytext=(4, 4), fontsize=6)
    axis.set_title("each point at its best learning rate of the sweep (mean ± std over seeds)", fontsize=9)
    axis.set_xlabel("trainable adapter parameters")
    axis.set_ylabel(results[0]["main_metric"])
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=96)
    plt.close(figure)
    return path


def plot_cost_ratios(measurement: Path, path: Path) -> Path | None:
    """Step time and peak memory of each method relative to uniform LoRA, from the interleaved measurement
    of bench_training_cost.py (the quality runs share the cores, so their timings are not used)."""
    if not measurement.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads(measurement.read_text())
    labels = list(record["step_ratio_to_lora"])
    step = [record["step_ratio_to_lora"][k] for k in labels]
    memory = [record["memory_ratio_to_lora"][k] for k in labels]
    figure, axis = plt.subplots(figsize=(6, 3.6))
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], step, width=0.4, label="training step time / LoRA")
    axis.bar([p + 0.2 for p in positions], memory, width=0.4, label="peak memory / LoRA")
    axis.axhline(1.05, color="grey", linestyle="--", linewidth=1, label="goal for senslora: 1.05")
    axis.set_xticks(list(positions), labels)
    axis.set_ylim(0.8, max(step + memory + [1.05]) * 1.08)
    axis.set_title(f"sensitivity pass = {record['sensitivity_to_training']:.1%} of the main job's training", fontsize=9)
    axis.set_ylabel("ratio to uniform LoRA")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=96)
    plt.close(figure)
    return path


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it (for links in BENCHMARKS.md)."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def summarize(directory: Path) -> str:
    results = load_results(directory)
    if not results:
        raise SystemExit(f"no results in {directory}")
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_group[result["group"]].append(result)
    sections = [f"Results: {len(results)} experiments in `{_shown(directory)}`.", ""]
    for group in sorted(set(by_group) - {"head"}):  # the head group has its own table below
        runs = by_group[group] + (main_references(by_group.get("main", [])) if group in REFERENCED else [])
        sections += [f"### {group}", "", *quality_table(runs), ""]
        if group == "ablation":
            sections += [*paired_differences(runs, REFERENCE_LABELS[1]), ""]
    if by_group.get("head"):
        references = head_references(by_group.get("main", []))
        sections += ["### head safeguards", "", *head_table(by_group["head"], references), ""]
    agreement = update_agreement([r for r in results if r["config"]["model"] == "minilm"])
    if agreement:
        sections += ["### where uniform LoRA learns vs where senslora puts rank", "", *agreement, ""]
    figures = [
        plot_rank_profiles(results, directory / "rank_profiles.png"),
        plot_quality_vs_budget(results, directory / "quality_vs_budget.png"),
        plot_cost_ratios(HERE / "results" / "training_cost.json", directory / "cost_ratios.png"),
    ]
    for figure in figures:
        if figure is not None:
            sections.append(f"![{figure.stem}]({_shown(figure)})")
    text = "\n".join(sections) + "\n"
    (directory / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    print(summarize(args.results_dir or results_directory(args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
