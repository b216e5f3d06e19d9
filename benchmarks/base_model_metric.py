"""The base model's metric before any fine-tuning, on an experiment's own validation split (a reference
for how far the adapters moved it).

    python benchmarks/base_model_metric.py full-smollm2-lora-s0 full-smollm2-lora-s1

Writes benchmarks/results/base_models.json ({experiment: metrics}, other entries kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

from experiments import PROFILES  # noqa: E402

OUTPUT = HERE / "results" / "base_models.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", help="experiment names of the full profile")
    args = parser.parse_args(argv)

    from senslora.finetune.config import RunConfig
    from senslora.finetune.environment import quiet_libraries
    from senslora.finetune.evaluation.saved_adapter import evaluate_on_split
    from senslora.finetune.preparation import prepare
    from senslora.utils.io import atomic_write_json

    quiet_libraries()
    known = {e.name: e for e in PROFILES["full"]()}
    unknown = [name for name in args.experiments if name not in known]
    if unknown:
        raise SystemExit(f"error: unknown experiment {unknown[0]!r} (not in the full profile)")
    results = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
    for name in args.experiments:
        config = RunConfig(**known[name].overrides, progress=False)
        prepared = prepare(config)
        metrics = evaluate_on_split(config, prepared, prepared.model.to(prepared.device))
        metric = prepared.data.main_metric
        results[name] = {"main_metric": metric, **metrics}
        print(f"{name}: base model {metric} {metrics[metric]:.4f}")
    atomic_write_json(OUTPUT, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
