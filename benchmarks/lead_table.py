"""The answer at a glance: each allocator against tuned uniform LoRA on every evidence bed, with intervals.

    python benchmarks/lead_table.py      # writes results/evidence/lead.md and lead-forest.png, and the
                                         # table between the lead-table markers of README.md and BENCHMARKS.md

An earlier bed rerun on the test split (its runs in results/evidence-reruns, written by `run.py
--results-dir benchmarks/results/evidence-reruns`) takes that bed's place for every method it reran, with its
own uniform LoRA; a method only the first run has stays compared with the first run's LoRA, as the bed
"<bed>, first run" (validation). The rerun's splits differ from the first run's (the test carve moved train
and validation), so no comparison mixes the two.

Per bed and method, paired by seed: the learning rate of each arm (uniform LoRA, and each allocator) is
chosen on the validation split (`pick_learning_rate`: best mean over the seeds its swept cells share);
the comparison is then made on the held-out test split where both arms' runs have one, else on validation
(marked in the table). Differences are signed so that > 0 means the method is better (accuracy higher,
perplexity lower). Statistics (`paired_stats`): mean, 95 % t interval, wins/seeds, and a verdict by Holm's
correction over every comparison of the table (one family); "allocation matters" tests senslora against its
own ranks reversed (`inverse`) and shuffled among modules of equal cost (`shuffled`) at the control
learning rate, Holm-corrected over that column's comparisons (a second family).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paired_stats import Paired, holm, paired, verdict
from summarize_evidence import (
    BASELINES,
    CONTROL_NAMES,
    LOWER_IS_BETTER,
    RESULTS,
    bed_of,
    load,
    pick_learning_rate,
    variant,
)

ROOT = Path(__file__).resolve().parents[1]
# Each document and whether it shows only the paper's allocator (the README) or every method.
DOCUMENTS = {ROOT / "README.md": True, ROOT / "BENCHMARKS.md": False}
START, END = "<!-- lead-table:start -->", "<!-- lead-table:end -->"
RERUNS = RESULTS.parent / "evidence-reruns"
FIRST_RUN = ", first run"  # the bed label of a rerun bed's methods that only its first run has
BED_ORDER = ("mpnet", "minilm", "minilm-r1", "minilm-r2", "smollm2-wiki", "smollm2-wiki-r1", "smollm2-hamlet")

# (bed, variant, learning rate) -> {seed: (validation metric, test metric or None)}
Cells = dict[tuple[str, str, float], dict[int, tuple[float, float | None]]]


@dataclass(frozen=True)
class Row:
    """One comparison of the lead table."""

    bed: str
    method: str
    metric: str
    split: str
    lr: float
    lora_lr: float
    comparison: Paired | None
    seeds: int


def cells(results: list[dict[str, Any]]) -> Cells:
    table: Cells = defaultdict(dict)
    for result in results:
        metric = result["main_metric"]
        test = (result.get("test") or {}).get(metric)
        value = (float(result["validation"][metric]), None if test is None else float(test))
        table[(bed_of(result), variant(result), result["config"]["learning_rate"])][result["config"]["seed"]] = value
    return table


def with_reruns(results: list[dict[str, Any]], reruns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first run's results of every bed in `reruns` give way to the rerun for each method the rerun has;
    the methods it lacks keep their first-run results and the first run's LoRA under the bed "<bed>, first
    run". Beds not rerun are kept as they are."""
    rerun_methods: dict[str, set[str]] = defaultdict(set)
    for result in reruns:
        rerun_methods[bed_of(result)].add(variant(result))
    merged = [r for r in results if bed_of(r) not in rerun_methods]
    for bed, methods in rerun_methods.items():
        first_run = [r for r in results if bed_of(r) == bed]
        left = {variant(r) for r in first_run} - methods - {"lora", *CONTROL_NAMES, *BASELINES}
        kept = [r for r in first_run if variant(r) in left or variant(r) == "lora"] if left else []
        merged += [r | {"group": f"{r['group']}{FIRST_RUN}"} for r in kept]
    return merged + reruns


def tuned_lr(table: Cells, bed: str, name: str, metric: str) -> float | None:
    """The arm's learning rate, chosen on validation only."""
    options = {lr: {s: v[0] for s, v in seeds.items()} for (b, n, lr), seeds in table.items() if (b, n) == (bed, name)}
    return pick_learning_rate(options, metric) if options else None


