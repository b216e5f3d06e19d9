"""Calibration of a model offloaded to disk (Accelerate big-model inference) against the in-memory pass.

    python benchmarks/bench_offload.py                          # SmolLM2, CPU capped at 1/4 of the weights
    python benchmarks/bench_offload.py --cap-fraction 0.5 --calibration-examples 16

Each pass is `senslora sensitivity` (activation estimator, float32) in a child process, so that its memory
(sampled from /proc) is its own: first with the whole model in memory, then with `--device-map auto
--max-memory cpu=<cap> --offload-folder <dir>`, the cap a fraction of the weights' size. Reported: the
weights' size, each pass's peak RSS and peak own (anonymous) memory, sensitivity seconds and wall seconds,
where Accelerate put the modules (`model_loading.placement` in sensitivity.json), and the largest relative
difference of the module traces between the two passes. Results go to
`benchmarks/results/offload.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_pass(argv: list[str]) -> dict:
    """Run one `senslora sensitivity` command; wall seconds and peak memory in bytes, sampled every 50 ms
    from /proc: VmHWM (peak RSS, which counts the pages of memory-mapped safetensors files) and the peak
    of RssAnon (the process's own memory: tensors, activations, Python), which offloading should cut."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "senslora.cli", "sensitivity", *argv])
    peaks = {"VmHWM": 0, "RssAnon": 0}
    while process.poll() is None:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in peaks:
                    peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.05)
    if process.returncode != 0:
        raise SystemExit(f"senslora sensitivity {' '.join(argv)} failed")
    return {
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_bytes": peaks["VmHWM"],
        "peak_anonymous_bytes": peaks["RssAnon"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="wikipedia")
    parser.add_argument("--calibration-examples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--cap-fraction", type=float, default=0.25, help="CPU cap as a fraction of the weights")
    parser.add_argument("--output", type=Path, default=RESULTS / "offload.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from senslora.finetune.models import resolve_model

    model_dir = resolve_model(args.model)  # converts SmolLM2 to safetensors once, outside the timed passes
    weights = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    cap = int(weights * args.cap_fraction)
    common = ["--model", args.model, "--data", args.data, "--calibration-examples", str(args.calibration_examples)]
    common += ["--max-length", str(args.max_length), "--model-dtype", "float32", "--no-progress", "--overwrite"]
    with tempfile.TemporaryDirectory() as work:
        memory_file, offload_file = Path(work) / "memory.json", Path(work) / "offload.json"
        memory = run_pass([*common, "--output", str(memory_file)])
        offload_options = ["--device-map", "auto", "--max-memory", f"cpu={cap}B", "--offload-folder", f"{work}/off"]
        offload = run_pass([*common, *offload_options, "--output", str(offload_file)])
        results = {
            name: json.loads(path.read_text()) for name, path in [("memory", memory_file), ("offload", offload_file)]
        }
    traces = {name: {m["name"]: m["trace"] for m in doc["modules"]} for name, doc in results.items()}
    difference = max(abs(traces["offload"][n] - t) / max(abs(t), 1e-30) for n, t in traces["memory"].items())
    report = {
        "model": args.model,
        "weights_bytes": weights,
        "cpu_cap_bytes": cap,
        "placement": results["offload"]["model_loading"]["placement"],
        "calibration_examples": args.calibration_examples,
        "max_length": args.max_length,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "in_memory": memory | {"sensitivity_seconds": results["memory"]["seconds"]},
        "offloaded": offload | {"sensitivity_seconds": results["offload"]["seconds"]},
        "largest_relative_trace_difference": difference,
        "versions": results["offload"]["versions"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"weights {weights / 1e6:.0f} MB, CPU cap {cap / 1e6:.0f} MB, modules placed: {report['placement']}")
    for name in ("in_memory", "offloaded"):
        row = report[name]
        print(
            f"{name}: peak RSS {row['peak_rss_bytes'] / 1e6:.0f} MB "
            f"(own memory {row['peak_anonymous_bytes'] / 1e6:.0f} MB), "
            f"sensitivity {row['sensitivity_seconds']:.1f} s, "
            f"wall {row['wall_seconds']:.1f} s"
        )
    print(f"largest relative trace difference: {difference:.2e} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
