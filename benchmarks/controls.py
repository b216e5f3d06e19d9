"""Control allocations and no-adapter baselines: does it matter *where* the ranks go?

- shuffled: senslora's own ranks permuted at random among modules of equal cost per rank (d_in + d_out);
- inverse: the same rank multiset handed out in reverse theta order within each equal-cost class, so the
  least sensitive module of a class gets the largest rank;
- head only: the new task head trained alone (base frozen, no adapter) for the same number of steps;
- base model: no training at all (for language modelling, where there is no new head).

Both permutations keep the rank histogram of every cost class, so the trainable parameter count is exactly
senslora's. If the inverse allocation trains as well as senslora's, the test bed cannot tell a good
allocator from a bad one.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

CONTROLS = ("shuffled", "inverse")
BASELINES = ("head_only", "base_model")


def cost_classes(shapes: dict[str, tuple[int, int]]) -> dict[int, list[str]]:
    """Module names grouped by the parameters one rank costs (d_in + d_out), names sorted."""
    classes: dict[int, list[str]] = defaultdict(list)
    for name in sorted(shapes):
        classes[sum(shapes[name])].append(name)
    return dict(classes)


def shuffle_within_cost(ranks: dict[str, int], shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, int]:
    """Permute ranks at random among modules of equal d_in + d_out."""
    generator = random.Random(seed)
    shuffled: dict[str, int] = {}
    for names in cost_classes({n: shapes[n] for n in ranks}).values():
        values = [ranks[n] for n in names]
        generator.shuffle(values)
        shuffled.update(zip(names, values, strict=True))
    return shuffled


def inverse_within_cost(
    ranks: dict[str, int], theta: dict[str, float], shapes: dict[str, tuple[int, int]]
) -> dict[str, int]:
    """Within each class of equal d_in + d_out, the k-th most sensitive module gets the k-th smallest rank
    of that class (ties in theta broken by name)."""
    inverse: dict[str, int] = {}
    for names in cost_classes({n: shapes[n] for n in ranks}).values():
        by_sensitivity = sorted(names, key=lambda n: (-theta[n], n))
        ascending = sorted(ranks[n] for n in names)
        inverse.update(zip(by_sensitivity, ascending, strict=True))
    return inverse


def control_allocation(config: Any, kind: str) -> tuple[Any, dict[str, Any]]:
    """The run's own senslora allocation (sensitivity pass with the run's options and seed), permuted.

    Returns (permuted Allocation, record of the original ranks and theta for the results file).
    """
    from senslora.finetune.preparation import calibration_batches, load_data, prepare
    from senslora.finetune.rank_steps import run_allocation, run_sensitivity

    if kind not in CONTROLS:
        raise ValueError(f"unknown control {kind!r}; allowed: {', '.join(CONTROLS)}")
    prepared = prepare(config, load_data(config))
    sensitivities, _ = run_sensitivity(config, prepared, calibration_batches(config, prepared))
    allocation = run_allocation(config, sensitivities)
    if kind == "shuffled":
        ranks = shuffle_within_cost(allocation.ranks, allocation.shapes, config.seed)
    else:
        ranks = inverse_within_cost(allocation.ranks, allocation.theta, allocation.shapes)
    note = {"control": kind, "control_seed": config.seed if kind == "shuffled" else None}
    permuted = dataclasses.replace(allocation, ranks=ranks, extra={**allocation.extra, **note})
    record = {"kind": kind, "original_ranks": dict(allocation.ranks), "theta": dict(allocation.theta)}
    return permuted, record


def run_baseline(config: Any, kind: str) -> dict[str, Any]:
    """Metrics without an adapter: the base model as loaded, or with its new head trained alone.

    head_only: AdamW at the run's learning rate on the task head only (base frozen, no dropout), for
    epochs x ceil(train examples / batch size) steps over the training set in a seeded order per epoch,
    i.e. as many steps as the adapter runs take.
    """
    from senslora.finetune.evaluation.saved_adapter import evaluate_on_split
    from senslora.finetune.preparation import load_data, prepare
    from senslora.finetune.tokenization import make_batches, make_collator, tokenize_dataset
    from senslora.finetune.training.head_warmup import warm_up_head

    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; allowed: {', '.join(BASELINES)}")
    prepared = prepare(config, load_data(config))
    record: dict[str, Any] = {"kind": kind, "steps": 0}
    if kind == "head_only":
        data, tokenizer = prepared.data, prepared.tokenizer
        train_set = tokenize_dataset(data.train, tokenizer, data, max_length=config.max_length)
        collator = make_collator(tokenizer, data.task)
        batches: list[dict[str, Any]] = []
        for epoch in range(config.epochs):
            seed = config.seed * 100_003 + epoch
            batches += make_batches(train_set, collator, config.batch_size, shuffle=True, seed=seed)
        steps = len(batches) if config.max_steps is None else min(config.max_steps, len(batches))
        warm = warm_up_head(
            prepared.model, batches, steps=steps, learning_rate=config.learning_rate, seed=config.seed, progress=False
        )
        record |= {"steps": steps, "loss_first": warm["loss_first"], "loss_last": warm["loss_last"]}
        record["head_parameters"] = warm["parameter_count"]
    metrics = evaluate_on_split(config, prepared, prepared.model)
    test = None if prepared.data.test is None else evaluate_on_split(config, prepared, prepared.model, "test")
    return {"baseline": record, "validation": metrics, "test": test, "main_metric": prepared.data.main_metric}


def write_ranks(allocation: Any, directory: Path) -> Path:
    from senslora.utils.io import atomic_write_json

    path = directory / "control-ranks.json"
    atomic_write_json(path, allocation.to_dict())
    return path