def differences(
    method: dict[int, tuple[float, float | None]], reference: dict[int, tuple[float, float | None]], metric: str
) -> tuple[str, list[float]]:
    """Paired differences (> 0: method better) on test where every shared seed has it, else on validation."""
    shared = sorted(set(method) & set(reference))
    on_test = bool(shared) and all(method[s][1] is not None and reference[s][1] is not None for s in shared)
    split = 1 if on_test else 0
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return ("test" if on_test else "validation"), [sign * (method[s][split] - reference[s][split]) for s in shared]


def comparison_of(diffs: list[float]) -> Paired | None:
    return paired(diffs) if len(diffs) >= 2 else None


def bed_position(bed: str) -> tuple[int, str]:
    """BED_ORDER's order, a bed's first-run rows right after its rerun ones, unknown beds last."""
    base = bed.removesuffix(FIRST_RUN)
    return (BED_ORDER.index(base) if base in BED_ORDER else len(BED_ORDER), bed)


def lead_rows(table: Cells, metrics: dict[str, str]) -> list[Row]:
    rows = []
    for bed in sorted(metrics, key=bed_position):
        metric = metrics[bed]
        lora_lr = tuned_lr(table, bed, "lora", metric)
        if lora_lr is None:
            continue
        names = sorted({n for (b, n, _) in table if b == bed} - {"lora", *CONTROL_NAMES, *BASELINES})
        names.sort(key=lambda n: n != "senslora")  # the paper's allocator first
        for name in names:
            lr = tuned_lr(table, bed, name, metric)
            split, diffs = differences(table[(bed, name, lr)], table[(bed, "lora", lora_lr)], metric)
            rows.append(Row(bed, name, metric, split, lr, lora_lr, comparison_of(diffs), len(diffs)))
    return rows


def control_rows(table: Cells, metrics: dict[str, str]) -> dict[str, list[tuple[str, str, Paired | None]]]:
    """bed -> [(control, split, senslora − control)] at the control learning rate (the lowest with controls)."""
    found: dict[str, list[tuple[str, str, Paired | None]]] = {}
    for bed, metric in metrics.items():
        lrs = {lr for (b, n, lr) in table if b == bed and n in CONTROL_NAMES}
        if not lrs:
            continue
        lr = min(lrs)
        sens = table.get((bed, "senslora", lr), {})
        found[bed] = []
        for control in CONTROL_NAMES:
            if (bed, control, lr) in table:
                split, diffs = differences(sens, table[(bed, control, lr)], metric)
                found[bed].append((control, split, comparison_of(diffs)))
    return found


def adjusted(comparisons: list[Paired | None]) -> list[float | None]:
    """Holm over the comparisons that have an interval, None for the rest."""
    present = [c.p_value for c in comparisons if c is not None]
    adjusted_values = iter(holm(present))
    return [None if c is None else next(adjusted_values) for c in comparisons]


def scale(metric: str) -> tuple[float, str]:
    """Accuracy-like metrics in points (x100), perplexity in its own units."""
    return (1.0, "") if metric in LOWER_IS_BETTER else (100.0, " pt")


def allocation_cell(
    entries: list[tuple[str, str, Paired | None]], p_values: dict[tuple[str, str], float | None], bed: str
) -> str:
    parts = []
    for control, _, comparison in entries:
        p = p_values.get((bed, control))
        parts.append(f"{control}: {'n<2' if comparison is None or p is None else verdict(comparison, p)}")
    return "; ".join(parts) if parts else "no controls"


