"""The GPU check: each estimator and a short bf16 fine-tune on the real models, with throughput and memory.

Prepared to fit in 10 minutes on one GPU; rerun it whenever a GPU is available to refresh the figures:

    python benchmarks/bench_gpu.py                                   # CUDA: MiniLM and SmolLM2
    python benchmarks/bench_gpu.py --device cpu --models minilm --calibration-examples 32 --steps 4  # dry run

For each model: the sensitivity pass of every estimator on the model cast to bfloat16 (accumulators stay
float32/float64), then `senslora finetune`'s pipeline for `--steps` steps with bf16 autocast. Reported:
seconds, calibration examples (or training examples) per second, and peak accelerator memory
(`torch.cuda.max_memory_allocated`, reset before each workload; on the CPU the process's peak RSS).
Results go to `benchmarks/results/gpu_check.json`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from senslora.finetune.config import RunConfig
from senslora.finetune.environment import package_versions, quiet_libraries
from senslora.finetune.pipeline import finetune
from senslora.finetune.preparation import calibration_batches, prepare
from senslora.finetune.rank_steps import run_sensitivity
from senslora.utils.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
# Model name -> its data, sequence length and batch size for this check.
SETUPS = {
    "minilm": {"data": "rotten_tomatoes", "max_length": 128, "batch_size": 32},
    "smollm2": {"data": "wikipedia", "max_length": 256, "batch_size": 8},
}
ESTIMATORS = ("activation", "fisher", "hutchinson")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sensitivity_rows(model_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per estimator: seconds, examples per second, peak memory."""
    setup = SETUPS[model_name]
    config = RunConfig(
        model=model_name, data=setup["data"], max_length=setup["max_length"], device=args.device,
        calibration_examples=args.calibration_examples, calibration_batch_size=setup["batch_size"], progress=False,
    )  # fmt: skip
    prepared = prepare(config)
    prepared.model.to(torch.bfloat16)
    batches = calibration_batches(config, prepared)
    rows = []
    for estimator in ESTIMATORS:
        run = RunConfig(**(config.to_dict() | {"estimator": estimator, "num_probes": 1}))
        reset_peak(prepared.device)
        start = time.perf_counter()
        run_sensitivity(run, prepared, batches)
        seconds = time.perf_counter() - start
        rows.append({
            "model": model_name, "workload": f"sensitivity {estimator}", "seconds": seconds,
            "examples_per_second": args.calibration_examples / seconds, "peak_memory_mb": peak_mb(prepared.device),
        })  # fmt: skip
    del prepared
    return rows


def finetune_row(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline (activation sensitivity, allocation, training) for a few bf16 steps."""
    setup = SETUPS[model_name]
    with tempfile.TemporaryDirectory() as directory:
        config = RunConfig(
            model=model_name, data=setup["data"], max_length=setup["max_length"], batch_size=setup["batch_size"],
            device=args.device, max_steps=args.steps, epochs=1, mixed_precision="bf16",
            calibration_examples=args.calibration_examples, max_validation_examples=64,
            output_dir=str(Path(directory) / "run"), progress=False,
        )  # fmt: skip
        device = torch.device("cuda") if args.device.startswith("cuda") else torch.device(args.device)
        reset_peak(device)
        metrics = finetune(config)
        step = metrics["mean_step_seconds"]
        return {
            "model": model_name, "workload": f"finetune bf16 ({metrics['global_step']} steps)",
            "seconds": metrics["train_seconds"], "examples_per_second": setup["batch_size"] / step if step else None,
            "peak_memory_mb": peak_mb(device), "sensitivity_to_train_ratio": metrics["sensitivity_to_train_ratio"],
        }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(SETUPS), default=["minilm", "smollm2"])
    parser.add_argument("--calibration-examples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps per model")
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu_check.json")
    args = parser.parse_args(argv)
    quiet_libraries()
    rows: list[dict[str, Any]] = []
    for model_name in args.models:
        rows += sensitivity_rows(model_name, args)
        rows.append(finetune_row(model_name, args))
    hardware = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {hardware}")
    print("| model | workload | seconds | examples/s | peak memory (MB) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        rate = f"{row['examples_per_second']:.1f}" if row["examples_per_second"] else "-"
        print(f"| {row['model']} | {row['workload']} | {row['seconds']:.2f} | {rate} | {row['peak_memory_mb']:.0f} |")
    atomic_write_json(args.output, {"device": hardware, "versions": package_versions(), "rows": rows})
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
