"""SmolLM2 on Wikipedia through `senslora finetune` with its base in float32, bfloat16 and NF4 (seed 0 each).

    python benchmarks/bench_precision.py                 # the three runs, one after another
    python benchmarks/bench_precision.py --max-steps 4   # a quick look

Each run is the command line itself in a child process (so its peak RSS is its own, from `os.wait4`):
Sensitivity-LoRA (activation estimator) at average rank 8 on 1,000 Wikipedia paragraphs in 64-token blocks,
batch 8, lr 2e-3, cut at `--max-steps`; validation perplexity on 100 blocks. Reported per run: validation
perplexity, mean step seconds, sensitivity seconds, wall seconds and peak RSS. Results go to
`benchmarks/results/precision/<dtype>.json` and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "precision"
RUNS = {"float32": ["--model-dtype", "float32"], "bfloat16": ["--model-dtype", "bfloat16"]}
RUNS["nf4"] = ["--model-dtype", "float32", "--quantization", "nf4"]  # NF4 storage, float32 compute on the CPU
COMMON = [
    "--model", "smollm2", "--data", "wikipedia", "--max-length", "64", "--batch-size", "8",
    "--max-train-examples", "1000", "--max-validation-examples", "100", "--epochs", "1",
    "--calibration-examples", "64", "--calibration-unit", "texts", "--avg-rank", "8", "--learning-rate", "2e-3",
    "--seed", "0", "--no-progress", "--overwrite",
]  # fmt: skip


def command(name: str, max_steps: int, run_dir: Path) -> list[str]:
    """The exact `senslora finetune` command of one run."""
    options = [*COMMON, *RUNS[name], "--max-steps", str(max_steps), "--output-dir", str(run_dir)]
    return [sys.executable, "-m", "senslora.cli", "finetune", *options]


def run_one(name: str, max_steps: int, work: Path) -> dict:
    """Run one configuration; its metrics, wall time and peak RSS (bytes, Linux ru_maxrss is in KiB)."""
    argv = command(name, max_steps, work / name)
    start = time.perf_counter()
    process = subprocess.Popen(argv)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{name}: senslora finetune exited with {process.returncode}")
    metrics = json.loads((work / name / "metrics.json").read_text())
    return {
        "run": name,
        "command": "senslora " + " ".join(argv[3:-2]) + " --output-dir RUN_DIR",
        "perplexity": metrics["validation"]["perplexity"],
        "mean_step_seconds": metrics["mean_step_seconds"],
        "sensitivity_seconds": metrics["sensitivity_seconds"],
        "global_step": metrics["global_step"],
        "wall_seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": metrics["versions"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-precision"))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.runs:
        row = run_one(name, args.max_steps, args.work_dir)
        (args.output / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("versions", "command")}), flush=True)
    print("| base | perplexity | step (s) | sensitivity (s) | wall (s) | peak RSS (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['run']} | {row['perplexity']:.3f} | {row['mean_step_seconds']:.2f} | "
            f"{row['sensitivity_seconds']:.1f} | {row['wall_seconds']:.0f} | {row['peak_rss_bytes'] / 1e9:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
