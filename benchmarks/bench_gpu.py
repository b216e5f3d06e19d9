"""The GPU check: the activation pass against a plain forward, each estimator, and short bf16 and NF4 fine-tunes
on the real models, with throughput and memory.

Prepared to fit in 10 minutes on one GPU; rerun it whenever a GPU is available to refresh the figures:

    python benchmarks/bench_gpu.py                                   # CUDA: MiniLM and SmolLM2
    python benchmarks/bench_gpu.py --device cpu --models minilm --calibration-examples 32 --steps 4  # dry run

For each model, loaded with `--model-dtype bfloat16` (accumulators stay float32/float64):
- a no-grad forward over the calibration batches, then the activation sensitivity pass over the same
  batches: tokens per second of each and their ratio (the activation pass should stay within 1.3x of the
  forward), and the paper's yardstick scaled by model size: 25.78 s for LLaMA3.1-8B's rank computation
  (8.03 B parameters), times parameters / 8.03e9 (the paper's calibration size is not matched, so this
  is an order of magnitude, not a like-for-like target);
- the fisher and hutchinson passes (1 probe);
- `senslora finetune`'s pipeline for `--steps` steps with the base in bfloat16 (bf16 autocast), and with the
  base in NF4 (QLoRA; skipped with a note where bitsandbytes is missing).
Reported: seconds, examples and tokens per second, and peak accelerator memory
(`torch.cuda.max_memory_allocated`, reset before each workload; on the CPU the process's peak RSS, which
only grows). Results go to `benchmarks/results/gpu_check.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
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


PAPER_SECONDS, PAPER_PARAMETERS = 25.78, 8.03e9  # LLaMA3.1-8B rank computation in the paper


def timed(device: torch.device, work, *arguments: Any) -> tuple[float, Any]:
    """Seconds `work(*arguments)` takes on `device` (synchronised on CUDA) and what it returned."""
    reset_peak(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = work(*arguments)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def forward_pass(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> None:
    """A plain no-grad forward over the batches: the activation pass's floor."""
    model.eval()
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))


def sensitivity_rows(model_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The forward floor, then one row per estimator: seconds, examples and tokens per second, peak memory."""
    setup = SETUPS[model_name]
    config = RunConfig(
        model=model_name, data=setup["data"], max_length=setup["max_length"], device=args.device,
        calibration_examples=args.calibration_examples, calibration_batch_size=setup["batch_size"],
        model_dtype="bfloat16", progress=False,
    )  # fmt: skip
    prepared = prepare(config)
    batches = calibration_batches(config, prepared)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    parameters = sum(p.numel() for p in prepared.model.parameters())
    forward_pass(prepared.model, batches[:1], prepared.device)  # warm-up (kernels, allocator)
    forward_seconds, _ = timed(prepared.device, forward_pass, prepared.model, batches, prepared.device)
    rows = [{
        "model": model_name, "workload": "no-grad forward (bf16)", "seconds": forward_seconds,
        "examples_per_second": args.calibration_examples / forward_seconds,
        "tokens_per_second": tokens / forward_seconds, "peak_memory_mb": peak_mb(prepared.device),
    }]  # fmt: skip
    for estimator in ESTIMATORS:
        run = RunConfig(**(config.to_dict() | {"estimator": estimator, "num_probes": 1}))
        seconds, _ = timed(prepared.device, run_sensitivity, run, prepared, batches)
        row = {
            "model": model_name, "workload": f"sensitivity {estimator} (bf16)", "seconds": seconds,
            "examples_per_second": args.calibration_examples / seconds, "tokens_per_second": tokens / seconds,
            "peak_memory_mb": peak_mb(prepared.device),
        }  # fmt: skip
        if estimator == "activation":
            row["ratio_to_forward"] = seconds / forward_seconds
            row["paper_yardstick_seconds"] = PAPER_SECONDS * parameters / PAPER_PARAMETERS
        rows.append(row)
    del prepared
    return rows


def finetune_row(model_name: str, args: argparse.Namespace, base: str) -> dict[str, Any] | None:
    """The pipeline (activation sensitivity, allocation, training) for a few steps, base in bf16 or NF4."""
    setup = SETUPS[model_name]
    loading = {"model_dtype": "bfloat16"}
    if base == "nf4":
        if importlib.util.find_spec("bitsandbytes") is None:
            print(f"{model_name}: NF4 fine-tune skipped: bitsandbytes is not installed")
            return None
        loading["quantization"] = "nf4"
    with tempfile.TemporaryDirectory() as directory:
        config = RunConfig(
            model=model_name, data=setup["data"], max_length=setup["max_length"], batch_size=setup["batch_size"],
            device=args.device, max_steps=args.steps, epochs=1, mixed_precision="bf16",
            calibration_examples=args.calibration_examples, max_validation_examples=64,
            output_dir=str(Path(directory) / "run"), progress=False, **loading,
        )  # fmt: skip
        device = torch.device("cuda") if args.device.startswith("cuda") else torch.device(args.device)
        reset_peak(device)
        metrics = finetune(config)
        step = metrics["mean_step_seconds"]
        return {
            "model": model_name, "workload": f"finetune {base} ({metrics['global_step']} steps)",
            "seconds": metrics["train_seconds"], "examples_per_second": setup["batch_size"] / step if step else None,
            "tokens_per_second": None, "peak_memory_mb": peak_mb(device),
            "sensitivity_to_train_ratio": metrics["sensitivity_to_train_ratio"],
            "validation": metrics["validation"],
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
        for base in ("bf16", "nf4"):
            row = finetune_row(model_name, args, base)
            if row is not None:
                rows.append(row)
    hardware = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {hardware}")
    print("| model | workload | seconds | examples/s | tokens/s | peak memory (MB) | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        rate = f"{row['examples_per_second']:.1f}" if row["examples_per_second"] else "-"
        tokens = f"{row['tokens_per_second']:.0f}" if row.get("tokens_per_second") else "-"
        note = ""
        if "ratio_to_forward" in row:
            note = f"{row['ratio_to_forward']:.2f}x the forward; paper yardstick {row['paper_yardstick_seconds']:.2f} s"
        print(
            f"| {row['model']} | {row['workload']} | {row['seconds']:.2f} | {rate} | {tokens} | "
            f"{row['peak_memory_mb']:.0f} | {note} |"
        )
    atomic_write_json(args.output, {"device": hardware, "versions": package_versions(), "rows": rows})
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
