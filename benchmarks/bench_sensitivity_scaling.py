"""Cost of the sensitivity pass as the model grows: time and extra peak memory, tiny to ~100M-parameter Llamas.

Models: randomly initialised Llama (transformers.LlamaConfig, vocab 1000, seed 0) of growing width and depth,
intermediate size 8/3 * hidden rounded up to a multiple of 64, hidden / 64 heads (at least 1). Data: random
token batches (batch 4, length 128, some rows padded at the end), labels = input_ids with padding ignored
(causal LM loss). Targets: every Linear but lm_head (q, k, v, o, gate, up, down of every layer).

Workloads, each in a fresh process (so peak memory is its own): the plain no-grad `forward` and
`forward_backward` (only the target weights require grad, gradients freed after each batch) baselines, and
the `activation`, `fisher` and `hutchinson` (num_probes=1) estimators, and `fisher_diagonal`: the fisher
estimator pass alone (senslora.core.estimators.fisher_diagonals), without the per-module metrics.
Time: median over `--repeats` passes over `--batches` batches (fewer once the passes took `--time-budget`
seconds), after a one-batch warm-up. Memory: peak RSS minus the RSS once the model and batches are loaded
(peak reset there through /proc/self/clear_refs).

The extra memory of an estimator over its baseline is compared with what it must keep:
accumulators (sum of target weight sizes in float32 for fisher/hutchinson, sum of d_in in float64 for
activation) plus one largest target weight (a gradient or product in flight).

    python benchmarks/bench_sensitivity_scaling.py            # about 10 minutes on 2 cores
    python benchmarks/bench_sensitivity_scaling.py --quick    # about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP workers that spin while they wait stall for a whole time slice whenever another process holds
# the other core (measured here: 2 threads 50x slower than 1 on a small model); passive waiting does not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import senslora
from bench_sensitivity_cost import current_rss_bytes, environment, peak_rss_bytes, settle_memory
from senslora.core.estimators import fisher_diagonals

WORKLOADS = ("forward", "activation", "forward_backward", "fisher", "fisher_diagonal", "hutchinson")
BASELINE = {
    "activation": "forward",
    "fisher": "forward_backward",
    "fisher_diagonal": "forward_backward",
    "hutchinson": "forward_backward",
}
# (hidden size, layers)
SIZES = ((64, 2), (128, 4), (256, 4), (512, 8), (1024, 8))
QUICK_SIZES = ((64, 2), (128, 4))
VOCAB = 1000
RESULTS = Path(__file__).resolve().parent / "results"


def llama_config(hidden: int, layers: int):
    """A Llama-style config: intermediate 8/3 * hidden rounded up to 64, one head per 64 channels."""
    from transformers import LlamaConfig

    heads = max(1, hidden // 64)
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=64 * math.ceil(8 * hidden / 3 / 64),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


def build(hidden: int, layers: int, num_batches: int, batch_size: int, length: int):
    """The seed-0 random Llama and `num_batches` random token batches with trailing padding on some rows."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(hidden, layers)).eval()
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(num_batches):
        input_ids = torch.randint(1, VOCAB, (batch_size, length), generator=generator)
        attention_mask = torch.ones(batch_size, length, dtype=torch.long)
        for row in range(1, batch_size, 2):  # every other row padded by up to a quarter of the length
            padding = int(torch.randint(1, length // 4, (1,), generator=generator))
            attention_mask[row, length - padding :] = 0
            input_ids[row, length - padding :] = 0
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return model, batches


def run_workload(name: str, model: torch.nn.Module, batches: list[dict]) -> None:
    """One pass of workload `name` over `batches`."""
    if name == "forward":
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    elif name == "forward_backward":
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        weights = [layer.weight for layer in senslora.find_target_layers(model)]
        for weight in weights:
            weight.requires_grad_(True)
        for batch in batches:
            model(**batch).loss.backward()
            for weight in weights:
                weight.grad = None
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    elif name == "fisher_diagonal":
        fisher_diagonals(model, senslora.find_target_layers(model), batches, progress=False)
    elif name in ("activation", "fisher", "hutchinson"):
        senslora.estimate_sensitivity(model, batches, estimator=name, num_probes=1, seed=0, progress=False)
    else:
        raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}")


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """In this fresh process: build, settle, warm up on one batch, time `repeats` passes; report time and RSS."""
    model, batches = build(args.hidden, args.layers, args.batches, args.batch_size, args.length)
    peak_reset = settle_memory()
    loaded, loaded_peak = current_rss_bytes(), peak_rss_bytes()
    run_workload(name, model, batches[:1])
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_workload(name, model, batches)
        seconds.append(time.perf_counter() - start)
        if sum(seconds) >= args.time_budget:  # long passes: fewer repeats keep the whole run short
            break
    peak = peak_rss_bytes()
    return {
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "rss_after_load_mb": loaded / 2**20,
        "peak_rss_mb": peak / 2**20,
        "extra_peak_mb": (peak - (loaded if peak_reset else loaded_peak)) / 2**20,
        "peak_reset": peak_reset,
    }


def model_facts(hidden: int, layers: int) -> dict[str, Any]:
    """Parameter counts and the memory an estimator must hold for this size (built on the meta device)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(hidden, layers))
    targets = senslora.find_target_layers(model)
    target_sizes = [layer.weight.numel() for layer in targets]
    largest_mb = max(target_sizes) * 4 / 2**20
    return {
        "hidden": hidden,
        "layers": layers,
        "intermediate": model.config.intermediate_size,
        "heads": model.config.num_attention_heads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "target_parameters": sum(target_sizes),
        "target_modules": len(targets),
        "largest_target_mb": largest_mb,
        "expected_extra_mb": {
            "activation": largest_mb + sum(layer.d_in for layer in targets) * 8 / 2**20,
            "fisher": largest_mb + sum(target_sizes) * 4 / 2**20,
            "fisher_diagonal": largest_mb + sum(target_sizes) * 4 / 2**20,
            "hutchinson": largest_mb + sum(target_sizes) * 4 / 2**20,
        },
    }


def child(args: argparse.Namespace, hidden: int, layers: int, workload: str) -> dict[str, Any]:
    """Run this script again in a fresh process for one (size, workload) and parse its JSON line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--workload", workload]
    command += ["--hidden", str(hidden), "--layers", str(layers), "--batches", str(args.batches)]
    command += ["--batch-size", str(args.batch_size), "--length", str(args.length)]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads), "--time-budget", str(args.time_budget)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{workload} at hidden {hidden}, {layers} layers failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(result: dict[str, Any], path: Path) -> None:
    """Time and extra peak memory against parameter count, log-log, one line per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["models"]
    params = [row["parameters"] for row in rows]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"forward": ":", "forward_backward": ":", "fisher_diagonal": "--"}
    for name in result["settings"]["workloads"]:
        time_axis.plot(
            params, [row["workloads"][name]["median_seconds"] for row in rows], "o" + styles.get(name, "-"), label=name
        )
        memory_axis.plot(
            params,
            [max(row["workloads"][name]["extra_peak_mb"], 0.1) for row in rows],
            "o" + styles.get(name, "-"),
            label=name,
        )
    memory_axis.plot(
        params,
        [row["workloads"]["forward_backward"]["extra_peak_mb"] + row["expected_extra_mb"]["fisher"] for row in rows],
        "k--",
        linewidth=0.8,
        label="fisher predicted (forward_backward + fp32 sums + largest target)",
    )
    settings = result["settings"]
    time_axis.set_title(
        f"time per pass ({settings['batches']} batches of {settings['batch_size']}x{settings['length']})"
    )
    time_axis.set_ylabel("seconds (median)")
    memory_axis.set_title("extra peak memory over the loaded model")
    memory_axis.set_ylabel("MB (peak RSS - RSS after loading)")
    for axis in (time_axis, memory_axis):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.grid(True, which="both", alpha=0.3)
    handles, labels = memory_axis.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.suptitle(
        f"senslora sensitivity cost, random Llama, CPU {settings['threads']} threads ({result['date'][:10]})"
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def print_report(result: dict[str, Any]) -> None:
    names = result["settings"]["workloads"]
    print(f"\n{'params':>10} {'h':>5} {'L':>3}  " + "  ".join(f"{name + ' s':>18}" for name in names))
    for row in result["models"]:
        cells = "  ".join(f"{row['workloads'][name]['median_seconds']:>18.3f}" for name in names)
        print(f"{row['parameters']:>10} {row['hidden']:>5} {row['layers']:>3}  {cells}")
    print(f"\n{'params':>10}  " + "  ".join(f"{name + ' MB':>19}" for name in names))
    for row in result["models"]:
        cells = "  ".join(f"{row['workloads'][name]['extra_peak_mb']:>19.1f}" for name in names)
        print(f"{row['parameters']:>10}  {cells}")
    print(f"\n{'params':>10}  estimator        time x baseline  extra over baseline MB  expected MB")
    for row in result["models"]:
        for name, over in row["over_baseline"].items():
            print(
                f"{row['parameters']:>10}  {name:<15}  {over['time_ratio']:>15.2f}  {over['extra_mb']:>22.1f}"
                f"  {over['expected_mb']:>11.1f}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small models, one batch (about a minute)")
    parser.add_argument("--sizes", help="comma-separated hidden:layers pairs, e.g. 64:2,256:4 (default: built-in)")
    parser.add_argument("--batches", type=int, help="batches per pass (default 2, 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, help="timed passes, median reported (default 3, 1 with --quick)")
    parser.add_argument(
        "--time-budget", type=float, default=60.0, help="stop repeating a workload once its passes took this long (s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--output", type=Path, default=RESULTS / "sensitivity_scaling.json", help="JSON results")
    parser.add_argument("--plot", type=Path, default=RESULTS / "sensitivity_scaling.png", help="PNG plot")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # internal: one measurement in this process
    parser.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batches = args.batches or (1 if args.quick else 2)
    args.repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    if args.workload is not None:
        print(json.dumps(measure(args.workload, args)))
        return

    if args.sizes:
        try:
            sizes = [tuple(int(part) for part in pair.split(":")) for pair in args.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes must look like 64:2,256:4, got {args.sizes!r}")
        if any(len(size) != 2 or min(size) < 1 for size in sizes):
            parser.error(f"--sizes must look like 64:2,256:4, got {args.sizes!r}")
    else:
        sizes = list(QUICK_SIZES if args.quick else SIZES)
    models = []
    started = time.perf_counter()
    for hidden, layers in sizes:
        row = model_facts(hidden, layers)
        row["workloads"] = {}
        for name in WORKLOADS:
            print(f"hidden {hidden}, {layers} layers: {name} ...", file=sys.stderr, flush=True)
            row["workloads"][name] = child(args, hidden, layers, name)
        row["over_baseline"] = {
            name: {
                "baseline": BASELINE[name],
                "time_ratio": row["workloads"][name]["median_seconds"]
                / row["workloads"][BASELINE[name]]["median_seconds"],
                "extra_mb": row["workloads"][name]["extra_peak_mb"] - row["workloads"][BASELINE[name]]["extra_peak_mb"],
                "expected_mb": row["expected_extra_mb"][name],
            }
            for name in BASELINE
        }
        models.append(row)
    result = {
        "benchmark": "sensitivity_scaling",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)]),
        "total_seconds": time.perf_counter() - started,
        "settings": {
            "model": "random LlamaForCausalLM, vocab 1000, seed 0",
            "batches": args.batches,
            "batch_size": args.batch_size,
            "length": args.length,
            "repeats": args.repeats,
            "time_budget_seconds": args.time_budget,
            "threads": args.threads,
            "hutchinson_probes": 1,
            "workloads": list(WORKLOADS),
        },
        "environment": environment(),
        "models": models,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.plot)
    print_report(result)
    print(f"\nwrote {args.output} and {args.plot} in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
