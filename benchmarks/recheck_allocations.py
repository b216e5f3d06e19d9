"""Recompute every recorded senslora allocation from its recorded sensitivity with the current code.

    python benchmarks/recheck_allocations.py [--results-dir benchmarks/results/full]

Lists the experiments whose trained ranks differ from what the current allocation code gives for the
same sensitivity and options, i.e. the published rows a change to allocation affects and that need a
rerun. Runs recorded before the cap option existed stored `max_rank_factor: null`, which meant "no cap"
for `activation` and, for a while, "2x" for the loss-based estimators: a null run counts as unchanged if
either reading reproduces its ranks. A change to an estimator itself (not to allocation) is not visible
here: it needs the sensitivity pass rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def changed_modules(result: dict, factor: float | None) -> int:
    from senslora.core.metrics import ModuleSensitivity
    from senslora.finetune.config import RunConfig
    from senslora.finetune.rank_steps import run_allocation

    known = {f.name for f in dataclasses.fields(RunConfig)}
    options = {k: v for k, v in result["config"].items() if k in known} | {"max_rank_factor": factor}
    sensitivities = {m["name"]: ModuleSensitivity.from_dict(m) for m in result["sensitivity"]["modules"]}
    estimator = result["sensitivity"].get("estimator")
    allocation = run_allocation(RunConfig(**options), sensitivities, estimator=estimator)
    new = {name: rank for name, rank in allocation.ranks.items() if rank > 0}
    old = result["ranks"]
    return sum(new.get(name, 0) != old.get(name, 0) for name in set(new) | set(old))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "full")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # dominance warnings of the uncapped rows are expected
    checked, changed = 0, []
    for path in sorted(args.results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if "sensitivity" not in result or result["config"].get("ranks"):
            continue  # no sensitivity pass (lora, adalora, eva) or a ranks file given (controls)
        recorded = result["config"].get("max_rank_factor")
        readings = [None, 2.0] if recorded is None else [recorded]
        checked += 1
        difference = min(changed_modules(result, factor) for factor in readings)
        if difference:
            changed.append((result["experiment"], difference))
    print(f"{checked} allocations recomputed, {len(changed)} differ from the trained ranks")
    for name, difference in changed:
        print(f"  {name}: {difference} modules change rank")
    return 0


if __name__ == "__main__":
    sys.exit(main())
