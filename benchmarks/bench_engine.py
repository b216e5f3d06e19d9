"""The training engine side by side: transformers.Trainer (this tree) against the old hand-written loop.

Runs `senslora finetune` with its defaults (the README's main job: MiniLM, rotten_tomatoes, 2,000 snippets,
2 epochs, Sensitivity-LoRA at average rank 4) once per engine and seed, interleaved (old, new for seed 0;
new, old for seed 1; ...), each in its own process, and reports per engine:

- step time: mean seconds per optimizer step (`mean_step_seconds` of metrics.json) and training seconds
  per step (`train_seconds / global_step`), and the new / old ratios of their means;
- peak memory: the process's peak resident set size (ru_maxrss), and the new / old ratio of the means;
- validation accuracy (best epoch) mean and standard deviation over the seeds.

The old loop is the code of another checkout (e.g. `git worktree add --detach /tmp/oldloop 41d6dde`), run
with that checkout's `src` first on PYTHONPATH. Results go to a JSON file after every run; a run already
in it is not repeated, so the script can be stopped and started again.

    python benchmarks/bench_engine.py --old-src /work/wt/oldloop/src --output benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import json, resource, sys
from senslora.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as stream:
    json.dump({"code": code, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, stream)
sys.exit(code)
"""


def run_once(source: Path, seed: int, run_dir: Path, extra: list[str]) -> dict:
    """One `senslora finetune` with the defaults, `extra` flags and `seed`, from the code in `source`."""
    env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        usage_path = Path(handle.name)
    command = [sys.executable, "-c", CHILD, str(usage_path), "finetune", "--seed", str(seed), "--no-progress"]
    command += ["--overwrite", "--output-dir", str(run_dir), *extra]
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{source} seed {seed} failed:\n{completed.stderr[-3000:]}")
    usage = json.loads(usage_path.read_text())
    usage_path.unlink()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ranks_file = run_dir / "ranks.json"
    return {
        "seed": seed,
        "accuracy": metrics["validation"]["accuracy"],
        "best_epoch": metrics["best_epoch"],
        "global_step": metrics["global_step"],
        "mean_step_seconds": metrics["mean_step_seconds"],
        "train_seconds_per_step": metrics["train_seconds"] / metrics["global_step"],
        "peak_rss_mb": usage["maxrss_mb"],
        "wall_seconds": wall,
        "ranks": json.loads(ranks_file.read_text()).get("ranks") if ranks_file.exists() else None,
    }


def summarize(runs: dict[str, dict]) -> dict:
    """Means, spreads and new / old ratios over the seeds both engines have finished."""
    seeds = sorted({r["seed"] for r in runs.values()})
    paired = [s for s in seeds if f"old-s{s}" in runs and f"new-s{s}" in runs]
    summary: dict = {"seeds": paired}
    if not paired:
        return summary
    for engine in ("old", "new"):
        rows = [runs[f"{engine}-s{s}"] for s in paired]
        summary[engine] = {
            key: statistics.mean(r[key] for r in rows)
            for key in ("mean_step_seconds", "train_seconds_per_step", "peak_rss_mb", "wall_seconds")
        }
        accuracies = [r["accuracy"] for r in rows]
        summary[engine]["accuracy_mean"] = statistics.mean(accuracies)
        summary[engine]["accuracy_std"] = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    for key in ("mean_step_seconds", "train_seconds_per_step", "peak_rss_mb", "wall_seconds"):
        summary[f"ratio_{key}"] = summary["new"][key] / summary["old"][key]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", required=True, help="src directory of the checkout with the old loop")
    parser.add_argument("--new-src", default=str(ROOT / "src"), help="src directory of the Trainer engine")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "engine.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench-engine"))
    parser.add_argument(
        "--finetune-args",
        default="--budget-unit params --max-rank-factor 2",
        help="flags given to both engines (default: the settings both checkouts share, so that the ranks match)",
    )
    args = parser.parse_args()
    output = Path(args.output)
    document = json.loads(output.read_text()) if output.exists() else {"runs": {}}
    sources = {"old": Path(args.old_src).resolve(), "new": Path(args.new_src).resolve()}
    for index, seed in enumerate(args.seeds):
        order = ("old", "new") if index % 2 == 0 else ("new", "old")
        for engine in order:
            key = f"{engine}-s{seed}"
            if key in document["runs"]:
                continue
            print(f"running {key}", flush=True)
            run_dir = Path(args.runs_dir) / key
            document["runs"][key] = run_once(sources[engine], seed, run_dir, args.finetune_args.split())
            document["summary"] = summarize(document["runs"])
            document["command"] = "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:])
            output.parent.mkdir(parents=True, exist_ok=True)
            temporary = output.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(document, indent=2) + "\n")
            os.replace(temporary, output)
            print(json.dumps(document["runs"][key]), flush=True)
    print(json.dumps(document.get("summary", {}), indent=2))


if __name__ == "__main__":
    main()
