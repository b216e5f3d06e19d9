"""Run a benchmark profile: each experiment in its own process, one results JSON each, resumable.

    python benchmarks/run.py --profile quick            # about 15 minutes on a quiet 2-core CPU
    python benchmarks/run.py --profile full --only lora # a subset of the full grid
    python benchmarks/run.py --profile full --jobs 2    # two experiments at a time, threads split between them
    python benchmarks/run.py --profile evidence --jobs 2 --only minilm-r1 --only head-only  # test beds
    python benchmarks/run.py --profile evidence --only evidence-minilm-lora \
        --results-dir benchmarks/results/evidence-reruns  # an earlier bed rerun on the test split

A rerun skips experiments whose results file exists. Each worker calls `senslora.finetune.pipeline.finetune` (the
library's own pipeline) in a temporary run directory and records configuration, package versions,
hardware, git commit, trainable parameters, per-module ranks and learned update norms, per-epoch metrics,
the wall times of the sensitivity pass and of training, the mean step time and the process's peak
resident memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

from controls import control_allocation, run_baseline, write_ranks  # noqa: E402
from experiment import Experiment  # noqa: E402
from experiments import PROFILES, results_directory  # noqa: E402


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def hardware() -> dict:
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def load_adapter(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, adapter_config.json) of the adapter a run saved."""
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    return weights, json.loads((run_dir / "adapter" / "adapter_config.json").read_text())


def adapter_ranks(weights: dict[str, Any]) -> dict[str, int]:
    """Per-module ranks of a saved adapter, read from its weights (PEFT may shorten target names).

    LoRA and EVA: rows of lora_A; AdaLoRA: the singular values left unpruned (non-zero lora_E).
    """
    ranks: dict[str, int] = {}
    for key, tensor in weights.items():
        module = key.removeprefix("base_model.model.")
        if module.endswith(".lora_E"):
            ranks[module.removesuffix(".lora_E")] = int((tensor != 0).sum())
        elif module.endswith(".lora_A.weight") and module.removesuffix(".lora_A.weight") not in ranks:
            ranks[module.removesuffix(".lora_A.weight")] = int(tensor.shape[0])
    return dict(sorted(ranks.items()))


def adapter_update_norms(weights: dict[str, Any], config: dict[str, Any]) -> dict[str, float]:
    """Per-module size of the learned update, ||(alpha / r) B A||_F, of a saved LoRA or EVA adapter
    (alpha from PEFT's alpha_pattern, matched as PEFT does: the key ends the module name). AdaLoRA's
    adapters (B diag(E) A) are left out."""
    import re

    if any(key.endswith(".lora_E") for key in weights):
        return {}
    patterns = config.get("alpha_pattern") or {}
    norms: dict[str, float] = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        match = next((k for k in patterns if re.match(rf"(.*\.)?({k})$", module)), None)
        alpha = patterns[match] if match is not None else config["lora_alpha"]
        norms[module] = float((b.double() @ a.double()).norm()) * alpha / a.shape[0]
    return dict(sorted(norms.items()))


def run_worker(experiment: Experiment, output: Path) -> None:
    """In a fresh process: run one experiment and write its results JSON."""
    from senslora.finetune.config import RunConfig
    from senslora.finetune.environment import package_versions, quiet_libraries
    from senslora.finetune.pipeline import finetune
    from senslora.utils.io import atomic_write_json

    quiet_libraries()
    overrides = dict(experiment.overrides)
    control, baseline = overrides.pop("control", None), overrides.pop("baseline", None)
    with tempfile.TemporaryDirectory() as temporary:
        run_dir = Path(temporary) / "run"
        config = RunConfig(**overrides, output_dir=str(run_dir), progress=False)
        start = time.perf_counter()
        if baseline is not None:
            outcome = run_baseline(config, baseline)
            record = {"experiment": experiment.name, "group": experiment.group, "overrides": experiment.overrides}
            record |= {"config": config.to_dict(), "versions": package_versions(), "hardware": hardware()}
            record |= {"git_commit": git_commit(), **outcome, "wall_seconds": time.perf_counter() - start}
            atomic_write_json(output, record)
            return
        control_record = None
        if control is not None:
            allocation, control_record = control_allocation(config, control)
            config = dataclasses.replace(config, ranks=str(write_ranks(allocation, Path(temporary))))
        metrics = finetune(config)
        wall = time.perf_counter() - start
        weights, adapter_config = load_adapter(run_dir)
        result = {
            "experiment": experiment.name,
            "group": experiment.group,
            "overrides": experiment.overrides,
            "config": config.to_dict(),
            "versions": package_versions(),
            "hardware": hardware(),
            "git_commit": git_commit(),
            "parameters": metrics["parameters"],
            "ranks": adapter_ranks(weights),
            "update_norms": adapter_update_norms(weights, adapter_config),
            "history": metrics["history"],
            "validation": metrics["validation"],
            "test": metrics["test"],
            "test_examples": metrics["data"].get("test_examples", 0),
            "main_metric": metrics["main_metric"],
            "best_epoch": metrics["best_epoch"],
            "sensitivity_seconds": metrics["sensitivity_seconds"],
            "train_seconds": metrics["train_seconds"],
            "adapter_setup_seconds": metrics["adapter_setup_seconds"],
            "mean_step_seconds": metrics["mean_step_seconds"],
            "global_step": metrics["global_step"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "wall_seconds": wall,
        }
        if control_record is not None:
            result["control"] = control_record
        if (run_dir / "sensitivity.json").exists():
            sensitivity = json.loads((run_dir / "sensitivity.json").read_text())
            result["sensitivity"] = {k: v for k, v in sensitivity.items() if k != "versions"}
        atomic_write_json(output, result)


def run_one(experiment: Experiment, profile: str, results_dir: Path, threads: int | None) -> tuple[int, str]:
    """Run one experiment in a worker process; returns (failures, progress line)."""
    output = results_dir / f"{experiment.name}.json"
    start = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--profile", profile]
    command += ["--results-dir", str(results_dir), "--worker", experiment.name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    completed = subprocess.run(command, env=env)
    seconds = time.perf_counter() - start
    if completed.returncode != 0 or not output.exists():
        return 1, f"{experiment.name}: FAILED (exit {completed.returncode})"
    result = json.loads(output.read_text())
    metric = result["main_metric"]
    return 0, f"{experiment.name}: {metric} {result['validation'][metric]:.4f} ({seconds:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--only", action="append", help="run only experiments whose name contains this text (repeatable: any)"
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results/<profile>")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at once (CPU threads are split)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    experiments = {e.name: e for e in PROFILES[args.profile]()}
    results_dir = args.results_dir or results_directory(args.profile)
    if args.worker:
        run_worker(experiments[args.worker], results_dir / f"{args.worker}.json")
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    selected = [e for e in experiments.values() if not args.only or any(text in e.name for text in args.only)]
    pending = [e for e in selected if not (results_dir / f"{e.name}.json").exists()]
    print(f"{len(selected)} experiments, {len(selected) - len(pending)} done already, {len(pending)} to run")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    failures = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, e, args.profile, results_dir, threads) for e in pending]
        for index, future in enumerate(as_completed(futures), 1):
            failed, line = future.result()
            failures += failed
            print(f"[{index}/{len(pending)}] {line}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
