"""Control allocations: senslora's own ranks, shuffled among modules of equal cost per rank.

    python benchmarks/shuffled_allocations.py    # writes benchmarks/allocations/activation-shuffled-s<seed>.json

For each seed of the main job's senslora run (activation estimator, params budget, average rank 4), the
allocation is recomputed from the sensitivity recorded in its results file (and checked against the ranks
its adapter had), then its ranks are permuted at random among modules with the same d_in + d_out. The
permuted allocation has the same rank histogram and exactly the same trainable parameters, but no longer
follows sensitivity; training with it (`full-ablation-shuffled-*` in the full profile) says how much of
senslora's result comes from *where* the ranks go rather than from ranks being unequal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

from controls import shuffle_within_cost  # noqa: E402

ALLOCATIONS = HERE / "allocations"
SOURCE = HERE / "results" / "full" / "mainjob-senslora-activation-params-s{seed}.json"


def shuffled_path(seed: int) -> Path:
    return ALLOCATIONS / f"activation-shuffled-s{seed}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    from senslora.core.metrics import ModuleSensitivity
    from senslora.finetune.config import RunConfig
    from senslora.finetune.rank_steps import run_allocation
    from senslora.utils.io import atomic_write_json

    for seed in args.seeds:
        source = SOURCE.with_name(SOURCE.name.format(seed=seed))
        if not source.exists():
            raise SystemExit(f"error: {source} is missing: run the mainjob profile first")
        result = json.loads(source.read_text())
        sensitivities = {m["name"]: ModuleSensitivity.from_dict(m) for m in result["sensitivity"]["modules"]}
        allocation = run_allocation(RunConfig(**result["config"]), sensitivities)  # the run's own options
        if allocation.ranks != result["ranks"]:
            raise SystemExit(f"error: the recomputed allocation differs from the ranks trained in {source}")
        ranks = shuffle_within_cost(allocation.ranks, allocation.shapes, seed)
        note = {"control": "ranks shuffled among modules of equal d_in + d_out", "shuffle_seed": seed}
        shuffled = dataclasses.replace(allocation, ranks=ranks, extra={**allocation.extra, **note})
        atomic_write_json(shuffled_path(seed), shuffled.to_dict())
        moved = sum(ranks[n] != allocation.ranks[n] for n in ranks)
        print(f"seed {seed}: {moved} of {len(ranks)} modules changed rank -> {shuffled_path(seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
