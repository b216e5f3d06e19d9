"""Training cost of each method relative to uniform LoRA, measured in one process by interleaving.

    python benchmarks/bench_training_cost.py            # about 5 minutes on a 2-core CPU

Absolute CPU times drift (other work, thermal state), so the methods' training steps are interleaved:
round after round, each method runs a few optimizer steps on the same fixed batches, and the ratio of
medians is reported. Peak memory is measured per method in a fresh process (peak RSS after the steps,
with the peak mark reset after loading, tokenizing and building; VmHWM), also as a ratio to uniform LoRA.
The sensitivity pass is timed on the main job's calibration set and compared with the main job's whole training
(steps per epoch x epochs x the median senslora step time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
METHODS = ("lora", "senslora", "adalora", "eva")


def setup(num_batches: int):
    """Real MiniLM, real Rotten Tomatoes batches (main-job settings) and the calibration batches."""
    from senslora.finetune.config import RunConfig
    from senslora.finetune.environment import quiet_libraries
    from senslora.finetune.preparation import calibration_batches, prepare

    quiet_libraries()
    config = RunConfig(progress=False)
    prepared = prepare(config)
    from senslora.finetune.tokenization import make_batches, make_collator, tokenize_dataset

    train = tokenize_dataset(prepared.data.train, prepared.tokenizer, prepared.data, max_length=config.max_length)
    batches = make_batches(train, make_collator(prepared.tokenizer, "classification"), config.batch_size, shuffle=True)
    return config, prepared, batches[:num_batches], calibration_batches(config, prepared)


def build(method: str, config, prepared, calibration, total_steps: int):
    import copy

    from senslora.finetune.methods import build_peft_model
    from senslora.finetune.rank_steps import run_allocation, run_sensitivity

    base = copy.deepcopy(prepared.model)
    allocation = None
    if method == "senslora":
        sensitivities, _ = run_sensitivity(config, prepared, calibration)
        allocation = run_allocation(config, sensitivities)
    model = build_peft_model(
        base,
        method,
        task="classification",
        avg_rank=config.avg_rank,
        lora_alpha=config.alpha,
        allocation=allocation,
        total_steps=total_steps,
        eva_batches=calibration,
        progress=False,
    )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def step(model, optimizer, batch, method: str, global_step: int) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    if method == "adalora":
        model.base_model.update_and_allocate(global_step)
    optimizer.zero_grad(set_to_none=True)


def time_interleaved(rounds: int, steps_per_round: int) -> dict:
    config, prepared, batches, calibration = setup(steps_per_round)
    total = rounds * steps_per_round + 100  # AdaLoRA's schedule: stay in its initial (full-rank) phase
    models = {m: build(m, config, prepared, calibration, total) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    counters = dict.fromkeys(METHODS, 0)
    for method in METHODS:  # warm-up
        step(*models[method], batches[0], method, 1)
    for _ in range(rounds):
        for method in METHODS:
            model, optimizer = models[method]
            start = time.perf_counter()
            for batch in batches:
                counters[method] += 1
                step(model, optimizer, batch, method, counters[method])
            times[method].append((time.perf_counter() - start) / len(batches))
    sensitivity_times = []
    from senslora.finetune.rank_steps import run_sensitivity

    for _ in range(3):
        start = time.perf_counter()
        run_sensitivity(config, prepared, calibration)
        sensitivity_times.append(time.perf_counter() - start)
    median = {m: statistics.median(v) for m, v in times.items()}
    steps = 250  # the main job: 2,000 snippets, batch 16, 2 epochs
    return {
        "median_step_seconds": median,
        "step_ratio_to_lora": {m: median[m] / median["lora"] for m in METHODS},
        "rounds": rounds,
        "steps_per_round": steps_per_round,
        "sensitivity_seconds": statistics.median(sensitivity_times),
        "main_job_training_seconds_estimate": steps * median["senslora"],
        "sensitivity_to_training": statistics.median(sensitivity_times) / (steps * median["senslora"]),
    }


def memory_worker(method: str, steps: int) -> dict:
    """Peak RSS of the training steps alone: the peak mark is reset after loading, tokenizing and building."""
    from bench_sensitivity_cost import current_rss_bytes, settle_memory

    config, prepared, batches, calibration = setup(steps)
    model, optimizer = build(method, config, prepared, calibration, steps + 100)
    if not settle_memory():
        raise RuntimeError("cannot reset the peak-RSS mark (/proc/self/clear_refs)")
    baseline = current_rss_bytes() / 2**20
    for index, batch in enumerate(batches, 1):
        step(model, optimizer, batch, method, index)
    peak = _high_water_mark_mb()  # VmHWM honours the reset; ru_maxrss does not
    return {"method": method, "peak_rss_mb": peak, "extra_mb": peak - baseline}


def _high_water_mark_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="steps per method per round")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "training_cost.json")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.steps)))
        return 0
    result = time_interleaved(args.rounds, args.steps)
    memory = {}
    for method in METHODS:
        command = [sys.executable, __file__, "--memory-worker", method, "--steps", str(args.steps)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        memory[method] = json.loads(output)
    result["peak_rss_mb"] = {m: memory[m]["peak_rss_mb"] for m in METHODS}
    result["training_extra_mb"] = {m: memory[m]["extra_mb"] for m in METHODS}
    result["memory_ratio_to_lora"] = {m: memory[m]["peak_rss_mb"] / memory["lora"]["peak_rss_mb"] for m in METHODS}
    result["training_memory_ratio_to_lora"] = {m: memory[m]["extra_mb"] / memory["lora"]["extra_mb"] for m in METHODS}
    result["versions"] = __import__("senslora.finetune.environment", fromlist=["package_versions"]).package_versions()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    columns = ["method", "median step (s)", "step time / LoRA", "peak RSS (MB)", "peak / LoRA"]
    columns += ["training extra (MB)", "extra / LoRA"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in METHODS:
        print(
            f"| {m} | {result['median_step_seconds'][m]:.3f} | {result['step_ratio_to_lora'][m]:.3f} | "
            f"{result['peak_rss_mb'][m]:.0f} | {result['memory_ratio_to_lora'][m]:.3f} | "
            f"{result['training_extra_mb'][m]:.0f} | {result['training_memory_ratio_to_lora'][m]:.3f} |"
        )
    print(
        f"sensitivity pass {result['sensitivity_seconds']:.2f} s = {result['sensitivity_to_training']:.2%} of the "
        f"main job's training ({result['main_job_training_seconds_estimate']:.0f} s estimated)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
