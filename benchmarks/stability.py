"""Stability of allocations: Kendall tau and share of changed ranks across calibration choices.

    python benchmarks/stability.py                    # about 10 minutes on a 2-core CPU
    python benchmarks/stability.py --estimators activation --quick   # replaces only activation's rows
    python benchmarks/stability.py --estimators hutchinson --num-probes 4 --output stability-probes4.json

For each estimator, the real MiniLM (one fixed random classifier head) is calibrated on
- different sources: Rotten Tomatoes (the task), Wikipedia articles, Hamlet and convention speeches
  (label-free sources only for `activation`; loss-based estimators need task labels, so for them the
  speeches' party labels stand in as a second labelled source);
- different sizes: 10%, 20% and 50% of a 512-snippet Rotten Tomatoes sample, against all 512;
- different seeds: three independent 256-snippet samples;
and every allocation (average rank 4) is compared with its reference (Rotten Tomatoes, 256 snippets, seed
0; for sizes, all 512 snippets) by `senslora.reporting.compare.compare_allocations`, the code of `senslora compare`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def batches_for(source: str, count: int, seed: int, model_task, tokenizer, labelled: bool) -> list[dict]:
    from senslora.finetune.data import DataSpec, load_calibration_source
    from senslora.finetune.tokenization import make_batches, make_collator, tokenize_dataset, tokenize_texts

    spec = DataSpec(source=source, seed=seed)
    sample = load_calibration_source(spec, count, seed)
    if labelled:
        tokenized = tokenize_dataset(sample, tokenizer, model_task(spec), max_length=128)
    else:
        column = "text" if "text" in sample.column_names else sample.column_names[0]
        tokenized = tokenize_texts(sample, tokenizer, max_length=128, text_column=column)
    return make_batches(tokenized, make_collator(tokenizer, "classification"), 16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=["activation", "fisher", "hutchinson"])
    parser.add_argument("--output", type=Path, default=HERE / "results" / "stability.json")
    parser.add_argument("--quick", action="store_true", help="fewer variants (sources and one size)")
    parser.add_argument("--num-probes", type=int, default=1, help="hutchinson probes per batch (default: 1)")
    args = parser.parse_args(argv)

    from senslora import allocate_ranks, estimate_sensitivity
    from senslora.finetune.data import DataSpec, load_task_data
    from senslora.finetune.environment import quiet_libraries
    from senslora.finetune.models import load_model_and_tokenizer
    from senslora.reporting.compare import compare_allocations
    from senslora.utils.io import atomic_write_json

    quiet_libraries()
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer("minilm", "classification", num_labels=2)
    task_cache: dict[str, Any] = {}

    def model_task(spec: DataSpec):
        if spec.source not in task_cache:
            task_cache[spec.source] = load_task_data(spec)
        return task_cache[spec.source]

    # rows of estimators not rerun are kept, so each estimator can be measured on its own
    results: dict[str, list[dict[str, Any]]] = json.loads(args.output.read_text()) if args.output.exists() else {}
    for estimator in args.estimators:
        loss_based = estimator != "activation"

        def allocation_for(source: str, count: int, seed: int, estimator: str = estimator, labelled: bool = loss_based):
            batches = batches_for(source, count, seed, model_task, tokenizer, labelled)
            sensitivities = estimate_sensitivity(
                model, batches, estimator=estimator, num_probes=args.num_probes, progress=False
            )
            return allocate_ranks(sensitivities, avg_rank=4, dominance_share=None)

        reference = allocation_for("rotten_tomatoes", 256, 0)
        full = allocation_for("rotten_tomatoes", 512, 0)  # sizes are compared with all 512 snippets
        variants: list[tuple[str, str, int, int]] = []
        sources = ["convention_speeches"] if loss_based else ["wikipedia", "hamlet", "convention_speeches"]
        variants += [("source", s, 256, 0) for s in sources]
        sizes = [0.5] if args.quick else [0.1, 0.2, 0.5]
        variants += [("size", "rotten_tomatoes", round(512 * f), 0) for f in sizes]
        if not args.quick:
            variants += [("seed", "rotten_tomatoes", 256, s) for s in (1, 2)]
        rows = []
        for kind, source, count, seed in variants:
            baseline = full if kind == "size" else reference
            comparison = compare_allocations(baseline, allocation_for(source, count, seed))
            row = {
                "estimator": estimator,
                "variation": kind,
                "source": source,
                "examples": count,
                "seed": seed,
                "kendall_tau_theta": comparison.kendall_tau,
                "kendall_tau_ranks": comparison.kendall_tau_ranks,
                "changed_share": comparison.changed_share,
            }
            if estimator == "hutchinson":
                row["num_probes"] = args.num_probes
            rows.append(row)
            print(json.dumps(row))
        results[estimator] = rows
    atomic_write_json(args.output, results)
    print_table(results)
    return 0


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    print("| estimator | variation | calibration | Kendall tau (theta) | Kendall tau (ranks) | ranks changed |")
    print("|---|---|---|---:|---:|---:|")
    for estimator, rows in results.items():
        for row in rows:
            where = f"{row['source']}, {row['examples']} snippets, seed {row['seed']}"
            print(
                f"| {estimator} | {row['variation']} | {where} | {row['kendall_tau_theta']:.3f} | "
                f"{row['kendall_tau_ranks']:.3f} | {row['changed_share']:.0%} |"
            )


if __name__ == "__main__":
    sys.exit(main())
