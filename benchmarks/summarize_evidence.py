"""Summarise the `evidence` profile: does allocation matter on each test bed, and does senslora win there?

    python benchmarks/summarize_evidence.py     # writes benchmarks/results/evidence/summary.md + PNGs

For every test bed (a results group), paired by seed:
- "allocation matters": the gain of senslora over its own ranks in reverse theta order (`inverse`) and
  shuffled (`shuffled`), at the control learning rate. gain = senslora - control for a metric where higher
  is better (accuracy), control - senslora where lower is better (perplexity), so a positive gain always
  means senslora is better. A test bed *discriminates* when the inverse or shuffled gain exceeds its paired
  standard deviation.
- "senslora vs tuned LoRA": each method at its own best learning rate (best mean over seeds), gain paired
  by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evidence"
LOWER_IS_BETTER = {"perplexity", "loss"}


def load(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json")) if p.name != "summary.json"]


def variant(result: dict[str, Any]) -> str:
    """lora, senslora, senslora-uncapped, inverse, shuffled, head-only or base-model."""
    overrides = result["overrides"]
    if "baseline" in overrides:
        return overrides["baseline"].replace("_", "-")
    if "control" in overrides:
        return overrides["control"]
    method = overrides["method"]
    if method == "senslora":
        estimator = overrides.get("estimator", "activation")
        name = "senslora" if estimator == "activation" else f"senslora-{estimator}"
        return name + ("-uncapped" if overrides.get("max_rank_factor") == 0 else "")
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
    """The learning rate with the best mean over seeds (only cells with the most seeds count)."""
    options = {lr: seeds for (b, v, lr), seeds in table.items() if b == bed and v == name}
    if not options:
        return None
    most = max(len(s) for s in options.values())
    full = {lr: statistics.fmean(s.values()) for lr, s in options.items() if len(s) == most}
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(full, key=full.get)


BASELINES = ("head-only", "base-model")


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


def summarize(results: list[dict[str, Any]]) -> str:
    table = cells(results)
    metrics = {bed_of(r): metric_of(r)[0] for r in results}
    beds = sorted(bed for bed in metrics if any(b == bed and v not in BASELINES for (b, v, _) in table))
    lines = ["## Does allocation matter, and does senslora win? (paired by seed)", ""]
    lines += [
        "| test bed | metric | senslora − inverse | senslora − shuffled | discriminates? | senslora (best lr) "
        "− tuned LoRA (best lr) | senslora | tuned LoRA | no adapter |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bed in beds:
        metric = metrics[bed]
        control_lrs = {lr for (b, v, lr) in table if b == bed and v in ("inverse", "shuffled")}
        control_lr = min(control_lrs) if control_lrs else None
        sens_at_control = table.get((bed, "senslora", control_lr), {})
        inverse = paired_gains(sens_at_control, table.get((bed, "inverse", control_lr), {}), metric)
        shuffled = paired_gains(sens_at_control, table.get((bed, "shuffled", control_lr), {}), metric)
        discriminates = any(len(g) > 1 and mean_std(g)[0] > mean_std(g)[1] for g in (inverse, shuffled))
        lora_lr, sens_lr = best_lr(table, bed, "lora", metric), best_lr(table, bed, "senslora", metric)
        lora = table.get((bed, "lora", lora_lr), {})
        sens = table.get((bed, "senslora", sens_lr), {})
        versus = paired_gains(sens, lora, metric)
        baseline = baseline_values(table, bed)
        sens_cell = f"{fmt_plain(list(sens.values()))} (lr {sens_lr:g})" if sens_lr is not None else "-"
        lora_cell = f"{fmt_plain(list(lora.values()))} (lr {lora_lr:g})" if lora_lr is not None else "-"
        lines.append(
            f"| {bed} | {metric} | {fmt(inverse)} | {fmt(shuffled)} | {'yes' if discriminates else 'no'} "
            f"| {fmt(versus)} | {sens_cell} | {lora_cell} | {fmt_plain(baseline)} |"
        )
    lines += ["", "## Every cell (mean ± std over seeds)", ""]
    lines += ["| test bed | variant | lr | metric | seeds | per seed |", "|---|---|---:|---|---:|---|"]
    for (bed, name, lr), seeds in sorted(table.items()):
        per_seed = ", ".join(f"{seeds[s]:.4f}" for s in sorted(seeds))
        lines.append(f"| {bed} | {name} | {lr:g} | {fmt_plain(list(seeds.values()))} | {len(seeds)} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = load(args.results_dir)
    if not results:
        raise SystemExit(f"error: no results in {args.results_dir}")
    text = summarize(results)
    (args.results_dir / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