def render(
    rows: list[Row], controls: dict[str, list[tuple[str, str, Paired | None]]], senslora_only: bool = False
) -> str:
    """The table; `senslora_only` shows the paper's allocator alone, its verdicts still corrected over every row."""
    p_rows = adjusted([r.comparison for r in rows])
    flat = [(bed, control, c) for bed, entries in controls.items() for control, _, c in entries]
    p_controls = dict(zip([(b, c) for b, c, _ in flat], adjusted([c for _, _, c in flat]), strict=True))
    lines = [
        "| bed | method | split | − tuned LoRA (mean) | 95 % CI | wins/seeds | verdict (Holm) | allocation matters? |",
        "|---|---|---|---:|---|---:|---|---|",
    ]
    shown_controls: set[str] = set()
    for row, p in zip(rows, p_rows, strict=True):
        if senslora_only and row.method != "senslora":
            continue
        factor, unit = scale(row.metric)
        metric = "perplexity" if row.metric in LOWER_IS_BETTER else row.metric
        allocation = ""
        if row.method == "senslora" and row.bed not in shown_controls:
            allocation = allocation_cell(controls.get(row.bed, []), p_controls, row.bed)
            shown_controls.add(row.bed)
        if row.comparison is None:
            lines.append(
                f"| {row.bed} | {row.method} | {row.split} | n={row.seeds} | – | – | too few seeds | {allocation} |"
            )
            continue
        c = row.comparison
        lines.append(
            f"| {row.bed} ({metric}) | {row.method} (lr {row.lr:g}; LoRA {row.lora_lr:g}) | {row.split} "
            f"| {factor * c.mean:+.2f}{unit} | [{factor * c.low:+.2f}, {factor * c.high:+.2f}] "
            f"| {c.wins}/{c.n} | {verdict(c, p)} | {allocation} |"
        )
    families = (
        f"Holm families: the {sum(p is not None for p in p_rows)} comparisons against tuned LoRA, and the "
        f"{sum(p is not None for p in p_controls.values())} control comparisons."
    )
    return "\n".join(lines) + "\n\n" + families + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Forest plot: one row per bed and method, its 95 % interval against tuned LoRA, a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [r for r in rows if r.comparison is not None]
    panels = [("accuracy-like metrics (points)", [r for r in drawn if r.metric not in LOWER_IS_BETTER])]
    panels.append(("perplexity (lower is better, sign flipped)", [r for r in drawn if r.metric in LOWER_IS_BETTER]))
    panels = [(title, group) for title, group in panels if group]
    heights = [max(2.0, 0.32 * len(group) + 1.0) for _, group in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), gridspec_kw={"height_ratios": heights})
    axes = [axes] if len(panels) == 1 else list(axes)
    for axis, (title, group) in zip(axes, panels, strict=True):
        for y, row in enumerate(reversed(group)):
            factor = scale(row.metric)[0]
            c = row.comparison
            assert c is not None
            color = "tab:blue" if row.split == "test" else "tab:gray"
            axis.errorbar(
                factor * c.mean,
                y,
                xerr=[[factor * (c.mean - c.low)], [factor * (c.high - c.mean)]],
                fmt="o",
                color=color,
            )
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(group)))
        axis.set_yticklabels(
            [f"{r.bed}: {r.method}" + ("" if r.split == "test" else " (val)") for r in reversed(group)]
        )
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("difference from tuned uniform LoRA, 95 % CI (> 0: better)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def replace_between_markers(path: Path, text: str) -> bool:
    """Put `text` between the lead-table markers of a document (False when it has none)."""
    document = path.read_text()
    if START not in document or END not in document:
        return False
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    updated = pattern.sub(lambda _: f"{START}\n{text}{END}", document)
    if updated != document:
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(updated)
        temporary.replace(path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--reruns-dir", type=Path, help="beds rerun on the test split (default: evidence-reruns beside --results-dir)"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the tables in README/BENCHMARKS")
    args = parser.parse_args(argv)
    reruns_dir = args.reruns_dir or args.results_dir.parent / RERUNS.name
    results = with_reruns(load(args.results_dir), load(reruns_dir) if reruns_dir.is_dir() else [])
    if not results:
        raise SystemExit(f"error: no results in {args.results_dir}")
    table = cells(results)
    metrics = {bed_of(r): r["main_metric"] for r in results if variant(r) not in BASELINES}
    rows = lead_rows(table, metrics)
    controls = control_rows(table, metrics)
    text = render(rows, controls)
    (args.results_dir / "lead.md").write_text(text)
    plot(rows, args.results_dir / "lead-forest.png")
    if not args.no_docs:
        for document, senslora_only in DOCUMENTS.items():
            shown = render(rows, controls, senslora_only) if senslora_only else text
            replace_between_markers(document, shown)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
